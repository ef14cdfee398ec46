/* dense_oracle.c: dilated attention by brute force, in double, straight from
 * docs/semantics.md. For every (query, head) the multiset of (pattern, key)
 * occurrences is listed explicitly, then one dense softmax is taken over it.
 * Deliberately shares nothing with cpu_attention.c but the parameter checks
 * (da_attention_validate), so that the two can be tested against each other. */
#include "attention/dense_oracle.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Everything the oracle needs from params, resolved once. */
typedef struct {
  int num_patterns;
  const int* w;
  const int* r;
  int head_group_mode;
  da_offset_policy policy; /* never DA_OFFSET_DEFAULT */
  int causal;
  double scale;
  int h, h_kv, d;
  int heads_per_kv;
} oracle_setup;

static da_status setup_init(const da_attention_params* params, const da_attention_batch* batch,
                            oracle_setup* st) {
  if (params == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params is NULL");
  if (batch == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "batch is NULL");
  da_status status = da_attention_validate(params, batch);
  if (status != DA_STATUS_SUCCESS) return status;
  st->num_patterns = params->num_segment_lengths;
  st->w = params->segment_lengths;
  st->r = params->dilation_rates;
  st->head_group_mode = params->mode == DA_MODE_HEAD_GROUP;
  st->policy = params->offset_policy;
  if (st->policy == DA_OFFSET_DEFAULT)
    st->policy = st->head_group_mode ? DA_OFFSET_GROUP : DA_OFFSET_HEAD;
  st->causal = params->causal != 0;
  st->h = params->num_heads;
  st->h_kv = params->num_kv_heads == 0 ? params->num_heads : params->num_kv_heads;
  st->d = params->head_dim;
  st->heads_per_kv = st->h / st->h_kv;
  st->scale =
      params->softmax_scale == 0.0f ? 1.0 / sqrt((double)st->d) : (double)params->softmax_scale;
  return DA_STATUS_SUCCESS;
}

static int64_t num_sequences(const da_attention_batch* batch) { return batch->batch; }

static int64_t seq_begin(const da_attention_batch* batch, int64_t s) {
  return batch->cu_seqlens ? batch->cu_seqlens[s] : s * batch->seqlen;
}

static int64_t seq_length(const da_attention_batch* batch, int64_t s) {
  return batch->cu_seqlens ? batch->cu_seqlens[s + 1] - batch->cu_seqlens[s] : batch->seqlen;
}

/* Head groups: k groups of floor(h/k) heads, the first h mod k one head larger. */
static int head_group(int j, int h, int k) {
  int base = h / k, extra = h % k;
  int big = extra * (base + 1); /* heads in the larger groups */
  if (j < big) return j / (base + 1);
  return extra + (j - big) / base;
}

static int pattern_offset(const oracle_setup* st, int i, int j) {
  int r = st->r[i];
  switch (st->policy) {
    case DA_OFFSET_GROUP: return head_group(j, st->h, st->num_patterns) % r;
    case DA_OFFSET_BLOCK: {
      int per_block = (st->h + r - 1) / r;
      return j / per_block;
    }
    case DA_OFFSET_HEAD:
    default: return j % r;
  }
}

/* Longest possible key multiset of one query in a sequence of length n. */
static int64_t max_keys(const oracle_setup* st, int64_t n) {
  int64_t total = 0;
  for (int i = 0; i < st->num_patterns; i++) total += st->w[i] < n ? st->w[i] : n;
  return total;
}

/* Writes K(p, j), the multiset union over the patterns head j uses, as local key
 * positions into keys (when not NULL); returns its size. */
static int64_t collect_keys(const oracle_setup* st, int64_t n, int64_t p, int j, int64_t* keys) {
  int64_t count = 0;
  for (int i = 0; i < st->num_patterns; i++) {
    if (st->head_group_mode && head_group(j, st->h, st->num_patterns) != i) continue;
    int64_t w = st->w[i], r = st->r[i];
    int64_t a = (p / w) * w;
    int64_t end = a + w < n ? a + w : n;
    int64_t o = pattern_offset(st, i, j);
    if ((p - a) % r != o) continue; /* p itself not selected: pattern contributes nothing */
    for (int64_t t = a + o; t < end; t += r) {
      if (st->causal && t > p) break;
      if (keys) keys[count] = t;
      count++;
    }
  }
  return count;
}

static double dot(const double* x, const double* y, int d) {
  double acc = 0.0;
  for (int c = 0; c < d; c++) acc += x[c] * y[c];
  return acc;
}

/* Softmax over one query's key multiset. Fills probs[m] = e^{s q.k_m - lse},
 * out (d values) and returns lse (-inf, with out = 0, for an empty set). */
static double attend(const oracle_setup* st, const double* q_row, const double* k_seq,
                     const double* v_seq, int kv_head, const int64_t* keys, int64_t count,
                     double* probs, double* out) {
  const int d = st->d;
  const int64_t kv_stride = (int64_t)st->h_kv * d;
  memset(out, 0, sizeof(double) * (size_t)d);
  if (count == 0) return -INFINITY;
  double max_score = -INFINITY;
  for (int64_t m = 0; m < count; m++) {
    probs[m] = st->scale * dot(q_row, k_seq + keys[m] * kv_stride + (int64_t)kv_head * d, d);
    if (probs[m] > max_score) max_score = probs[m];
  }
  double denom = 0.0;
  for (int64_t m = 0; m < count; m++) denom += exp(probs[m] - max_score);
  double lse = max_score + log(denom);
  for (int64_t m = 0; m < count; m++) {
    probs[m] = exp(probs[m] - lse);
    const double* v_row = v_seq + keys[m] * kv_stride + (int64_t)kv_head * d;
    for (int c = 0; c < d; c++) out[c] += probs[m] * v_row[c];
  }
  return lse;
}

/* Scratch for one (query, head): key list, probabilities and an output row. */
typedef struct {
  int64_t* keys;
  double* probs;
  double* row;
} oracle_scratch;

static da_status scratch_alloc(const oracle_setup* st, const da_attention_batch* batch,
                               oracle_scratch* sc) {
  int64_t longest = 0;
  for (int64_t s = 0; s < num_sequences(batch); s++) {
    int64_t m = max_keys(st, seq_length(batch, s));
    if (m > longest) longest = m;
  }
  size_t cap = (size_t)(longest > 0 ? longest : 1);
  sc->keys = (int64_t*)malloc(cap * sizeof(int64_t));
  sc->probs = (double*)malloc(cap * sizeof(double));
  sc->row = (double*)malloc((size_t)st->d * sizeof(double));
  if (!sc->keys || !sc->probs || !sc->row) {
    free(sc->keys);
    free(sc->probs);
    free(sc->row);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY,
                        "dense oracle: could not allocate scratch for %lld keys",
                        (long long)longest);
  }
  return DA_STATUS_SUCCESS;
}

