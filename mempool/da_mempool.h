/* da_mempool.h: one stream-ordered memory pool for device, pinned and host memory.
 *
 * A pool takes large segments from a backend (a private cudaMallocAsync pool,
 * cudaMalloc, cudaHostAlloc, or page-aligned host memory) and hands out blocks
 * carved from them: best-fit in O(log n), blocks split on allocation and coalesced
 * with free neighbours on free. A cached allocate+free pair on one stream makes no
 * CUDA call at all. Design and measurements: docs/mempool.md.
 *
 * Streams. Streams are passed as `void*`: a cudaStream_t cast to void* (NULL is the
 * legacy default stream; cudaStreamPerThread works too), so this header needs no
 * CUDA headers. For the device, device-async and pinned backends a free is
 * stream-ordered: da_mempool_free(pool, p, s) promises only that every use of p
 * was enqueued on s before the call, not that it has finished. The block is reused
 * at once by allocations on the same stream s (stream order makes that safe), and
 * by allocations on other streams only after a CUDA event recorded on s (at or
 * after the free) has completed, which the pool checks with cudaEventQuery, never
 * by waiting. No allocate or free on a warm pool synchronizes the device, a stream
 * or an event. Before destroying a stream, call da_mempool_release_stream. Memory used on several streams must be freed
 * on one of them after that stream has waited for the others (cudaStreamWaitEvent),
 * exactly as with cudaFreeAsync. The host backend ignores the stream argument:
 * a freed host block is reusable at once by any caller.
 *
 * Threads. Every function may be called from any number of threads at once on the
 * same pool, except da_mempool_destroy / da_mempool_default_destroy, which must not
 * race with other calls on that pool. Memory allocated by one thread may be freed
 * by another.
 *
 * Errors. Every fallible call returns a da_status and, on failure, leaves a
 * sentence in da_last_error(). Bad use (a double free, a pointer the pool does not
 * own, a destroyed pool, a zero or absurd size) is reported, never acted on: the
 * pool is unchanged by a failed call unless the function says otherwise. */
#ifndef DA_MEMPOOL_H
#define DA_MEMPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct da_mempool da_mempool;

typedef enum {
  DA_MEMPOOL_BACKEND_DEVICE = 0,       /* device memory from cudaMalloc. Giving a segment
                                          back (trim, limits) is a cudaFree, which
                                          synchronizes the device, so the pool keeps
                                          what it took until asked, as PyTorch's
                                          caching allocator does. */
  DA_MEMPOOL_BACKEND_DEVICE_ASYNC = 1, /* device memory from a private cudaMemPool via
                                          cudaMallocFromPoolAsync (the default).
                                          Segments are taken and given back
                                          stream-ordered, never synchronizing; before
                                          growing, the pool gives its idle segments
                                          back so the driver reuses their memory, and
                                          its reservation follows the live bytes as
                                          cudaMallocAsync's does. */
  DA_MEMPOOL_BACKEND_PINNED = 2,       /* page-locked host memory from cudaHostAlloc */
  DA_MEMPOOL_BACKEND_HOST = 3          /* pageable host memory (anonymous mappings);
                                          needs no GPU, ignores streams */
} da_mempool_backend;

#define DA_MEMPOOL_MAX_SIZE_CLASSES 32
/* Requests above this are refused as absurd (DA_STATUS_INVALID_ARGUMENT). */
#define DA_MEMPOOL_MAX_ALLOCATION_BYTES ((size_t)1 << 46) /* 64 TiB */
/* da_mempool_default's device number for the process-wide host pool. */
#define DA_MEMPOOL_HOST_DEVICE (-1)

/* Everything a pool is built from. Plain struct: start from
 * da_mempool_config_default() and change what you need. */
