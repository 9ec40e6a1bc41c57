/* cli/cmd_eval.c — `loupe eval`: grounding accuracy on a referring-expression
 * dataset (RefCOCO protocol, datasets/evaluate.h), referring accuracy
 * (`--task refer`: the region's object named), and `loupe eval-merge`.
 *
 * Work is never lost: every sample's record is appended to the results file
 * with one write(2) as soon as it is scored and the file is fsync'd at least
 * every two seconds, so a run killed at any moment loses at most the sample
 * in flight; `--resume` skips what the file already holds. Ctrl-C stops
 * after cancelling the sample in flight and still prints the report of what
 * is done. Distribution is left to existing tools: `--shard K/N` takes a
 * deterministic share and `eval-merge` combines the shards' results files
 * (README: GNU parallel and a Slurm array job). */
#include "cli.h"
#include "../core/fileio.h"
#include "../datasets/evaluate.h"
#include "../datasets/refdata.h"
#include "../vision/image.h"

#include <cJSON.h>

#include <ctype.h>
#include <limits.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void eval_help(FILE *out) {
    fprintf(out,
            "usage: loupe eval [-m MODEL.gguf --mmproj MMPROJ.gguf] --data FILE [--images DIR] [options]\n\n"
            "Grounding accuracy, RefCOCO protocol: for every referring expression the\n"
            "model is asked its grounding question (Ferret: \"What is the location of\n"
            "<expr> in the image?\"); the first box of the answer, in original-image\n"
            "pixels, is scored against the ground truth. Acc@0.5 uses continuous IoU with\n"
            "no +1 (lmms-eval, Ferret); an answer without a parsable box is a miss.\n"
            "Without -m the shipped tiny model (models/" CLI_DEFAULT_MODEL ".gguf) is used.\n\n"
            "With --task refer it measures referring instead (naming the object in a given\n"
            "region): for every region of a loupe synth annotations.json, given\n"
            "once as its box and once as its mask, the model is asked the region's\n"
            "question (\"What is in the region <region>?\"); the answer is correct when it\n"
            "names the region's category as a whole word, exact when it is the expected\n"
            "answer (colour and category). The report's kind axis is box / mask.\n\n"
            "  --task ground|refer  what to measure (default ground)\n\n"
            "data (the layout is recognised from the file):\n"
            "  --data FILE          MDETR's final_<set>_<split>.json (Ferret, Kosmos-2), loupe\n"
            "                       synth's annotations.json, COCO instances.json (with\n"
            "                       --refs), or .jsonl: {\"image\", \"expression\", \"bbox\":\n"
            "                       [x, y, w, h], optional \"split\", \"kind\", \"category\", \"id\"}\n"
            "  --refs FILE          the refer toolkit's refs as JSON (see README for the\n"
            "                       one-line conversion of refs(unc).p)\n"
            "  --images DIR         directory the dataset's image paths are relative to\n"
            "                       (default: the data file's directory)\n"
            "  --split NAME         only this split (val, testA, ...; default: all)\n"
            "  --limit N            only the first N samples (after --split)\n"
            "  --shard K/N          only samples i with i %% N == K-1 (after --limit)\n\n"
            "output:\n"
            "  --out FILE           results, one JSON line per sample (default\n"
            "                       loupe-eval.jsonl); an existing file is never\n"
            "                       overwritten unless --force\n"
            "  --resume             skip samples already in --out (retries failed ones)\n"
            "  --force              start --out afresh\n"
            "  --report FILE        also write the report as JSON\n"
            "  --gallery DIR        annotated PNGs of the misses (prediction red, truth\n"
            "                       green, expression as caption; referring: the region\n"
            "                       green, the answer as caption) and DIR/index.html\n"
            "  -q, --quiet          no progress output\n\n"
            "model:\n"
            "  -m, --model FILE, --mmproj FILE, --prep MODE, --template NAME,\n"
            "  --box-format NAME    as for loupe ask\n"
            "  -t, --threads N      threads (default: all CPUs)\n"
            "  -n, --n-predict N    most tokens per answer (default 64)\n\n"
            "flash mode (loupe ask --help):\n" CLI_FLASH_HELP "\n"
            "Exit status: 0 when every sample ran (whatever the accuracy); otherwise the\n"
            "error's code (loupe --help). Interrupted runs exit 130 after the report.\n\n"
            "  loupe eval-merge [--report FILE] RESULTS.jsonl...   one report over shards\n");
}

