// cuda_launch.h: what the host side (cuda_attention.cu) hands the kernel
// translation units (cuda_{fwd,bwd}_{bf16,f16}.cu). Internal to attention/.
#ifndef DA_ATTENTION_CUDA_LAUNCH_H
#define DA_ATTENTION_CUDA_LAUNCH_H

#include <cuda.h>  // CUtensorMap (the maps are encoded through the runtime's driver entry point)
#include <cuda_runtime.h>
#include <stdint.h>

#include "attention/dilated_attention.h"

namespace da_cuda {

// The lcm L of the dilations and the gcd G of the segment lengths over the
// patterns a set of heads uses (L = 1 past kMaxRowStride, G = 0 for no pattern):
// the part of a CTA's row geometry (RowGeometry, below) that depends on the
// heads only. KernelArgs carries it for the first kGeoSlots head sets, so a CTA
// does not recompute it (five patterns took ~1000 instructions per warp, 5-8%
// of a forward CTA's time).
// With them, `sel`: the residues mod L that some pattern of the heads can
// select (bit rho), so CTAs are made only for rows of those residues. A pattern
// (w, r, offset o) with w % r == 0 selects positions = o (mod r) only; any other
// pattern, or a G that is not a multiple of L, makes every residue count. The
// rows of the other residues are zero (O, dQ, dK, dV; LSE -inf), written by the
// Hopper kernels' producers (zero_unowned_rows) or, before the other kernels,
// by zero_unselected_kernel (cuda_kernels.cuh). Head-group mode: a head of dilation
// r gets 1 / r of the CTAs it would get with every residue.
struct HeadGeometry {
  int L;
  int G;
  unsigned long long sel;
};
constexpr int kGeoSlots = 128;

// Everything a kernel needs, passed by value (a few hundred bytes plus the
// inline cu_seqlens). Positions inside a sequence are int (validated < 2^31);
// element offsets are int64.
struct KernelArgs {
  // Tensors: q/out/dout/dq [tokens, h, d]; k/v/dk/dv [tokens, h_kv, d] (16-bit);
  // lse/delta [tokens, h] (fp32).
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  const void* dout;
  const float* lse_in;
  const float* delta;
  void* dq;
  void* dk;
  void* dv;

  int h, h_kv, d;
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
  int causal;
  int mode;    // da_attention_mode
  int offset;  // resolved da_offset_policy
  int num_patterns;
  int use_wgmma;  // Hopper (sm_90) forward path for d = 64 / 128
  int fwd_variant;  // Hopper forward: 0 warp-specialized with ping-pong, 1 without,
                    // 2 one-role (DA_CUDA_FWD_VARIANT)
  int bwd_variant;  // Hopper backward: 0 warp-specialized, 1 the one-role kernels
                    // (DA_CUDA_BWD_VARIANT)
  int use_tma;      // the Hopper forward's K/V tiles by TMA (DA_CUDA_TMA, default 1)
  int fwd_consumers;  // consumer warpgroups of the Hopper forward at d = 64: 2 or 3
                      // (cuda_attention.cu, DA_CUDA_FWD_CONSUMERS)
  int compact_rows;    // CTAs only for selectable residues (HeadGeometry::sel);
                       // 0: for every residue (DA_CUDA_COMPACT=0, comparisons)
  unsigned* fwd_next;  // the persistent Hopper forward's work counter, zero at launch
                       // (a pool block), or NULL: one CTA a work item
  int persistent_ctas; // CTAs of the persistent kernels: the device's multiprocessors,
                       // or DA_CUDA_CTAS (the tests give CTAs many items)
  int w[DA_MAX_PATTERNS];
  int r[DA_MAX_PATTERNS];

  // Sequences: uniform (cu == nullptr and !inline_cu): sequence s = tokens
  // [s * seqlen, (s + 1) * seqlen). Else offsets in cu_inline (batch <=
  // DA_CUDA_MAX_INLINE_SEQS) or in device memory cu_device.
  int batch;
  int seqlen;
  int varlen;  // 0: uniform; 1: cu_inline; 2: cu_device
  const int64_t* cu_device;
  int n_max;          // longest sequence (sizes the grid)
  long long tokens;   // all sequences together
  int64_t cu_inline[DA_CUDA_MAX_INLINE_SEQS + 1];

  // head_geometry of query head j (geo_q[j]) and of the query heads sharing kv
  // head g (geo_kv[g]), for j, g < kGeoSlots (args_from_plan fills them).
  HeadGeometry geo_q[kGeoSlots];
  HeadGeometry geo_kv[kGeoSlots];

  // The persistent Hopper backward's two work counters ([0] dK/dV, [1] dQ),
  // zero at launch (a pool block), or NULL: one CTA a work item. (Last: with
  // it beside fwd_next, the other fields' offsets moved and the d = 128
  // forward read 1-2% slower on the H100, its code otherwise the same.)
  unsigned* bwd_next;
};

// TMA descriptors of the dilated K/V tiles the warp-specialized Hopper forward
// streams: for dilation r[k] and tensor t (K, V), the [tokens, h_kv, d] tensor
// seen as 4-D (d, h_kv, residue mod r, tokens / r), so the rows token0 + r i of
// one head (i < box rows) are the box at (x, head, token0 % r, token0 / r), 64
// columns (128 bytes, 128-byte swizzle: the layout wgmma reads) per box.
// rows[k] = tokens / r rounded down. Tiles past a map's rows, partial tiles and
// dilations without a map (count = 0 when DA_CUDA_TMA=0) are loaded by
// cp.async. A second kernel parameter beside KernelArgs.
struct TileMaps {  // 128-byte aligned, as CUtensorMap
  CUtensorMap map[2][DA_MAX_PATTERNS];
  long long rows[DA_MAX_PATTERNS];
  int r[DA_MAX_PATTERNS];
  int count;
};

// Rows a CTA owns and how many of them per CTA, per pass (see cuda_kernels.cuh).
constexpr int kFwdRows = 128;   // forward: 8 warps x 16 query rows
constexpr int kFwdWideRows = 192;  // d = 64 Hopper forward with three consumer warpgroups
constexpr int kBwdRows = 64;    // dQ and dK/dV: 4 warps x 16 rows
constexpr int kOtherRows = 64;  // keys (forward, dQ) or queries (dK/dV) per tile
constexpr int kBwdWsRows = 128; // warp-specialized Hopper dQ and dK/dV: 2 consumers x 64

// Geometry of the rows a CTA owns for a set of heads: positions p0 + L * t of one
// sequence (t < rows), with chunks of rows * L positions laid out inside blocks of
// G positions (G = gcd of the segment lengths when that is >= the chunk, so no
// chunk crosses a segment boundary), L = lcm of the dilations (so every row of
// the CTA has the same residue mod each r). Shared by host (grid size) and device.
// Of the L residues only those in `sel` (count of them) get CTAs.
struct RowGeometry {
  int L;
  int G;  // block length; >= any sequence when no alignment is used
  unsigned long long sel;
  int count;
};

// Launchers, one per (pass, dtype); D is dispatched inside. They only enqueue.
cudaError_t launch_forward_bf16(const KernelArgs& a, cudaStream_t stream);
cudaError_t launch_forward_f16(const KernelArgs& a, cudaStream_t stream);
cudaError_t launch_backward_bf16(const KernelArgs& a, cudaStream_t stream);
cudaError_t launch_backward_f16(const KernelArgs& a, cudaStream_t stream);

}  // namespace da_cuda

#endif  // DA_ATTENTION_CUDA_LAUNCH_H
