// cuda_kernels.cuh: the CUDA kernels of dilated attention (portable mma.sync path,
// sm_80+), included by one translation unit per (pass, dtype).
//
// How the dilation is fused. A CTA owns `rows` positions of one sequence and one
// head (or, for dK/dV, one kv head): p0 + L * t, t < rows, with L the lcm of the
// dilations its heads use, in chunks that sit inside blocks of G positions (G the
// gcd of the segment lengths). So for every (head, pattern) all the CTA's rows
// have the same residue mod r and lie in the same segment: either all of them
// are selected or none is. The CTA walks the (head, pattern, segment) "units"
// that select its rows and, for each, streams the tiles of the other side (the
// dilated keys for forward/dQ, the dilated queries for dK/dV) straight from the
// [tokens, heads, d] tensors with a row stride of r tokens (cp.async, computed
// row addresses; no gather copies). One online softmax (forward) or one
// accumulator (backward) runs over every unit, so all patterns are merged in
// registers and every output row is written once: no per-pattern outputs, no
// fp32 workspace, no atomics (deterministic).
//
// When the geometry does not line up (lcm too large, segment lengths not a
// multiple of the chunk), rows of a CTA can straddle segments or differ in
// selection; units then cover part of the rows and per-row masks keep the result
// exact (slower, never wrong).
//
// Tiles: 16 rows per warp; mma.sync m16n8k16 with fp32 accumulation; shared
// tiles padded to d + 8 elements per row so ldmatrix is conflict-free for any d
// that is a multiple of 16.
#ifndef DA_ATTENTION_CUDA_KERNELS_CUH
#define DA_ATTENTION_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "attention/cuda_geometry.h"
#include "attention/cuda_launch.h"
#include "attention/params.h"

namespace da_cuda {

__device__ __forceinline__ void sequence_of(const KernelArgs& a, int s, long long* start, int* n) {
  if (a.varlen == 0) {
    *start = (long long)s * a.seqlen;
    *n = a.seqlen;
  } else {
    const int64_t* cu = a.varlen == 1 ? a.cu_inline : a.cu_device;
    *start = cu[s];
    *n = (int)(cu[s + 1] - cu[s]);
  }
}

// ------------------------------------------------------------ mma helpers ----

template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float x, float y) {
  __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float x, float y) {
  __half2 v = __floats2half2_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t* a, const uint32_t* b);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t* a,
                                                        const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t* a,
                                                 const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)),
               "l"(gmem), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }

// ROWS rows of D elements into a padded shared tile; rows >= valid are zeros.
// Row t of the source starts at base + t * stride (elements).
template <typename T, int D, int ROWS, int NT>
__device__ __forceinline__ void load_rows(T* tile, const T* base, long long stride, int valid,
                                          int tid) {
  constexpr int kChunks = D / 8, S = D + 8;
  if constexpr (NT % kChunks == 0 && ROWS % (NT / kChunks) == 0) {
    // Thread tid copies chunk tid % kChunks of rows tid / kChunks + k * kStep:
    // addresses advance by constants (the multiply-per-chunk form costs the
    // kernels more issue slots than the copies themselves).
    constexpr int kStep = NT / kChunks;
    const int r0 = tid / kChunks, ch = tid % kChunks;
    T* dst = tile + r0 * S + ch * 8;
    const T* src = base + r0 * stride + ch * 8;
    const long long step = kStep * stride;
#pragma unroll
    for (int k = 0; k < ROWS / kStep; ++k) {
      const bool ok = r0 + k * kStep < valid;
      cp_async16(dst + k * kStep * S, ok ? src : base, ok);
      src += step;
    }
  } else {
#pragma unroll
    for (int c = tid; c < ROWS * kChunks; c += NT) {
      int row = c / kChunks, ch = c % kChunks;
      bool ok = row < valid;
      const T* src = ok ? base + row * stride + ch * 8 : base;
      cp_async16(tile + row * S + ch * 8, src, ok);
    }
  }
}

// acc[16 x N] += A[16 x D] * B[N x D]^T, A and B row-major padded shared tiles.
template <typename T, int D, int N>
__device__ __forceinline__ void mma_abt(float (&acc)[N / 8][4], const T* sA, const T* sB,
                                        int lane) {
  constexpr int S = D + 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, sA + (lane % 16) * S + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      ldmatrix_x4(bf, sB + (np * 16 + (lane % 8) + (lane / 16) * 8) * S + kk * 16 +
                          ((lane / 8) % 2) * 8);
      mma16816<T>(acc[2 * np], af, bf);
      mma16816<T>(acc[2 * np + 1], af, bf + 2);
    }
  }
}

// acc[16 x D] += P[16 x N] * B[N x D]; P in registers (C layout of a previous
// product), B a row-major padded shared tile.
template <typename T, int D, int N>
__device__ __forceinline__ void mma_pb(float (&acc)[D / 8][4], const float (&p)[N / 8][4],
                                       const T* sB, int lane) {
  constexpr int S = D + 8;
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t af[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]),
                      pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                      pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, sB + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * S + dp * 16 +
                                (lane / 16) * 8);
      mma16816<T>(acc[2 * dp], af, bf);
      mma16816<T>(acc[2 * dp + 1], af, bf + 2);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) x[i][0] = x[i][1] = x[i][2] = x[i][3] = 0.f;
}

// Where a warp stages its 16 output rows (put: two elements at row, column
// col + c, col a multiple of 8; get: the 16-byte chunk at row, col): rows of
// D + 8 elements from `p` (bank-conflict free without a swizzle), or
// (SwizzledStage) the warp's own rows of a tile in Sm90Mma's layout.
template <typename T, int D>
struct PaddedStage {
  T* p;
  __device__ __forceinline__ void put(int row, int col, int c, uint32_t v) const {
    *reinterpret_cast<uint32_t*>(p + row * (D + 8) + col + c) = v;
  }
  __device__ __forceinline__ uint4 get(int row, int col) const {
    return *reinterpret_cast<const uint4*>(p + row * (D + 8) + col);
  }
};

// Rows first_row + (0..15) of a ROWS-row tile in Sm90Mma::load's layout (64-column
// halves of ROWS rows of 128 bytes; the 16-byte chunk c of row x at chunk
// c ^ (x % 8)): the stage overwrites only the rows it stands for, so a warp may
// stage its output in its own Q rows once its warpgroup's products have read
// them; store_rows' accesses touch each bank once here too. Shared-window
// addresses: as generic pointers the swizzled addresses took a register pair
// each, and the d = 64 forward spilled. The volatile moves keep the compiler
// from computing the thread's swizzled addresses once, before the kernel's
// item loop, and holding them through it (28 bytes more spills at d = 64).
template <typename T, int ROWS>
struct SwizzledStage {
  static_assert(sizeof(T) == 2, "64 elements a 128-byte row");
  uint32_t tile;  // smem_u32 of the tile
  int first_row;
  __device__ __forceinline__ uint32_t addr(int row, int col) const {
    uint32_t t;
    int fr;
    asm volatile("mov.b32 %0, %2;\n mov.b32 %1, %3;\n"
                 : "=r"(t), "=r"(fr)
                 : "r"(tile), "r"(first_row));
    const int x = fr + row;
    return t + (uint32_t)((col / 64) * ROWS * 128 + x * 128) +
           (uint32_t)(((col % 64) * 2) ^ ((x % 8) * 16));
  }
  __device__ __forceinline__ void put(int row, int col, int c, uint32_t v) const {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr(row, col + c)), "r"(v) : "memory");
  }
  __device__ __forceinline__ uint4 get(int row, int col) const {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr(row, col))
                 : "memory");
    return v;
  }
};

