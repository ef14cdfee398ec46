/* sysinfo.h: what the `da` command reports about the machine and the process:
 * wall clock, peak memory, CPU model, OpenMP threads, and the GPU probe. */
#ifndef DA_TOOLS_SYSINFO_H
#define DA_TOOLS_SYSINFO_H

#include <stddef.h>

#include "device/da_device.h"

/* Monotonic wall clock in milliseconds (CLOCK_MONOTONIC). */
double cli_now_ms(void);

/* Peak resident set size of this process so far, MiB (getrusage ru_maxrss). */
double cli_peak_rss_mib(void);

/* "model name" of the first processor in /proc/cpuinfo, else "unknown CPU". */
void cli_cpu_model(char* name, size_t size);

/* Sets OpenMP's thread count when threads > 0 and returns the number of
 * threads a parallel region (the library's included) will use. */
int cli_set_threads(int threads);

/* 1 and *info filled when a CUDA device is usable, 0 when there is none (the
 * runtime's reason is then in da_last_error()). */
int cli_probe_gpu(da_device_info* info);

#endif /* DA_TOOLS_SYSINFO_H */
