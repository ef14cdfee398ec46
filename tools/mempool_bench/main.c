/* mempool_bench: da_mempool against cudaMalloc/cudaFree and cudaMallocAsync/
 * cudaFreeAsync, side by side in one run (docs/mempool.md, "Benchmark"):
 *   1. allocate+free pair latency, median and p99, at 4 KiB, 1 MiB, 64 MiB, 1 GiB;
 *   2. pair throughput with 1, 2, 4, 8 threads (one stream each);
 *   3. a mixed training-step workload (~10k allocations per step): peak reserved
 *      bytes over peak live bytes, time per step;
 *   4. synchronizations: the pool's backend counter, and a stream held shut by a
 *      host function while allocate/free pairs run on it (a synchronizing
 *      allocator waits there for the hold to expire).
 * Exits 2 when there is no GPU. --csv prints machine-readable rows instead. */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/da_device.h"
#include "mempool/da_mempool.h"
#include "tools/mempool_bench/allocators.h"
#include "tools/mempool_bench/workload.h"

#define KIB ((size_t)1024)
#define MIB (KIB * KIB)
#define GIB (MIB * KIB)

static int g_csv;
static int g_quick;
static const char* g_sections = "latency,throughput,mixed,sync";

static int wanted(const char* section) { return strstr(g_sections, section) != NULL; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static const char* size_name(size_t bytes, char* buf, size_t len) {
  if (bytes >= GIB && bytes % GIB == 0)
    snprintf(buf, len, "%zu GiB", bytes / GIB);
  else if (bytes >= MIB && bytes % MIB == 0)
    snprintf(buf, len, "%zu MiB", bytes / MIB);
  else
    snprintf(buf, len, "%zu KiB", bytes / KIB);
  return buf;
}

#define CHECK_CUDA(call)                                                              \
  do {                                                                                \
    cudaError_t err_ = (call);                                                        \
    if (err_ != cudaSuccess) {                                                        \
      fprintf(stderr, "mempool_bench: %s failed: %s\n", #call, cudaGetErrorString(err_)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* ---- 1. latency --------------------------------------------------------------- */

/* Times `pairs` allocate+free pairs one by one; fills median and p99 in ns. */
static int time_pairs(allocator* a, size_t bytes, cudaStream_t s, int pairs, double budget_s,
                      double* median, double* p99, int* done) {
  uint64_t* t = malloc((size_t)pairs * sizeof *t);
  if (t == NULL) return 1;
  double start = now_s();
  int n = 0;
  for (; n < pairs; n++) {
    void* p = NULL;
    uint64_t t0 = now_ns();
    if (allocator_alloc(a, bytes, s, &p) || allocator_free(a, p, s)) {
      free(t);
      return 1;
    }
    t[n] = now_ns() - t0;
    if ((n & 15) == 15 && now_s() - start > budget_s) {
      n++;
      break;
    }
  }
  qsort(t, (size_t)n, sizeof *t, cmp_u64);
  *median = (double)t[n / 2];
  *p99 = (double)t[(size_t)((double)(n - 1) * 0.99)];
  *done = n;
  free(t);
  return 0;
}

static void bench_latency(int device, cudaStream_t s) {
  const size_t sizes[] = {4 * KIB, MIB, 64 * MIB, GIB};
  const alloc_kind kinds[] = {ALLOC_POOL, ALLOC_POOL_ASYNC, ALLOC_CUDA_MALLOC, ALLOC_CUDA_ASYNC};
  /* The clock's own cost, to read the pool's sub-microsecond numbers against. */
  uint64_t overhead[1001];
  for (int i = 0; i < 1001; i++) {
    uint64_t t0 = now_ns();
    overhead[i] = now_ns() - t0;
  }
  qsort(overhead, 1001, sizeof overhead[0], cmp_u64);
  if (!g_csv) {
    printf("\n1. allocate+free pair latency (one stream, warm: the pool and cudaMallocAsync hit "
           "their caches)\n   clock_gettime overhead per sample: %llu ns (included below)\n",
           (unsigned long long)overhead[500]);
    printf("   %-8s %-22s %12s %12s %8s %6s\n", "size", "allocator", "median us", "p99 us",
           "pairs", "syncs");
  }
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    allocator a;
    if (allocator_open(&a, kinds[k], device)) continue;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      char name[32];
      size_name(sizes[i], name, sizeof name);
      int slow = kinds[k] == ALLOC_CUDA_MALLOC;
      int pairs = g_quick ? 200 : slow ? (sizes[i] >= 64 * MIB ? 300 : 3000) : 20000;
      double median = 0, p99 = 0, warm_median, warm_p99;
      int done = 0, warm_done;
      /* Warm-up: the first pair takes the segment / fills the driver's pool. */
      if (time_pairs(&a, sizes[i], s, 50, 1.0, &warm_median, &warm_p99, &warm_done)) {
        fprintf(stderr, "mempool_bench: %s could not allocate %s\n", a.name, name);
        continue;
      }
      CHECK_CUDA(cudaStreamSynchronize(s));
      allocator_begin(&a);
      if (time_pairs(&a, sizes[i], s, pairs, 1.5, &median, &p99, &done)) continue;
      uint64_t syncs = allocator_syncs(&a);
      if (g_csv)
        printf("latency,%s,%zu,%.3f,%.3f,%d,%llu\n", a.name, sizes[i], median / 1e3, p99 / 1e3,
               done, (unsigned long long)syncs);
      else
        printf("   %-8s %-22s %12.3f %12.3f %8d %6llu\n", name, a.name, median / 1e3, p99 / 1e3,
               done, (unsigned long long)syncs);
    }
    CHECK_CUDA(cudaStreamSynchronize(s));
    allocator_close(&a);
  }
}

/* ---- 2. throughput -------------------------------------------------------------- */

typedef struct {
  allocator* a;
  int index;
  double seconds;
  atomic_int* go;
  uint64_t pairs;
  int errors;
} thread_arg;

static void* throughput_thread(void* p) {
  thread_arg* t = p;
  cudaStream_t s = NULL;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    t->errors++;
    return NULL;
  }
  const size_t sizes[] = {4 * KIB, 64 * KIB, MIB, 4 * MIB};
  for (int i = 0; i < 64; i++) { /* warm this thread's stream */
    void* q = NULL;
    if (allocator_alloc(t->a, sizes[i % 4], s, &q) || allocator_free(t->a, q, s)) t->errors++;
  }
  cudaStreamSynchronize(s);
  while (!atomic_load(t->go)) {
  }
  double end = now_s() + t->seconds;
  uint64_t n = 0;
  while (!t->errors) {
    for (int i = 0; i < 64; i++, n++) {
      void* q = NULL;
      if (allocator_alloc(t->a, sizes[(n + (uint64_t)t->index) % 4], s, &q) ||
          allocator_free(t->a, q, s)) {
        t->errors++;
        break;
      }
    }
    if (now_s() > end) break;
  }
  t->pairs = n;
  cudaStreamSynchronize(s);
  if (t->a->pool) da_mempool_release_stream(t->a->pool, s);
  cudaStreamDestroy(s);
  return NULL;
}

static void bench_throughput(int device) {
  const alloc_kind kinds[] = {ALLOC_POOL, ALLOC_POOL_ASYNC, ALLOC_CUDA_MALLOC, ALLOC_CUDA_ASYNC};
  const int counts[] = {1, 2, 4, 8};
  double seconds = g_quick ? 0.1 : 0.4;
  if (!g_csv)
    printf("\n2. throughput: allocate+free pairs per second, sizes cycling 4 KiB, 64 KiB, 1 MiB, "
           "4 MiB, one stream per thread\n   %-22s %14s %14s %14s %14s\n",
           "allocator", "1 thread", "2 threads", "4 threads", "8 threads");
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    allocator a;
    if (allocator_open(&a, kinds[k], device)) continue;
    if (!g_csv) printf("   %-22s", a.name);
    for (size_t c = 0; c < 4; c++) {
      int n = counts[c];
      pthread_t threads[8];
      thread_arg args[8];
      atomic_int go = 0;
      allocator_begin(&a);
      for (int i = 0; i < n; i++) {
        args[i] = (thread_arg){&a, i, seconds, &go, 0, 0};
        pthread_create(&threads[i], NULL, throughput_thread, &args[i]);
      }
      double start = now_s();
      atomic_store(&go, 1);
      uint64_t pairs = 0;
      int errors = 0;
      for (int i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        pairs += args[i].pairs;
        errors += args[i].errors;
      }
      double rate = (double)pairs / (now_s() - start);
      if (errors) rate = 0;
      if (g_csv)
        printf("throughput,%s,%d,%.0f,%llu\n", a.name, n, rate,
               (unsigned long long)allocator_syncs(&a));
      else
        printf(" %12.2fM/s", rate / 1e6);
      fflush(stdout);
    }
    if (!g_csv) printf("   (syncs in the last run: %llu)\n", (unsigned long long)allocator_syncs(&a));
    allocator_close(&a);
  }
}

