/* comm_bench's measurements (see bench.h for the method). */
#include "tools/comm_bench/bench.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/compress.h"

double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void bench_fill_gradient(float* x, size_t n, unsigned long long seed) {
  uint64_t s = seed;
  for (size_t i = 0; i < n; i++) {
    double u = ((double)(mix(&s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double v = (double)(mix(&s) >> 11) * (1.0 / 9007199254740992.0);
    double w = (double)(mix(&s) >> 11) * (1.0 / 9007199254740992.0);
    x[i] = (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v) * pow(10.0, -3.0 * w));
  }
}

const char* bench_size_label(size_t bytes, char* buf, size_t len) {
  if (bytes >= (MIB << 10) && bytes % (MIB << 10) == 0)
    snprintf(buf, len, "%zu GiB", bytes / (MIB << 10));
  else
    snprintf(buf, len, "%zu MiB", bytes / MIB);
  return buf;
}

/* --- Collectives --------------------------------------------------------------------- */

/* Gradient-like data for n floats: one 8 MiB tile of bench_fill_gradient, repeated
 * (drawing a GiB of normals element by element would outlast the measurements). */
static void fill_tiled(float* x, size_t n, unsigned long long seed) {
  const size_t tile = 2 * MIB; /* elements */
  size_t done = n < tile ? n : tile;
  bench_fill_gradient(x, done, seed);
  while (done < n) {
    size_t chunk = done < n - done ? done : n - done;
    memcpy(x + done, x, chunk * sizeof(float));
    done += chunk;
  }
}

/* The default model: layer-like tensors (a 4 MiB weight, a 4 KiB bias, a 1 MiB
 * weight, a 4 KiB norm), repeated. */
static const size_t layer_pattern[] = {4 * MIB, 4096, MIB, 4096};

void bench_model_free(bench_model* m) {
  if (m->grad) da_grad_destroy(m->grad);
  if (m->flat) {
    m->env->release(m->flat);
  } else {
    for (int i = 0; i < m->count; i++)
      if (m->ptrs[i]) m->env->release(m->ptrs[i]);
  }
  free(m->ptrs);
  free(m->elements);
  memset(m, 0, sizeof *m);
}

int bench_model_build(da_comm* comm, const bench_env* env, size_t bytes, const size_t* pattern,
                      int pattern_len, int flat, const da_compress_config* compress, bench_model* m) {
  memset(m, 0, sizeof *m);
  m->env = env;
  size_t left = bytes, cap = 16;
  m->ptrs = (void**)calloc(cap, sizeof(void*));
  m->elements = (size_t*)calloc(cap, sizeof(size_t));
  for (int i = 0; left > 0; i++) {
    size_t b = pattern[i % pattern_len] < left ? pattern[i % pattern_len] : left;
    if ((size_t)m->count == cap) {
      cap *= 2;
      m->ptrs = (void**)realloc(m->ptrs, cap * sizeof(void*));
      m->elements = (size_t*)realloc(m->elements, cap * sizeof(size_t));
    }
    m->elements[m->count++] = b / sizeof(float);
    left -= b;
  }
  size_t total = 0;
  for (int i = 0; i < m->count; i++) total += m->elements[i];
  float* host = (float*)malloc(total * sizeof(float));
  fill_tiled(host, total, 1234 + (unsigned long long)env->rank);
  if (flat) m->flat = env->alloc(total * sizeof(float));
  size_t offset = 0;
  for (int i = 0; i < m->count; i++) {
    m->ptrs[i] = flat ? (void*)((float*)m->flat + offset) : env->alloc(m->elements[i] * sizeof(float));
    env->upload(m->ptrs[i], host + offset, m->elements[i] * sizeof(float));
    offset += m->elements[i];
  }
  free(host);
  da_grad_config cfg = da_grad_config_default();
  cfg.compress = *compress;
  if (da_grad_create(comm, &cfg, &m->grad) != DA_STATUS_SUCCESS) goto fail;
  for (int i = 0; i < m->count; i++) {
    char name[32];
    snprintf(name, sizeof name, "g%d", i);
    if (da_grad_register(m->grad, name, m->ptrs[i], m->elements[i], DA_DTYPE_F32, NULL) != DA_STATUS_SUCCESS)
      goto fail;
  }
  if (da_grad_finalize(m->grad) != DA_STATUS_SUCCESS) goto fail;
  return 0;
fail:
  fprintf(stderr, "comm_bench: gradient model of %zu bytes: %s\n", bytes, da_last_error());
  bench_model_free(m);
  return 1;
}

static int build_model(da_comm* comm, const bench_env* env, size_t bytes, int flat,
                       const da_compress_config* compress, bench_model* m) {
  return bench_model_build(comm, env, bytes, layer_pattern, 4, flat, compress, m);
}

int bench_model_step(bench_model* m) {
  for (int i = m->count - 1; i >= 0; i--)
    if (da_grad_mark_ready(m->grad, i, NULL) != DA_STATUS_SUCCESS) return 1;
  return da_grad_synchronize(m->grad) != DA_STATUS_SUCCESS;
}

/* The fastest repeat counts, which keeps a busy machine's noise out. */
int bench_repeat(const bench_env* env, int (*fn)(void* arg), void* arg, int iterations, double* seconds) {
  if (fn(arg)) return 1; /* warm-up: first use of the pool, NCCL's connections */
  *seconds = 1e30;
  for (int r = 0; r < BENCH_REPEATS; r++) {
    double start = bench_now();
    for (int it = 0; it < iterations; it++)
      if (fn(arg)) return 1;
    double t = env->max_across((bench_now() - start) / iterations);
    *seconds = t < *seconds ? t : *seconds;
  }
  return 0;
}

static int step_fn(void* m) { return bench_model_step((bench_model*)m); }

int bench_model_time(bench_model* m, int iterations, double* seconds) {
  return bench_repeat(m->env, step_fn, m, iterations, seconds);
}

static int time_plain(da_comm* comm, const bench_env* env, void* buf, size_t n, int iterations,
                      double* seconds) {
  if (da_comm_allreduce(comm, buf, buf, n, DA_DTYPE_F32, DA_COMM_AVG) != DA_STATUS_SUCCESS ||
      da_comm_synchronize(comm) != DA_STATUS_SUCCESS)
    return 1;
  *seconds = 1e30;
  for (int r = 0; r < BENCH_REPEATS; r++) {
    double start = bench_now();
    for (int it = 0; it < iterations; it++)
      if (da_comm_allreduce(comm, buf, buf, n, DA_DTYPE_F32, DA_COMM_AVG) != DA_STATUS_SUCCESS) return 1;
    if (da_comm_synchronize(comm) != DA_STATUS_SUCCESS) return 1;
    double t = env->max_across((bench_now() - start) / iterations);
    *seconds = t < *seconds ? t : *seconds;
  }
  return 0;
}

int bench_iterations_for(size_t bytes, int iterations) {
  size_t budget = (size_t)iterations * 16 * MIB; /* about the same bytes for every size */
  size_t it = budget / bytes;
  if (it < 2) it = 2;
  if (it > (size_t)iterations * 4) it = (size_t)iterations * 4;
  return (int)it;
}

int bench_allreduce(da_comm* comm, const bench_env* env, size_t min_bytes, size_t max_bytes,
                    size_t compressor_bytes, int iterations) {
  const double bus = bench_bus_factor(env->size);
  const int root = env->rank == 0;
  da_compress_config none = da_compress_config_default();
  char label[32];
  if (root) {
    printf("\n# all-reduce of float32, average over %d rank(s): plain (one call) vs bucketed\n", env->size);
    printf("# (25 MiB buckets, DDP order; 'packed' = separate tensors copied into buckets,\n");
    printf("#  'in place' = views of one flat buffer). algbw/busbw in GB/s, overhead vs plain.\n");
    printf("%10s %6s | %9s %7s %7s | %9s %7s %7s %7s | %9s %7s %7s %7s\n", "size", "iters", "plain_ms",
           "algbw", "busbw", "packed_ms", "algbw", "busbw", "ovh", "inplace_ms", "algbw", "busbw", "ovh");
  }
  for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    int iters = bench_iterations_for(bytes, iterations);
    double plain = 0, packed = 0, inplace = 0;
    void* buf = env->alloc(bytes);
    float* host = (float*)malloc(bytes);
    fill_tiled(host, bytes / 4, 99);
    env->upload(buf, host, bytes);
    free(host);
    int bad = time_plain(comm, env, buf, bytes / 4, iters, &plain);
    env->release(buf);
    bench_model m;
    if (!bad) bad = build_model(comm, env, bytes, 0, &none, &m);
    if (!bad) {
      bad = bench_model_time(&m, iters, &packed);
      bench_model_free(&m);
    }
    if (!bad) bad = build_model(comm, env, bytes, 1, &none, &m);
    if (!bad) {
      bad = bench_model_time(&m, iters, &inplace);
      bench_model_free(&m);
    }
    if (bad) {
      fprintf(stderr, "comm_bench: all-reduce of %zu bytes failed: %s\n", bytes, da_last_error());
      return 1;
    }
    if (root) {
      double g = 1e-9 * (double)bytes;
      printf("%10s %6d | %9.3f %7.2f %7.2f | %9.3f %7.2f %7.2f %6.1f%% | %9.3f %7.2f %7.2f %6.1f%%\n",
             bench_size_label(bytes, label, sizeof label), iters, 1e3 * plain, g / plain, g / plain * bus,
             1e3 * packed, g / packed, g / packed * bus, 100.0 * (packed / plain - 1.0), 1e3 * inplace,
             g / inplace, g / inplace * bus, 100.0 * (inplace / plain - 1.0));
      fflush(stdout);
    }
  }
  if (compressor_bytes == 0) return 0;
  if (root) {
    printf("\n# bucketed all-reduce with compression, %s of separate float32 gradients, ratio 0.01\n",
           bench_size_label(compressor_bytes, label, sizeof label));
    printf("# (error feedback on). effective = uncompressed bytes / time.\n");
    printf("%10s %9s %9s %12s %8s\n", "algorithm", "sent/raw", "time_ms", "effective", "vs none");
  }
  double none_time = 0;
  for (int a = DA_COMPRESS_NONE; a <= DA_COMPRESS_INT8; a++) {
    da_compress_config c = da_compress_config_default();
    c.algorithm = (da_compress_algorithm)a;
    c.ratio = 0.01;
    bench_model m;
    double t = 0;
    int iters = bench_iterations_for(compressor_bytes, iterations);
    if (build_model(comm, env, compressor_bytes, 0, &c, &m)) return 1;
    int bad = bench_model_time(&m, iters, &t);
    da_grad_stats stats;
    da_grad_get_stats(m.grad, &stats);
    bench_model_free(&m);
    if (bad) {
      fprintf(stderr, "comm_bench: %s failed: %s\n", da_compress_algorithm_name(c.algorithm), da_last_error());
      return 1;
    }
    if (a == DA_COMPRESS_NONE) none_time = t;
    if (root) {
      printf("%10s %9.4f %9.3f %9.2f GB/s %7.2fx\n", da_compress_algorithm_name(c.algorithm),
             (double)stats.bytes_sent / (double)stats.bytes_reduced, 1e3 * t,
             1e-9 * (double)compressor_bytes / t, none_time / t);
      fflush(stdout);
    }
  }
  return 0;
}

double bench_bus_factor(int size) { return size > 1 ? 2.0 * (size - 1) / size : 0.0; }

#define SWEEP_MAX_SIZES 16
#define SWEEP_ALGORITHMS (DA_COMPRESS_INT8 + 1)

int bench_compressed_sweep(da_comm* comm, const bench_env* env, size_t min_bytes, size_t max_bytes, double ratio,
                           int iterations) {
  const double bus = bench_bus_factor(env->size);
  const int root = env->rank == 0;
  double seconds[SWEEP_MAX_SIZES][SWEEP_ALGORITHMS];
  double sent_over_raw[SWEEP_ALGORITHMS] = {0};
  size_t sizes[SWEEP_MAX_SIZES];
  int num_sizes = 0;
  for (size_t bytes = min_bytes; bytes <= max_bytes && num_sizes < SWEEP_MAX_SIZES; bytes *= 4) sizes[num_sizes++] = bytes;
  char label[32];
  if (root) {
    printf("\n# bucketed all-reduce per compressor on %d rank(s): 25 MiB buckets of views of one flat\n", env->size);
    printf("# float32 buffer (reduced in place), ratio %g for top-k/random-k/threshold, error feedback on.\n", ratio);
    printf("# busbw in GB/s of UNCOMPRESSED bytes (algbw x 2(n-1)/n): the link speed an uncompressed\n");
    printf("# all-reduce would need to match it.\n");
    printf("%10s %6s |", "size", "iters");
    for (int a = 0; a < SWEEP_ALGORITHMS; a++) printf(" %9s", da_compress_algorithm_name((da_compress_algorithm)a));
    printf("\n");
  }
  for (int s = 0; s < num_sizes; s++) {
    const int iters = bench_iterations_for(sizes[s], iterations);
    for (int a = 0; a < SWEEP_ALGORITHMS; a++) {
      da_compress_config c = da_compress_config_default();
      c.algorithm = (da_compress_algorithm)a;
      c.ratio = ratio;
      bench_model m;
      if (build_model(comm, env, sizes[s], 1, &c, &m)) return 1;
      int bad = bench_model_time(&m, iters, &seconds[s][a]);
      da_grad_stats stats;
      da_grad_get_stats(m.grad, &stats);
      bench_model_free(&m);
      if (bad) {
        fprintf(stderr, "comm_bench: %s on %zu bytes failed: %s\n", da_compress_algorithm_name(c.algorithm), sizes[s],
                da_last_error());
        return 1;
      }
      sent_over_raw[a] = (double)stats.bytes_sent / (double)stats.bytes_reduced;
    }
    if (root) {
      printf("%10s %6d |", bench_size_label(sizes[s], label, sizeof label), iters);
      for (int a = 0; a < SWEEP_ALGORITHMS; a++) printf(" %9.2f", 1e-9 * (double)sizes[s] / seconds[s][a] * bus);
      printf("\n");
      fflush(stdout);
    }
  }
  if (root) {
    printf("%10s %6s |", "sent/raw", "");
    for (int a = 0; a < SWEEP_ALGORITHMS; a++) printf(" %9.4f", sent_over_raw[a]);
    printf("\n# the same runs, milliseconds per step (slowest rank, fastest of %d repeats):\n", BENCH_REPEATS);
    for (int s = 0; s < num_sizes; s++) {
      printf("%10s %6s |", bench_size_label(sizes[s], label, sizeof label), "");
      for (int a = 0; a < SWEEP_ALGORITHMS; a++) printf(" %9.3f", 1e3 * seconds[s][a]);
      printf("\n");
    }
    fflush(stdout);
  }
  return 0;
}

/* --- Host compressors ---------------------------------------------------------------------- */

static double gbs(size_t bytes, double seconds) { return 1e-9 * (double)bytes / seconds; }

void bench_cpu_compressors(size_t bytes, int iterations) {
  size_t n = bytes / sizeof(float);
  float* a = (float*)malloc(n * sizeof(float));
  float* residual = (float*)malloc(n * sizeof(float));
  float* out = (float*)malloc(n * sizeof(float));
  bench_fill_gradient(a, n, 7);
  char label[32];
  printf("\n# host compressors on one %s bucket of float32 (single thread; GB/s of\n",
         bench_size_label(bytes, label, sizeof label));
  printf("# uncompressed data; encode includes the error-feedback residual, decode one payload)\n");
  printf("%10s %9s %10s %10s\n", "algorithm", "sent/raw", "encode", "decode");
  for (int alg = DA_COMPRESS_FP16; alg <= DA_COMPRESS_INT8; alg++) {
    da_compress_config c = da_compress_config_default();
    c.algorithm = (da_compress_algorithm)alg;
    c.ratio = 0.01;
    da_cx_layout l = da_cx_payload_layout(&c, n);
    char* p = (char*)malloc(l.bytes + 64);
    uint32_t* idx = (uint32_t*)malloc((l.slots ? l.slots : 1) * sizeof(uint32_t));
    double encode = 1e30, decode = 1e30;
    for (int it = 0; it < iterations; it++) {
      double t0 = bench_now();
      switch (c.algorithm) {
        case DA_COMPRESS_FP16:
        case DA_COMPRESS_BF16:
          da_cx_cast_encode(alg == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16, a, n, 0.5f, (uint16_t*)p, residual);
          break;
        case DA_COMPRESS_TOPK:
          da_cx_topk_encode(a, n, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), residual);
          break;
        case DA_COMPRESS_THRESHOLD:
          da_cx_threshold_encode(a, n, c.ratio, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset),
                                 residual, NULL);
          break;
        case DA_COMPRESS_RANDOMK:
          da_cx_randomk_encode(a, n, l.slots, da_cx_randomk_key(1, (uint64_t)it, 0), idx, (float*)p, residual);
          break;
        case DA_COMPRESS_INT8:
          da_cx_int8_encode(a, n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset), residual);
          break;
        default: break;
      }
      double t1 = bench_now();
      switch (c.algorithm) {
        case DA_COMPRESS_FP16:
        case DA_COMPRESS_BF16:
          da_cx_cast_decode(alg == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16, (uint16_t*)p, n, 2.0f, out);
          break;
        case DA_COMPRESS_TOPK:
        case DA_COMPRESS_THRESHOLD:
          memset(out, 0, n * sizeof(float));
          da_cx_sparse_accumulate(out, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), l.slots);
          break;
        case DA_COMPRESS_RANDOMK:
          memset(out, 0, n * sizeof(float));
          da_cx_scatter(out, idx, (float*)p, l.slots);
          break;
        case DA_COMPRESS_INT8:
          memset(out, 0, n * sizeof(float));
          da_cx_int8_accumulate(out, n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset));
          break;
        default: break;
      }
      double t2 = bench_now();
      encode = fmin(encode, t1 - t0);
      decode = fmin(decode, t2 - t1);
    }
    printf("%10s %9.4f %6.2f GB/s %6.2f GB/s\n", da_compress_algorithm_name(c.algorithm),
           (double)l.bytes / (double)bytes, gbs(bytes, encode), gbs(bytes, decode));
    fflush(stdout);
    free(p);
    free(idx);
  }
  free(a);
  free(residual);
  free(out);
}

