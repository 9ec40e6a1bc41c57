/* fusion/api.c — the public API of include/loupe.h: thin wrappers over the
 * VLM pipeline (fusion/vlm.h), the box codecs (fusion/boxes.h) and the
 * image code (vision/image.h).
 *
 * Nothing here is global and mutable except the per-thread last-error text:
 * a loupe_model is the read-only lp_vlm plus strings fixed at load; each
 * loupe_context owns its lp_vlm_ctx, parameters and error text. */
#include "loupe.h"

#include "../core/error.h"
#include "../core/gguf.h"
#include "../vision/image.h"
#include "boxes.h"
#include "vlm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loupe_model {
    lp_vlm *vlm;
    lp_box_family boxes;
    loupe_prep prep;
    loupe_model_params p; /* flash settings, for the contexts */
};

struct loupe_context {
    const loupe_model *model;
    lp_vlm_ctx *vc;
    loupe_context_params p;
    char *system;          /* owned copy of p.system_prompt */
    lp_error err;
};

struct loupe_image {
    lp_image img;
};

struct loupe_answer {
    char *text;
    char *question;
    lp_box *raw;            /* parsed boxes; labels live here */
    loupe_box *boxes;
    int n_boxes;
    lp_box_issue *raw_issues;
    loupe_box_issue *issues;
    int n_issues;
    loupe_timings t;
    const char *stop;
    loupe_token_stats *tokens; // (n_tokens) per decode pass
    int n_tokens;
    loupe_token_stats prefill;
};

/* ---- errors ---- */

static _Thread_local char tl_error[LP_ERROR_MSG_MAX];

const char *loupe_last_error(void) { return tl_error; }

/* Record a failure for loupe_last_error() and the caller's buffer. */
static loupe_status fail_out(const lp_error *e, char *err, size_t err_size) {
    snprintf(tl_error, sizeof tl_error, "%s", e->msg);
    if (err && err_size > 0) snprintf(err, err_size, "%s", e->msg);
    return e->status ? e->status : LOUPE_ERR_INTERNAL;
}

static void ok_out(char *err, size_t err_size) {
    if (err && err_size > 0) err[0] = '\0';
}

/* ---- models ---- */

loupe_model_params loupe_model_default_params(void) {
    const lp_flash_params f = lp_flash_default_params();
    return (loupe_model_params){.prep = LOUPE_PREP_AUTO, .llamacpp_compat = 0, .template_name = NULL,
                                .box_format = NULL, .memory_budget = 0, .flash_window = f.window,
                                .flash_io_threads = f.io_threads, .ffn_keep = 1.0f, .ffn_threshold = 0.0f};
}

/* LOUPE_PREP_AUTO: the mmproj's clip.vision.image_aspect_ratio, pad without it.
 * A file that cannot be opened is left for lp_vlm_load to report (it opens
 * the language model first, whose errors matter more). */
static loupe_status auto_prep(const char *mmproj_path, loupe_prep *out, lp_error *err) {
    *out = LOUPE_PREP_PAD;
    lp_error e = {0};
    lp_gguf *g = lp_gguf_open(mmproj_path, &e);
    if (!g) return LOUPE_OK;
    const char *v = NULL;
    loupe_status st = LOUPE_OK;
    if (lp_gguf_get_str_opt(g, "clip.vision.image_aspect_ratio", &v, &e) == LOUPE_OK && v) {
        if (!strcmp(v, "pad")) *out = LOUPE_PREP_PAD;
        else if (!strcmp(v, "squash") || !strcmp(v, "squeeze")) *out = LOUPE_PREP_SQUASH;
        else
            st = lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                         "%s: clip.vision.image_aspect_ratio \"%.64s\" is not a preprocessing loupe knows (pad, "
                         "squash); choose one in loupe_model_params.prep",
                         mmproj_path, v);
    }
    lp_gguf_close(g);
    return st;
}

static lp_prep_mode to_lp_prep(loupe_prep p) {
    switch (p) {
    case LOUPE_PREP_SQUASH: return LP_PREP_SQUASH_PIL;
    case LOUPE_PREP_LLAMACPP: return LP_PREP_LLAMACPP;
    default: return LP_PREP_PAD_PIL;
    }
}

