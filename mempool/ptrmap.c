#include "mempool/ptrmap.h"

#include <stdlib.h>

#define EMPTY_KEY UINTPTR_MAX

/* Fibonacci hashing: the top bits of key * 2^64/phi depend on every key bit, and
 * the low bits of block addresses are all zero (alignment). */
static size_t slot_of(const mp_ptrmap* map, uintptr_t key) {
  return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> (64 - __builtin_ctzll(map->capacity)));
}

void mp_ptrmap_free(mp_ptrmap* map) {
  free(map->keys);
  free(map->values);
  map->keys = NULL;
  map->values = NULL;
  map->capacity = map->count = 0;
}

bool mp_ptrmap_reserve(mp_ptrmap* map, size_t count) {
  if (count * 2 <= map->capacity) return true; /* load factor <= 1/2 */
  size_t capacity = map->capacity ? map->capacity : 16;
  while (count * 2 > capacity) capacity *= 2;
  mp_ptrmap grown = {malloc(capacity * sizeof(uintptr_t)), malloc(capacity * sizeof(void*)),
                     capacity, 0};
  if (grown.keys == NULL || grown.values == NULL) {
    mp_ptrmap_free(&grown);
    return false;
  }
  for (size_t i = 0; i < capacity; i++) grown.keys[i] = EMPTY_KEY;
  for (size_t i = 0; i < map->capacity; i++)
    if (map->keys[i] != EMPTY_KEY) mp_ptrmap_put(&grown, map->keys[i], map->values[i]);
  mp_ptrmap_free(map);
  *map = grown;
  return true;
}

void* mp_ptrmap_get(const mp_ptrmap* map, uintptr_t key) {
  if (map->capacity == 0) return NULL;
  for (size_t i = slot_of(map, key);; i = (i + 1) & (map->capacity - 1)) {
    if (map->keys[i] == key) return map->values[i];
    if (map->keys[i] == EMPTY_KEY) return NULL;
  }
}

void mp_ptrmap_put(mp_ptrmap* map, uintptr_t key, void* value) {
  for (size_t i = slot_of(map, key);; i = (i + 1) & (map->capacity - 1)) {
    if (map->keys[i] == key) {
      map->values[i] = value;
      return;
    }
    if (map->keys[i] == EMPTY_KEY) {
      map->keys[i] = key;
      map->values[i] = value;
      map->count++;
      return;
    }
  }
}

void* mp_ptrmap_remove(mp_ptrmap* map, uintptr_t key) {
  if (map->capacity == 0) return NULL;
  size_t mask = map->capacity - 1;
  size_t hole = slot_of(map, key);
  while (map->keys[hole] != key) {
    if (map->keys[hole] == EMPTY_KEY) return NULL;
    hole = (hole + 1) & mask;
  }
  void* value = map->values[hole];
  /* Backward shift: move later entries of the probe run into the hole when their
   * home slot does not lie cyclically in (hole, i]. */
  for (size_t i = (hole + 1) & mask; map->keys[i] != EMPTY_KEY; i = (i + 1) & mask) {
    size_t home = slot_of(map, map->keys[i]);
    bool home_in_range = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
    if (!home_in_range) {
      map->keys[hole] = map->keys[i];
      map->values[hole] = map->values[i];
      hole = i;
    }
  }
  map->keys[hole] = EMPTY_KEY;
  map->count--;
  return value;
}
