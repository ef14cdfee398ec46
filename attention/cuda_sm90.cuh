// cuda_sm90.cuh: the Hopper (sm_90a) policy of the forward kernel. The tiles are
// stored in the 128-byte swizzled layout wgmma reads (rows of 64 elements = 128
// bytes, 16-byte chunk c of row r at chunk c ^ (r % 8), 8-row groups 1024 bytes
// apart, tiles of d = 128 as two 64-column halves), filled by the same strided
// cp.async loads as the portable path (each row a computed, dilated address).
// Each warpgroup (4 warps, 64 query rows) computes S = Q K^T with
// wgmma m64nBNk16 (both operands from shared memory) and O += P V with
// wgmma m64n64k16 (P from registers, V from shared memory, transposed), so the
// online softmax, masks and epilogue of forward_kernel are unchanged: the wgmma
// accumulator of a warp has the mma.sync C layout.
#ifndef DA_CUDA_SM90_CUH
#define DA_CUDA_SM90_CUH

#include "attention/cuda_kernels.cuh"

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

template <int N, typename T>
__device__ __forceinline__ void wgmma_ss(float (&s)[N / 8][4], uint64_t da, uint64_t db);
template <typename T>
__device__ __forceinline__ void wgmma_rs_m64n64(float (&acc)[8][4], const uint32_t* a,
                                                uint64_t db);

