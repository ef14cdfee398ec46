/* da demo: the LongNet configuration end to end on this machine, forward and
 * backward timed, a slice of the forward checked against the dense oracle. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/dense_oracle.h"
#include "tools/da/commands.h"
#include "tools/da/options.h"
#include "tools/da/report.h"
#include "tools/da/sysinfo.h"
#include "tools/da/workload.h"

/* Relative tolerance on out and lse: float32 accumulation over ~10^4 keys stays
 * near 1e-6; 1e-4 leaves room without hiding a wrong mask or a lost pattern. */
#define CHECK_TOLERANCE 1e-4
#define CHECK_TOKENS 32 /* query tokens the oracle recomputes, in 3 slices */

static void print_help(FILE* out) {
  fprintf(out,
          "usage: da demo [--n N] [--threads T]\n"
          "\n"
          "Runs LongNet dilated attention in its paper configuration: segment lengths\n"
          "2048,4096,8192,16384,32768 with dilation rates 1,2,4,8,16, h = h_kv = 12,\n"
          "d = 64, batch 1, not causal, LongNet mode, on random inputs (seed 1). Times the\n"
          "forward and the backward pass on the CPU backend (a GPU, when present, is\n"
          "reported; the CUDA kernels are not built yet) and checks 32 query tokens of\n"
          "the forward (out and lse, every head) against the double-precision dense\n"
          "oracle. Prints device, configuration, time, tokens/s, effective TFLOP/s\n"
          "(docs/semantics.md, \"Counting work\"), peak memory and the check's errors.\n"
          "Exit status: 0 PASS, 1 FAIL or library error, 2 usage error.\n"
          "\n"
          "flags:\n");
  cli_options_print_flags(CLI_CMD_DEMO, out);
}

static double* to_double(const float* data, size_t count) {
  double* copy = malloc(count * sizeof *copy);
  if (copy != NULL)
    for (size_t i = 0; i < count; ++i) copy[i] = data[i];
  return copy;
}

/* |a - b| with NaN counted as infinitely wrong, and -inf == -inf (empty rows). */
static double abs_error(double got, double want) {
  if (isinf(want) && got == want) return 0.0;
  double diff = fabs(got - want);
  return isnan(diff) ? INFINITY : diff;
}

static int64_t count_nonfinite(const float* data, size_t count) {
  int64_t bad = 0;
  for (size_t i = 0; i < count; ++i) bad += !isfinite(data[i]);
  return bad;
}

/* Splits the first min(CHECK_TOKENS, tokens) query tokens of the check over the
 * start, middle and end of the token range. Returns the number of slices. */
static int pick_slices(int64_t tokens, int64_t begin[3], int64_t end[3]) {
  if (tokens <= CHECK_TOKENS) {
    begin[0] = 0;
    end[0] = tokens;
    return 1;
  }
  const int64_t mid = tokens / 2;
  begin[0] = 0, end[0] = 11;
  begin[1] = mid - 5, end[1] = mid + 6;
  begin[2] = tokens - 10, end[2] = tokens;
  return 3;
}

