#include "attention/params.h"

#include <math.h>
#include <stdint.h>

#include "common/error.h"

da_attention_params da_attention_params_default(void) {
  da_attention_params p = {0};
  p.mode = DA_MODE_LONGNET;
  p.offset_policy = DA_OFFSET_DEFAULT;
  p.softmax_scale = 0.0f;
  return p;
}

static da_status check_patterns(const da_attention_params* p, da_attn_plan* plan) {
  if (p->num_segment_lengths != p->num_dilation_rates)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->num_segment_lengths=%d does not match "
                        "params->num_dilation_rates=%d: every segment length needs one "
                        "dilation rate",
                        p->num_segment_lengths, p->num_dilation_rates);
  if (p->num_segment_lengths < 1 || p->num_segment_lengths > DA_MAX_PATTERNS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->num_segment_lengths=%d is outside [1, %d]",
                        p->num_segment_lengths, DA_MAX_PATTERNS);
  if (p->segment_lengths == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params->segment_lengths must not be NULL");
  if (p->dilation_rates == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params->dilation_rates must not be NULL");
  plan->num_patterns = p->num_segment_lengths;
  for (int i = 0; i < plan->num_patterns; i++) {
    int w = p->segment_lengths[i], r = p->dilation_rates[i];
    if (w < 1)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "segment_lengths[%d]=%d must be >= 1", i,
                          w);
    if (r < 1)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "dilation_rates[%d]=%d must be >= 1", i,
                          r);
    if (r > w)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "dilation_rates[%d]=%d exceeds segment_lengths[%d]=%d (need r <= w)",
                          i, r, i, w);
    plan->w[i] = w;
    plan->r[i] = r;
  }
  return DA_STATUS_SUCCESS;
}

da_status da_attn_check_heads(int num_heads, int num_kv_heads, int head_dim,
                              float softmax_scale, int* h_kv_out, float* scale_out) {
  if (num_heads < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params->num_heads=%d must be >= 1",
                        num_heads);
  int h_kv = num_kv_heads == 0 ? num_heads : num_kv_heads;
  if (h_kv < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->num_kv_heads=%d must be >= 1 (or 0 for num_heads)",
                        num_kv_heads);
  if (num_heads % h_kv != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->num_heads=%d is not divisible by params->num_kv_heads=%d "
                        "(GQA needs h %% h_kv == 0)",
                        num_heads, h_kv);
  if (head_dim < 1 || head_dim > DA_MAX_HEAD_DIM)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params->head_dim=%d is outside [1, %d]",
                        head_dim, DA_MAX_HEAD_DIM);
  float s = softmax_scale;
  if (s == 0.0f) {
    s = 1.0f / sqrtf((float)head_dim);
  } else if (!(s > 0.0f) || isinf(s)) {
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->softmax_scale=%g must be positive and finite "
                        "(or 0 for 1/sqrt(head_dim))",
                        (double)s);
  }
  *h_kv_out = h_kv;
  *scale_out = s;
  return DA_STATUS_SUCCESS;
}

static da_status check_heads(const da_attention_params* p, da_attn_plan* plan) {
  if (p->mode != DA_MODE_LONGNET && p->mode != DA_MODE_HEAD_GROUP)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->mode=%d is not DA_MODE_LONGNET (0) or DA_MODE_HEAD_GROUP (1)",
                        (int)p->mode);
  switch (p->offset_policy) {
    case DA_OFFSET_DEFAULT:
    case DA_OFFSET_HEAD:
    case DA_OFFSET_GROUP:
    case DA_OFFSET_BLOCK:
      plan->offset = da_attn_resolve_offset_policy(p->mode, p->offset_policy);
      break;
    default:
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "params->offset_policy=%d is not a da_offset_policy (0..3)",
                          (int)p->offset_policy);
  }
  plan->mode = p->mode;
  da_status st = da_attn_check_heads(p->num_heads, p->num_kv_heads, p->head_dim,
                                     p->softmax_scale, &plan->h_kv, &plan->scale);
  if (st != DA_STATUS_SUCCESS) return st;
  plan->h = p->num_heads;
  plan->d = p->head_dim;
  plan->causal = p->causal != 0;
  return DA_STATUS_SUCCESS;
}

