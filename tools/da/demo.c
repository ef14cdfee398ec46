/* da demo: the LongNet configuration end to end on this machine, forward and
 * backward timed and checked: on the GPU (bf16) every output against the CPU
 * passes on the same rounded inputs; on the CPU a slice of the forward against
 * the dense oracle. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/dense_oracle.h"
#include "tools/da/commands.h"
#include "tools/da/gpu.h"
#include "tools/da/options.h"
#include "tools/da/report.h"
#include "tools/da/sysinfo.h"
#include "tools/da/workload.h"

/* Relative tolerance on out and lse: float32 accumulation over ~10^4 keys stays
 * near 1e-6; 1e-4 leaves room without hiding a wrong mask or a lost pattern. */
#define CHECK_TOLERANCE 1e-4
#define CHECK_TOKENS 32 /* query tokens the oracle recomputes, in 3 slices */

/* GPU against CPU on the same rounded inputs, relative L2 error: the GPU rounds
 * out (and P, dS on the way) to 16 bits, unit roundoff 2^-9 (bf16) or 2^-11
 * (f16); the bounds are those of tests/attention/cuda_attention_test.cc. */
#define GPU_TOLERANCE_BF16 1e-2
#define GPU_TOLERANCE_F16 5e-3
#define GPU_WARMUP 1
#define GPU_REPEATS 5

static void print_help(FILE* out) {
  fprintf(out,
          "usage: da demo [--n N] [--backend auto|cpu|cuda] [--threads T]\n"
          "\n"
          "Runs LongNet dilated attention in its paper configuration: segment lengths\n"
          "2048,4096,8192,16384,32768 with dilation rates 1,2,4,8,16, h = h_kv = 12,\n"
          "d = 64, batch 1, not causal, LongNet mode, on random inputs (seed 1).\n"
          "\n"
          "On a GPU the CUDA passes serve (--backend auto, the default, or cuda): times\n"
          "the GPU forward and backward in bf16 (%d warm-up, %d timed, CUDA events),\n"
          "then runs the CPU passes (f32) on the same bf16-rounded inputs and checks\n"
          "every value of out, lse, dq, dk, dv against them (relative L2 error <= %.0e;\n"
          "lse -inf at the same queries; nothing NaN).\n"
          "Otherwise (no GPU, or --backend cpu): times the CPU forward and backward once\n"
          "and checks 32 query tokens of the forward (out and lse, every head) against\n"
          "the double-precision dense oracle.\n"
          "\n"
          "Prints the backend that ran, device, configuration, time, tokens/s, effective\n"
          "TFLOP/s (docs/semantics.md, \"Counting work\"), peak memory and the check's\n"
          "errors. Exit status: 0 PASS, 1 FAIL, library error or --backend cuda without\n"
          "a GPU that serves it, 2 usage error.\n"
          "\n"
          "flags:\n",
          GPU_WARMUP, GPU_REPEATS, GPU_TOLERANCE_BF16);
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
  cli_check_row* out_row = &check->rows[0];
  cli_check_row* lse_row = &check->rows[1];
  double out_max_ref = 0.0, lse_max_ref = 0.0;
  int64_t begin[3], end[3];
  const int slices = pick_slices(t->tokens, begin, end);
  int64_t tokens = 0;
  char ranges[96] = "";
  memset(check, 0, sizeof *check);
  check->num_rows = 2;
  out_row->name = "out";
  lse_row->name = "lse";
  check->metric = "rel err";
  check->lse_inf_mismatches = -1; /* in the max error: -inf against a number is inf */
  if (q == NULL || k == NULL || v == NULL || out == NULL || lse == NULL) goto done;
  for (int s = 0; s < slices; ++s) {
    status = da_oracle_forward(params, batch, q, k, v, begin[s], end[s], out, lse);
    if (status != DA_STATUS_SUCCESS) goto done;
    const size_t rows = (size_t)(end[s] - begin[s]);
    const float* got_out = t->out + (size_t)begin[s] * h * d;
    const float* got_lse = t->lse + (size_t)begin[s] * h;
    for (size_t i = 0; i < rows * h * d; ++i) {
      out_row->max_abs_err = fmax(out_row->max_abs_err, abs_error(got_out[i], out[i]));
      out_max_ref = fmax(out_max_ref, fabs(out[i]));
    }
    for (size_t i = 0; i < rows * h; ++i) {
      lse_row->max_abs_err = fmax(lse_row->max_abs_err, abs_error(got_lse[i], lse[i]));
      if (isfinite(lse[i])) lse_max_ref = fmax(lse_max_ref, fabs(lse[i]));
    }
    tokens += (int64_t)rows;
    size_t used = strlen(ranges);
    snprintf(ranges + used, sizeof ranges - used, "%s%lld-%lld", s ? ", " : "",
             (long long)begin[s], (long long)end[s] - 1);
  }
  snprintf(check->scope, sizeof check->scope,
           "%lld query tokens x %d heads (tokens %s) against the double-precision dense oracle",
           (long long)tokens, t->heads, ranges);
  /* Relative to the largest reference magnitude; an all-zero reference (no
   * query covered) leaves the absolute error. */
  out_row->rel_err = out_max_ref > 0 ? out_row->max_abs_err / out_max_ref
                                     : out_row->max_abs_err;
  lse_row->rel_err = lse_max_ref > 0 ? lse_row->max_abs_err / lse_max_ref
                                     : lse_row->max_abs_err;
  check->nonfinite_outputs = count_nonfinite(t->out, q_count) +
                             count_nonfinite(t->dq, q_count) +
                             count_nonfinite(t->dk, kv_count) + count_nonfinite(t->dv, kv_count);
  check->tolerance = CHECK_TOLERANCE;
  check->note = "the backward is checked against the oracle by the test suite";
  check->pass = out_row->rel_err <= CHECK_TOLERANCE && lse_row->rel_err <= CHECK_TOLERANCE &&
                check->nonfinite_outputs == 0;
done:
  free(q);
  free(k);
  free(v);
  free(out);
  free(lse);
  return status;
}

