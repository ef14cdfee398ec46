/* da bench: a configurable benchmark of the attention on the GPU (CUDA passes,
 * bf16/f16) or the CPU, and (--ceiling) the measured peak its throughput is
 * compared with: cuBLAS's dense bf16 GEMM on the GPU, fp32 FMAs on the CPU. */
#include <stdio.h>
#include <string.h>

#include "tools/da/ceiling.h"
#include "tools/da/commands.h"
#include "tools/da/gpu.h"
#include "tools/da/options.h"
#include "tools/da/report.h"
#include "tools/da/sysinfo.h"
#include "tools/da/workload.h"

/* A quick ceiling in every bench run, a longer one for --ceiling alone. */
#define QUICK_CEILING_S 0.3
#define FULL_CEILING_S 1.5
#define QUICK_GPU_CEILING_REPEATS 5
#define FULL_GPU_CEILING_REPEATS 20

static void print_help(FILE* out) {
  fprintf(out,
          "usage: da bench [flags] [--config FILE.json] [--json | --csv]\n"
          "       da bench --ceiling [--backend auto|cpu|cuda] [--threads T] [--json | --csv]\n"
          "\n"
          "Times the dilated attention: `warmup` untimed, then `repeats` timed\n"
          "iterations of the forward (and with --backward / --pass fwdbwd, the backward\n"
          "right after each forward). Prints min/median/max ms per pass, tokens/s and\n"
          "effective TFLOP/s at the median (FLOPs as docs/semantics.md counts them: 4*d\n"
          "per (query, key) product with multiplicity, 3.5x that for forward+backward,\n"
          "so 2.5x for the backward alone), and peak memory. No correctness check here\n"
          "(see da demo and the tests).\n"
          "\n"
          "Backend (--backend): auto runs the CUDA passes when there is a GPU and they\n"
          "serve the configuration in --dtype (head_dim 32, 64, 96 or 128, sm_80+), else\n"
          "the CPU; cpu and cuda force one (cuda fails, status 1, when it cannot run).\n"
          "On the GPU, tensors are --dtype with fp32 accumulation, each pass is timed\n"
          "with CUDA events, and the report adds the device tensors and the peak\n"
          "workspace the passes took from the device's memory pool. Inputs are drawn\n"
          "from the same seeded stream on both backends.\n"
          "\n"
          "Every run first measures the backend's ceiling and reports each pass as a\n"
          "percentage of it. GPU: cuBLAS's dense bf16 GEMM (cublasGemmEx, m = n = k =\n"
          "%d, fp32 accumulation, best of %d calls after 3 warm-ups; %d calls for\n"
          "--ceiling alone), what the attention's matrix products could reach at most.\n"
          "CPU: the fp32 peak for ~%.1f s: what 12 independent vector FMA chains per\n"
          "thread sustain on all OpenMP threads together over a shared time window (best\n"
          "of 3), with the widest ISA present (AVX-512, AVX2, else SSE mul+add); an\n"
          "upper bound no attention kernel reaches, since softmax, exp and memory\n"
          "traffic are not FMAs. On a busy machine both numbers move; compare runs\n"
          "taken under the same load. --ceiling alone measures it (CPU: ~%.1f s),\n"
          "prints it and runs nothing else.\n"
          "\n"
          "Invalid parameters (per da_attention_validate), unknown flags or config\n"
          "keys, and bad values exit with status 2; library errors with 1.\n"
          "A progress bar is drawn on stderr when it is a terminal and the run is\n"
          "expected to take more than ~2 s.\n"
          "\n"
          "flags (defaults in brackets: the LongNet configuration of da demo):\n",
          CLI_GPU_CEILING_SIZE, QUICK_GPU_CEILING_REPEATS, FULL_GPU_CEILING_REPEATS,
          QUICK_CEILING_S, FULL_CEILING_S);
  cli_options_print_flags(CLI_CMD_BENCH, out);
}

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

static da_status measure_gpu_ceiling(int repeats, cli_ceiling* ceiling) {
  memset(ceiling, 0, sizeof *ceiling);
  ceiling->gpu = 1;
  ceiling->isa = "cuBLAS bf16 GEMM " STRINGIFY(CLI_GPU_CEILING_SIZE) "^3, fp32 accumulation";
  return cli_gpu_measure_ceiling(repeats, &ceiling->gflops, &ceiling->seconds);
}

