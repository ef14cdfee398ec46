/* da: the dilated attention command line. Dispatches to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "common/da_common.h"
#include "tools/da/commands.h"
#include "tools/da/options.h"

static void print_usage(FILE* out) {
  fprintf(out,
          "usage: da <command> [flags]\n"
          "\n"
          "commands:\n"
          "  demo      LongNet dilated attention end to end: timed forward and backward on\n"
          "            random inputs (the GPU in bf16 when one serves it, else the CPU),\n"
          "            checked against a reference (PASS/FAIL)\n"
          "  bench     configurable benchmark, GPU or CPU (flags or --config FILE.json;\n"
          "            --json, --csv); --ceiling measures the peak it compares with\n"
          "            (cuBLAS dense bf16 GEMM on the GPU, fp32 FMAs on the CPU)\n"
          "  config    check FILE.json: the effective distributed-sparse config (defaults\n"
          "            and launcher topology filled in) as JSON, or its errors\n"
          "  version   print the version of da and of the library\n"
          "\n"
          "da <command> --help describes a command's flags. Exit status: 0 success,\n"
          "1 failed check or library error, 2 usage error.\n");
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "da: missing command (demo, bench, config or version; see da --help)\n");
    return CLI_EXIT_USAGE;
  }
  const char* command = argv[1];
  if (strcmp(command, "--help") == 0 || strcmp(command, "-h") == 0 ||
      strcmp(command, "help") == 0) {
    print_usage(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(command, "version") == 0 || strcmp(command, "--version") == 0) {
    if (argc > 2) {
      fprintf(stderr, "da version: unexpected argument '%s'\n", argv[2]);
      return CLI_EXIT_USAGE;
    }
    printf("da %d.%d.%d (library %s)\n", DA_VERSION_MAJOR, DA_VERSION_MINOR, DA_VERSION_PATCH,
           da_version_string());
    return CLI_EXIT_OK;
  }
  if (strcmp(command, "demo") == 0) return cli_demo_main(argc - 2, argv + 2);
  if (strcmp(command, "bench") == 0) return cli_bench_main(argc - 2, argv + 2);
  if (strcmp(command, "config") == 0) return cli_config_main(argc - 2, argv + 2);
  fprintf(stderr, "da: unknown command '%s' (commands: demo, bench, config, version; see da --help)\n",
          command);
  return CLI_EXIT_USAGE;
}