typedef struct {
  da_mempool_backend backend; /* default DA_MEMPOOL_BACKEND_DEVICE_ASYNC */
  int device;                 /* CUDA ordinal; default 0; ignored by the host backend */

  /* Size classes: ascending bin boundaries of the free-block index (a block of
   * size s lives in the bin of the largest class <= s; each bin is an ordered tree)
   * and the rows of the profiling counters. Default 0.1, 0.5, 1, 2, 4, 8, 16, 32,
   * 64, 128 MiB (0.1 MiB = 104857 B), as the original Python pool. */
  size_t size_classes_bytes[DA_MEMPOOL_MAX_SIZE_CLASSES];
  int num_size_classes; /* 1..DA_MEMPOOL_MAX_SIZE_CLASSES; default 10 */

  /* Rounding. Every block size and address is a multiple of alignment_bytes
   * (a power of two in [16, 4096]; default 256). Requests up to
   * small_request_max_bytes (default 1 MiB) are packed into segments of
   * small_segment_bytes (default 2 MiB) that only small requests use; larger
   * requests get segments rounded up to large_rounding_bytes (default 2 MiB), and
   * their blocks are split only when the remainder exceeds small_request_max_bytes
   * (so large segments do not fill with small fragments). */
  size_t alignment_bytes;
  size_t small_request_max_bytes;
  size_t small_segment_bytes;
  size_t large_rounding_bytes;

  /* Limits. max_reserved_bytes: hard cap on memory taken from the backend; a
   * request that would exceed it releases cached segments, retries once and
   * otherwise fails with DA_STATUS_OUT_OF_MEMORY (default SIZE_MAX: no cap).
   * max_cached_bytes: when the free-but-held bytes exceed it after a free, wholly
   * free segments are released until cached bytes <= cleanup_threshold *
   * max_cached_bytes (defaults SIZE_MAX: never, and 0.5). */
  size_t max_reserved_bytes;
  size_t max_cached_bytes;
  double cleanup_threshold; /* in [0, 1] */

  /* GPU-aware pressure handling (device backends). When the pool must grow and
   * cudaMemGetInfo reports free < pressure_free_fraction * total, it first releases
   * every cached wholly free segment, and until the next growth that finds memory
   * plentiful again it releases segments as soon as they become wholly free. Any
   * backend failure to grow releases cached segments and retries once. Default
   * 0.05; 0 disables the check. In [0, 1]. */
  double pressure_free_fraction;

  /* Optional features, all off (0) by default. */
  int track_fragmentation; /* keep stats.fragmentation_peak up to date on every call */
  int numa_node;           /* host and pinned backends: >= 0 binds segments to this
                              NUMA node (mbind); -1 (default): the OS decides */
  int profiling;           /* per-size-class counters (da_mempool_get_class_stats) and
                              time spent in backend calls */
} da_mempool_config;

/* The documented defaults above: the device-async backend on device 0. */
DA_API da_mempool_config da_mempool_config_default(void);

/* Counters of a pool. Byte counts are exact at the moment of the call. */
typedef struct {
  size_t allocated_bytes;  /* bytes of live blocks (requests rounded up) */
  size_t requested_bytes;  /* bytes of live blocks as requested */
  size_t reserved_bytes;   /* bytes of all segments held from the backend */
  size_t cached_bytes;     /* reserved_bytes - allocated_bytes */
  size_t pending_bytes;    /* part of cached_bytes usable only on the stream that freed
                              it until an event recorded there completes */
  size_t peak_allocated_bytes;
  size_t peak_reserved_bytes;
  size_t live_allocations;
  size_t segments;
  size_t largest_free_block_bytes;
  double fragmentation;      /* 1 - largest free block / cached bytes; 0 if none cached */
  double fragmentation_peak; /* highest fragmentation seen (track_fragmentation), else 0 */
  uint64_t allocations;      /* successful da_mempool_allocate calls */
  uint64_t frees;            /* successful da_mempool_free calls (NULL excluded) */
  uint64_t hits;             /* allocations served from cached memory */
  uint64_t misses;           /* allocations that had to take a new segment */
  /* What the pool asked of its backend (all backends count the same way). */
  uint64_t backend_allocs;   /* segments taken (cudaMalloc, cudaMallocFromPoolAsync, ...) */
  uint64_t backend_frees;    /* segments given back */
  uint64_t backend_syncs;    /* calls that wait for the device: cudaFree, cudaFreeHost,
                                cudaEventSynchronize, cudaStreamSynchronize,
                                cudaDeviceSynchronize; 0 on the steady-state path */
  uint64_t events_recorded;  /* cudaEventRecord calls (fences for cross-stream reuse) */
  uint64_t event_queries;    /* cudaEventQuery calls */
  uint64_t oom_retries;      /* failed growths retried after releasing cached memory */
  uint64_t pressure_cleanups;/* growths that found free device memory below the fraction */
  uint64_t backend_ns;       /* time spent in backend calls (profiling), else 0 */
} da_mempool_stats;

/* Per-size-class counters (profiling). Class i counts requests whose rounded size
 * s satisfies classes[i-1] <= s < classes[i] (class 0: s < classes[0]; class
 * num_size_classes: s >= the last class). */
typedef struct {
  size_t lower_bytes; /* inclusive lower bound of the class (0 for class 0) */
  size_t upper_bytes; /* exclusive upper bound (SIZE_MAX for the last) */
  uint64_t allocations, hits, misses, frees;
  uint64_t requested_bytes_total; /* sum of requested sizes over all allocations */
} da_mempool_class_stats;

/* Creates a pool. The config is copied. Device backends check for a GPU first:
 * DA_STATUS_NO_DEVICE without one (never a crash), DA_STATUS_INVALID_ARGUMENT for an
 * out-of-range device or a bad config field (the sentence names it),
 * DA_STATUS_NOT_SUPPORTED for NUMA placement the OS refuses. No memory is taken
 * until the first allocation. */
