/* da_pattern.h: hierarchical block-sparse attention layouts (which key blocks each
 * query block may attend to, per head), their cache, load balancing across ranks,
 * and an exact CPU block-sparse attention (forward and backward) that consumes them.
 * docs/sparse_pattern.md states the definitions; this header is the contract.
 *
 * Geometry. A sequence of n tokens is cut into nb = ceil(n / B) blocks of B tokens
 * (the last one may be shorter). The world of W ranks shards the blocks evenly:
 * rank p owns blocks [floor(p nb / W), floor((p+1) nb / W)); ranks p with the same
 * p / local_world_size share a node. A layout does not depend on which rank builds
 * it: every rank that asks for the same config gets bit-identical arrays, and a
 * rank only picks which rows it builds (row_begin, row_end).
 *
 * Levels. Every kept block (row i, column j) carries the level that put it there:
 *   GLOBAL     round(global_density * nb) designated block indices, evenly spaced
 *              from block 0: a global row keeps every allowed block, and every row
 *              keeps the global columns it is allowed to see.
 *   LOCAL      keys on the query's own rank: local_density x the row's local
 *              domain, chosen structure first (a sliding window of
 *              local_window_blocks around the diagonal, and the blocks the dilated
 *              (w, r) patterns touch), nearest to the diagonal first, then the
 *              nearest remaining blocks.
 *   INTER_NODE keys on other ranks: inter_node_density x the row's remote domain,
 *              evenly strided links with a seeded phase per (head, row).
 * "Allowed" means j <= i when causal, any j otherwise. Densities are kept fractions
 * of each level's domain (allowed blocks of the row minus global columns, split by
 * the key's rank); per row a level keeps within one block of density x domain, and
 * over a rank's rows within one block in total (error-diffused rounding). A row that
 * would keep nothing keeps its diagonal block (LOCAL). Attention over a layout is one
 * softmax over all allowed keys of the row (docs/semantics.md, "Block-sparse
 * attention"); the levels carry no weights.
 *
 * Thread-safety: configs are plain values; layouts are immutable and reference
 * counted (share them across threads freely); the cache and the generator lock
 * internally. Every fallible call returns a da_status and, on failure, leaves a
 * sentence naming the field, its value and the rule in da_last_error(). */
#ifndef DA_PATTERN_H
#define DA_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#include "attention/dilated_attention.h"
#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DA_PATTERN_MAX_BLOCK_SIZE 65536
#define DA_PATTERN_MAX_HEADS 4096
#define DA_PATTERN_MAX_WORLD_SIZE (1 << 20)
#define DA_PATTERN_MAX_WINDOW_BLOCKS (1 << 30)

/* How inter-node links are placed (local and global levels are the same for all). */
typedef enum {
  /* Links to any other rank, strided evenly over the remote blocks. */
  DA_PATTERN_HIERARCHICAL = 0,
  /* Links only to other ranks of the same node: keys never cross a node boundary.
   * The inter-node domain is the same-node remote blocks. */
  DA_PATTERN_NODE_LOCAL = 1,
  /* The domain is every remote block, but the budget goes to same-node ranks first
   * (fast links) and only the remainder crosses nodes. */
  DA_PATTERN_BANDWIDTH_AWARE = 2,
  /* HIERARCHICAL placement; the local and inter-node densities of the rows each
   * rank owns are multiplied by that rank's scale (rank_density_scale), which the
   * generator adapts from measured per-rank times (da_pattern_generator_adapt). */
  DA_PATTERN_ADAPTIVE_LOAD_BALANCED = 3
} da_pattern_type;

/* Tag of each kept block: which level put it there. */
typedef enum {
  DA_PATTERN_LEVEL_LOCAL = 0,
  DA_PATTERN_LEVEL_GLOBAL = 1,
  DA_PATTERN_LEVEL_INTER_NODE = 2
} da_pattern_level;

#define DA_PATTERN_NUM_LEVELS 3

