/* cli/main.c — `loupe <command> [args]`: the command table, --help, --version. */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct cli_cmd {
    const char *name;
    const char *args;
    const char *summary;
    int (*run)(int argc, char **argv);
} cli_cmd;

/* One row per command; the code lives in cli/cmd_<name>.c. */
static const cli_cmd COMMANDS[] = {
    {"ask", "IMAGE QUESTION", "answer a question about an image (default model: the shipped tiny one)", cmd_ask},
    {"convert", "--flash IN.gguf OUT.gguf", "write a decoder in the flash layout (bundled FFN neurons + sparsity predictor)",
     cmd_convert},
    {"eval", "--data FILE [--images DIR]", "grounding accuracy on a dataset (RefCOCO protocol, resumable, shardable)",
     cmd_eval},
    {"eval-merge", "RESULTS.jsonl...", "one report over the results files of several eval shards", cmd_eval_merge},
    {"info", "FILE.gguf...", "print a GGUF file's header, metadata and tensor table", cmd_info},
    {"synth", "--seed S --n N --out DIR", "write a synthetic grounding dataset (scenes, boxes, expressions)", cmd_synth},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

int cli_exit_code(loupe_status s) { return s == LOUPE_OK ? CLI_EXIT_OK : 1 + (int)s; }

int cli_error(loupe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loupe: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return cli_exit_code(s);
}

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loupe %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see `loupe %s --help`)\n", cmd);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

static void help(FILE *out) {
    fprintf(out, "loupe %s — on-device visual grounding\n\n", loupe_version());
    fprintf(out, "usage: loupe <command> [args]\n       loupe --help | --version\n       loupe <command> --help\n\ncommands:\n");
    int width = 0; /* align the summaries on the longest "name args" */
    for (size_t i = 0; i < N_COMMANDS; i++) {
        int n = (int)(strlen(COMMANDS[i].name) + 1 + strlen(COMMANDS[i].args));
        if (n > width) width = n;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char lhs[128];
        snprintf(lhs, sizeof lhs, "%s %s", COMMANDS[i].name, COMMANDS[i].args);
        fprintf(out, "  %-*s  %s\n", width, lhs, COMMANDS[i].summary);
    }
    fprintf(out, "\nexit codes:\n  0   success\n  1   usage error (bad command or arguments)\n");
    for (int s = LOUPE_ERR_INVALID_ARG; s <= LOUPE_ERR_INTERNAL; s++)
        fprintf(out, "  %-3d %s\n", cli_exit_code((loupe_status)s), loupe_status_str((loupe_status)s));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        help(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
        help(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
        printf("loupe %s\n", loupe_version());
        return CLI_EXIT_OK;
    }
    if (!strcmp(name, "help")) { /* `loupe help [command]` */
        if (argc < 3) {
            help(stdout);
            return CLI_EXIT_OK;
        }
        name = argv[2];
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (!strcmp(name, COMMANDS[i].name)) return COMMANDS[i].run(2, (char *[]){argv[2], "--help", NULL});
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(name, COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "loupe: error: unknown command '%s' (see `loupe --help`)\n", name);
    return CLI_EXIT_USAGE;
}
