/* Exact block-sparse attention on the CPU, float32 with fp32 accumulation: the
 * reference the CUDA kernel will be tested against.
 *
 * Forward: one work item per (sequence, head, query block row); each query keeps an
 * online softmax (running max m, sum l, accumulator) over the key tokens of every
 * block its row keeps, in column order, masking t > p inside diagonal blocks when
 * causal: one softmax over all allowed keys, the levels only decide which blocks.
 *
 * Backward: D = rowsum(dO * O); dQ per (sequence, head, query block row) over the
 * row's blocks; dK, dV per (sequence, kv head, key block) over the transposed layout
 * (every query head of the group, every row that keeps the block, in increasing
 * order). Both recompute P = exp(s q.k - LSE). Items own disjoint output rows and
 * run in a fixed order on one thread, so results are bit-identical for any thread
 * count. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/params.h"
#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

da_pattern_attention_params da_pattern_attention_params_default(void) {
  da_pattern_attention_params p;
  memset(&p, 0, sizeof p);
  p.batch = 1;
  return p;
}

typedef struct {
  const da_pattern_bsr* bsr;
  int64_t batch, n, B, nb, tokens;
  int h, hk, group, d;
  float scale;
  int causal;
} attn_plan;

static da_status plan_init(const da_pattern_layout* layout, const da_pattern_attention_params* p,
                           attn_plan* plan) {
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  if (p == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params must not be NULL");
  const da_pattern_bsr* b = &layout->bsr;
  if (b->row_begin != 0 || b->row_end != b->num_blocks)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "layout holds block rows [%lld, %lld) but attention needs all %lld",
                        (long long)b->row_begin, (long long)b->row_end, (long long)b->num_blocks);
  if (p->batch < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params->batch=%lld must be >= 1",
                        (long long)p->batch);
  if (p->num_heads != b->num_heads)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->num_heads=%d does not match the layout's %d heads", p->num_heads,
                        b->num_heads);
  int hk = 0;
  float s = 0.0f;
  da_status st = da_attn_check_heads(p->num_heads, p->num_kv_heads, p->head_dim,
                                     p->softmax_scale, &hk, &s);
  if (st != DA_STATUS_SUCCESS) return st;
  if (b->seqlen > INT64_MAX / p->batch ||
      b->seqlen * p->batch > (int64_t)(SIZE_MAX / 8 / (size_t)p->num_heads / (size_t)p->head_dim))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "params->batch=%lld x seqlen=%lld x heads x head_dim overflows the "
                        "address space",
                        (long long)p->batch, (long long)b->seqlen);
  plan->bsr = b;
  plan->batch = p->batch;
  plan->n = b->seqlen;
  plan->B = b->block_size;
  plan->nb = b->num_blocks;
  plan->tokens = p->batch * b->seqlen;
  plan->h = p->num_heads;
  plan->hk = hk;
  plan->group = p->num_heads / hk;
  plan->d = p->head_dim;
  plan->scale = s;
  plan->causal = b->causal;
  return DA_STATUS_SUCCESS;
}

typedef struct {
  const void* p;
  size_t bytes;
  const char* name;
} buffer;

/* Fails naming the first output that overlaps any other buffer (NULL ones skipped). */
static da_status check_buffers(const buffer* required, int n_required, const buffer* outputs,
                               int n_outputs) {
  for (int x = 0; x < n_required; x++)
    if (required[x].p == NULL)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s must not be NULL", required[x].name);
  for (int a = 0; a < n_outputs; a++) {
    if (outputs[a].p == NULL) continue;
    for (int x = 0; x < n_required + n_outputs; x++) {
      const buffer* other = x < n_required ? &required[x] : &outputs[x - n_required];
      if (other->p == NULL || strcmp(other->name, outputs[a].name) == 0) continue;
      const char* a0 = outputs[a].p;
      const char* b0 = other->p;
      if (a0 < b0 + other->bytes && b0 < a0 + outputs[a].bytes)
        return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s overlaps %s: outputs must not alias",
                            outputs[a].name, other->name);
    }
  }
  return DA_STATUS_SUCCESS;
}

