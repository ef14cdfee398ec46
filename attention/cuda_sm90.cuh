// cuda_sm90.cuh: the Hopper (sm_90a) code. Sm90Mma is the wgmma policy of the
// one-role forward and of the backward kernels (cuda_kernels.cuh); forward_ws_kernel
// (below) is the warp-specialized forward used by default. The tiles are stored in
// the 128-byte swizzled layout wgmma reads (rows of 64 elements = 128 bytes,
// 16-byte chunk c of row r at chunk c ^ (r % 8), 8-row groups 1024 bytes apart,
// tiles of d = 128 as two 64-column halves), filled by strided cp.async loads
// (each row a computed, dilated address). Each warpgroup (4 warps, 64 rows)
// computes S = A B^T with wgmma m64nNk16 (both operands from shared memory) and
// acc += P B with wgmma m64n64k16 (P from registers, B from shared memory,
// transposed), so the softmax, masks and epilogues written for mma.sync apply
// unchanged: the wgmma accumulator of a warp has the mma.sync C layout.
#ifndef DA_CUDA_SM90_CUH
#define DA_CUDA_SM90_CUH

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <string.h>

#include <type_traits>

#include "attention/cuda_kernels.cuh"
#include "attention/tile_maps_cache.h"

namespace da_cuda {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DA_HAVE_WGMMA 1
#endif

// Descriptor of a 128-byte-swizzled operand: 8-row groups 1024 bytes apart (the
// leading offset is unused for swizzled K-major tiles and for the 64-wide
// MN-major tiles used here).
__device__ __forceinline__ uint64_t wgmma_desc(const void* p) {
  uint64_t addr = smem_u32(p);
  return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

// The descriptor `bytes` (a multiple of 16) past the one of `desc`: the start
// address is the low 14 bits in 16-byte units and shared memory ends below
// 2^18 bytes, so the sum never carries out of the field and one 32-bit add of
// the low word does it. A wgmma batch computes its base descriptors once and
// steps with these (building each descriptor from a pointer took ~7 uniform
// instructions per wgmma, ~90 of the forward's ~525 instructions a tile).
__device__ __forceinline__ uint64_t desc_add(uint64_t desc, uint32_t bytes) {
  const uint32_t lo = (uint32_t)desc + (bytes >> 4), hi = (uint32_t)(desc >> 32);
  return ((uint64_t)hi << 32) | lo;
}

// scale_d = 0: s = A B^T (the accumulator's old contents are ignored); 1: s += A B^T.
// Ordering of a warpgroup's wgmma: fence before the first of a batch (the
// accumulators were written by ordinary instructions), commit the batch as a
// group, wait until at most N groups are pending.
__device__ __forceinline__ void wgmma_fence() {
#ifdef DA_HAVE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef DA_HAVE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef DA_HAVE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of an accumulator across the
// asynchronous wgmma that owns it (the asm statements name the registers only
// where the wgmma is issued).
template <int N>
__device__ __forceinline__ void fence_regs(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(x[i][0]), "+f"(x[i][1]), "+f"(x[i][2]), "+f"(x[i][3])::"memory");
}

template <int N, typename T>
__device__ __forceinline__ void wgmma_ss(float (&s)[N / 8][4], uint64_t da, uint64_t db,
                                         int scale_d);
template <typename T>
__device__ __forceinline__ void wgmma_rs_m64n64(float (&acc)[8][4], const uint32_t* a,
                                                uint64_t db);
template <typename T>
__device__ __forceinline__ void wgmma_ss_neg_a64(float (&s)[8][4], uint64_t da, uint64_t db);

#ifdef DA_HAVE_WGMMA
template <>
__device__ __forceinline__ void wgmma_ss<128, __nv_bfloat16>(float (&s)[16][4], uint64_t da, uint64_t db,
                                                       int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3]), "+f"(s[8][0]), "+f"(s[8][1]), "+f"(s[8][2]), "+f"(s[8][3]), "+f"(s[9][0]), "+f"(s[9][1]), "+f"(s[9][2]), "+f"(s[9][3]), "+f"(s[10][0]), "+f"(s[10][1]), "+f"(s[10][2]), "+f"(s[10][3]), "+f"(s[11][0]), "+f"(s[11][1]), "+f"(s[11][2]), "+f"(s[11][3]), "+f"(s[12][0]), "+f"(s[12][1]), "+f"(s[12][2]), "+f"(s[12][3]), "+f"(s[13][0]), "+f"(s[13][1]), "+f"(s[13][2]), "+f"(s[13][3]), "+f"(s[14][0]), "+f"(s[14][1]), "+f"(s[14][2]), "+f"(s[14][3]), "+f"(s[15][0]), "+f"(s[15][1]), "+f"(s[15][2]), "+f"(s[15][3])
      : "l"(da), "l"(db), "r"(scale_d));
}

template <>
__device__ __forceinline__ void wgmma_ss<128, __half>(float (&s)[16][4], uint64_t da, uint64_t db,
                                                       int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3]), "+f"(s[8][0]), "+f"(s[8][1]), "+f"(s[8][2]), "+f"(s[8][3]), "+f"(s[9][0]), "+f"(s[9][1]), "+f"(s[9][2]), "+f"(s[9][3]), "+f"(s[10][0]), "+f"(s[10][1]), "+f"(s[10][2]), "+f"(s[10][3]), "+f"(s[11][0]), "+f"(s[11][1]), "+f"(s[11][2]), "+f"(s[11][3]), "+f"(s[12][0]), "+f"(s[12][1]), "+f"(s[12][2]), "+f"(s[12][3]), "+f"(s[13][0]), "+f"(s[13][1]), "+f"(s[13][2]), "+f"(s[13][3]), "+f"(s[14][0]), "+f"(s[14][1]), "+f"(s[14][2]), "+f"(s[14][3]), "+f"(s[15][0]), "+f"(s[15][1]), "+f"(s[15][2]), "+f"(s[15][3])
      : "l"(da), "l"(db), "r"(scale_d));
}

// m64n64k16, both operands from shared memory, for element type TYPE ("bf16" or
// "f16") with A scaled by SCALE_A ("1" or "-1"): the asm of wgmma_ss<64, T> and
// wgmma_ss_neg_a64<T>.
#define DA_WGMMA_SS64(TYPE, SCALE_A)                                                          \
  "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                             \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                \
  " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23," \
  "%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, " SCALE_A ", 1, 0, 0;\n}\n"
#define DA_ACC8(s)                                                                             \
  "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]),    \
      "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), \
      "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), \
      "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), \
      "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), \
      "+f"(s[7][2]), "+f"(s[7][3])

template <>
__device__ __forceinline__ void wgmma_ss<64, __nv_bfloat16>(float (&s)[8][4], uint64_t da, uint64_t db,
                                                       int scale_d) {
  asm volatile(DA_WGMMA_SS64("bf16", "1") : DA_ACC8(s) : "l"(da), "l"(db), "r"(scale_d));
}

template <>
__device__ __forceinline__ void wgmma_ss<64, __half>(float (&s)[8][4], uint64_t da, uint64_t db,
                                                       int scale_d) {
  asm volatile(DA_WGMMA_SS64("f16", "1") : DA_ACC8(s) : "l"(da), "l"(db), "r"(scale_d));
}

