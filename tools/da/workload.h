/* workload.h: the tensors of one attention problem, filled with seeded random
 * values, and the timing loop both subcommands and both backends use. */
#ifndef DA_TOOLS_WORKLOAD_H
#define DA_TOOLS_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "attention/dilated_attention.h"

typedef struct {
  int64_t tokens;
  int heads, kv_heads, head_dim;
  float *q, *k, *v; /* random inputs, roughly N(0, 1), never all zero */
  float *out, *lse; /* forward results, NaN until computed */
  float *dout;      /* random; this and the gradients only with backward */
  float *dq, *dk, *dv;
} cli_tensors;

/* The seeded stream the inputs are drawn from: count roughly N(0, 1) values
 * (never all zero) from *state (splitmix64; seed it with the --seed value).
 * Tensors are drawn in the order q, k, v, dout, so whoever draws in that order
 * from the same seed gets the same values (the GPU tensors do). */
void cli_random_fill(float* data, size_t count, uint64_t* state);

/* Allocates and fills the tensors of a valid (params, batch). The outputs are
 * poisoned with NaN so that an unwritten element cannot pass a check.
 * DA_STATUS_OUT_OF_MEMORY when allocation fails (da_last_error() is not set:
 * the caller says so itself). Free with cli_tensors_destroy. */
da_status cli_tensors_create(const da_attention_params* params, const da_attention_batch* batch,
                             int with_backward, uint64_t seed, cli_tensors* tensors);
void cli_tensors_destroy(cli_tensors* tensors);

typedef struct {
  int count; /* 0: not measured */
  double min_ms, median_ms, max_ms;
} cli_time_stats;

typedef struct {
  cli_time_stats forward, backward, forward_backward;
  int warmup; /* untimed iterations before them */
} cli_timings;

/* One iteration of a backend: the forward (and, when with_backward, the backward
 * right after it), each pass's time in ms. Returns the first failing status. */
typedef da_status (*cli_pass_fn)(void* context, int with_backward, double* forward_ms,
                                 double* backward_ms);

/* Runs `warmup` untimed then `repeats` timed iterations of run(context, ...);
 * forward_backward is the per-iteration sum. Shows a progress bar on stderr when
 * it is a terminal and the first timed iteration predicts more than ~2 s. The
 * first failing status is returned (whoever run() called explains it). */
da_status cli_time_passes(cli_pass_fn run, void* context, int warmup, int repeats,
                          int with_backward, cli_timings* timings);

/* cli_time_passes over the CPU passes on `tensors` (wall clock); a failing
 * library status is returned with da_last_error() explaining it. */
da_status cli_time_attention(const da_attention_params* params, const da_attention_batch* batch,
                             cli_tensors* tensors, int warmup, int repeats, int with_backward,
                             cli_timings* timings);

#endif /* DA_TOOLS_WORKLOAD_H */
