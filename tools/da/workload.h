/* workload.h: the tensors of one attention problem, filled with seeded random
 * values, and the timing loop both subcommands use. */
#ifndef DA_TOOLS_WORKLOAD_H
#define DA_TOOLS_WORKLOAD_H

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
} cli_timings;

/* Runs `warmup` untimed then `repeats` timed iterations of forward (and, when
 * with_backward, backward right after each forward; forward_backward is their
 * per-iteration sum). Shows a progress bar on stderr when it is a terminal and the
 * first timed iteration predicts more than ~2 s. The first failing library
 * status is returned (da_last_error() explains it). */
da_status cli_time_attention(const da_attention_params* params, const da_attention_batch* batch,
                             cli_tensors* tensors, int warmup, int repeats, int with_backward,
                             cli_timings* timings);

#endif /* DA_TOOLS_WORKLOAD_H */
