/* commands.h: the subcommands of `da`. Each takes the arguments after its name
 * and returns the process exit status (CLI_EXIT_*). */
#ifndef DA_TOOLS_COMMANDS_H
#define DA_TOOLS_COMMANDS_H

int cli_demo_main(int argc, char** argv);
int cli_bench_main(int argc, char** argv);
int cli_config_main(int argc, char** argv);

#endif /* DA_TOOLS_COMMANDS_H */
