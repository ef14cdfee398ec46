/* comm_bench: the comm component's throughput on one process (no MPI linked).
 *   cpu section: host compressors (GB/s per 25 MiB bucket) and the zstd codec.
 *   gpu section: NCCL on one GPU (plain vs bucketed all-reduce, 1 MiB .. 1 GiB), the
 *                GPU compressors (GB/s per 25 MiB bucket) and the compressed
 *                bucketed all-reduce end to end. Skipped, with a line, without a GPU.
 *   --gpus N:    NCCL on N GPUs, one thread each (multi_gpu.h): plain vs bucketed
 *                all-reduce, the bucketed all-reduce per compressor, and overlap with
 *                a simulated backward pass.
 * Multi-process runs (MPI engine, NCCL over MPI): comm_bench_mpi under mpirun.
 * Method: bench.h and docs/comm.md. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/compress.h"
#include "comm/da_comm.h"
#include "comm/gpu_compress.h"
#include "device/da_device.h"
#include "tools/comm_bench/bench.h"
#include "tools/comm_bench/multi_gpu.h"

static void usage(FILE* out) {
  fprintf(out,
          "usage: comm_bench [--cpu] [--gpu] [--gpus N] [--min-mb N] [--max-mb N] [--compress-mb N]\n"
          "                  [--bucket-mb N] [--iters N] [--threads N] [--ratio R]\n"
          "                  [--overlap-mb N] [--layer-mb N] [--compute-ratio R]\n"
          "  --cpu / --gpu     run only that section (default: both; gpu skips without a GPU)\n"
          "  --gpus N          N GPUs of this process, one thread each (no MPI); alone, runs\n"
          "                    only this (add --cpu / --gpu for those sections)\n"
          "  --min-mb, --max-mb  all-reduce sizes, x4 steps (default 1 .. 1024)\n"
          "  --compress-mb     bytes of the compressed end-to-end run (default 100; 0: skip)\n"
          "  --bucket-mb       bucket of the compressor micro-benchmarks (default 25)\n"
          "  --iters           iterations (default 10)\n"
          "  --threads         zstd worker threads in the codec rows (default 2)\n"
          "  --ratio           --gpus: top-k / random-k / threshold ratio (default 0.01)\n"
          "  --overlap-mb      --gpus: model of the overlap table (default 1024; 0: skip)\n"
          "  --layer-mb        --gpus: its layers' weight gradients (default 32)\n"
          "  --compute-ratio   --gpus: its compute / uncompressed communication time (default 1)\n");
}

static void* device_alloc(size_t bytes) {
  void* p = NULL;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    fprintf(stderr, "comm_bench: cudaMalloc(%zu) failed\n", bytes);
    fflush(stdout);
    _exit(1); /* --gpus: other rank threads may be inside NCCL; no atexit handlers */
  }
  return p;
}
static void device_release(void* p) { cudaFree(p); }
static void device_upload(void* dst, const void* src, size_t bytes) {
  cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}
static double identity(double s) { return s; }