static da_status check_batch(const da_attention_batch* b, da_attn_plan* plan) {
  if (b->batch < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "batch->batch=%lld must be >= 1",
                        (long long)b->batch);
  plan->batch = b->batch;
  plan->cu_seqlens = b->cu_seqlens;
  plan->seqlen = b->seqlen;
  if (b->cu_seqlens == NULL) {
    if (b->seqlen < 1)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "batch->seqlen=%lld must be >= 1 (n = 0 has nothing to attend)",
                          (long long)b->seqlen);
    if (b->seqlen > INT64_MAX / b->batch)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "batch->batch * batch->seqlen overflows 64 bits");
    plan->tokens = b->batch * b->seqlen;
    return DA_STATUS_SUCCESS;
  }
  if (b->cu_seqlens[0] != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "batch->cu_seqlens[0]=%lld must be 0",
                        (long long)b->cu_seqlens[0]);
  for (int64_t s = 1; s <= b->batch; s++) {
    if (b->cu_seqlens[s] < b->cu_seqlens[s - 1])
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "batch->cu_seqlens[%lld]=%lld is less than cu_seqlens[%lld]=%lld: "
                          "offsets must be non-decreasing",
                          (long long)s, (long long)b->cu_seqlens[s], (long long)(s - 1),
                          (long long)b->cu_seqlens[s - 1]);
  }
  plan->tokens = b->cu_seqlens[b->batch];
  if (plan->tokens < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "batch->cu_seqlens[%lld]=0: the batch holds no tokens",
                        (long long)b->batch);
  return DA_STATUS_SUCCESS;
}

da_status da_attn_plan_init(const da_attention_params* params, const da_attention_batch* batch,
                            da_attn_plan* plan) {
  if (params == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params must not be NULL");
  if (batch == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "batch must not be NULL");
  da_status st = check_patterns(params, plan);
  if (st == DA_STATUS_SUCCESS) st = check_heads(params, plan);
  if (st == DA_STATUS_SUCCESS) st = check_batch(batch, plan);
  if (st == DA_STATUS_SUCCESS && plan->tokens > (int64_t)(SIZE_MAX / 8 / (size_t)plan->h /
                                                          (size_t)plan->d))
    st = da_error_set(DA_STATUS_INVALID_ARGUMENT,
                      "tokens=%lld x num_heads x head_dim overflows the address space",
                      (long long)plan->tokens);
  return st;
}

da_status da_attention_validate(const da_attention_params* params,
                                const da_attention_batch* batch) {
  da_error_clear();
  da_attn_plan plan = {0};
  return da_attn_plan_init(params, batch, &plan);
}

da_status da_attention_num_tokens(const da_attention_batch* batch, int64_t* tokens) {
  da_error_clear();
  if (tokens == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "tokens must not be NULL");
  if (batch == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "batch must not be NULL");
  da_attn_plan plan = {0};
  da_status st = check_batch(batch, &plan);
  *tokens = st == DA_STATUS_SUCCESS ? plan.tokens : 0;
  return st;
}

static int64_t segment_pairs(int64_t cnt, int causal) {
  return causal ? cnt * (cnt + 1) / 2 : cnt * cnt;
}

da_status da_attention_count_pairs(const da_attention_params* params,
                                   const da_attention_batch* batch, int64_t* pairs) {
  da_error_clear();
  if (pairs == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "pairs must not be NULL");
  *pairs = 0;
  da_attn_plan plan = {0};
  da_status st = da_attn_plan_init(params, batch, &plan);
  if (st != DA_STATUS_SUCCESS) return st;
  int64_t total = 0;
  for (int64_t s = 0; s < plan.batch; s++) {
    int64_t n = da_attn_seq_len(&plan, s);
    for (int i = 0; i < plan.num_patterns; i++) {
      int64_t w = plan.w[i], full = n / w, rem = n % w;
      for (int j = 0; j < plan.h; j++) {
        if (!da_attn_uses_pattern(&plan, i, j)) continue;
        int o = da_attn_offset(&plan, i, j);
        total += full * segment_pairs(da_attn_selected(w, plan.r[i], o), plan.causal) +
                 segment_pairs(da_attn_selected(rem, plan.r[i], o), plan.causal);
      }
    }
  }
  *pairs = total;
  return DA_STATUS_SUCCESS;
}

da_status da_attention_count_flops(const da_attention_params* params,
                                   const da_attention_batch* batch, int with_backward,
                                   double* flops) {
  if (flops == NULL) {
    da_error_clear();
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "flops must not be NULL");
  }
  *flops = 0.0;
  int64_t pairs = 0;
  da_status st = da_attention_count_pairs(params, batch, &pairs);
  if (st != DA_STATUS_SUCCESS) return st;
  *flops = 4.0 * params->head_dim * (double)pairs * (with_backward ? 3.5 : 1.0);
  return DA_STATUS_SUCCESS;
}

da_status da_attn_check_disjoint(const void* a, size_t a_bytes, const char* a_name,
                                 const void* b, size_t b_bytes, const char* b_name) {
  uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
  if (a0 < b0 + b_bytes && b0 < a0 + a_bytes)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s overlaps %s: the output must not share memory with %s", a_name,
                        b_name, b_name);
  return DA_STATUS_SUCCESS;
}
