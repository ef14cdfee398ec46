/* The config: defaults, every validation rule (messages name the JSON path, the
 * value and the rule), the topology from the launcher's environment, and the views
 * other components take (attention params, pattern config). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "dist_config/config_internal.h"

da_config da_config_default(void) {
  da_config c;
  memset(&c, 0, sizeof c);
  static const int w[] = {2048, 4096, 8192, 16384, 32768};
  static const int r[] = {1, 2, 4, 8, 16};
  da_config_attention* a = &c.attention;
  memcpy(a->segment_lengths, w, sizeof w);
  memcpy(a->dilation_rates, r, sizeof r);
  a->num_segment_lengths = a->num_dilation_rates = 5;
  a->mode = DA_MODE_LONGNET;
  a->offset_policy = DA_OFFSET_DEFAULT;
  a->causal = 0;
  a->softmax_scale = 0.0;
  a->num_heads = 12;
  a->num_kv_heads = 0;
  a->head_dim = 64;
  a->dropout = 0.0;
  da_config_sparse* s = &c.sparse;
  s->pattern_type = DA_PATTERN_HIERARCHICAL;
  s->block_size = 128;
  s->density = 0.25;
  s->local_density = 0.4;
  s->global_density = 0.1;
  s->inter_node_density = 0.05;
  s->local_window_blocks = 4;
  s->seed = 0;
  s->gradient_compression_ratio = 0.1;
  s->load_balance_threshold = 0.15;
  s->adaptive_rate = 0.05;
  s->enable_async_communication = 1;
  s->enable_gradient_compression = 1;
  s->enable_load_balancing = 1;
  s->enable_memory_pool = 1;
  s->enable_pinned_memory = 1;
  s->gradient_bucket_size_mb = 25.0;
  s->gradient_bucket_count = 32;
  c.topology.world_size = 0;
  c.topology.rank = -1;
  c.topology.local_world_size = 0;
  return c;
}

/* ------------------------------------------------------------------ names */

static const char* const kModeNames[] = {"longnet", "head_group"};
static const char* const kOffsetNames[] = {"default", "head", "group", "block"};
static const char* const kTypeNames[] = {"hierarchical", "node_local", "bandwidth_aware",
                                         "adaptive_load_balanced"};

const char* const* da_config_names(da_config_enum which, int* count) {
  switch (which) {
    case DA_CONFIG_ENUM_MODE:
      *count = 2;
      return kModeNames;
    case DA_CONFIG_ENUM_OFFSET:
      *count = 4;
      return kOffsetNames;
    case DA_CONFIG_ENUM_PATTERN_TYPE:
      *count = 4;
      return kTypeNames;
  }
  *count = 0;
  return NULL;
}

const char* da_config_mode_name(da_attention_mode mode) {
  return (int)mode >= 0 && (int)mode < 2 ? kModeNames[mode] : "unknown";
}

const char* da_config_offset_name(da_offset_policy policy) {
  return (int)policy >= 0 && (int)policy < 4 ? kOffsetNames[policy] : "unknown";
}

da_status da_config_pattern_type_from_name(const char* name, da_pattern_type* type) {
  da_error_clear();
  if (name == NULL || type == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "name and type must not be NULL");
  for (int t = 0; t < 4; t++)
    if (strcmp(name, kTypeNames[t]) == 0) {
      *type = (da_pattern_type)t;
      return DA_STATUS_SUCCESS;
    }
  return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                      "\"%s\" is not a pattern type (hierarchical, node_local, "
                      "bandwidth_aware, adaptive_load_balanced)",
                      name);
}

/* ------------------------------------------------------------- validation */

static da_status check_fraction(const char* path, double v, int open_low, int open_high) {
  const int ok = (open_low ? v > 0.0 : v >= 0.0) && (open_high ? v < 1.0 : v <= 1.0);
  if (!ok)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s=%g is outside %s0, 1%s", path, v,
                        open_low ? "(" : "[", open_high ? ")" : "]");
  return DA_STATUS_SUCCESS;
}

