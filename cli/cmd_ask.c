/* cli/cmd_ask.c — `loupe ask -m MODEL.gguf --mmproj MMPROJ.gguf IMAGE "question"`:
 * answer a question about an image, streaming the answer to stdout.
 * `--region x1,y1,x2,y2` / `--mask FILE` point at parts of the image
 * (Ferret-style referring; fusion/vlm.h describes the region text and
 * geometry). */
#include "cli.h"
#include "../fusion/vlm.h"
#include "../vision/clip.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ask_help(FILE *out) {
    lp_vlm_gen_params g = lp_vlm_gen_default_params();
    fprintf(out,
            "usage: loupe ask -m MODEL.gguf --mmproj MMPROJ.gguf IMAGE \"question\" [options]\n\n"
            "Answers a question about an image with a LLaVA-style model: a language-model\n"
            "GGUF and its vision projector (mmproj) GGUF. The answer is printed to stdout\n"
            "as it is generated, then a newline.\n\n"
            "options:\n"
            "  -m, --model FILE     language model GGUF (required)\n"
            "  --mmproj FILE        vision encoder + projector GGUF (required)\n"
            "  --template NAME      chat template: %s\n"
            "                       (default: recognised from the model's tokenizer.chat_template,\n"
            "                       vicuna when it has none)\n"
            "  --system TEXT        system prompt (\"\" for none; default: the template's)\n"
            "  -n, --n-predict N    most tokens to generate, -1 for no limit (default %d)\n"
            "  --temp T             temperature, 0 = greedy (default 0)\n"
            "  --top-k K            top-k, 0 = off (default %d)\n"
            "  --top-p P            top-p, 1 = off (default %.2f)\n"
            "  --seed S             sampling seed (default 0)\n"
            "  -t, --threads N      threads (default: all CPUs)\n"
            "  -c, --ctx-size N     KV-cache positions (default: prompt + n-predict,\n"
            "                       at most the model's training context)\n"
            "  --llamacpp-compat    reproduce llama.cpp: its image preprocessing and the\n"
            "                       CLIP quirks of its LLaVA graph (default: the model's\n"
            "                       PyTorch behaviour, LLaVA pad-to-square preprocessing)\n"
            "  --prep MODE          image preprocessing: pad (LLaVA expand-to-square, the\n"
            "                       default), squash (stretch to the input size: Ferret's)\n"
            "                       or llamacpp (llama.cpp's resize-then-pad)\n"
            "\nregions (Ferret-style referring; the mmproj needs a region sampler and the\n"
            "model a <region_fea> token):\n"
            "  --region X1,Y1,X2,Y2 a box in pixels of the original image, pixel edges: the\n"
            "                       whole image is 0,0,W,H; X1 < X2 and Y1 < Y2; parts\n"
            "                       outside the image are clipped, a box that does not\n"
            "                       overlap the image is an error\n"
            "  --mask FILE          a mask image of exactly the image's size (any format);\n"
            "                       pixels with any nonzero channel are the region\n"
            "                       Both may be repeated (at most %d regions, in order).\n"
            "                       Each region becomes \"[x1, y1, x2, y2] <region_fea>\" in\n"
            "                       the question (coordinates 0..999 relative to the original\n"
            "                       image; a mask gives its bounding box): at each \"%s\"\n"
            "                       in the question, one per region, or appended after the\n"
            "                       question when it has none. Example:\n"
            "                         loupe ask -m M.gguf --mmproj P.gguf --prep squash photo.png \\\n"
            "                             --region 10,20,200,180 \"What is %s?\"\n\n"
            "  -v, --verbose        timings and peak memory on stderr\n"
            "  -h, --help           this text\n",
            lp_template_names(), g.n_predict, g.sampling.top_k, g.sampling.top_p, LP_VLM_MAX_REGIONS,
            LP_VLM_REGION_PLACEHOLDER, LP_VLM_REGION_PLACEHOLDER);
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_u64(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    if (*s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* "x1,y1,x2,y2": four finite numbers, x1 < x2, y1 < y2. */
static bool parse_box(const char *s, double box[4]) {
    const char *p = s;
    for (int i = 0; i < 4; i++) {
        char *end;
        errno = 0;
        box[i] = strtod(p, &end);
        if (errno || end == p || !isfinite(box[i])) return false;
        while (*end == ' ') end++;
        if (i < 3) {
            if (*end != ',') return false;
            p = end + 1;
        } else if (*end) {
            return false;
        }
    }
    return box[0] < box[2] && box[1] < box[3];
}

/* A region as given on the command line: a box, or a mask file. */
typedef struct region_arg {
    const char *mask_path; /* NULL: a box */
    double box[4];
    uint8_t *mask;         /* loaded later */
} region_arg;

/* Load a mask file as w×h bytes (nonzero where any channel is). */
static int load_mask(region_arg *r, const lp_image *img, const char *image_path, lp_vlm_region *out) {
    lp_error err = {0};
    lp_image m = {0};
    if (lp_image_load(r->mask_path, &m, &err)) return cli_error(err.status, "--mask: %s", err.msg);
    if (m.w != img->w || m.h != img->h) {
        int rc = cli_error(LOUPE_ERR_INVALID_ARG, "--mask %s: the mask is %dx%d but the image %s is %dx%d (they must match)",
                           r->mask_path, m.w, m.h, image_path, img->w, img->h);
        lp_image_free(&m);
        return rc;
    }
    const size_t n = (size_t)m.w * m.h;
    r->mask = malloc(n);
    if (!r->mask) {
        lp_image_free(&m);
        return cli_error(LOUPE_ERR_NOMEM, "--mask %s: out of memory", r->mask_path);
    }
    size_t inside = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *px = m.rgb + 3 * i;
        r->mask[i] = (px[0] | px[1] | px[2]) ? 1 : 0;
        inside += r->mask[i];
    }
    lp_image_free(&m);
    if (inside == 0) return cli_error(LOUPE_ERR_INVALID_ARG, "--mask %s: the mask is empty (every pixel is 0)", r->mask_path);
    *out = (lp_vlm_region){.kind = LP_VLM_REGION_MASK, .mask = r->mask, .mask_w = img->w, .mask_h = img->h};
    return CLI_EXIT_OK;
}

typedef struct stream_state {
    bool failed; /* stdout broke: stop generating */
    size_t written;
} stream_state;

static int on_text(void *user, const char *text, size_t len) {
    stream_state *s = user;
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        s->failed = true;
        return 1;
    }
    s->written += len;
    return 0;
}

