/* da_config.h: every setting of distributed sparse dilated attention in one
 * validated value, loaded from JSON and dumped back. docs/dist_config.md has the
 * JSON schema with defaults; this header is the contract.
 *
 * A config has three sections:
 *   attention  what to compute (the fields of da_attention_params);
 *   sparse     the block-sparse pattern (see sparse_pattern/da_pattern.h for what
 *              the densities mean) and the distributed runtime's knobs;
 *   topology   world size, rank, ranks per node: unset fields come from the
 *              launcher's environment (da_config_resolve_topology).
 * Names say what they mean: *_density are kept fractions. The original system's
 * *_sparsity keys (which held densities too) are accepted when loading, with a
 * deprecation warning through the caller's callback; the library never prints.
 *
 * Every fallible call returns a da_status; on failure da_last_error() names the
 * field by its JSON path ("sparse.block_size"), its value and the rule. Configs are
 * plain values; all functions are thread-safe (they touch only their arguments,
 * and the process environment only through getenv when no lookup is given). */
#ifndef DA_CONFIG_H
#define DA_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "attention/dilated_attention.h"
#include "common/da_common.h"
#include "sparse_pattern/da_pattern.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest seed a JSON number carries exactly. */
#define DA_CONFIG_MAX_SEED (UINT64_C(1) << 53)

typedef struct {
  int segment_lengths[DA_MAX_PATTERNS]; /* w_i >= 1                          */
  int num_segment_lengths;              /* 1..DA_MAX_PATTERNS               */
  int dilation_rates[DA_MAX_PATTERNS];  /* 1 <= r_i <= w_i                  */
  int num_dilation_rates;               /* = num_segment_lengths            */
  da_attention_mode mode;               /* "longnet" | "head_group"         */
  da_offset_policy offset_policy;       /* "default" | "head" | "group" | "block" */
  int causal;
  double softmax_scale; /* > 0 and finite, or 0 for 1/sqrt(head_dim)          */
  int num_heads;        /* >= 1                                               */
  int num_kv_heads;     /* 0 (= num_heads) or a divisor of num_heads          */
  int head_dim;         /* 1..DA_MAX_HEAD_DIM                                 */
  double dropout;       /* attention dropout: must be 0 (no backend has it)   */
} da_config_attention;

typedef struct {
  da_pattern_type pattern_type;
  int block_size;                    /* a power of two, 1..DA_PATTERN_MAX_BLOCK_SIZE     */
  double density;                    /* (0, 1]: the overall kept fraction budgeted for   */
  double local_density;              /* [0, 1]                                           */
  double global_density;             /* [0, 1]                                           */
  double inter_node_density;         /* [0, 1], <= global_density                       */
  int local_window_blocks;           /* >= 0                                             */
  uint64_t seed;                     /* <= DA_CONFIG_MAX_SEED                            */
  double gradient_compression_ratio; /* (0, 1]: kept fraction of gradient values  */
  double load_balance_threshold;     /* [0, 1]: tolerated max/mean - 1            */
  double adaptive_rate;              /* [0, 1): step of the adaptive controller   */
  int enable_async_communication;
  int enable_gradient_compression;
  int enable_load_balancing; /* must be on for adaptive_load_balanced            */
  int enable_memory_pool;
  int enable_pinned_memory;
  double gradient_bucket_size_mb; /* (0, 65536]                                   */
  int gradient_bucket_count;      /* 1..65536                                     */
} da_config_sparse;

/* Unset (taken from the environment by da_config_resolve_topology): world_size 0,
 * rank -1, local_world_size 0. */
typedef struct {
  int world_size;       /* 1..DA_PATTERN_MAX_WORLD_SIZE                         */
  int rank;             /* 0..world_size-1                                      */
  int local_world_size; /* ranks per node: divides world_size                   */
} da_config_topology;

typedef struct {
  da_config_attention attention;
  da_config_sparse sparse;
  da_config_topology topology;
} da_config;

/* The defaults, all valid:
 *   attention: LongNet's w = 2048, 4096, 8192, 16384, 32768 and r = 1, 2, 4, 8, 16,
 *     mode longnet, offset default, not causal, scale 0 (1/sqrt(d)), 12 heads, kv
 *     heads 0 (= 12), head_dim 64, dropout 0;
 *   sparse: hierarchical, block 128, density 0.25, local 0.4, global 0.1,
 *     inter-node 0.05, window 4 blocks, seed 0, gradient compression ratio 0.1,
 *     load-balance threshold 0.15, adaptive rate 0.05, every enable flag on,
 *     gradient buckets of 25 MB, 32 of them;
 *   topology: unset (from the environment). */