loupe_status loupe_model_load(const char *model_path, const char *mmproj_path, const loupe_model_params *params,
                              loupe_model **out, char *err, size_t err_size) {
    lp_error e = {0};
    if (out) *out = NULL;
    if (!out || !model_path || !mmproj_path) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_model_load: a model path, an mmproj path and an output are required");
        return fail_out(&e, err, err_size);
    }
    const loupe_model_params p = params ? *params : loupe_model_default_params();
    if (!(p.ffn_keep > 0.0f && p.ffn_keep <= 1.0f) || !(p.ffn_threshold >= 0.0f) || p.flash_window < 0 ||
        p.flash_io_threads < 0) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG,
                "loading %s: bad flash parameters (ffn_keep %g must be in (0, 1], ffn_threshold %g >= 0, "
                "window %d >= 0, io threads %d >= 0)",
                model_path ? model_path : "(null)", (double)p.ffn_keep, (double)p.ffn_threshold, p.flash_window,
                p.flash_io_threads);
        return fail_out(&e, err, err_size);
    }
    if ((int)p.prep < LOUPE_PREP_AUTO || (int)p.prep > LOUPE_PREP_LLAMACPP) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_model_load: unknown preprocessing %d", (int)p.prep);
        return fail_out(&e, err, err_size);
    }
    lp_box_family fam = LP_BOX_UNKNOWN; /* unless named: the model family's own (after loading) */
    if (p.box_format && (fam = lp_box_family_from_name(p.box_format)) == LP_BOX_UNKNOWN) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG,
                "box format \"%.64s\" is not one of ferret, shikra, internvl, qwen2-vl, qwen2.5-vl, kosmos-2, "
                "florence-2, paligemma",
                p.box_format);
        return fail_out(&e, err, err_size);
    }
    loupe_prep prep = p.prep;
    if (p.llamacpp_compat) prep = LOUPE_PREP_LLAMACPP;
    else if (prep == LOUPE_PREP_AUTO && auto_prep(mmproj_path, &prep, &e)) return fail_out(&e, err, err_size);

    loupe_model *m = calloc(1, sizeof *m);
    if (!m) {
        lp_fail(&e, LOUPE_ERR_NOMEM, "loading %s: out of memory", model_path);
        return fail_out(&e, err, err_size);
    }
    lp_vlm_params vp = lp_vlm_default_params();
    vp.template_name = p.template_name;
    vp.prep = to_lp_prep(prep);
    vp.llamacpp = p.llamacpp_compat != 0;
    vp.flash.budget = p.memory_budget;
    vp.image_min_tokens = p.image_min_tokens;
    vp.image_max_tokens = p.image_max_tokens;
    vp.flash.window = p.flash_window;
    vp.flash.io_threads = p.flash_io_threads;
    vp.flash.expected_active = p.ffn_threshold > 0 ? 0.5f : p.ffn_keep; /* how the planner weighs attention vs neurons */
    if (!(m->vlm = lp_vlm_load(model_path, mmproj_path, &vp, &e))) {
        free(m);
        return fail_out(&e, err, err_size);
    }
    if (fam == LP_BOX_UNKNOWN) {
        const lp_vlm_family f = lp_vlm_get_family(m->vlm);
        fam = f == LP_VLM_INTERNVL ? LP_BOX_INTERNVL : f == LP_VLM_QWEN25VL ? LP_BOX_QWEN25VL : LP_BOX_FERRET;
    }
    m->boxes = fam;
    m->prep = prep;
    m->p = p;
    m->p.template_name = m->p.box_format = NULL; /* not owned */
    *out = m;
    ok_out(err, err_size);
    return LOUPE_OK;
}

void loupe_model_free(loupe_model *m) {
    if (!m) return;
    lp_vlm_free(m->vlm);
    free(m);
}

const char *loupe_model_path(const loupe_model *m, loupe_file which) {
    if (!m) return "";
    return which == LOUPE_FILE_MMPROJ ? lp_vlm_mmproj_path(m->vlm) : lp_vlm_lm_path(m->vlm);
}

const char *loupe_model_name(const loupe_model *m, loupe_file which) {
    if (!m) return "";
    const char *s = lp_vlm_meta_str(m->vlm, which == LOUPE_FILE_MMPROJ ? 1 : 0, "general.name");
    return s ? s : "";
}

