/* ptrmap.h: an open-addressing hash map from pointer-sized keys to pointers, used
 * for the pool's ownership map (block address -> block) and its stream map.
 * Library-internal. Linear probing with backward-shift deletion (no tombstones), so
 * lookups stay short however many inserts and removes have happened. Key
 * UINTPTR_MAX is reserved (it marks empty slots). Not thread-safe. */
#ifndef DA_MEMPOOL_PTRMAP_H
#define DA_MEMPOOL_PTRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  uintptr_t* keys;
  void** values;
  size_t capacity; /* a power of two, or 0 before the first reserve */
  size_t count;
} mp_ptrmap;

void mp_ptrmap_free(mp_ptrmap* map);
/* Makes room for `count` entries in all; false if host memory ran out (map unchanged). */
bool mp_ptrmap_reserve(mp_ptrmap* map, size_t count);
/* The value of key, or NULL. */
void* mp_ptrmap_get(const mp_ptrmap* map, uintptr_t key);
/* Inserts or replaces; the caller has reserved room. */
void mp_ptrmap_put(mp_ptrmap* map, uintptr_t key, void* value);
/* Removes key and returns its value, or NULL if absent. */
void* mp_ptrmap_remove(mp_ptrmap* map, uintptr_t key);

#ifdef __cplusplus
}
#endif

#endif /* DA_MEMPOOL_PTRMAP_H */