static void scratch_free(oracle_scratch* sc) {
  free(sc->keys);
  free(sc->probs);
  free(sc->row);
}

da_status da_oracle_forward(const da_attention_params* params, const da_attention_batch* batch,
                            const double* q, const double* k, const double* v, int64_t token_begin,
                            int64_t token_end, double* out, double* lse) {
  da_error_clear();
  oracle_setup st;
  da_status status = setup_init(params, batch, &st);
  if (status != DA_STATUS_SUCCESS) return status;
  if (!q) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "q is NULL");
  if (!k) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "k is NULL");
  if (!v) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "v is NULL");
  if (!out) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "out is NULL");
  if (!lse) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "lse is NULL");
  int64_t tokens = 0;
  status = da_attention_num_tokens(batch, &tokens);
  if (status != DA_STATUS_SUCCESS) return status;
  if (token_begin < 0 || token_end < token_begin || token_end > tokens)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "token range [token_begin=%lld, token_end=%lld) is not inside "
                        "[0, %lld)",
                        (long long)token_begin, (long long)token_end, (long long)tokens);

  oracle_scratch sc;
  status = scratch_alloc(&st, batch, &sc);
  if (status != DA_STATUS_SUCCESS) return status;
  const int d = st.d, h = st.h;
  for (int64_t s = 0; s < num_sequences(batch); s++) {
    int64_t begin = seq_begin(batch, s), n = seq_length(batch, s);
    const double* k_seq = k + begin * st.h_kv * d;
    const double* v_seq = v + begin * st.h_kv * d;
    for (int64_t p = 0; p < n; p++) {
      int64_t token = begin + p;
      if (token < token_begin || token >= token_end) continue;
      for (int j = 0; j < h; j++) {
        int64_t count = collect_keys(&st, n, p, j, sc.keys);
        const double* q_row = q + (token * h + j) * d;
        double* out_row = out + ((token - token_begin) * h + j) * d;
        lse[(token - token_begin) * h + j] = attend(&st, q_row, k_seq, v_seq, j / st.heads_per_kv,
                                                    sc.keys, count, sc.probs, out_row);
      }
    }
  }
  scratch_free(&sc);
  return DA_STATUS_SUCCESS;
}