// Writes a warp's 16 x D accumulator (times mul) as T rows through its staging
// rows (PaddedStage or SwizzledStage): row t (0..15) goes to dst + t * stride
// when t < valid.
template <typename T, int D, class Stage>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], float mul0, float mul1,
                                           const Stage& stage, T* dst, long long stride, int valid,
                                           int lane) {
  int r0 = lane / 4, c0 = (lane % 4) * 2;
  __syncwarp();
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    stage.put(r0, nt * 8, c0, pack2<T>(acc[nt][0] * mul0, acc[nt][1] * mul0));
    stage.put(r0 + 8, nt * 8, c0, pack2<T>(acc[nt][2] * mul1, acc[nt][3] * mul1));
  }
  __syncwarp();
  constexpr int kChunks = D / 8;
  for (int c = lane; c < 16 * kChunks; c += 32) {
    int row = c / kChunks, ch = c % kChunks;
    if (row < valid) {
      // The destination first, as before the stages existed: the other order
      // changed the backward's code (and read 3-4% slower at d = 128).
      uint4* to = reinterpret_cast<uint4*>(dst + row * stride + ch * 8);
      *to = stage.get(row, ch * 8);
    }
  }
}

// store_rows through rows of D + 8 elements from `stage`.
template <typename T, int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 8][4], float mul0, float mul1,
                                           T* stage, T* dst, long long stride, int valid,
                                           int lane) {
  store_rows<T, D>(acc, mul0, mul1, PaddedStage<T, D>{stage}, dst, stride, valid, lane);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// 2^x with the SFU's approximation (flushes denormal results to 0; 2^-inf = 0),
// as every flash-attention kernel uses: the softmax has no use for denormals.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLog2e = 1.442695040888963407f;

// --------------------------------------------------------------- pipeline ----

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// The CTA's loop: walks the TileStream and keeps ST - 1 tiles in flight
// (cp.async groups, one per tile, all threads loading). issue(desc, slot)
// enqueues a tile's loads into ring slot `slot`; compute(desc, slot) runs once
// they are visible to the whole CTA. The slot refilled in an iteration is the
// one computed in the previous iteration, behind the barrier.
template <int ST, class Issue, class Loaded, class Compute>
__device__ __forceinline__ void run_tiles(const KernelArgs& a, int n, const OwnRows& own,
                                          int head_first, int head_count, int kv_side, int bn,
                                          long long start, TileDesc* ring, Issue&& issue,
                                          Loaded&& loaded, Compute&& compute) {
  static_assert(ST >= 2, "at least double buffering");
  TileStream stream(a, n, own, head_first, head_count, kv_side, bn, start);
  int issued = 0;
  auto issue_next = [&]() {
    TileDesc d;
    if (stream.next(&d)) {
      int slot = issued % ST;
      issue(d, slot);
      if (threadIdx.x == 0) ring[slot] = d;
      ++issued;
    }
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < ST - 1; ++s) issue_next();
  for (int i = 0; i < issued; ++i) {
    cp_async_wait<ST - 2>();
    loaded();
    __syncthreads();
    issue_next();
    const TileDesc d = ring[i % ST];
    compute(d, i % ST);
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the tiles (epilogues reuse them)
}

// -------------------------------------------------------------- forward -----

// The dynamic shared memory `raw` rounded up to Mm::kAlign bytes. VISIBLE: as
// an offset from `raw`, so that the pointers derived from it stay visibly in
// shared memory. Through the integer rounding the compiler no longer knows
// that, and the Hopper dK/dV consumers read their query rows' lse and delta
// with generic loads (with shared loads the backward measured 1-3% faster,
// H100). The forward kernels keep the integer form: the offset form changed
// their code and measured 1-2% slower.
template <class Mm, bool VISIBLE = false>
__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* raw) {
  if constexpr (VISIBLE) return raw + (Mm::kAlign - smem_u32(raw) % Mm::kAlign) % Mm::kAlign;
  return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(raw) + Mm::kAlign - 1) &
                                          ~(uintptr_t)(Mm::kAlign - 1));
}

// The sequence and the rows of this CTA (blockIdx.x = sequence * tiles_per_seq +
// tile) for heads [head_first, head_first + count); false when the tile lies past
// its sequence's end.
__device__ __forceinline__ bool cta_rows(const KernelArgs& a, int tiles_per_seq, int head_first,
                                         int count, int rows, long long* start, int* n,
                                         OwnRows* own) {
  sequence_of(a, blockIdx.x / tiles_per_seq, start, n);
  return own_rows(cta_geometry(a, head_first, count, rows), rows, *n, blockIdx.x % tiles_per_seq,
                  own);
}

// Whether some unit (next_unit) selects rows of the CTA. When none does, every
// output row of the CTA is zero (and its LSE -inf): the kernels write that at
// once and skip the own-row loads, the ring and the tile walk. (Rows of
// residues no pattern selects get no CTA at all, HeadGeometry::sel; these are
// the rest: rows before a segment's offset, short last segments.)
__device__ __forceinline__ bool rows_have_work(const KernelArgs& a, int n, const OwnRows& own,
                                               int head_first, int head_count, int kv_side) {
  UnitCursor cursor = {0, 0, -1};
  Unit u;
  return next_unit(a, n, own, head_first, head_count, kv_side, kOtherRows, &cursor, &u);
}

// Zeros into `nrows` rows of D elements (row t at first + t * stride elements),
// 16 bytes a store, NT threads.
template <typename T, int D, int NT>
__device__ __forceinline__ void zero_rows(T* first, long long stride, int nrows, int tid) {
  constexpr int kChunks = D * (int)sizeof(T) / 16;
  for (int c = tid; c < nrows * kChunks; c += NT)
    reinterpret_cast<uint4*>(first + (long long)(c / kChunks) * stride)[c % kChunks] =
        make_uint4(0u, 0u, 0u, 0u);
}

// The forward's output for rows no unit selects: O = 0, LSE = -inf (semantics).
template <typename T, int D, int NT>
__device__ __forceinline__ void forward_empty_rows(const KernelArgs& a, long long start,
                                                   const OwnRows& own, int j, int tid) {
  const long long q_stride = (long long)own.L * a.h * D;
  zero_rows<T, D, NT>(static_cast<T*>(a.out) + ((start + own.p0) * a.h + j) * D, q_stride,
                      own.nrows, tid);
  if (a.lse != nullptr)
    for (int t = tid; t < own.nrows; t += NT)
      a.lse[(start + own.p0 + (long long)own.L * t) * a.h + j] = -INFINITY;
}