static da_status check_attention(const da_config_attention* a) {
  if (a->num_segment_lengths != a->num_dilation_rates)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.segment_lengths has %d values but attention.dilation_rates "
                        "has %d: every segment length needs one dilation rate",
                        a->num_segment_lengths, a->num_dilation_rates);
  if (a->num_segment_lengths < 1 || a->num_segment_lengths > DA_MAX_PATTERNS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.segment_lengths has %d values, outside [1, %d]",
                        a->num_segment_lengths, DA_MAX_PATTERNS);
  for (int i = 0; i < a->num_segment_lengths; i++) {
    if (a->segment_lengths[i] < 1)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "attention.segment_lengths[%d]=%d must be >= 1", i,
                          a->segment_lengths[i]);
    if (a->dilation_rates[i] < 1 || a->dilation_rates[i] > a->segment_lengths[i])
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "attention.dilation_rates[%d]=%d is outside [1, "
                          "attention.segment_lengths[%d]=%d]",
                          i, a->dilation_rates[i], i, a->segment_lengths[i]);
  }
  if ((int)a->mode < 0 || (int)a->mode > 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.mode=%d is not longnet (0) or head_group (1)", (int)a->mode);
  if ((int)a->offset_policy < 0 || (int)a->offset_policy > 3)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.offset_policy=%d is not default, head, group or block (0..3)",
                        (int)a->offset_policy);
  if (a->softmax_scale != 0.0 && (!(a->softmax_scale > 0.0) || a->softmax_scale > 3.4e38))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.softmax_scale=%g must be positive and finite as a float "
                        "(or 0 for 1/sqrt(head_dim))",
                        a->softmax_scale);
  if (a->num_heads < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "attention.num_heads=%d must be >= 1",
                        a->num_heads);
  if (a->num_kv_heads < 0 || (a->num_kv_heads > 0 && a->num_heads % a->num_kv_heads != 0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "attention.num_kv_heads=%d must divide attention.num_heads=%d (or be 0 "
                        "for num_heads)",
                        a->num_kv_heads, a->num_heads);
  if (a->head_dim < 1 || a->head_dim > DA_MAX_HEAD_DIM)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "attention.head_dim=%d is outside [1, %d]",
                        a->head_dim, DA_MAX_HEAD_DIM);
  if (!(a->dropout >= 0.0 && a->dropout < 1.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "attention.dropout=%g is outside [0, 1)",
                        a->dropout);
  if (a->dropout != 0.0)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "attention.dropout=%g is not supported: no backend implements attention "
                        "dropout (it must be 0)",
                        a->dropout);
  return DA_STATUS_SUCCESS;
}

static da_status check_sparse(const da_config_sparse* s) {
  if ((int)s->pattern_type < 0 || (int)s->pattern_type > 3)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.pattern_type=%d is not hierarchical, node_local, bandwidth_aware "
                        "or adaptive_load_balanced (0..3)",
                        (int)s->pattern_type);
  if (s->block_size < 1 || s->block_size > DA_PATTERN_MAX_BLOCK_SIZE ||
      (s->block_size & (s->block_size - 1)) != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.block_size=%d must be a power of two in [1, %d]", s->block_size,
                        DA_PATTERN_MAX_BLOCK_SIZE);
  da_status st = check_fraction("sparse.density", s->density, 1, 0);
  if (!st) st = check_fraction("sparse.local_density", s->local_density, 0, 0);
  if (!st) st = check_fraction("sparse.global_density", s->global_density, 0, 0);
  if (!st) st = check_fraction("sparse.inter_node_density", s->inter_node_density, 0, 0);
  if (st) return st;
  if (s->inter_node_density > s->global_density)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.inter_node_density=%g exceeds sparse.global_density=%g: links "
                        "across nodes must not outnumber the global blocks",
                        s->inter_node_density, s->global_density);
  if (s->local_window_blocks < 0 || s->local_window_blocks > DA_PATTERN_MAX_WINDOW_BLOCKS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.local_window_blocks=%d is outside [0, %d]", s->local_window_blocks,
                        DA_PATTERN_MAX_WINDOW_BLOCKS);
  if (s->seed > DA_CONFIG_MAX_SEED)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.seed=%llu exceeds 2^53, the largest integer JSON carries exactly",
                        (unsigned long long)s->seed);
  st = check_fraction("sparse.gradient_compression_ratio", s->gradient_compression_ratio, 1, 0);
  if (!st) st = check_fraction("sparse.load_balance_threshold", s->load_balance_threshold, 0, 0);
  if (!st) st = check_fraction("sparse.adaptive_rate", s->adaptive_rate, 0, 1);
  if (st) return st;
  if (!(s->gradient_bucket_size_mb > 0.0 && s->gradient_bucket_size_mb <= 65536.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.gradient_bucket_size_mb=%g is outside (0, 65536]",
                        s->gradient_bucket_size_mb);
  if (s->gradient_bucket_count < 1 || s->gradient_bucket_count > 65536)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.gradient_bucket_count=%d is outside [1, 65536]",
                        s->gradient_bucket_count);
  if (s->pattern_type == DA_PATTERN_ADAPTIVE_LOAD_BALANCED && !s->enable_load_balancing)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "sparse.pattern_type=adaptive_load_balanced needs "
                        "sparse.enable_load_balancing=true (it is false)");
  return DA_STATUS_SUCCESS;
}