/* Everything that determines a layout. Plain value: start from
 * da_pattern_config_default(). The dilated patterns use the semantics of
 * dilated_attention.h (mode, offset policy): block (i, j) belongs to the structure
 * of head h when some query token of block i and some key token of block j are in
 * the same segment, both selected for h (and key <= query when causal). */
typedef struct {
  int64_t seqlen; /* n >= 1 tokens                                       */
  int block_size; /* B: a power of two, 1..DA_PATTERN_MAX_BLOCK_SIZE    */
  int num_heads;  /* 1..DA_PATTERN_MAX_HEADS                            */
  int causal;     /* nonzero: column j allowed only when j <= row i      */
  da_pattern_type type;
  double local_density;                 /* [0, 1] kept fraction of the local domain        */
  double global_density;                /* [0, 1] fraction of block indices that are global */
  double inter_node_density;            /* [0, 1] kept fraction of the remote domain       */
  int local_window_blocks;              /* >= 0: window radius, in blocks, of the local structure */
  int num_patterns;                     /* 0..DA_MAX_PATTERNS dilated (w, r) pairs, in tokens */
  int segment_lengths[DA_MAX_PATTERNS]; /* w >= 1 */
  int dilation_rates[DA_MAX_PATTERNS];  /* 1 <= r <= w */
  da_attention_mode mode;
  da_offset_policy offset_policy;
  int world_size;       /* W, 1..DA_PATTERN_MAX_WORLD_SIZE                       */
  int local_world_size; /* ranks per node: 1..W, W % local_world_size == 0      */
  uint64_t seed;        /* phases of the inter-node links                        */
  /* ADAPTIVE_LOAD_BALANCED only (NULL otherwise): world_size finite scales >= 0,
   * borrowed for the call; rank p's rows use min(1, density x scale[p]) for the
   * local and inter-node levels. NULL means every scale is 1. */
  const double* rank_density_scale;
  /* Block rows to build: [row_begin, row_end); row_end = 0 means nb. */
  int64_t row_begin;
  int64_t row_end;
} da_pattern_config;

/* Defaults: seqlen 0 and num_heads 0 (the caller must set them), B = 128, not
 * causal, HIERARCHICAL, densities 0.4 / 0.1 / 0.05 (local / global / inter-node),
 * window 4 blocks, no dilated patterns, LongNet mode, default offsets, W = 1 on one
 * node, seed 0, no scales, all rows. */
DA_API da_pattern_config da_pattern_config_default(void);

/* Checks every rule above. DA_STATUS_INVALID_ARGUMENT with a sentence on the first
 * broken one. */
DA_API da_status da_pattern_config_validate(const da_pattern_config* config);

/* The block rows [begin, end) rank `rank` owns (its shard of the even split). */
DA_API da_status da_pattern_shard_rows(const da_pattern_config* config, int rank,
                                       int64_t* row_begin, int64_t* row_end);

/* Names as the configs spell them ("hierarchical", "node_local", ...; "local",
 * "global", "inter_node"); "unknown" for a value out of range. */
DA_API const char* da_pattern_type_name(da_pattern_type type);
DA_API const char* da_pattern_level_name(da_pattern_level level);

/* ------------------------------------------------------------------ layouts */

typedef struct da_pattern_layout da_pattern_layout;

/* The compressed (BSR) form of a layout, all heads in one array. Rows are the
 * layout's block rows [row_begin, row_end); R = row_end - row_begin. Head h, block
 * row i keeps columns col_indices[a .. b) with a = row_offsets[h * (R + 1) + i -
 * row_begin] and b the next entry; columns are strictly increasing, offsets are
 * absolute (row_offsets[0] = 0, each head's last entry is the next head's first,
 * the very last is nnz). levels[x] is the da_pattern_level of col_indices[x]. */