// The rows of [first, end) (sequence-relative, first a multiple of g.L:
// unowned_span) whose residue has no CTAs, for head `head` of tensors
// [tokens, heads, D] from sequence start `start`: zero in t0 and t1 (when not
// NULL), -inf in lse (when not NULL): the forward's O and LSE, or the
// backward's dQ, or dK and dV. Residue by residue, a thread a 16-byte chunk at
// a fixed column: a few instructions a store, so a Hopper producer can write
// them beside its loads.
template <typename T, int D, int NT>
__device__ __forceinline__ void zero_unowned_rows(const RowGeometry& g, void* const& t0,
                                                  void* const& t1, float* const& lse,
                                                  const int& heads, int head, long long start,
                                                  int first, int end, int tid) {
  // (t0, t1, lse and heads by reference: passed from the kernel parameters, they
  // are read there where used, and the forward's code stayed as it was.)
  constexpr int kChunks = D * (int)sizeof(T) / 16, kRows = NT / kChunks;
  static_assert(NT % kChunks == 0, "whole rows a pass");
  const long long row = (long long)heads * D;  // elements from one position to the next
  T* out0 = static_cast<T*>(t0) + (start * heads + head) * D + (tid % kChunks) * (16 / sizeof(T));
  for (unsigned long long un = all_residues(g.L) & ~g.sel; un != 0; un &= un - 1) {
    const int rho = __ffsll((long long)un) - 1;
    const int p0 = first + rho + g.L * (tid / kChunks), step = g.L * kRows;
    T* o = out0 + p0 * row;
    for (int p = p0; p < end; p += step, o += step * row)
      *reinterpret_cast<uint4*>(o) = make_uint4(0u, 0u, 0u, 0u);
    if (t1 != nullptr) {
      o = static_cast<T*>(t1) + (out0 - static_cast<T*>(t0)) + p0 * row;
      for (int p = p0; p < end; p += step, o += step * row)
        *reinterpret_cast<uint4*>(o) = make_uint4(0u, 0u, 0u, 0u);
    }
    if (lse != nullptr)
      for (int p = first + rho + g.L * tid; p < end; p += g.L * NT)
        lse[(start + p) * heads + head] = -INFINITY;
  }
}

// Per-thread own dilated indices of the thread's two rows (row0, row0 + 8) for the
// unit of the current tile; recomputed only when the unit changes.
struct RowIndices {
  int di0 = -1, di1 = -1, serial = -1;
  __device__ __forceinline__ void update(const TileDesc& d, const OwnRows& own, int row0) {
    if (d.serial == serial) return;
    serial = d.serial;
    di0 = desc_row_index(d, own, row0);
    di1 = desc_row_index(d, own, row0 + 8);
  }
};

// The dilated K and V rows of tile d (kv head gkv) into ring slot `slot`.
template <typename T, int D, class Mm, int BN, int NT>
__device__ __forceinline__ void load_kv(const KernelArgs& a, const TileDesc& d, int slot, int gkv,
                                        T* sK, T* sV, int tid) {
  long long stride = (long long)d.r * a.h_kv * D, first = (d.token * a.h_kv + gkv) * D;
  Mm::template load<BN, NT>(sK + slot * Mm::tile_elems(BN), static_cast<const T*>(a.k) + first,
                            stride, d.valid, tid);
  Mm::template load<BN, NT>(sV + slot * Mm::tile_elems(BN), static_cast<const T*>(a.v) + first,
                            stride, d.valid, tid);
}


// How the forward kernel multiplies: tiles in shared memory (layout, loads) and
// the two products of a warp's 16 rows, S = Q K^T and O += P V. SyncMma is the
// portable mma.sync path; Sm90Mma (cuda_sm90.cuh) uses wgmma.
template <typename T, int D>
struct SyncMma {
  static constexpr int kBN = kOtherRows;
  static constexpr int kStages = D <= 96 ? 4 : 3;
  static constexpr int kMinBlocks = 1;
  static constexpr int kAlign = 16;
  static constexpr int tile_elems(int rows) { return rows * (D + 8); }
  template <int ROWS, int NT>
  __device__ static void load(T* tile, const T* base, long long stride, int valid, int tid) {
    load_rows<T, D, ROWS, NT>(tile, base, stride, valid, tid);
  }
  __device__ static void loaded() {}
  // s[16 x N] (this warp's rows of A) = A B^T; A an AROWS-row tile, B N rows.
  template <int AROWS, int N>
  __device__ static void qk(float (&s)[N / 8][4], const T* sA, const T* sB, int warp, int lane) {
    mma_abt<T, D, N>(s, sA + warp * 16 * (D + 8), sB, lane);
  }
  // acc[16 x D] += P B; P (16 x KROWS) in registers, B a KROWS-row tile.
  template <int KROWS>
  __device__ static void pv(float (&acc)[D / 8][4], float (&p)[KROWS / 8][4], const T* sB, int,
                            int lane) {
    mma_pb<T, D, KROWS>(acc, p, sB, lane);
  }
  // Two independent products of each kind (the backward's pairs).
  template <int AROWS, int N>
  __device__ static void qk2(float (&s1)[N / 8][4], const T* a1, const T* b1,
                             float (&s2)[N / 8][4], const T* a2, const T* b2, int warp, int lane) {
    qk<AROWS, N>(s1, a1, b1, warp, lane);
    qk<AROWS, N>(s2, a2, b2, warp, lane);
  }
  template <int KROWS>
  __device__ static void pv2(float (&acc1)[D / 8][4], float (&p1)[KROWS / 8][4], const T* b1,
                             float (&acc2)[D / 8][4], float (&p2)[KROWS / 8][4], const T* b2,
                             int warp, int lane) {
    pv<KROWS>(acc1, p1, b1, warp, lane);
    pv<KROWS>(acc2, p2, b2, warp, lane);
  }
};

// The Hopper policy (cuda_sm90.cuh, included by the forward translation units).
template <typename T, int D>
struct Sm90Mma;

template <typename T, int D, class Mm, int BM = kFwdRows>
constexpr int forward_smem_bytes() {
  // Q (BM rows) and kStages K and V buffers; the epilogue stages 16 x (D + 8)
  // per warp.
  int tiles = (Mm::tile_elems(BM) + 2 * Mm::kStages * Mm::tile_elems(Mm::kBN)) * (int)sizeof(T);
  int stage = BM * (D + 8) * (int)sizeof(T);
  return (tiles > stage ? tiles : stage) + Mm::kAlign;
}

// The online softmax keeps a reference maximum m per row and moves it only when
// a tile's maximum exceeds it by more than kRescaleSlack (log2 units). Until then
// the probabilities exp2(s - m) stay <= 2^kRescaleSlack, which fp32 sums, bf16 and
// fp16 hold exactly as well as values <= 1 (only the exponent differs), and O / l
// and LSE = m + log2 l do not depend on which m was used. Most tiles after the
// first few then skip the rescale of O and the two exp2 of alpha.
constexpr float kRescaleSlack = 8.f;