/* The CPU backend: one timed forward + backward, a slice checked by the oracle. */
static int demo_cpu(const da_attention_params* params, const da_attention_batch* batch,
                    const cli_options* options, cli_report* report) {
  cli_tensors tensors;
  da_status status = cli_tensors_create(params, batch, 1, (uint64_t)options->seed, &tensors);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da demo: out of memory allocating the tensors of %lld tokens\n",
            (long long)report->tokens);
    return CLI_EXIT_FAIL;
  }
  status = cli_time_attention(params, batch, &tensors, 0, 1, 1, &report->timings);
  if (status != DA_STATUS_SUCCESS) {
    cli_library_error("demo", "the CPU attention", status);
    cli_tensors_destroy(&tensors);
    return CLI_EXIT_FAIL;
  }
  report->peak_rss_mib = cli_peak_rss_mib(); /* before the oracle's double copies */

  cli_check check;
  status = check_forward(params, batch, &tensors, &check);
  cli_tensors_destroy(&tensors);
  if (status != DA_STATUS_SUCCESS) {
    if (status == DA_STATUS_OUT_OF_MEMORY)
      fprintf(stderr, "da demo: out of memory preparing the oracle check\n");
    else
      cli_library_error("demo", "da_oracle_forward", status);
    return CLI_EXIT_FAIL;
  }
  report->check = &check;
  cli_report_print_table(stdout, report);
  return check.pass ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static double rms(const float* x, size_t count) {
  double sum = 0.0;
  for (size_t i = 0; i < count; ++i) sum += (double)x[i] * x[i];
  return count ? sqrt(sum / (double)count) : 0.0;
}

/* Relative L2 error ||got - ref|| / max(||ref||, floor_rms sqrt(count)), as the
 * tests judge the GPU. floor_rms, for dq and dk, whose true value can cancel to
 * ~0 while the GPU's D (from its 16-bit out) carries ~2^-9 of the cancelling
 * terms: their size, rms(dv) times s sqrt(d) rms(k) (dq) or rms(q) (dk), as
 * tests/attention/test_util.h's GradientFloors. NaN/inf in got are counted in
 * *nonfinite, not summed. */
static void compare_l2(const char* name, const float* got, const float* ref, size_t count,
                       double floor_rms, cli_check_row* row, int64_t* nonfinite) {
  double err2 = 0.0, ref2 = 0.0;
  row->name = name;
  row->max_abs_err = 0.0;
  for (size_t i = 0; i < count; ++i) {
    if (!isfinite(got[i])) {
      ++*nonfinite;
      continue;
    }
    const double diff = (double)got[i] - ref[i];
    err2 += diff * diff;
    ref2 += (double)ref[i] * ref[i];
    row->max_abs_err = fmax(row->max_abs_err, fabs(diff));
  }
  const double denom = fmax(sqrt(ref2), floor_rms * sqrt((double)count));
  row->rel_err = denom > 0 ? sqrt(err2) / denom : sqrt(err2);
}

