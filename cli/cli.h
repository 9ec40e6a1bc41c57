/* cli/cli.h — shared by the `loupe` subcommands.
 *
 * A command is one file cli/cmd_<name>.c exporting `int cmd_<name>(argc, argv)`
 * (argv[0] is the command name) and one row in the table in cli/main.c.
 * Commands return an exit code (see cli_exit_code) and report errors through
 * cli_error/cli_usage so every message has the same shape. */
#ifndef LOUPE_CLI_H
#define LOUPE_CLI_H

#include "loupe.h"

#include <limits.h>
#include <stdbool.h>

/* Exit codes: 0 ok, 1 usage error, 2 + (status - 1) = 1 + status for a library failure. */
#define CLI_EXIT_OK 0
#define CLI_EXIT_USAGE 1
int cli_exit_code(loupe_status s);

/* "loupe: error: <msg>" on stderr; returns cli_exit_code(s). */
int cli_error(loupe_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "loupe <cmd>: <msg>" + a pointer to --help on stderr; returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing: the whole string, within [lo, hi]. */
bool cli_parse_int(const char *s, long lo, long hi, long *out);
bool cli_parse_u64(const char *s, unsigned long long *out);
bool cli_parse_float(const char *s, float lo, float hi, float *out);

/* "loupe: <level>: msg" on stderr (for loupe_log_set with --verbose). */
void cli_log_stderr(loupe_log_level level, const char *msg, void *user);

/* The model a command runs: -m/--mmproj, or the shipped tiny model. */
#define CLI_DEFAULT_MODEL "loupe-tiny"
typedef struct cli_model_args {
    const char *model, *mmproj;
    loupe_model_params params;
    double budget_pct; /* --mem-budget N%: of the language model file, resolved by cli_model_resolve */
    char model_buf[PATH_MAX + 64], mmproj_buf[PATH_MAX + 64];
} cli_model_args;
/* Help text of the flash-mode options cli_model_arg takes. */
#define CLI_FLASH_HELP                                                                              \
    "  --mem-budget SIZE    flash mode: keep at most SIZE bytes of the language model's\n"          \
    "                       weights in DRAM (K/M/G suffixes, or N%% of the model file);\n"            \
    "                       the model must be a flash layout (loupe convert --flash)\n"             \
    "  --sparsity S         flash-layout models: skip the fraction S of FFN neurons the\n"          \
    "                       predictor rates lowest at each generated token (default 0)\n"          \
    "  --ffn-threshold T    instead: compute neurons whose predicted |silu(gate)| >= T\n"          \
    "  --flash-window N     keep neurons used by the last N tokens (default 5)\n"                 \
    "  --io-threads N       parallel reads in flash mode (default 8)\n"
void cli_model_args_init(cli_model_args *m);
/* Handles -m/--model, --mmproj, --template, --box-format, --prep VAL and
 * the flash options (CLI_FLASH_HELP).
 * Returns 1 when opt was one of them (*rc set to a usage exit code if its
 * value was bad), 0 otherwise. */
int cli_model_arg(cli_model_args *m, const char *cmd, const char *opt, const char *val, int *rc);
/* Fills in the shipped model when no -m was given; usage error when it is
 * not found or only one of -m/--mmproj was given. */
int cli_model_resolve(cli_model_args *m, const char *cmd);

int cmd_ask(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_eval_merge(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);

#endif