const char *loupe_model_template(const loupe_model *m) { return m ? lp_vlm_template(m->vlm)->name : ""; }
const char *loupe_model_box_format(const loupe_model *m) { return m ? lp_box_family_name(m->boxes) : ""; }
const char *loupe_model_family(const loupe_model *m) { return m ? lp_vlm_family_name(lp_vlm_get_family(m->vlm)) : ""; }
loupe_prep loupe_model_prep(const loupe_model *m) { return m ? m->prep : LOUPE_PREP_AUTO; }
int loupe_model_can_refer(const loupe_model *m) {
    return m && lp_vlm_has_region_sampler(m->vlm) && lp_vlm_region_token(m->vlm) >= 0;
}
double loupe_model_load_ms(const loupe_model *m) { return m ? lp_vlm_load_ms(m->vlm) : 0.0; }
size_t loupe_model_memory_budget(const loupe_model *m) { return m ? m->p.memory_budget : 0; }

/* ---- contexts ---- */

loupe_context_params loupe_context_default_params(void) {
    const lp_vlm_gen_params g = lp_vlm_gen_default_params();
    return (loupe_context_params){.n_threads = 0,
                                  .n_ctx = 0,
                                  .seed = g.sampling.seed,
                                  .temperature = g.sampling.temp,
                                  .top_k = g.sampling.top_k,
                                  .top_p = g.sampling.top_p,
                                  .max_tokens = g.n_predict,
                                  .system_prompt = NULL};
}

loupe_status loupe_context_new(const loupe_model *model, const loupe_context_params *params, loupe_context **out) {
    lp_error e = {0};
    if (out) *out = NULL;
    if (!model || !out) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_context_new: a model and an output are required");
        return fail_out(&e, NULL, 0);
    }
    const loupe_context_params p = params ? *params : loupe_context_default_params();
    if (p.n_ctx < 0 || !(p.temperature >= 0) || p.top_k < 0 || !(p.top_p >= 0 && p.top_p <= 1)) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG,
                "loupe_context_new: bad parameters (n_ctx %d, temperature %g, top_k %d, top_p %g)", p.n_ctx,
                (double)p.temperature, p.top_k, (double)p.top_p);
        return fail_out(&e, NULL, 0);
    }
    loupe_context *c = calloc(1, sizeof *c);
    if (!c || (p.system_prompt && !(c->system = strdup(p.system_prompt)))) {
        free(c);
        lp_fail(&e, LOUPE_ERR_NOMEM, "loupe_context_new: out of memory");
        return fail_out(&e, NULL, 0);
    }
    c->model = model;
    c->p = p;
    c->p.system_prompt = c->system;
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = p.n_threads;
    cp.n_ctx = p.n_ctx;
    cp.ffn_keep = model->p.ffn_keep;
    cp.ffn_threshold = model->p.ffn_threshold;
    if (!(c->vc = lp_vlm_ctx_new(model->vlm, &cp, &e))) {
        free(c->system);
        free(c);
        return fail_out(&e, NULL, 0);
    }
    *out = c;
    return LOUPE_OK;
}

void loupe_context_free(loupe_context *c) {
    if (!c) return;
    lp_vlm_ctx_free(c->vc);
    free(c->system);
    free(c);
}

const char *loupe_context_last_error(const loupe_context *c) { return c ? c->err.msg : "no context"; }
size_t loupe_context_memory_budget(const loupe_context *c) { return c ? c->model->p.memory_budget : 0; }

/* ---- images ---- */

static loupe_status wrap_image(lp_image *img, loupe_image **out, lp_error *e) {
    loupe_image *w = malloc(sizeof *w);
    if (!w) {
        lp_image_free(img);
        return lp_fail(e, LOUPE_ERR_NOMEM, "image: out of memory");
    }
    w->img = *img;
    *out = w;
    return LOUPE_OK;
}

loupe_status loupe_image_from_file(const char *path, loupe_image **out, char *err, size_t err_size) {
    lp_error e = {0};
    lp_image img = {0};
    if (out) *out = NULL;
    if (!path || !out) lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_image_from_file: a path and an output are required");
    else if (!lp_image_load(path, &img, &e) && !wrap_image(&img, out, &e)) {
        ok_out(err, err_size);
        return LOUPE_OK;
    }
    return fail_out(&e, err, err_size);
}

