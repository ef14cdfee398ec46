/* comm_bench --gpus N (multi_gpu.h). Every rank thread runs the same measurements on
 * its own GPU; times are the slowest rank's (a barrier with a max, below). Overlap
 * method: the model is layers of one large weight gradient and a 4 KiB bias; the
 * backward pass launches one busy kernel per layer (busy.h; time proportional to the
 * layer's bytes, the whole pass compute_ratio x the uncompressed communication time)
 * on a compute stream and marks the layer's gradients ready on that stream, so each
 * bucket is reduced while the rest of the backward pass computes. Measured: communication alone (every
 * gradient marked at once), compute alone, and both; overlap = (compute + comm -
 * total) / min(compute, comm), 100% when the shorter one is entirely hidden. */
#include "tools/comm_bench/multi_gpu.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm/da_comm.h"
#include "tools/comm_bench/busy.h"

/* Leaves the process: a rank that fails cannot take part in its peers' next
 * collective, and they would wait for it until their timeout. */
static void die(int rank, const char* what) {
  fflush(stdout);
  if (rank >= 0)
    fprintf(stderr, "comm_bench: rank %d: %s\n", rank, what);
  else
    fprintf(stderr, "comm_bench: %s\n", what);
  fflush(stderr);
  _exit(1);
}

/* --- The ranks' barrier with a max (bench_env.max_across) ----------------------------------- */

#define BARRIER_TIMEOUT_S 300

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int size, arrived;
  unsigned long generation;
  double max, result;
} ranks_sync = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0.0, 0.0};

static double max_across_threads(double seconds) {
  pthread_mutex_lock(&ranks_sync.lock);
  unsigned long generation = ranks_sync.generation;
  if (ranks_sync.arrived == 0 || seconds > ranks_sync.max) ranks_sync.max = seconds;
  if (++ranks_sync.arrived == ranks_sync.size) {
    ranks_sync.result = ranks_sync.max;
    ranks_sync.arrived = 0;
    ranks_sync.generation++;
    pthread_cond_broadcast(&ranks_sync.cond);
  } else {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += BARRIER_TIMEOUT_S;
    while (generation == ranks_sync.generation)
      if (pthread_cond_timedwait(&ranks_sync.cond, &ranks_sync.lock, &deadline) == ETIMEDOUT)
        die(-1, "a rank did not reach the barrier within 300 s");
  }
  double result = ranks_sync.result;
  pthread_mutex_unlock(&ranks_sync.lock);
  return result;
}

/* --- Overlap with a simulated backward pass ------------------------------------------------- */

typedef struct {
  bench_model* model;
  const bench_busy* busy;
  cudaStream_t compute;
  double ns_per_byte; /* compute time per gradient byte */
  int pattern_len;    /* tensors per layer */
} backward;

/* The tensors of the layer ending at tensor `last`: [first, last]. */
static int layer_first(const backward* b, int last) { return last - last % b->pattern_len; }

static double layer_ns(const backward* b, int first, int last) {
  size_t bytes = 0;
  for (int i = first; i <= last; i++) bytes += b->model->elements[i] * sizeof(float);
  return b->ns_per_byte * (double)bytes;
}

static int compute_only(void* arg) {
  const backward* b = (const backward*)arg;
  for (int last = b->model->count - 1; last >= 0;) {
    int first = layer_first(b, last);
    if (bench_busy_launch(b->busy, layer_ns(b, first, last), b->compute)) return 1;
    last = first - 1;
  }
  return cudaStreamSynchronize(b->compute) != cudaSuccess;
}

static int overlapped(void* arg) {
  const backward* b = (const backward*)arg;
  for (int last = b->model->count - 1; last >= 0;) {
    int first = layer_first(b, last);
    if (bench_busy_launch(b->busy, layer_ns(b, first, last), b->compute)) return 1;
    for (int i = last; i >= first; i--)
      if (da_grad_mark_ready(b->model->grad, i, b->compute) != DA_STATUS_SUCCESS) return 1;
    last = first - 1;
  }
  if (da_grad_synchronize(b->model->grad) != DA_STATUS_SUCCESS) return 1;
  return cudaStreamSynchronize(b->compute) != cudaSuccess;
}

