/* The pattern config: defaults, every validation rule, the resolved plan and the
 * cache key derived from it. */
#include <math.h>
#include <string.h>

#include "common/error.h"
#include "sparse_pattern/pattern_internal.h"

da_pattern_config da_pattern_config_default(void) {
  da_pattern_config c;
  memset(&c, 0, sizeof c);
  c.seqlen = 0;
  c.block_size = 128;
  c.num_heads = 0;
  c.causal = 0;
  c.type = DA_PATTERN_HIERARCHICAL;
  c.local_density = 0.4;
  c.global_density = 0.1;
  c.inter_node_density = 0.05;
  c.local_window_blocks = 4;
  c.num_patterns = 0;
  c.mode = DA_MODE_LONGNET;
  c.offset_policy = DA_OFFSET_DEFAULT;
  c.world_size = 1;
  c.local_world_size = 1;
  c.seed = 0;
  c.rank_density_scale = NULL;
  c.row_begin = 0;
  c.row_end = 0;
  return c;
}

const char* da_pattern_type_name(da_pattern_type type) {
  switch (type) {
    case DA_PATTERN_HIERARCHICAL:
      return "hierarchical";
    case DA_PATTERN_NODE_LOCAL:
      return "node_local";
    case DA_PATTERN_BANDWIDTH_AWARE:
      return "bandwidth_aware";
    case DA_PATTERN_ADAPTIVE_LOAD_BALANCED:
      return "adaptive_load_balanced";
  }
  return "unknown";
}

const char* da_pattern_level_name(da_pattern_level level) {
  switch (level) {
    case DA_PATTERN_LEVEL_LOCAL:
      return "local";
    case DA_PATTERN_LEVEL_GLOBAL:
      return "global";
    case DA_PATTERN_LEVEL_INTER_NODE:
      return "inter_node";
  }
  return "unknown";
}

static da_status check_density(const char* name, double value) {
  if (!(value >= 0.0 && value <= 1.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->%s=%g is outside [0, 1] (a kept fraction)", name, value);
  return DA_STATUS_SUCCESS;
}

static da_status check_shape(const da_pattern_config* c, da_pattern_plan* plan) {
  if (c->seqlen < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config->seqlen=%lld must be >= 1",
                        (long long)c->seqlen);
  if (c->block_size < 1 || c->block_size > DA_PATTERN_MAX_BLOCK_SIZE ||
      (c->block_size & (c->block_size - 1)) != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->block_size=%d must be a power of two in [1, %d]", c->block_size,
                        DA_PATTERN_MAX_BLOCK_SIZE);
  plan->n = c->seqlen;
  plan->B = c->block_size;
  plan->nb = (c->seqlen + c->block_size - 1) / c->block_size;
  if (plan->nb > INT32_MAX)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->seqlen=%lld / block_size=%d gives %lld blocks, more than "
                        "the %d a layout can index",
                        (long long)c->seqlen, c->block_size, (long long)plan->nb, INT32_MAX);
  if (c->num_heads < 1 || c->num_heads > DA_PATTERN_MAX_HEADS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config->num_heads=%d is outside [1, %d]",
                        c->num_heads, DA_PATTERN_MAX_HEADS);
  plan->H = c->num_heads;
  plan->causal = c->causal != 0;
  return DA_STATUS_SUCCESS;
}

static da_status check_levels(const da_pattern_config* c, da_pattern_plan* plan) {
  if ((int)c->type < 0 || (int)c->type > (int)DA_PATTERN_ADAPTIVE_LOAD_BALANCED)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->type=%d is not a da_pattern_type (0..3)", (int)c->type);
  plan->type = c->type;
  da_status st = check_density("local_density", c->local_density);
  if (!st) st = check_density("global_density", c->global_density);
  if (!st) st = check_density("inter_node_density", c->inter_node_density);
  if (st) return st;
  plan->local_density = c->local_density;
  plan->global_density = c->global_density;
  plan->inter_node_density = c->inter_node_density;
  if (c->local_window_blocks < 0 || c->local_window_blocks > DA_PATTERN_MAX_WINDOW_BLOCKS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->local_window_blocks=%d is outside [0, %d]", c->local_window_blocks,
                        DA_PATTERN_MAX_WINDOW_BLOCKS);
  plan->window = c->local_window_blocks;
  /* One multiply, one rounding: every rank computes the same count. */
  plan->g = (int64_t)floor(c->global_density * (double)plan->nb + 0.5);
  if (plan->g > plan->nb) plan->g = plan->nb;
  return DA_STATUS_SUCCESS;
}

static da_status check_patterns(const da_pattern_config* c, da_pattern_plan* plan) {
  if (c->num_patterns < 0 || c->num_patterns > DA_MAX_PATTERNS)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config->num_patterns=%d is outside [0, %d]",
                        c->num_patterns, DA_MAX_PATTERNS);
  plan->num_patterns = c->num_patterns;
  for (int p = 0; p < c->num_patterns; p++) {
    int w = c->segment_lengths[p], r = c->dilation_rates[p];
    if (w < 1)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config->segment_lengths[%d]=%d must be >= 1",
                          p, w);
    if (r < 1 || r > w)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "config->dilation_rates[%d]=%d is outside [1, segment_lengths[%d]=%d]", p,
                          r, p, w);
    plan->w[p] = w;
    plan->r[p] = r;
  }
  if (c->mode != DA_MODE_LONGNET && c->mode != DA_MODE_HEAD_GROUP)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->mode=%d is not DA_MODE_LONGNET (0) or DA_MODE_HEAD_GROUP (1)",
                        (int)c->mode);
  plan->mode = c->mode;
  switch (c->offset_policy) {
    case DA_OFFSET_DEFAULT:
    case DA_OFFSET_HEAD:
    case DA_OFFSET_GROUP:
    case DA_OFFSET_BLOCK:
      plan->offset = da_attn_resolve_offset_policy(c->mode, c->offset_policy);
      break;
    default:
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "config->offset_policy=%d is not a da_offset_policy (0..3)",
                          (int)c->offset_policy);
  }
  if (c->num_patterns == 0 && c->mode == DA_MODE_HEAD_GROUP)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->mode=DA_MODE_HEAD_GROUP needs num_patterns >= 1 (got 0)");
  return DA_STATUS_SUCCESS;
}

