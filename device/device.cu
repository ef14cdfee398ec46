#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "device/da_device.h"

// Without a driver the runtime answers cudaErrorInsufficientDriver (35), not
// cudaErrorNoDevice: every error here means "no usable GPU".
extern "C" da_status da_device_count(int* count) {
  da_error_clear();
  if (count == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "count must not be NULL");
  *count = 0;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return da_error_set(DA_STATUS_NO_DEVICE, "no usable CUDA device: %s (%s)",
                        cudaGetErrorString(err), cudaGetErrorName(err));
  }
  if (n <= 0) return da_error_set(DA_STATUS_NO_DEVICE, "no CUDA device is visible");
  *count = n;
  return DA_STATUS_SUCCESS;
}

extern "C" da_status da_device_query(int device, da_device_info* info) {
  if (info == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "info must not be NULL");
  int count = 0;
  da_status status = da_device_count(&count);
  if (status != DA_STATUS_SUCCESS) return status;
  if (device < 0 || device >= count)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "device=%d is outside [0, %d)", device, count);
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess)
    return da_error_set(DA_STATUS_CUDA_ERROR, "cudaGetDeviceProperties(%d) failed: %s", device,
                        cudaGetErrorString(err));
  memset(info, 0, sizeof *info);
  info->device = device;
  snprintf(info->name, sizeof info->name, "%s", prop.name);
  info->sm_major = prop.major;
  info->sm_minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  info->total_memory_bytes = prop.totalGlobalMem;
  cudaDriverGetVersion(&info->driver_version);
  cudaRuntimeGetVersion(&info->runtime_version);
  return DA_STATUS_SUCCESS;
}
