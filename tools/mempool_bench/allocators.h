/* allocators.h: the allocators mempool_bench compares, behind one interface, so
 * every measurement runs the same code against each of them. */
#ifndef DA_TOOLS_MEMPOOL_BENCH_ALLOCATORS_H
#define DA_TOOLS_MEMPOOL_BENCH_ALLOCATORS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "mempool/da_mempool.h"

typedef enum {
  ALLOC_POOL = 0,        /* da_mempool, device backend (cudaMalloc segments) */
  ALLOC_POOL_ASYNC = 1,  /* da_mempool, device-async backend */
  ALLOC_CUDA_MALLOC = 2, /* cudaMalloc / cudaFree */
  ALLOC_CUDA_ASYNC = 3,  /* cudaMallocAsync / cudaFreeAsync, default pool kept warm */
  ALLOC_KINDS = 4
} alloc_kind;

typedef struct {
  alloc_kind kind;
  const char* name;
  da_mempool* pool;     /* pool kinds */
  cudaMemPool_t mempool; /* cudaMallocAsync: the device's default pool */
  /* With `sample_reserved` set, the device's used memory (cudaMemGetInfo) is sampled
   * after every allocation: the one measure of reservation that means the same for
   * every allocator (a cudaMemPool's mapped memory, cudaMalloc's granularity). */
  int sample_reserved;
  size_t used_baseline, used_peak;
  uint64_t cuda_frees; /* cudaMalloc: every cudaFree synchronizes the device */
} allocator;

/* "da_mempool", "da_mempool(async)", "cudaMalloc", "cudaMallocAsync". */
const char* allocator_name(alloc_kind kind);

/* Sets up an allocator of `kind` on `device`; 0 on success, else prints why. */
int allocator_open(allocator* a, alloc_kind kind, int device);
void allocator_close(allocator* a);

/* One allocation / free on `stream`; 0 on success. */
int allocator_alloc(allocator* a, size_t bytes, cudaStream_t stream, void** ptr);
int allocator_free(allocator* a, void* ptr, cudaStream_t stream);

/* Starts a measurement: forgets peaks and counters. */
void allocator_begin(allocator* a);
/* Peak device memory used since allocator_begin, if sampling; else the
 * allocator's own count (pools: segments held; cudaMallocAsync: the pool's
 * reserved high-water mark; cudaMalloc: 0). */
size_t allocator_peak_reserved(allocator* a);
/* Synchronizing calls since allocator_begin (the pool's backend counter; cudaFree
 * calls for cudaMalloc; 0 for cudaMallocAsync, which makes none). */
uint64_t allocator_syncs(allocator* a);
/* Segments taken from the device since allocator_begin (pools), else 0. */
uint64_t allocator_backend_allocs(allocator* a);

#endif /* DA_TOOLS_MEMPOOL_BENCH_ALLOCATORS_H */