/* ---- 3. mixed workload ------------------------------------------------------------- */

static int replay(allocator* a, const trace* t, void** slots, cudaStream_t compute,
                  cudaStream_t comm, cudaEvent_t handoff) {
  for (size_t i = 0; i < t->num_ops; i++) {
    const trace_op* op = &t->ops[i];
    switch (op->kind) {
      case OP_ALLOC:
        if (allocator_alloc(a, op->bytes, compute, &slots[op->slot])) return 1;
        break;
      case OP_FREE:
        if (allocator_free(a, slots[op->slot], compute)) return 1;
        break;
      case OP_FREE_COMM: /* the all-reduce on `comm` waits for the compute stream */
        if (cudaEventRecord(handoff, compute) != cudaSuccess ||
            cudaStreamWaitEvent(comm, handoff, 0) != cudaSuccess ||
            allocator_free(a, slots[op->slot], comm))
          return 1;
        break;
    }
  }
  return 0;
}

/* Replays every step; returns 0 and the time of steps 1.. (step 0 warms caches). */
static int run_steps(allocator* a, const trace* traces, int steps, void** slots,
                     cudaStream_t compute, cudaStream_t comm, cudaEvent_t handoff,
                     double* ms_per_step, uint64_t* steady_segments) {
  double total_ms = 0;
  uint64_t after_first = 0;
  CHECK_CUDA(cudaDeviceSynchronize());
  allocator_begin(a);
  for (int i = 0; i < steps; i++) {
    if (i == 1) after_first = allocator_backend_allocs(a);
    double start = now_s();
    if (replay(a, &traces[i], slots, compute, comm, handoff)) return 1;
    if (i > 0) total_ms += (now_s() - start) * 1e3;
  }
  *steady_segments = allocator_backend_allocs(a) - after_first;
  *ms_per_step = total_ms / (steps - 1);
  CHECK_CUDA(cudaDeviceSynchronize());
  return 0;
}