// s += (-A) B^T, m64n64k16 (dK/dV's delta - dP^T on accumulators that start at delta).
template <>
__device__ __forceinline__ void wgmma_ss_neg_a64<__nv_bfloat16>(float (&s)[8][4], uint64_t da,
                                                                uint64_t db) {
  asm volatile(DA_WGMMA_SS64("bf16", "-1") : DA_ACC8(s) : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_ss_neg_a64<__half>(float (&s)[8][4], uint64_t da,
                                                         uint64_t db) {
  asm volatile(DA_WGMMA_SS64("f16", "-1") : DA_ACC8(s) : "l"(da), "l"(db), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs_m64n64<__nv_bfloat16>(float (&acc)[8][4], const uint32_t* a,
                                                   uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : DA_ACC8(acc)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_rs_m64n64<__half>(float (&acc)[8][4], const uint32_t* a,
                                                   uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : DA_ACC8(acc)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
#undef DA_ACC8
#undef DA_WGMMA_SS64
#endif  // DA_HAVE_WGMMA

template <typename T, int D>
struct Sm90Mma {
  static_assert(D == 64 || D == 128, "the wgmma tiles are 64-column halves");
  // d = 64: 64-key tiles, 4 stages, 81 KiB and <= 128 registers, so two CTAs
  // share an SM and one's softmax overlaps the other's tensor-core work.
  // d = 128: 128-key tiles, 3 stages, 225 KiB, one CTA per SM.
  static constexpr int kBN = D == 64 ? 64 : 128;
  static constexpr int kStages = D == 64 ? 4 : 3;
  static constexpr int kMinBlocks = D == 64 ? 2 : 1;
  static constexpr int kAlign = 1024;
  static constexpr int tile_elems(int rows) { return rows * D; }

  // Thread tid copies 16-byte chunk tid % kChunks of rows tid / kChunks + k *
  // kStep: the same chunk and swizzle phase for every k (kStep is a multiple of
  // 8), so the addresses advance by constants.
  template <int ROWS, int NT>
  __device__ static void load(T* tile, const T* base, long long stride, int valid, int tid) {
    constexpr int kChunks = D / 8, kStep = NT / kChunks;
    static_assert(NT % kChunks == 0 && kStep % 8 == 0 && ROWS % kStep == 0, "load shape");
    const int r0 = tid / kChunks, ch = tid % kChunks;
    char* dst = reinterpret_cast<char*>(tile) + (ch / 8) * ROWS * 128 + r0 * 128 +
                (((ch % 8) ^ (r0 % 8)) * 16);
    const T* src = base + r0 * stride + ch * 8;
    const long long step = kStep * stride;
#pragma unroll
    for (int k = 0; k < ROWS / kStep; ++k) {
      const bool ok = r0 + k * kStep < valid;
      cp_async16(dst + k * kStep * 128, ok ? src : base, ok);
      src += step;
    }
  }

  // cp.async wrote the tiles through the generic proxy; wgmma reads them
  // through the async proxy.
  __device__ static void loaded() {
#ifdef DA_HAVE_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
  }

  // s[64 x N] (this warpgroup's rows of A) = A B^T (ACC: s += A B^T): A an
  // AROWS-row tile, B an N-row tile, both K-major (d contiguous). Issued, not
  // waited for.
  template <int AROWS, int N, bool ACC = false>
  __device__ static void qk_issue(float (&s)[N / 8][4], const T* sA, const T* sB, int warp) {
#ifdef DA_HAVE_WGMMA
    const uint64_t q = wgmma_desc(reinterpret_cast<const char*>(sA) + (warp / 4) * 64 * 128);
    const uint64_t k = wgmma_desc(sB);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss<N, T>(s, desc_add(q, (kk / 4) * AROWS * 128 + (kk % 4) * 32),
                     desc_add(k, (kk / 4) * N * 128 + (kk % 4) * 32), ACC || kk > 0);
#else
    (void)s, (void)sA, (void)sB, (void)warp;
    __trap();
#endif
  }

  // s = s - A B^T for N = 64 (every step accumulates, A negated): dK/dV's
  // dP^T with each query column's delta folded in, on accumulators the caller
  // set to delta (column_init). Issued, not waited for.
  template <int AROWS>
  __device__ static void qk_issue_minus(float (&s)[8][4], const T* sA, const T* sB, int warp) {
#ifdef DA_HAVE_WGMMA
    const uint64_t q = wgmma_desc(reinterpret_cast<const char*>(sA) + (warp / 4) * 64 * 128);
    const uint64_t k = wgmma_desc(sB);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss_neg_a64<T>(s, desc_add(q, (kk / 4) * AROWS * 128 + (kk % 4) * 32),
                          desc_add(k, (kk / 4) * 64 * 128 + (kk % 4) * 32));
#else
    (void)s, (void)sA, (void)sB, (void)warp;
    __trap();
#endif
  }

  // P (64 x KROWS, C layout in fp32) as the register A operand of pv_issue.
  template <int KROWS>
  __device__ static void pack_p(const float (&p)[KROWS / 8][4], uint32_t (&af)[KROWS / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < KROWS / 16; ++kk) {
      af[kk][0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
      af[kk][1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
      af[kk][2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
      af[kk][3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
  }

  // acc[64 x D] += P B: P packed by pack_p, B a KROWS-row tile read transposed
  // (MN-major, d contiguous). Issued, not waited for.
  template <int KROWS>
  __device__ static void pv_issue(float (&acc)[D / 8][4], const uint32_t (&af)[KROWS / 16][4],
                                  const T* sV) {
#ifdef DA_HAVE_WGMMA
    const uint64_t v = wgmma_desc(sV);
#pragma unroll
    for (int kk = 0; kk < KROWS / 16; ++kk)
#pragma unroll
      for (int half = 0; half < D / 64; ++half)
        wgmma_rs_m64n64<T>(*reinterpret_cast<float(*)[8][4]>(&acc[half * 8]), af[kk],
                           desc_add(v, half * KROWS * 128 + kk * 16 * 128));
#else
    (void)acc, (void)af, (void)sV;
    __trap();
#endif
  }

  template <int AROWS, int N>
  __device__ static void qk(float (&s)[N / 8][4], const T* sA, const T* sB, int warp, int) {
    wgmma_fence();
    qk_issue<AROWS, N>(s, sA, sB, warp);
    wgmma_commit();
    wgmma_wait<0>();
  }

  template <int KROWS>
  __device__ static void pv(float (&acc)[D / 8][4], float (&p)[KROWS / 8][4], const T* sV, int,
                            int) {
    uint32_t af[KROWS / 16][4];
    pack_p<KROWS>(p, af);
    wgmma_fence();
    pv_issue<KROWS>(acc, af, sV);
    wgmma_commit();
    wgmma_wait<0>();
  }

  // Two independent products of each kind in one batch (the backward's pairs):
  // the second is issued before the first is waited for.
  template <int AROWS, int N>
  __device__ static void qk2(float (&s1)[N / 8][4], const T* a1, const T* b1,
                             float (&s2)[N / 8][4], const T* a2, const T* b2, int warp, int) {
    wgmma_fence();
    qk_issue<AROWS, N>(s1, a1, b1, warp);
    qk_issue<AROWS, N>(s2, a2, b2, warp);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s1);
    fence_regs(s2);
  }

  template <int KROWS>
  __device__ static void pv2(float (&acc1)[D / 8][4], float (&p1)[KROWS / 8][4], const T* b1,
                             float (&acc2)[D / 8][4], float (&p2)[KROWS / 8][4], const T* b2,
                             int, int) {
    uint32_t af1[KROWS / 16][4], af2[KROWS / 16][4];
    pack_p<KROWS>(p1, af1);
    pack_p<KROWS>(p2, af2);
    wgmma_fence();
    pv_issue<KROWS>(acc1, af1, b1);
    pv_issue<KROWS>(acc2, af2, b2);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(acc1);
    fence_regs(acc2);
  }
};

// ------------------------------------------- warp-specialized forward ----
//
// forward_ws_kernel: the Hopper forward. Three warpgroups: one producer (the
// TileStream, Q and the dilated K/V tiles by cp.async from computed row
// addresses into a ring of kStages slots) and two consumers (64 query rows each:
// S = Q K^T and O += P V by wgmma, the online softmax in registers). Full/empty
// mbarriers per slot replace the CTA-wide barrier of forward_kernel, so the
// consumers never wait for loads they do not need and the producer's registers
// go to the consumers (setmaxnreg). Each consumer iteration issues S_j = Q K_j^T
// together with O += P_{j-1} V_{j-1} (the previous tile's probabilities), then
// runs the softmax of tile j while the other consumer's products occupy the
// tensor cores: with PINGPONG the two consumers take turns issuing (named
// barriers), so one's softmax always overlaps the other's products.

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
// The warp's number in the CTA, read from lane 0: the compiler then knows it is
// the same in every lane and keeps what derives from it (the wgmma descriptors
// of a consumer warpgroup's rows) in uniform registers, with no per-tile moves
// from ordinary ones.
__device__ __forceinline__ int uniform_warp() {
  return __shfl_sync(0xffffffffu, threadIdx.x / 32, 0);
}
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Generic-proxy writes (cp.async) made visible to the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef DA_HAVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#ifdef DA_HAVE_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#ifdef DA_HAVE_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// An arrive on `bar` once every cp.async this thread issued so far has landed
// (noinc: the arrival is one of the barrier's expected count).
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar))
               : "memory");
}

// Thread 0's arrival on a full barrier, with the bytes its TMA copies into the
// slot will deliver (0: none). The copies may land before or after it (the
// barrier's transaction count is signed); the slot is full once both have.
__device__ __forceinline__ void mbar_arrive_tx(uint64_t* bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}

// One TMA box of a TileMaps map into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, int x, int y, int z,
                                            int w, uint64_t* bar) {
#ifdef DA_HAVE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(z), "r"(w), "r"(smem_u32(bar))
      : "memory");
#else
  (void)dst, (void)map, (void)x, (void)y, (void)z, (void)w, (void)bar;
#endif
}

// Tile d's rows of the two tensors of `maps` (head `head`) into dst0 / dst1, BN
// rows each in the swizzled layout: by TMA from thread 0 when the tile is whole
// and inside a map of its dilation, returning the bytes the full barrier must
// expect (on every thread); else by every producer thread's cp.async
// (fallback()), returning 0. Partial tiles take cp.async because it zero-fills
// the rows past the unit, where the map would read the next rows of the tensor
// (other sequences' tokens: finite in general, but a 0 x inf there would be a
// NaN here).
template <typename T, int D, int BN, class Fallback>
__device__ __forceinline__ int load_tile(const TileMaps& maps, const TileDesc& d, int head, T* dst0,
                                         T* dst1, uint64_t* bar, int tid, Fallback&& fallback) {
  int k = 0;
  while (k < maps.count && maps.r[k] != d.r) ++k;
  const long long w = d.token / d.r;
  if (k < maps.count && d.valid == BN && w + BN <= maps.rows[k]) {
    if (tid == 0) {
      const int z = (int)(d.token - w * d.r);
#pragma unroll
      for (int half = 0; half < D / 64; ++half) {
        tma_load_4d(dst0 + half * BN * 64, &maps.map[0][k], half * 64, head, z, (int)w, bar);
        tma_load_4d(dst1 + half * BN * 64, &maps.map[1][k], half * 64, head, z, (int)w, bar);
      }
    }
    return 2 * BN * D * (int)sizeof(T);
  }
  fallback();
  return 0;
}

template <typename T>
constexpr CUtensorMapDataType tile_map_type() {
  return std::is_same<T, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                        : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}

// The TileMaps of tensors t0 and t1 ([tokens, heads, D]) for tiles of box_rows
// rows, one pair of maps per distinct dilation that has at least box_rows rows
// (none when no map can be made: the kernel then loads by cp.async). Host only;
// the encoder comes from the driver through the runtime, so nothing links
// libcuda.
template <typename T>
TileMaps encode_tile_maps(const KernelArgs& a, const void* t0, const void* t1, int heads, int D,
                          int box_rows) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = []() {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      fn = nullptr;
    cudaGetLastError();  // a failed lookup is not the caller's error
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  TileMaps m;
  memset(&m, 0, sizeof m);
  if (encode == nullptr) return m;
  const CUtensorMapDataType type = tile_map_type<T>();
  for (int i = 0; i < a.num_patterns; ++i) {
    const int r = a.r[i];
    const long long rows = a.tokens / r;
    bool seen = false;
    for (int k = 0; k < m.count; ++k) seen = seen || m.r[k] == r;
    if (seen || rows < box_rows || rows >= (1LL << 31)) continue;
    const cuuint64_t row = (cuuint64_t)D * sizeof(T);
    const cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)heads, (cuuint64_t)r, (cuuint64_t)rows};
    const cuuint64_t strides[3] = {row, row * heads, row * heads * r};
    const cuuint32_t box[4] = {64, 1, 1, (cuuint32_t)box_rows};
    const cuuint32_t elem[4] = {1, 1, 1, 1};
    bool ok = true;
    for (int t = 0; t < 2 && ok; ++t)
      ok = encode(&m.map[t][m.count], type, 4, const_cast<void*>(t == 0 ? t0 : t1), dims, strides,
                  box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
    if (!ok) continue;
    m.r[m.count] = r;
    m.rows[m.count] = rows;
    ++m.count;
  }
  return m;
}

// make_tile_maps: the maps of encode_tile_maps (none when DA_CUDA_TMA=0), from
// the cache of the last TileMapsCache::kEntries keys (tile_maps_cache.h).
template <typename T>
TileMaps make_tile_maps(const KernelArgs& a, const void* t0, const void* t1, int heads, int D,
                        int box_rows) {
  TileMaps m;
  if (!a.use_tma) {
    memset(&m, 0, sizeof m);
    return m;
  }
  static TileMapsCache cache;
  const TileMapsKey key = tile_maps_key(a, t0, t1, (int)tile_map_type<T>(), heads, D, box_rows);
  if (cache.Find(key, &m)) return m;
  m = encode_tile_maps<T>(a, t0, t1, heads, D, box_rows);
  cache.Insert(key, m);
  return m;
}

// The ring's barriers, before any thread uses them: a slot is full once every
// producer thread's copies have landed (128 arrivals made by the copies
// themselves) and producer thread 0 has stored the tile's descriptor (one
// ordinary arrival, which releases that store); it is empty once every consumer
// warp's products have read it (CONSUMER_WARPS arrivals).
template <int ST, int CONSUMER_WARPS = 8>
__device__ __forceinline__ void init_ring(uint64_t* full, uint64_t* empty, int tid) {
  if (tid == 0) {
    for (int s = 0; s < ST; ++s) {
      mbar_init(&full[s], 128 + 1);
      mbar_init(&empty[s], CONSUMER_WARPS);
    }
  }
  __syncthreads();
}

// Descriptor d into ring slot `slot` (and, where the ring has them, its flag in
// `lasts`: whether it is its work item's last tile), signalled full once this
// thread's copies and thread 0's tx bytes land. The flags sit beside the ring,
// not in TileDesc: a larger TileDesc cost the d = 128 backward 3-5%.
__device__ __forceinline__ void push_desc(const TileDesc& d, int slot, int tx, TileDesc* ring,
                                          int* lasts, int last, uint64_t* full, int tid) {
  cp_async_mbar_arrive(&full[slot]);
  if (tid == 0) {
    ring[slot] = d;
    if (lasts != nullptr) lasts[slot] = last;
    mbar_arrive_tx(&full[slot], tx);
  }
}

// The ring slot of the issued-th descriptor, once the consumers have emptied it.
template <int ST>
__device__ __forceinline__ int ring_slot(uint64_t* empty, int issued) {
  const int slot = issued % ST;
  if (issued >= ST) mbar_wait(&empty[slot], (issued / ST - 1) & 1);
  return slot;
}

// The producer side of the warp-specialized kernels' ring. push_tiles walks a
// TileStream: for each tile it waits for a ring slot to be empty, enqueues the
// tile's copies (load(desc, slot), which returns the bytes thread 0's TMA
// copies will deliver) and its descriptor, flagged in `lasts` (when not NULL)
// on the stream's last tile; with END, the descriptor after the last tile
// (valid = -1) ends the ring, and every copy this thread issued has landed
// when it returns (none outlives its thread). The copies signal the slot full
// themselves when they land (cp.async.mbarrier.arrive, TMA's transaction
// count), so the producer never waits for its own loads and runs up to ST
// tiles ahead of the consumers. (It used to wait for tile i's copies before signalling it, after
// issuing tile i + 1: at d = 128, with three slots, that kept the consumers
// waiting for tiles that had landed.) `issued` counts the descriptors pushed so
// far, across items; without END, at most `cap` tiles are pushed. (One loop for
// tiles and end: written as two, the dK/dV producer at d = 128 spilled 382
// bytes instead of 312.)
template <int ST, bool END, class Load>
__device__ __forceinline__ void push_tiles(TileStream& stream, TileDesc* ring, int* lasts,
                                           uint64_t* full, uint64_t* empty, int tid, int& issued,
                                           Load&& load, int cap = 0x7fffffff) {
  for (int pushed = 0; END || pushed < cap; ++pushed) {
    const int slot = ring_slot<ST>(empty, issued);
    TileDesc d;
    const bool more = stream.next(&d);
    if (!END && !more) break;
    int tx = 0;
    if (more)
      tx = load(d, slot);
    else
      d.valid = -1;  // end of the ring
    push_desc(d, slot, tx, ring, lasts, !stream.more, full, tid);
    ++issued;
    if (!more) break;
  }
  if (END) {
    cp_async_commit();
    cp_async_wait<0>();
  }
}

// The descriptor that ends the ring after `issued` others (push_tiles with END
// and no tiles left).
template <int ST>
__device__ __forceinline__ void push_end(TileDesc* ring, uint64_t* full, uint64_t* empty, int tid,
                                         int issued) {
  const int slot = ring_slot<ST>(empty, issued);
  TileDesc d;
  d.valid = -1;
  push_desc(d, slot, 0, ring, nullptr, 0, full, tid);
  cp_async_commit();
  cp_async_wait<0>();
}

// The whole producer loop of a CTA with one work item, whose consumers read no
// last-tile flags (the backward).
template <int ST, class Load>
__device__ __forceinline__ void produce_tiles(TileStream& stream, TileDesc* ring, uint64_t* full,
                                              uint64_t* empty, int tid, Load&& load) {
  int issued = 0;
  push_tiles<ST, true>(stream, ring, nullptr, full, empty, tid, issued, load);
}

// A consumer's wait for ring slot `slot` (phase parity `parity`). The tile was
// written by cp.async (the generic proxy) and is read by wgmma (the async
// proxy): the proxy fence follows the acquire.
__device__ __forceinline__ void wait_full(uint64_t* full, int slot, int parity) {
  mbar_wait(&full[slot], parity);
  fence_proxy_async();
}

// Shape of forward_ws_kernel with NC consumer warpgroups of 64 query rows.
// NC = 2 (d = 128; and d = 64 with DA_CUDA_FWD_CONSUMERS=2): 128 query rows,
// 128-key tiles; d = 64: 4 slots (144 KiB), d = 128: 3 slots (224 KiB).
// NC = 3 (d = 64): 192 query rows and 64-key tiles in 8 slots (152 KiB): the
// consumers' softmax is bound by latency, not by a pipe (with the products
// removed a d = 64 forward still took 88% of its time, with the softmax
// removed 71%), and a third consumer warp on each scheduler hides it. A
// consumer releases a slot one iteration after reading its K (V is read then).
template <typename T, int D, int NC = 2>
struct Sm90Fwd {
  static_assert(NC == 2 || NC == 3, "two or three consumer warpgroups");
  static constexpr int kBM = 64 * NC;
  static_assert(NC == 2 ? kBM == kFwdRows : kBM == kFwdWideRows, "the rows the geometry test walks");
  static constexpr int kBN = NC == 3 ? 64 : 128;
  static constexpr int kStages = NC == 3 ? 8 : D == 64 ? 4 : 3;
  static constexpr int kAlign = 1024;
  static constexpr int kThreads = (NC + 1) * 128;
  // Registers per thread. The kernel is compiled for 65536 / kThreads (rounded
  // down to 8: 168 with two consumers, 128 with three) and launched with that
  // many for every warp; setmaxnreg then moves them from the producer (its unit
  // walk needs ~100) to the consumers. The consumers' setmaxnreg.inc waits until
  // the producer's registers are free, so the two must balance exactly or the
  // CTA never starts computing.
  static constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
  static constexpr int kProducerRegs = D == 64 ? 104 : 88;
  static constexpr int kConsumerRegs = (kLaunchRegs * (NC + 1) - kProducerRegs) / NC / 8 * 8;
  static_assert(128 * kProducerRegs + NC * 128 * kConsumerRegs <= (NC + 1) * 128 * kLaunchRegs,
                "setmaxnreg: the consumers take more registers than the producer frees");
  static constexpr int tile_elems(int rows) { return rows * D; }
  // Q buffers. With two, a persistent CTA loads the next work item's Q (and
  // streams its first tiles) while its consumers finish the current item and
  // write its output, staged in the item's own Q rows (SwizzledStage). d = 128
  // has no room for two beside its three slots: its producer streams the next
  // item's first tiles and prefetches its Q rows into L2 meanwhile, and loads
  // Q once the output is written.
  static constexpr int kRingBytes = 2 * kStages * tile_elems(kBN) * (int)sizeof(T);
  static constexpr int kQBufBytes = tile_elems(kBM) * (int)sizeof(T);
  static_assert(kQBufBytes % 1024 == 0, "Q buffers on the swizzle's 1024 bytes");
  static constexpr int kMaxSmem = 227 * 1024;
  static constexpr int kQBuffers = 2 * kQBufBytes + kRingBytes + kAlign <= kMaxSmem ? 2 : 1;
  static constexpr int kQStride = tile_elems(kBM);
  static constexpr int smem_bytes() { return kQBuffers * kQBufBytes + kRingBytes + kAlign; }
  static_assert(smem_bytes() <= kMaxSmem, "shared memory");
};

// Work item `item` (item_place) of a launch over tiles_per_seq CTAs' worth of
// rows of `rows` rows per sequence: its query head, its sequence, its tile and
// the head's geometry.
struct Item {
  ItemPlace place;
  long long start;
  int n;
  RowGeometry g;
};

// (count: the query heads of a head set; place.head numbers the sets, so the
// dK/dV items of kv head g cover query heads [g * count, (g + 1) * count).)
__device__ __forceinline__ Item item_at(const KernelArgs& a, int tiles_per_seq, long long item,
                                        int rows, int count = 1) {
  Item it;
  it.place = item_place(item, tiles_per_seq, a.batch);
  sequence_of(a, it.place.seq, &it.start, &it.n);
  it.g = cta_geometry(a, it.place.head * count, count, rows);
  return it;
}

// The work items of a persistent CTA's producer warpgroup: blockIdx.x first,
// then from the work counter (one atomicAdd an item, issued an item ahead by
// thread 0 and handed to the warpgroup through two shared slots), so CTAs that
// drew cheap items (empty ones, short causal ones) take more: a fixed stride
// of gridDim.x measured 10% slower in head-group mode, where (before the
// compact grid) whether an item had work followed its tile's residue mod r, and
// 132 CTAs a stride put all of a head's work on the CTAs of one residue mod 4.
// Without a counter (one CTA an item) the stride of gridDim.x ends the loop.
struct WorkItems {
  unsigned* const& counter;  // (read at each fetch, as the forward's code always did)
  long long* slots;          // two, in shared memory
  long long item = blockIdx.x, ahead = 0;
  __device__ __forceinline__ WorkItems(unsigned* const& c, long long* s) : counter(c), slots(s) {
    fetch();
  }
  __device__ __forceinline__ void fetch() {
    if (threadIdx.x == 0)
      ahead = counter != nullptr ? (long long)gridDim.x + atomicAdd(counter, 1u) : item + gridDim.x;
  }
  // The item after the k-th, once the warpgroup (named barrier `bar`, 128
  // threads) is done with the k-th.
  __device__ __forceinline__ void advance(int bar, int k) {
    if (threadIdx.x == 0) slots[k & 1] = ahead;
    named_sync(bar, 128);
    item = slots[k & 1];
    fetch();
  }
};

// A producer thread's part in filling buffer `buf` of work-item rows (the
// forward's Q, the backward's own rows): its copies arrive on `bar` when they
// land, and thread 0 stores the item's rows (head, sequence start, OwnRows)
// beside the buffer, released by its ordinary arrival (the barrier counts 128
// + 1).
__device__ __forceinline__ void publish_item(uint64_t* bar, int* heads, long long* starts,
                                             OwnRows* owns, int buf, int head, long long start,
                                             const OwnRows& own, int tid) {
  cp_async_mbar_arrive(bar);
  if (tid == 0) {
    heads[buf] = head;
    starts[buf] = start;
    owns[buf] = own;
    mbar_arrive(bar);  // (releases the stores)
  }
}

// The warp-specialized Hopper forward over work items blockIdx.x, blockIdx.x +
// gridDim.x, ... < items (one item a CTA, or persistent: one CTA an SM looping
// over items). The producer skips items past their sequence's end, writes the
// output of items no unit selects itself (O = 0, LSE = -inf), and for the
// others loads Q into the next Q buffer and stores the item's rows beside it
// (q_full) once the consumers have written the output staged there QB items
// before (q_empty), then pushes the item's tiles into the ring; so the ring runs
// on across items. The consumers follow the ring: a tile of a new item starts
// it (its rows read beside its Q buffer: decoding the item in every consumer
// warp cost ~1000 instructions a warp an item), the item's last tile ends it
// (last product, epilogue, q_empty).
template <typename T, int D, bool PINGPONG, int NC>
__global__ void __launch_bounds__(Sm90Fwd<T, D, NC>::kThreads, 1)
    forward_ws_kernel(const __grid_constant__ KernelArgs a, const __grid_constant__ TileMaps maps,
                      int tiles_per_seq, long long items) {
#ifdef DA_HAVE_WGMMA  // sm_90a only (mbarrier waits, setmaxnreg, wgmma)
  using Cfg = Sm90Fwd<T, D, NC>;
  using Mm = Sm90Mma<T, D>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, ST = Cfg::kStages, QB = Cfg::kQBuffers;
  constexpr int kTile = Cfg::tile_elems(BN);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ TileDesc ring[ST];
  __shared__ int lasts[ST];  // whether each slot's tile is its item's last
  // The rows of the item in each Q buffer: query head, sequence start, rows.
  __shared__ int item_j[QB];
  __shared__ long long item_start[QB];
  __shared__ OwnRows item_own[QB];
  __shared__ __align__(8) uint64_t full[ST], empty[ST], q_full[QB], q_empty[QB];
  T* sQ0 = reinterpret_cast<T*>(aligned_smem<Cfg>(smem_raw));  // QB buffers of kQStride
  T* sK = sQ0 + QB * Cfg::kQStride;
  T* sV = sK + ST * kTile;
  const int tid = threadIdx.x, wg = tid / 128;
  if (tid == 0) {
    for (int b = 0; b < QB; ++b) {
      mbar_init(&q_full[b], 128 + 1);    // every producer thread's Q copies, and
                                         // thread 0's store of the item's rows
      mbar_init(&q_empty[b], 4 * NC);    // every consumer warp's epilogue
    }
  }
  init_ring<ST, 4 * NC>(full, empty, tid);  // (its __syncthreads covers the Q barriers)

  if (wg == 0) {  // producer
    setmaxnreg_dec<Cfg::kProducerRegs>();
    int issued = 0, loaded = 0;
    __shared__ long long next_item[2];
    WorkItems work(a.fwd_next, next_item);
    for (int k = 0; work.item < items; ++k) {
      const Item it = item_at(a, tiles_per_seq, work.item, BM);
      const int j = it.place.head;
      // The rows of this item's chunk that no item owns (residues without
      // CTAs): written once the item's tiles are queued, while the consumers
      // work through the ring (a kernel of their own cost head-group passes
      // 5-8%; spreading them over all items, or over the next item's tiles,
      // measured slower: docs/BENCHMARKS.md, sixth session).
      auto unowned = [&]() {
        int first, end;
        if (unowned_span(it.g, BM, it.n, it.place.tile, &first, &end))
          zero_unowned_rows<T, D, 128>(it.g, a.out, nullptr, a.lse, a.h, j, it.start, first, end,
                                       tid);
      };
      OwnRows own;
      if (!own_rows(it.g, BM, it.n, it.place.tile, &own)) {
        unowned();
      } else {
        TileStream stream(a, it.n, own, j, 1, 0, BN, it.start);
        if (!stream.more) {
          forward_empty_rows<T, D, 128>(a, it.start, own, j, tid);
          unowned();
        } else {
          const int buf = loaded % QB;
          const long long q_stride = (long long)own.L * a.h * D;
          const long long q_first = ((it.start + own.p0) * a.h + j) * D;
          const int gkv = j / (a.h / a.h_kv);
          auto push = [&](int cap) {
            push_tiles<ST, false>(
                stream, ring, lasts, full, empty, tid, issued,
                [&](const TileDesc& d, int slot) {
                  return load_tile<T, D, BN>(maps, d, gkv, sK + slot * kTile, sV + slot * kTile,
                                             &full[slot], tid, [&]() {
                                               load_kv<T, D, Mm, BN, 128>(a, d, slot, gkv, sK,
                                                                          sV, tid);
                                             });
                },
                cap);
          };
          if (loaded >= QB) {
            if constexpr (QB == 1) {
              // One Q buffer (d = 128): its rows into L2 and the item's first
              // tiles into the ring while the consumers finish the last item;
              // Q itself once they have written its output (q_empty).
              const T* q = static_cast<const T*>(a.q) + q_first;
              if (tid < own.nrows)
                for (int b = 0; b < D * (int)sizeof(T); b += 128)
                  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(
                      reinterpret_cast<const char*>(q + tid * q_stride) + b));
              push(ST);
            }
            mbar_wait(&q_empty[buf], (loaded / QB - 1) & 1);
          }
          ++loaded;
          Mm::template load<BM, 128>(sQ0 + buf * Cfg::kQStride,
                                     static_cast<const T*>(a.q) + q_first, q_stride, own.nrows,
                                     tid);
          publish_item(&q_full[buf], item_j, item_start, item_own, buf, j, it.start, own, tid);
          if (stream.more) push(0x7fffffff);
          unowned();
        }
      }
      work.advance(2 + NC, k);  // the producer's warpgroup only
    }
    push_end<ST>(ring, full, empty, tid, issued);
    return;
  }

  // consumers
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  // The warp number as the backward takes it (uniform_warp) only with three
  // consumers: there the forward measured +2.5-3% (head-group d = 64, H100, n =
  // 128K, three rounds); with two -1% (LongNet d = 64) to +-0.
  const int cg = wg - 1, cw = (NC == 3 ? uniform_warp() : tid / 32) - 4, lane = tid % 32,
            row0 = cw * 16 + lane / 4;
  // Turns on the tensor cores: with PINGPONG consumer 0 takes the first and the
  // consumers take turns in order (named barrier 1 + c is consumer c's turn).
  // The last consumer's hand-off after the kernel's last turn is met by
  // consumer 0 at the end, so every bar.arrive meets a bar.sync.
  auto take_turn = [&](bool first) {
    if (PINGPONG && !(cg == 0 && first)) named_sync(1 + cg, 256);
  };
  auto hand_off = [&]() {
    if (PINGPONG) named_arrive(1 + (cg + 1) % NC, 256);
  };
  auto release = [&](int slot) {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[slot]);
  };
  int i = 0;  // ring position
  wait_full(full, 0, 0);
  TileDesc d = ring[0];
  int last = lasts[0];
  for (int q = 0; d.valid >= 0; ++q) {
    const int buf = q % QB;
    T* sQ = sQ0 + buf * Cfg::kQStride;
    mbar_wait(&q_full[buf], (q / QB) & 1);
    fence_proxy_async();
    // Read where used (the consumers' registers are short): the producer
    // rewrites them only after this item's q_empty.
    const OwnRows& own = item_own[buf];
    float acc[D / 8][4];
    zero(acc);
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    float s[BN / 8][4];
    uint32_t af[BN / 16][4];
    RowIndices idx;
    float alpha[2];
    int prev = i % ST;
    take_turn(q == 0);
    wgmma_fence();
    Mm::template qk_issue<BM, BN>(s, sQ, sK + prev * kTile, cw);
    wgmma_commit();
    hand_off();
    wgmma_wait<0>();
    fence_regs(s);
    idx.update(d, own, row0);
    softmax_scores<BN>(a, d, idx.di0, idx.di1, lane, s, m_run, l_run, alpha);
    Mm::template pack_p<BN>(s, af);
    while (!last) {
      const int slot = ++i % ST;
      wait_full(full, slot, (i / ST) & 1);
      d = ring[slot];
      last = lasts[slot];
      // S_i = Q K_i^T and O += P_{i-1} V_{i-1} in one turn. (Waiting for S_i
      // alone and running the softmax under the second product measured 6%
      // slower at d = 64 and spills at d = 128: P_{i-1}, S_i and O live at once.)
      take_turn(false);
      wgmma_fence();
      Mm::template qk_issue<BM, BN>(s, sQ, sK + slot * kTile, cw);
      Mm::template pv_issue<BN>(acc, af, sV + prev * kTile);
      wgmma_commit();
      hand_off();
      wgmma_wait<0>();
      fence_regs(s);
      fence_regs(acc);
      release(prev);
      idx.update(d, own, row0);
      if (softmax_scores<BN>(a, d, idx.di0, idx.di1, lane, s, m_run, l_run, alpha))
        softmax_rescale<D>(acc, alpha);
      Mm::template pack_p<BN>(s, af);
      prev = slot;
    }
    take_turn(false);
    wgmma_fence();
    Mm::template pv_issue<BN>(acc, af, sV + prev * kTile);
    wgmma_commit();
    hand_off();
    wgmma_wait<0>();
    fence_regs(acc);
    release(prev);
    // Each warp stages its output in its own Q rows, once its warpgroup's
    // products have read them: the other consumers run on meanwhile. (A barrier
    // of all consumers here, with staging rows that crossed theirs, kept the
    // tensor cores idle at every item's end.)
    named_sync(3 + NC + cg, 128);
    {
      const int j = item_j[buf];
      const long long start = item_start[buf];
      const OwnRows rows = own;
      forward_epilogue<T, D>(a, acc, m_run, l_run, SwizzledStage<T, BM>{smem_u32(sQ), cw * 16},
                             start, rows, ((start + rows.p0) * a.h + j) * D,
                             (long long)rows.L * a.h * D, j, cw, lane);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&q_empty[buf]);
    const int slot = ++i % ST;
    wait_full(full, slot, (i / ST) & 1);
    d = ring[slot];
    last = lasts[slot];
    if (PINGPONG && d.valid < 0 && cg == 0) named_sync(1, 256);  // the last hand-off
  }
#else
  (void)a, (void)maps, (void)tiles_per_seq, (void)items;
  __trap();
#endif
}

// Registers a kernel was compiled for (-1 if unknown).
template <class Kernel>
int compiled_regs(Kernel kernel) {
  cudaFuncAttributes fa;
  return cudaFuncGetAttributes(&fa, kernel) == cudaSuccess ? fa.numRegs : -1;
}

template <typename T, int D, bool PINGPONG, int NC>
cudaError_t launch_forward_ws_with(const KernelArgs& a, cudaStream_t stream) {
  using Cfg = Sm90Fwd<T, D, NC>;
  constexpr int smem = Cfg::smem_bytes();
  cudaError_t attr = cudaFuncSetAttribute(forward_ws_kernel<T, D, PINGPONG, NC>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  // setmaxnreg's balance assumes the kernel was compiled for kLaunchRegs per
  // thread; were it fewer, the consumers would wait for registers forever, so
  // the one-role kernel runs instead (checked once per instantiation).
  static const int regs = compiled_regs(forward_ws_kernel<T, D, PINGPONG, NC>);
  if (regs != Cfg::kLaunchRegs) return launch_forward_zeroed<T, D, Sm90Mma<T, D>>(a, stream);
  const int tiles = max_tiles(a, Cfg::kBM, false);
  const long long items = (long long)tiles * a.batch * a.h;
  if (items == 0) return cudaSuccess;
  // Persistent (one CTA an SM) where the caller gave a work counter
  // (KernelArgs::fwd_next); else one item a CTA.
  long long ctas = items;
  KernelArgs one = a;  // the same with no work counter: one item a CTA
  one.fwd_next = nullptr;
  if (a.fwd_next != nullptr && a.persistent_ctas > 0 && items > a.persistent_ctas)
    ctas = a.persistent_ctas;
  // (More than 2^31 items would take over 2^37 query rows and heads: no device
  // holds such tensors.)
  if (ctas > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const TileMaps maps = make_tile_maps<T>(a, a.k, a.v, a.h_kv, D, Cfg::kBN);
  forward_ws_kernel<T, D, PINGPONG, NC><<<(unsigned)ctas, Cfg::kThreads, smem, stream>>>(
      ctas < items ? a : one, maps, tiles, items);
  return cudaGetLastError();
}

// d = 64 runs three consumer warpgroups where KernelArgs::fwd_consumers says so
// (cuda_attention.cu); d = 128 always two (three would spill: O alone is 64
// registers).
template <typename T, int D, bool PINGPONG>
cudaError_t launch_forward_ws(const KernelArgs& a, cudaStream_t stream) {
  if constexpr (D == 64) {
    if (a.fwd_consumers == 3) return launch_forward_ws_with<T, D, PINGPONG, 3>(a, stream);
  }
  return launch_forward_ws_with<T, D, PINGPONG, 2>(a, stream);
}

// ------------------------------------------ warp-specialized backward ----
//
// backward_ws_kernel: the Hopper dQ (KV_SIDE = false) and dK/dV (KV_SIDE = true)
// passes, shaped like forward_ws_kernel and, at d = 64, persistent like it (one
// CTA an SM looping over work items, from a work counter). A producer warpgroup
// loads an item's own rows (dQ: Q and dO of a query head; dK/dV: K and V of a
// kv head) into an own-row buffer, stores the item's rows beside it, then walks
// the TileStream and loads the other side's dilated tiles into a ring (dQ: K
// and V; dK/dV: Q, dO and their lse and delta) that runs on across items. Two
// consumer warpgroups of 64 own rows each (128 per item, so each ring tile
// feeds twice the rows of the one-role kernels) compute per tile the pair S, dP
// (or S^T, dP^T) in one wgmma batch, the element step (dq_scores /
// dkdv_scores, shared with the one-role kernels) and the products into their
// accumulators, then release the slot; an item's last tile ends it (epilogue,
// staged in the warp's own rows of the own-row buffer, then own_empty). The
// two consumers run out of step, so one's element step overlaps the other's
// products. Items with no tiles get their zeros from the producer, and so do
// the rows of residues without items (no zero_unselected_kernel first). With
// two own-row buffers (d = 64) the producer loads the next item's rows while
// the consumers finish the current one. d = 128 has room for one and runs one
// item a CTA (Sm90Bwd::kPersistent; persistent, with the next item's first
// tiles queued and its rows prefetched into L2 during the epilogue, it
// measured 2-3% slower).
template <typename T, int D>
struct Sm90Bwd {
  static constexpr int kBM = kBwdWsRows;
  static constexpr int kBN = kOtherRows;
  // Ring slots: 8 at d = 64 (beside the second own-row buffer; H100, n = 128K,
  // backward TFLOP/s LongNet / head-group: 4 slots 297 / 249-250, 6 slots 304 /
  // 255-257 in the same call; 8 slots 300-304 / 260-262 against 6 slots'
  // 299-300 / 255-256 in another), 4 at d = 128 (the most that fit).
  static constexpr int kStages = D == 64 ? 8 : 4;
  static constexpr int kAlign = 1024;
  static constexpr int kThreads = 3 * 128;
  // As in Sm90Fwd: compiled for 168 registers a thread, moved by setmaxnreg.
  static constexpr int kLaunchRegs = 168;
  // The producer's registers, as in the forward; dK/dV at d = 128 gives its
  // consumers 224 (they spill at 208: dK, dV, S^T, dP^T and the lse/delta row
  // values live at once) and its producer 56 (it spills a little in the unit
  // walk): measured 285 against 279 TFLOP/s for the backward at n = 128K.
  static constexpr int kProducerRegs = D == 64 ? 104 : 88;
  static constexpr int kDkdvProducerRegs = D == 64 ? 104 : 56;
  static constexpr int consumer_regs(int producer) {
    return (kLaunchRegs * 3 - producer) / 2 / 8 * 8;
  }
  static_assert(128 * kDkdvProducerRegs + 256 * consumer_regs(kDkdvProducerRegs) <=
                    384 * kLaunchRegs,
                "setmaxnreg: the consumers take more registers than the producer frees");
  // The pipelined consumer loop (a tile's products in one batch with the next
  // tile's S and dP) measured +2% at d = 64 and -4% at d = 128 (dQ; dK/dV has
  // no registers for it there).
  static constexpr bool kPipelined = D == 64;
  // The other side's tiles come by cp.async, not TMA (load_tile): with TMA in
  // both kernels the backward measured 286 / 306 against 292 / 318 TFLOP/s (d =
  // 64 / 128, n = 128K, H100); in dK/dV alone 291 / 300, where the same build
  // measured 289 / 281 with DA_CUDA_TMA=0. So TMA helps dK/dV at d = 128, but
  // the code around it cost the consumers registers (dK/dV spills 320 -> 480
  // bytes) and that cost more; a producer of 40 registers spills more.
  // Persistent (one CTA an SM over the work items, with the work counters) at
  // d = 64 only. H100, n = 128K, backward TFLOP/s against one CTA an item:
  // d = 64 300 / 249 against 293 / 237 (LongNet / head-group); d = 128, with
  // one own-row buffer, 360-363 / 303-305 against 370-372 / 305-309.
  static constexpr bool kPersistent = D == 64;
  static constexpr int tile_elems(int rows) { return rows * D; }
  // An own-row buffer (two tiles of kBM rows); the ring (two tiles a slot, and
  // the lse and delta of dK/dV's query rows).
  static constexpr int kOwnStride = 2 * tile_elems(kBM);
  static constexpr int kOwnBytes = kOwnStride * (int)sizeof(T);
  static constexpr int kRingBytes = 2 * kStages * tile_elems(kBN) * (int)sizeof(T) +
                                    2 * kStages * kBN * (int)sizeof(float);
  static constexpr int kMaxSmem = 227 * 1024;
  static constexpr int kOwnBuffers = 2 * kOwnBytes + kRingBytes + kAlign <= kMaxSmem ? 2 : 1;
  static constexpr int smem_bytes() { return kOwnBuffers * kOwnBytes + kRingBytes + kAlign; }
  static_assert(smem_bytes() <= kMaxSmem, "shared memory");
};

template <typename T, int D, bool KV_SIDE, bool PIPE, int PREGS>
__global__ void __launch_bounds__(Sm90Bwd<T, D>::kThreads, 1)
    backward_ws_kernel(const __grid_constant__ KernelArgs a, int tiles_per_seq, long long items) {
#ifdef DA_HAVE_WGMMA  // sm_90a only (mbarrier waits, setmaxnreg, wgmma)
  using Cfg = Sm90Bwd<T, D>;
  using Mm = Sm90Mma<T, D>;
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, ST = Cfg::kStages, QB = Cfg::kOwnBuffers;
  constexpr int kTile = Cfg::tile_elems(BN);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ TileDesc ring[ST];
  __shared__ int lasts[ST];  // whether each slot's tile is its item's last
  // The rows of the item in each own-row buffer: head (query head for dQ, kv
  // head for dK/dV), sequence start, rows.
  __shared__ int item_head[QB];
  __shared__ long long item_start[QB];
  __shared__ OwnRows item_own[QB];
  __shared__ __align__(8) uint64_t full[ST], empty[ST], own_full[QB], own_empty[QB];
  // Own-row buffers: QB x (sA = Q (dQ) or K (dK/dV), sB = dO or V). Ring slots:
  // sX = K or Q, sY = V or dO, and (dK/dV) the query rows' lse and delta.
  // (Visibly in shared memory: aligned_smem.)
  T* sOwn = reinterpret_cast<T*>(aligned_smem<Cfg, true>(smem_raw));
  T* sX = sOwn + QB * Cfg::kOwnStride;
  T* sY = sX + ST * kTile;
  float* sL = reinterpret_cast<float*>(sY + ST * kTile);
  float* sD = sL + ST * BN;
  const int tid = threadIdx.x, wg = tid / 128;
  const int group = a.h / a.h_kv, head_count = KV_SIDE ? group : 1;
  const int hs = KV_SIDE ? a.h_kv : a.h;  // heads of the own rows' tensors
  if (tid == 0) {
    for (int b = 0; b < QB; ++b) {
      mbar_init(&own_full[b], 128 + 1);  // every producer thread's copies, and
                                         // thread 0's store of the item's rows
      mbar_init(&own_empty[b], 8);       // every consumer warp's epilogue
    }
  }
  init_ring<ST>(full, empty, tid);  // (its __syncthreads covers the own-row barriers)

  if (wg == 0) {  // producer
    setmaxnreg_dec<PREGS>();
    T* const dstA = static_cast<T*>(KV_SIDE ? a.dk : a.dq);
    T* const dstB = KV_SIDE ? static_cast<T*>(a.dv) : nullptr;
    const T* srcA = static_cast<const T*>(KV_SIDE ? a.k : a.q);
    const T* srcB = static_cast<const T*>(KV_SIDE ? a.v : a.dout);
    int issued = 0, loaded = 0;
    __shared__ long long next_item[2];
    unsigned* counter = a.bwd_next != nullptr ? a.bwd_next + (KV_SIDE ? 0 : 1) : nullptr;
    WorkItems work(counter, next_item);
    for (int k = 0; work.item < items; work.advance(1, k++)) {
      const Item it = item_at(a, tiles_per_seq, work.item, BM, head_count);
      const int head = it.place.head;
      // The rows of this item's chunk that no item owns, as in the forward.
      auto unowned = [&]() {
        int first, end;
        if (unowned_span(it.g, BM, it.n, it.place.tile, &first, &end))
          zero_unowned_rows<T, D, 128>(it.g, dstA, dstB, nullptr, hs, head, it.start, first, end,
                                       tid);
      };
      OwnRows own;
      if (!own_rows(it.g, BM, it.n, it.place.tile, &own)) {
        unowned();
        continue;
      }
      TileStream stream(a, it.n, own, head * head_count, head_count, KV_SIDE, BN, it.start);
      const long long own_stride = (long long)own.L * hs * D;
      const long long own_first = ((it.start + own.p0) * hs + head) * D;
      if (!stream.more) {  // no pair: zero gradients
        zero_rows<T, D, 128>(dstA + own_first, own_stride, own.nrows, tid);
        if (KV_SIDE) zero_rows<T, D, 128>(dstB + own_first, own_stride, own.nrows, tid);
        unowned();
        continue;
      }
      const int gkv = head / group;
      auto push = [&](int cap) {
        push_tiles<ST, false>(
            stream, ring, lasts, full, empty, tid, issued,
            [&](const TileDesc& d, int slot) {
              if constexpr (KV_SIDE)
                load_qo<T, D, Mm, BN, 128>(a, d, slot, sX, sY, sL, sD, tid);
              else
                load_kv<T, D, Mm, BN, 128>(a, d, slot, gkv, sX, sY, tid);
              return 0;  // no TMA bytes (see Sm90Bwd)
            },
            cap);
      };
      const int buf = loaded % QB;
      if (loaded >= QB) mbar_wait(&own_empty[buf], (loaded / QB - 1) & 1);
      ++loaded;
      T* sA = sOwn + buf * Cfg::kOwnStride;
      Mm::template load<BM, 128>(sA, srcA + own_first, own_stride, own.nrows, tid);
      Mm::template load<BM, 128>(sA + Cfg::tile_elems(BM), srcB + own_first, own_stride,
                                 own.nrows, tid);
      publish_item(&own_full[buf], item_head, item_start, item_own, buf, head, it.start, own,
                   tid);
      if (stream.more) push(0x7fffffff);
      unowned();
    }
    push_end<ST>(ring, full, empty, tid, issued);
    return;
  }

  // consumers
  setmaxnreg_inc<Cfg::consumer_regs(PREGS)>();
  const int warp = uniform_warp();
  const int cg = warp / 4 - 1, cw = warp - 4, lane = tid % 32, row0 = cw * 16 + lane / 4;
  // dK/dV at d = 128: S^T starts at -lse / scale (issue_scores).
  constexpr bool kLseInS = KV_SIDE && D == 128;
  const float neg_inv_scale = -1.f / a.scale;
  auto release = [&](int slot) {
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[slot]);
  };
  // The next ring tile: slot, descriptor and last-tile flag.
  // (The descriptor is read from the ring where used: a copy in registers,
  // live across items, spilled the dK/dV consumers.)
  int i = 0, slot = 0;
  wait_full(full, 0, 0);
  int last = lasts[0];
  auto next_tile = [&]() {
    slot = ++i % ST;
    wait_full(full, slot, (i / ST) & 1);
    last = lasts[slot];
  };
  for (int q = 0; ring[slot].valid >= 0; ++q) {
    const int buf = q % QB;
    const T* sA = sOwn + buf * Cfg::kOwnStride;
    const T* sB = sA + Cfg::tile_elems(BM);
    mbar_wait(&own_full[buf], (q / QB) & 1);
    fence_proxy_async();
    // Read where used (the consumers' registers are short): the producer
    // rewrites them only after this item's own_empty.
    const OwnRows& own = item_own[buf];
    float acc1[D / 8][4], acc2[D / 8][4];  // dQ; or dK and dV
    zero(acc1);
    if constexpr (KV_SIDE) zero(acc2);
    float lse2[2], dlt[2];
    if constexpr (!KV_SIDE) own_row_stats(a, item_start[buf], own, item_head[buf], row0, lse2, dlt);
    RowIndices idx;
    // P^T and dS^T (dK/dV) or dS (dQ) of a tile, packed as wgmma A operands.
    uint32_t af1[BN / 16][4], af2[KV_SIDE ? BN / 16 : 1][4];
    // S and dP (or their transposes) of the tile in `slot`: issued, not
    // committed. dK/dV's dP^T, A negated, accumulates onto its columns' delta
    // and, at d = 128, its S^T onto their -lse / scale (column_init into dp and
    // s, whose registers are free once the previous tile is packed): that gives
    // delta - dP^T and S^T - lse / scale (dkdv_scores' DELTA_IN_DP, LSE_IN_S).
    // Each read follows the products issued before it, so its latency passes
    // while they go out; a fence orders its writes before the wgmma that reads
    // them. Measured (H100, n = 128K, backward, against reading the columns
    // after the wait): delta +1% / +2.5% (d = 64 / 128); lse too -1% / +1%, so
    // at d = 128 only, where holding the columns' lse across the wait took 16
    // registers of a kernel that spills (dK/dV 356 / 548 -> 344 / 452 bytes
    // stored / loaded).
    // With `inited` the caller has read the columns before the batch's fence
    // (init_columns; the first tile of an item, where nothing goes out before
    // S^T: with the reads between S^T and dP^T there, ptxas made dP^T wait
    // for S^T, C7517). Without, only the delta columns are read here: the
    // pipelined loop runs at d = 64, where S^T starts from zero.
    auto init_columns = [&](int at, float (&s)[BN / 8][4], float (&dp)[BN / 8][4]) {
      if constexpr (KV_SIDE) {
        if constexpr (kLseInS) column_init<BN>(sL + at * BN, neg_inv_scale, lane, s);
        column_init<BN>(sD + at * BN, 1.f, lane, dp);
        // (The copies for the second row stay here, before the fence.)
        fence_regs(s);
        fence_regs(dp);
      }
    };
    static_assert(!(PIPE && kLseInS), "the pipelined loop folds no lse into S^T");
    auto issue_scores = [&](int at, float (&s)[BN / 8][4], float (&dp)[BN / 8][4], bool inited) {
      if constexpr (KV_SIDE) {
        Mm::template qk_issue<BM, BN, kLseInS>(s, sA, sX + at * kTile, cw);
        if (!inited) {
          column_init<BN>(sD + at * BN, 1.f, lane, dp);
          wgmma_fence();
        }
        Mm::template qk_issue_minus<BM>(dp, sB, sY + at * kTile, cw);
      } else {
        Mm::template qk_issue<BM, BN>(s, sA, sX + at * kTile, cw);
        Mm::template qk_issue<BM, BN>(dp, sB, sY + at * kTile, cw);
      }
    };
    // What the element step of the tile in `at` needs from its descriptor
    // (the own rows' indices, whether it masks), read while its S and dP are
    // computed. Read after the wait, the latency of those shared loads was the
    // largest integer and control item of Nsight's per-source-line view
    // (eighth session: 7-11% of the consumers' samples).
    // dK/dV at d = 64 also reads its columns' LSE there (column_lse2).
    float nlse2[BN / 8][2];
    auto prepare = [&](int at) {
      idx.update(ring[at], own, row0);
      if constexpr (KV_SIDE && !kLseInS) column_lse2<BN>(sL + at * BN, lane, nlse2);
      return tile_masked<BN, KV_SIDE>(a, ring[at]);
    };
    // The element step of the tile in `at` into af1 / af2.
    auto element = [&](int at, bool masked, float (&s)[BN / 8][4], float (&dp)[BN / 8][4]) {
      const TileDesc& d = ring[at];
      if constexpr (KV_SIDE) {
        dkdv_scores<BN, true, kLseInS>(a, d, masked, idx.di0, idx.di1, lane, nlse2, nullptr, s,
                                       dp);
        Mm::template pack_p<BN>(s, af1);
        Mm::template pack_p<BN>(dp, af2);
      } else {
        dq_scores<BN>(a, d, masked, idx.di0, idx.di1, lane, lse2, dlt, s, dp);
        Mm::template pack_p<BN>(s, af1);
      }
    };
    // The products of the tile in `at` from af1 / af2: issued, not committed.
    auto issue_products = [&](int at) {
      if constexpr (KV_SIDE) {
        Mm::template pv_issue<BN>(acc2, af1, sY + at * kTile);  // dV += P^T dO
        Mm::template pv_issue<BN>(acc1, af2, sX + at * kTile);  // dK += dS^T Q
      } else {
        Mm::template pv_issue<BN>(acc1, af1, sX + at * kTile);  // dQ += dS K
      }
    };
    auto fence_acc = [&]() {
      fence_regs(acc1);
      if constexpr (KV_SIDE) fence_regs(acc2);
    };
    float s[BN / 8][4], dp[BN / 8][4];
    // S and dP of the tile in `slot` alone, waited for, then its element step.
    auto scores = [&]() {
      init_columns(slot, s, dp);
      wgmma_fence();
      issue_scores(slot, s, dp, true);
      wgmma_commit();
      const bool masked = prepare(slot);
      wgmma_wait<0>();
      fence_regs(s);
      fence_regs(dp);
      element(slot, masked, s, dp);
    };
    if (PIPE) {
      // Tile i's products go out in one batch with tile i + 1's S and dP: one
      // wait per tile, and the tensor cores hold four products of this consumer.
      scores();
      int prev = slot;
      while (!last) {
        next_tile();
        wgmma_fence();
        issue_products(prev);
        issue_scores(slot, s, dp, false);
        wgmma_commit();
        const bool masked = prepare(slot);
        wgmma_wait<0>();
        fence_regs(s);
        fence_regs(dp);
        fence_acc();
        release(prev);
        element(slot, masked, s, dp);
        prev = slot;
      }
      wgmma_fence();
      issue_products(prev);
      wgmma_commit();
      wgmma_wait<0>();
      fence_acc();
      release(prev);
    } else {
      for (;;) {
        scores();
        wgmma_fence();
        issue_products(slot);
        wgmma_commit();
        wgmma_wait<0>();
        fence_acc();
        release(slot);
        if (last) break;
        next_tile();
      }
    }
    // Each warp stages its output in its own rows of the own-row buffer, once
    // its warpgroup's products have read them (the other consumer runs on).
    named_sync(2 + cg, 128);
    {
      // An opaque copy of the lane: what the epilogue derives from it is then
      // computed here, not once before the item loop and held through it (the
      // pipelined dK/dV consumers spilled 72 bytes).
      int lane_here;
      asm volatile("mov.b32 %0, %1;\n" : "=r"(lane_here) : "r"(lane));
      const int head = item_head[buf];
      const long long start = item_start[buf];
      const OwnRows rows = own;
      const long long own_stride = (long long)rows.L * hs * D;
      const long long off = ((start + rows.p0) * hs + head) * D + (long long)cw * 16 * own_stride;
      const int valid = rows.nrows - cw * 16;
      store_rows<T, D>(acc1, a.scale, a.scale, SwizzledStage<T, BM>{smem_u32(sA), cw * 16},
                       static_cast<T*>(KV_SIDE ? a.dk : a.dq) + off, own_stride, valid,
                       lane_here);
      if constexpr (KV_SIDE)
        store_rows<T, D>(acc2, 1.f, 1.f, SwizzledStage<T, BM>{smem_u32(sB), cw * 16},
                         static_cast<T*>(a.dv) + off, own_stride, valid, lane_here);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&own_empty[buf]);
    next_tile();
  }
#else
  (void)a, (void)tiles_per_seq, (void)items;
  __trap();
#endif
}

// One pass of the backward (dK/dV or dQ) over `items` work items: persistent
// where Sm90Bwd says so and the caller gave work counters
// (KernelArgs::bwd_next), else one item a CTA.
template <typename T, int D, class Kernel>
cudaError_t launch_backward_pass(Kernel kernel, const KernelArgs& a, int tiles, int sets,
                                 cudaStream_t stream) {
  const long long items = (long long)tiles * a.batch * sets;
  if (items == 0) return cudaSuccess;
  long long ctas = items;
  KernelArgs one = a;
  one.bwd_next = nullptr;
  if (Sm90Bwd<T, D>::kPersistent && a.bwd_next != nullptr && a.persistent_ctas > 0 &&
      items > a.persistent_ctas)
    ctas = a.persistent_ctas;
  if (ctas > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  kernel<<<(unsigned)ctas, Sm90Bwd<T, D>::kThreads, Sm90Bwd<T, D>::smem_bytes(), stream>>>(
      ctas < items ? a : one, tiles, items);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_backward_ws(const KernelArgs& a, cudaStream_t stream) {
  using Cfg = Sm90Bwd<T, D>;
  constexpr int smem = Cfg::smem_bytes();
  auto* dkdv = backward_ws_kernel<T, D, true, Cfg::kPipelined, Cfg::kDkdvProducerRegs>;
  auto* dq = backward_ws_kernel<T, D, false, Cfg::kPipelined, Cfg::kProducerRegs>;
  // setmaxnreg's balance, as in launch_forward_ws: else the one-role kernels.
  static const bool regs_ok =
      compiled_regs(dkdv) == Cfg::kLaunchRegs && compiled_regs(dq) == Cfg::kLaunchRegs;
  if (!regs_ok) return launch_backward_zeroed<T, D, Sm90Mma<T, D>>(a, stream);
  cudaError_t e = cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  e = launch_backward_pass<T, D>(dkdv, a, max_tiles(a, Cfg::kBM, true), a.h_kv, stream);
  if (e != cudaSuccess) return e;
  return launch_backward_pass<T, D>(dq, a, max_tiles(a, Cfg::kBM, false), a.h, stream);
}

}  // namespace da_cuda

#endif  // DA_CUDA_SM90_CUH
