/* dilated_attention.h: LongNet-style dilated attention, exactly as specified in
 * docs/semantics.md (a copy of the project's reference semantics).
 *
 * Tensors are dense, row-major, token-major, batch-first (as flash-attn):
 *   q, out, dq:  [tokens, num_heads,    head_dim]
 *   k, v, dk, dv:[tokens, num_kv_heads, head_dim]
 *   lse:         [tokens, num_heads]   natural log of the softmax denominator
 * where tokens = batch * seqlen, or cu_seqlens[batch] for packed variable-length
 * batches. Every sequence is segmented from its own first token.
 *
 * All functions are thread-safe: they touch only their arguments. Every fallible
 * call returns a da_status; on failure da_last_error() names the argument and rule. */
#ifndef DA_DILATED_ATTENTION_H
#define DA_DILATED_ATTENTION_H

#include <stdint.h>

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DA_MAX_PATTERNS 16   /* (segment length, dilation) pairs per call */
#define DA_MAX_HEAD_DIM 256  /* largest head_dim any backend accepts */

typedef enum {
  /* Every head uses every pattern; one softmax over the multiset union of the
   * patterns' key sets (the paper's LSE-weighted mixture). */
  DA_MODE_LONGNET = 0,
  /* Heads are split into k groups (the first h mod k one head larger); group i
   * uses pattern i only. Compatible with fkodom/dilated-attention-pytorch minus its
   * non-attention output normalisation. */
  DA_MODE_HEAD_GROUP = 1
} da_attention_mode;

/* Which offset o (0 <= o < r) head j uses inside each segment of a pattern. */
typedef enum {
  DA_OFFSET_DEFAULT = 0, /* HEAD in LongNet mode, GROUP in head-group mode */
  DA_OFFSET_HEAD = 1,    /* o = j mod r                        (the paper)      */
  DA_OFFSET_GROUP = 2,   /* o = (head group of j) mod r        (fkodom)         */
  DA_OFFSET_BLOCK = 3    /* o = floor(j / ceil(h / r))         (torchscale)     */
} da_offset_policy;

/* What to compute. Plain struct: start from da_attention_params_default(). The
 * two lists are read during each call only (the caller keeps ownership). */
typedef struct {
  const int* segment_lengths; /* w_i >= 1 */
  int num_segment_lengths;
  const int* dilation_rates; /* 1 <= r_i <= w_i */
  int num_dilation_rates;    /* must equal num_segment_lengths, 1..DA_MAX_PATTERNS */
  da_attention_mode mode;
  da_offset_policy offset_policy;
  int causal;          /* nonzero: query p sees keys t <= p only */
  float softmax_scale; /* > 0 and finite; 0 means 1/sqrt(head_dim) */
  int num_heads;       /* h >= 1 */
  int num_kv_heads;    /* h_kv >= 1 with h % h_kv == 0 (GQA/MQA); 0 means h */
  int head_dim;        /* 1..DA_MAX_HEAD_DIM on the CPU */
} da_attention_params;

/* Defaults: no patterns (the caller must set them), LongNet mode, default
 * offsets, not causal, scale 1/sqrt(d), h = 0, h_kv = 0 (= h), d = 0. */
DA_API da_attention_params da_attention_params_default(void);

/* How tokens are grouped into sequences. */
typedef struct {
  int64_t batch;  /* number of sequences, >= 1 */
  int64_t seqlen; /* tokens per sequence (>= 1) when cu_seqlens is NULL */
  /* Optional packed layout: batch + 1 host entries, cu_seqlens[0] = 0,
   * non-decreasing, cu_seqlens[batch] >= 1 total tokens; sequence s owns tokens
   * [cu_seqlens[s], cu_seqlens[s+1]). Empty sequences are allowed. */
  const int64_t* cu_seqlens;
} da_attention_batch;

/* Checks params and batch against every rule above without touching tensors.
 * DA_STATUS_INVALID_ARGUMENT with a sentence on the first broken rule. */
DA_API da_status da_attention_validate(const da_attention_params* params,
                                       const da_attention_batch* batch);

/* Total tokens of a (valid) batch: batch * seqlen or cu_seqlens[batch]. */
DA_API da_status da_attention_num_tokens(const da_attention_batch* batch, int64_t* tokens);

/* Number of (query, key) score products the pattern set implies, counted with
 * multiplicity (a key covered by two patterns counts twice) and causality,
 * summed over heads and sequences. */
DA_API da_status da_attention_count_pairs(const da_attention_params* params,
                                          const da_attention_batch* batch, int64_t* pairs);

/* Effective FLOPs as the semantics define them: 4 * head_dim * pairs for the
 * forward pass, 3.5x that for forward + backward (with_backward != 0). */
