#include "tools/da/ceiling.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "tools/da/sysinfo.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* 12 independent accumulator chains: FMA latency (4-5 cycles) times FMA ports
 * (2) needs >= 10 in flight; 12 accumulators + 2 constants fit in the 16
 * architectural vector registers of AVX2 (and the 32 of AVX-512). Each step is
 * acc = acc * a + b with |a| < 1, so values stay finite and bounded. */
#define CHAINS 12
#define FLOPS_PER_STEP(lanes) (2.0 * CHAINS * (lanes))

/* One kernel body for every ISA: VEC the register type, SET1/MADD/ADD the
 * operations. (target_clones would compile one source body, hence one vector
 * width, for every ISA; the widest register differs per ISA, so the body is
 * instantiated per ISA and picked with __builtin_cpu_supports.) Distinct
 * starting values stop the compiler from merging identical chains; noinline
 * keeps each variant a real loop; the caller folds the returned sum into a
 * checksum it tests, so nothing is dead. */
#define DEFINE_KERNEL(NAME, TARGET_ATTR, VEC, SET1, MADD, ADD, LANES)                \
  TARGET_ATTR __attribute__((noinline)) static float NAME(int64_t steps, float seed) { \
    const VEC a = SET1(0.999999f), b = SET1(1e-6f);                                    \
    VEC c0 = SET1(seed), c1 = SET1(seed + 0.01f), c2 = SET1(seed + 0.02f);             \
    VEC c3 = SET1(seed + 0.03f), c4 = SET1(seed + 0.04f), c5 = SET1(seed + 0.05f);     \
    VEC c6 = SET1(seed + 0.06f), c7 = SET1(seed + 0.07f), c8 = SET1(seed + 0.08f);     \
    VEC c9 = SET1(seed + 0.09f), c10 = SET1(seed + 0.10f), c11 = SET1(seed + 0.11f);   \
    for (int64_t s = 0; s < steps; ++s) {                                              \
      c0 = MADD(c0, a, b); c1 = MADD(c1, a, b); c2 = MADD(c2, a, b);                   \
      c3 = MADD(c3, a, b); c4 = MADD(c4, a, b); c5 = MADD(c5, a, b);                   \
      c6 = MADD(c6, a, b); c7 = MADD(c7, a, b); c8 = MADD(c8, a, b);                   \
      c9 = MADD(c9, a, b); c10 = MADD(c10, a, b); c11 = MADD(c11, a, b);               \
    }                                                                                  \
    VEC sum = ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7)));       \
    sum = ADD(sum, ADD(ADD(c8, c9), ADD(c10, c11)));                                   \
    float lanes[LANES];                                                                \
    __builtin_memcpy(lanes, &sum, sizeof lanes);                                       \
    float total = 0.0f;                                                                \
    for (int i = 0; i < (LANES); ++i) total += lanes[i];                               \
    return total;                                                                      \
  }

#if HAVE_X86
#define SSE_MADD(c, a, b) _mm_add_ps(_mm_mul_ps(c, a), b)
DEFINE_KERNEL(kernel_avx512, __attribute__((target("avx512f,fma"))), __m512, _mm512_set1_ps,
              _mm512_fmadd_ps, _mm512_add_ps, 16)
DEFINE_KERNEL(kernel_avx2, __attribute__((target("avx2,fma"))), __m256, _mm256_set1_ps,
              _mm256_fmadd_ps, _mm256_add_ps, 8)
DEFINE_KERNEL(kernel_sse2, , __m128, _mm_set1_ps, SSE_MADD, _mm_add_ps, 4)
#else
#define SCALAR_SET1(x) (x)
#define SCALAR_MADD(c, a, b) ((c) * (a) + (b))
#define SCALAR_ADD(x, y) ((x) + (y))
DEFINE_KERNEL(kernel_scalar, , float, SCALAR_SET1, SCALAR_MADD, SCALAR_ADD, 1)
#endif

typedef float (*kernel_fn)(int64_t steps, float seed);

static void pick_kernel(kernel_fn* kernel, int* lanes, const char** isa) {
#if HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    *kernel = kernel_avx512;
    *lanes = 16;
    *isa = "avx512f+fma";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *kernel = kernel_avx2;
    *lanes = 8;
    *isa = "avx2+fma";
  } else {
    *kernel = kernel_sse2;
    *lanes = 4;
    *isa = "sse2 (mul+add)";
  }
#else
  *kernel = kernel_scalar;
  *lanes = 1;
  *isa = "scalar (mul+add)";
#endif
}

/* Steps per call between clock checks: ~0.2 ms of AVX-512 work, ~1 ms of SSE. */
#define CHUNK_STEPS (1 << 16)

/* All threads run chunks until a shared deadline `window_ms` after they have all
 * started; returns the FLOP/s of the window. A fixed time window rather than a
 * fixed amount of work per thread: when the OS stacks two threads on one core
 * for a while, the others keep working instead of waiting at the end, so the
 * result is what the threads together sustain, not what the slowest one did. */
static double run_window(kernel_fn kernel, int lanes, double window_ms, double* checksum) {
  double start_ms = 0.0, sum = 0.0;
  int64_t chunks = 0;
#pragma omp parallel reduction(+ : sum, chunks)
  {
#pragma omp single
    start_ms = cli_now_ms(); /* after every thread arrived (implicit barrier) */
    const float seed = 1.0f + 0.001f * (float)omp_get_thread_num();
    do {
      sum += kernel(CHUNK_STEPS, seed);
      ++chunks;
    } while (cli_now_ms() - start_ms < window_ms);
  }
  const double elapsed_ms = cli_now_ms() - start_ms;
  *checksum += sum;
  return FLOPS_PER_STEP(lanes) * (double)CHUNK_STEPS * (double)chunks / (elapsed_ms * 1e-3);
}

int cli_measure_ceiling(double seconds, cli_ceiling* ceiling) {
  kernel_fn kernel;
  int lanes;
  pick_kernel(&kernel, &lanes, &ceiling->isa);
  ceiling->threads = omp_get_max_threads();
  ceiling->gpu = 0;
  double checksum = 0.0;
  const double begin_ms = cli_now_ms();
  /* A short untimed window first: threads start, clocks settle. */
  const double warmup_ms = seconds * 1e3 / 8.0;
  run_window(kernel, lanes, warmup_ms, &checksum);
  double best = 0.0;
  for (int run = 0; run < 3; ++run) {
    double flops_per_s = run_window(kernel, lanes, (seconds * 1e3 - warmup_ms) / 3.0, &checksum);
    if (flops_per_s > best) best = flops_per_s;
  }
  ceiling->gflops = best * 1e-9;
  ceiling->seconds = (cli_now_ms() - begin_ms) * 1e-3;
  return isfinite(checksum) ? 0 : -1;
}
