/* pattern_internal.h: the validated, resolved form of a da_pattern_config, the
 * block geometry every part of the component computes with (shards, nodes, global
 * indices), and the layout object. Internal to sparse_pattern (tests reach it
 * through the :internal_for_tests target). */
#ifndef DA_SPARSE_PATTERN_INTERNAL_H
#define DA_SPARSE_PATTERN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "attention/params.h"
#include "sparse_pattern/da_pattern.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t n;  /* tokens */
  int64_t B;  /* block size */
  int64_t nb; /* blocks */
  int H;
  int causal;
  da_pattern_type type;
  double local_density, global_density, inter_node_density;
  int64_t window;
  int num_patterns;
  int64_t w[DA_MAX_PATTERNS];
  int64_t r[DA_MAX_PATTERNS];
  da_attention_mode mode;
  da_offset_policy offset; /* resolved: never DA_OFFSET_DEFAULT */
  int64_t W, Lw;
  uint64_t seed;
  const double* scales; /* borrowed; NULL = all 1 */
  int64_t row_begin, row_end;
  int64_t g; /* designated global block indices */
} da_pattern_plan;

/* Validates config (every rule of da_pattern.h) and fills plan. */
da_status da_pattern_plan_init(const da_pattern_config* config, da_pattern_plan* plan);

/* ---------------------------------------------------------------- geometry */

/* First block of rank p's shard (p in [0, W]; p = W gives nb). */
static inline int64_t da_pattern_shard_begin(const da_pattern_plan* plan, int64_t p) {
  return p * plan->nb / plan->W;
}

/* The rank owning block c: the p with shard_begin(p) <= c < shard_begin(p + 1),
 * i.e. p < (c + 1) W / nb <= p + 1. */
static inline int64_t da_pattern_owner(const da_pattern_plan* plan, int64_t c) {
  return ((c + 1) * plan->W + plan->nb - 1) / plan->nb - 1;
}

/* Global block k is floor(k nb / g), k < g: evenly spaced, block 0 first. The
 * number of them below x (0 <= x <= nb) is the k with k nb < x g. */
static inline int64_t da_pattern_globals_below(const da_pattern_plan* plan, int64_t x) {
  return plan->g == 0 ? 0 : (x * plan->g + plan->nb - 1) / plan->nb;
}

static inline int da_pattern_is_global(const da_pattern_plan* plan, int64_t c) {
  return da_pattern_globals_below(plan, c + 1) != da_pattern_globals_below(plan, c);
}

static inline int64_t da_pattern_global_index(const da_pattern_plan* plan, int64_t k) {
  return k * plan->nb / plan->g;
}

/* One past the last column row i may see. */
static inline int64_t da_pattern_allowed_end(const da_pattern_plan* plan, int64_t i) {
  return plan->causal ? i + 1 : plan->nb;
}

/* The selection rules are the attention component's (attention/params.h). */
static inline int da_pattern_uses_pattern(const da_pattern_plan* plan, int p, int j) {
  return da_attn_head_uses_pattern(plan->mode, p, j, plan->H, plan->num_patterns);
}

static inline int64_t da_pattern_offset(const da_pattern_plan* plan, int p, int j) {
  return da_attn_head_offset(plan->offset, j, plan->H, plan->num_patterns, (int)plan->r[p]);
}

/* ------------------------------------------------------------ row quotas */

/* What the levels keep in one block row (the same for every head). */
typedef struct {
  int64_t local, inter;               /* kept blocks                       */
  int64_t local_domain, inter_domain; /* candidates                        */
  int64_t global;                     /* global blocks kept (global row: all) */
  int is_global_row;
  int forced; /* local = 1 only for the >= 1 rule  */
} da_pattern_row_quota;

/* Quotas of rows [plan->row_begin, plan->row_end): into quotas (R entries) when
 * not NULL, and the stats of the layout they make (bytes included). */
void da_pattern_row_quotas(const da_pattern_plan* plan, da_pattern_row_quota* quotas,
                           da_pattern_stats* stats);

/* ------------------------------------------------------------- row builder */

/* Per-thread scratch for building rows (6 arrays of nb entries). */
typedef struct {
  int32_t* buffer;
  int64_t capacity; /* entries per array */
} da_pattern_scratch;

da_status da_pattern_scratch_init(da_pattern_scratch* scratch, int64_t nb);
void da_pattern_scratch_free(da_pattern_scratch* scratch);

/* Writes row i of head h (quota from da_pattern_row_quotas) into cols / levels:
 * exactly the quota's total count of strictly increasing columns. */
void da_pattern_build_row(const da_pattern_plan* plan, int h, int64_t i,
                          const da_pattern_row_quota* quota, da_pattern_scratch* scratch,
                          int32_t* cols, uint8_t* levels);

/* The blocks of row i's local structure for head h (window and dilated patterns,
 * within the local domain, global columns excluded), increasing, into out (room
 * for nb). Returns the count. For tests and tools. */
int64_t da_pattern_structure_blocks(const da_pattern_plan* plan, int h, int64_t i, int32_t* out);

/* ------------------------------------------------------------------ layouts */

/* C only (tests in C++ see the layout through the public API). */
#ifndef __cplusplus
#include <stdatomic.h>
struct da_pattern_layout {
  _Atomic long refs;
  da_pattern_bsr bsr;
  da_pattern_stats stats;
  int64_t* row_offsets;
  int32_t* col_indices;
  uint8_t* levels;
};
#endif

/* Bytes a layout with these dimensions holds. */
size_t da_pattern_layout_bytes(int64_t heads, int64_t rows, int64_t nnz);

/* The cache key of a plan: its resolved fields (and the scales' values). Returns the
 * key's size; writes it when out is not NULL. */
size_t da_pattern_plan_key(const da_pattern_plan* plan, unsigned char* out);

#ifdef __cplusplus
}
#endif

#endif /* DA_SPARSE_PATTERN_INTERNAL_H */