// One online-softmax step of the forward pass for a warp's two rows (row0 =
// lane / 4 and row0 + 8 of its 16, own dilated indices di0 / di1 in the tile's
// unit, -1 when unselected): masks the raw scores of tile d where the tile needs
// it, turns s into the unnormalised probabilities P and updates the reference
// maximum and the running sum. Returns whether the output accumulator must be
// rescaled by alpha (softmax_rescale; the same for the whole warp, one vote), kept
// apart so the rescale can wait for a product in flight. The maxima and sums run
// as four independent chains per row: one warp per scheduler does this step while
// the other consumer's products run, so latency, not throughput, bounds it. The
// scale is folded into the exponent's FMA (scale > 0, so it commutes with the
// max).
template <int BN>
__device__ __forceinline__ bool softmax_scores(const KernelArgs& a, const TileDesc& d, int di0,
                                               int di1, int lane, float (&s)[BN / 8][4],
                                               float (&m_run)[2], float (&l_run)[2],
                                               float (&alpha)[2]) {
  static_assert(BN % 32 == 0, "four chains of whole 8-column blocks");
  constexpr int kChains = 4;
  const bool masked =
      !d.all_rows || d.k0 + BN > d.hi || (a.causal && d.k0 + BN - 1 > d.di_first);
  if (masked) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int kk = d.k0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        s[nt][e] = pair_selected<0>(e < 2 ? di0 : di1, kk, d.hi, a.causal) ? s[nt][e] : -INFINITY;
      }
    }
  }
  float mx[2];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float c[kChains];
#pragma unroll
    for (int k = 0; k < kChains; ++k) c[k] = fmaxf(s[k][2 * rr], s[k][2 * rr + 1]);
#pragma unroll
    for (int nt = kChains; nt < BN / 8; ++nt)
      c[nt % kChains] = fmaxf(c[nt % kChains], fmaxf(s[nt][2 * rr], s[nt][2 * rr + 1]));
    mx[rr] = fmaxf(fmaxf(c[0], c[1]), fmaxf(c[2], c[3]));
  }
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) mx[rr] = quad_max(mx[rr]) * a.scale_log2;
  const bool rescale = __any_sync(0xffffffffu, mx[0] > m_run[0] + kRescaleSlack ||
                                                   mx[1] > m_run[1] + kRescaleSlack);
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    if (rescale) {
      const float m_new = fmaxf(m_run[rr], mx[rr]);
      alpha[rr] = fast_exp2(m_run[rr] - (m_new == -INFINITY ? 0.f : m_new));
      m_run[rr] = m_new;
    }
    const float base = m_run[rr] == -INFINITY ? 0.f : m_run[rr];
    float c[kChains] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      s[nt][2 * rr] = fast_exp2(fmaf(s[nt][2 * rr], a.scale_log2, -base));
      s[nt][2 * rr + 1] = fast_exp2(fmaf(s[nt][2 * rr + 1], a.scale_log2, -base));
      c[nt % kChains] += s[nt][2 * rr] + s[nt][2 * rr + 1];
    }
    const float sum = (c[0] + c[1]) + (c[2] + c[3]);
    l_run[rr] = rescale ? l_run[rr] * alpha[rr] + sum : l_run[rr] + sum;
  }
  return rescale;
}

template <int D>
__device__ __forceinline__ void softmax_rescale(float (&acc)[D / 8][4], const float (&alpha)[2]) {
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    acc[dt][0] *= alpha[0];
    acc[dt][1] *= alpha[0];
    acc[dt][2] *= alpha[1];
    acc[dt][3] *= alpha[1];
  }
}

// The forward epilogue of a warp's 16 rows (CTA rows warp * 16 ...): O / l
// through the warp's staging rows `stage` (store_rows), and the LSE.
template <typename T, int D, class Stage>
__device__ __forceinline__ void forward_epilogue(const KernelArgs& a, const float (&acc)[D / 8][4],
                                                 const float (&m_run)[2], const float (&l_run)[2],
                                                 const Stage& stage, long long start,
                                                 const OwnRows& own,
                                                 long long q_first, long long q_stride, int j,
                                                 int warp, int lane) {
  float inv[2], lse[2];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    float l = quad_sum(l_run[rr]);
    inv[rr] = l > 0.f ? 1.f / l : 0.f;
    lse[rr] = l > 0.f ? (m_run[rr] + log2f(l)) * kLn2 : -INFINITY;
  }
  T* o = static_cast<T*>(a.out);
  store_rows<T, D>(acc, inv[0], inv[1], stage, o + q_first + (long long)warp * 16 * q_stride,
                   q_stride, own.nrows - warp * 16, lane);
  const int row0 = warp * 16 + lane / 4, row1 = row0 + 8;
  if (a.lse != nullptr && lane % 4 == 0) {
    if (row0 < own.nrows) a.lse[(start + own.p0 + (long long)own.L * row0) * a.h + j] = lse[0];
    if (row1 < own.nrows) a.lse[(start + own.p0 + (long long)own.L * row1) * a.h + j] = lse[1];
  }
}

template <typename T, int D, class Mm>
__global__ void __launch_bounds__(kFwdRows * 2, Mm::kMinBlocks)
    forward_kernel(const __grid_constant__ KernelArgs a, int tiles_per_seq) {
  constexpr int BM = kFwdRows, BN = Mm::kBN, S = D + 8, NT = BM * 2, ST = Mm::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ TileDesc ring[ST];
  T* sQ = reinterpret_cast<T*>(aligned_smem<Mm>(smem_raw));
  T* sK = sQ + Mm::tile_elems(BM);  // ST buffers of BN rows
  T* sV = sK + ST * Mm::tile_elems(BN);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int j = blockIdx.y;
  long long start;
  int n;
  OwnRows own;
  if (!cta_rows(a, tiles_per_seq, j, 1, BM, &start, &n, &own)) return;
  if (!rows_have_work(a, n, own, j, 1, 0)) {
    forward_empty_rows<T, D, NT>(a, start, own, j, tid);
    return;
  }
  const int gkv = j / (a.h / a.h_kv);
  const long long q_stride = (long long)own.L * a.h * D;
  const long long q_first = ((start + own.p0) * a.h + j) * D;
  Mm::template load<BM, NT>(sQ, static_cast<const T*>(a.q) + q_first, q_stride, own.nrows, tid);

  const int row0 = warp * 16 + lane / 4;
  float acc[D / 8][4];
  zero(acc);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  RowIndices idx;
  run_tiles<ST>(
      a, n, own, j, 1, 0, BN, start, ring,
      [&](const TileDesc& d, int slot) { load_kv<T, D, Mm, BN, NT>(a, d, slot, gkv, sK, sV, tid); },
      [&]() { Mm::loaded(); },
      [&](const TileDesc& d, int slot) {
        idx.update(d, own, row0);
        float s[BN / 8][4];
        zero(s);
        Mm::template qk<BM, BN>(s, sQ, sK + slot * Mm::tile_elems(BN), warp, lane);
        float alpha[2];
        if (softmax_scores<BN>(a, d, idx.di0, idx.di1, lane, s, m_run, l_run, alpha))
          softmax_rescale<D>(acc, alpha);
        Mm::template pv<BN>(acc, s, sV + slot * Mm::tile_elems(BN), warp, lane);
      });

  forward_epilogue<T, D>(a, acc, m_run, l_run, PaddedStage<T, D>{sQ + warp * 16 * S}, start, own,
                         q_first, q_stride, j, warp, lane);
}