typedef struct {
  int64_t seqlen;
  int block_size;
  int num_heads;
  int causal;
  int64_t num_blocks; /* nb = ceil(seqlen / block_size): block rows and columns */
  int64_t row_begin;
  int64_t row_end;
  const int64_t* row_offsets; /* num_heads * (R + 1)                          */
  const int32_t* col_indices; /* nnz                                          */
  const uint8_t* levels;      /* nnz; may be NULL in da_pattern_layout_from_bsr */
  int64_t nnz;
} da_pattern_bsr;

/* What a layout holds. Counts are summed over heads and the layout's rows. */
typedef struct {
  int64_t num_blocks;                     /* nb                                    */
  int64_t rows;                           /* block rows present (R)                */
  int64_t kept[DA_PATTERN_NUM_LEVELS];    /* kept blocks per level                 */
  int64_t domain[DA_PATTERN_NUM_LEVELS];  /* candidates per level (global: kept)   */
  int64_t allowed;                        /* blocks allowed by causality           */
  int64_t nnz;                            /* sum of kept                           */
  int64_t global_indices;                 /* designated global block indices       */
  int64_t min_row_blocks, max_row_blocks; /* over (head, row)                      */
  int64_t forced_rows;                    /* (head, row) kept only for the >= 1 rule */
  double density;                         /* nnz / allowed                         */
  size_t bytes;                           /* memory the layout holds               */
} da_pattern_stats;

/* Builds the layout of config (OpenMP over heads and rows; the result does not
 * depend on the thread count). *layout holds one reference: release it. */
DA_API da_status da_pattern_layout_create(const da_pattern_config* config,
                                          da_pattern_layout** layout);

/* The exact stats da_pattern_layout_create would produce, without building the
 * columns (O(rows) time, O(1) memory): plan memory before generating. */
DA_API da_status da_pattern_count(const da_pattern_config* config, da_pattern_stats* stats);

/* A layout from caller-made BSR arrays (copied), validated: offsets as described
 * above, columns strictly increasing and < num_blocks, j <= i when causal, levels
 * < DA_PATTERN_NUM_LEVELS. Rows may be empty (attention then gives out = 0 and
 * lse = -inf for their queries). levels NULL tags every block LOCAL. */
DA_API da_status da_pattern_layout_from_bsr(const da_pattern_bsr* bsr, da_pattern_layout** layout);

/* Adds a reference and returns layout (NULL stays NULL). Thread-safe. */
DA_API da_pattern_layout* da_pattern_layout_retain(da_pattern_layout* layout);

/* Drops a reference; the last one frees the layout. NULL is ignored. Thread-safe. */
DA_API void da_pattern_layout_release(da_pattern_layout* layout);

/* Views into the layout (valid while a reference is held). */
DA_API da_status da_pattern_layout_bsr(const da_pattern_layout* layout, da_pattern_bsr* bsr);
DA_API da_status da_pattern_layout_stats(const da_pattern_layout* layout, da_pattern_stats* stats);

/* ------------------------------------------------------------- load balance */

/* A split of rows into contiguous parts. */
typedef struct {
  int64_t total_work;
  int64_t max_part_work; /* the heaviest part                              */
  int64_t min_part_work;
  double mean_work; /* total_work / num_parts                         */
  double imbalance; /* max_part_work / mean_work - 1 (0 when total is 0) */
  int bound_met;    /* max_part_work <= (1 + threshold) * mean_work   */
} da_pattern_partition_report;

/* Splits rows 0..rows-1 with work row_work[i] >= 0 into num_parts contiguous ranges
 * [boundaries[p], boundaries[p+1]) (boundaries: num_parts + 1 entries, first 0,
 * last rows) whose heaviest part is as light as any contiguous split can make it
 * (exact: binary search on the bound with a greedy check). Whenever
 * ceil(mean) + max row - 1 <= (1 + threshold) * mean, the bound is met. A part is
 * empty only when there are fewer rows than parts. report may be NULL. */