static void bench_mixed(int device, cudaStream_t compute, cudaStream_t comm) {
  const alloc_kind kinds[] = {ALLOC_POOL, ALLOC_POOL_ASYNC, ALLOC_CUDA_MALLOC, ALLOC_CUDA_ASYNC};
  int steps = g_quick ? 3 : 8;
  trace traces[8];
  size_t peak_live = 0, allocations = 0;
  for (int i = 0; i < steps; i++) {
    if (trace_build(&traces[i], (uint64_t)i)) {
      fprintf(stderr, "mempool_bench: out of host memory for the workload\n");
      exit(1);
    }
    if (traces[i].peak_live_bytes > peak_live) peak_live = traces[i].peak_live_bytes;
    allocations += traces[i].allocations;
  }
  void** slots = calloc(1 << 16, sizeof(void*));
  cudaEvent_t handoff;
  CHECK_CUDA(cudaEventCreateWithFlags(&handoff, cudaEventDisableTiming));
  if (!g_csv)
    printf("\n3. mixed workload: %d training steps of a 24-layer model (sequence length varies "
           "per step), %.0f allocations per step,\n   peak live %.2f GiB. reserved = peak "
           "device memory in use (cudaMemGetInfo after every allocation, in a second run\n   "
           "of the same steps, so sampling does not slow the timed run)\n"
           "   %-22s %12s %12s %10s %14s %8s %14s\n",
           steps, (double)allocations / steps, (double)peak_live / GIB, "allocator",
           "reserved GiB", "live GiB", "reserved/live", "ms per step", "syncs",
           "new segments*");
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    allocator a;
    double ms = 0, unused_ms;
    uint64_t steady = 0, unused_steady, syncs = 0;
    size_t reserved = 0;
    int failed = allocator_open(&a, kinds[k], device);
    if (!failed) { /* timed */
      failed = run_steps(&a, traces, steps, slots, compute, comm, handoff, &ms, &steady);
      syncs = allocator_syncs(&a);
      allocator_close(&a);
    }
    if (!failed) failed = allocator_open(&a, kinds[k], device);
    if (!failed) { /* sampled */
      a.sample_reserved = 1;
      failed = run_steps(&a, traces, steps, slots, compute, comm, handoff, &unused_ms,
                         &unused_steady);
      reserved = allocator_peak_reserved(&a);
      allocator_close(&a);
    }
    if (failed) {
      fprintf(stderr, "mempool_bench: %s failed in the mixed workload\n", allocator_name(kinds[k]));
      continue;
    }
    double ratio = (double)reserved / (double)peak_live;
    if (g_csv)
      printf("mixed,%s,%zu,%zu,%.4f,%.3f,%llu,%llu\n", allocator_name(kinds[k]), reserved, peak_live,
             ratio, ms, (unsigned long long)syncs, (unsigned long long)steady);
    else
      printf("   %-22s %12.2f %12.2f %10.3f %14.2f %8llu %14llu\n", allocator_name(kinds[k]),
             (double)reserved / GIB, (double)peak_live / GIB, ratio, ms,
             (unsigned long long)syncs, (unsigned long long)steady);
  }
  if (!g_csv)
    printf("   * segments a pool took after the first step (0: it stopped growing)\n");
  cudaEventDestroy(handoff);
  free(slots);
  for (int i = 0; i < steps; i++) trace_free(&traces[i]);
}

