/* cli/cmd_info.c — `loupe info FILE.gguf...`: header, metadata and tensor table. */
#include "cli.h"
#include "gguf.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static void info_help(FILE *out) {
    fprintf(out, "usage: loupe info FILE.gguf...\n\n"
                 "Validates each file and prints its GGUF version, alignment, every metadata\n"
                 "key with its type and value (long arrays abbreviated), and a table of the\n"
                 "tensors: name, type, shape (ggml order, row length first), bytes, offset.\n"
                 "Stops at the first bad file with `loupe: error: ...` on stderr.\n");
}

int cmd_info(int argc, char **argv) {
    char **files = argv + 1; /* compacted in place: argv[1..n_files] */
    int n_files = 0;
    bool only_files = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_files && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
            info_help(stdout);
            return CLI_EXIT_OK;
        }
        if (!only_files && !strcmp(a, "--")) { only_files = true; continue; }
        if (!only_files && a[0] == '-' && a[1]) return cli_usage("info", "unknown option '%s'", a);
        files[n_files++] = argv[i];
    }
    if (n_files == 0) return cli_usage("info", "no file given");
    for (int i = 0; i < n_files; i++) {
        lp_error err = {0};
        lp_gguf *g = lp_gguf_open(files[i], &err);
        if (!g) return cli_error(err.status, "%s", err.msg);
        if (i) putchar('\n');
        lp_gguf_print(g, stdout);
        lp_gguf_close(g);
    }
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
}