/* Whether the call is big enough for threads: about a million score products
 * (thread start-up and spin-waiting cost more below that). */
static int worth_threads(const attn_plan* plan) {
  return (double)plan->bsr->nnz * (double)plan->B * (double)plan->B * (double)plan->d *
             (double)plan->batch >
         4e6;
}

static const int64_t* head_offsets(const attn_plan* plan, int j) {
  return plan->bsr->row_offsets + (size_t)j * (size_t)(plan->nb + 1);
}

static inline float dot(const float* a, const float* b, int d) {
  float s = 0.0f;
  for (int c = 0; c < d; c++) s += a[c] * b[c];
  return s;
}

/* Keys of block c that query token p (both within the sequence) may see:
 * [k_begin, k_end). */
static inline int64_t visible_end(const attn_plan* plan, int64_t c, int64_t p) {
  int64_t end = (c + 1) * plan->B < plan->n ? (c + 1) * plan->B : plan->n;
  if (plan->causal && end > p + 1) end = p + 1;
  return end;
}

/* ----------------------------------------------------------------- forward */

static void forward_row(const attn_plan* plan, const float* q, const float* k, const float* v,
                        float* out, float* lse, int64_t seq, int j, int64_t i, float* acc) {
  const int d = plan->d, h = plan->h, hk = plan->hk, g = j / plan->group;
  const int64_t* off = head_offsets(plan, j);
  const int32_t* cols = plan->bsr->col_indices;
  const int64_t base = seq * plan->n;
  const int64_t p_end = (i + 1) * plan->B < plan->n ? (i + 1) * plan->B : plan->n;
  for (int64_t p = i * plan->B; p < p_end; p++) {
    const float* qp = q + ((size_t)(base + p) * h + j) * d;
    float m = -INFINITY, l = 0.0f;
    memset(acc, 0, sizeof(float) * d);
    for (int64_t x = off[i]; x < off[i + 1]; x++) {
      const int64_t c = cols[x];
      const int64_t t_end = visible_end(plan, c, p);
      for (int64_t t = c * plan->B; t < t_end; t++) {
        const size_t kv = ((size_t)(base + t) * hk + g) * d;
        const float s = plan->scale * dot(qp, k + kv, d);
        if (s > m) { /* rescale what was accumulated under the old max */
          const float alpha = expf(m - s);
          l *= alpha;
          for (int e = 0; e < d; e++) acc[e] *= alpha;
          m = s;
        }
        const float w = expf(s - m);
        l += w;
        const float* vt = v + kv;
        for (int e = 0; e < d; e++) acc[e] += w * vt[e];
      }
    }
    float* op = out + ((size_t)(base + p) * h + j) * d;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int e = 0; e < d; e++) op[e] = acc[e] * inv;
    if (lse != NULL) lse[(size_t)(base + p) * h + j] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
}

da_status da_pattern_attention_forward_cpu(const da_pattern_layout* layout,
                                           const da_pattern_attention_params* params,
                                           const float* q, const float* k, const float* v,
                                           float* out, float* lse) {
  da_error_clear();
  attn_plan plan;
  da_status st = plan_init(layout, params, &plan);
  if (st) return st;
  const size_t q_bytes = (size_t)plan.tokens * plan.h * plan.d * sizeof(float);
  const size_t kv_bytes = (size_t)plan.tokens * plan.hk * plan.d * sizeof(float);
  const size_t lse_bytes = (size_t)plan.tokens * plan.h * sizeof(float);
  const buffer required[] = {
      {q, q_bytes, "q"}, {k, kv_bytes, "k"}, {v, kv_bytes, "v"}, {out, q_bytes, "out"}};
  const buffer outputs[] = {{out, q_bytes, "out"}, {lse, lse_bytes, "lse"}};
  st = check_buffers(required, 4, outputs, 2);
  if (st) return st;

#pragma omp parallel if (worth_threads(&plan))
  {
    float acc[DA_MAX_HEAD_DIM];
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t s = 0; s < plan.batch; s++)
      for (int j = 0; j < plan.h; j++)
        for (int64_t i = 0; i < plan.nb; i++) forward_row(&plan, q, k, v, out, lse, s, j, i, acc);
  }
  return DA_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- backward */

