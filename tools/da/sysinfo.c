#include "tools/da/sysinfo.h"

#include <omp.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

double cli_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

double cli_peak_rss_mib(void) {
  struct rusage usage;
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0.0;
  return (double)usage.ru_maxrss / 1024.0; /* Linux reports KiB */
}

void cli_cpu_model(char* name, size_t size) {
  snprintf(name, size, "unknown CPU");
  FILE* file = fopen("/proc/cpuinfo", "r");
  if (file == NULL) return;
  char line[512];
  while (fgets(line, sizeof line, file) != NULL) {
    if (strncmp(line, "model name", 10) != 0) continue;
    const char* colon = strchr(line, ':');
    if (colon == NULL) continue;
    const char* value = colon + 1;
    while (*value == ' ' || *value == '\t') ++value;
    size_t length = strcspn(value, "\n");
    while (length > 0 && value[length - 1] == ' ') --length;
    if (length > 0) snprintf(name, size, "%.*s", (int)length, value);
    break;
  }
  fclose(file);
}

int cli_set_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
  return omp_get_max_threads();
}

int cli_probe_gpu(da_device_info* info) {
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS || count < 1) return 0;
  return da_device_query(0, info) == DA_STATUS_SUCCESS;
}