static da_status check_topology(const da_config_topology* t) {
  if (t->world_size != 0 && (t->world_size < 1 || t->world_size > DA_PATTERN_MAX_WORLD_SIZE))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "topology.world_size=%d is outside [1, %d] (or unset)", t->world_size,
                        DA_PATTERN_MAX_WORLD_SIZE);
  if (t->rank < -1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "topology.rank=%d must be >= 0 (or unset)",
                        t->rank);
  if (t->rank >= 0 && t->world_size > 0 && t->rank >= t->world_size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "topology.rank=%d is outside [0, topology.world_size=%d)", t->rank,
                        t->world_size);
  if (t->local_world_size < 0 || t->local_world_size > DA_PATTERN_MAX_WORLD_SIZE)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "topology.local_world_size=%d is outside [1, %d] (or unset)",
                        t->local_world_size, DA_PATTERN_MAX_WORLD_SIZE);
  if (t->local_world_size > 0 && t->world_size > 0 && t->world_size % t->local_world_size != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "topology.local_world_size=%d does not divide topology.world_size=%d "
                        "(every node holds the same number of ranks)",
                        t->local_world_size, t->world_size);
  return DA_STATUS_SUCCESS;
}

da_status da_config_validate(const da_config* config) {
  da_error_clear();
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  da_status st = check_attention(&config->attention);
  if (!st) st = check_sparse(&config->sparse);
  if (!st) st = check_topology(&config->topology);
  if (!st) {
    /* The attention component's own rules, as a cross-check. */
    da_attention_params params;
    da_config_attention_params(config, &params);
    da_attention_batch batch = {1, 1, NULL};
    st = da_attention_validate(&params, &batch);
    if (st) {
      char why[512];
      snprintf(why, sizeof why, "%s", da_last_error());
      st = da_error_set(st, "attention: %s", why);
    }
  }
  return st;
}

/* ---------------------------------------------------------------- topology */

static const char* process_getenv(void* ctx, const char* name) {
  (void)ctx;
  return getenv(name);
}

/* The first variable of `names` that is set: parsed into *value (0 when none is
 * set). */
static da_status env_int(da_config_getenv_fn lookup, void* ctx, const char* const names[2],
                         const char* field, long lo, long hi, int* value, int* found) {
  *found = 0;
  for (int x = 0; x < 2; x++) {
    const char* text = lookup(ctx, names[x]);
    if (text == NULL) continue;
    char* end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "environment %s='%s' is not a decimal integer in [%ld, %ld] (for %s)",
                          names[x], text, lo, hi, field);
    *value = (int)v;
    *found = 1;
    return DA_STATUS_SUCCESS;
  }
  return DA_STATUS_SUCCESS;
}