/* The transposed layout of one head: for key block c, the rows that keep it, in
 * increasing order: rows[col_start[c] .. col_start[c + 1]). */
typedef struct {
  int64_t* col_start; /* h * (nb + 1) */
  int32_t* rows;      /* nnz          */
} transposed;

static int transpose(const attn_plan* plan, transposed* t) {
  const int64_t nb = plan->nb, nnz = plan->bsr->nnz;
  t->col_start = calloc((size_t)plan->h * (size_t)(nb + 1), sizeof(int64_t));
  t->rows = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
  int64_t* fill = malloc(sizeof(int64_t) * (size_t)(nb + 1));
  if (t->col_start == NULL || t->rows == NULL || fill == NULL) {
    free(fill);
    return 0;
  }
  const int32_t* cols = plan->bsr->col_indices;
  for (int j = 0; j < plan->h; j++) {
    const int64_t* off = head_offsets(plan, j);
    int64_t* start = t->col_start + (size_t)j * (size_t)(nb + 1);
    for (int64_t x = off[0]; x < off[nb]; x++) start[cols[x] + 1]++;
    start[0] = off[0]; /* rows of head j occupy the same slots as its columns */
    for (int64_t c = 0; c < nb; c++) start[c + 1] += start[c];
    memcpy(fill, start, sizeof(int64_t) * (size_t)(nb + 1));
    for (int64_t i = 0; i < nb; i++)
      for (int64_t x = off[i]; x < off[i + 1]; x++) t->rows[fill[cols[x]]++] = (int32_t)i;
  }
  free(fill);
  return 1;
}

static void dq_row(const attn_plan* plan, const float* q, const float* k, const float* v,
                   const float* lse, const float* delta, const float* dout, float* dq, int64_t seq,
                   int j, int64_t i) {
  const int d = plan->d, h = plan->h, hk = plan->hk, g = j / plan->group;
  const int64_t* off = head_offsets(plan, j);
  const int32_t* cols = plan->bsr->col_indices;
  const int64_t base = seq * plan->n;
  const int64_t p_end = (i + 1) * plan->B < plan->n ? (i + 1) * plan->B : plan->n;
  for (int64_t p = i * plan->B; p < p_end; p++) {
    const size_t row = (size_t)(base + p) * h + j;
    const float* qp = q + row * d;
    const float* dop = dout + row * d;
    float* dqp = dq + row * d;
    const float l = lse[row], dd = delta[row];
    memset(dqp, 0, sizeof(float) * d);
    if (isinf(l)) continue; /* no key: zero gradient */
    for (int64_t x = off[i]; x < off[i + 1]; x++) {
      const int64_t c = cols[x];
      const int64_t t_end = visible_end(plan, c, p);
      for (int64_t t = c * plan->B; t < t_end; t++) {
        const size_t kv = ((size_t)(base + t) * hk + g) * d;
        const float prob = expf(plan->scale * dot(qp, k + kv, d) - l);
        const float ds = prob * (dot(dop, v + kv, d) - dd);
        const float* kt = k + kv;
        for (int e = 0; e < d; e++) dqp[e] += plan->scale * ds * kt[e];
      }
    }
  }
}

