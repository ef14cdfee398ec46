/* backend.h: where a pool's segments and events come from. Library-internal.
 *
 * The pool core (pool.c) is plain C and knows nothing of CUDA; it calls these
 * hooks, always with its lock held, so a backend needs no locking of its own. A
 * backend fills `counters` itself: they are the pool's proof that the steady state
 * makes no backend call and waits for nothing. */
#ifndef DA_MEMPOOL_BACKEND_H
#define DA_MEMPOOL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/da_common.h"
#include "mempool/da_mempool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  uint64_t allocs;          /* segments taken */
  uint64_t frees;           /* segments given back */
  uint64_t syncs;           /* calls that waited for the device or a stream/event */
  uint64_t events_recorded;
  uint64_t event_queries;
} da_mp_backend_counters;

typedef struct da_mp_backend da_mp_backend;
struct da_mp_backend {
  const char* name; /* for sentences: "device 0 (cudaMalloc)", "host", ... */

  /* Frees are stream-ordered: a freed block may still be in use by work enqueued on
   * the freeing stream, so it crosses to another stream only after a fence. When 0
   * (host), the pool ignores streams and the event hooks are never called. */
  int stream_ordered;
  /* Fresh segments are valid only in the allocating stream's order
   * (cudaMallocFromPoolAsync): their unused remainder starts out pending there. */
  int segments_stream_ordered;

  /* Takes a segment of `bytes` (a multiple of the pool's alignment) aligned to at
   * least `alignment`, usable on `stream`. DA_STATUS_OUT_OF_MEMORY when the memory
   * is not there (the pool then releases cache and retries once). */
  da_status (*segment_alloc)(da_mp_backend* be, size_t bytes, size_t alignment, void* stream,
                             void** ptr);
  /* Gives a segment back. `pending`: work enqueued on `stream` may still use it, so
   * the backend must order the release after that work (cudaFreeAsync on `stream`);
   * the pool asks this only of segments_stream_ordered backends. Otherwise the memory
   * is idle and `stream` names the stream about to reuse it (NULL if none), which a
   * stream-ordered backend releases it on. */
  da_status (*segment_free)(da_mp_backend* be, void* ptr, size_t bytes, void* stream,
                            int pending);

  /* Fences (only when stream_ordered). query: 1 complete, 0 not yet, <0 error (the
   * pool then treats the fence as never completing and lets a later synchronize
   * report the error). */
  da_status (*event_create)(da_mp_backend* be, void** event);
  da_status (*event_record)(da_mp_backend* be, void* event, void* stream);
  int (*event_query)(da_mp_backend* be, void* event);
  da_status (*event_synchronize)(da_mp_backend* be, void* event);
  void (*event_destroy)(da_mp_backend* be, void* event);

  /* Free and total bytes of the memory this backend draws from, for pressure
   * handling; NULL when unknown (host, pinned). */
  da_status (*mem_info)(da_mp_backend* be, size_t* free_bytes, size_t* total_bytes);

  /* Waits until no enqueued work can touch the pool's memory (destroy only). */
  void (*quiesce)(da_mp_backend* be);
  /* Releases the backend itself (after every segment was freed). */
  void (*destroy)(da_mp_backend* be);

  da_mp_backend_counters counters;
};

/* Page-aligned host memory (backend_host.c), optionally bound to a NUMA node. */
da_status da_mp_backend_host_create(const da_mempool_config* config, da_mp_backend** backend);

/* cudaMalloc, cudaMallocFromPoolAsync and cudaHostAlloc (backend_cuda.c):
 * DA_STATUS_NO_DEVICE without a GPU, DA_STATUS_INVALID_ARGUMENT for an
 * out-of-range device. */
da_status da_mp_backend_cuda_create(const da_mempool_config* config, da_mp_backend** backend);

/* NUMA placement shared by the host and pinned backends (backend_host.c):
 * validates that `node` exists and that the OS accepts the binding. */
da_status da_mp_numa_check(int node);
/* Maps `bytes` of anonymous host memory, page-aligned; node >= 0 binds it to that
 * NUMA node (pages are placed when first touched). */
da_status da_mp_host_map(size_t bytes, int node, void** ptr);
void da_mp_host_unmap(void* ptr, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_BACKEND_H */
