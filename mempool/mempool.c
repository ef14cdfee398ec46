/* The public face of the pool: handles, config validation, argument checks and the
 * process-wide default pools. The engine is pool.c. */
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "mempool/backend.h"
#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"
#include "mempool/pool.h"

#define MEMPOOL_LIVE 0x4c4f4f504d454d31ull /* "1MEMPOOL" */
#define MEMPOOL_DEAD 0x444145444d454d30ull /* "0MEMDEAD" */
#define NOT_DEFAULT INT_MIN
#define MAX_DEFAULT_DEVICES 64

/* A handle outlives its pool: destroy empties it and marks it dead, so a call
 * through a stale handle reads the mark and says so instead of touching freed
 * memory. Dead handles (a few dozen bytes each) stay reachable from `graveyard`. */
struct da_mempool {
  uint64_t magic;
  da_mp_pool* core;
  int default_device;
  da_mempool* next_dead;
};

static pthread_mutex_t graveyard_lock = PTHREAD_MUTEX_INITIALIZER;
static da_mempool* graveyard;

static pthread_mutex_t defaults_lock = PTHREAD_MUTEX_INITIALIZER;
static da_mempool* defaults[MAX_DEFAULT_DEVICES + 1]; /* [device + 1] */

#define MIB ((size_t)1 << 20)

da_mempool_config da_mempool_config_default(void) {
  da_mempool_config c;
  memset(&c, 0, sizeof c);
  c.backend = DA_MEMPOOL_BACKEND_DEVICE_ASYNC;
  c.device = 0;
  static const size_t classes[] = {MIB / 10, MIB / 2, MIB,      2 * MIB,  4 * MIB,
                                   8 * MIB,  16 * MIB, 32 * MIB, 64 * MIB, 128 * MIB};
  c.num_size_classes = (int)(sizeof classes / sizeof classes[0]);
  memcpy(c.size_classes_bytes, classes, sizeof classes);
  c.alignment_bytes = 256;
  c.small_request_max_bytes = MIB;
  c.small_segment_bytes = 2 * MIB;
  c.large_rounding_bytes = 2 * MIB;
  c.max_reserved_bytes = SIZE_MAX;
  c.max_cached_bytes = SIZE_MAX;
  c.cleanup_threshold = 0.5;
  c.pressure_free_fraction = 0.05;
  c.track_fragmentation = 0;
  c.numa_node = -1;
  c.profiling = 0;
  return c;
}

const char* da_mempool_backend_name(da_mempool_backend backend) {
  switch (backend) {
    case DA_MEMPOOL_BACKEND_DEVICE: return "device";
    case DA_MEMPOOL_BACKEND_DEVICE_ASYNC: return "device_async";
    case DA_MEMPOOL_BACKEND_PINNED: return "pinned";
    case DA_MEMPOOL_BACKEND_HOST: return "host";
  }
  return "unknown";
}

static bool is_power_of_two(size_t x) { return x && (x & (x - 1)) == 0; }

static bool is_fraction(double x) { return x >= 0.0 && x <= 1.0; } /* false for NaN */