#ifdef DA_HAVE_WGMMA
template <>
__device__ __forceinline__ void wgmma_ss<128, __nv_bfloat16>(float (&s)[16][4], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3]), "+f"(s[8][0]), "+f"(s[8][1]), "+f"(s[8][2]), "+f"(s[8][3]), "+f"(s[9][0]), "+f"(s[9][1]), "+f"(s[9][2]), "+f"(s[9][3]), "+f"(s[10][0]), "+f"(s[10][1]), "+f"(s[10][2]), "+f"(s[10][3]), "+f"(s[11][0]), "+f"(s[11][1]), "+f"(s[11][2]), "+f"(s[11][3]), "+f"(s[12][0]), "+f"(s[12][1]), "+f"(s[12][2]), "+f"(s[12][3]), "+f"(s[13][0]), "+f"(s[13][1]), "+f"(s[13][2]), "+f"(s[13][3]), "+f"(s[14][0]), "+f"(s[14][1]), "+f"(s[14][2]), "+f"(s[14][3]), "+f"(s[15][0]), "+f"(s[15][1]), "+f"(s[15][2]), "+f"(s[15][3])
      : "l"(da), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_ss<128, __half>(float (&s)[16][4], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3]), "+f"(s[8][0]), "+f"(s[8][1]), "+f"(s[8][2]), "+f"(s[8][3]), "+f"(s[9][0]), "+f"(s[9][1]), "+f"(s[9][2]), "+f"(s[9][3]), "+f"(s[10][0]), "+f"(s[10][1]), "+f"(s[10][2]), "+f"(s[10][3]), "+f"(s[11][0]), "+f"(s[11][1]), "+f"(s[11][2]), "+f"(s[11][3]), "+f"(s[12][0]), "+f"(s[12][1]), "+f"(s[12][2]), "+f"(s[12][3]), "+f"(s[13][0]), "+f"(s[13][1]), "+f"(s[13][2]), "+f"(s[13][3]), "+f"(s[14][0]), "+f"(s[14][1]), "+f"(s[14][2]), "+f"(s[14][3]), "+f"(s[15][0]), "+f"(s[15][1]), "+f"(s[15][2]), "+f"(s[15][3])
      : "l"(da), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_ss<64, __nv_bfloat16>(float (&s)[8][4], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3])
      : "l"(da), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_ss<64, __half>(float (&s)[8][4], uint64_t da, uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(s[0][0]), "+f"(s[0][1]), "+f"(s[0][2]), "+f"(s[0][3]), "+f"(s[1][0]), "+f"(s[1][1]), "+f"(s[1][2]), "+f"(s[1][3]), "+f"(s[2][0]), "+f"(s[2][1]), "+f"(s[2][2]), "+f"(s[2][3]), "+f"(s[3][0]), "+f"(s[3][1]), "+f"(s[3][2]), "+f"(s[3][3]), "+f"(s[4][0]), "+f"(s[4][1]), "+f"(s[4][2]), "+f"(s[4][3]), "+f"(s[5][0]), "+f"(s[5][1]), "+f"(s[5][2]), "+f"(s[5][3]), "+f"(s[6][0]), "+f"(s[6][1]), "+f"(s[6][2]), "+f"(s[6][3]), "+f"(s[7][0]), "+f"(s[7][1]), "+f"(s[7][2]), "+f"(s[7][3])
      : "l"(da), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_rs_m64n64<__nv_bfloat16>(float (&acc)[8][4], const uint32_t* a,
                                                   uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(acc[0][0]), "+f"(acc[0][1]), "+f"(acc[0][2]), "+f"(acc[0][3]), "+f"(acc[1][0]), "+f"(acc[1][1]), "+f"(acc[1][2]), "+f"(acc[1][3]), "+f"(acc[2][0]), "+f"(acc[2][1]), "+f"(acc[2][2]), "+f"(acc[2][3]), "+f"(acc[3][0]), "+f"(acc[3][1]), "+f"(acc[3][2]), "+f"(acc[3][3]), "+f"(acc[4][0]), "+f"(acc[4][1]), "+f"(acc[4][2]), "+f"(acc[4][3]), "+f"(acc[5][0]), "+f"(acc[5][1]), "+f"(acc[5][2]), "+f"(acc[5][3]), "+f"(acc[6][0]), "+f"(acc[6][1]), "+f"(acc[6][2]), "+f"(acc[6][3]), "+f"(acc[7][0]), "+f"(acc[7][1]), "+f"(acc[7][2]), "+f"(acc[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}

template <>
__device__ __forceinline__ void wgmma_rs_m64n64<__half>(float (&acc)[8][4], const uint32_t* a,
                                                   uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(acc[0][0]), "+f"(acc[0][1]), "+f"(acc[0][2]), "+f"(acc[0][3]), "+f"(acc[1][0]), "+f"(acc[1][1]), "+f"(acc[1][2]), "+f"(acc[1][3]), "+f"(acc[2][0]), "+f"(acc[2][1]), "+f"(acc[2][2]), "+f"(acc[2][3]), "+f"(acc[3][0]), "+f"(acc[3][1]), "+f"(acc[3][2]), "+f"(acc[3][3]), "+f"(acc[4][0]), "+f"(acc[4][1]), "+f"(acc[4][2]), "+f"(acc[4][3]), "+f"(acc[5][0]), "+f"(acc[5][1]), "+f"(acc[5][2]), "+f"(acc[5][3]), "+f"(acc[6][0]), "+f"(acc[6][1]), "+f"(acc[6][2]), "+f"(acc[6][3]), "+f"(acc[7][0]), "+f"(acc[7][1]), "+f"(acc[7][2]), "+f"(acc[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
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

  template <int ROWS, int NT>
  __device__ static void load(T* tile, const T* base, long long stride, int valid, int tid) {
    constexpr int kChunks = D / 8;
    char* t = reinterpret_cast<char*>(tile);
#pragma unroll
    for (int c = tid; c < ROWS * kChunks; c += NT) {
      int row = c / kChunks, ch = c % kChunks;
      bool ok = row < valid;
      const T* src = ok ? base + row * stride + ch * 8 : base;
      cp_async16(t + (ch / 8) * ROWS * 128 + row * 128 + (((ch % 8) ^ (row % 8)) * 16), src, ok);
    }
  }

  // cp.async wrote the tiles through the generic proxy; wgmma reads them
  // through the async proxy.
  __device__ static void loaded() {
#ifdef DA_HAVE_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
  }

  // s[64 x N] (this warpgroup's rows of A) = A B^T: A an AROWS-row tile, B an
  // N-row tile, both K-major (d contiguous).
  template <int AROWS, int N>
  __device__ static void qk(float (&s)[N / 8][4], const T* sA, const T* sB, int warp, int) {
#ifdef DA_HAVE_WGMMA
    const char* q = reinterpret_cast<const char*>(sA) + (warp / 4) * 64 * 128;
    const char* k = reinterpret_cast<const char*>(sB);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma_ss<N, T>(s, wgmma_desc(q + (kk / 4) * AROWS * 128 + (kk % 4) * 32),
                     wgmma_desc(k + (kk / 4) * N * 128 + (kk % 4) * 32));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#else
    (void)s, (void)sA, (void)sB, (void)warp;
    __trap();
#endif
  }

  // acc[64 x D] += P B: P (64 x KROWS) in registers (C layout), B a KROWS-row tile
  // read transposed (MN-major, d contiguous).
  template <int KROWS>
  __device__ static void pv(float (&acc)[D / 8][4], float (&p)[KROWS / 8][4], const T* sV, int,
                            int) {
#ifdef DA_HAVE_WGMMA
    const char* v = reinterpret_cast<const char*>(sV);
    uint32_t af[KROWS / 16][4];
#pragma unroll
    for (int kk = 0; kk < KROWS / 16; ++kk) {
      af[kk][0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
      af[kk][1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
      af[kk][2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
      af[kk][3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
    }
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < KROWS / 16; ++kk)
#pragma unroll
      for (int half = 0; half < D / 64; ++half)
        wgmma_rs_m64n64<T>(*reinterpret_cast<float(*)[8][4]>(&acc[half * 8]), af[kk],
                           wgmma_desc(v + half * KROWS * 128 + kk * 16 * 128));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#else
    (void)acc, (void)p, (void)sV;
    __trap();
#endif
  }
};

}  // namespace da_cuda

#endif  // DA_CUDA_SM90_CUH