static int bench_overlap(da_comm* comm, const bench_env* env, const bench_multi_options* o) {
  const size_t pattern[] = {o->layer_bytes, 4096};
  const int root = env->rank == 0;
  cudaStream_t compute;
  bench_busy busy;
  if (cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) != cudaSuccess) return 1;
  if (bench_busy_init(&busy, compute)) return 1;
  char total_label[32], layer_label[32];
  double compute_ns = 0;
  for (int a = DA_COMPRESS_NONE; a <= DA_COMPRESS_INT8; a++) {
    da_compress_config c = da_compress_config_default();
    c.algorithm = (da_compress_algorithm)a;
    c.ratio = o->ratio;
    bench_model m;
    if (bench_model_build(comm, env, o->overlap_bytes, pattern, 2, 1, &c, &m)) return 1;
    backward b = {&m, &busy, compute, 0.0, 2};
    double comm_s = 0, compute_s = 0, total_s = 0;
    int bad = bench_model_time(&m, o->iterations, &comm_s);
    if (!bad && a == DA_COMPRESS_NONE) {
      /* Every rank must compute the same amount: the slowest rank's time sets it. */
      compute_ns = 1e9 * o->compute_ratio * comm_s;
      if (root) {
        printf("\n# overlap with a simulated backward pass on %d rank(s): %s of float32 gradients in %d layers\n",
               env->size, bench_size_label(o->overlap_bytes, total_label, sizeof total_label), (m.count + 1) / 2);
        printf("# (a %s weight + a 4 KiB bias each, views of one flat buffer), one busy kernel per layer\n",
               bench_size_label(o->layer_bytes, layer_label, sizeof layer_label));
        printf("# (all SMs, %.3f ms in all = %.2f x the uncompressed communication), gradients marked ready\n",
               1e-6 * compute_ns, o->compute_ratio);
        printf("# on the compute stream as each layer ends. overlap = (compute + comm - total) / min(both).\n");
        printf("%10s %10s %10s %10s %10s %8s %11s\n", "algorithm", "comm_ms", "compute_ms", "total_ms", "serial_ms",
               "overlap", "total/ideal");
      }
    }
    b.ns_per_byte = compute_ns / (double)o->overlap_bytes;
    if (!bad) bad = bench_repeat(env, compute_only, &b, o->iterations, &compute_s);
    if (!bad) bad = bench_repeat(env, overlapped, &b, o->iterations, &total_s);
    bench_model_free(&m);
    if (bad) {
      fprintf(stderr, "comm_bench: overlap with %s failed: %s\n", da_compress_algorithm_name(c.algorithm),
              da_last_error());
      return 1;
    }
    if (root) {
      double shorter = comm_s < compute_s ? comm_s : compute_s, longer = comm_s < compute_s ? compute_s : comm_s;
      printf("%10s %10.3f %10.3f %10.3f %10.3f %7.1f%% %11.2f\n", da_compress_algorithm_name(c.algorithm), 1e3 * comm_s,
             1e3 * compute_s, 1e3 * total_s, 1e3 * (comm_s + compute_s),
             100.0 * (comm_s + compute_s - total_s) / shorter, total_s / longer);
      fflush(stdout);
    }
  }
  bench_busy_free(&busy);
  cudaStreamDestroy(compute);
  return 0;
}

/* --- Ranks ------------------------------------------------------------------------------------ */

typedef struct {
  const bench_multi_options* options;
  const bench_env* device;
  const da_comm_nccl_id* id;
  int rank;
} rank_arg;

static void* rank_main(void* p) {
  const rank_arg* a = (const rank_arg*)p;
  const bench_multi_options* o = a->options;
  if (cudaSetDevice(a->rank) != cudaSuccess) die(a->rank, "cudaSetDevice failed");
  da_comm_config cfg = da_comm_config_default();
  cfg.verify_sizes = 0; /* as nccl-tests: the raw collective */
  cfg.timeout_ms = 120000;
  da_comm* comm = NULL;
  if (da_comm_create_nccl_rank(&cfg, a->id, a->rank, o->gpus, a->rank, &comm) != DA_STATUS_SUCCESS)
    die(a->rank, da_last_error());
  bench_env env = *a->device;
  env.max_across = max_across_threads;
  env.rank = a->rank;
  env.size = o->gpus;
  if (bench_allreduce(comm, &env, o->min_bytes, o->max_bytes, 0, o->iterations) ||
      bench_compressed_sweep(comm, &env, o->min_bytes, o->max_bytes, o->ratio, o->iterations) ||
      (o->overlap_bytes > 0 && bench_overlap(comm, &env, o)))
    die(a->rank, da_last_error());
  max_across_threads(0); /* nobody tears down while a peer still measures */
  if (da_comm_destroy(comm) != DA_STATUS_SUCCESS) die(a->rank, da_last_error());
  return NULL;
}

int bench_multi_gpu(const bench_multi_options* o, const bench_env* device) {
  int visible = 0;
  if (cudaGetDeviceCount(&visible) != cudaSuccess || visible < o->gpus) {
    fprintf(stderr, "comm_bench: --gpus %d, but %d GPU(s) visible\n", o->gpus, visible);
    return 1;
  }
  int version = 0;
  ncclGetVersion(&version);
  printf("\n# %d GPU(s), one thread each, NCCL %d (NCCL_NVLS_ENABLE=%s):\n", o->gpus, version,
         getenv("NCCL_NVLS_ENABLE") ? getenv("NCCL_NVLS_ENABLE") : "unset");
  for (int d = 0; d < o->gpus; d++) {
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
      printf("#   GPU %d: %s, %d SMs, %.0f GiB\n", d, prop.name, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (double)(MIB << 10));
  }
  fflush(stdout);
  da_comm_nccl_id id;
  if (da_comm_nccl_get_id(&id) != DA_STATUS_SUCCESS) {
    fprintf(stderr, "comm_bench: %s\n", da_last_error());
    return 1;
  }
  ranks_sync.size = o->gpus;
  pthread_t threads[64];
  rank_arg args[64];
  const double start = bench_now();
  for (int r = 0; r < o->gpus; r++) {
    args[r] = (rank_arg){o, device, &id, r};
    if (pthread_create(&threads[r], NULL, rank_main, &args[r]) != 0) die(r, "pthread_create failed");
  }
  for (int r = 0; r < o->gpus; r++) pthread_join(threads[r], NULL);
  printf("\n# multi-GPU run took %.1f s\n", bench_now() - start);
  return 0;
}