static int run_ceiling_only(const cli_options* options) {
  if (cli_options_any_workload(options))
    return cli_usage_error("bench", "--ceiling measures the peak only; it takes no workload "
                           "flags or config keys (just --backend, --threads, --json, --csv)");
  int on_gpu = 0;
  if (options->backend != CLI_BACKEND_CPU) {
    da_device_info gpu;
    on_gpu = cli_probe_gpu(&gpu);
    if (!on_gpu && options->backend == CLI_BACKEND_CUDA) {
      fprintf(stderr, "da bench: --backend cuda: there is no usable GPU (%s)\n",
              da_last_error());
      return CLI_EXIT_FAIL;
    }
  }
  cli_ceiling ceiling;
  if (on_gpu) {
    if (measure_gpu_ceiling(FULL_GPU_CEILING_REPEATS, &ceiling) != DA_STATUS_SUCCESS) {
      fprintf(stderr, "da bench: %s\n", cli_gpu_error());
      return CLI_EXIT_FAIL;
    }
  } else {
    cli_set_threads(options->threads);
    if (cli_measure_ceiling(FULL_CEILING_S, &ceiling) != 0) {
      fprintf(stderr, "da bench: the peak measurement produced a non-finite result\n");
      return CLI_EXIT_FAIL;
    }
  }
  cli_ceiling_print(stdout, options->output, &ceiling);
  return CLI_EXIT_OK;
}

static int run_cpu(const cli_options* options, const da_attention_params* params,
                   const da_attention_batch* batch, cli_report* report, cli_ceiling* ceiling) {
  if (cli_measure_ceiling(QUICK_CEILING_S, ceiling) == 0) report->ceiling = ceiling;
  cli_tensors tensors;
  da_status status =
      cli_tensors_create(params, batch, options->backward, (uint64_t)options->seed, &tensors);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da bench: out of memory allocating the tensors of %lld tokens\n",
            (long long)report->tokens);
    return CLI_EXIT_FAIL;
  }
  status = cli_time_attention(params, batch, &tensors, options->warmup, options->repeats,
                              options->backward, &report->timings);
  cli_tensors_destroy(&tensors);
  if (status != DA_STATUS_SUCCESS) {
    cli_library_error("bench", "the CPU attention", status);
    return CLI_EXIT_FAIL;
  }
  return CLI_EXIT_OK;
}

static int run_cuda(const cli_options* options, const da_attention_params* params,
                    const da_attention_batch* batch, cli_report* report, cli_ceiling* ceiling) {
  if (measure_gpu_ceiling(QUICK_GPU_CEILING_REPEATS, ceiling) == DA_STATUS_SUCCESS)
    report->ceiling = ceiling;
  else
    fprintf(stderr, "da bench: warning: no GPU ceiling (%s)\n", cli_gpu_error());
  cli_gpu_tensors tensors;
  da_status status = cli_gpu_tensors_create(params, batch, report->dtype, options->backward,
                                            cli_random_fill, (uint64_t)options->seed, &tensors);
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_pool_reset_peak();
  if (status == DA_STATUS_SUCCESS) {
    /* cli_time_passes fails on its own only for its sample buffer. */
    cli_gpu_fail(DA_STATUS_SUCCESS, "out of host memory for the timings");
    status = cli_time_passes(cli_gpu_run_passes, &tensors, options->warmup, options->repeats,
                             options->backward, &report->timings);
  }
  if (status == DA_STATUS_SUCCESS) status = cli_gpu_pool_peak_mib(&report->peak_pool_mib);
  report->device_tensor_mib = (double)tensors.device_bytes / (1024.0 * 1024.0);
  cli_gpu_tensors_destroy(&tensors);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da bench: %s\n", cli_gpu_error());
    return CLI_EXIT_FAIL;
  }
  return CLI_EXIT_OK;
}

int cli_bench_main(int argc, char** argv) {
  cli_options options;
  int rc = cli_options_parse(CLI_CMD_BENCH, argc, argv, &options);
  if (rc != CLI_EXIT_OK) return rc;
  if (options.help) {
    print_help(stdout);
    return CLI_EXIT_OK;
  }
  if (options.ceiling) return run_ceiling_only(&options);

  cli_report report;
  rc = cli_report_init("bench", &options, &report);
  if (rc != CLI_EXIT_OK) return rc;
  cli_report_print_gpu_notice(stderr, &report);
  const da_attention_params params = cli_options_params(&options);
  const da_attention_batch batch = cli_options_batch(&options);

  cli_ceiling ceiling;
  rc = report.backend == CLI_BACKEND_CUDA ? run_cuda(&options, &params, &batch, &report, &ceiling)
                                          : run_cpu(&options, &params, &batch, &report, &ceiling);
  if (rc != CLI_EXIT_OK) return rc;
  report.peak_rss_mib = cli_peak_rss_mib();
  switch (options.output) {
    case CLI_OUTPUT_JSON: cli_report_print_json(stdout, &report); break;
    case CLI_OUTPUT_CSV: cli_report_print_csv(stdout, &report); break;
    default:
      printf("da bench: dilated attention on the %s backend\n",
             report.backend == CLI_BACKEND_CUDA ? "CUDA" : "CPU");
      cli_report_print_table(stdout, &report);
      break;
  }
  return CLI_EXIT_OK;
}
