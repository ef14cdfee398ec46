/* report.h: everything the `da` command prints about a run: the human table,
 * JSON, CSV, the measured ceiling, library errors, and the stderr progress bar.
 * One printer per format, shared by demo and bench. */
#ifndef DA_TOOLS_REPORT_H
#define DA_TOOLS_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "attention/dilated_attention.h"
#include "tools/da/ceiling.h"
#include "tools/da/options.h"
#include "tools/da/workload.h"

/* demo's comparison of a slice of the forward pass with the dense oracle. */
typedef struct {
  int64_t tokens;         /* query tokens checked (all heads of each) */
  char slices[96];        /* e.g. "0-10, 4091-4101, 8182-8191" */
  double out_max_abs_err; /* max |out - ref| */
  double out_rel_err;     /* max |out - ref| / max |ref| */
  double lse_max_abs_err;
  double lse_rel_err;
  double tolerance; /* on both relative errors */
  int64_t nonfinite_outputs; /* NaN/inf anywhere in out, dq, dk, dv */
  int pass;
} cli_check;

typedef struct {
  const char* command;   /* "demo" or "bench" */
  char device[320];      /* where it ran, e.g. "CPU: AMD EPYC (2 OpenMP threads)" */
  char gpu_name[320];    /* a GPU the probe found but that was not used, or "" */
  int threads;
  const cli_options* options;
  float softmax_scale; /* resolved: 1/sqrt(d) when options say 0 */
  int64_t tokens;
  int64_t pairs;       /* da_attention_count_pairs */
  double forward_flops; /* da_attention_count_flops, with_backward = 0 */
  double forward_backward_flops;
  cli_timings timings;
  double peak_rss_mib;
  const cli_ceiling* ceiling; /* NULL: not measured */
  const cli_check* check;     /* NULL: no oracle check */
} cli_report;

/* Fills the description every report shares (device, threads, GPU probe,
 * resolved scale, token and work counts) after checking the options'
 * parameters with da_attention_validate. The threads are applied first
 * (--threads). Returns CLI_EXIT_OK, or CLI_EXIT_USAGE / CLI_EXIT_FAIL with one
 * line printed to stderr. */
int cli_report_init(const char* command, const cli_options* options, cli_report* report);

/* One line saying a GPU was found but the CPU backend runs, when one was. */
void cli_report_print_gpu_notice(FILE* out, const cli_report* report);

void cli_report_print_table(FILE* out, const cli_report* report);
void cli_report_print_json(FILE* out, const cli_report* report);
void cli_report_print_csv(FILE* out, const cli_report* report);
void cli_ceiling_print(FILE* out, int output /* cli_output */, const cli_ceiling* ceiling);

/* "da <command>: <call> failed: <DA_STATUS_...>: <da_last_error()>" on stderr. */
void cli_library_error(const char* command, const char* call, da_status status);

/* A one-line progress bar on stderr, drawn only when stderr is a terminal and
 * the estimate exceeds ~2 s. Zero-initialised = disabled. */
typedef struct {
  int enabled;
  int total, done;
  const char* label;
} cli_progress;

void cli_progress_begin(cli_progress* progress, const char* label, int total_steps,
                        double estimated_total_ms);
void cli_progress_step(cli_progress* progress);
void cli_progress_end(cli_progress* progress); /* erases the bar */

#endif /* DA_TOOLS_REPORT_H */