/* ---- 4. synchronizations, observed ------------------------------------------------ */

typedef struct {
  atomic_int open;
  atomic_int reached;
  double hold_s;
} gate;

static void CUDART_CB gate_wait(void* arg) {
  gate* g = arg;
  atomic_store(&g->reached, 1);
  double end = now_s() + g->hold_s;
  while (!atomic_load(&g->open) && now_s() < end) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
}

static void bench_blocked_stream(int device, cudaStream_t s) {
  const alloc_kind kinds[] = {ALLOC_POOL, ALLOC_POOL_ASYNC, ALLOC_CUDA_MALLOC, ALLOC_CUDA_ASYNC};
  const double hold_s = 0.5;
  if (!g_csv)
    printf("\n4. synchronizations: 200 warm allocate+free pairs (4 KiB and 64 MiB) on a stream "
           "held shut for %.1f s by a host function;\n   an allocator that waits for the "
           "device cannot finish before the hold ends\n   %-22s %12s %10s %8s\n",
           hold_s, "allocator", "elapsed ms", "waited", "syncs");
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    allocator a;
    if (allocator_open(&a, kinds[k], device)) continue;
    for (int i = 0; i < 4; i++) { /* warm */
      void* p = NULL;
      if (allocator_alloc(&a, i % 2 ? 64 * MIB : 4 * KIB, s, &p) == 0) allocator_free(&a, p, s);
    }
    CHECK_CUDA(cudaStreamSynchronize(s));
    allocator_begin(&a);
    gate g;
    atomic_init(&g.open, 0);
    atomic_init(&g.reached, 0);
    g.hold_s = hold_s;
    CHECK_CUDA(cudaLaunchHostFunc(s, gate_wait, &g));
    while (!atomic_load(&g.reached)) {
    }
    double start = now_s();
    int pairs = kinds[k] == ALLOC_CUDA_MALLOC ? 20 : 200;
    for (int i = 0; i < pairs; i++) {
      void* p = NULL;
      if (allocator_alloc(&a, i % 2 ? 64 * MIB : 4 * KIB, s, &p) == 0) allocator_free(&a, p, s);
    }
    double ms = (now_s() - start) * 1e3;
    atomic_store(&g.open, 1);
    CHECK_CUDA(cudaStreamSynchronize(s));
    int waited = ms > 0.8 * hold_s * 1e3;
    if (g_csv)
      printf("blocked_stream,%s,%.3f,%d,%llu\n", a.name, ms, waited,
             (unsigned long long)allocator_syncs(&a));
    else
      printf("   %-22s %12.3f %10s %8llu%s\n", a.name, ms, waited ? "yes" : "no",
             (unsigned long long)allocator_syncs(&a), pairs < 200 ? "  (20 pairs)" : "");
    allocator_close(&a);
  }
}

