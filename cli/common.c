/* cli/common.c — what several commands share: number parsing, the model
 * options (-m, --mmproj, --prep, --template, --box-format,
 * --llamacpp-compat) and where the shipped model is found when no -m is
 * given, and the stderr log sink. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef LOUPE_DATADIR
#define LOUPE_DATADIR "/usr/local/share/loupe"
#endif

bool cli_parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool cli_parse_u64(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') return false;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

void cli_log_stderr(loupe_log_level level, const char *msg, void *user) {
    (void)user;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "loupe: %s: %s\n", names[level <= LOUPE_LOG_DEBUG ? level : LOUPE_LOG_DEBUG], msg);
}

void cli_model_args_init(cli_model_args *m) {
    memset(m, 0, sizeof *m);
    m->params = loupe_model_default_params();
}

int cli_model_arg(cli_model_args *m, const char *cmd, const char *opt, const char *val, int *rc) {
    if (!strcmp(opt, "-m") || !strcmp(opt, "--model")) m->model = val;
    else if (!strcmp(opt, "--mmproj")) m->mmproj = val;
    else if (!strcmp(opt, "--template")) m->params.template_name = val;
    else if (!strcmp(opt, "--box-format")) m->params.box_format = val;
    else if (!strcmp(opt, "--prep")) {
        if (!strcmp(val, "pad")) m->params.prep = LOUPE_PREP_PAD;
        else if (!strcmp(val, "squash") || !strcmp(val, "squeeze")) m->params.prep = LOUPE_PREP_SQUASH;
        else if (!strcmp(val, "llamacpp")) m->params.prep = LOUPE_PREP_LLAMACPP;
        else *rc = cli_usage(cmd, "--prep: '%s' is not a mode (pad, squash, llamacpp)", val);
    } else return 0;
    return 1;
}

static bool is_file(const char *p) { return access(p, R_OK) == 0; }

/* dir/loupe-tiny.gguf and dir/loupe-tiny-mmproj.gguf, if both exist. */
static bool try_dir(cli_model_args *m, const char *dir) {
    snprintf(m->model_buf, sizeof m->model_buf, "%s/" CLI_DEFAULT_MODEL ".gguf", dir);
    snprintf(m->mmproj_buf, sizeof m->mmproj_buf, "%s/" CLI_DEFAULT_MODEL "-mmproj.gguf", dir);
    return is_file(m->model_buf) && is_file(m->mmproj_buf);
}

int cli_model_resolve(cli_model_args *m, const char *cmd) {
    if (m->model && !m->mmproj)
        return cli_usage(cmd, "--mmproj MMPROJ.gguf is required with -m (the vision projector for %s)", m->model);
    if (!m->model && m->mmproj) return cli_usage(cmd, "-m MODEL.gguf is required with --mmproj");
    if (m->model) return CLI_EXIT_OK;
    /* The shipped model: $LOUPE_MODEL_DIR, then models/ next to the build
     * directory holding this program (a source checkout), then the install
     * prefix's share/loupe/models. */
    const char *env = getenv("LOUPE_MODEL_DIR");
    if (env && *env && try_dir(m, env)) goto found;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0'; /* .../build */
            char dir[PATH_MAX + 32];
            snprintf(dir, sizeof dir, "%s/../models", exe);
            if (try_dir(m, dir)) goto found;
            snprintf(dir, sizeof dir, "%s/../share/loupe/models", exe);
            if (try_dir(m, dir)) goto found;
        }
    }
    if (try_dir(m, LOUPE_DATADIR "/models")) goto found;
    return cli_usage(cmd, "no -m MODEL.gguf --mmproj MMPROJ.gguf given and the shipped model (" CLI_DEFAULT_MODEL
                          ".gguf + " CLI_DEFAULT_MODEL "-mmproj.gguf) is not in $LOUPE_MODEL_DIR, models/ beside the "
                          "build directory or " LOUPE_DATADIR "/models");
found:
    m->model = m->model_buf;
    m->mmproj = m->mmproj_buf;
    return CLI_EXIT_OK;
}