DA_API da_config da_config_default(void);

/* Checks every rule above (and da_attention_validate on the attention section).
 * Unset topology fields are valid. DA_STATUS_INVALID_ARGUMENT naming the first
 * broken rule; DA_STATUS_NOT_SUPPORTED for a nonzero dropout. */
DA_API da_status da_config_validate(const da_config* config);

/* Looks an environment variable up: its value or NULL. ctx is the caller's. */
typedef const char* (*da_config_getenv_fn)(void* ctx, const char* name);

/* Fills the unset topology fields, each from the first of: Open MPI's
 * OMPI_COMM_WORLD_SIZE / OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_LOCAL_SIZE, then
 * WORLD_SIZE / RANK / LOCAL_WORLD_SIZE (torchrun), then the defaults world_size 1,
 * rank 0, local_world_size = world_size (one node). lookup NULL uses getenv (not
 * thread-safe against setenv elsewhere; tests pass their own). A variable that is
 * set but not a decimal integer in range is an error naming it and its value; the
 * resolved topology is then validated. */
DA_API da_status da_config_resolve_topology(da_config* config, da_config_getenv_fn lookup,
                                            void* ctx);

/* Receives one deprecation warning (one line, no newline). */
typedef void (*da_config_warning_fn)(void* ctx, const char* message);

typedef struct {
  da_config_warning_fn warning; /* NULL: warnings are dropped */
  void* warning_ctx;
} da_config_load_options;

/* Parses a JSON object {"attention": {...}, "sparse": {...}, "topology": {...}}
 * (every section and key optional, defaults fill the rest) into *config and
 * validates it. Errors: DA_STATUS_PARSE_ERROR for malformed JSON with its line and
 * column ("<string>:3:17: ..."), a non-object, an unknown key at any level or a
 * duplicate key (named by its path, "sparse.local_desnity"), a wrong type or an
 * out-of-range number; then da_config_validate's statuses. *config is written only
 * on success. options may be NULL. */
DA_API da_status da_config_load_string(const char* json, const da_config_load_options* options,
                                       da_config* config);

/* The same from a file; messages start with its path. DA_STATUS_IO_ERROR when it
 * cannot be read. */
DA_API da_status da_config_load_file(const char* path, const da_config_load_options* options,
                                     da_config* config);

/* The config as indented JSON with every field (the effective config: defaults
 * filled in; unset topology fields are null). Loading it gives the same config
 * back. *json is the caller's: free it with da_config_free_json. */
DA_API da_status da_config_to_json(const da_config* config, char** json);

DA_API void da_config_free_json(char* json);

/* `da config check FILE`: loads FILE (warnings to `warnings` as "warning: ...\n"
 * lines when not NULL), resolves the topology from the process environment,
 * validates, and writes the effective config as JSON plus a newline to out. On
 * failure writes nothing to out and leaves the sentence in da_last_error(). */
DA_API da_status da_config_check_file(const char* path, FILE* out, FILE* warnings);

/* The attention section as da_attention_params. The params borrow config's
 * pattern arrays: keep config alive and unchanged while using them. */
DA_API da_status da_config_attention_params(const da_config* config, da_attention_params* params);

/* The pattern generator's config for sequences of seqlen tokens: block size,
 * densities, window, seed and type from sparse; heads, causality and the dilated
 * patterns from attention; world and node size from topology (which must be
 * resolved). All rows, no rank scales. Validated (da_pattern_config_validate). */
DA_API da_status da_config_to_pattern(const da_config* config, int64_t seqlen,
                                      da_pattern_config* pattern);

/* The budget check: the exact stats of the layout config would produce for seqlen
 * (da_pattern_count; stats may be NULL), and DA_STATUS_INVALID_ARGUMENT when its
 * overall density exceeds sparse.density. The three level densities are exact,
 * so the overall one follows from them and the topology; this says whether it
 * fits what was budgeted. */
DA_API da_status da_config_check_budget(const da_config* config, int64_t seqlen,
                                        da_pattern_stats* stats);

/* JSON spellings of the enums ("longnet", "head", "bandwidth_aware", ...), and
 * back: DA_STATUS_INVALID_ARGUMENT for an unknown name. */
DA_API const char* da_config_mode_name(da_attention_mode mode);
DA_API const char* da_config_offset_name(da_offset_policy policy);
DA_API da_status da_config_pattern_type_from_name(const char* name, da_pattern_type* type);

#ifdef __cplusplus
}
#endif

#endif /* DA_CONFIG_H */