static da_status check_config(const da_mempool_config* c) {
  if (c->backend < DA_MEMPOOL_BACKEND_DEVICE || c->backend > DA_MEMPOOL_BACKEND_HOST)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.backend=%d is not a da_mempool_backend", (int)c->backend);
  if (c->num_size_classes < 1 || c->num_size_classes > DA_MEMPOOL_MAX_SIZE_CLASSES)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.num_size_classes=%d is outside [1, %d]",
                        c->num_size_classes, DA_MEMPOOL_MAX_SIZE_CLASSES);
  for (int i = 0; i < c->num_size_classes; i++) {
    if (c->size_classes_bytes[i] == 0)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.size_classes_bytes[%d] is 0", i);
    if (i > 0 && c->size_classes_bytes[i] <= c->size_classes_bytes[i - 1])
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "config.size_classes_bytes[%d]=%zu is not above [%d]=%zu: classes "
                          "must ascend",
                          i, c->size_classes_bytes[i], i - 1, c->size_classes_bytes[i - 1]);
  }
  size_t a = c->alignment_bytes;
  if (!is_power_of_two(a) || a < 16 || a > 4096)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.alignment_bytes=%zu must be a power of two in [16, 4096]", a);
  if (c->small_segment_bytes == 0 || c->small_segment_bytes % a)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.small_segment_bytes=%zu must be a positive multiple of "
                        "alignment_bytes=%zu",
                        c->small_segment_bytes, a);
  if (c->large_rounding_bytes == 0 || c->large_rounding_bytes % a)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.large_rounding_bytes=%zu must be a positive multiple of "
                        "alignment_bytes=%zu",
                        c->large_rounding_bytes, a);
  if (c->small_request_max_bytes > c->small_segment_bytes)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.small_request_max_bytes=%zu exceeds small_segment_bytes=%zu: "
                        "small requests must fit a small segment",
                        c->small_request_max_bytes, c->small_segment_bytes);
  if (c->max_reserved_bytes == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.max_reserved_bytes is 0: nothing could ever be allocated "
                        "(SIZE_MAX means no cap)");
  if (!is_fraction(c->cleanup_threshold))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.cleanup_threshold=%g is outside [0, 1]",
                        c->cleanup_threshold);
  if (!is_fraction(c->pressure_free_fraction))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.pressure_free_fraction=%g is outside [0, 1]",
                        c->pressure_free_fraction);
  if (c->track_fragmentation != 0 && c->track_fragmentation != 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.track_fragmentation=%d is not 0 or 1",
                        c->track_fragmentation);
  if (c->profiling != 0 && c->profiling != 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.profiling=%d is not 0 or 1",
                        c->profiling);
  if (c->numa_node < -1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.numa_node=%d: use a node number, or -1 for no placement",
                        c->numa_node);
  if (c->numa_node >= 0 && c->backend != DA_MEMPOOL_BACKEND_HOST &&
      c->backend != DA_MEMPOOL_BACKEND_PINNED)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config.numa_node=%d applies to host memory; the %s backend allocates "
                        "device memory",
                        c->numa_node, da_mempool_backend_name(c->backend));
  if (c->backend != DA_MEMPOOL_BACKEND_HOST && c->device < 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config.device=%d is negative", c->device);
  return DA_STATUS_SUCCESS;
}

