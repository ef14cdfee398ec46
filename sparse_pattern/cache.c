/* The layout cache: a hash table (FNV-1a over the plan's key bytes, full key
 * compare) threaded on an LRU list, bounded in bytes, one mutex. Entries hold a
 * reference to their layout, callers hold their own, so eviction never frees a
 * layout in use. Layouts are built outside the lock. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

typedef struct entry {
  struct entry* newer; /* LRU list: head is the most recently used */
  struct entry* older;
  struct entry* chain; /* hash bucket */
  uint64_t hash;
  unsigned char* key;
  size_t key_size;
  da_pattern_layout* layout;
  size_t bytes;
} entry;

struct da_pattern_cache {
  pthread_mutex_t lock;
  entry** buckets;
  size_t num_buckets; /* a power of two */
  entry* newest;
  entry* oldest;
  da_pattern_cache_stats stats;
};

static uint64_t fnv1a(const unsigned char* bytes, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; i++) {
    h ^= bytes[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

da_status da_pattern_cache_create(size_t capacity_bytes, da_pattern_cache** cache) {
  da_error_clear();
  if (cache == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "cache must not be NULL");
  *cache = NULL;
  da_pattern_cache* c = calloc(1, sizeof *c);
  if (c != NULL) {
    c->num_buckets = 64;
    c->buckets = calloc(c->num_buckets, sizeof *c->buckets);
  }
  if (c == NULL || c->buckets == NULL) {
    free(c);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a pattern cache");
  }
  if (pthread_mutex_init(&c->lock, NULL) != 0) {
    free(c->buckets);
    free(c);
    return da_error_set(DA_STATUS_INTERNAL_ERROR, "pthread_mutex_init failed");
  }
  c->stats.capacity_bytes = capacity_bytes;
  *cache = c;
  return DA_STATUS_SUCCESS;
}

static void unlink_lru(da_pattern_cache* c, entry* e) {
  if (e->newer)
    e->newer->older = e->older;
  else
    c->newest = e->older;
  if (e->older)
    e->older->newer = e->newer;
  else
    c->oldest = e->newer;
  e->newer = e->older = NULL;
}

static void push_newest(da_pattern_cache* c, entry* e) {
  e->newer = NULL;
  e->older = c->newest;
  if (c->newest)
    c->newest->newer = e;
  else
    c->oldest = e;
  c->newest = e;
}

static entry** bucket_of(da_pattern_cache* c, uint64_t hash) {
  return &c->buckets[hash & (c->num_buckets - 1)];
}

static entry* find(da_pattern_cache* c, uint64_t hash, const unsigned char* key, size_t size) {
  for (entry* e = *bucket_of(c, hash); e != NULL; e = e->chain)
    if (e->hash == hash && e->key_size == size && memcmp(e->key, key, size) == 0) return e;
  return NULL;
}

/* Removes e from table and list; returns its layout reference to the caller. */
static da_pattern_layout* remove_entry(da_pattern_cache* c, entry* e) {
  for (entry** at = bucket_of(c, e->hash); *at != NULL; at = &(*at)->chain)
    if (*at == e) {
      *at = e->chain;
      break;
    }
  unlink_lru(c, e);
  c->stats.entries--;
  c->stats.bytes -= e->bytes;
  da_pattern_layout* layout = e->layout;
  free(e->key);
  free(e);
  return layout;
}

/* Doubles the table when it is loaded over 2 entries per bucket (best effort). */
static void maybe_grow(da_pattern_cache* c) {
  if (c->stats.entries <= 2 * c->num_buckets) return;
  size_t grown = c->num_buckets * 2;
  entry** buckets = calloc(grown, sizeof *buckets);
  if (buckets == NULL) return;
  for (size_t b = 0; b < c->num_buckets; b++)
    for (entry* e = c->buckets[b]; e != NULL;) {
      entry* next = e->chain;
      e->chain = buckets[e->hash & (grown - 1)];
      buckets[e->hash & (grown - 1)] = e;
      e = next;
    }
  free(c->buckets);
  c->buckets = buckets;
  c->num_buckets = grown;
}

da_status da_pattern_cache_get(da_pattern_cache* cache, const da_pattern_config* config,
                               da_pattern_layout** layout) {
  da_error_clear();
  if (cache == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "cache must not be NULL");
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  *layout = NULL;
  da_pattern_plan plan;
  da_status st = da_pattern_plan_init(config, &plan);
  if (st) return st;
  const size_t key_size = da_pattern_plan_key(&plan, NULL);
  unsigned char* key = malloc(key_size);
  if (key == NULL)
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a %zu-byte cache key",
                        key_size);
  da_pattern_plan_key(&plan, key);
  const uint64_t hash = fnv1a(key, key_size);

  pthread_mutex_lock(&cache->lock);
  entry* hit = find(cache, hash, key, key_size);
  if (hit != NULL) {
    unlink_lru(cache, hit);
    push_newest(cache, hit);
    cache->stats.hits++;
    *layout = da_pattern_layout_retain(hit->layout);
    pthread_mutex_unlock(&cache->lock);
    free(key);
    return DA_STATUS_SUCCESS;
  }
  cache->stats.misses++;
  pthread_mutex_unlock(&cache->lock);

  da_pattern_layout* built = NULL;
  st = da_pattern_layout_create(config, &built);
  if (st) {
    free(key);
    return st;
  }
  const size_t bytes = built->stats.bytes;
  entry* fresh = NULL;

  pthread_mutex_lock(&cache->lock);
  entry* raced = find(cache, hash, key, key_size);
  if (raced != NULL) { /* another thread stored the same key meanwhile: keep one */
    unlink_lru(cache, raced);
    push_newest(cache, raced);
    *layout = da_pattern_layout_retain(raced->layout);
    pthread_mutex_unlock(&cache->lock);
    da_pattern_layout_release(built);
    free(key);
    return DA_STATUS_SUCCESS;
  }
  if (bytes > cache->stats.capacity_bytes || (fresh = calloc(1, sizeof *fresh)) == NULL) {
    cache->stats.uncached++;
    pthread_mutex_unlock(&cache->lock);
    free(key);
    *layout = built;
    return DA_STATUS_SUCCESS;
  }
  /* Evicted layouts are released after unlocking (freeing can be slow). */
  da_pattern_layout** to_release = NULL;
  size_t n_release = 0, cap_release = 0;
  while (cache->stats.bytes + bytes > cache->stats.capacity_bytes && cache->oldest != NULL) {
    da_pattern_layout* old = remove_entry(cache, cache->oldest);
    cache->stats.evictions++;
    if (n_release == cap_release) {
      size_t grown = cap_release ? cap_release * 2 : 8;
      da_pattern_layout** list = realloc(to_release, grown * sizeof *list);
      if (list == NULL) { /* release under the lock rather than leak */
        da_pattern_layout_release(old);
        continue;
      }
      to_release = list;
      cap_release = grown;
    }
    to_release[n_release++] = old;
  }
  fresh->hash = hash;
  fresh->key = key;
  fresh->key_size = key_size;
  fresh->layout = da_pattern_layout_retain(built); /* the cache's reference */
  fresh->bytes = bytes;
  entry** bucket = bucket_of(cache, hash);
  fresh->chain = *bucket;
  *bucket = fresh;
  push_newest(cache, fresh);
  cache->stats.entries++;
  cache->stats.bytes += bytes;
  maybe_grow(cache);
  pthread_mutex_unlock(&cache->lock);
  for (size_t x = 0; x < n_release; x++) da_pattern_layout_release(to_release[x]);
  free(to_release);
  *layout = built;
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_cache_get_stats(da_pattern_cache* cache, da_pattern_cache_stats* stats) {
  da_error_clear();
  if (cache == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "cache must not be NULL");
  if (stats == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "stats must not be NULL");
  pthread_mutex_lock(&cache->lock);
  *stats = cache->stats;
  pthread_mutex_unlock(&cache->lock);
  return DA_STATUS_SUCCESS;
}

void da_pattern_cache_clear(da_pattern_cache* cache) {
  if (cache == NULL) return;
  pthread_mutex_lock(&cache->lock);
  while (cache->oldest != NULL) da_pattern_layout_release(remove_entry(cache, cache->oldest));
  pthread_mutex_unlock(&cache->lock);
}

void da_pattern_cache_destroy(da_pattern_cache* cache) {
  if (cache == NULL) return;
  da_pattern_cache_clear(cache);
  pthread_mutex_destroy(&cache->lock);
  free(cache->buckets);
  free(cache);
}