// ------------------------------------------------------------- backward -----

// delta[token, j] = dout . out (fp32), the row term of dS. kDeltaLanes lanes
// share a row, consecutive lanes reading consecutive 16-byte chunks, so a warp's
// loads cover 32 / kDeltaLanes whole rows (a thread a row read 32 rows' 16-byte
// pieces per load); the lanes' sums meet by shuffles. The loop runs over
// warp-sized row blocks, so every lane of a warp takes part in every shuffle.
template <int D>
constexpr int delta_lanes() {
  return (D / 8) % 8 == 0 ? 8 : 4;  // a power of two dividing the row's chunks
}

template <typename T, int D>
__global__ void delta_kernel(const T* __restrict__ out, const T* __restrict__ dout,
                             float* __restrict__ delta, long long rows) {
  constexpr int kLanes = delta_lanes<D>(), kPer = D / 8 / kLanes, kRowsPerWarp = 32 / kLanes;
  static_assert(D % (8 * kLanes) == 0, "whole chunks a lane");
  const int lane = threadIdx.x % 32, sub = lane % kLanes;
  const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
  const long long warps = (long long)gridDim.x * blockDim.x / 32;
  for (long long base = warp * kRowsPerWarp; base < rows; base += warps * kRowsPerWarp) {
    const long long r = base + lane / kLanes;
    float sum = 0.f;
    if (r < rows) {
      const uint4* po = reinterpret_cast<const uint4*>(out + r * D) + sub;
      const uint4* pd = reinterpret_cast<const uint4*>(dout + r * D) + sub;
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        uint4 xo = po[c * kLanes], xd = pd[c * kLanes];
        const T* eo = reinterpret_cast<const T*>(&xo);
        const T* ed = reinterpret_cast<const T*>(&xd);
#pragma unroll
        for (int e = 0; e < 8; ++e) sum += (float)eo[e] * (float)ed[e];
      }
    }
#pragma unroll
    for (int m = kLanes / 2; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
    if (r < rows && sub == 0) delta[r] = sum;
  }
}

// Pipeline depth of the backward kernels: a third stage where it still leaves
// room for two CTAs per SM.
template <int D>
constexpr int backward_stages() {
  return D <= 64 ? 3 : 2;
}

// Own tiles (2 x kBwdRows rows), the other side's ring (ST x 2 tiles of
// kOtherRows rows), lse/delta rows (dK/dV), alignment. The epilogue stages its
// outputs (16 x (D + 8) per warp, twice for dK/dV) in the ring.
template <typename T, int D, class Mm>
constexpr int backward_smem_bytes() {
  return (2 * Mm::tile_elems(kBwdRows) + 2 * backward_stages<D>() * Mm::tile_elems(kOtherRows)) *
             (int)sizeof(T) +
         2 * backward_stages<D>() * kOtherRows * 4 + Mm::kAlign;
}

// Whether some pair of tile d's element step may be unselected (the mask runs
// then): not every own row in the unit, the tile past the unit's range, or a
// causal tile that crosses the diagonal (KV_SIDE: the own rows are the keys). A
// function of the descriptor alone, so the Hopper consumers evaluate it while
// the tile's products run.
template <int BN, bool KV_SIDE>
__device__ __forceinline__ bool tile_masked(const KernelArgs& a, const TileDesc& d) {
  return !d.all_rows || d.k0 + BN > d.hi ||
         (a.causal && (KV_SIDE ? d.k0 < d.di_last : d.k0 + BN - 1 > d.di_first));
}

// dQ's element step for a warp's two rows (di0 / di1 their own dilated indices,
// -1 when unselected; lse2 the rows' LSE in log2 units, dlt their delta): s = S
// and dp = dP become dS = P (dP - delta) in s, P = 2^(S scale_log2 - lse2), with
// unselected pairs 0 (masked: tile_masked<BN, false>).
template <int BN>
__device__ __forceinline__ void dq_scores(const KernelArgs& a, const TileDesc& d, bool masked,
                                          int di0, int di1, int lane, const float (&lse2)[2],
                                          const float (&dlt)[2], float (&s)[BN / 8][4],
                                          const float (&dp)[BN / 8][4]) {
  // P in place, then the mask, then dS: the mask is one branch around its loop
  // (inside the loop the compiler branched per element).
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] = fast_exp2(fmaf(s[nt][e], a.scale_log2, -lse2[e >> 1]));
  if (masked) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int kk = d.k0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        // pair_selected<0>, written out: the call form changed the backward's
        // register allocation (not measured on a GPU).
        int di = (e >> 1) ? di1 : di0;
        bool ok = di >= 0 && kk < d.hi && (!a.causal || kk <= di);
        s[nt][e] = ok ? s[nt][e] : 0.f;
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] *= dp[nt][e] - dlt[e >> 1];  // dS
}

// The values of a tile's query columns that this lane's elements of S^T and
// dP^T in 8-column block nt meet (columns nt * 8 + (lane % 4) * 2 + 0 / 1), from
// the tile's row of them in shared memory (its lse or delta).
__device__ __forceinline__ float2 column_pair(const float* row, int nt, int lane) {
  return *reinterpret_cast<const float2*>(row + nt * 8 + (lane % 4) * 2);
}

// The LSE of a tile's query columns that this lane's elements of S^T meet,
// negated in log2 units, from the tile's lse row: dkdv_scores' `nlse2`.
template <int BN>
__device__ __forceinline__ void column_lse2(const float* lrow, int lane, float (&nlse2)[BN / 8][2]) {
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
    const float2 l = column_pair(lrow, nt, lane);
    nlse2[nt][0] = -l.x * kLog2e;
    nlse2[nt][1] = -l.y * kLog2e;
  }
}

// `mul` times the values of a tile's query columns that this lane's elements of
// S^T or dP^T meet, in both of its rows, from the tile's row of them (its lse
// or delta): the accumulators the Hopper dK/dV consumers start S^T and dP^T
// from (dkdv_scores' LSE_IN_S, DELTA_IN_DP).
template <int BN>
__device__ __forceinline__ void column_init(const float* row, float mul, int lane,
                                            float (&x)[BN / 8][4]) {
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
    const float2 v = column_pair(row, nt, lane);
    x[nt][0] = x[nt][2] = v.x * mul;
    x[nt][1] = x[nt][3] = v.y * mul;
  }
}