/* GPU compressors on one bucket: encode and decode, timed with events over `iters`. */
static int bench_gpu_compressors(size_t bytes, int iters) {
  size_t n = bytes / sizeof(float);
  float* host = (float*)malloc(bytes);
  bench_fill_gradient(host, n, 7);
  float *a, *residual, *out;
  void *payload, *workspace;
  uint32_t* idx;
  cudaStream_t s;
  cudaEvent_t e0, e1, e2;
  a = (float*)device_alloc(bytes);
  residual = (float*)device_alloc(bytes);
  out = (float*)device_alloc(bytes);
  payload = device_alloc(bytes + 4096);
  idx = (uint32_t*)device_alloc(bytes);
  workspace = device_alloc(da_gpu_select_workspace_bytes(n));
  cudaMemcpy(a, host, bytes, cudaMemcpyHostToDevice);
  cudaStreamCreate(&s);
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventCreate(&e2);
  printf("\n# GPU compressors on one %zu MiB bucket of float32 (GB/s of uncompressed data;\n", bytes / MIB);
  printf("# encode includes the error-feedback residual, decode one payload; mean of %d)\n", iters);
  printf("%10s %9s %10s %10s\n", "algorithm", "sent/raw", "encode", "decode");
  int status = 0;
  for (int alg = DA_COMPRESS_FP16; alg <= DA_COMPRESS_INT8 && !status; alg++) {
    da_compress_config c = da_compress_config_default();
    c.algorithm = (da_compress_algorithm)alg;
    c.ratio = 0.01;
    da_cx_layout l = da_cx_payload_layout(&c, n);
    char* p = (char*)payload;
    float enc_ms = 0, dec_ms = 0;
    for (int it = -1; it < iters; it++) { /* it = -1: warm-up */
      da_status st = DA_STATUS_SUCCESS;
      cudaEventRecord(e0, s);
      switch (c.algorithm) {
        case DA_COMPRESS_FP16:
        case DA_COMPRESS_BF16:
          st = da_gpu_cast_encode(alg == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16, a, n, 0.5f, (uint16_t*)p,
                                  residual, s);
          break;
        case DA_COMPRESS_TOPK:
          st = da_gpu_topk_encode(a, n, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), residual,
                                  workspace, s);
          break;
        case DA_COMPRESS_THRESHOLD:
          st = da_gpu_threshold_encode(a, n, c.ratio, l.slots, (uint32_t*)(p + l.idx_offset),
                                       (float*)(p + l.val_offset), residual, workspace, s);
          break;
        case DA_COMPRESS_RANDOMK:
          st = da_gpu_randomk_encode(a, n, l.slots, da_cx_randomk_key(1, (uint64_t)it, 0), idx, (float*)p, residual,
                                     s);
          break;
        case DA_COMPRESS_INT8:
          st = da_gpu_int8_encode(a, n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset),
                                  residual, s);
          break;
        default: break;
      }
      cudaEventRecord(e1, s);
      if (st == DA_STATUS_SUCCESS) switch (c.algorithm) {
          case DA_COMPRESS_FP16:
          case DA_COMPRESS_BF16:
            st = da_gpu_cast_decode(alg == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16, (uint16_t*)p, n, 2.0f,
                                    out, s);
            break;
          case DA_COMPRESS_TOPK:
          case DA_COMPRESS_THRESHOLD:
            st = da_gpu_zero(out, bytes, s);
            if (!st) st = da_gpu_sparse_accumulate(out, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset),
                                                   l.slots, s);
            break;
          case DA_COMPRESS_RANDOMK:
            st = da_gpu_zero(out, bytes, s);
            if (!st) st = da_gpu_scatter(out, idx, (float*)p, l.slots, s);
            break;
          case DA_COMPRESS_INT8:
            st = da_gpu_int8_decode_sum(out, n, c.int8_chunk, p, l.bytes, l.scales_offset, l.q_offset, 1, 1.0f, s);
            break;
          default: break;
        }
      cudaEventRecord(e2, s);
      cudaEventSynchronize(e2);
      if (st != DA_STATUS_SUCCESS) {
        fprintf(stderr, "comm_bench: %s: %s\n", da_compress_algorithm_name(c.algorithm), da_last_error());
        status = 1;
        break;
      }
      float t1 = 0, t2 = 0;
      cudaEventElapsedTime(&t1, e0, e1);
      cudaEventElapsedTime(&t2, e1, e2);
      if (it >= 0) {
        enc_ms += t1;
        dec_ms += t2;
      }
    }
    if (!status)
      printf("%10s %9.4f %6.1f GB/s %6.1f GB/s\n", da_compress_algorithm_name(c.algorithm),
             (double)l.bytes / (double)bytes, 1e-6 * (double)bytes / (enc_ms / iters),
             1e-6 * (double)bytes / (dec_ms / iters));
    fflush(stdout);
  }
  cudaFree(a);
  cudaFree(residual);
  cudaFree(out);
  cudaFree(payload);
  cudaFree(idx);
  cudaFree(workspace);
  cudaStreamDestroy(s);
  free(host);
  return status;
}