static da_status check_topology(const da_pattern_config* c, da_pattern_plan* plan) {
  if (c->world_size < 1 || c->world_size > DA_PATTERN_MAX_WORLD_SIZE)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config->world_size=%d is outside [1, %d]",
                        c->world_size, DA_PATTERN_MAX_WORLD_SIZE);
  if (c->local_world_size < 1 || c->local_world_size > c->world_size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->local_world_size=%d is outside [1, world_size=%d]",
                        c->local_world_size, c->world_size);
  if (c->world_size % c->local_world_size != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->world_size=%d is not a multiple of local_world_size=%d "
                        "(nodes hold the same number of ranks)",
                        c->world_size, c->local_world_size);
  plan->W = c->world_size;
  plan->Lw = c->local_world_size;
  plan->seed = c->seed;
  if (c->rank_density_scale != NULL) {
    if (c->type != DA_PATTERN_ADAPTIVE_LOAD_BALANCED)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                          "config->rank_density_scale is set but type=%s: only "
                          "adaptive_load_balanced uses per-rank scales",
                          da_pattern_type_name(c->type));
    for (int p = 0; p < c->world_size; p++) {
      double s = c->rank_density_scale[p];
      if (!(s >= 0.0) || isinf(s))
        return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                            "config->rank_density_scale[%d]=%g must be finite and >= 0", p, s);
    }
  }
  plan->scales = c->rank_density_scale;
  int64_t end = c->row_end == 0 ? plan->nb : c->row_end;
  if (c->row_begin < 0 || c->row_begin >= end || end > plan->nb)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "config->row_begin=%lld, row_end=%lld do not give a non-empty range "
                        "within [0, %lld] block rows (row_end 0 means all)",
                        (long long)c->row_begin, (long long)c->row_end, (long long)plan->nb);
  plan->row_begin = c->row_begin;
  plan->row_end = end;
  return DA_STATUS_SUCCESS;
}

da_status da_pattern_plan_init(const da_pattern_config* config, da_pattern_plan* plan) {
  if (config == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "config must not be NULL");
  memset(plan, 0, sizeof *plan);
  da_status st = check_shape(config, plan);
  if (!st) st = check_levels(config, plan);
  if (!st) st = check_patterns(config, plan);
  if (!st) st = check_topology(config, plan);
  return st;
}

da_status da_pattern_config_validate(const da_pattern_config* config) {
  da_error_clear();
  da_pattern_plan plan;
  return da_pattern_plan_init(config, &plan);
}

da_status da_pattern_shard_rows(const da_pattern_config* config, int rank, int64_t* row_begin,
                                int64_t* row_end) {
  da_error_clear();
  if (row_begin == NULL || row_end == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "row_begin and row_end must not be NULL");
  da_pattern_plan plan;
  da_status st = da_pattern_plan_init(config, &plan);
  if (st) return st;
  if (rank < 0 || rank >= config->world_size)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "rank=%d is outside [0, world_size=%d)", rank,
                        config->world_size);
  *row_begin = da_pattern_shard_begin(&plan, rank);
  *row_end = da_pattern_shard_begin(&plan, rank + 1);
  return DA_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------ key */

typedef struct {
  unsigned char* out;
  size_t size;
} key_writer;

static void put(key_writer* kw, const void* bytes, size_t count) {
  if (kw->out != NULL) memcpy(kw->out + kw->size, bytes, count);
  kw->size += count;
}

static void put_i64(key_writer* kw, int64_t v) { put(kw, &v, sizeof v); }

static void put_f64(key_writer* kw, double v) {
  /* -0.0 and 0.0 give the same layout: key them alike. */
  if (v == 0.0) v = 0.0;
  put(kw, &v, sizeof v);
}

size_t da_pattern_plan_key(const da_pattern_plan* plan, unsigned char* out) {
  key_writer kw = {out, 0};
  put_i64(&kw, plan->n);
  put_i64(&kw, plan->B);
  put_i64(&kw, plan->H);
  put_i64(&kw, plan->causal);
  put_i64(&kw, plan->type);
  put_f64(&kw, plan->local_density);
  put_f64(&kw, plan->global_density);
  put_f64(&kw, plan->inter_node_density);
  put_i64(&kw, plan->window);
  put_i64(&kw, plan->num_patterns);
  for (int p = 0; p < plan->num_patterns; p++) {
    put_i64(&kw, plan->w[p]);
    put_i64(&kw, plan->r[p]);
  }
  /* Mode and offset matter only through the patterns. */
  put_i64(&kw, plan->num_patterns > 0 ? plan->mode : 0);
  put_i64(&kw, plan->num_patterns > 0 ? plan->offset : 0);
  put_i64(&kw, plan->W);
  put_i64(&kw, plan->Lw);
  put_i64(&kw, (int64_t)plan->seed);
  put_i64(&kw, plan->scales != NULL);
  if (plan->scales != NULL)
    for (int64_t p = 0; p < plan->W; p++) put_f64(&kw, plan->scales[p]);
  put_i64(&kw, plan->row_begin);
  put_i64(&kw, plan->row_end);
  return kw.size;
}