/* --- Codec ----------------------------------------------------------------------------------- */

static void codec_row(const char* what, const void* data, size_t bytes, size_t element_bytes, int level,
                      int threads) {
  da_codec_config cfg = da_codec_config_default();
  cfg.element_bytes = element_bytes;
  cfg.level = level;
  cfg.threads = threads;
  da_codec* codec = NULL;
  if (da_codec_create(&cfg, &codec) != DA_STATUS_SUCCESS) {
    printf("%-22s codec: %s\n", what, da_last_error());
    return;
  }
  size_t cap = da_codec_compress_bound(bytes), frame = 0, back = 0;
  unsigned char* dst = (unsigned char*)malloc(cap);
  unsigned char* out = (unsigned char*)malloc(bytes);
  double c = 1e30, d = 1e30;
  int exact = 1;
  for (int it = 0; it < 3; it++) {
    double t0 = bench_now();
    da_codec_compress(codec, data, bytes, dst, cap, &frame);
    double t1 = bench_now();
    da_codec_decompress(codec, dst, frame, out, bytes, &back);
    double t2 = bench_now();
    c = fmin(c, t1 - t0);
    d = fmin(d, t2 - t1);
    exact &= back == bytes && memcmp(out, data, bytes) == 0;
  }
  printf("%-22s %5d %7d %8.3fx %8.3f %10.3f %s\n", what, level, threads, (double)bytes / (double)frame,
         gbs(bytes, c), gbs(bytes, d), exact ? "bit-exact" : "MISMATCH");
  fflush(stdout);
  free(dst);
  free(out);
  da_codec_destroy(codec);
}