/* ---- interruption ---- */

static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) {
    (void)sig;
    g_stop = 1;
}
static int cancel_if_stopped(void *user, loupe_stage stage, int done, int total) {
    (void)user, (void)stage, (void)done, (void)total;
    return g_stop;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- progress ---- */

typedef struct progress {
    int tty, quiet;
    const char *metric; /* "Acc@0.5" or "named" */
    long total, done, correct, skipped;
    double t0, last;
} progress;

static void fmt_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void progress_show(progress *p, int final) {
    if (p->quiet) return;
    const double t = now_s(), el = t - p->t0;
    if (!final && t - p->last < (p->tty ? 0.2 : 10.0)) return;
    p->last = t;
    const long todo = p->total - p->skipped;
    const double rate = el > 0 ? (double)p->done / el : 0.0;
    char eta[32];
    fmt_eta(rate > 0 ? (double)(todo - p->done) / rate : NAN, eta, sizeof eta);
    const double acc = p->done ? 100.0 * (double)p->correct / (double)p->done : 0.0;
    if (p->tty) {
        const int W = 30, fill = todo ? (int)(W * p->done / todo) : W;
        char bar[64];
        for (int i = 0; i < W; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[W] = '\0';
        fprintf(stderr, "\r[%s] %ld/%ld  %.1f/s  ETA %s  %s %.1f%%   ", bar, p->done, todo, rate, eta, p->metric, acc);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "eval: %ld/%ld done, %.2f samples/s, ETA %s, %s so far %.2f%%\n", p->done, todo, rate, eta,
                p->metric, acc);
    }
}

/* ---- results file ---- */

typedef struct results_out {
    int fd;
    const char *path;
    double last_sync;
} results_out;

static int write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int append_record(results_out *o, const lp_eval_record *r) {
    char *line = lp_eval_record_json(r);
    if (!line) return cli_error(LOUPE_ERR_NOMEM, "%s: out of memory writing a record", o->path);
    char eb[128];
    if (write_all(o->fd, line, strlen(line))) {
        free(line);
        return cli_error(LOUPE_ERR_IO, "%s: write failed: %s", o->path, lp_strerror(errno, eb, sizeof eb));
    }
    free(line);
    const double t = now_s();
    if (t - o->last_sync >= 2.0) {
        if (fsync(o->fd)) return cli_error(LOUPE_ERR_IO, "%s: fsync failed: %s", o->path, lp_strerror(errno, eb, sizeof eb));
        o->last_sync = t;
    }
    return CLI_EXIT_OK;
}

/* ---- gallery ---- */

static void file_safe(const char *id, char *out, size_t n) {
    size_t k = 0;
    for (const char *p = id; *p && k + 1 < n; p++)
        out[k++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.') ? *p : '_';
    out[k] = '\0';
}

static void html_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* dir/file (file alone when absolute); 0 when it does not fit. */
static int join_path(const char *dir, const char *file, char *out, size_t n) {
    int k = (!dir || !*dir || file[0] == '/') ? snprintf(out, n, "%s", file) : snprintf(out, n, "%s/%s", dir, file);
    return k >= 0 && (size_t)k < n;
}

/* One miss: the image with the truth in green, the prediction in red and
 * the expression as a caption along the bottom. */
static loupe_status draw_miss(const lp_eval_record *r, const char *images_dir, const char *png, lp_error *err) {
    char path[PATH_MAX];
    if (!join_path(images_dir, r->image, path, sizeof path))
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s/%s: path too long", images_dir, r->image);
    lp_image im;
    loupe_status st = lp_image_load(path, &im, err);
    if (st) return st;
    const int t = (im.w < im.h ? im.w : im.h) >= 600 ? 3 : 2;
    const int scale = im.w >= 800 ? 2 : 1;
    const lp_rgb green = {40, 200, 60}, red = {230, 40, 40}, black = {0, 0, 0};
    lp_draw_rect(&im, (int)lround(r->gt[0]), (int)lround(r->gt[1]), (int)lround(r->gt[2]) - 1, (int)lround(r->gt[3]) - 1,
                 green, t);
    if (!r->refer && r->has_pred)
        lp_draw_rect(&im, (int)lround(r->pred[0]), (int)lround(r->pred[1]), (int)lround(r->pred[2]) - 1,
                     (int)lround(r->pred[3]) - 1, red, t);
    char cap[512];
    if (r->refer) snprintf(cap, sizeof cap, "%s  (expected: %s)", r->answer, r->expected);
    else snprintf(cap, sizeof cap, "%s  (IoU %.2f%s)", r->expr, r->iou, r->has_pred ? "" : ", no box");
    lp_draw_label(&im, 0, im.h - lp_text_height(scale) - 2, cap, black, scale);
    st = lp_image_write_png(png, &im, err);
    lp_image_free(&im);
    return st;
}

static int write_gallery(const char *dir, const char *images_dir, const lp_results *res, const char *const *only,
                         size_t n_only) {
    if (mkdir(dir, 0777) && errno != EEXIST) {
        char eb[128];
        return cli_error(LOUPE_ERR_IO, "--gallery %s: cannot create: %s", dir, lp_strerror(errno, eb, sizeof eb));
    }
    char index[PATH_MAX + 16];
    snprintf(index, sizeof index, "%s/index.html", dir);
    lp_outfile of;
    lp_error err = {0};
    if (lp_outfile_open(&of, index, &err)) return cli_error(err.status, "--gallery: %s", err.msg);
    fputs("<!doctype html>\n<meta charset=\"utf-8\">\n<title>loupe eval: misses</title>\n"
          "<style>body{font-family:sans-serif}figure{display:inline-block;margin:8px;vertical-align:top;"
          "max-width:420px}img{max-width:400px}figcaption{font-size:13px}</style>\n"
          "<h1>Misses</h1>\n<p>Grounding (IoU &lt; 0.5): green the ground truth, red the prediction. "
          "Referring (category not named): green the region.</p>\n",
          of.f);
    long n = 0, failed = 0;
    size_t *idx, n_idx;
    if (lp_results_latest(res, &idx, &n_idx, &err)) {
        lp_outfile_abort(&of);
        return cli_error(err.status, "--gallery: %s", err.msg);
    }
    for (size_t i = 0; i < n_idx; i++) {
        const lp_eval_record *r = &res->rec[idx[i]];
        if (r->error[0] || lp_eval_record_correct(r)) continue;
        if (only && !lp_id_in(r->id, only, n_only)) continue;
        char name[256], png[PATH_MAX];
        file_safe(r->id, name, sizeof name - 4);
        strcat(name, ".png");
        snprintf(png, sizeof png, "%s/%s", dir, name);
        if (access(png, F_OK) != 0) {
            lp_error e = {0};
            if (draw_miss(r, images_dir, png, &e)) {
                fprintf(stderr, "loupe: warning: --gallery: %s\n", e.msg);
                failed++;
                continue;
            }
        }
        fprintf(of.f, "<figure><img src=\"%s\" loading=\"lazy\"><figcaption><b>", name);
        html_escape(of.f, r->expr);
        if (r->refer) {
            fputs("</b><br>expected ", of.f);
            html_escape(of.f, r->expected);
            fputs(" · id ", of.f);
        } else {
            fprintf(of.f, "</b><br>IoU %.3f · id ", r->iou);
        }
        html_escape(of.f, r->id);
        fputs("<br>answer: <code>", of.f);
        html_escape(of.f, r->answer);
        fputs("</code></figcaption></figure>\n", of.f);
        n++;
    }
    free(idx);
    fprintf(of.f, "<p>%ld misses.</p>\n", n);
    if (lp_outfile_commit(&of, &err)) return cli_error(err.status, "--gallery: %s", err.msg);
    if (failed) return cli_error(LOUPE_ERR_IO, "--gallery: %ld images could not be drawn (see above)", failed);
    return CLI_EXIT_OK;
}

/* ---- the report: read back everything the results file holds for this
 * selection, so a resumed run reports exactly what an uninterrupted one
 * would ---- */

static int report(const lp_results *res, const char *const *only, size_t n_only, const char *meta,
                  const char *report_path) {
    lp_eval_report rep;
    lp_error err = {0};
    if (lp_eval_report_build(res, only, n_only, &rep, &err)) return cli_error(err.status, "%s", err.msg);
    lp_eval_report_print(&rep, stdout);
    int rc = fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
    if (rc == CLI_EXIT_OK && report_path) {
        char *json = lp_eval_report_json(&rep, meta);
        lp_outfile of;
        if (!json) rc = cli_error(LOUPE_ERR_NOMEM, "--report: out of memory");
        else if (lp_outfile_open(&of, report_path, &err)) rc = cli_error(err.status, "--report: %s", err.msg);
        else {
            fputs(json, of.f);
            fputc('\n', of.f);
            if (lp_outfile_commit(&of, &err)) rc = cli_error(err.status, "--report: %s", err.msg);
        }
        free(json);
    }
    lp_eval_report_free(&rep);
    return rc;
}

static char *meta_json(const char *model, const char *mmproj, const char *data, const char *split, long limit,
                       const char *shard, const char *results) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (model) cJSON_AddStringToObject(o, "model", model);
    if (mmproj) cJSON_AddStringToObject(o, "mmproj", mmproj);
    if (data) cJSON_AddStringToObject(o, "data", data);
    if (split) cJSON_AddStringToObject(o, "split", split);
    if (limit >= 0) cJSON_AddNumberToObject(o, "limit", (double)limit);
    if (shard) cJSON_AddStringToObject(o, "shard", shard);
    if (results) cJSON_AddStringToObject(o, "results", results);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return t;
}

/* ---- one sample ---- */

typedef struct image_cache {
    char path[PATH_MAX];
    loupe_image *img;
    char error[LP_ERROR_MSG_MAX];
    loupe_status status;
} image_cache;

/* A referring sample's region: its box (gt), or its mask decoded to the
 * image's size (*mask malloc'd, the caller frees it). On failure *error
 * gets the reason (malloc'd). */
static loupe_status refer_region(const lp_ref *ref, const double gt[4], const loupe_image *img, loupe_region *reg,
                                 unsigned char **mask, char **error) {
    *reg = (loupe_region){.kind = LOUPE_REGION_BOX, .box = {gt[0], gt[1], gt[2], gt[3]}};
    if (!ref->rle) return LOUPE_OK;
    const int W = loupe_image_width(img), H = loupe_image_height(img);
    lp_error e = {0};
    if (ref->rle_w != W || ref->rle_h != H)
        lp_fail(&e, LOUPE_ERR_INVALID_ARG, "the region's mask is %dx%d but the image is %dx%d", ref->rle_w, ref->rle_h,
                W, H);
    else if (!(*mask = malloc((size_t)W * (size_t)H)))
        lp_fail(&e, LOUPE_ERR_NOMEM, "out of memory");
    else if (!lp_rle_decode(ref->rle, ref->n_rle, H, W, *mask, &e))
        *reg = (loupe_region){.kind = LOUPE_REGION_MASK, .mask = *mask, .mask_w = W, .mask_h = H};
    if (!e.status) return LOUPE_OK;
    free(*mask);
    *mask = NULL;
    *error = strdup(e.msg);
    return e.status;
}

static void run_sample(loupe_context *ctx, const lp_ref *ref, const char *images_dir, image_cache *ic,
                       lp_eval_record *r, loupe_status *st_out) {
    r->gt[0] = ref->bbox[0];
    r->gt[1] = ref->bbox[1];
    r->gt[2] = ref->bbox[0] + ref->bbox[2];
    r->gt[3] = ref->bbox[1] + ref->bbox[3];
    *st_out = LOUPE_OK;
    char path[PATH_MAX];
    if (!join_path(images_dir, ref->image, path, sizeof path)) {
        char msg[64];
        snprintf(msg, sizeof msg, "image path too long (over %d bytes)", PATH_MAX);
        r->error = strdup(msg);
        *st_out = LOUPE_ERR_LIMIT;
        return;
    }
    if (strcmp(path, ic->path)) { /* consecutive expressions usually share an image */
        loupe_image_free(ic->img);
        ic->img = NULL;
        snprintf(ic->path, sizeof ic->path, "%s", path);
        ic->status = loupe_image_from_file(path, &ic->img, ic->error, sizeof ic->error);
    }
    if (ic->status) {
        r->error = strdup(ic->error);
        *st_out = ic->status;
        return;
    }
    loupe_answer *a = NULL;
    loupe_status st;
    if (r->refer) {
        loupe_region reg;
        unsigned char *mask = NULL;
        if ((st = refer_region(ref, r->gt, ic->img, &reg, &mask, &r->error))) {
            *st_out = st;
            return;
        }
        st = loupe_ask_regions(ctx, ic->img, ref->expr, &reg, 1, &a);
        free(mask);
    } else {
        st = loupe_ground(ctx, ic->img, ref->expr, &a);
    }
    if (st) {
        r->error = strdup(loupe_context_last_error(ctx));
        *st_out = st;
        return;
    }
    r->answer = strdup(loupe_answer_text(a));
    const loupe_timings *t = loupe_answer_timings(a);
    r->encode_ms = t->encode_ms;
    r->prefill_ms = t->prefill_ms;
    r->decode_ms = t->decode_ms;
    if (r->refer) {
        r->expected = strdup(ref->answer);
        r->correct = lp_answer_names(r->answer, ref->category);
        r->exact = lp_answer_exact(r->answer, ref->answer);
    } else if (loupe_answer_n_boxes(a) > 0) {
        const loupe_box *b = loupe_answer_box(a, 0);
        r->pred[0] = b->x1;
        r->pred[1] = b->y1;
        r->pred[2] = b->x2;
        r->pred[3] = b->y2;
        r->has_pred = 1;
        r->iou = lp_iou(r->pred, r->gt);
    } else {
        const loupe_box_issue *is = loupe_answer_issue(a, 0);
        r->reason = strdup(is ? is->reason : "no box in the answer");
    }
    loupe_answer_free(a);
}

int cmd_eval(int argc, char **argv) {
    cli_model_args ma;
    cli_model_args_init(&ma);
    loupe_context_params cp = loupe_context_default_params();
    cp.max_tokens = 64;
    const char *data = NULL, *refs = NULL, *images = NULL, *split = NULL, *out_path = "loupe-eval.jsonl";
    const char *shard_text = NULL, *report_path = NULL, *gallery = NULL;
    long limit = -1;
    int resume = 0, force = 0, quiet = 0, shard_k = 1, shard_n = 1, refer = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            eval_help(stdout);
            return CLI_EXIT_OK;
        }
        if (!strcmp(a, "--resume")) { resume = 1; continue; }
        if (!strcmp(a, "--force")) { force = 1; continue; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (!strcmp(a, "--llamacpp-compat")) { ma.params.llamacpp_compat = 1; continue; }
        if (a[0] != '-') return cli_usage("eval", "unexpected argument '%s'", a);
        if (i + 1 >= argc) return cli_usage("eval", "option '%s' needs a value", a);
        const char *v = argv[++i];
        int rc = CLI_EXIT_OK;
        long n;
        if (cli_model_arg(&ma, "eval", a, v, &rc)) {
            if (rc != CLI_EXIT_OK) return rc;
        } else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--refs")) refs = v;
        else if (!strcmp(a, "--images")) images = v;
        else if (!strcmp(a, "--split")) split = v;
        else if (!strcmp(a, "--out")) out_path = v;
        else if (!strcmp(a, "--report")) report_path = v;
        else if (!strcmp(a, "--gallery")) gallery = v;
        else if (!strcmp(a, "--task")) {
            if (strcmp(v, "ground") && strcmp(v, "refer")) return cli_usage("eval", "--task: '%s' is not ground or refer", v);
            refer = !strcmp(v, "refer");
        }
        else if (!strcmp(a, "--shard")) {
            lp_error err = {0};
            if (lp_shard_parse(v, &shard_k, &shard_n, &err)) return cli_usage("eval", "%s", err.msg);
            shard_text = v;
        } else if (!strcmp(a, "--limit")) {
            if (!cli_parse_int(v, 1, 1000000000L, &limit)) return cli_usage("eval", "--limit: '%s' is not a count (1 or more)", v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!cli_parse_int(v, 1, 1024, &n)) return cli_usage("eval", "%s: '%s' is not a thread count (1..1024)", a, v);
            cp.n_threads = (int)n;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!cli_parse_int(v, 1, 100000, &n)) return cli_usage("eval", "%s: '%s' is not a token count (1 or more)", a, v);
            cp.max_tokens = (int)n;
        } else return cli_usage("eval", "unknown option '%s'", a);
    }
    if (!data) return cli_usage("eval", "--data FILE is required");
    if (resume && force) return cli_usage("eval", "--resume and --force contradict each other");
    if (refer && refs) return cli_usage("eval", "--task refer reads loupe synth's annotations.json; --refs does not apply");
    int rc = cli_model_resolve(&ma, "eval");
    if (rc != CLI_EXIT_OK) return rc;
    loupe_log_set(cli_log_stderr, NULL, LOUPE_LOG_WARN); /* e.g. a torn last results line being repaired */

    /* Images default to the data file's directory (synth's layout). */
    char data_dir[PATH_MAX];
    if (!images) {
        snprintf(data_dir, sizeof data_dir, "%s", data);
        char *slash = strrchr(data_dir, '/');
        if (slash) *slash = '\0';
        else snprintf(data_dir, sizeof data_dir, ".");
        images = data_dir;
    }

    lp_error err = {0};
    lp_refset set;
    if (refer ? lp_refset_load_regions(data, &set, &err) : lp_refset_load(data, refs, &set, &err))
        return cli_error(err.status, "%s", err.msg);

    /* selection: split, then limit, then shard */
    size_t *sel = NULL, n_sel = 0, n_split = 0;
    const char **sel_ids = NULL;
    loupe_model *m = NULL;
    loupe_context *ctx = NULL;
    lp_results done = {0};
    image_cache ic = {.path = ""};
    results_out ro = {.fd = -1, .path = out_path};
    char *meta = NULL;
    long n_errors = 0;
    loupe_status first_error = LOUPE_OK;
    if (lp_refset_select(&set, split, limit, shard_k, shard_n, &sel, &n_sel, &n_split, &err)) {
        rc = cli_error(err.status, "%s", err.msg);
        goto out;
    }
    if (n_split == 0) {
        rc = cli_error(LOUPE_ERR_INVALID_ARG, "%s: no samples%s%s%s", data, split ? " in split '" : "",
                       split ? split : "", split ? "'" : "");
        goto out;
    }
    sel_ids = malloc((n_sel ? n_sel : 1) * sizeof *sel_ids);
    if (!sel_ids) { rc = cli_error(LOUPE_ERR_NOMEM, "out of memory"); goto out; }
    for (size_t k = 0; k < n_sel; k++) sel_ids[k] = set.refs[sel[k]].id;
    lp_ids_sort(sel_ids, n_sel);

    /* results file: never clobber finished work */
    if (resume) {
        if (lp_results_read(out_path, 1, 1, &done, &err)) { rc = cli_error(err.status, "%s", err.msg); goto out; }
        if (done.n && done.rec[0].refer != refer) {
            rc = cli_error(LOUPE_ERR_INVALID_ARG, "%s holds %s results; --resume continues the same --task (or --out "
                                                  "another file)", out_path, done.rec[0].refer ? "referring" : "grounding");
            goto out;
        }
    } else if (!force && access(out_path, F_OK) == 0) {
        rc = cli_error(LOUPE_ERR_INVALID_ARG, "%s exists: --resume to continue it, --force to start it afresh, or --out "
                                              "another file", out_path);
        goto out;
    }
    ro.fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (force ? O_TRUNC : 0), 0666);
    if (ro.fd < 0) {
        char eb[128];
        rc = cli_error(LOUPE_ERR_IO, "%s: cannot open for writing: %s", out_path, lp_strerror(errno, eb, sizeof eb));
        goto out;
    }
    const char **done_ids = malloc((done.n ? done.n : 1) * sizeof *done_ids);
    size_t n_done = 0;
    if (!done_ids) { rc = cli_error(LOUPE_ERR_NOMEM, "out of memory"); goto out; }
    {
        size_t *idx, n_idx;
        if (lp_results_latest(&done, &idx, &n_idx, &err)) { free(done_ids); rc = cli_error(err.status, "%s", err.msg); goto out; }
        for (size_t i = 0; i < n_idx; i++)
            if (!done.rec[idx[i]].error[0]) done_ids[n_done++] = done.rec[idx[i]].id; /* failed ones are retried */
        free(idx);
        lp_ids_sort(done_ids, n_done);
    }

    if ((rc = (int)loupe_model_load(ma.model, ma.mmproj, &ma.params, &m, ic.error, sizeof ic.error))) {
        free(done_ids);
        rc = cli_error((loupe_status)rc, "%s", ic.error);
        goto out;
    }
    ic.error[0] = '\0';
    cp.progress = cancel_if_stopped;
    if ((rc = (int)loupe_context_new(m, &cp, &ctx))) {
        free(done_ids);
        rc = cli_error((loupe_status)rc, "%s", loupe_last_error());
        goto out;
    }
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    progress pg = {.tty = isatty(2), .quiet = quiet, .metric = refer ? "named" : "Acc@0.5", .total = (long)n_sel,
                   .t0 = now_s()};
    pg.last = pg.t0 - 100;
    for (size_t k = 0; k < n_sel; k++)
        if (lp_id_in(set.refs[sel[k]].id, done_ids, n_done)) pg.skipped++;
    if (!quiet)
        fprintf(stderr, "eval: %s (%s, %zu samples%s%s%s, %zu selected%s), model %s; %ld already in %s\n", data,
                set.format, set.n, split ? ", split " : "", split ? split : "", "", n_sel,
                shard_text ? ", shard" : "", ma.model, pg.skipped, out_path);
    ro.last_sync = now_s();
    for (size_t k = 0; k < n_sel && !g_stop && rc == CLI_EXIT_OK; k++) {
        const lp_ref *ref = &set.refs[sel[k]];
        if (lp_id_in(ref->id, done_ids, n_done)) continue;
        lp_eval_record r = {.refer = refer};
        loupe_status st;
        run_sample(ctx, ref, images, &ic, &r, &st);
        if (st == LOUPE_ERR_CANCELLED && g_stop) { /* Ctrl-C: the sample in flight is not recorded */
            lp_eval_record_clear(&r);
            break;
        }
        r.id = ref->id, r.image = ref->image, r.expr = ref->expr; /* borrowed for writing */
        r.split = ref->split, r.category = ref->category, r.kind = ref->kind;
        if (st) {
            n_errors++;
            if (!first_error) first_error = st;
            fprintf(stderr, "%sloupe: error: sample %s: %s\n", pg.tty && !quiet ? "\n" : "", ref->id, r.error);
        }
        rc = append_record(&ro, &r);
        r.id = r.image = r.expr = r.split = r.category = r.kind = NULL;
        pg.done++;
        pg.correct += !st && lp_eval_record_correct(&r);
        lp_eval_record_clear(&r);
        progress_show(&pg, 0);
    }
    progress_show(&pg, 1);
    free(done_ids);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (fsync(ro.fd) && rc == CLI_EXIT_OK) {
        char eb[128];
        rc = cli_error(LOUPE_ERR_IO, "%s: fsync failed: %s", out_path, lp_strerror(errno, eb, sizeof eb));
    }
    if (close(ro.fd) && rc == CLI_EXIT_OK) rc = cli_error(LOUPE_ERR_IO, "%s: close failed", out_path);
    ro.fd = -1;
    if (rc != CLI_EXIT_OK) goto out;

    /* the report over everything the file holds for this selection */
    lp_results_free(&done);
    if (lp_results_read(out_path, 0, 0, &done, &err)) { rc = cli_error(err.status, "%s", err.msg); goto out; }
    meta = meta_json(ma.model, ma.mmproj, data, split, limit, shard_text, out_path);
    rc = report(&done, sel_ids, n_sel, meta, report_path);
    if (rc == CLI_EXIT_OK && gallery) rc = write_gallery(gallery, images, &done, sel_ids, n_sel);
    if (g_stop) {
        fprintf(stderr, "loupe: interrupted; the report covers the finished samples; rerun with --resume to go on\n");
        if (rc == CLI_EXIT_OK) rc = 130;
    } else if (rc == CLI_EXIT_OK && n_errors) {
        rc = cli_error(first_error, "%ld samples failed to run (recorded with their error in %s; --resume retries them)",
                       n_errors, out_path);
    }