/* lse: -inf exactly where the reference has it (a NaN or a -inf on one side only
 * counts in *mismatches); relative L2 error over the entries finite on both. */
static void compare_lse(const float* got, const float* ref, size_t count, cli_check_row* row,
                        int64_t* mismatches) {
  double err2 = 0.0, ref2 = 0.0;
  row->name = "lse";
  row->max_abs_err = 0.0;
  for (size_t i = 0; i < count; ++i) {
    const int ref_empty = isinf(ref[i]) && ref[i] < 0, got_empty = isinf(got[i]) && got[i] < 0;
    if (ref_empty || got_empty || !isfinite(got[i])) {
      *mismatches += !(ref_empty && got_empty);
      continue;
    }
    const double diff = (double)got[i] - ref[i];
    err2 += diff * diff;
    ref2 += (double)ref[i] * ref[i];
    row->max_abs_err = fmax(row->max_abs_err, fabs(diff));
  }
  row->rel_err = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
}

/* The GPU's outputs, copied back as float. */
typedef struct {
  float *out, *lse, *dq, *dk, *dv;
} gpu_results;

static void gpu_results_free(gpu_results* g) {
  free(g->out);
  free(g->lse);
  free(g->dq);
  free(g->dk);
  free(g->dv);
}

/* Times the GPU passes, copies their rounded inputs into `host` (which then runs
 * the CPU reference on exactly them) and their outputs into *results. */
static int run_gpu(const da_attention_params* params, const da_attention_batch* batch,
                   const cli_options* options, cli_report* report, cli_tensors* host,
                   gpu_results* results) {
  const size_t q_count = (size_t)host->tokens * host->heads * host->head_dim;
  const size_t kv_count = (size_t)host->tokens * host->kv_heads * host->head_dim;
  const size_t lse_count = (size_t)host->tokens * host->heads;
  const da_dtype dtype = report->dtype;
  cli_gpu_tensors gpu;
  da_status status = cli_gpu_tensors_create(params, batch, dtype, 1, cli_random_fill,
                                            (uint64_t)options->seed, &gpu);
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_copy_to_host(gpu.q, dtype, q_count, host->q);
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_copy_to_host(gpu.k, dtype, kv_count, host->k);
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_copy_to_host(gpu.v, dtype, kv_count, host->v);
  if (status == DA_STATUS_SUCCESS)
    status = cli_gpu_copy_to_host(gpu.dout, dtype, q_count, host->dout);
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_pool_reset_peak();
  if (status == DA_STATUS_SUCCESS) {
    /* cli_time_passes fails on its own only for its sample buffer. */
    cli_gpu_fail(DA_STATUS_SUCCESS, "out of host memory for the timings");
    status = cli_time_passes(cli_gpu_run_passes, &gpu, GPU_WARMUP, GPU_REPEATS, 1,
                             &report->timings);
  }
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_pool_peak_mib(&report->peak_pool_mib);
  report->device_tensor_mib = (double)gpu.device_bytes / (1024.0 * 1024.0);
  results->out = malloc(q_count * sizeof(float));
  results->lse = malloc(lse_count * sizeof(float));
  results->dq = malloc(q_count * sizeof(float));
  results->dk = malloc(kv_count * sizeof(float));
  results->dv = malloc(kv_count * sizeof(float));
  if (status == DA_STATUS_SUCCESS && !(results->out && results->lse && results->dq &&
                                       results->dk && results->dv))
    status = cli_gpu_fail(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the GPU's results");
  const struct {
    const void* device;
    da_dtype dtype;
    size_t count;
    float* host;
  } copies[] = {{gpu.out, dtype, q_count, results->out},
                {gpu.lse, DA_DTYPE_F32, lse_count, results->lse},
                {gpu.dq, dtype, q_count, results->dq},
                {gpu.dk, dtype, kv_count, results->dk},
                {gpu.dv, dtype, kv_count, results->dv}};
  for (int i = 0; i < 5 && status == DA_STATUS_SUCCESS; ++i)
    status = cli_gpu_copy_to_host(copies[i].device, copies[i].dtype, copies[i].count,
                                  copies[i].host);
  cli_gpu_tensors_destroy(&gpu);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da demo: %s\n", cli_gpu_error());
    return CLI_EXIT_FAIL;
  }
  return CLI_EXIT_OK;
}