void bench_codec(size_t bytes, int threads) {
  size_t n = bytes / sizeof(float);
  float* f = (float*)malloc(n * sizeof(float));
  uint16_t* h = (uint16_t*)malloc(n * sizeof(uint16_t));
  bench_fill_gradient(f, n, 11);
  for (size_t i = 0; i < n; i++) h[i] = da_cx_f32_to_bf16(f[i]);
  char label[32];
  printf("\n# zstd codec on %s of gradient-like float32 (and its bfloat16 cast):\n",
         bench_size_label(bytes, label, sizeof label));
  printf("# ratio = raw / frame; GB/s of raw data; decompression is single-threaded in zstd\n");
  printf("%-22s %5s %7s %9s %8s %10s\n", "input", "level", "threads", "ratio", "comp", "decomp");
  for (int level = 1; level <= 3; level += 2) {
    codec_row("fp32 raw", f, n * 4, 1, level, 0);
    codec_row("fp32 shuffled", f, n * 4, 4, level, 0);
    codec_row("bf16 raw", h, n * 2, 1, level, 0);
    codec_row("bf16 shuffled", h, n * 2, 2, level, 0);
    if (threads > 0) {
      codec_row("fp32 shuffled", f, n * 4, 4, level, threads);
      codec_row("bf16 shuffled", h, n * 2, 2, level, threads);
    }
  }
  free(f);
  free(h);
}
