/* cli/cmd_ask.c — `loupe ask -m MODEL.gguf --mmproj MMPROJ.gguf IMAGE "question"`:
 * answer a question about an image, streaming the answer to stdout, then its
 * boxes in original pixels; `--json` prints one JSON object instead and
 * `--draw FILE.png` writes the image with the boxes drawn. Everything goes
 * through the public API (include/loupe.h), so these boxes are the ones any
 * program using loupe gets.
 * `--region x1,y1,x2,y2` / `--mask FILE` point at parts of the image
 * (Ferret-style referring; fusion/vlm.h describes the region text and
 * geometry). */
#include "cli.h"
#include "../fusion/vlm.h"
#include "../vision/clip.h"

#include <cJSON.h>

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
            "usage: loupe ask [-m MODEL.gguf --mmproj MMPROJ.gguf] IMAGE \"question\" [options]\n\n"
            "Answers a question about an image with a vision-language model: a language-model\n"
            "GGUF and its vision projector (mmproj) GGUF, in llama.cpp's conventions. The\n"
            "family comes from the mmproj's clip.projector_type: LLaVA-style (mlp/linear:\n"
            "LLaVA-1.5, Ferret (from `loupe convert --from-hf`), the shipped tiny model),\n"
            "InternVL2.5/3 (internvl: dynamic 448-px tiles) or Qwen2.5-VL (qwen2.5vl_merger:\n"
            "any size, M-RoPE). The answer is printed to stdout as it is generated, then a\n"
            "newline.\n\n"
            "options:\n"
            "  -m, --model FILE     language model GGUF (default: the shipped tiny model,\n"
            "                       models/" CLI_DEFAULT_MODEL ".gguf; see loupe eval --help)\n"
            "  --mmproj FILE        vision encoder + projector GGUF (required with -m)\n"
            "  --template NAME      chat template: %s\n"
            "                       (default: recognised from the model's tokenizer.chat_template,\n"
            "                       vicuna when it has none)\n"
            "  --system TEXT        system prompt (\"\" for none; default: the model family's\n"
            "                       (InternVL: its own), else the template's)\n"
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
            "  --prep MODE          image preprocessing: pad (LLaVA expand-to-square),\n"
            "                       squash (stretch to the input size: Ferret's) or\n"
            "                       llamacpp (llama.cpp's resize-then-pad); default: the\n"
            "                       mmproj's clip.vision.image_aspect_ratio, else pad\n"
            "  --image-min-tokens N, --image-max-tokens N\n"
            "                       Qwen2.5-VL: the image is resized to take this many\n"
            "                       tokens at least / at most (default 1024 / 2048, the\n"
            "                       grounding range; --llamacpp-compat: 8 / 4096)\n"
            "  --box-format NAME    how the model writes boxes (ferret, shikra, internvl,\n"
            "                       qwen2-vl, qwen2.5-vl, kosmos-2, florence-2, paligemma;\n"
            "                       default: the model family's)\n"
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
            "\noutput:\n"
            "  --json               print one JSON object instead of the streamed text:\n"
            "                       answer, boxes [{x1, y1, x2, y2, label}] in pixels of the\n"
            "                       original image, box_issues (box text that was skipped,\n"
            "                       with the reason), image {path, width, height}, model\n"
            "                       {name, path, mmproj_name, mmproj_path, family, template,\n"
            "                       box_format, prep}, timings (ms, tok/s) and peak memory\n"
            "  --draw FILE.png      also write the image with each box drawn in its own\n"
            "                       colour and labelled\n"
            "  Without --json the answer is followed by one line per box:\n"
            "    box 1: [x1, y1, x2, y2] label      (original-image pixels)\n\n"
            "  -v, --verbose        timings and peak memory on stderr\n"
            "  --stats              per decoder pass: weight bytes read, reads, neuron cache\n"
            "                       hit rate, active FFN fraction, I/O and compute time (stderr;\n"
            "                       --json always has them under weight_io)\n"
            "\nflash mode:\n" CLI_FLASH_HELP
            "  -h, --help           this text\n",
            lp_template_names(), g.n_predict, g.sampling.top_k, g.sampling.top_p, LP_VLM_MAX_REGIONS,
            LP_VLM_REGION_PLACEHOLDER, LP_VLM_REGION_PLACEHOLDER);
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
static int load_mask(region_arg *r, int w, int h, const char *image_path, loupe_region *out) {
    lp_error err = {0};
    lp_image m = {0};
    if (lp_image_load(r->mask_path, &m, &err)) return cli_error(err.status, "--mask: %s", err.msg);
    if (m.w != w || m.h != h) {
        int rc = cli_error(LOUPE_ERR_INVALID_ARG, "--mask %s: the mask is %dx%d but the image %s is %dx%d (they must match)",
                           r->mask_path, m.w, m.h, image_path, w, h);
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
    *out = (loupe_region){.kind = LOUPE_REGION_MASK, .mask = r->mask, .mask_w = w, .mask_h = h};
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

static double r2(double v);

static void print_stats(const loupe_model *m, const loupe_answer *a) {
    const loupe_timings *t = loupe_answer_timings(a);
    fprintf(stderr, "\n");
    fprintf(stderr, "family    %s, template %s, boxes %s\n", loupe_model_family(m), loupe_model_template(m),
            loupe_model_box_format(m));
    fprintf(stderr, "load      %9.1f ms (model + mmproj)\n", t->load_ms);
    fprintf(stderr, "encode    %9.1f ms (preprocess + ViT + projector, %d image tokens)\n", t->encode_ms,
            t->image_tokens);
    fprintf(stderr, "prefill   %9.1f ms %6d tokens (%d image) %9.1f tok/s\n", t->prefill_ms, t->prompt_tokens,
            t->image_tokens, t->prefill_tok_s);
    fprintf(stderr, "decode    %9.1f ms %6d tokens %21.1f tok/s\n", t->decode_ms, t->generated_tokens,
            t->decode_tok_s);
    fprintf(stderr, "stopped   %s\n", loupe_answer_stop_reason(a));
    fprintf(stderr, "peak RSS  %9.1f MiB\n", t->peak_rss_bytes / 1048576.0);
}

/* --stats: what each decoder pass read and computed (flash mode). */
static void print_token_stats(const loupe_answer *a) {
    int n = 0;
    loupe_token_stats pf;
    const loupe_token_stats *ts = loupe_answer_token_stats(a, &n, &pf);
    fprintf(stderr, "\n%-8s %12s %7s %8s %8s %9s %10s\n", "pass", "bytes read", "reads", "hit rate", "active",
            "I/O ms", "compute ms");
    fprintf(stderr, "%-8s %12lld %7lld %8.3f %8.3f %9.2f %10.2f\n", "prompt", pf.bytes_read, pf.reads, pf.hit_rate,
            pf.active_fraction, pf.io_ms, pf.compute_ms);
    long long bytes = 0, reads = 0;
    double io = 0, comp = 0, act = 0, hit = 0;
    for (int i = 0; i < n; i++) {
        char name[24];
        snprintf(name, sizeof name, "token %d", i + 1);
        fprintf(stderr, "%-8s %12lld %7lld %8.3f %8.3f %9.2f %10.2f\n", name, ts[i].bytes_read, ts[i].reads,
                ts[i].hit_rate, ts[i].active_fraction, ts[i].io_ms, ts[i].compute_ms);
        bytes += ts[i].bytes_read, reads += ts[i].reads, io += ts[i].io_ms, comp += ts[i].compute_ms;
        act += ts[i].active_fraction, hit += ts[i].hit_rate;
    }
    if (n > 0) {
        fprintf(stderr, "%-8s %12.0f %7.1f %8.3f %8.3f %9.2f %10.2f  (mean of %d tokens; %.1f ms/token)\n", "mean",
                (double)bytes / n, (double)reads / n, hit / n, act / n, io / n, comp / n, n, (io + comp) / n);
    }
}

static cJSON *token_stats_json(const loupe_token_stats *t) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "bytes_read", (double)t->bytes_read);
    cJSON_AddNumberToObject(o, "reads", (double)t->reads);
    cJSON_AddNumberToObject(o, "hit_rate", t->hit_rate);
    cJSON_AddNumberToObject(o, "active_fraction", t->active_fraction);
    cJSON_AddNumberToObject(o, "io_ms", r2(t->io_ms));
    cJSON_AddNumberToObject(o, "compute_ms", r2(t->compute_ms));
    return o;
}