DA_API da_status da_mempool_create(const da_mempool_config* config, da_mempool** pool);

/* Destroys the pool and gives every segment back to its backend (device backends
 * first wait for the device, since in-flight work may still use cached blocks).
 * The handle is invalid afterwards in every case; later calls with it return
 * DA_STATUS_INVALID_ARGUMENT ("destroyed"). If allocations were still live, their
 * memory is released too and DA_STATUS_INVALID_ARGUMENT reports their count and
 * bytes. The default pools are destroyed with da_mempool_default_destroy. */
DA_API da_status da_mempool_destroy(da_mempool* pool);

/* *ptr = a block of at least `bytes` bytes, aligned to config.alignment_bytes,
 * usable in stream order on `stream` (device, pinned) or at once (host). The
 * contents are uninitialised. Errors: DA_STATUS_INVALID_ARGUMENT for bytes = 0 or
 * bytes > DA_MEMPOOL_MAX_ALLOCATION_BYTES; DA_STATUS_OUT_OF_MEMORY when the backend
 * or max_reserved_bytes refuses even after cached segments were released;
 * DA_STATUS_CUDA_ERROR for another CUDA failure. *ptr is NULL on failure. */
DA_API da_status da_mempool_allocate(da_mempool* pool, size_t bytes, void* stream, void** ptr);

/* Returns ptr (from da_mempool_allocate on this pool) to the pool, ordered on
 * `stream` (see the top of this header). NULL is a no-op. Errors
 * (DA_STATUS_INVALID_ARGUMENT, pool unchanged): ptr was already freed, lies inside
 * a block rather than at its start, or was not allocated by this pool.
 * DA_STATUS_OUT_OF_MEMORY if host memory for bookkeeping of a never-seen stream
 * cannot be had (the block then stays allocated). */
DA_API da_status da_mempool_free(da_mempool* pool, void* ptr, void* stream);

/* Copies the pool's counters into *stats. O(streams * log blocks). */
DA_API da_status da_mempool_get_stats(da_mempool* pool, da_mempool_stats* stats);

/* Counters of size class `size_class` (0..num_size_classes). DA_STATUS_NOT_SUPPORTED
 * unless the pool was created with profiling = 1. */
DA_API da_status da_mempool_get_class_stats(da_mempool* pool, int size_class,
                                            da_mempool_class_stats* stats);

/* Gives wholly free segments back to the backend until cached_bytes <= keep_bytes
 * (0: all of them). Blocks still pending on a stream are released stream-ordered by
 * the device-async backend, which never waits; the other backends wait for those
 * streams' fences first (cudaEventSynchronize; cudaFree waits for the device anyway).
 * Live blocks are never touched. */
DA_API da_status da_mempool_trim(da_mempool* pool, size_t keep_bytes);

/* Returns the pool to its just-created state: every segment released, every counter
 * zeroed. Refused with DA_STATUS_INVALID_ARGUMENT (count and bytes named, pool
 * unchanged) while allocations are live. */
DA_API da_status da_mempool_reset(da_mempool* pool);

/* Sets the peak counters (and fragmentation_peak) to their current values, e.g. to
 * measure the peak of one training step. */
DA_API da_status da_mempool_reset_peak_stats(da_mempool* pool);

/* Call before destroying `stream` (cudaStreamDestroy): records an event on it so
 * the blocks freed on it become reusable by other streams once its work is done,
 * and forgets the stream, so a new stream that gets the same handle starts afresh.
 * A no-op for the host backend or a stream the pool has not seen. */
DA_API da_status da_mempool_release_stream(da_mempool* pool, void* stream);

/* The process-wide default pool of `device` (DA_MEMPOOL_HOST_DEVICE for the host
 * backend), created with da_mempool_config_default() (the device-async backend on
 * `device`) on first use. Thread-safe. Do not pass it to da_mempool_destroy. */
DA_API da_status da_mempool_default(int device, da_mempool** pool);

/* Creates the default pool of `device` with an explicit config (config->device
 * must equal `device`; for DA_MEMPOOL_HOST_DEVICE the backend must be HOST).
 * DA_STATUS_INVALID_ARGUMENT if that default pool already exists. */
DA_API da_status da_mempool_default_create(int device, const da_mempool_config* config);

/* Destroys the default pool of `device`, if there is one (else a no-op), with the
 * semantics of da_mempool_destroy; a later da_mempool_default creates a new one.
 * Must not race with other calls on that pool. */
DA_API da_status da_mempool_default_destroy(int device);

/* "device", "device_async", "pinned", "host"; "unknown" for other values. */
DA_API const char* da_mempool_backend_name(da_mempool_backend backend);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_H */
