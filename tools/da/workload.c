#include "tools/da/workload.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools/da/report.h"
#include "tools/da/sysinfo.h"

/* splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for inputs. */
static uint64_t next_u64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Irwin-Hall: the sum of 4 uniforms on [0, 1) has mean 2 and variance 1/3, so
 * (sum - 2) * sqrt(3) is close to N(0, 1) and cheap. */
void cli_random_fill(float* data, size_t count, uint64_t* state) {
  const double scale = sqrt(3.0) / 9007199254740992.0; /* 2^53 */
  for (size_t i = 0; i < count; ++i) {
    double sum = 0.0;
    for (int u = 0; u < 4; ++u) sum += (double)(next_u64(state) >> 11);
    data[i] = (float)(sum * scale - 2.0 * sqrt(3.0));
  }
}

static void fill_nan(float* data, size_t count) {
  for (size_t i = 0; i < count; ++i) data[i] = NAN;
}

static float* alloc_floats(size_t count) { return count ? malloc(count * sizeof(float)) : NULL; }

void cli_tensors_destroy(cli_tensors* t) {
  free(t->q);
  free(t->k);
  free(t->v);
  free(t->out);
  free(t->lse);
  free(t->dout);
  free(t->dq);
  free(t->dk);
  free(t->dv);
  memset(t, 0, sizeof *t);
}

da_status cli_tensors_create(const da_attention_params* params, const da_attention_batch* batch,
                             int with_backward, uint64_t seed, cli_tensors* t) {
  memset(t, 0, sizeof *t);
  da_status status = da_attention_num_tokens(batch, &t->tokens);
  if (status != DA_STATUS_SUCCESS) return status;
  t->heads = params->num_heads;
  t->kv_heads = params->num_kv_heads ? params->num_kv_heads : params->num_heads;
  t->head_dim = params->head_dim;
  /* Sizes in elements; refuse products that overflow size_t before malloc. */
  const double q_elems = (double)t->tokens * t->heads * t->head_dim;
  if (q_elems * sizeof(float) * (with_backward ? 9 : 4) > (double)SIZE_MAX / 2)
    return DA_STATUS_OUT_OF_MEMORY;
  const size_t q_count = (size_t)t->tokens * (size_t)t->heads * (size_t)t->head_dim;
  const size_t kv_count = (size_t)t->tokens * (size_t)t->kv_heads * (size_t)t->head_dim;
  const size_t lse_count = (size_t)t->tokens * (size_t)t->heads;
  t->q = alloc_floats(q_count);
  t->k = alloc_floats(kv_count);
  t->v = alloc_floats(kv_count);
  t->out = alloc_floats(q_count);
  t->lse = alloc_floats(lse_count);
  int ok = t->q && t->k && t->v && t->out && t->lse;
  if (with_backward) {
    t->dout = alloc_floats(q_count);
    t->dq = alloc_floats(q_count);
    t->dk = alloc_floats(kv_count);
    t->dv = alloc_floats(kv_count);
    ok = ok && t->dout && t->dq && t->dk && t->dv;
  }
  if (!ok) {
    cli_tensors_destroy(t);
    return DA_STATUS_OUT_OF_MEMORY;
  }
  uint64_t state = seed;
  cli_random_fill(t->q, q_count, &state);
  cli_random_fill(t->k, kv_count, &state);
  cli_random_fill(t->v, kv_count, &state);
  fill_nan(t->out, q_count);
  fill_nan(t->lse, lse_count);
  if (with_backward) {
    cli_random_fill(t->dout, q_count, &state);
    fill_nan(t->dq, q_count);
    fill_nan(t->dk, kv_count);
    fill_nan(t->dv, kv_count);
  }
  return DA_STATUS_SUCCESS;
}

static int compare_doubles(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* Sorts samples in place. */
static cli_time_stats summarize(double* samples_ms, int count) {
  cli_time_stats stats = {.count = count};
  qsort(samples_ms, (size_t)count, sizeof *samples_ms, compare_doubles);
  stats.min_ms = samples_ms[0];
  stats.max_ms = samples_ms[count - 1];
  stats.median_ms = count % 2 ? samples_ms[count / 2]
                              : 0.5 * (samples_ms[count / 2 - 1] + samples_ms[count / 2]);
  return stats;
}

typedef struct {
  const da_attention_params* params;
  const da_attention_batch* batch;
  cli_tensors* tensors;
} cpu_context;

static da_status cpu_run_passes(void* context, int with_backward, double* forward_ms,
                                double* backward_ms) {
  const cpu_context* c = context;
  cli_tensors* t = c->tensors;
  double start = cli_now_ms();
  da_status status =
      da_attention_forward_cpu(c->params, c->batch, t->q, t->k, t->v, t->out, t->lse);
  double middle = cli_now_ms();
  if (status == DA_STATUS_SUCCESS && with_backward)
    status = da_attention_backward_cpu(c->params, c->batch, t->q, t->k, t->v, t->out, t->lse,
                                       t->dout, t->dq, t->dk, t->dv);
  *forward_ms = middle - start;
  *backward_ms = cli_now_ms() - middle;
  return status;
}

da_status cli_time_passes(cli_pass_fn run, void* context, int warmup, int repeats,
                          int with_backward, cli_timings* timings) {
  memset(timings, 0, sizeof *timings);
  timings->warmup = warmup;
  double* samples = malloc(3 * (size_t)repeats * sizeof *samples);
  if (samples == NULL) return DA_STATUS_OUT_OF_MEMORY;
  double* forward = samples;
  double* backward = samples + repeats;
  double* both = samples + 2 * (size_t)repeats;
  da_status status = DA_STATUS_SUCCESS;
  double unused_forward, unused_backward;
  for (int i = 0; i < warmup && status == DA_STATUS_SUCCESS; ++i)
    status = run(context, with_backward, &unused_forward, &unused_backward);
  cli_progress progress = {0};
  for (int i = 0; i < repeats && status == DA_STATUS_SUCCESS; ++i) {
    status = run(context, with_backward, &forward[i], &backward[i]);
    both[i] = forward[i] + backward[i];
    if (i == 0) cli_progress_begin(&progress, "timing", repeats, both[0] * repeats);
    cli_progress_step(&progress);
  }
  cli_progress_end(&progress);
  if (status == DA_STATUS_SUCCESS) {
    timings->forward = summarize(forward, repeats);
    if (with_backward) {
      timings->backward = summarize(backward, repeats);
      timings->forward_backward = summarize(both, repeats);
    }
  }
  free(samples);
  return status;
}

da_status cli_time_attention(const da_attention_params* params, const da_attention_batch* batch,
                             cli_tensors* t, int warmup, int repeats, int with_backward,
                             cli_timings* timings) {
  cpu_context context = {.params = params, .batch = batch, .tensors = t};
  return cli_time_passes(cpu_run_passes, &context, warmup, repeats, with_backward, timings);
}