/* Two decimals are plenty for pixels and keep float noise out of the JSON. */
static double r2(double v) { return round(v * 100.0) / 100.0; }

static const char *prep_name(loupe_prep p) {
    switch (p) {
    case LOUPE_PREP_PAD: return "pad";
    case LOUPE_PREP_SQUASH: return "squash";
    case LOUPE_PREP_LLAMACPP: return "llamacpp";
    default: return "auto";
    }
}

/* The whole result as one JSON object on stdout. */
static int print_json(const loupe_model *m, const loupe_image *img, const char *image_path, const loupe_answer *a) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return cli_error(LOUPE_ERR_NOMEM, "--json: out of memory");
    cJSON_AddStringToObject(o, "answer", loupe_answer_text(a));
    cJSON_AddStringToObject(o, "question", loupe_answer_question(a));
    cJSON *boxes = cJSON_AddArrayToObject(o, "boxes");
    for (int i = 0; i < loupe_answer_n_boxes(a); i++) {
        const loupe_box *b = loupe_answer_box(a, i);
        cJSON *jb = cJSON_CreateObject();
        /* exact (the float's value), as loupe eval writes them: the same box
         * prints the same number everywhere */
        cJSON_AddNumberToObject(jb, "x1", (double)b->x1);
        cJSON_AddNumberToObject(jb, "y1", (double)b->y1);
        cJSON_AddNumberToObject(jb, "x2", (double)b->x2);
        cJSON_AddNumberToObject(jb, "y2", (double)b->y2);
        cJSON_AddStringToObject(jb, "label", b->label);
        cJSON_AddItemToArray(boxes, jb);
    }
    cJSON *issues = cJSON_AddArrayToObject(o, "box_issues");
    for (int i = 0; i < loupe_answer_n_issues(a); i++) {
        const loupe_box_issue *is = loupe_answer_issue(a, i);
        cJSON *ji = cJSON_CreateObject();
        cJSON_AddNumberToObject(ji, "offset", is->offset);
        cJSON_AddStringToObject(ji, "reason", is->reason);
        cJSON_AddItemToArray(issues, ji);
    }
    cJSON *ji = cJSON_AddObjectToObject(o, "image");
    cJSON_AddStringToObject(ji, "path", image_path);
    cJSON_AddNumberToObject(ji, "width", loupe_image_width(img));
    cJSON_AddNumberToObject(ji, "height", loupe_image_height(img));
    cJSON *jm = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(jm, "name", loupe_model_name(m, LOUPE_FILE_MODEL));
    cJSON_AddStringToObject(jm, "path", loupe_model_path(m, LOUPE_FILE_MODEL));
    cJSON_AddStringToObject(jm, "mmproj_name", loupe_model_name(m, LOUPE_FILE_MMPROJ));
    cJSON_AddStringToObject(jm, "mmproj_path", loupe_model_path(m, LOUPE_FILE_MMPROJ));
    cJSON_AddStringToObject(jm, "family", loupe_model_family(m));
    cJSON_AddStringToObject(jm, "template", loupe_model_template(m));
    cJSON_AddStringToObject(jm, "box_format", loupe_model_box_format(m));
    cJSON_AddStringToObject(jm, "prep", prep_name(loupe_model_prep(m)));
    const loupe_timings *t = loupe_answer_timings(a);
    cJSON *jt = cJSON_AddObjectToObject(o, "timings");
    cJSON_AddNumberToObject(jt, "load_ms", r2(t->load_ms));
    cJSON_AddNumberToObject(jt, "encode_ms", r2(t->encode_ms));
    cJSON_AddNumberToObject(jt, "prefill_ms", r2(t->prefill_ms));
    cJSON_AddNumberToObject(jt, "prefill_tokens", t->prompt_tokens);
    cJSON_AddNumberToObject(jt, "reused_tokens", t->reused_tokens);
    cJSON_AddNumberToObject(jt, "prefill_tok_s", r2(t->prefill_tok_s));
    cJSON_AddNumberToObject(jt, "decode_ms", r2(t->decode_ms));
    cJSON_AddNumberToObject(jt, "decode_tokens", t->generated_tokens);
    cJSON_AddNumberToObject(jt, "decode_tok_s", r2(t->decode_tok_s));
    cJSON_AddNumberToObject(jt, "image_tokens", t->image_tokens);
    cJSON_AddNumberToObject(jt, "weight_bytes_read", (double)t->weight_bytes_read);
    cJSON_AddNumberToObject(jt, "weight_reads", (double)t->weight_reads);
    cJSON_AddNumberToObject(jt, "io_ms", r2(t->io_ms));
    int n_ts = 0;
    loupe_token_stats pf;
    const loupe_token_stats *ts = loupe_answer_token_stats(a, &n_ts, &pf);
    cJSON *jf = cJSON_AddObjectToObject(o, "weight_io");
    if (jf) {
        cJSON_AddNumberToObject(jf, "memory_budget", (double)loupe_model_memory_budget(m));
        cJSON_AddItemToObject(jf, "prompt", token_stats_json(&pf));
        cJSON *arr = cJSON_AddArrayToObject(jf, "tokens");
        for (int i = 0; arr && i < n_ts; i++) cJSON_AddItemToArray(arr, token_stats_json(&ts[i]));
    }
    cJSON_AddStringToObject(o, "stop", loupe_answer_stop_reason(a));
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)t->peak_rss_bytes);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text) return cli_error(LOUPE_ERR_NOMEM, "--json: out of memory");
    int ok = fputs(text, stdout) >= 0 && fputc('\n', stdout) != EOF && fflush(stdout) == 0;
    cJSON_free(text);
    return ok ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
}