/* The CUDA backend: the GPU timed, then checked against the CPU passes. */
static int demo_cuda(const da_attention_params* params, const da_attention_batch* batch,
                     const cli_options* options, cli_report* report) {
  cli_tensors host;
  gpu_results gpu = {0};
  if (cli_tensors_create(params, batch, 1, (uint64_t)options->seed, &host) != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da demo: out of memory allocating the tensors of %lld tokens\n",
            (long long)report->tokens);
    return CLI_EXIT_FAIL;
  }
  int rc = run_gpu(params, batch, options, report, &host, &gpu);
  if (rc == CLI_EXIT_OK) {
    printf("GPU done; running the CPU reference (f32) on the same inputs...\n");
    fflush(stdout);
    da_status status =
        da_attention_forward_cpu(params, batch, host.q, host.k, host.v, host.out, host.lse);
    if (status == DA_STATUS_SUCCESS)
      status = da_attention_backward_cpu(params, batch, host.q, host.k, host.v, host.out,
                                         host.lse, host.dout, host.dq, host.dk, host.dv);
    if (status != DA_STATUS_SUCCESS) {
      cli_library_error("demo", "the CPU reference", status);
      rc = CLI_EXIT_FAIL;
    }
  }
  if (rc == CLI_EXIT_OK) {
    report->peak_rss_mib = cli_peak_rss_mib();
    const size_t q_count = (size_t)host.tokens * host.heads * host.head_dim;
    const size_t kv_count = (size_t)host.tokens * host.kv_heads * host.head_dim;
    cli_check check;
    memset(&check, 0, sizeof check);
    snprintf(check.scope, sizeof check.scope,
             "every value of out, lse, dq, dk, dv against the CPU passes (f32) on the same "
             "%s-rounded inputs", da_dtype_name(report->dtype));
    check.metric = "rel L2 err";
    check.num_rows = 5;
    compare_l2("out", gpu.out, host.out, q_count, 0.0, &check.rows[0], &check.nonfinite_outputs);
    compare_lse(gpu.lse, host.lse, (size_t)host.tokens * host.heads, &check.rows[1],
                &check.lse_inf_mismatches);
    const double row = report->softmax_scale * sqrt((double)host.head_dim);
    const double ds = rms(host.dv, kv_count);
    compare_l2("dq", gpu.dq, host.dq, q_count, ds * row * rms(host.k, kv_count), &check.rows[2],
               &check.nonfinite_outputs);
    compare_l2("dk", gpu.dk, host.dk, kv_count, ds * row * rms(host.q, q_count), &check.rows[3],
               &check.nonfinite_outputs);
    compare_l2("dv", gpu.dv, host.dv, kv_count, 0.0, &check.rows[4], &check.nonfinite_outputs);
    check.tolerance = report->dtype == DA_DTYPE_BF16 ? GPU_TOLERANCE_BF16 : GPU_TOLERANCE_F16;
    check.note = "dq, dk against a floored norm, as in the tests";
    check.pass = check.nonfinite_outputs == 0 && check.lse_inf_mismatches == 0;
    for (int i = 0; i < check.num_rows; ++i)
      check.pass = check.pass && check.rows[i].rel_err <= check.tolerance;
    report->check = &check;
    cli_report_print_table(stdout, report);
    rc = check.pass ? CLI_EXIT_OK : CLI_EXIT_FAIL;
  }
  gpu_results_free(&gpu);
  cli_tensors_destroy(&host);
  return rc;
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

  if (report.backend == CLI_BACKEND_CUDA)
    printf("da demo: LongNet dilated attention, forward + backward on the GPU (%s), checked "
           "against the CPU passes\n", da_dtype_name(report.dtype));
  else
    printf("da demo: LongNet dilated attention, forward + backward on the CPU, checked against "
           "the dense oracle\n");
  cli_report_print_gpu_notice(stdout, &report);
  fflush(stdout);
  return report.backend == CLI_BACKEND_CUDA ? demo_cuda(&params, &batch, &options, &report)
                                            : demo_cpu(&params, &batch, &options, &report);
}
