/* comm_bench_mpi: plain vs bucketed all-reduce and the compressors end to end, on N
 * ranks under mpirun, over the MPI engine (host buffers) or NCCL bootstrapped over
 * MPI (one GPU per rank). Rank 0 prints; times are the slowest rank's.
 *   mpirun -np 2 comm_bench_mpi [--engine mpi|nccl] [--min-mb N] [--max-mb N]
 *                               [--compress-mb N] [--iters N] [--sweep]
 * --sweep adds the bucketed all-reduce per compressor at every size.
 * Method: bench.h and docs/comm.md. */
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/da_comm.h"
#include "tools/comm_bench/bench.h"

static void* host_alloc(size_t bytes) {
  void* p = malloc(bytes);
  if (p == NULL) {
    fprintf(stderr, "comm_bench_mpi: no memory for %zu bytes\n", bytes);
    exit(1);
  }
  return p;
}
static void host_upload(void* dst, const void* src, size_t bytes) { memcpy(dst, src, bytes); }
static void* device_alloc(size_t bytes) {
  void* p = NULL;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    fprintf(stderr, "comm_bench_mpi: cudaMalloc(%zu) failed\n", bytes);
    exit(1);
  }
  return p;
}
static void device_release(void* p) { cudaFree(p); }
static void device_upload(void* dst, const void* src, size_t bytes) {
  cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}
static double slowest(double s) {
  double m = s;
  MPI_Allreduce(&s, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

int main(int argc, char** argv) {
  /* Before MPI or NCCL starts: no NVLink SHARP (multicast objects the device machines
   * must not create); set here, so that no launcher's environment can forget it. */
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char* engine = "mpi";
  size_t min_mb = 1, max_mb = 256, compress_mb = 100;
  int iters = 10, sweep = 0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      if (rank == 0)
        printf("usage: mpirun -np N comm_bench_mpi [--engine mpi|nccl] [--min-mb N] [--max-mb N]\n"
               "                                  [--compress-mb N] [--iters N] [--sweep]\n"
               "  defaults: mpi engine, 1 .. 256 MiB, 100 MiB compressed run (0: skip), 10 iterations\n"
               "  --sweep: also the bucketed all-reduce per compressor (ratio 0.01) at every size\n");
      MPI_Finalize();
      return 0;
    } else if (has && !strcmp(a, "--engine")) {
      engine = argv[++i];
    } else if (has && !strcmp(a, "--min-mb")) {
      min_mb = strtoull(argv[++i], NULL, 10);
    } else if (has && !strcmp(a, "--max-mb")) {
      max_mb = strtoull(argv[++i], NULL, 10);
    } else if (has && !strcmp(a, "--compress-mb")) {
      compress_mb = strtoull(argv[++i], NULL, 10);
    } else if (has && !strcmp(a, "--iters")) {
      iters = atoi(argv[++i]);
    } else if (!strcmp(a, "--sweep")) {
      sweep = 1;
    } else {
      if (rank == 0) fprintf(stderr, "comm_bench_mpi: unknown or incomplete option '%s'\n", a);
      MPI_Finalize();
      return 2;
    }
  }
  int nccl = !strcmp(engine, "nccl");
  if ((!nccl && strcmp(engine, "mpi")) || min_mb == 0 || max_mb < min_mb || iters < 1) {
    if (rank == 0) fprintf(stderr, "comm_bench_mpi: bad --engine, sizes or --iters\n");
    MPI_Finalize();
    return 2;
  }
  da_comm_config cfg = da_comm_config_default();
  cfg.verify_sizes = 0; /* as nccl-tests: the raw collective */
  da_comm* comm = NULL;
  da_status st = nccl ? da_comm_create_nccl_mpi(&cfg, &comm) : da_comm_create_mpi(&cfg, &comm);
  if (st != DA_STATUS_SUCCESS) {
    fprintf(stderr, "comm_bench_mpi: rank %d: %s\n", rank, da_last_error());
    MPI_Finalize();
    return 1;
  }
  if (rank == 0) printf("# comm_bench_mpi (da %s): %s engine, %d ranks\n", da_version_string(), engine, size);
  bench_env env = nccl ? (bench_env){1, device_alloc, device_release, device_upload, slowest, rank, size}
                       : (bench_env){0, host_alloc, free, host_upload, slowest, rank, size};
  int status = bench_allreduce(comm, &env, min_mb * MIB, max_mb * MIB, compress_mb * MIB, iters);
  if (status == 0 && sweep) status = bench_compressed_sweep(comm, &env, min_mb * MIB, max_mb * MIB, 0.01, iters);
  da_comm_destroy(comm);
  MPI_Finalize();
  return status;
}