static void log_stderr(loupe_log_level level, const char *msg, void *user) {
    (void)user;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "loupe: %s: %s\n", names[level <= LOUPE_LOG_DEBUG ? level : LOUPE_LOG_DEBUG], msg);
}

static void print_stats(const lp_vlm *vlm, const lp_vlm_stats *s) {
    fprintf(stderr, "\n");
    fprintf(stderr, "template  %s\n", lp_vlm_template(vlm)->name);
    fprintf(stderr, "load      %9.1f ms (model + mmproj)\n", s->load_ms);
    fprintf(stderr, "encode    %9.1f ms (preprocess + ViT + projector, %d image tokens)\n", s->encode_ms,
            s->n_image_tokens);
    fprintf(stderr, "prefill   %9.1f ms %6d tokens (%d text + %d image) %9.1f tok/s\n", s->prefill_ms,
            s->prefill_tokens, s->n_text_tokens, s->n_image_tokens, s->prefill_tok_s);
    fprintf(stderr, "decode    %9.1f ms %6d tokens %30.1f tok/s\n", s->decode_ms, s->decode_tokens,
            s->decode_tok_s);
    if (s->n_regions > 0)
        fprintf(stderr, "regions   %9.1f ms %6d (region sampler, inside encode)\n", s->region_ms, s->n_regions);
    fprintf(stderr, "stopped   %s (context %d positions)\n", lp_vlm_stop_name(s->stop), s->n_ctx);
    fprintf(stderr, "peak RSS  %9.1f MiB\n", s->peak_rss_kb / 1024.0);
}

