/* The generator: one config, a cache, and (adaptive type) the per-rank density
 * scales the controller moves. Thread-safe: one mutex guards the scales; layouts
 * are built through the cache, outside it. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

struct da_pattern_generator {
  pthread_mutex_t lock;
  da_pattern_config config; /* scales and rows cleared */
  da_pattern_generator_options options;
  da_pattern_cache* cache; /* NULL: no cache */
  int owns_cache;
  double* scales; /* world_size entries, adaptive type only */
};

da_pattern_generator_options da_pattern_generator_options_default(void) {
  da_pattern_generator_options o;
  memset(&o, 0, sizeof o);
  o.shared_cache = NULL;
  o.cache_bytes = (size_t)256 << 20;
  o.load_balance_threshold = 0.15;
  o.adaptive_rate = 0.05;
  o.min_scale = 0.05;
  o.max_scale = 20.0;
  return o;
}

static da_status check_options(const da_pattern_generator_options* o) {
  if (!(o->load_balance_threshold >= 0.0) || isinf(o->load_balance_threshold))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "options->load_balance_threshold=%g must be finite and >= 0",
                        o->load_balance_threshold);
  if (!(o->adaptive_rate >= 0.0 && o->adaptive_rate < 1.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "options->adaptive_rate=%g is outside [0, 1)",
                        o->adaptive_rate);
  if (!(o->min_scale > 0.0 && o->min_scale <= 1.0 && o->max_scale >= 1.0) || isinf(o->max_scale))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "options->min_scale=%g, max_scale=%g must satisfy 0 < min_scale <= 1 "
                        "<= max_scale < inf",
                        o->min_scale, o->max_scale);
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_generator_create(const da_pattern_config* config,
                                      const da_pattern_generator_options* options,
                                      da_pattern_generator** generator) {
  da_error_clear();
  if (generator == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "generator must not be NULL");
  *generator = NULL;
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  da_pattern_generator_options o =
      options != NULL ? *options : da_pattern_generator_options_default();
  da_status st = check_options(&o);
  if (st) return st;
  da_pattern_config base = *config;
  base.rank_density_scale = NULL;
  base.row_begin = base.row_end = 0;
  st = da_pattern_config_validate(&base);
  if (st) return st;

  da_pattern_generator* g = calloc(1, sizeof *g);
  if (g == NULL) return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate a generator");
  g->config = base;
  g->options = o;
  if (base.type == DA_PATTERN_ADAPTIVE_LOAD_BALANCED) {
    g->scales = malloc(sizeof(double) * (size_t)base.world_size);
    if (g->scales == NULL) {
      free(g);
      return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not allocate %d rank scales",
                          base.world_size);
    }
    for (int p = 0; p < base.world_size; p++) g->scales[p] = 1.0;
  }
  if (o.shared_cache != NULL) {
    g->cache = o.shared_cache;
  } else if (o.cache_bytes > 0) {
    st = da_pattern_cache_create(o.cache_bytes, &g->cache);
    g->owns_cache = 1;
  }
  if (!st && pthread_mutex_init(&g->lock, NULL) != 0)
    st = da_error_set(DA_STATUS_INTERNAL_ERROR, "pthread_mutex_init failed");
  if (st) {
    if (g->owns_cache) da_pattern_cache_destroy(g->cache);
    free(g->scales);
    free(g);
    return st;
  }
  *generator = g;
  return DA_STATUS_SUCCESS;
}

void da_pattern_generator_destroy(da_pattern_generator* generator) {
  if (generator == NULL) return;
  if (generator->owns_cache) da_pattern_cache_destroy(generator->cache);
  pthread_mutex_destroy(&generator->lock);
  free(generator->scales);
  free(generator);
}

da_status da_pattern_generator_get(da_pattern_generator* generator, int64_t row_begin,
                                   int64_t row_end, da_pattern_layout** layout) {
  da_error_clear();
  if (generator == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "generator must not be NULL");
  if (layout == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "layout must not be NULL");
  *layout = NULL;
  da_pattern_config config = generator->config;
  config.row_begin = row_begin;
  config.row_end = row_end;
  double* snapshot = NULL;
  if (generator->scales != NULL) {
    snapshot = malloc(sizeof(double) * (size_t)config.world_size);
    if (snapshot == NULL)
      return da_error_set(DA_STATUS_OUT_OF_MEMORY, "could not copy %d rank scales",
                          config.world_size);
    pthread_mutex_lock(&generator->lock);
    memcpy(snapshot, generator->scales, sizeof(double) * (size_t)config.world_size);
    pthread_mutex_unlock(&generator->lock);
    config.rank_density_scale = snapshot;
  }
  da_status st = generator->cache != NULL ? da_pattern_cache_get(generator->cache, &config, layout)
                                          : da_pattern_layout_create(&config, layout);
  free(snapshot);
  return st;
}

da_status da_pattern_generator_adapt(da_pattern_generator* generator, const double* times_ms,
                                     int world_size, da_pattern_adapt_report* report) {
  da_error_clear();
  if (generator == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "generator must not be NULL");
  if (generator->scales == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "the generator's type is %s: only adaptive_load_balanced adapts",
                        da_pattern_type_name(generator->config.type));
  if (world_size != generator->config.world_size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "world_size=%d does not match the config's world_size=%d", world_size,
                        generator->config.world_size);
  const da_pattern_generator_options* o = &generator->options;
  pthread_mutex_lock(&generator->lock);
  da_status st =
      da_pattern_adapt_scales(times_ms, world_size, o->load_balance_threshold, o->adaptive_rate,
                              o->min_scale, o->max_scale, generator->scales, report);
  pthread_mutex_unlock(&generator->lock);
  return st;
}

da_status da_pattern_generator_scales(da_pattern_generator* generator, double* scales,
                                      int world_size) {
  da_error_clear();
  if (generator == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "generator must not be NULL");
  if (scales == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "scales must not be NULL");
  if (world_size != generator->config.world_size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "world_size=%d does not match the config's world_size=%d", world_size,
                        generator->config.world_size);
  pthread_mutex_lock(&generator->lock);
  for (int p = 0; p < world_size; p++)
    scales[p] = generator->scales != NULL ? generator->scales[p] : 1.0;
  pthread_mutex_unlock(&generator->lock);
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_generator_cache_stats(da_pattern_generator* generator,
                                           da_pattern_cache_stats* stats) {
  da_error_clear();
  if (generator == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "generator must not be NULL");
  if (stats == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "stats must not be NULL");
  if (generator->cache == NULL) {
    memset(stats, 0, sizeof *stats);
    return DA_STATUS_SUCCESS;
  }
  return da_pattern_cache_get_stats(generator->cache, stats);
}
