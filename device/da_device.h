/* da_device.h: finding the GPU the library would run on. The one place that asks
 * the CUDA runtime about devices, so every component reports "no GPU" the same way. */
#ifndef DA_DEVICE_H
#define DA_DEVICE_H

#include <stddef.h>

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int device;             /* CUDA ordinal */
  char name[256];         /* e.g. "NVIDIA H100 80GB HBM3" */
  int sm_major, sm_minor; /* compute capability */
  int multiprocessors;
  size_t total_memory_bytes;
  int driver_version;  /* e.g. 13000 */
  int runtime_version; /* e.g. 13000 */
} da_device_info;

/* Number of usable CUDA devices in *count. A machine without a driver or without
 * devices gives DA_STATUS_NO_DEVICE and *count = 0 (never an abort), with the
 * runtime's reason in da_last_error(). Thread-safe. */
DA_API da_status da_device_count(int* count);

/* Properties of device `device` (0 <= device < count). DA_STATUS_NO_DEVICE when
 * there is no GPU, DA_STATUS_INVALID_ARGUMENT for an out-of-range ordinal. */
DA_API da_status da_device_query(int device, da_device_info* info);

#ifdef __cplusplus
}
#endif

#endif /* DA_DEVICE_H */
