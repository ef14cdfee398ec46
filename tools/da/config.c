/* da config check FILE: the effective distributed-sparse configuration (defaults
 * filled in, topology from the launcher's environment) as JSON, or its errors. */
#include <stdio.h>
#include <string.h>

#include "dist_config/da_config.h"
#include "tools/da/commands.h"
#include "tools/da/options.h"

static void print_help(FILE* out) {
  fprintf(out,
          "usage: da config check FILE.json\n"
          "\n"
          "Loads FILE.json (schema: docs/dist_config.md), fills in every default and the\n"
          "topology (Open MPI's OMPI_COMM_WORLD_* or WORLD_SIZE/RANK/LOCAL_WORLD_SIZE when\n"
          "not given), validates it and prints the effective config as JSON. Deprecated\n"
          "keys (*_sparsity) are accepted with a warning on stderr. An unknown key, a\n"
          "wrong type, malformed JSON (with line:column) or a broken rule is reported on\n"
          "stderr with exit status 2.\n");
}

int cli_config_main(int argc, char** argv) {
  if (argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
    print_help(stdout);
    return CLI_EXIT_OK;
  }
  if (argc == 2 && strcmp(argv[0], "check") == 0 && strcmp(argv[1], "--help") == 0) {
    print_help(stdout);
    return CLI_EXIT_OK;
  }
  if (argc != 2 || strcmp(argv[0], "check") != 0) {
    fprintf(stderr, "da config: usage: da config check FILE.json (see da config --help)\n");
    return CLI_EXIT_USAGE;
  }
  da_status st = da_config_check_file(argv[1], stdout, stderr);
  if (st == DA_STATUS_SUCCESS) return CLI_EXIT_OK;
  fprintf(stderr, "da config check: %s\n", da_last_error());
  return st == DA_STATUS_OUT_OF_MEMORY || st == DA_STATUS_INTERNAL_ERROR ? CLI_EXIT_FAIL
                                                                         : CLI_EXIT_USAGE;
}
