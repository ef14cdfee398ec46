#include "tools/mempool_bench/allocators.h"

#include <stdio.h>
#include <string.h>

const char* allocator_name(alloc_kind kind) {
  static const char* const names[ALLOC_KINDS] = {"da_mempool(cudaMalloc)", "da_mempool(async)",
                                                 "cudaMalloc", "cudaMallocAsync"};
  return kind < ALLOC_KINDS ? names[kind] : "unknown";
}

/* Counters at allocator_begin, to report differences. */
static da_mempool_stats g_begin[ALLOC_KINDS];

static size_t device_used(void) {
  size_t free_bytes = 0, total = 0;
  cudaMemGetInfo(&free_bytes, &total);
  return total - free_bytes;
}

int allocator_open(allocator* a, alloc_kind kind, int device) {
  memset(a, 0, sizeof *a);
  a->kind = kind;
  a->name = allocator_name(kind);
  if (kind == ALLOC_POOL || kind == ALLOC_POOL_ASYNC) {
    da_mempool_config c = da_mempool_config_default();
    c.backend = kind == ALLOC_POOL ? DA_MEMPOOL_BACKEND_DEVICE : DA_MEMPOOL_BACKEND_DEVICE_ASYNC;
    c.device = device;
    if (da_mempool_create(&c, &a->pool) != DA_STATUS_SUCCESS) {
      fprintf(stderr, "mempool_bench: %s: %s\n", a->name, da_last_error());
      return 1;
    }
  } else if (kind == ALLOC_CUDA_ASYNC) {
    if (cudaDeviceGetDefaultMemPool(&a->mempool, device) != cudaSuccess) {
      fprintf(stderr, "mempool_bench: no default memory pool on device %d\n", device);
      return 1;
    }
    /* Keep freed memory in the pool across synchronizations: every reuse is a
     * pool hit, the best case for cudaMallocAsync. */
    uint64_t keep = UINT64_MAX;
    cudaMemPoolSetAttribute(a->mempool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  return 0;
}

void allocator_close(allocator* a) {
  if (a->pool) da_mempool_destroy(a->pool);
  if (a->mempool) {
    cudaDeviceSynchronize();
    cudaMemPoolTrimTo(a->mempool, 0);
  }
  memset(a, 0, sizeof *a);
}

static int do_alloc(allocator* a, size_t bytes, cudaStream_t stream, void** ptr) {
  switch (a->kind) {
    case ALLOC_POOL:
    case ALLOC_POOL_ASYNC:
      return da_mempool_allocate(a->pool, bytes, stream, ptr) != DA_STATUS_SUCCESS;
    case ALLOC_CUDA_MALLOC:
      return cudaMalloc(ptr, bytes) != cudaSuccess;
    case ALLOC_CUDA_ASYNC:
      return cudaMallocAsync(ptr, bytes, stream) != cudaSuccess;
    default:
      return 1;
  }
}

int allocator_alloc(allocator* a, size_t bytes, cudaStream_t stream, void** ptr) {
  int rc = do_alloc(a, bytes, stream, ptr);
  if (!rc && a->sample_reserved) {
    size_t used = device_used();
    if (used > a->used_peak) a->used_peak = used;
  }
  return rc;
}

int allocator_free(allocator* a, void* ptr, cudaStream_t stream) {
  switch (a->kind) {
    case ALLOC_POOL:
    case ALLOC_POOL_ASYNC:
      return da_mempool_free(a->pool, ptr, stream) != DA_STATUS_SUCCESS;
    case ALLOC_CUDA_MALLOC:
      a->cuda_frees++;
      return cudaFree(ptr) != cudaSuccess;
    case ALLOC_CUDA_ASYNC:
      return cudaFreeAsync(ptr, stream) != cudaSuccess;
    default:
      return 1;
  }
}

void allocator_begin(allocator* a) {
  if (a->sample_reserved) {
    cudaDeviceSynchronize();
    a->used_baseline = a->used_peak = device_used();
  }
  switch (a->kind) {
    case ALLOC_POOL:
    case ALLOC_POOL_ASYNC:
      da_mempool_reset_peak_stats(a->pool);
      da_mempool_get_stats(a->pool, &g_begin[a->kind]);
      break;
    case ALLOC_CUDA_MALLOC:
      a->cuda_frees = 0;
      break;
    case ALLOC_CUDA_ASYNC: {
      uint64_t zero = 0;
      cudaMemPoolSetAttribute(a->mempool, cudaMemPoolAttrReservedMemHigh, &zero);
      break;
    }
    default:
      break;
  }
}

size_t allocator_peak_reserved(allocator* a) {
  da_mempool_stats s;
  uint64_t high = 0;
  if (a->sample_reserved) return a->used_peak - a->used_baseline;
  switch (a->kind) {
    case ALLOC_POOL:
    case ALLOC_POOL_ASYNC:
      da_mempool_get_stats(a->pool, &s);
      return s.peak_reserved_bytes;
    case ALLOC_CUDA_ASYNC:
      cudaMemPoolGetAttribute(a->mempool, cudaMemPoolAttrReservedMemHigh, &high);
      return (size_t)high;
    default:
      return 0;
  }
}

uint64_t allocator_syncs(allocator* a) {
  da_mempool_stats s;
  switch (a->kind) {
    case ALLOC_POOL:
    case ALLOC_POOL_ASYNC:
      da_mempool_get_stats(a->pool, &s);
      return s.backend_syncs - g_begin[a->kind].backend_syncs;
    case ALLOC_CUDA_MALLOC:
      return a->cuda_frees;
    default:
      return 0;
  }
}

uint64_t allocator_backend_allocs(allocator* a) {
  da_mempool_stats s;
  if (a->kind != ALLOC_POOL && a->kind != ALLOC_POOL_ASYNC) return 0;
  da_mempool_get_stats(a->pool, &s);
  return s.backend_allocs - g_begin[a->kind].backend_allocs;
}