loupe_status loupe_image_from_rgb(const uint8_t *rgb, int w, int h, size_t stride, loupe_image **out) {
    lp_error e = {0};
    lp_image img = {0};
    if (out) *out = NULL;
    if (!rgb || !out) lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_image_from_rgb: pixels and an output are required");
    else if (!lp_image_from_rgb(rgb, w, h, stride ? stride : (size_t)(w > 0 ? w : 0) * 3, &img, &e) &&
             !wrap_image(&img, out, &e))
        return LOUPE_OK;
    return fail_out(&e, NULL, 0);
}

void loupe_image_free(loupe_image *img) {
    if (!img) return;
    lp_image_free(&img->img);
    free(img);
}

int loupe_image_width(const loupe_image *img) { return img ? img->img.w : 0; }
int loupe_image_height(const loupe_image *img) { return img ? img->img.h : 0; }
const uint8_t *loupe_image_rgb(const loupe_image *img) { return img ? img->img.rgb : NULL; }

loupe_status loupe_image_write_png(const loupe_image *img, const char *path, char *err, size_t err_size) {
    lp_error e = {0};
    if (!img || !path) lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_image_write_png: an image and a path are required");
    else if (!lp_image_write_png(path, &img->img, &e)) {
        ok_out(err, err_size);
        return LOUPE_OK;
    }
    return fail_out(&e, err, err_size);
}

/* ---- asking ---- */

void loupe_answer_free(loupe_answer *a) {
    if (!a) return;
    free(a->text);
    free(a->question);
    free(a->raw);
    free(a->boxes);
    free(a->raw_issues);
    free(a->issues);
    free(a->tokens);
    free(a);
}

static loupe_token_stats token_stats(const lp_vlm_io *io) {
    uint64_t need = io->neuron_hits + io->neuron_misses;
    return (loupe_token_stats){
        .bytes_read = (long long)io->bytes_read,
        .reads = (long long)io->reads,
        .hit_rate = need ? (double)io->neuron_hits / (double)need : 1.0,
        .active_fraction = io->ffn_total ? (double)io->ffn_active / (double)io->ffn_total : 1.0,
        .io_ms = io->io_ms,
        .compute_ms = io->ms - io->io_ms,
    };
}

/* The answer's boxes in original pixels: the model's box text is relative to
 * the frame it saw (the preprocessed square), undone with its geometry. */
static loupe_status parse_boxes(const loupe_model *m, const lp_vlm_stats *s, const lp_image *img, loupe_answer *a,
                                const char *default_label, lp_error *e) {
    const size_t len = strlen(a->text);
    /* The shortest box any codec accepts takes well over 4 bytes. */
    const int cap = (int)(len / 4 + 1 < 4096 ? len / 4 + 1 : 4096);
    a->raw = calloc((size_t)cap, sizeof *a->raw);
    a->raw_issues = calloc((size_t)cap + 1, sizeof *a->raw_issues);
    if (!a->raw || !a->raw_issues) return lp_fail(e, LOUPE_ERR_NOMEM, "parsing boxes: out of memory");
    if (!s->has_geom) return lp_fail(e, LOUPE_ERR_INTERNAL, "the pipeline reported no image geometry");
    lp_box_geom g;
    loupe_status st = lp_box_geom_from_prep_wh(&g, &s->geom, img->w, img->h, s->frame_w, s->frame_h, e);
    if (st) return st;
    a->n_boxes = lp_boxes_parse(m->boxes, a->text, &g, a->raw, cap, a->raw_issues, cap + 1);
    a->n_issues = lp_box_issue_count(a->raw_issues, cap + 1);
    a->boxes = calloc((size_t)(a->n_boxes > 0 ? a->n_boxes : 1), sizeof *a->boxes);
    a->issues = calloc((size_t)(a->n_issues > 0 ? a->n_issues : 1), sizeof *a->issues);
    if (!a->boxes || !a->issues) return lp_fail(e, LOUPE_ERR_NOMEM, "parsing boxes: out of memory");
    for (int i = 0; i < a->n_boxes; i++) {
        lp_box *b = &a->raw[i];
        if (!b->label[0] && default_label) snprintf(b->label, sizeof b->label, "%s", default_label);
        a->boxes[i] = (loupe_box){b->x1, b->y1, b->x2, b->y2, b->label};
    }
    for (int i = 0; i < a->n_issues; i++)
        a->issues[i] = (loupe_box_issue){a->raw_issues[i].offset, a->raw_issues[i].reason};
    return LOUPE_OK;
}