static da_status check_forward(const da_attention_params* params,
                               const da_attention_batch* batch, const cli_tensors* t,
                               cli_check* check) {
  const size_t h = (size_t)t->heads, d = (size_t)t->head_dim;
  const size_t q_count = (size_t)t->tokens * h * d;
  const size_t kv_count = (size_t)t->tokens * (size_t)t->kv_heads * d;
  double* q = to_double(t->q, q_count);
  double* k = to_double(t->k, kv_count);
  double* v = to_double(t->v, kv_count);
  double* out = malloc((size_t)CHECK_TOKENS * h * d * sizeof *out);
  double* lse = malloc((size_t)CHECK_TOKENS * h * sizeof *lse);
  da_status status = DA_STATUS_OUT_OF_MEMORY;
  double out_max_ref = 0.0, lse_max_ref = 0.0;
  int64_t begin[3], end[3];
  const int slices = pick_slices(t->tokens, begin, end);
  check->tokens = 0;
  check->slices[0] = '\0';
  if (q == NULL || k == NULL || v == NULL || out == NULL || lse == NULL) goto done;
  for (int s = 0; s < slices; ++s) {
    status = da_oracle_forward(params, batch, q, k, v, begin[s], end[s], out, lse);
    if (status != DA_STATUS_SUCCESS) goto done;
    const size_t rows = (size_t)(end[s] - begin[s]);
    const float* got_out = t->out + (size_t)begin[s] * h * d;
    const float* got_lse = t->lse + (size_t)begin[s] * h;
    for (size_t i = 0; i < rows * h * d; ++i) {
      check->out_max_abs_err = fmax(check->out_max_abs_err, abs_error(got_out[i], out[i]));
      out_max_ref = fmax(out_max_ref, fabs(out[i]));
    }
    for (size_t i = 0; i < rows * h; ++i) {
      check->lse_max_abs_err = fmax(check->lse_max_abs_err, abs_error(got_lse[i], lse[i]));
      if (isfinite(lse[i])) lse_max_ref = fmax(lse_max_ref, fabs(lse[i]));
    }
    check->tokens += (int64_t)rows;
    size_t used = strlen(check->slices);
    snprintf(check->slices + used, sizeof check->slices - used, "%s%lld-%lld", s ? ", " : "",
             (long long)begin[s], (long long)end[s] - 1);
  }
  /* Relative to the largest reference magnitude; an all-zero reference (no
   * query covered) leaves the absolute error. */
  check->out_rel_err = out_max_ref > 0 ? check->out_max_abs_err / out_max_ref
                                       : check->out_max_abs_err;
  check->lse_rel_err = lse_max_ref > 0 ? check->lse_max_abs_err / lse_max_ref
                                       : check->lse_max_abs_err;
  check->nonfinite_outputs = count_nonfinite(t->out, q_count) +
                             count_nonfinite(t->dq, q_count) +
                             count_nonfinite(t->dk, kv_count) + count_nonfinite(t->dv, kv_count);
  check->tolerance = CHECK_TOLERANCE;
  check->pass = check->out_rel_err <= CHECK_TOLERANCE && check->lse_rel_err <= CHECK_TOLERANCE &&
                check->nonfinite_outputs == 0;
done:
  free(q);
  free(k);
  free(v);
  free(out);
  free(lse);
  return status;
}

int cli_demo_main(int argc, char** argv) {
  cli_options options;
  int rc = cli_options_parse(CLI_CMD_DEMO, argc, argv, &options);
  if (rc != CLI_EXIT_OK) return rc;
  if (options.help) {
    print_help(stdout);
    return CLI_EXIT_OK;
  }
  cli_report report;
  rc = cli_report_init("demo", &options, &report);
  if (rc != CLI_EXIT_OK) return rc;
  const da_attention_params params = cli_options_params(&options);
  const da_attention_batch batch = cli_options_batch(&options);

  printf("da demo: LongNet dilated attention, forward + backward, checked against the dense "
         "oracle\n");
  cli_report_print_gpu_notice(stdout, &report);
  fflush(stdout);

  cli_tensors tensors;
  da_status status = cli_tensors_create(&params, &batch, 1, (uint64_t)options.seed, &tensors);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da demo: out of memory allocating the tensors of %lld tokens\n",
            (long long)report.tokens);
    return CLI_EXIT_FAIL;
  }
  status = cli_time_attention(&params, &batch, &tensors, 0, 1, 1, &report.timings);
  if (status != DA_STATUS_SUCCESS) {
    cli_library_error("demo", "the CPU attention", status);
    cli_tensors_destroy(&tensors);
    return CLI_EXIT_FAIL;
  }
  report.peak_rss_mib = cli_peak_rss_mib(); /* before the oracle's double copies */

  cli_check check = {0};
  status = check_forward(&params, &batch, &tensors, &check);
  cli_tensors_destroy(&tensors);
  if (status != DA_STATUS_SUCCESS) {
    if (status == DA_STATUS_OUT_OF_MEMORY)
      fprintf(stderr, "da demo: out of memory preparing the oracle check\n");
    else
      cli_library_error("demo", "da_oracle_forward", status);
    return CLI_EXIT_FAIL;
  }
  report.check = &check;
  cli_report_print_table(stdout, &report);
  return check.pass ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