// dK/dV's element step for a warp's two key rows against the tile's query
// columns (their LSE by column_lse2 in nlse2, their delta in drow): s = S^T and
// dp = dP^T become P^T in s and dS^T in dp, unselected pairs 0 (masked:
// tile_masked<BN, true>). The Hopper consumers fold the columns' values into
// the products, which run on accumulators set by column_init: DELTA_IN_DP, dp
// holds delta - dP^T (A negated: Sm90Mma::qk_issue_minus) and drow is not read,
// so no shared load follows the products' wait and an element takes one FADD
// fewer; LSE_IN_S, s holds S^T - lse / scale and nlse2 is not read, so no
// column values live across the wait.
template <int BN, bool DELTA_IN_DP = false, bool LSE_IN_S = false>
__device__ __forceinline__ void dkdv_scores(const KernelArgs& a, const TileDesc& d, bool masked,
                                            int di0, int di1, int lane,
                                            const float (&nlse2)[BN / 8][2], const float* drow,
                                            float (&s)[BN / 8][4], float (&dp)[BN / 8][4]) {
  // As in dq_scores: P^T in place, the mask in one branch, then dS^T.
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      s[nt][e] = LSE_IN_S ? fast_exp2(s[nt][e] * a.scale_log2)
                          : fast_exp2(fmaf(s[nt][e], a.scale_log2, nlse2[nt][e & 1]));
  if (masked) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // pair_selected<1>, written out (see dq_scores).
        int qq = d.k0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        int di = e < 2 ? di0 : di1;
        bool ok = di >= 0 && qq < d.hi && (!a.causal || qq >= di);
        s[nt][e] = ok ? s[nt][e] : 0.f;
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (DELTA_IN_DP) {
        dp[nt][e] = -s[nt][e] * dp[nt][e];  // dS^T = P^T (dP^T - delta)
      } else {
        int col = nt * 8 + (lane % 4) * 2 + (e & 1);
        dp[nt][e] = s[nt][e] * (dp[nt][e] - drow[col]);  // dS^T
      }
    }
}

// The dilated query-side rows of tile d (q and dout of head d.j, their lse and
// delta) into ring slot `slot` (dK/dV streams these).
template <typename T, int D, class Mm, int BN, int NT>
__device__ __forceinline__ void load_qo(const KernelArgs& a, const TileDesc& d, int slot, T* sQ,
                                        T* sO, float* sL, float* sD, int tid) {
  long long stride = (long long)d.r * a.h * D, first = (d.token * a.h + d.j) * D;
  Mm::template load<BN, NT>(sQ + slot * Mm::tile_elems(BN), static_cast<const T*>(a.q) + first,
                            stride, d.valid, tid);
  Mm::template load<BN, NT>(sO + slot * Mm::tile_elems(BN), static_cast<const T*>(a.dout) + first,
                            stride, d.valid, tid);
  for (int c = tid; c < 2 * BN; c += NT) {
    int row = c % BN;
    bool ok = row < d.valid;
    long long idx = (d.token + (long long)d.r * row) * a.h + d.j;
    const float* src = c < BN ? a.lse_in : a.delta;
    cp_async4((c < BN ? sL : sD) + slot * BN + row, ok ? src + idx : src, ok);
  }
}

// The LSE (log2 units) and delta of own query rows row0 and row0 + 8 of head j
// (dQ); rows past the CTA's or not covered by any pattern get P = 0.
__device__ __forceinline__ void own_row_stats(const KernelArgs& a, long long start,
                                              const OwnRows& own, int j, int row0,
                                              float (&lse2)[2], float (&dlt)[2]) {
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int row = row0 + 8 * rr;
    long long idx = (start + own.p0 + (long long)own.L * row) * a.h + j;
    bool ok = row < own.nrows;
    float l = ok ? a.lse_in[idx] : INFINITY;
    lse2[rr] = l == -INFINITY ? INFINITY : l * kLog2e;
    dlt[rr] = ok ? a.delta[idx] : 0.f;
  }
}

// dQ: the CTA owns query rows of head j, streams dilated K/V tiles. At d <= 64
// three CTAs fit an SM (shared memory allows it; the bound keeps registers <= 170).
template <typename T, int D, class Mm>
__global__ void __launch_bounds__(kBwdRows * 2, D <= 64 ? 3 : 1)
    dq_kernel(const __grid_constant__ KernelArgs a, int tiles_per_seq) {
  constexpr int BM = kBwdRows, BN = kOtherRows, S = D + 8, NT = BM * 2;
  constexpr int ST = backward_stages<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ TileDesc ring[ST];
  T* sQ = reinterpret_cast<T*>(aligned_smem<Mm>(smem_raw));
  T* sO = sQ + Mm::tile_elems(BM);  // dout rows
  T* sK = sO + Mm::tile_elems(BM);  // ST buffers
  T* sV = sK + ST * Mm::tile_elems(BN);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int j = blockIdx.y;
  long long start;
  int n;
  OwnRows own;
  if (!cta_rows(a, tiles_per_seq, j, 1, BM, &start, &n, &own)) return;
  const int gkv = j / (a.h / a.h_kv);
  const long long q_stride = (long long)own.L * a.h * D;
  const long long q_first = ((start + own.p0) * a.h + j) * D;
  if (!rows_have_work(a, n, own, j, 1, 0)) {
    zero_rows<T, D, NT>(static_cast<T*>(a.dq) + q_first, q_stride, own.nrows, tid);
    return;
  }
  Mm::template load<BM, NT>(sQ, static_cast<const T*>(a.q) + q_first, q_stride, own.nrows, tid);
  Mm::template load<BM, NT>(sO, static_cast<const T*>(a.dout) + q_first, q_stride, own.nrows,
                            tid);

  const int row0 = warp * 16 + lane / 4;
  float lse2[2], dlt[2];
  own_row_stats(a, start, own, j, row0, lse2, dlt);
  float acc[D / 8][4];
  zero(acc);
  RowIndices idx;
  run_tiles<ST>(
      a, n, own, j, 1, 0, BN, start, ring,
      [&](const TileDesc& d, int slot) { load_kv<T, D, Mm, BN, NT>(a, d, slot, gkv, sK, sV, tid); },
      [&]() { Mm::loaded(); },
      [&](const TileDesc& d, int slot) {
        idx.update(d, own, row0);
        const int di0 = idx.di0, di1 = idx.di1;
        const T* tK = sK + slot * Mm::tile_elems(BN);
        float s[BN / 8][4], dp[BN / 8][4];
        zero(s);
        zero(dp);
        Mm::template qk2<BM, BN>(s, sQ, tK, dp, sO, sV + slot * Mm::tile_elems(BN), warp, lane);
        dq_scores<BN>(a, d, tile_masked<BN, false>(a, d), di0, di1, lane, lse2, dlt, s, dp);
        Mm::template pv<BN>(acc, s, tK, warp, lane);
      });
  T* dq = static_cast<T*>(a.dq);
  store_rows<T, D>(acc, a.scale, a.scale, sK + warp * 16 * S,
                   dq + q_first + (long long)warp * 16 * q_stride, q_stride, own.nrows - warp * 16,
                   lane);
}