static da_status wrap(da_mp_pool* core, int default_device, da_mempool** pool) {
  da_mempool* h = malloc(sizeof *h);
  if (h == NULL) {
    size_t n, bytes;
    da_mp_pool_destroy(core, &n, &bytes);
    return da_error_set(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the pool handle");
  }
  h->magic = MEMPOOL_LIVE;
  h->core = core;
  h->default_device = default_device;
  h->next_dead = NULL;
  *pool = h;
  return DA_STATUS_SUCCESS;
}

da_status da_mempool_create_with_backend(const da_mempool_config* config,
                                         da_mp_backend* backend, da_mempool** pool) {
  da_status st = check_config(config);
  if (st != DA_STATUS_SUCCESS) {
    backend->destroy(backend);
    return st;
  }
  da_mp_pool* core = NULL;
  st = da_mp_pool_create(config, backend, &core);
  if (st != DA_STATUS_SUCCESS) return st;
  return wrap(core, NOT_DEFAULT, pool);
}

static da_status create(const da_mempool_config* config, int default_device, da_mempool** pool) {
  da_status st = check_config(config);
  if (st != DA_STATUS_SUCCESS) return st;
  da_mp_backend* backend = NULL;
  st = config->backend == DA_MEMPOOL_BACKEND_HOST ? da_mp_backend_host_create(config, &backend)
                                                  : da_mp_backend_cuda_create(config, &backend);
  if (st != DA_STATUS_SUCCESS) return st;
  da_mp_pool* core = NULL;
  st = da_mp_pool_create(config, backend, &core);
  if (st != DA_STATUS_SUCCESS) return st;
  return wrap(core, default_device, pool);
}

da_status da_mempool_create(const da_mempool_config* config, da_mempool** pool) {
  da_error_clear();
  if (pool == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "pool must not be NULL");
  *pool = NULL;
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  return create(config, NOT_DEFAULT, pool);
}

/* The handle check every entry point starts with. */
static da_status check_pool(const da_mempool* pool, const char* op) {
  if (pool == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: pool is NULL", op);
  if (pool->magic == MEMPOOL_DEAD)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: the pool was destroyed", op);
  if (pool->magic != MEMPOOL_LIVE)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: %p is not a da_mempool handle", op,
                        (const void*)pool);
  return DA_STATUS_SUCCESS;
}

static da_status destroy_handle(da_mempool* pool, const char* op) {
  size_t live = 0, live_bytes = 0;
  da_mp_pool_destroy(pool->core, &live, &live_bytes);
  pool->magic = MEMPOOL_DEAD;
  pool->core = NULL;
  pthread_mutex_lock(&graveyard_lock);
  pool->next_dead = graveyard;
  graveyard = pool;
  pthread_mutex_unlock(&graveyard_lock);
  if (live > 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s: %zu allocations (%zu bytes) were still live; their memory was "
                        "released and those pointers are now invalid",
                        op, live, live_bytes);
  return DA_STATUS_SUCCESS;
}

da_status da_mempool_destroy(da_mempool* pool) {
  da_error_clear();
  da_status st = check_pool(pool, "destroy");
  if (st != DA_STATUS_SUCCESS) return st;
  if (pool->default_device != NOT_DEFAULT)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "destroy: this is the default pool of device %d; tear it down with "
                        "da_mempool_default_destroy",
                        pool->default_device);
  return destroy_handle(pool, "destroy");
}

da_status da_mempool_allocate(da_mempool* pool, size_t bytes, void* stream, void** ptr) {
  da_error_clear();
  if (ptr == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "allocate: ptr must not be NULL");
  *ptr = NULL;
  da_status st = check_pool(pool, "allocate");
  if (st != DA_STATUS_SUCCESS) return st;
  if (bytes == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "allocate: bytes=0; ask for at least one byte");
  if (bytes > DA_MEMPOOL_MAX_ALLOCATION_BYTES)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "allocate: bytes=%zu is absurd: above DA_MEMPOOL_MAX_ALLOCATION_BYTES "
                        "(64 TiB); a negative size cast to size_t?",
                        bytes);
  return da_mp_pool_allocate(pool->core, bytes, stream, ptr);
}

da_status da_mempool_free(da_mempool* pool, void* ptr, void* stream) {
  da_error_clear();
  da_status st = check_pool(pool, "free");
  if (st != DA_STATUS_SUCCESS) return st;
  if (ptr == NULL) return DA_STATUS_SUCCESS;
  return da_mp_pool_free(pool->core, ptr, stream);
}

da_status da_mempool_get_stats(da_mempool* pool, da_mempool_stats* stats) {
  da_error_clear();
  da_status st = check_pool(pool, "get_stats");
  if (st != DA_STATUS_SUCCESS) return st;
  if (stats == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "get_stats: stats must not be NULL");
  da_mp_pool_get_stats(pool->core, stats);
  return DA_STATUS_SUCCESS;
}

da_status da_mempool_get_class_stats(da_mempool* pool, int size_class,
                                     da_mempool_class_stats* stats) {
  da_error_clear();
  da_status st = check_pool(pool, "get_class_stats");
  if (st != DA_STATUS_SUCCESS) return st;
  if (stats == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "get_class_stats: stats must not be NULL");
  return da_mp_pool_get_class_stats(pool->core, size_class, stats);
}

da_status da_mempool_trim(da_mempool* pool, size_t keep_bytes) {
  da_error_clear();
  da_status st = check_pool(pool, "trim");
  if (st != DA_STATUS_SUCCESS) return st;
  return da_mp_pool_trim(pool->core, keep_bytes);
}