int main(int argc, char** argv) {
  /* Before any NCCL call: no NVLink SHARP (it needs multicast objects the device
   * machines must not create). */
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  int cpu = 0, gpu = 0, gpus = 0, iters = 10, threads = 2;
  size_t min_mb = 1, max_mb = 1024, compress_mb = 100, bucket_mb = 25, overlap_mb = 1024, layer_mb = 32;
  double ratio = 0.01, compute_ratio = 1.0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--cpu")) {
      cpu = 1;
    } else if (!strcmp(a, "--gpu")) {
      gpu = 1;
    } else if (v && !strcmp(a, "--min-mb")) {
      min_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--max-mb")) {
      max_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--compress-mb")) {
      compress_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--bucket-mb")) {
      bucket_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--iters")) {
      iters = atoi(argv[++i]);
    } else if (v && !strcmp(a, "--threads")) {
      threads = atoi(argv[++i]);
    } else if (v && !strcmp(a, "--gpus")) {
      gpus = atoi(argv[++i]);
    } else if (v && !strcmp(a, "--ratio")) {
      ratio = atof(argv[++i]);
    } else if (v && !strcmp(a, "--overlap-mb")) {
      overlap_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--layer-mb")) {
      layer_mb = strtoull(argv[++i], NULL, 10);
    } else if (v && !strcmp(a, "--compute-ratio")) {
      compute_ratio = atof(argv[++i]);
    } else {
      fprintf(stderr, "comm_bench: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!cpu && !gpu && !gpus) cpu = gpu = 1;
  if (min_mb == 0 || max_mb < min_mb || bucket_mb == 0 || iters < 1) {
    fprintf(stderr, "comm_bench: need 1 <= --min-mb <= --max-mb, --bucket-mb >= 1, --iters >= 1\n");
    return 2;
  }
  if (gpus < 0 || gpus > 64 || !(ratio > 0 && ratio <= 1) || layer_mb == 0 || !(compute_ratio > 0)) {
    fprintf(stderr, "comm_bench: need 0 <= --gpus <= 64, 0 < --ratio <= 1, --layer-mb >= 1, --compute-ratio > 0\n");
    return 2;
  }
  /* Before any CUDA call, with several GPUs: eager module loading unless told
   * otherwise (a lazy load waits for its device to drain while holding a lock, which
   * can stall one rank's launch behind a peer's collective in one process). */
  if (gpus > 1) setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  printf("# comm_bench (da %s)\n", da_version_string());
  if (cpu) {
    bench_cpu_compressors(bucket_mb * MIB, iters < 5 ? iters : 5);
    bench_codec(64 * MIB, threads);
  }
  const bench_env device_env = {1, device_alloc, device_release, device_upload, identity, 0, 1};
  if (gpus > 0) {
    bench_multi_options o = {gpus, min_mb * MIB, max_mb * MIB, ratio, iters, overlap_mb * MIB, layer_mb * MIB,
                             compute_ratio};
    if (bench_multi_gpu(&o, &device_env)) return 1;
  }
  if (!gpu) return 0;
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS) {
    printf("\n# gpu section skipped: %s\n", da_last_error());
    return 0;
  }
  da_device_info info;
  da_device_query(0, &info);
  printf("\n# GPU 0: %s, sm_%d%d, %d SMs\n", info.name, info.sm_major, info.sm_minor, info.multiprocessors);
  if (bench_gpu_compressors(bucket_mb * MIB, 20)) return 1;
  da_comm_config cfg = da_comm_config_default();
  cfg.verify_sizes = 0; /* as nccl-tests: the raw collective */
  da_comm* comm = NULL;
  if (da_comm_create_nccl_local(&cfg, 1, NULL, &comm) != DA_STATUS_SUCCESS) {
    fprintf(stderr, "comm_bench: %s\n", da_last_error());
    return 1;
  }
  int status = bench_allreduce(comm, &device_env, min_mb * MIB, max_mb * MIB, compress_mb * MIB, iters);
  da_comm_destroy(comm);
  return status;
}
