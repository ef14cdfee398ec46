/* busy.h: a stand-in for the compute of a backward pass, for comm_bench's overlap
 * measurement. One launch keeps every SM of the current device busy with arithmetic
 * for about a chosen time (calibrated once), in waves of blocks, so that a collective
 * running beside it competes for SMs as it would with real layers. */
#ifndef DA_TOOLS_COMM_BENCH_BUSY_H
#define DA_TOOLS_COMM_BENCH_BUSY_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int grid, block;         /* waves x resident blocks of the device */
  float* sink;             /* device; written only if the arithmetic says so (never) */
  double ns_per_iteration; /* one launch over the whole grid, measured alone */
} bench_busy;

/* Sizes the grid for the current device and calibrates on `stream` (cudaStream_t).
 * 0 on success; else prints why and returns 1. */
int bench_busy_init(bench_busy* busy, void* stream);

/* Enqueues one kernel of about `ns` nanoseconds (measured alone) on `stream`. */
int bench_busy_launch(const bench_busy* busy, double ns, void* stream);

void bench_busy_free(bench_busy* busy);

#ifdef __cplusplus
}
#endif

#endif /* DA_TOOLS_COMM_BENCH_BUSY_H */