da_status da_config_resolve_topology(da_config* config, da_config_getenv_fn lookup, void* ctx) {
  da_error_clear();
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  if (lookup == NULL) lookup = process_getenv;
  da_config_topology t = config->topology;
  static const char* const kWorld[2] = {"OMPI_COMM_WORLD_SIZE", "WORLD_SIZE"};
  static const char* const kRank[2] = {"OMPI_COMM_WORLD_RANK", "RANK"};
  static const char* const kLocal[2] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE"};
  int found = 0;
  da_status st = DA_STATUS_SUCCESS;
  if (t.world_size == 0) {
    st = env_int(lookup, ctx, kWorld, "topology.world_size", 1, DA_PATTERN_MAX_WORLD_SIZE,
                 &t.world_size, &found);
    if (!st && !found) t.world_size = 1;
  }
  if (!st && t.rank < 0) {
    st = env_int(lookup, ctx, kRank, "topology.rank", 0, DA_PATTERN_MAX_WORLD_SIZE - 1, &t.rank,
                 &found);
    if (!st && !found) t.rank = 0;
  }
  if (!st && t.local_world_size == 0) {
    st = env_int(lookup, ctx, kLocal, "topology.local_world_size", 1, DA_PATTERN_MAX_WORLD_SIZE,
                 &t.local_world_size, &found);
    if (!st && !found) t.local_world_size = t.world_size;
  }
  if (st) return st;
  st = check_topology(&t);
  if (st) return st;
  config->topology = t;
  return DA_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------ views */

da_status da_config_attention_params(const da_config* config, da_attention_params* params) {
  if (config == NULL || params == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config and params must not be NULL");
  const da_config_attention* a = &config->attention;
  da_attention_params p = da_attention_params_default();
  p.segment_lengths = a->segment_lengths;
  p.num_segment_lengths = a->num_segment_lengths;
  p.dilation_rates = a->dilation_rates;
  p.num_dilation_rates = a->num_dilation_rates;
  p.mode = a->mode;
  p.offset_policy = a->offset_policy;
  p.causal = a->causal;
  p.softmax_scale = (float)a->softmax_scale;
  p.num_heads = a->num_heads;
  p.num_kv_heads = a->num_kv_heads;
  p.head_dim = a->head_dim;
  *params = p;
  return DA_STATUS_SUCCESS;
}

da_status da_config_to_pattern(const da_config* config, int64_t seqlen,
                               da_pattern_config* pattern) {
  da_error_clear();
  if (pattern == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "pattern must not be NULL");
  da_status st = da_config_validate(config);
  if (st) return st;
  const da_config_topology* t = &config->topology;
  if (t->world_size == 0 || t->rank < 0 || t->local_world_size == 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "topology is not resolved (world_size=%d, rank=%d, local_world_size=%d): "
                        "call da_config_resolve_topology first",
                        t->world_size, t->rank, t->local_world_size);
  const da_config_attention* a = &config->attention;
  const da_config_sparse* s = &config->sparse;
  da_pattern_config p = da_pattern_config_default();
  p.seqlen = seqlen;
  p.block_size = s->block_size;
  p.num_heads = a->num_heads;
  p.causal = a->causal;
  p.type = s->pattern_type;
  p.local_density = s->local_density;
  p.global_density = s->global_density;
  p.inter_node_density = s->inter_node_density;
  p.local_window_blocks = s->local_window_blocks;
  p.num_patterns = a->num_segment_lengths;
  memcpy(p.segment_lengths, a->segment_lengths, sizeof p.segment_lengths);
  memcpy(p.dilation_rates, a->dilation_rates, sizeof p.dilation_rates);
  p.mode = a->mode;
  p.offset_policy = a->offset_policy;
  p.world_size = t->world_size;
  p.local_world_size = t->local_world_size;
  p.seed = s->seed;
  st = da_pattern_config_validate(&p);
  if (st) {
    char why[512];
    snprintf(why, sizeof why, "%s", da_last_error());
    return da_error_set(st, "the pattern config for seqlen=%lld is invalid: %s", (long long)seqlen,
                        why);
  }
  *pattern = p;
  return DA_STATUS_SUCCESS;
}

da_status da_config_check_budget(const da_config* config, int64_t seqlen, da_pattern_stats* stats) {
  da_pattern_config p;
  da_status st = da_config_to_pattern(config, seqlen, &p);
  if (st) return st;
  da_pattern_stats counted;
  st = da_pattern_count(&p, &counted);
  if (st) return st;
  if (stats != NULL) *stats = counted;
  if (counted.density > config->sparse.density)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "the layout for seqlen=%lld on %d ranks keeps %.4f of the allowed blocks, "
                        "over sparse.density=%g (local %g, global %g, inter-node %g decide it)",
                        (long long)seqlen, p.world_size, counted.density, config->sparse.density,
                        p.local_density, p.global_density, p.inter_node_density);
  return DA_STATUS_SUCCESS;
}