// dK, dV: the CTA owns key rows of kv head g, streams the dilated query tiles
// (q, dout, lse, delta) of every query head sharing g.
template <typename T, int D, class Mm>
__global__ void __launch_bounds__(kBwdRows * 2)
    dkdv_kernel(const __grid_constant__ KernelArgs a, int tiles_per_seq) {
  constexpr int BM = kBwdRows, BN = kOtherRows, S = D + 8, NT = BM * 2;
  constexpr int ST = backward_stages<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ TileDesc ring[ST];
  T* sK = reinterpret_cast<T*>(aligned_smem<Mm>(smem_raw));
  T* sV = sK + Mm::tile_elems(BM);
  T* sQ = sV + Mm::tile_elems(BM);  // ST buffers of BN rows
  T* sO = sQ + ST * Mm::tile_elems(BN);
  float* sL = reinterpret_cast<float*>(sO + ST * Mm::tile_elems(BN));  // ST x BN lse
  float* sD = sL + ST * BN;                                            // ST x BN delta
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = blockIdx.y;
  const int group = a.h / a.h_kv;
  long long start;
  int n;
  OwnRows own;
  if (!cta_rows(a, tiles_per_seq, g * group, group, BM, &start, &n, &own)) return;
  const long long k_stride = (long long)own.L * a.h_kv * D;
  const long long k_first = ((start + own.p0) * a.h_kv + g) * D;
  if (!rows_have_work(a, n, own, g * group, group, 1)) {
    zero_rows<T, D, NT>(static_cast<T*>(a.dk) + k_first, k_stride, own.nrows, tid);
    zero_rows<T, D, NT>(static_cast<T*>(a.dv) + k_first, k_stride, own.nrows, tid);
    return;
  }
  Mm::template load<BM, NT>(sK, static_cast<const T*>(a.k) + k_first, k_stride, own.nrows, tid);
  Mm::template load<BM, NT>(sV, static_cast<const T*>(a.v) + k_first, k_stride, own.nrows, tid);

  const int row0 = warp * 16 + lane / 4;
  float dk[D / 8][4], dv[D / 8][4];
  zero(dk);
  zero(dv);
  RowIndices idx;
  run_tiles<ST>(
      a, n, own, g * group, group, 1, BN, start, ring,
      [&](const TileDesc& d, int slot) {
        load_qo<T, D, Mm, BN, NT>(a, d, slot, sQ, sO, sL, sD, tid);
      },
      [&]() { Mm::loaded(); },
      [&](const TileDesc& d, int slot) {
        idx.update(d, own, row0);
        const int di0 = idx.di0, di1 = idx.di1;
        const T* tQ = sQ + slot * Mm::tile_elems(BN);
        const T* tO = sO + slot * Mm::tile_elems(BN);
        float s[BN / 8][4], dp[BN / 8][4];
        zero(s);
        zero(dp);
        Mm::template qk2<BM, BN>(s, sK, tQ, dp, sV, tO, warp, lane);
        float nlse2[BN / 8][2];
        column_lse2<BN>(sL + slot * BN, lane, nlse2);
        dkdv_scores<BN>(a, d, tile_masked<BN, true>(a, d), di0, di1, lane, nlse2, sD + slot * BN,
                        s, dp);
        Mm::template pv2<BN>(dv, s, tO, dk, dp, tQ, warp, lane);
      });
  T* dkp = static_cast<T*>(a.dk);
  T* dvp = static_cast<T*>(a.dv);
  int valid = own.nrows - warp * 16;
  long long off = k_first + (long long)warp * 16 * k_stride;
  // Staged through the (now idle) query ring: 16 x (D + 8) per warp, each output.
  store_rows<T, D>(dk, a.scale, a.scale, sQ + warp * 16 * S, dkp + off, k_stride, valid, lane);
  store_rows<T, D>(dv, 1.f, 1.f, sQ + (BM + warp * 16) * S, dvp + off, k_stride, valid, lane);
}

// --------------------------------------------------------------- launches ----

inline int max_tiles(const KernelArgs& a, int rows, bool kv_side) {
  int best = 0;
  int sets = kv_side ? a.h_kv : a.h, group = kv_side ? a.h / a.h_kv : 1;
  for (int s = 0; s < sets; ++s) {
    int t = tiles_for(row_geometry(a, s * group, group, rows), rows, a.n_max);
    best = t > best ? t : best;
  }
  return best;
}

template <typename T, int D, class Mm>
cudaError_t launch_forward_with(const KernelArgs& a, cudaStream_t stream) {
  constexpr int smem = forward_smem_bytes<T, D, Mm>();
  // Per device and cheap (no synchronisation): set on every launch.
  cudaError_t attr = cudaFuncSetAttribute(forward_kernel<T, D, Mm>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  int tiles = max_tiles(a, kFwdRows, false);
  if (tiles == 0) return cudaSuccess;
  dim3 grid((unsigned)((long long)tiles * a.batch), (unsigned)a.h);
  forward_kernel<T, D, Mm><<<grid, kFwdRows * 2, smem, stream>>>(a, tiles);
  return cudaGetLastError();
}

// --------------------------------------------------- unselected residues ----

// Position of `token` inside its sequence.
__device__ __forceinline__ long long position_of(const KernelArgs& a, long long token) {
  if (a.varlen == 0) return token % a.seqlen;
  const int64_t* cu = a.varlen == 1 ? a.cu_inline : a.cu_device;
  int lo = 0, hi = a.batch;  // the last s with cu[s] <= token (empty sequences skipped)
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (cu[mid] <= token)
      lo = mid;
    else
      hi = mid;
  }
  return token - cu[lo];
}

// The rows no CTA owns because their residue is not in their head set's `sel`
// (HeadGeometry): zero in t0 and t1 (when not NULL) and -inf in lse (when not
// NULL), for the query heads or (kv_side) the kv heads. blockIdx.y is the head
// set (its geometry read once); a thread writes a 16-byte chunk, consecutive
// threads consecutive chunks of a row. (A thread a row, with the head set
// varying across a warp, was slow enough to cost the compact grid its gain.)
template <typename T, int D>
__global__ void zero_unselected_kernel(const __grid_constant__ KernelArgs a, int kv_side, T* t0,
                                       T* t1, float* lse) {
  constexpr int kChunks = D * (int)sizeof(T) / 16;
  const int sets = kv_side ? a.h_kv : a.h, group = kv_side ? a.h / a.h_kv : 1;
  const int set = blockIdx.y;
  const RowGeometry g = cta_geometry(a, set * group, group, 1);
  if (g.count == g.L) return;
  const long long total = a.tokens * kChunks;
  for (long long x = blockIdx.x * (long long)blockDim.x + threadIdx.x; x < total;
       x += (long long)gridDim.x * blockDim.x) {
    const long long token = x / kChunks;
    const int c = (int)(x % kChunks);
    if (residue_selected(g, position_of(a, token))) continue;
    const long long row = token * sets + set;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    reinterpret_cast<uint4*>(t0 + row * D)[c] = zero;
    if (t1 != nullptr) reinterpret_cast<uint4*>(t1 + row * D)[c] = zero;
    if (lse != nullptr && c == 0) lse[row] = -INFINITY;
  }
}

