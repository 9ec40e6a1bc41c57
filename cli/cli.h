/* cli/cli.h — shared by the `loupe` subcommands.
 *
 * A command is one file cli/cmd_<name>.c exporting `int cmd_<name>(argc, argv)`
 * (argv[0] is the command name) and one row in the table in cli/main.c.
 * Commands return an exit code (see cli_exit_code) and report errors through
 * cli_error/cli_usage so every message has the same shape. */
#ifndef LOUPE_CLI_H
#define LOUPE_CLI_H

#include "loupe.h"

/* Exit codes: 0 ok, 1 usage error, 2 + (status - 1) = 1 + status for a library failure. */
#define CLI_EXIT_OK 0
#define CLI_EXIT_USAGE 1
int cli_exit_code(loupe_status s);

/* "loupe: error: <msg>" on stderr; returns cli_exit_code(s). */
int cli_error(loupe_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "loupe <cmd>: <msg>" + a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int cmd_ask(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);

#endif