static int progress_trampoline(void *user, lp_vlm_stage stage, int done, int total) {
    const loupe_context *c = user;
    return c->p.progress(c->p.progress_user, (loupe_stage)stage, done, total);
}

static loupe_status ask(loupe_context *c, const loupe_image *image, const char *question,
                        const loupe_region *regions, int n_regions, const char *default_label, loupe_answer **out) {
    if (out) *out = NULL;
    if (!c) return LOUPE_ERR_INVALID_ARG;
    lp_error_clear(&c->err);
    if (!image || !question || !out || n_regions < 0 || (n_regions > 0 && !regions))
        return lp_fail(&c->err, LOUPE_ERR_INVALID_ARG, "loupe_ask: an image, a question and an output are required");
    if (n_regions > LP_VLM_MAX_REGIONS)
        return lp_fail(&c->err, LOUPE_ERR_INVALID_ARG, "%d regions, at most %d", n_regions, LP_VLM_MAX_REGIONS);
    lp_vlm_region vr[LP_VLM_MAX_REGIONS];
    for (int i = 0; i < n_regions; i++) {
        vr[i] = (lp_vlm_region){.kind = regions[i].kind == LOUPE_REGION_MASK ? LP_VLM_REGION_MASK : LP_VLM_REGION_BOX,
                                .mask = regions[i].mask,
                                .mask_w = regions[i].mask_w,
                                .mask_h = regions[i].mask_h};
        if (regions[i].kind != LOUPE_REGION_BOX && regions[i].kind != LOUPE_REGION_MASK)
            return lp_fail(&c->err, LOUPE_ERR_INVALID_ARG, "region %d: unknown kind %d", i + 1, (int)regions[i].kind);
        memcpy(vr[i].box, regions[i].box, sizeof vr[i].box);
    }
    lp_vlm_gen_params g = lp_vlm_gen_default_params();
    g.system = c->system;
    g.n_predict = c->p.max_tokens;
    g.sampling.temp = c->p.temperature;
    g.sampling.top_k = c->p.top_k;
    g.sampling.top_p = c->p.top_p;
    g.sampling.seed = c->p.seed;
    if (c->p.progress) {
        g.progress = progress_trampoline;
        g.progress_user = c;
    }

    loupe_answer *a = calloc(1, sizeof *a);
    if (!a) return lp_fail(&c->err, LOUPE_ERR_NOMEM, "loupe_ask: out of memory");
    lp_vlm_stats s = {0};
    loupe_status st =
        lp_vlm_region_question(question, vr, n_regions, image->img.w, image->img.h, &a->question, &c->err);
    if (!st)
        st = lp_vlm_ask_regions(c->model->vlm, c->vc, &image->img, question, vr, n_regions, &g,
                                (lp_vlm_text_fn)c->p.on_text, c->p.on_text_user, &a->text, &s, &c->err);
    if (!st) st = parse_boxes(c->model, &s, &image->img, a, default_label, &c->err);
    if (st) {
        loupe_answer_free(a);
        return st;
    }
    a->t = (loupe_timings){.load_ms = s.load_ms,
                           .encode_ms = s.encode_ms,
                           .prefill_ms = s.prefill_ms,
                           .decode_ms = s.decode_ms,
                           .image_tokens = s.n_image_tokens,
                           .prompt_tokens = s.prefill_tokens,
                           .reused_tokens = s.prefix_reused,
                           .generated_tokens = s.decode_tokens,
                           .prefill_tok_s = s.prefill_tok_s,
                           .decode_tok_s = s.decode_tok_s,
                           .peak_rss_bytes = (long long)s.peak_rss_kb * 1024};
    if (s.n_tokens > 0 && !(a->tokens = malloc((size_t)s.n_tokens * sizeof *a->tokens))) {
        loupe_answer_free(a);
        return lp_fail(&c->err, LOUPE_ERR_NOMEM, "loupe_ask: out of memory");
    }
    a->n_tokens = s.n_tokens;
    a->prefill = token_stats(&s.prefill_io);
    a->t.weight_bytes_read = (long long)s.prefill_io.bytes_read;
    a->t.weight_reads = (long long)s.prefill_io.reads;
    a->t.io_ms = s.prefill_io.io_ms;
    for (int i = 0; i < s.n_tokens; i++) {
        a->tokens[i] = token_stats(&s.tokens[i]);
        a->t.weight_bytes_read += (long long)s.tokens[i].bytes_read;
        a->t.weight_reads += (long long)s.tokens[i].reads;
        a->t.io_ms += s.tokens[i].io_ms;
    }
    a->stop = lp_vlm_stop_name(s.stop);
    *out = a;
    return LOUPE_OK;
}

