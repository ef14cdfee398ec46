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

/* demo's check of its results against a reference: the CPU backend's forward
 * slice against the dense oracle, or the GPU's every output against the CPU
 * passes on the same rounded inputs. */
#define CLI_CHECK_MAX_ROWS 5
typedef struct {
  const char* name;   /* "out", "lse", "dq", "dk", "dv" */
  double max_abs_err; /* max |got - ref| (finite entries) */
  double rel_err;     /* by the check's metric */
} cli_check_row;

typedef struct {
  char scope[192];    /* what was compared with what, for the table */
  const char* metric; /* "rel err" (max |err| / max |ref|) or "rel L2 err" */
  cli_check_row rows[CLI_CHECK_MAX_ROWS];
  int num_rows;
  double tolerance;           /* on every row's rel_err */
  int64_t nonfinite_outputs;  /* NaN/inf anywhere in out, dq, dk, dv */
  int64_t lse_inf_mismatches; /* lse -inf or NaN on one side only; -1: not counted */
  const char* note;           /* after the verdict, or NULL */
  int pass;
} cli_check;

typedef struct {
  const char* command;    /* "demo" or "bench" */
  char device[352];       /* where it ran, e.g. "CPU: AMD EPYC (2 OpenMP threads)" */
  char gpu_name[320];     /* the GPU the probe found, or "" */
  int backend;            /* resolved: CLI_BACKEND_CPU or CLI_BACKEND_CUDA */
  da_dtype dtype;         /* of the tensors: f32 on the CPU */
  char backend_note[480]; /* why auto chose the CPU, or "" */
  int threads;
  const cli_options* options;
  float softmax_scale; /* resolved: 1/sqrt(d) when options say 0 */
  int64_t tokens;
  int64_t pairs;       /* da_attention_count_pairs */
  double forward_flops; /* da_attention_count_flops, with_backward = 0 */
  double forward_backward_flops;
  cli_timings timings;
  double peak_rss_mib;
  double device_tensor_mib; /* CUDA: the tensors on the GPU; NAN on the CPU */
  double peak_pool_mib;     /* CUDA: peak workspace of the device pool; NAN on the CPU */
  const cli_ceiling* ceiling; /* NULL: not measured */
  const cli_check* check;     /* NULL: no check */
} cli_report;

/* Fills the description every report shares (backend, device, threads, GPU
 * probe, resolved scale, token and work counts) after checking the options'
 * parameters with da_attention_validate. The threads are applied first
 * (--threads). The backend: --backend cpu; --backend cuda, which fails when there
 * is no GPU or the CUDA passes cannot serve the configuration in options->dtype;
 * auto, which is cuda when that would succeed and cpu otherwise (backend_note
 * says why). Returns CLI_EXIT_OK, or CLI_EXIT_USAGE / CLI_EXIT_FAIL with one line
 * printed to stderr. */
int cli_report_init(const char* command, const cli_options* options, cli_report* report);

/* One line saying a GPU was found but the CPU backend runs, and why, when so. */
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
