/* da bench: a configurable benchmark of the CPU attention, and (--ceiling) the
 * CPU's measured fp32 peak that its throughput is compared with. */
#include <stdio.h>

#include "tools/da/ceiling.h"
#include "tools/da/commands.h"
#include "tools/da/options.h"
#include "tools/da/report.h"
#include "tools/da/sysinfo.h"
#include "tools/da/workload.h"

/* A quick ceiling in every bench run, a longer one for --ceiling alone. */
#define QUICK_CEILING_S 0.3
#define FULL_CEILING_S 1.5

static void print_help(FILE* out) {
  fprintf(out,
          "usage: da bench [flags] [--config FILE.json] [--json | --csv]\n"
          "       da bench --ceiling [--threads T] [--json | --csv]\n"
          "\n"
          "Times the CPU dilated attention: `warmup` untimed, then `repeats` timed\n"
          "iterations of the forward (and with --backward, the backward right after\n"
          "each forward). Prints min/median/max ms per pass, tokens/s and effective\n"
          "TFLOP/s at the median (FLOPs as docs/semantics.md counts them: 4*d per\n"
          "(query, key) product with multiplicity, 3.5x that for forward+backward,\n"
          "so 2.5x for the backward alone), and peak memory. No oracle check here\n"
          "(see da demo and the tests).\n"
          "\n"
          "Every run first measures this CPU's fp32 peak for ~%.1f s (the --ceiling\n"
          "loop, shorter) and reports each pass as a percentage of it. The peak is\n"
          "what 12 independent vector FMA chains per thread sustain on all OpenMP\n"
          "threads together over a shared time window (best of 3), with the widest ISA\n"
          "present (AVX-512, AVX2, else SSE mul+add): an upper bound no attention\n"
          "kernel reaches, since softmax, exp and memory traffic are not FMAs. On a\n"
          "busy machine both numbers move; compare runs taken under the same load.\n"
          "--ceiling alone measures it for ~%.1f s, prints it and runs nothing else.\n"
          "\n"
          "Invalid parameters (per da_attention_validate), unknown flags or config\n"
          "keys, and bad values exit with status 2; library errors with 1.\n"
          "A progress bar is drawn on stderr when it is a terminal and the run is\n"
          "expected to take more than ~2 s.\n"
          "\n"
          "flags (defaults in brackets: the LongNet configuration of da demo):\n",
          QUICK_CEILING_S, FULL_CEILING_S);
  cli_options_print_flags(CLI_CMD_BENCH, out);
}

static int run_ceiling_only(const cli_options* options) {
  if (cli_options_any_workload(options))
    return cli_usage_error("bench", "--ceiling measures the CPU peak only; it takes no "
                           "workload flags or config keys (just --threads, --json, --csv)");
  cli_set_threads(options->threads);
  cli_ceiling ceiling;
  if (cli_measure_ceiling(FULL_CEILING_S, &ceiling) != 0) {
    fprintf(stderr, "da bench: the peak measurement produced a non-finite result\n");
    return CLI_EXIT_FAIL;
  }
  cli_ceiling_print(stdout, options->output, &ceiling);
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
  if (cli_measure_ceiling(QUICK_CEILING_S, &ceiling) == 0) report.ceiling = &ceiling;

  cli_tensors tensors;
  da_status status =
      cli_tensors_create(&params, &batch, options.backward, (uint64_t)options.seed, &tensors);
  if (status != DA_STATUS_SUCCESS) {
    fprintf(stderr, "da bench: out of memory allocating the tensors of %lld tokens\n",
            (long long)report.tokens);
    return CLI_EXIT_FAIL;
  }
  status = cli_time_attention(&params, &batch, &tensors, options.warmup, options.repeats,
                              options.backward, &report.timings);
  cli_tensors_destroy(&tensors);
  if (status != DA_STATUS_SUCCESS) {
    cli_library_error("bench", "the CPU attention", status);
    return CLI_EXIT_FAIL;
  }
  report.peak_rss_mib = cli_peak_rss_mib();
  switch (options.output) {
    case CLI_OUTPUT_JSON: cli_report_print_json(stdout, &report); break;
    case CLI_OUTPUT_CSV: cli_report_print_csv(stdout, &report); break;
    default:
      printf("da bench: dilated attention on the CPU backend\n");
      cli_report_print_table(stdout, &report);
      break;
  }
  return CLI_EXIT_OK;
}