DA_API da_status da_pattern_partition_work(const int64_t* row_work, int64_t rows, int num_parts,
                                           double threshold, int64_t* boundaries,
                                           da_pattern_partition_report* report);

/* Work of each of the layout's rows: kept blocks summed over heads (R entries). */
DA_API da_status da_pattern_row_work(const da_pattern_layout* layout, int64_t* row_work);

/* da_pattern_partition_work over the layout's rows, boundaries in absolute block
 * rows (first row_begin, last row_end): split rows across ranks, or across thread
 * blocks of a kernel. */
DA_API da_status da_pattern_partition_rows(const da_pattern_layout* layout, int num_parts,
                                           double threshold, int64_t* boundaries,
                                           da_pattern_partition_report* report);

/* What one adaptation step saw and did. */
typedef struct {
  double mean_time;
  double imbalance; /* max time / mean time - 1                          */
  int triggered;    /* imbalance > threshold: scales were changed         */
  int ranks_decreased;
  int ranks_increased;
} da_pattern_adapt_report;

/* One step of the adaptive controller, a pure function (every rank that feeds it
 * the same all-gathered times gets the same scales). When max time exceeds
 * (1 + threshold) x the mean, every rank slower than (1 + threshold) x mean has its
 * scale multiplied by (1 - rate) and every rank faster than (1 - threshold) x mean
 * by (1 + rate), clamped to [min_scale, max_scale]; otherwise nothing changes.
 * times_ms: world_size finite values >= 0 with a positive sum; scales: world_size
 * current scales, updated in place. report may be NULL. */
DA_API da_status da_pattern_adapt_scales(const double* times_ms, int world_size, double threshold,
                                         double rate, double min_scale, double max_scale,
                                         double* scales, da_pattern_adapt_report* report);

/* -------------------------------------------------------------------- cache */

typedef struct da_pattern_cache da_pattern_cache;

typedef struct {
  uint64_t hits;
  uint64_t misses;    /* lookups that built a layout                          */
  uint64_t evictions; /* entries dropped to stay within capacity              */
  uint64_t uncached;  /* layouts larger than the whole capacity, returned unstored */
  size_t entries;
  size_t bytes; /* sum of the stored layouts' bytes (<= capacity_bytes) */
  size_t capacity_bytes;
} da_pattern_cache_stats;

/* An LRU cache of layouts keyed by every field of da_pattern_config (the scales'
 * values included), holding at most capacity_bytes of layouts. Thread-safe. */
DA_API da_status da_pattern_cache_create(size_t capacity_bytes, da_pattern_cache** cache);

/* Frees the cache. Layouts the caller still holds stay valid until released. */
DA_API void da_pattern_cache_destroy(da_pattern_cache* cache);

/* The layout of config: the stored one (a hit) or a new one, built outside the
 * lock and stored, evicting least recently used entries to fit. *layout holds a
 * reference for the caller: release it. An evicted layout stays valid for whoever
 * holds it. Two threads missing on the same key may both build; one copy is kept. */
DA_API da_status da_pattern_cache_get(da_pattern_cache* cache, const da_pattern_config* config,
                                      da_pattern_layout** layout);

DA_API da_status da_pattern_cache_get_stats(da_pattern_cache* cache, da_pattern_cache_stats* stats);

/* Drops every entry (not the counters). */
DA_API void da_pattern_cache_clear(da_pattern_cache* cache);

/* ---------------------------------------------------------------- generator */

typedef struct da_pattern_generator da_pattern_generator;

typedef struct {
  da_pattern_cache* shared_cache; /* borrowed (outlives the generator), or NULL:  */
  size_t cache_bytes;             /* ... an own cache of this capacity (0: none)   */
  double load_balance_threshold;  /* >= 0, for adaptation                          */
  double adaptive_rate;           /* [0, 1)                                        */
  double min_scale, max_scale;    /* 0 < min_scale <= 1 <= max_scale               */
} da_pattern_generator_options;

