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
#include <sys/stat.h>
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

/* "123", "64K", "1.5G" (binary units) or "40%" (*pct set, *bytes 0). */
static bool parse_size(const char *s, size_t *bytes, double *pct) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0)) return false;
    double mul = 1;
    if (*end == '%') {
        if (end[1] || v > 100) return false;
        *pct = v;
        *bytes = 0;
        return true;
    }
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024.0, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024.0 * 1024.0, end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || v * mul >= 9.0e18) return false;
    *bytes = (size_t)(v * mul);
    *pct = 0;
    return *bytes > 0;
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
    } else if (!strcmp(opt, "--mem-budget")) {
        if (!parse_size(val, &m->params.memory_budget, &m->budget_pct))
            *rc = cli_usage(cmd, "--mem-budget: '%s' is not a size (bytes, with K/M/G, or a percentage like 40%%)", val);
    } else if (!strcmp(opt, "--sparsity")) {
        float sp;
        if (!cli_parse_float(val, 0.0f, 0.999f, &sp)) *rc = cli_usage(cmd, "--sparsity: '%s' is not in [0, 0.999]", val);
        else m->params.ffn_keep = 1.0f - sp;
    } else if (!strcmp(opt, "--ffn-threshold")) {
        if (!cli_parse_float(val, 0.0f, 1e9f, &m->params.ffn_threshold))
            *rc = cli_usage(cmd, "--ffn-threshold: '%s' is not a number >= 0", val);
    } else if (!strcmp(opt, "--flash-window")) {
        long v;
        if (!cli_parse_int(val, 0, 1000000, &v)) *rc = cli_usage(cmd, "--flash-window: '%s' is not a count", val);
        else m->params.flash_window = (int)v;
    } else if (!strcmp(opt, "--image-min-tokens") || !strcmp(opt, "--image-max-tokens")) {
        long v;
        if (!cli_parse_int(val, 1, 1 << 20, &v)) *rc = cli_usage(cmd, "%s: '%s' is not a token count", opt, val);
        else if (!strcmp(opt, "--image-min-tokens")) m->params.image_min_tokens = (int)v;
        else m->params.image_max_tokens = (int)v;
    } else if (!strcmp(opt, "--io-threads")) {
        long v;
        if (!cli_parse_int(val, 0, 16, &v)) *rc = cli_usage(cmd, "--io-threads: '%s' is not in [0, 16]", val);
        else m->params.flash_io_threads = (int)v;
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

/* --mem-budget N%: N percent of the language model file. */
static int resolve_budget(cli_model_args *m, const char *cmd) {
    if (m->budget_pct <= 0) return CLI_EXIT_OK;
    struct stat sb;
    if (stat(m->model, &sb) != 0) return cli_usage(cmd, "--mem-budget %g%%: cannot stat %s: %s", m->budget_pct, m->model, strerror(errno));
    m->params.memory_budget = (size_t)((double)sb.st_size * m->budget_pct / 100.0);
    if (m->params.memory_budget == 0) m->params.memory_budget = 1;
    return CLI_EXIT_OK;
}

int cli_model_resolve(cli_model_args *m, const char *cmd) {
    if (m->model && !m->mmproj)
        return cli_usage(cmd, "--mmproj MMPROJ.gguf is required with -m (the vision projector for %s)", m->model);
    if (!m->model && m->mmproj) return cli_usage(cmd, "-m MODEL.gguf is required with --mmproj");
    if (m->model) return resolve_budget(m, cmd);
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
    return resolve_budget(m, cmd);
}
