/* params.h: validated, resolved attention parameters and the selection rules of
 * the semantics (which heads use which pattern, at which offset). Internal to the
 * attention component; every backend computes selections through these. */
#ifndef DA_ATTENTION_PARAMS_H
#define DA_ATTENTION_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "attention/dilated_attention.h"

/* The selection rules below run on the host and, compiled by nvcc, in kernels. */
#ifdef __CUDACC__
#define DA_HD __host__ __device__
#else
#define DA_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int num_patterns;
  int w[DA_MAX_PATTERNS];
  int r[DA_MAX_PATTERNS];
  da_attention_mode mode;
  da_offset_policy offset; /* never DA_OFFSET_DEFAULT once resolved */
  int causal;
  float scale;
  int h, h_kv, d;
  int64_t batch;
  int64_t seqlen;           /* when cu_seqlens is NULL */
  const int64_t* cu_seqlens; /* borrowed from the caller for the call */
  int64_t tokens;
} da_attn_plan;

/* The head shape every attention flavour shares (dilated, block-sparse): h >= 1,
 * h_kv (0 = h) >= 1 dividing h, 1 <= d <= DA_MAX_HEAD_DIM, scale > 0 and finite
 * (0 = 1/sqrt(d)). Names the params-> field on failure; resolves h_kv and scale. */
da_status da_attn_check_heads(int num_heads, int num_kv_heads, int head_dim,
                              float softmax_scale, int* h_kv, float* scale);

/* Validates params and batch (every rule of dilated_attention.h) and fills plan. */
da_status da_attn_plan_init(const da_attention_params* params, const da_attention_batch* batch,
                            da_attn_plan* plan);

static inline int64_t da_attn_seq_start(const da_attn_plan* plan, int64_t s) {
  return plan->cu_seqlens ? plan->cu_seqlens[s] : s * plan->seqlen;
}

static inline int64_t da_attn_seq_len(const da_attn_plan* plan, int64_t s) {
  return plan->cu_seqlens ? plan->cu_seqlens[s + 1] - plan->cu_seqlens[s] : plan->seqlen;
}

/* Head group of head j when h heads are split into k groups, the first h mod k
 * groups one head larger (fkodom's split). */
DA_HD static inline int da_attn_head_group(int j, int h, int k) {
  int base = h / k, extra = h % k;
  int big = extra * (base + 1);
  return j < big ? j / (base + 1) : extra + (j - big) / base;
}

/* The selection rules of docs/semantics.md as pure functions, shared by every
 * component that needs them (attention backends, sparse_pattern). k is the
 * number of patterns. */
DA_HD static inline da_offset_policy da_attn_resolve_offset_policy(da_attention_mode mode,
                                                             da_offset_policy policy) {
  if (policy != DA_OFFSET_DEFAULT) return policy;
  return mode == DA_MODE_LONGNET ? DA_OFFSET_HEAD : DA_OFFSET_GROUP;
}

DA_HD static inline int da_attn_head_uses_pattern(da_attention_mode mode, int i, int j, int h, int k) {
  return mode == DA_MODE_LONGNET || da_attn_head_group(j, h, k) == i;
}

/* Offset in [0, r) of head j's selected positions (policy already resolved). */
DA_HD static inline int da_attn_head_offset(da_offset_policy policy, int j, int h, int k, int r) {
  switch (policy) {
    case DA_OFFSET_GROUP: return da_attn_head_group(j, h, k) % r;
    case DA_OFFSET_BLOCK: return j / ((h + r - 1) / r);
    default: return j % r;
  }
}

/* Whether head j attends with pattern i. */
static inline int da_attn_uses_pattern(const da_attn_plan* plan, int i, int j) {
  return da_attn_head_uses_pattern(plan->mode, i, j, plan->h, plan->num_patterns);
}

/* Offset o in [0, r_i) of head j's selected positions inside pattern i's segments. */
static inline int da_attn_offset(const da_attn_plan* plan, int i, int j) {
  return da_attn_head_offset(plan->offset, j, plan->h, plan->num_patterns, plan->r[i]);
}

/* Number of positions selected at offset o in a segment of length seg_len with
 * dilation r (0 when o >= seg_len). */
DA_HD static inline int64_t da_attn_selected(int64_t seg_len, int r, int o) {
  return o < seg_len ? (seg_len - o + r - 1) / r : 0;
}

/* DA_STATUS_INVALID_ARGUMENT naming a and b when the byte ranges overlap. */
da_status da_attn_check_disjoint(const void* a, size_t a_bytes, const char* a_name,
                                 const void* b, size_t b_bytes, const char* b_name);

#ifdef __cplusplus
}
#endif

#endif /* DA_ATTENTION_PARAMS_H */