// Whether some head set (query heads, or kv heads) has residues without CTAs.
inline bool some_rows_unselected(const KernelArgs& a, bool kv_side) {
  const int sets = kv_side ? a.h_kv : a.h, group = kv_side ? a.h / a.h_kv : 1;
  for (int s = 0; s < sets; ++s) {
    const RowGeometry g = cta_geometry(a, s * group, group, 1);
    if (g.count < g.L) return true;
  }
  return false;
}

template <typename T, int D>
cudaError_t launch_zero_unselected(const KernelArgs& a, bool kv_side, void* t0, void* t1,
                                   float* lse, cudaStream_t stream) {
  if (!some_rows_unselected(a, kv_side)) return cudaSuccess;
  const long long chunks = a.tokens * (D * (long long)sizeof(T) / 16);
  long long blocks = (chunks + 255) / 256;
  if (blocks > 1024) blocks = 1024;  // x the head sets (grid-stride)
  if (blocks == 0) return cudaSuccess;
  zero_unselected_kernel<T, D>
      <<<dim3((unsigned)blocks, (unsigned)(kv_side ? a.h_kv : a.h)), 256, 0, stream>>>(
          a, kv_side, static_cast<T*>(t0), static_cast<T*>(t1), lse);
  return cudaGetLastError();
}

// The warp-specialized Hopper forward (cuda_sm90.cuh).
template <typename T, int D, bool PINGPONG>
cudaError_t launch_forward_ws(const KernelArgs& a, cudaStream_t stream);

// The one-role forward kernels, after the rows of residues without CTAs.
template <typename T, int D, class Mm>
cudaError_t launch_forward_zeroed(const KernelArgs& a, cudaStream_t stream) {
  const cudaError_t e = launch_zero_unselected<T, D>(a, false, a.out, nullptr, a.lse, stream);
  return e != cudaSuccess ? e : launch_forward_with<T, D, Mm>(a, stream);
}

// (The warp-specialized kernel writes the rows of residues without CTAs itself.)
template <typename T, int D>
cudaError_t launch_forward(const KernelArgs& a, cudaStream_t stream) {
  if constexpr (D == 64 || D == 128) {
    if (a.use_wgmma) {
      switch (a.fwd_variant) {
        case 1: return launch_forward_ws<T, D, false>(a, stream);
        case 2: return launch_forward_zeroed<T, D, Sm90Mma<T, D>>(a, stream);
        default:
          // In both modes: in the head-group mode it measured 254 / 390 TFLOP/s
          // against the one-role kernel's 247 / 332 (d = 64 / 128, n = 128K,
          // H100) once its producer stopped waiting for its own copies.
          return launch_forward_ws<T, D, true>(a, stream);
      }
    }
  }
  return launch_forward_zeroed<T, D, SyncMma<T, D>>(a, stream);
}

template <typename T, int D, class Mm>
cudaError_t launch_dkdv_with(const KernelArgs& a, cudaStream_t stream) {
  constexpr int smem = backward_smem_bytes<T, D, Mm>();
  cudaError_t e = cudaFuncSetAttribute(dkdv_kernel<T, D, Mm>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  int tk = max_tiles(a, kBwdRows, true);
  if (tk > 0)
    dkdv_kernel<T, D, Mm><<<dim3((unsigned)((long long)tk * a.batch), (unsigned)a.h_kv),
                            kBwdRows * 2, smem, stream>>>(a, tk);
  return cudaGetLastError();
}

template <typename T, int D, class Mm>
cudaError_t launch_backward_with(const KernelArgs& a, cudaStream_t stream) {
  constexpr int smem = backward_smem_bytes<T, D, Mm>();
  cudaError_t e = cudaFuncSetAttribute(dq_kernel<T, D, Mm>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  if ((e = launch_dkdv_with<T, D, Mm>(a, stream)) != cudaSuccess) return e;
  int tq = max_tiles(a, kBwdRows, false);
  if (tq > 0)
    dq_kernel<T, D, Mm><<<dim3((unsigned)((long long)tq * a.batch), (unsigned)a.h),
                          kBwdRows * 2, smem, stream>>>(a, tq);
  return cudaGetLastError();
}

// The one-role backward kernels, after the rows of residues without CTAs (dQ,
// dK, dV = 0).
template <typename T, int D, class Mm>
cudaError_t launch_backward_zeroed(const KernelArgs& a, cudaStream_t stream) {
  cudaError_t e = launch_zero_unselected<T, D>(a, false, a.dq, nullptr, nullptr, stream);
  if (e == cudaSuccess) e = launch_zero_unselected<T, D>(a, true, a.dk, a.dv, nullptr, stream);
  return e != cudaSuccess ? e : launch_backward_with<T, D, Mm>(a, stream);
}

// The warp-specialized Hopper backward (cuda_sm90.cuh; it writes the rows of
// residues without CTAs itself).
template <typename T, int D>
cudaError_t launch_backward_ws(const KernelArgs& a, cudaStream_t stream);

template <typename T, int D>
cudaError_t launch_backward(const KernelArgs& a, cudaStream_t stream) {
  if constexpr (D == 64 || D == 128) {
    if (a.use_wgmma)
      return a.bwd_variant == 0 ? launch_backward_ws<T, D>(a, stream)
                                : launch_backward_zeroed<T, D, Sm90Mma<T, D>>(a, stream);
  }
  return launch_backward_zeroed<T, D, SyncMma<T, D>>(a, stream);
}

template <typename T, int D>
cudaError_t launch_delta(const KernelArgs& a, cudaStream_t stream) {
  long long rows = a.tokens * a.h;
  if (rows == 0) return cudaSuccess;
  const long long rows_per_block = 256 / delta_lanes<D>();  // 8 warps
  long long blocks = (rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;  // (grid-stride beyond)
  delta_kernel<T, D><<<(unsigned)blocks, 256, 0, stream>>>(
      static_cast<const T*>(a.out), static_cast<const T*>(a.dout), const_cast<float*>(a.delta),
      rows);
  return cudaGetLastError();
}

// Dispatch on the head dimension (the host side has checked it is supported).
template <typename T>
cudaError_t dispatch_forward(const KernelArgs& a, cudaStream_t stream) {
  switch (a.d) {
    case 32: return launch_forward<T, 32>(a, stream);
    case 64: return launch_forward<T, 64>(a, stream);
    case 96: return launch_forward<T, 96>(a, stream);
    case 128: return launch_forward<T, 128>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t dispatch_backward(const KernelArgs& a, cudaStream_t stream) {
  cudaError_t e;
  switch (a.d) {
    case 32: e = launch_delta<T, 32>(a, stream); break;
    case 64: e = launch_delta<T, 64>(a, stream); break;
    case 96: e = launch_delta<T, 96>(a, stream); break;
    case 128: e = launch_delta<T, 128>(a, stream); break;
    default: return cudaErrorInvalidValue;
  }
  if (e != cudaSuccess) return e;
  switch (a.d) {
    case 32: return launch_backward<T, 32>(a, stream);
    case 64: return launch_backward<T, 64>(a, stream);
    case 96: return launch_backward<T, 96>(a, stream);
    default: return launch_backward<T, 128>(a, stream);
  }
}

}  // namespace da_cuda

#endif  // DA_ATTENTION_CUDA_KERNELS_CUH
