/* workload.h: the mixed workload of mempool_bench: one training step of a
 * 24-layer model with dilated attention, as a trace of ~10k allocations and frees
 * (activations kept for backward, attention and GEMM workspaces, small index and
 * statistics buffers, 25 MiB gradient buckets freed on a communication stream).
 * The same trace is replayed against every allocator. */
#ifndef DA_TOOLS_MEMPOOL_BENCH_WORKLOAD_H
#define DA_TOOLS_MEMPOOL_BENCH_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  OP_ALLOC = 0,     /* slot <- allocate(bytes) on the compute stream */
  OP_FREE = 1,      /* free(slot) on the compute stream */
  OP_FREE_COMM = 2, /* free(slot) on the communication stream, after it waited for
                       the compute stream (the bucket's all-reduce) */
} op_kind;

typedef struct {
  op_kind kind;
  uint32_t slot;
  size_t bytes; /* OP_ALLOC */
} trace_op;

typedef struct {
  trace_op* ops;
  size_t num_ops, cap_ops;
  uint32_t num_slots;
  size_t allocations;
  size_t peak_live_bytes; /* of the requested sizes */
  uint32_t tokens;
} trace;

/* The trace of training step `step` (its sequence length varies with the step, as
 * with variable-length batches). Returns 0, or 1 if host memory ran out. */
int trace_build(trace* t, uint64_t step);
void trace_free(trace* t);

#endif /* DA_TOOLS_MEMPOOL_BENCH_WORKLOAD_H */
