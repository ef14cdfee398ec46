/* mempool_internal.h: entry points for the pool's own tests, fuzzer and benchmark.
 * Library-internal: not part of the C ABI. */
#ifndef DA_MEMPOOL_INTERNAL_H
#define DA_MEMPOOL_INTERNAL_H

#include "mempool/backend.h"
#include "mempool/da_mempool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* da_mempool_create with a caller-made backend (e.g. a simulated device), which the
 * pool owns from then on (also on failure). The config is checked as by
 * da_mempool_create; its backend and device fields are not used. */
da_status da_mempool_create_with_backend(const da_mempool_config* config,
                                         da_mp_backend* backend, da_mempool** pool);

/* Checks every invariant of the pool (see da_mp_pool_check in pool.h); O(n).
 * DA_STATUS_INTERNAL_ERROR with the first broken rule. */
da_status da_mempool_check(da_mempool* pool);

/* The pool's backend, e.g. to drive a simulated one. */
da_mp_backend* da_mempool_backend_of(da_mempool* pool);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_INTERNAL_H */