loupe_status loupe_answer_parse(const loupe_model *m, const loupe_image *image, const char *text,
                                loupe_answer **out, char *err, size_t err_size) {
    lp_error e = {0};
    if (out) *out = NULL;
    if (!m || !image || !text || !out) {
        lp_fail(&e, LOUPE_ERR_INVALID_ARG, "loupe_answer_parse: a model, an image, a text and an output are required");
        return fail_out(&e, err, err_size);
    }
    loupe_answer *a = calloc(1, sizeof *a);
    lp_vlm_stats s = {0};
    if (!a || !(a->text = strdup(text)) || !(a->question = strdup(""))) {
        loupe_answer_free(a);
        lp_fail(&e, LOUPE_ERR_NOMEM, "loupe_answer_parse: out of memory");
        return fail_out(&e, err, err_size);
    }
    loupe_status st = lp_vlm_prep_frame(m->vlm, &image->img, &s.geom, &s.frame_w, &s.frame_h, &e);
    s.image_size = lp_vlm_image_size(m->vlm);
    s.has_geom = st == LOUPE_OK;
    if (!st) st = parse_boxes(m, &s, &image->img, a, NULL, &e);
    if (st) {
        loupe_answer_free(a);
        return fail_out(&e, err, err_size);
    }
    a->stop = lp_vlm_stop_name(LP_VLM_STOP_NONE);
    *out = a;
    ok_out(err, err_size);
    return LOUPE_OK;
}

loupe_status loupe_ask(loupe_context *c, const loupe_image *image, const char *question, loupe_answer **out) {
    return ask(c, image, question, NULL, 0, NULL, out);
}

loupe_status loupe_ask_regions(loupe_context *c, const loupe_image *image, const char *question,
                               const loupe_region *regions, int n_regions, loupe_answer **out) {
    return ask(c, image, question, regions, n_regions, NULL, out);
}

/* Each family's grounding question, from its paper or model card; %s is the
 * phrase. */
static const char *ground_format(lp_box_family f) {
    switch (f) {
    case LP_BOX_SHIKRA: return "Where is %s in the image? Answer with its coordinates.";
    case LP_BOX_INTERNVL: return "Please provide the bounding box coordinate of the region this sentence describes: <ref>%s</ref>";
    case LP_BOX_QWEN2VL: return "Find <|object_ref_start|>%s<|object_ref_end|> in the image.";
    case LP_BOX_QWEN25VL: return "Locate %s in the image, output its bbox coordinates using JSON format.";
    case LP_BOX_KOSMOS2: return "<grounding><phrase>%s</phrase>";
    case LP_BOX_FLORENCE2: return "<CAPTION_TO_PHRASE_GROUNDING>%s";
    case LP_BOX_PALIGEMMA: return "detect %s";
    default: return "What is the location of %s in the image?"; /* Ferret, and loupe's model */
    }
}

loupe_status loupe_ground(loupe_context *c, const loupe_image *image, const char *phrase, loupe_answer **out) {
    if (out) *out = NULL;
    if (!c) return LOUPE_ERR_INVALID_ARG;
    if (!phrase || !*phrase) {
        lp_error_clear(&c->err);
        return lp_fail(&c->err, LOUPE_ERR_INVALID_ARG, "loupe_ground: no phrase");
    }
    const char *fmt = ground_format(c->model->boxes);
    const size_t n = strlen(fmt) + strlen(phrase) + 1;
    char *q = malloc(n);
    if (!q) return lp_fail(&c->err, LOUPE_ERR_NOMEM, "loupe_ground: out of memory");
    const char *at = strstr(fmt, "%s");
    snprintf(q, n, "%.*s%s%s", (int)(at - fmt), fmt, phrase, at + 2); /* the phrase is not a format */
    loupe_status st = ask(c, image, q, NULL, 0, phrase, out);
    free(q);
    return st;
}

