/* comm_bench --gpus N: the NCCL engine on N GPUs of one process, one thread per GPU
 * (da_comm_nccl_get_id + da_comm_create_nccl_rank: no MPI, no mpirun). */
#ifndef DA_TOOLS_COMM_BENCH_MULTI_GPU_H
#define DA_TOOLS_COMM_BENCH_MULTI_GPU_H

#include <stddef.h>

#include "tools/comm_bench/bench.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int gpus;                    /* ranks, GPUs 0 .. gpus-1 */
  size_t min_bytes, max_bytes; /* all-reduce sizes, x4 steps */
  double ratio;                /* top-k / random-k / threshold */
  int iterations;
  size_t overlap_bytes; /* model of the overlap table; 0: skip it */
  size_t layer_bytes;   /* its layers' weight gradients (+ a 4 KiB bias each) */
  double compute_ratio; /* its compute time / the uncompressed communication time */
} bench_multi_options;

/* Runs the three tables (plain vs bucketed all-reduce; the bucketed all-reduce per
 * compressor; overlap with a simulated backward pass), rank 0 printing. `device`
 * gives the device-memory callbacks (alloc, release, upload) every rank uses. Any
 * failure ends the process with a message (a peer would otherwise wait for it). */
int bench_multi_gpu(const bench_multi_options* options, const bench_env* device);

#ifdef __cplusplus
}
#endif

#endif /* DA_TOOLS_COMM_BENCH_MULTI_GPU_H */