da_status da_oracle_backward(const da_attention_params* params, const da_attention_batch* batch,
                             const double* q, const double* k, const double* v, const double* dout,
                             double* dq, double* dk, double* dv) {
  da_error_clear();
  oracle_setup st;
  da_status status = setup_init(params, batch, &st);
  if (status != DA_STATUS_SUCCESS) return status;
  if (!q) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "q is NULL");
  if (!k) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "k is NULL");
  if (!v) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "v is NULL");
  if (!dout) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "dout is NULL");
  if (!dq) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "dq is NULL");
  if (!dk) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "dk is NULL");
  if (!dv) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "dv is NULL");
  int64_t tokens = 0;
  status = da_attention_num_tokens(batch, &tokens);
  if (status != DA_STATUS_SUCCESS) return status;

  oracle_scratch sc;
  status = scratch_alloc(&st, batch, &sc);
  if (status != DA_STATUS_SUCCESS) return status;
  const int d = st.d, h = st.h;
  const int64_t kv_stride = (int64_t)st.h_kv * d;
  memset(dq, 0, sizeof(double) * (size_t)(tokens * h * d));
  memset(dk, 0, sizeof(double) * (size_t)(tokens * kv_stride));
  memset(dv, 0, sizeof(double) * (size_t)(tokens * kv_stride));
  for (int64_t s = 0; s < num_sequences(batch); s++) {
    int64_t begin = seq_begin(batch, s), n = seq_length(batch, s);
    const double* k_seq = k + begin * kv_stride;
    const double* v_seq = v + begin * kv_stride;
    double* dk_seq = dk + begin * kv_stride;
    double* dv_seq = dv + begin * kv_stride;
    for (int64_t p = 0; p < n; p++) {
      int64_t token = begin + p;
      for (int j = 0; j < h; j++) {
        int64_t count = collect_keys(&st, n, p, j, sc.keys);
        if (count == 0) continue; /* O is constant 0 there: no gradient flows */
        int kv_head = j / st.heads_per_kv;
        const double* q_row = q + (token * h + j) * d;
        const double* do_row = dout + (token * h + j) * d;
        double* dq_row = dq + (token * h + j) * d;
        attend(&st, q_row, k_seq, v_seq, kv_head, sc.keys, count, sc.probs, sc.row);
        double big_d = dot(do_row, sc.row, d); /* D_p = dO_p . O_p */
        for (int64_t m = 0; m < count; m++) {
          int64_t kv_off = sc.keys[m] * kv_stride + (int64_t)kv_head * d;
          double prob = sc.probs[m];
          double ds = prob * (dot(do_row, v_seq + kv_off, d) - big_d);
          for (int c = 0; c < d; c++) {
            dq_row[c] += st.scale * ds * k_seq[kv_off + c];
            dk_seq[kv_off + c] += st.scale * ds * q_row[c];
            dv_seq[kv_off + c] += prob * do_row[c];
          }
        }
      }
    }
  }
  scratch_free(&sc);
  return DA_STATUS_SUCCESS;
}

da_status da_oracle_count_pairs(const da_attention_params* params, const da_attention_batch* batch,
                                int64_t* pairs) {
  da_error_clear();
  oracle_setup st;
  da_status status = setup_init(params, batch, &st);
  if (status != DA_STATUS_SUCCESS) return status;
  if (!pairs) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "pairs is NULL");
  int64_t total = 0;
  for (int64_t s = 0; s < num_sequences(batch); s++) {
    int64_t n = seq_length(batch, s);
    for (int64_t p = 0; p < n; p++)
      for (int j = 0; j < st.h; j++) total += collect_keys(&st, n, p, j, NULL);
  }
  *pairs = total;
  return DA_STATUS_SUCCESS;
}