int cmd_ask(int argc, char **argv) {
    const char *model = NULL, *mmproj = NULL, *image_path = NULL, *question = NULL;
    lp_vlm_params vp = lp_vlm_default_params();
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    lp_vlm_gen_params gp = lp_vlm_gen_default_params();
    bool verbose = false, only_pos = false;
    int n_pos = 0;
    region_arg rargs[LP_VLM_MAX_REGIONS];
    int n_reg = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || !a[1]) {
            if (n_pos == 0) image_path = a;
            else if (n_pos == 1) question = a;
            else return cli_usage("ask", "unexpected argument '%s' (quote the question)", a);
            n_pos++;
            continue;
        }
        if (!strcmp(a, "--")) { only_pos = true; continue; }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { ask_help(stdout); return CLI_EXIT_OK; }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { verbose = true; continue; }
        if (!strcmp(a, "--llamacpp-compat")) { vp.llamacpp = true; continue; }
        /* Everything else takes a value. */
        if (i + 1 >= argc) return cli_usage("ask", "option '%s' needs a value", a);
        const char *val = argv[++i];
        long n;
        unsigned long long u;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--mmproj")) mmproj = val;
        else if (!strcmp(a, "--template")) vp.template_name = val;
        else if (!strcmp(a, "--system")) gp.system = val;
        else if (!strcmp(a, "--prep")) {
            if (!strcmp(val, "pad")) vp.prep = LP_PREP_PAD_PIL;
            else if (!strcmp(val, "squash") || !strcmp(val, "squeeze")) vp.prep = LP_PREP_SQUASH_PIL;
            else if (!strcmp(val, "llamacpp")) vp.prep = LP_PREP_LLAMACPP;
            else return cli_usage("ask", "--prep: '%s' is not a mode (pad, squash, llamacpp)", val);
        } else if (!strcmp(a, "--region") || !strcmp(a, "--mask")) {
            if (n_reg >= LP_VLM_MAX_REGIONS) return cli_usage("ask", "at most %d regions", LP_VLM_MAX_REGIONS);
            region_arg *r = &rargs[n_reg];
            memset(r, 0, sizeof *r);
            if (a[2] == 'm') r->mask_path = val;
            else if (!parse_box(val, r->box))
                return cli_usage("ask",
                                 "--region: '%s' is not a box X1,Y1,X2,Y2 (four numbers, pixels of the original "
                                 "image, with X1 < X2 and Y1 < Y2)",
                                 val);
            n_reg++;
        }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!parse_int(val, -1, INT_MAX, &n)) return cli_usage("ask", "%s: '%s' is not a token count (-1 or more)", a, val);
            gp.n_predict = (int)n;
        } else if (!strcmp(a, "--temp")) {
            if (!parse_float(val, 0.0f, 100.0f, &gp.sampling.temp)) return cli_usage("ask", "--temp: '%s' is not a temperature in [0, 100]", val);
        } else if (!strcmp(a, "--top-k")) {
            if (!parse_int(val, 0, INT_MAX, &n)) return cli_usage("ask", "--top-k: '%s' is not a count (0 or more)", val);
            gp.sampling.top_k = (int)n;
        } else if (!strcmp(a, "--top-p")) {
            if (!parse_float(val, 0.0f, 1.0f, &gp.sampling.top_p)) return cli_usage("ask", "--top-p: '%s' is not in [0, 1]", val);
        } else if (!strcmp(a, "--seed")) {
            if (!parse_u64(val, &u)) return cli_usage("ask", "--seed: '%s' is not a non-negative integer", val);
            gp.sampling.seed = u;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!parse_int(val, 1, 1024, &n)) return cli_usage("ask", "%s: '%s' is not a thread count (1..1024)", a, val);
            cp.n_threads = (int)n;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!parse_int(val, 0, INT_MAX, &n)) return cli_usage("ask", "%s: '%s' is not a context size", a, val);
            cp.n_ctx = (int)n;
        } else return cli_usage("ask", "unknown option '%s'", a);
    }
    if (!model)
        return cli_usage("ask", "a model is required: -m MODEL.gguf --mmproj MMPROJ.gguf (a LLaVA-style language "
                                "model and its vision projector)");
    if (!mmproj) return cli_usage("ask", "--mmproj MMPROJ.gguf is required (the vision projector for %s)", model);
    if (!image_path) return cli_usage("ask", "no image given");
    if (!question) return cli_usage("ask", "no question given");

    if (verbose) loupe_log_set(log_stderr, NULL, LOUPE_LOG_INFO);

    lp_error err = {0};
    lp_image img = {0};
    lp_vlm *vlm = NULL;
    lp_vlm_ctx *ctx = NULL;
    char *answer = NULL;
    lp_vlm_stats stats = {0};
    stream_state ss = {0};
    lp_vlm_region regions[LP_VLM_MAX_REGIONS];
    int rc;

    /* The image first: it is the cheapest thing to get wrong; then the
     * regions against it. */
    if (lp_image_load(image_path, &img, &err)) { rc = cli_error(err.status, "%s", err.msg); goto out; }
    for (int i = 0; i < n_reg; i++) {
        if (rargs[i].mask_path) {
            if ((rc = load_mask(&rargs[i], &img, image_path, &regions[i])) != CLI_EXIT_OK) goto out;
        } else {
            regions[i] = (lp_vlm_region){.kind = LP_VLM_REGION_BOX};
            memcpy(regions[i].box, rargs[i].box, sizeof regions[i].box);
        }
        double clipped[4];
        if (lp_vlm_region_box(&regions[i], img.w, img.h, clipped, &err)) {
            if (rargs[i].mask_path) rc = cli_error(err.status, "--mask %s: %s", rargs[i].mask_path, err.msg);
            else rc = cli_error(err.status, "--region: %s", err.msg);
            goto out;
        }
    }
    if (!(vlm = lp_vlm_load(model, mmproj, &vp, &err))) { rc = cli_error(err.status, "%s", err.msg); goto out; }
    if (!(ctx = lp_vlm_ctx_new(vlm, &cp, &err))) { rc = cli_error(err.status, "%s", err.msg); goto out; }

    if (verbose && n_reg > 0) {
        char *q = NULL;
        if (lp_vlm_region_question(question, regions, n_reg, img.w, img.h, &q, &err) == LOUPE_OK)
            fprintf(stderr, "question  %s\n", q);
        free(q);
    }
    loupe_status st =
        lp_vlm_ask_regions(vlm, ctx, &img, question, regions, n_reg, &gp, on_text, &ss, &answer, &stats, &err);
    if (ss.written > 0 || st == LOUPE_OK) fputc('\n', stdout);
    fflush(stdout);
    if (verbose && stats.prefill_tokens > 0) print_stats(vlm, &stats);
    if (ss.failed) rc = cli_error(LOUPE_ERR_IO, "writing to stdout failed");
    else if (st) rc = cli_error(st, "%s", err.msg);
    else rc = CLI_EXIT_OK;
out:
    for (int i = 0; i < n_reg; i++) free(rargs[i].mask);
    free(answer);
    lp_vlm_ctx_free(ctx);
    lp_vlm_free(vlm);
    lp_image_free(&img);
    return rc;
}