out:
    if (ro.fd >= 0) close(ro.fd);
    free(meta);
    loupe_image_free(ic.img);
    lp_results_free(&done);
    loupe_context_free(ctx);
    loupe_model_free(m);
    free(sel);
    free(sel_ids);
    lp_refset_free(&set);
    return rc;
}

/* `loupe eval-merge [--report FILE] RESULTS...`: one report over shards. */
int cmd_eval_merge(int argc, char **argv) {
    const char *report_path = NULL;
    lp_results all = {0};
    lp_error err = {0};
    int n_files = 0, rc = CLI_EXIT_OK;
    for (int i = 1; i < argc && rc == CLI_EXIT_OK; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            eval_help(stdout);
            lp_results_free(&all);
            return CLI_EXIT_OK;
        }
        if (!strcmp(a, "--report")) {
            if (i + 1 >= argc) return cli_usage("eval-merge", "--report needs a value");
            report_path = argv[++i];
            continue;
        }
        if (a[0] == '-') {
            lp_results_free(&all);
            return cli_usage("eval-merge", "unknown option '%s'", a);
        }
        lp_results r;
        if (lp_results_read(a, 0, 0, &r, &err) || lp_results_concat(&all, &r, &err)) rc = cli_error(err.status, "%s", err.msg);
        n_files++;
    }
    if (rc == CLI_EXIT_OK && !n_files) rc = cli_usage("eval-merge", "no results files given");
    if (rc == CLI_EXIT_OK) {
        cJSON *files = cJSON_CreateObject();
        cJSON_AddNumberToObject(files, "merged_files", n_files);
        char *meta = cJSON_PrintUnformatted(files);
        cJSON_Delete(files);
        rc = report(&all, NULL, 0, meta, report_path);
        free(meta);
    }
    lp_results_free(&all);
    return rc;
}
