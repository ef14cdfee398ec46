/* options.h: the `da` command's configuration and its one parser. Command-line
 * flags and the keys of a --config JSON file are described by one table
 * (options.c), so both sources, the help text and the checks agree. */
#ifndef DA_TOOLS_OPTIONS_H
#define DA_TOOLS_OPTIONS_H

#include <stdint.h>
#include <stdio.h>

#include "attention/dilated_attention.h"

/* Exit statuses of every subcommand. */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_FAIL = 1,  /* check failed, library or system error */
  CLI_EXIT_USAGE = 2  /* bad flag, bad value, bad config file, invalid parameters */
};

/* Subcommands that take options; a bit mask in the option table. */
typedef enum { CLI_CMD_DEMO = 1u << 0, CLI_CMD_BENCH = 1u << 1 } cli_command;

typedef enum { CLI_OUTPUT_TABLE = 0, CLI_OUTPUT_JSON = 1, CLI_OUTPUT_CSV = 2 } cli_output;

/* Where the attention runs. AUTO: the GPU when one is there and the CUDA passes
 * serve the configuration (da_attention_cuda_supported), else the CPU. */
typedef enum { CLI_BACKEND_AUTO = 0, CLI_BACKEND_CPU = 1, CLI_BACKEND_CUDA = 2 } cli_backend;

typedef struct {
  /* What to compute (becomes da_attention_params / da_attention_batch). */
  int64_t seqlen;
  int64_t batch;
  int heads;
  int kv_heads; /* 0 means heads */
  int head_dim;
  int segment_lengths[DA_MAX_PATTERNS];
  int num_segment_lengths;
  int dilation_rates[DA_MAX_PATTERNS];
  int num_dilation_rates;
  int mode;          /* da_attention_mode */
  int offset_policy; /* da_offset_policy */
  int causal;
  double softmax_scale; /* 0 means 1/sqrt(head_dim) */
  /* How to run it. */
  int backend; /* cli_backend */
  int dtype;   /* da_dtype of the CUDA passes (bf16 or f16); the CPU computes in f32 */
  int warmup;
  int repeats;
  int backward;
  int threads; /* 0: OpenMP's default */
  int64_t seed;
  int output; /* cli_output */
  int ceiling;
  int help;
  /* Bookkeeping: --config path (points into argv) and which option-table
   * entries the command line or the config file set (bit i: entry i). */
  const char* config_path;
  uint64_t set_mask;
} cli_options;

/* Defaults of `command`: the LongNet configuration (n = 8192, h = 12, h_kv = h,
 * d = 64, w = 2048..32768, r = 1..16), backend auto, bf16 on the GPU, 1 warm-up,
 * 5 repeats, seed 1. */
void cli_options_default(cli_command command, cli_options* options);

/* Fills options from defaults, then the --config file (bench), then argv
 * (argv[0] is the first flag, not the program). On a usage error prints one line
 * "da <command>: ..." to stderr and returns CLI_EXIT_USAGE; else CLI_EXIT_OK.
 * --help sets options->help and stops parsing. */
int cli_options_parse(cli_command command, int argc, char** argv, cli_options* options);

/* Whether any option that describes the workload (not --backend, --threads,
 * --json, --csv, --ceiling) was given on the command line or in a config file. */
int cli_options_any_workload(const cli_options* options);

/* The flag list of `command` with defaults, for --help. */
void cli_options_print_flags(cli_command command, FILE* out);

/* The library's view. The params borrow options' pattern arrays. */
da_attention_params cli_options_params(const cli_options* options);
da_attention_batch cli_options_batch(const cli_options* options);

/* Names of the enum values as the flags spell them. */
const char* cli_mode_name(int mode);
const char* cli_offset_name(int offset_policy);
const char* cli_backend_name(int backend);

/* One usage-error line, "da <command>: <message>", to stderr; returns
 * CLI_EXIT_USAGE. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
int cli_usage_error(const char* command, const char* fmt, ...);

#endif /* DA_TOOLS_OPTIONS_H */