DA_API da_status da_attention_count_flops(const da_attention_params* params,
                                          const da_attention_batch* batch, int with_backward,
                                          double* flops);

/* CPU forward pass, float32. Writes out (all of it; queries no pattern covers get
 * 0) and, when lse is not NULL, lse (-inf where no key was seen). Multi-threaded
 * with OpenMP (OMP_NUM_THREADS); memory beyond the tensors is O(tokens * h).
 * out and lse must not overlap each other or q, k, v. */
DA_API da_status da_attention_forward_cpu(const da_attention_params* params,
                                          const da_attention_batch* batch, const float* q,
                                          const float* k, const float* v, float* out,
                                          float* lse);

/* CPU backward pass, float32: the exact gradient of the forward function (mixing
 * weights included). out and lse are the forward's results for the same inputs;
 * dout is dL/dout. Overwrites dq, dk, dv (GQA: dk/dv sum over the query heads
 * sharing a kv head). dq, dk, dv must not overlap each other or any input. */
DA_API da_status da_attention_backward_cpu(const da_attention_params* params,
                                           const da_attention_batch* batch, const float* q,
                                           const float* k, const float* v, const float* out,
                                           const float* lse, const float* dout, float* dq,
                                           float* dk, float* dv);


/* ---------------------------------------------------------------------------
 * GPU (CUDA) passes. Same semantics and layouts as the CPU passes, with 16-bit
 * tensors (dtype DA_DTYPE_BF16 or DA_DTYPE_F16) and fp32 accumulation; lse is
 * float32 [tokens, num_heads]. Every tensor pointer is device memory on the
 * current device (cudaSetDevice), every call is ordered on `stream` (a
 * cudaStream_t; NULL = the legacy default stream): no device synchronisation and
 * no cudaMalloc on the hot path (workspace comes from the device's default
 * da_mempool, stream-ordered). batch->cu_seqlens stays a HOST array (as for the
 * CPU); up to DA_CUDA_MAX_INLINE_SEQS sequences travel in the launch parameters,
 * more are copied to a pool buffer with cudaMemcpyAsync (which may block the host
 * until the copy has read the pageable source).
 *
 * Kernels: on sm_90 (H100/H200) the forward and backward for head_dim 64 and 128
 * use wgmma (Hopper tensor cores), warp-specialized; everything else uses
 * portable mma.sync kernels (sm_80+). Environment DA_CUDA_PORTABLE=1 forces the
 * portable kernels on any GPU; DA_CUDA_FWD_VARIANT and DA_CUDA_BWD_VARIANT pick
 * the other Hopper kernels for comparisons, DA_CUDA_TMA=0 makes the Hopper
 * forward load its tiles by cp.async instead of TMA, DA_CUDA_FWD_CONSUMERS (2
 * or 3) fixes the consumer warpgroups of the head_dim 64 forward, and
 * DA_CUDA_PERSISTENT=0 runs the Hopper forward and backward as one CTA a work
 * item instead of one persistent CTA a multiprocessor (DA_CUDA_CTAS=N: N
 * persistent CTAs),
 * and DA_CUDA_COMPACT=0 makes CTAs for rows no pattern can select too
 * (docs/attention_cuda.md); they differ only in fp32 rounding order.
 *
 * Supported: head_dim 32, 64, 96 or 128; sm_80 or newer. Anything else gives
 * DA_STATUS_NOT_SUPPORTED with a sentence, never a wrong answer; no GPU gives
 * DA_STATUS_NO_DEVICE. Results are deterministic (no atomics). */
#define DA_CUDA_MAX_INLINE_SEQS 256

/* DA_STATUS_SUCCESS when the GPU passes can serve params with this dtype on the
 * current device; otherwise the status the passes would return, and why. */
DA_API da_status da_attention_cuda_supported(const da_attention_params* params, da_dtype dtype);

/* GPU forward: writes out (all of it; 0 for queries no pattern covers) and, when
 * lse is not NULL, lse (-inf where no key was seen). */
DA_API da_status da_attention_forward_cuda(const da_attention_params* params,
                                           const da_attention_batch* batch, da_dtype dtype,
                                           const void* q, const void* k, const void* v,
                                           void* out, float* lse, void* stream);

/* GPU backward: the exact gradient. out and lse (required) are the forward's
 * results; overwrites dq, dk, dv (all of them; GQA sums over the query heads
 * sharing a kv head). Workspace: 4 * tokens * num_heads bytes from the pool. */
DA_API da_status da_attention_backward_cuda(const da_attention_params* params,
                                            const da_attention_batch* batch, da_dtype dtype,
                                            const void* q, const void* k, const void* v,
                                            const void* out, const float* lse,
                                            const void* dout, void* dq, void* dk, void* dv,
                                            void* stream);

#ifdef __cplusplus
}
#endif

#endif /* DA_DILATED_ATTENTION_H */