static void dkv_block(const attn_plan* plan, const transposed* tr, const float* q, const float* k,
                      const float* v, const float* lse, const float* delta, const float* dout,
                      float* dk, float* dv, int64_t seq, int g, int64_t c) {
  const int d = plan->d, h = plan->h, hk = plan->hk;
  const int64_t base = seq * plan->n;
  const int64_t t_end = (c + 1) * plan->B < plan->n ? (c + 1) * plan->B : plan->n;
  for (int64_t t = c * plan->B; t < t_end; t++) {
    const size_t kv = ((size_t)(base + t) * hk + g) * d;
    memset(dk + kv, 0, sizeof(float) * d);
    memset(dv + kv, 0, sizeof(float) * d);
  }
  for (int j = g * plan->group; j < (g + 1) * plan->group; j++) {
    const int64_t* start = tr->col_start + (size_t)j * (size_t)(plan->nb + 1);
    for (int64_t x = start[c]; x < start[c + 1]; x++) {
      const int64_t i = tr->rows[x];
      const int64_t p_end = (i + 1) * plan->B < plan->n ? (i + 1) * plan->B : plan->n;
      for (int64_t p = i * plan->B; p < p_end; p++) {
        const size_t row = (size_t)(base + p) * h + j;
        const float l = lse[row], dd = delta[row];
        if (isinf(l)) continue;
        const float* qp = q + row * d;
        const float* dop = dout + row * d;
        const int64_t visible = visible_end(plan, c, p);
        for (int64_t t = c * plan->B; t < visible; t++) {
          const size_t kv = ((size_t)(base + t) * hk + g) * d;
          const float prob = expf(plan->scale * dot(qp, k + kv, d) - l);
          const float ds = prob * (dot(dop, v + kv, d) - dd);
          float* dkt = dk + kv;
          float* dvt = dv + kv;
          for (int e = 0; e < d; e++) {
            dvt[e] += prob * dop[e];
            dkt[e] += plan->scale * ds * qp[e];
          }
        }
      }
    }
  }
}

da_status da_pattern_attention_backward_cpu(const da_pattern_layout* layout,
                                            const da_pattern_attention_params* params,
                                            const float* q, const float* k, const float* v,
                                            const float* out, const float* lse, const float* dout,
                                            float* dq, float* dk, float* dv) {
  da_error_clear();
  attn_plan plan;
  da_status st = plan_init(layout, params, &plan);
  if (st) return st;
  const size_t q_bytes = (size_t)plan.tokens * plan.h * plan.d * sizeof(float);
  const size_t kv_bytes = (size_t)plan.tokens * plan.hk * plan.d * sizeof(float);
  const size_t lse_bytes = (size_t)plan.tokens * plan.h * sizeof(float);
  const buffer required[] = {
      {q, q_bytes, "q"},     {k, kv_bytes, "k"},      {v, kv_bytes, "v"},
      {out, q_bytes, "out"}, {lse, lse_bytes, "lse"}, {dout, q_bytes, "dout"},
      {dq, q_bytes, "dq"},   {dk, kv_bytes, "dk"},    {dv, kv_bytes, "dv"}};
  const buffer outputs[] = {{dq, q_bytes, "dq"}, {dk, kv_bytes, "dk"}, {dv, kv_bytes, "dv"}};
  st = check_buffers(required, 9, outputs, 3);
  if (st) return st;

  const size_t rows_h = (size_t)plan.tokens * plan.h;
  float* delta = malloc(sizeof(float) * rows_h);
  transposed tr = {NULL, NULL};
  if (delta == NULL || !transpose(&plan, &tr)) {
    st = da_error_set(
        DA_STATUS_OUT_OF_MEMORY, "could not allocate the backward workspace (%zu bytes)",
        sizeof(float) * rows_h + sizeof(int64_t) * (size_t)plan.h * (size_t)(plan.nb + 1) +
            sizeof(int32_t) * (size_t)plan.bsr->nnz);
    goto done;
  }
#pragma omp parallel if (worth_threads(&plan))
  {
#pragma omp for schedule(static)
    for (size_t x = 0; x < rows_h; x++) {
      double sum = 0.0;
      for (int e = 0; e < plan.d; e++)
        sum += (double)dout[x * plan.d + e] * (double)out[x * plan.d + e];
      delta[x] = (float)sum;
    }
#pragma omp for collapse(3) schedule(dynamic, 4) nowait
    for (int64_t s = 0; s < plan.batch; s++)
      for (int j = 0; j < plan.h; j++)
        for (int64_t i = 0; i < plan.nb; i++) dq_row(&plan, q, k, v, lse, delta, dout, dq, s, j, i);
#pragma omp for collapse(3) schedule(dynamic, 4)
    for (int64_t s = 0; s < plan.batch; s++)
      for (int g = 0; g < plan.hk; g++)
        for (int64_t c = 0; c < plan.nb; c++)
          dkv_block(&plan, &tr, q, k, v, lse, delta, dout, dk, dv, s, g, c);
  }

done:
  free(delta);
  free(tr.col_start);
  free(tr.rows);
  return st;
}
