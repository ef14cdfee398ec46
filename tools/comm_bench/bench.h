/* The parts of comm_bench shared by the two binaries (comm_bench: CPU compressors,
 * codec, NCCL on one process; comm_bench_mpi: the same collectives under mpirun).
 * Method (docs/comm.md, "Benchmark"): nccl-tests' definitions. For S bytes reduced
 * in t seconds, algbw = S / t and busbw = algbw * 2 (n - 1) / n. The bucketed
 * all-reduce moves the same S bytes as a model of separate gradients (packed into
 * 25 MiB buckets: copies included) or as views of one flat buffer (in place), and is
 * compared with one plain all-reduce of S bytes. Compressors are timed on one 25 MiB
 * bucket of gradient-like float32 data; their end-to-end rate counts uncompressed
 * bytes. */
#ifndef DA_TOOLS_COMM_BENCH_H
#define DA_TOOLS_COMM_BENCH_H

#include <stddef.h>

#include "comm/da_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MIB ((size_t)1 << 20)

double bench_now(void);

/* Gradient-like float32 values (normal, scales over 3 decades), deterministic. */
void bench_fill_gradient(float* x, size_t n, unsigned long long seed);

/* Where a run's buffers live: host malloc for MPI, cudaMalloc for NCCL. */
typedef struct {
  int device; /* 0: host memory */
  void* (*alloc)(size_t bytes);
  void (*release)(void* p);
  void (*upload)(void* dst, const void* src, size_t bytes);
  /* max over ranks of a local time (identity on one process) */
  double (*max_across)(double seconds);
  int rank, size;
} bench_env;

/* Plain vs bucketed all-reduce for every size in [min_bytes, max_bytes] (x4 steps),
 * then the compressors end to end at `compressor_bytes`. Prints tables (rank 0). */
int bench_allreduce(da_comm* comm, const bench_env* env, size_t min_bytes, size_t max_bytes,
                    size_t compressor_bytes, int iterations);

/* Host compressors on one bucket of `bytes`: encode / decode GB/s. */
void bench_cpu_compressors(size_t bytes, int iterations);

/* The zstd codec on gradients: ratio and GB/s, raw vs byte-shuffled, fp32 / bf16. */
void bench_codec(size_t bytes, int threads);

#ifdef __cplusplus
}
#endif

#endif /* DA_TOOLS_COMM_BENCH_H */
