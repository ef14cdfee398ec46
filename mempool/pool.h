/* pool.h: the pool engine behind da_mempool.h. Library-internal; plain C11 with no
 * CUDA, so it is tested on the CPU through the host backend or a simulated one.
 *
 * Every function takes the pool's lock; all are thread-safe except
 * da_mp_pool_destroy. The public layer (mempool.c) validates handles and
 * arguments; these functions assume a valid pool and record their own failures
 * with da_error_set. */
#ifndef DA_MEMPOOL_POOL_H
#define DA_MEMPOOL_POOL_H

#include <stddef.h>

#include "common/da_common.h"
#include "mempool/backend.h"
#include "mempool/da_mempool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct da_mp_pool da_mp_pool;

/* `config` must be valid (mempool.c checks it). Takes ownership of `backend`, also
 * on failure. */
da_status da_mp_pool_create(const da_mempool_config* config, da_mp_backend* backend,
                            da_mp_pool** pool);
/* Releases everything, live blocks too, after quiescing the backend. Returns the
 * live allocations found in *live_count and *live_bytes. */
void da_mp_pool_destroy(da_mp_pool* pool, size_t* live_count, size_t* live_bytes);

/* bytes in [1, DA_MEMPOOL_MAX_ALLOCATION_BYTES]. */
da_status da_mp_pool_allocate(da_mp_pool* pool, size_t bytes, void* stream, void** ptr);
/* ptr != NULL. */
da_status da_mp_pool_free(da_mp_pool* pool, void* ptr, void* stream);
void da_mp_pool_get_stats(da_mp_pool* pool, da_mempool_stats* stats);
da_status da_mp_pool_get_class_stats(da_mp_pool* pool, int size_class,
                                     da_mempool_class_stats* stats);
da_status da_mp_pool_trim(da_mp_pool* pool, size_t keep_bytes);
da_status da_mp_pool_reset(da_mp_pool* pool);
void da_mp_pool_reset_peak_stats(da_mp_pool* pool);
da_status da_mp_pool_release_stream(da_mp_pool* pool, void* stream);

/* Walks every segment, block, index and map and checks the pool's invariants: blocks
 * tile their segments, are aligned and never overlap; no two adjacent free blocks
 * belong to the same stream (coalescing is complete); every free block is in
 * exactly its slot's index; the ownership map holds exactly the live blocks; the
 * counters add up. DA_STATUS_INTERNAL_ERROR with the first broken rule. O(n). */
da_status da_mp_pool_check(da_mp_pool* pool);

/* The pool's backend (tests use it to reach a simulated backend's controls). */
da_mp_backend* da_mp_pool_backend(da_mp_pool* pool);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_POOL_H */
