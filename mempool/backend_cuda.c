/* Device and pinned memory from the CUDA runtime: cudaMalloc, a private cudaMemPool
 * (cudaMallocFromPoolAsync), cudaHostAlloc. Plain C against cuda_runtime_api.h.
 *
 * Every call that waits for the device is counted in counters.syncs: cudaFree and
 * cudaFreeHost (they synchronize implicitly), cudaEventSynchronize,
 * cudaStreamSynchronize and cudaDeviceSynchronize. The pool calls none of them on
 * its steady-state path, which is what the counter lets tests and the benchmark
 * check. */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "device/da_device.h"
#include "mempool/backend.h"

typedef struct {
  da_mp_backend base;
  da_mempool_backend kind;
  int device;
  int numa_node;          /* pinned only; -1: cudaHostAlloc decides */
  cudaMemPool_t mempool;  /* device-async only */
  char name[96];
} cuda_backend;

static cuda_backend* cast(da_mp_backend* be) { return (cuda_backend*)be; }

/* Allocation and event creation act on the current device: switch for the call and
 * switch back, so the pool never changes the caller's device. */
static int enter(const cuda_backend* be) {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (previous != be->device) cudaSetDevice(be->device);
  return previous;
}

static void leave(const cuda_backend* be, int previous) {
  if (previous >= 0 && previous != be->device) cudaSetDevice(previous);
}

static da_status cuda_failure(const cuda_backend* be, cudaError_t err, const char* what,
                              size_t bytes) {
  (void)cudaGetLastError(); /* clear a non-sticky error so later calls start clean */
  da_status st = err == cudaErrorMemoryAllocation ? DA_STATUS_OUT_OF_MEMORY : DA_STATUS_CUDA_ERROR;
  if (bytes)
    return da_error_set(st, "%s: %s(%zu bytes) failed: %s (%s)", be->name, what, bytes,
                        cudaGetErrorString(err), cudaGetErrorName(err));
  return da_error_set(st, "%s: %s failed: %s (%s)", be->name, what, cudaGetErrorString(err),
                      cudaGetErrorName(err));
}

static da_status cuda_segment_alloc(da_mp_backend* base, size_t bytes, size_t alignment,
                                    void* stream, void** ptr) {
  (void)alignment; /* the pool checks the segment's alignment */
  cuda_backend* be = cast(base);
  cudaError_t err = cudaSuccess;
  const char* what = "";
  int previous = enter(be);
  switch (be->kind) {
    case DA_MEMPOOL_BACKEND_DEVICE:
      what = "cudaMalloc";
      err = cudaMalloc(ptr, bytes);
      break;
    case DA_MEMPOOL_BACKEND_DEVICE_ASYNC:
      what = "cudaMallocFromPoolAsync";
      err = cudaMallocFromPoolAsync(ptr, bytes, be->mempool, (cudaStream_t)stream);
      break;
    case DA_MEMPOOL_BACKEND_PINNED:
      if (be->numa_node >= 0) {
        /* Bind the pages to the node first, then pin them (pinning touches them). */
        da_status st = da_mp_host_map(bytes, be->numa_node, ptr);
        if (st != DA_STATUS_SUCCESS) {
          leave(be, previous);
          return st;
        }
        what = "cudaHostRegister";
        err = cudaHostRegister(*ptr, bytes, cudaHostRegisterPortable);
        if (err != cudaSuccess) da_mp_host_unmap(*ptr, bytes);
      } else {
        what = "cudaHostAlloc";
        err = cudaHostAlloc(ptr, bytes, cudaHostAllocPortable);
      }
      break;
    case DA_MEMPOOL_BACKEND_HOST:
      break;
  }
  leave(be, previous);
  if (err != cudaSuccess) {
    *ptr = NULL;
    return cuda_failure(be, err, what, bytes);
  }
  base->counters.allocs++;
  return DA_STATUS_SUCCESS;
}

static da_status cuda_segment_free(da_mp_backend* base, void* ptr, size_t bytes, void* stream,
                                   int pending) {
  cuda_backend* be = cast(base);
  cudaError_t err = cudaSuccess;
  const char* what = "";
  int previous = enter(be);
  switch (be->kind) {
    case DA_MEMPOOL_BACKEND_DEVICE:
      what = "cudaFree";
      err = cudaFree(ptr); /* waits for the device: safe even if `pending` */
      base->counters.syncs++;
      break;
    case DA_MEMPOOL_BACKEND_DEVICE_ASYNC:
      /* Pending memory goes after its stream's work; idle memory on the stream the
       * pool names (the one about to reuse it, or NULL: the legacy stream). */
      what = "cudaFreeAsync";
      err = cudaFreeAsync(ptr, (cudaStream_t)stream);
      break;
    case DA_MEMPOOL_BACKEND_PINNED:
      if (pending) { /* the pool never asks this of a pinned pool; be safe anyway */
        cudaStreamSynchronize((cudaStream_t)stream);
        base->counters.syncs++;
      }
      if (be->numa_node >= 0) {
        what = "cudaHostUnregister";
        err = cudaHostUnregister(ptr);
        da_mp_host_unmap(ptr, bytes);
      } else {
        what = "cudaFreeHost";
        err = cudaFreeHost(ptr);
      }
      base->counters.syncs++;
      break;
    case DA_MEMPOOL_BACKEND_HOST:
      break;
  }
  leave(be, previous);
  base->counters.frees++;
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(be, err, what, 0);
}