da_status da_mempool_reset(da_mempool* pool) {
  da_error_clear();
  da_status st = check_pool(pool, "reset");
  if (st != DA_STATUS_SUCCESS) return st;
  return da_mp_pool_reset(pool->core);
}

da_status da_mempool_reset_peak_stats(da_mempool* pool) {
  da_error_clear();
  da_status st = check_pool(pool, "reset_peak_stats");
  if (st != DA_STATUS_SUCCESS) return st;
  da_mp_pool_reset_peak_stats(pool->core);
  return DA_STATUS_SUCCESS;
}

da_status da_mempool_release_stream(da_mempool* pool, void* stream) {
  da_error_clear();
  da_status st = check_pool(pool, "release_stream");
  if (st != DA_STATUS_SUCCESS) return st;
  return da_mp_pool_release_stream(pool->core, stream);
}

da_status da_mempool_check(da_mempool* pool) {
  da_error_clear();
  da_status st = check_pool(pool, "check");
  if (st != DA_STATUS_SUCCESS) return st;
  return da_mp_pool_check(pool->core);
}

da_mp_backend* da_mempool_backend_of(da_mempool* pool) { return da_mp_pool_backend(pool->core); }

/* ---- default pools ---------------------------------------------------------- */

static da_status check_default_device(int device, const char* op) {
  if (device < DA_MEMPOOL_HOST_DEVICE || device >= MAX_DEFAULT_DEVICES)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s: device=%d is outside [-1 (host), %d)", op, device, MAX_DEFAULT_DEVICES);
  return DA_STATUS_SUCCESS;
}

da_status da_mempool_default(int device, da_mempool** pool) {
  da_error_clear();
  if (pool == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "default: pool must not be NULL");
  *pool = NULL;
  da_status st = check_default_device(device, "default");
  if (st != DA_STATUS_SUCCESS) return st;
  pthread_mutex_lock(&defaults_lock);
  if (defaults[device + 1] == NULL) {
    da_mempool_config config = da_mempool_config_default();
    if (device == DA_MEMPOOL_HOST_DEVICE)
      config.backend = DA_MEMPOOL_BACKEND_HOST;
    else
      config.device = device;
    st = create(&config, device, &defaults[device + 1]);
  }
  *pool = defaults[device + 1];
  pthread_mutex_unlock(&defaults_lock);
  return st;
}

da_status da_mempool_default_create(int device, const da_mempool_config* config) {
  da_error_clear();
  da_status st = check_default_device(device, "default_create");
  if (st != DA_STATUS_SUCCESS) return st;
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "default_create: config must not be NULL");
  bool host = config->backend == DA_MEMPOOL_BACKEND_HOST;
  if ((device == DA_MEMPOOL_HOST_DEVICE) != host)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "default_create: device=%d takes %s, config.backend is %s", device,
                        device == DA_MEMPOOL_HOST_DEVICE ? "the host backend" : "a device backend",
                        da_mempool_backend_name(config->backend));
  if (!host && config->device != device)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "default_create: config.device=%d differs from device=%d", config->device,
                        device);
  pthread_mutex_lock(&defaults_lock);
  if (defaults[device + 1] != NULL)
    st = da_error_set(DA_STATUS_INVALID_ARGUMENT,
                      "default_create: the default pool of device %d already exists; "
                      "da_mempool_default_destroy it first",
                      device);
  else
    st = create(config, device, &defaults[device + 1]);
  pthread_mutex_unlock(&defaults_lock);
  return st;
}

da_status da_mempool_default_destroy(int device) {
  da_error_clear();
  da_status st = check_default_device(device, "default_destroy");
  if (st != DA_STATUS_SUCCESS) return st;
  pthread_mutex_lock(&defaults_lock);
  da_mempool* pool = defaults[device + 1];
  defaults[device + 1] = NULL;
  if (pool) st = destroy_handle(pool, "default_destroy");
  pthread_mutex_unlock(&defaults_lock);
  return st;
}