static void usage(FILE* f) {
  fprintf(f,
          "usage: mempool_bench [--csv] [--quick] [--device N] [--sections LIST]\n"
          "  LIST: comma-separated of latency,throughput,mixed,sync (default: all)\n"
          "  Compares da_mempool with cudaMalloc/cudaFree and cudaMallocAsync/cudaFreeAsync:\n"
          "  pair latency, multi-threaded throughput, a mixed training-step workload and\n"
          "  synchronizations. Needs a GPU (exit 2 without one).\n");
}

int main(int argc, char** argv) {
  int device = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--csv") == 0) {
      g_csv = 1;
    } else if (strcmp(argv[i], "--quick") == 0) {
      g_quick = 1;
    } else if (strcmp(argv[i], "--sections") == 0 && i + 1 < argc) {
      g_sections = argv[++i];
    } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      device = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 1;
    }
  }
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS) {
    printf("mempool_bench: no GPU: %s\n", da_last_error());
    return 2;
  }
  da_device_info info;
  if (da_device_query(device, &info) != DA_STATUS_SUCCESS) {
    printf("mempool_bench: %s\n", da_last_error());
    return 2;
  }
  CHECK_CUDA(cudaSetDevice(device));
  CHECK_CUDA(cudaFree(NULL)); /* create the context outside every measurement */
  if (g_csv)
    printf("section,allocator,param,value1,value2,value3,value4\n");
  else
    printf("mempool_bench on %s (sm_%d%d, %.0f GiB), driver %d, runtime %d%s\n", info.name,
           info.sm_major, info.sm_minor, info.total_memory_bytes / (double)GIB,
           info.driver_version, info.runtime_version, g_quick ? ", --quick" : "");
  cudaStream_t compute, comm;
  CHECK_CUDA(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  CHECK_CUDA(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking));
  double start = now_s();
  if (wanted("latency")) bench_latency(device, compute);
  if (wanted("throughput")) bench_throughput(device);
  if (wanted("mixed")) bench_mixed(device, compute, comm);
  if (wanted("sync")) bench_blocked_stream(device, compute);
  if (!g_csv) printf("\ntotal %.1f s\n", now_s() - start);
  cudaStreamDestroy(compute);
  cudaStreamDestroy(comm);
  return 0;
}