/* The question loupe's Ferret-style model is trained on (datasets/synth_io.c,
 * tools/train/data.py). */
#define REFER_QUESTION "What is in the region " LP_VLM_REGION_PLACEHOLDER "?"

loupe_status loupe_refer(loupe_context *c, const loupe_image *image, const loupe_region *region, loupe_answer **out) {
    if (out) *out = NULL;
    if (!c) return LOUPE_ERR_INVALID_ARG;
    if (!region) {
        lp_error_clear(&c->err);
        return lp_fail(&c->err, LOUPE_ERR_INVALID_ARG, "loupe_refer: no region");
    }
    return ask(c, image, REFER_QUESTION, region, 1, NULL, out);
}

const char *loupe_answer_text(const loupe_answer *a) { return a ? a->text : ""; }
const char *loupe_answer_question(const loupe_answer *a) { return a && a->question ? a->question : ""; }
int loupe_answer_n_boxes(const loupe_answer *a) { return a ? a->n_boxes : 0; }
const loupe_box *loupe_answer_box(const loupe_answer *a, int i) {
    return a && i >= 0 && i < a->n_boxes ? &a->boxes[i] : NULL;
}
int loupe_answer_n_issues(const loupe_answer *a) { return a ? a->n_issues : 0; }
const loupe_box_issue *loupe_answer_issue(const loupe_answer *a, int i) {
    return a && i >= 0 && i < a->n_issues ? &a->issues[i] : NULL;
}
const loupe_token_stats *loupe_answer_token_stats(const loupe_answer *a, int *n, loupe_token_stats *prefill) {
    if (prefill) *prefill = a ? a->prefill : (loupe_token_stats){0};
    if (n) *n = a ? a->n_tokens : 0;
    return a && a->n_tokens > 0 ? a->tokens : NULL;
}

const loupe_timings *loupe_answer_timings(const loupe_answer *a) {
    static const loupe_timings zero; /* read-only */
    return a ? &a->t : &zero;
}
const char *loupe_answer_stop_reason(const loupe_answer *a) { return a && a->stop ? a->stop : ""; }

/* ---- drawing ---- */

/* Kelly / Tableau-style high-contrast colours, distinct from each other. */
static const lp_rgb PALETTE[10] = {
    {230, 25, 75},  {60, 180, 75},  {255, 225, 25}, {0, 130, 200}, {245, 130, 48},
    {145, 30, 180}, {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {255, 255, 255},
};

loupe_status loupe_image_draw_answer(loupe_image *img, const loupe_answer *a) {
    if (!img || !a || !img->img.rgb) return LOUPE_ERR_INVALID_ARG;
    lp_image *im = &img->img;
    const int short_side = im->w < im->h ? im->w : im->h;
    const int t = short_side >= 600 ? 3 : 2;
    const int scale = short_side >= 800 ? 2 : 1;
    /* Outlines first, then every tag, so no outline covers a tag. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < a->n_boxes; i++) {
            const loupe_box *b = &a->boxes[i];
            const lp_rgb col = PALETTE[i % 10], halo = lp_label_text_color(col);
            /* Pixel edges -> inclusive pixels. */
            int x0 = (int)floorf(b->x1), y0 = (int)floorf(b->y1);
            int x1 = (int)ceilf(b->x2) - 1, y1 = (int)ceilf(b->y2) - 1;
            if (x1 < x0) x1 = x0;
            if (y1 < y0) y1 = y0;
            if (pass == 0) {
                /* Halo one pixel outside and one inside the coloured outline. */
                lp_draw_rect(im, x0 - 1, y0 - 1, x1 + 1, y1 + 1, halo, t + 2);
                lp_draw_rect(im, x0, y0, x1, y1, col, t);
            } else {
                char tag[64];
                if (b->label[0]) snprintf(tag, sizeof tag, "%d %.48s", i + 1, b->label);
                else snprintf(tag, sizeof tag, "%d", i + 1);
                lp_draw_label(im, x0 - 1, y0 - 2, tag, col, scale);
            }
        }
    return LOUPE_OK;
}