int cmd_ask(int argc, char **argv) {
    const char *image_path = NULL, *question = NULL, *draw_path = NULL;
    cli_model_args ma;
    cli_model_args_init(&ma);
    loupe_context_params cp = loupe_context_default_params();
    bool verbose = false, only_pos = false, json = false, stats = false;
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
        if (!strcmp(a, "--json")) { json = true; continue; }
        if (!strcmp(a, "--stats")) { stats = true; continue; }
        if (!strcmp(a, "--llamacpp-compat")) { ma.params.llamacpp_compat = 1; continue; }
        /* Everything else takes a value. */
        if (i + 1 >= argc) return cli_usage("ask", "option '%s' needs a value", a);
        const char *val = argv[++i];
        long n;
        unsigned long long u;
        int rc = CLI_EXIT_OK;
        if (cli_model_arg(&ma, "ask", a, val, &rc)) {
            if (rc != CLI_EXIT_OK) return rc;
        }
        else if (!strcmp(a, "--system")) cp.system_prompt = val;
        else if (!strcmp(a, "--draw")) draw_path = val;
        else if (!strcmp(a, "--region") || !strcmp(a, "--mask")) {
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
            if (!cli_parse_int(val, -1, INT_MAX, &n)) return cli_usage("ask", "%s: '%s' is not a token count (-1 or more)", a, val);
            cp.max_tokens = (int)n;
        } else if (!strcmp(a, "--temp")) {
            if (!cli_parse_float(val, 0.0f, 100.0f, &cp.temperature)) return cli_usage("ask", "--temp: '%s' is not a temperature in [0, 100]", val);
        } else if (!strcmp(a, "--top-k")) {
            if (!cli_parse_int(val, 0, INT_MAX, &n)) return cli_usage("ask", "--top-k: '%s' is not a count (0 or more)", val);
            cp.top_k = (int)n;
        } else if (!strcmp(a, "--top-p")) {
            if (!cli_parse_float(val, 0.0f, 1.0f, &cp.top_p)) return cli_usage("ask", "--top-p: '%s' is not in [0, 1]", val);
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_u64(val, &u)) return cli_usage("ask", "--seed: '%s' is not a non-negative integer", val);
            cp.seed = u;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!cli_parse_int(val, 1, 1024, &n)) return cli_usage("ask", "%s: '%s' is not a thread count (1..1024)", a, val);
            cp.n_threads = (int)n;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!cli_parse_int(val, 0, INT_MAX, &n)) return cli_usage("ask", "%s: '%s' is not a context size", a, val);
            cp.n_ctx = (int)n;
        } else return cli_usage("ask", "unknown option '%s'", a);
    }
    { int rc = cli_model_resolve(&ma, "ask"); if (rc != CLI_EXIT_OK) return rc; }
    if (!image_path) return cli_usage("ask", "no image given");
    if (!question) return cli_usage("ask", "no question given");

    if (verbose) loupe_log_set(cli_log_stderr, NULL, LOUPE_LOG_INFO);

    char emsg[LP_ERROR_MSG_MAX];
    loupe_image *img = NULL;
    loupe_model *m = NULL;
    loupe_context *ctx = NULL;
    loupe_answer *ans = NULL;
    stream_state ss = {0};
    loupe_region regions[LP_VLM_MAX_REGIONS];
    loupe_status st;
    int rc;

    /* The image first: it is the cheapest thing to get wrong; then the
     * regions against it. */
    if ((st = loupe_image_from_file(image_path, &img, emsg, sizeof emsg))) { rc = cli_error(st, "%s", emsg); goto out; }
    const int W = loupe_image_width(img), H = loupe_image_height(img);
    for (int i = 0; i < n_reg; i++) {
        if (rargs[i].mask_path) {
            if ((rc = load_mask(&rargs[i], W, H, image_path, &regions[i])) != CLI_EXIT_OK) goto out;
        } else {
            regions[i] = (loupe_region){.kind = LOUPE_REGION_BOX};
            memcpy(regions[i].box, rargs[i].box, sizeof regions[i].box);
        }
        const lp_vlm_region vr = {.kind = regions[i].kind == LOUPE_REGION_MASK ? LP_VLM_REGION_MASK : LP_VLM_REGION_BOX,
                                  .box = {regions[i].box[0], regions[i].box[1], regions[i].box[2], regions[i].box[3]},
                                  .mask = regions[i].mask, .mask_w = W, .mask_h = H};
        double clipped[4];
        lp_error err = {0};
        if (lp_vlm_region_box(&vr, W, H, clipped, &err)) {
            if (rargs[i].mask_path) rc = cli_error(err.status, "--mask %s: %s", rargs[i].mask_path, err.msg);
            else rc = cli_error(err.status, "--region: %s", err.msg);
            goto out;
        }
    }
    if ((st = loupe_model_load(ma.model, ma.mmproj, &ma.params, &m, emsg, sizeof emsg))) { rc = cli_error(st, "%s", emsg); goto out; }
    if (!json) { /* --json prints everything at the end */
        cp.on_text = on_text;
        cp.on_text_user = &ss;
    }
    if ((st = loupe_context_new(m, &cp, &ctx))) { rc = cli_error(st, "%s", loupe_last_error()); goto out; }

    st = loupe_ask_regions(ctx, img, question, regions, n_reg, &ans);
    if (!json && (ss.written > 0 || st == LOUPE_OK)) fputc('\n', stdout);
    fflush(stdout);
    if (verbose && ans) fprintf(stderr, "question  %s\n", loupe_answer_question(ans));
    if (ss.failed) { rc = cli_error(LOUPE_ERR_IO, "writing to stdout failed"); goto out; }
    if (st) { rc = cli_error(st, "%s", loupe_context_last_error(ctx)); goto out; }
    if (verbose) print_stats(m, ans);
    if (stats) print_token_stats(ans);
    if (json) {
        rc = print_json(m, img, image_path, ans);
    } else {
        for (int i = 0; i < loupe_answer_n_boxes(ans); i++) {
            const loupe_box *b = loupe_answer_box(ans, i);
            printf("box %d: [%.1f, %.1f, %.1f, %.1f]%s%s\n", i + 1, b->x1, b->y1, b->x2, b->y2, b->label[0] ? " " : "",
                   b->label);
        }
        for (int i = 0; i < loupe_answer_n_issues(ans); i++) {
            const loupe_box_issue *is = loupe_answer_issue(ans, i);
            printf("skipped box text at byte %d: %s\n", is->offset, is->reason);
        }
        rc = fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
    }
    if (rc == CLI_EXIT_OK && draw_path) {
        loupe_image_draw_answer(img, ans);
        if ((st = loupe_image_write_png(img, draw_path, emsg, sizeof emsg))) rc = cli_error(st, "--draw: %s", emsg);
    }
out:
    for (int i = 0; i < n_reg; i++) free(rargs[i].mask);
    loupe_answer_free(ans);
    loupe_context_free(ctx);
    loupe_model_free(m);
    loupe_image_free(img);
    return rc;
}