static da_status cuda_event_create(da_mp_backend* base, void** event) {
  cuda_backend* be = cast(base);
  int previous = enter(be);
  cudaEvent_t e = NULL;
  cudaError_t err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  leave(be, previous);
  if (err != cudaSuccess) return cuda_failure(be, err, "cudaEventCreateWithFlags", 0);
  *event = e;
  return DA_STATUS_SUCCESS;
}

static da_status cuda_event_record(da_mp_backend* base, void* event, void* stream) {
  cudaError_t err = cudaEventRecord((cudaEvent_t)event, (cudaStream_t)stream);
  base->counters.events_recorded++;
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(cast(base), err, "cudaEventRecord", 0);
}

static int cuda_event_query(da_mp_backend* base, void* event) {
  cudaError_t err = cudaEventQuery((cudaEvent_t)event);
  base->counters.event_queries++;
  if (err == cudaSuccess) return 1;
  if (err == cudaErrorNotReady) return 0;
  (void)cudaGetLastError();
  return -1;
}

static da_status cuda_event_synchronize(da_mp_backend* base, void* event) {
  cudaError_t err = cudaEventSynchronize((cudaEvent_t)event);
  base->counters.syncs++;
  return err == cudaSuccess ? DA_STATUS_SUCCESS
                            : cuda_failure(cast(base), err, "cudaEventSynchronize", 0);
}

static void cuda_event_destroy(da_mp_backend* base, void* event) {
  (void)base;
  cudaEventDestroy((cudaEvent_t)event);
}

static da_status cuda_mem_info(da_mp_backend* base, size_t* free_bytes, size_t* total_bytes) {
  cuda_backend* be = cast(base);
  int previous = enter(be);
  cudaError_t err = cudaMemGetInfo(free_bytes, total_bytes);
  leave(be, previous);
  return err == cudaSuccess ? DA_STATUS_SUCCESS : cuda_failure(be, err, "cudaMemGetInfo", 0);
}

static void cuda_quiesce(da_mp_backend* base) {
  cuda_backend* be = cast(base);
  int previous = enter(be);
  if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
  leave(be, previous);
  base->counters.syncs++;
}

static void cuda_destroy(da_mp_backend* base) {
  cuda_backend* be = cast(base);
  /* Outstanding stream-ordered frees finish first; the driver defers the release. */
  if (be->mempool) cudaMemPoolDestroy(be->mempool);
  free(be);
}

static da_status create_async_pool(cuda_backend* be) {
  int supported = 0;
  cudaError_t err = cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, be->device);
  if (err != cudaSuccess) return cuda_failure(be, err, "cudaDeviceGetAttribute", 0);
  if (!supported)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "device %d does not support cudaMallocAsync memory pools", be->device);
  struct cudaMemPoolProps props;
  memset(&props, 0, sizeof props);
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = be->device;
  err = cudaMemPoolCreate(&be->mempool, &props);
  if (err != cudaSuccess) {
    be->mempool = NULL;
    return cuda_failure(be, err, "cudaMemPoolCreate", 0);
  }
  /* Release threshold 0 (the default): what the pool gives back returns to the
   * device at the next synchronization; the pool does its own caching. The pool
   * gives segments back on the stream that reuses them, so the driver never needs to
   * make one stream wait for another to reuse memory: forbid that, rather than
   * risk hidden dependencies between streams. */
  int no = 0;
  cudaMemPoolSetAttribute(be->mempool, cudaMemPoolReuseAllowInternalDependencies, &no);
  return DA_STATUS_SUCCESS;
}

da_status da_mp_backend_cuda_create(const da_mempool_config* config, da_mp_backend** out) {
  int count = 0;
  da_status st = da_device_count(&count); /* NO_DEVICE with the runtime's reason */
  if (st != DA_STATUS_SUCCESS) return st;
  if (config->device >= count)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.device=%d is outside [0, %d)",
                        config->device, count);
  if (config->numa_node >= 0) {
    st = da_mp_numa_check(config->numa_node);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  cuda_backend* be = calloc(1, sizeof *be);
  if (be == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the backend");
  be->kind = config->backend;
  be->device = config->device;
  be->numa_node = config->numa_node;
  switch (be->kind) {
    case DA_MEMPOOL_BACKEND_DEVICE:
      snprintf(be->name, sizeof be->name, "device %d (cudaMalloc)", be->device);
      break;
    case DA_MEMPOOL_BACKEND_DEVICE_ASYNC:
      snprintf(be->name, sizeof be->name, "device %d (cudaMallocAsync pool)", be->device);
      break;
    default:
      snprintf(be->name, sizeof be->name, "pinned host memory (device %d)", be->device);
      break;
  }
  if (be->kind == DA_MEMPOOL_BACKEND_DEVICE_ASYNC) {
    st = create_async_pool(be);
    if (st != DA_STATUS_SUCCESS) {
      free(be);
      return st;
    }
  }
  da_mp_backend* base = &be->base;
  base->name = be->name;
  base->stream_ordered = 1;
  base->segments_stream_ordered = be->kind == DA_MEMPOOL_BACKEND_DEVICE_ASYNC;
  base->segment_alloc = cuda_segment_alloc;
  base->segment_free = cuda_segment_free;
  base->event_create = cuda_event_create;
  base->event_record = cuda_event_record;
  base->event_query = cuda_event_query;
  base->event_synchronize = cuda_event_synchronize;
  base->event_destroy = cuda_event_destroy;
  base->mem_info = be->kind == DA_MEMPOOL_BACKEND_PINNED ? NULL : cuda_mem_info;
  base->quiesce = cuda_quiesce;
  base->destroy = cuda_destroy;
  *out = base;
  return DA_STATUS_SUCCESS;
}
