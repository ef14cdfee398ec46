/* ceiling.h: this CPU's measured peak fp32 throughput, the yardstick the bench
 * compares the attention's effective FLOP/s with on the CPU (on the GPU it is
 * cuBLAS's dense bf16 GEMM, gpu.h, reported in the same struct). */
#ifndef DA_TOOLS_CEILING_H
#define DA_TOOLS_CEILING_H

typedef struct {
  double gflops;   /* best of the runs, all threads together */
  int threads;     /* 0 for the GPU */
  const char* isa; /* "avx512f+fma", "avx2+fma" or "sse2 (mul+add)"; on the GPU what
                      was measured */
  double seconds;  /* total time spent measuring */
  int gpu;         /* 1: the GPU's dense bf16 GEMM, 0: this CPU's fp32 FMA peak */
} cli_ceiling;

/* Runs independent multiply-add chains on every OpenMP thread for about
 * `seconds` (a short warm-up, then 3 timed windows; the best counts) with the
 * widest vector FMA the CPU has. Returns 0, or -1 when the result came out
 * non-finite (never seen; it would mean the loop was not what it claims). */
int cli_measure_ceiling(double seconds, cli_ceiling* ceiling);

#endif /* DA_TOOLS_CEILING_H */
