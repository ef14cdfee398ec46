/* The parts of comm_bench shared by the two binaries (comm_bench: CPU compressors,
 * codec, NCCL on one process; comm_bench_mpi: the same collectives under mpirun).
 * Method (docs/comm.md, "Benchmark"): nccl-tests' definitions. For S bytes reduced
 * in t seconds, algbw = S / t and busbw = algbw * 2 (n - 1) / n. The bucketed
 * all-reduce moves the same S bytes as a model of separate gradients (packed into
 * 25 MiB buckets: copies included) or as views of one flat buffer (in place), and is
 * compared with one plain all-reduce of S bytes. Compressors are timed on one 25 MiB
 * bucket of gradient-like float32 data; their end-to-end rate counts uncompressed
 * bytes. Models larger than 8 MiB repeat an 8 MiB tile of gradient-like data (drawing
 * a GiB of it element by element takes longer than the measurements). */
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
 * then the compressors end to end at `compressor_bytes` (0: skip). Prints tables
 * (rank 0). */
int bench_allreduce(da_comm* comm, const bench_env* env, size_t min_bytes, size_t max_bytes,
                    size_t compressor_bytes, int iterations);

/* The bucketed all-reduce with each compressor (ratio for the sparse ones) for every
 * size in [min_bytes, max_bytes] (x4 steps), in place over one flat buffer: a table of
 * busbw in uncompressed bytes, sent/raw and milliseconds (rank 0). */
int bench_compressed_sweep(da_comm* comm, const bench_env* env, size_t min_bytes, size_t max_bytes,
                           double ratio, int iterations);

/* nccl-tests' bus factor: busbw = algbw * 2 (n - 1) / n (0 for one rank). */
double bench_bus_factor(int size);

/* "16 MiB", "1 GiB". */
const char* bench_size_label(size_t bytes, char* buf, size_t len);

/* --- Building blocks (the multi-GPU overlap measurement composes them) ------------- */

/* `bytes` of float32 gradients as tensors of the sizes in `pattern` (bytes, repeated,
 * the last one cut to fit), in registration (forward) order, in separate allocations
 * or (flat) as views of one buffer, filled with gradient-like data and registered with
 * a new, finalized gradient communicator (default buckets, `compress`). */
typedef struct {
  da_grad_comm* grad;
  int count;        /* tensors */
  void** ptrs;
  size_t* elements; /* per tensor */
  void* flat;       /* the buffer when flat, else NULL */
  const bench_env* env;
} bench_model;

/* 0 on success; else prints why and returns 1 (nothing left allocated). */
int bench_model_build(da_comm* comm, const bench_env* env, size_t bytes, const size_t* pattern,
                      int pattern_len, int flat, const da_compress_config* compress, bench_model* m);
void bench_model_free(bench_model* m);

/* One step: every gradient marked ready in reverse order (stream NULL), then
 * synchronize. 0 on success. */
int bench_model_step(bench_model* m);

/* fn(arg) once to warm up, then BENCH_REPEATS times `iterations` calls: *seconds is the
 * fastest repeat's mean per call, of the slowest rank (env->max_across). */
#define BENCH_REPEATS 3
int bench_repeat(const bench_env* env, int (*fn)(void* arg), void* arg, int iterations, double* seconds);

/* bench_repeat of bench_model_step. */
int bench_model_time(bench_model* m, int iterations, double* seconds);

/* Iterations for a size: about the same bytes for every size, in [2, 4 * iterations]. */
int bench_iterations_for(size_t bytes, int iterations);

/* Host compressors on one bucket of `bytes`: encode / decode GB/s. */
void bench_cpu_compressors(size_t bytes, int iterations);

/* The zstd codec on gradients: ratio and GB/s, raw vs byte-shuffled, fp32 / bf16. */
void bench_codec(size_t bytes, int threads);

#ifdef __cplusplus
}
#endif

#endif /* DA_TOOLS_COMM_BENCH_H */