/* Defaults: own cache of 256 MiB, threshold 0.15, rate 0.05, scales in [0.05, 20]. */
DA_API da_pattern_generator_options da_pattern_generator_options_default(void);

/* A generator for config (copied; its rank_density_scale and row range are
 * ignored: the generator owns the scales, all 1 at first, and rows are asked per
 * call). Thread-safe. */
DA_API da_status da_pattern_generator_create(const da_pattern_config* config,
                                             const da_pattern_generator_options* options,
                                             da_pattern_generator** generator);

DA_API void da_pattern_generator_destroy(da_pattern_generator* generator);

/* The layout of rows [row_begin, row_end) (row_end 0: to nb) under the current
 * scales, through the cache. Release it. */
DA_API da_status da_pattern_generator_get(da_pattern_generator* generator, int64_t row_begin,
                                          int64_t row_end, da_pattern_layout** layout);

/* Feeds one step of measured per-rank times (all-gathered: identical on every
 * rank) to the controller (da_pattern_adapt_scales). Only for
 * DA_PATTERN_ADAPTIVE_LOAD_BALANCED. report may be NULL. */
DA_API da_status da_pattern_generator_adapt(da_pattern_generator* generator, const double* times_ms,
                                            int world_size, da_pattern_adapt_report* report);

/* Copies the current scales (world_size entries). */
DA_API da_status da_pattern_generator_scales(da_pattern_generator* generator, double* scales,
                                             int world_size);

DA_API da_status da_pattern_generator_cache_stats(da_pattern_generator* generator,
                                                  da_pattern_cache_stats* stats);

/* ------------------------------------------------- block-sparse attention */

/* Tensor shapes for attention over a layout; tensors as in dilated_attention.h:
 * q, out, dq [batch * seqlen, num_heads, head_dim]; k, v, dk, dv
 * [batch * seqlen, num_kv_heads, head_dim]; lse [batch * seqlen, num_heads].
 * Every sequence of the batch uses the layout (its seqlen and causality). */
typedef struct {
  int64_t batch;       /* sequences of layout seqlen tokens, >= 1         */
  int num_heads;       /* must equal the layout's                         */
  int num_kv_heads;    /* 0 means num_heads; num_heads % num_kv_heads == 0 */
  int head_dim;        /* 1..DA_MAX_HEAD_DIM                              */
  float softmax_scale; /* > 0 and finite; 0 means 1/sqrt(head_dim)        */
} da_pattern_attention_params;

/* Defaults: batch 1, heads 0 (must be set), kv heads 0 (= heads), head_dim 0
 * (must be set), scale 1/sqrt(head_dim). */
DA_API da_pattern_attention_params da_pattern_attention_params_default(void);

/* CPU forward, float32: for query token p of head h, one softmax over every key
 * token t of the blocks its block row keeps (t <= p when causal). Writes all of
 * out and, when lse is not NULL, lse (natural log of the denominator, scale
 * applied; -inf and out = 0 where no key is allowed). The layout must hold every
 * row. OpenMP; bit-identical for any thread count. Outputs must not overlap inputs. */
DA_API da_status da_pattern_attention_forward_cpu(const da_pattern_layout* layout,
                                                  const da_pattern_attention_params* params,
                                                  const float* q, const float* k, const float* v,
                                                  float* out, float* lse);

/* CPU backward, float32: the exact gradient of the forward function. out and lse
 * are the forward's results; dout = dL/dout. Overwrites dq, dk, dv (GQA: dk, dv sum
 * over the query heads sharing a kv head). Bit-identical for any thread count. */
DA_API da_status da_pattern_attention_backward_cpu(const da_pattern_layout* layout,
                                                   const da_pattern_attention_params* params,
                                                   const float* q, const float* k, const float* v,
                                                   const float* out, const float* lse,
                                                   const float* dout, float* dq, float* dk,
                                                   float* dv);

#ifdef __cplusplus
}
#endif

#endif /* DA_PATTERN_H */
