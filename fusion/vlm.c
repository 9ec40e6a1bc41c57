/* fusion/vlm.c — load a language model + mmproj pair and answer a question
 * about an image. */
#include "vlm.h"

#include "../vision/qwen_vit.h"
#include "../vision/tiles.h"

#include "../core/gguf.h"
#include "../core/pool.h"
#include "../language/decoder.h"
#include "../language/tokenizer.h"
#include "../language/weights.h"
#include "../vision/clip.h"
#include "prompt.h"
#include "region_sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Without a tokenizer.chat_template the LLaVA-1.5 files are the common case,
 * and their converter writes none: vicuna is their format. */
#define DEFAULT_TEMPLATE "vicuna"
/* Auto-sized contexts never exceed this when the file states no training
 * context (every position costs 2 · n_layer · n_embd_kv floats). */
#define FALLBACK_MAX_CTX 4096

struct lp_vlm {
    char *lm_path, *mm_path;
    lp_gguf *lm_gguf, *mm_gguf;
    lp_weight_store *lm_ws, *mm_ws;
    lp_tokenizer *tok;
    lp_llama *llama;
    lp_clip *clip;         /* llava and internvl                      */
    lp_qwen_vit *qvit;     /* qwen2.5-vl (then clip is NULL)          */
    lp_qwen_prep_mode qprep;
    lp_region_sampler *rs; /* NULL: the mmproj has none */
    int32_t region_id;     /* "<region_fea>" (control or user-defined), -1: none */
    const lp_template *tmpl;
    lp_prep_mode prep;
    lp_vlm_family family;
    int min_tiles, max_tiles; /* InternVL */
    int32_t *eog;   /* ids that end generation */
    int n_eog;
    int n_vocab;    /* ids the sampler may pick: min(tokenizer, output rows) */
    double load_ms;
};

struct lp_vlm_ctx {
    const lp_vlm *vlm;
    lp_vlm_ctx_params p;
    lp_pool *pool;
    lp_llama_state *st; /* NULL until the first question when n_ctx is automatic */
    lp_llama_dump_fn dump;
    void *dump_user;
    bool exact_matvec;    /* decode with f32 activations for every weight type */
    /* What the last ask leaves behind for the next one about the same image
     * (a photo app asking several questions, loupe eval's expressions):
     * the image's encoding, and the decoder's KV cache for the prompt up to
     * the end of the image rows. The prefill is always run in two calls,
     * [that prefix] then [the rest], so reusing the prefix's cache computes
     * exactly what recomputing it would. */
    uint64_t img_key;     /* pixels + size hash of the cached encoding; 0: none */
    float *img_embd;      // (img_n, n_embd)
    int img_n, img_cap;   /* rows held, rows allocated */
    lp_qwen_geom img_qgeom; /* Qwen2.5-VL: the cached image's grid */
    int32_t *pos;         // (4, pos_cap) M-RoPE ids of a prefill call
    int pos_cap;
    int32_t next_pos;     /* M-RoPE: the position of the next token */
    float *img_feat;      // (n_patches, feature_dim) or NULL when not computed
    lp_prep_geom img_geom;
    float *pfx_embd;      // (pfx_len, n_embd): the prefix rows whose KV st holds
    int pfx_len;          /* 0: the state holds no reusable prefix */
    int pfx_cap;
    lp_vlm_io *tok_io;    // (tok_io_cap) per decode pass of the last ask
    int tok_io_cap;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long peak_rss_kb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : 0; /* KiB on Linux */
}

const char *lp_vlm_stop_name(lp_vlm_stop s) {
    switch (s) {
    case LP_VLM_STOP_NONE: return "none";
    case LP_VLM_STOP_EOG: return "end of generation";
    case LP_VLM_STOP_STRING: return "stop string";
    case LP_VLM_STOP_MAX_TOKENS: return "token limit";
    case LP_VLM_STOP_CONTEXT: return "context full";
    case LP_VLM_STOP_CANCELLED: return "cancelled";
    }
    return "?";
}

lp_vlm_params lp_vlm_default_params(void) {
    return (lp_vlm_params){.template_name = NULL, .clip_quirks = LP_CLIP_QUIRKS_NONE, .prep = LP_PREP_PAD_PIL,
                           .llamacpp = false, .flash = lp_flash_default_params()};
}

lp_vlm_ctx_params lp_vlm_ctx_default_params(void) {
    return (lp_vlm_ctx_params){.n_ctx = 0, .n_threads = 0, .n_batch = 0, .kv_f16 = false, .ffn_keep = 1.0f,
                               .ffn_threshold = 0.0f};
}

lp_vlm_gen_params lp_vlm_gen_default_params(void) {
    lp_vlm_gen_params g = {.system = NULL, .n_predict = 256, .sampling = lp_sampler_default_params()};
    g.sampling.temp = 0.0f; /* greedy: the same answer every time unless asked otherwise */
    return g;
}

/* ---- load ---- */

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static void add_eog(lp_vlm *v, int32_t id) {
    for (int i = 0; i < v->n_eog; i++)
        if (v->eog[i] == id) return;
    v->eog[v->n_eog++] = id;
}

/* End-of-generation ids: every id the tokenizer calls EOG, plus the
 * template's stop strings that are single vocabulary tokens (a "<|im_end|>"
 * typed user-defined instead of control would otherwise only be caught as
 * text, one token late in the stats). */
static loupe_status collect_eog(lp_vlm *v, lp_error *err) {
    const int32_t n = lp_tokenizer_n_vocab(v->tok);
    int count = v->tmpl->n_stops;
    for (int32_t id = 0; id < n; id++) count += lp_tokenizer_is_eog(v->tok, id);
    v->eog = malloc((size_t)(count > 0 ? count : 1) * sizeof *v->eog);
    if (!v->eog) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", v->lm_path);
    for (int32_t id = 0; id < n; id++)
        if (lp_tokenizer_is_eog(v->tok, id)) add_eog(v, id);
    for (int i = 0; i < v->tmpl->n_stops; i++) {
        int32_t id = lp_tokenizer_find(v->tok, v->tmpl->stops[i]);
        lp_token_type ty = lp_tokenizer_token_type(v->tok, id);
        if (id >= 0 && (ty == LP_TOKEN_CONTROL || ty == LP_TOKEN_USER_DEFINED)) add_eog(v, id);
    }
    return LOUPE_OK;
}

static loupe_status choose_template(lp_vlm *v, const char *name, lp_error *err) {
    loupe_status st;
    if (name) return lp_template_by_name(name, &v->tmpl, err);
    const char *tmpl = NULL;
    if ((st = lp_gguf_get_str_opt(v->lm_gguf, "tokenizer.chat_template", &tmpl, err))) return st;
    if (!tmpl) return lp_template_by_name(DEFAULT_TEMPLATE, &v->tmpl, err);
    if ((st = lp_template_detect(tmpl, &v->tmpl, err)))
        return lp_error_prefix(err, "%s: tokenizer.chat_template", v->lm_path);
    return LOUPE_OK;
}

/* The "<region_fea>" id: one vocabulary entry, matched as a special token
 * (control or user-defined), that tokenizes alone to exactly itself. */
static int32_t find_region_token(const lp_tokenizer *tok) {
    const int32_t id = lp_tokenizer_find(tok, LP_REGION_TOKEN);
    if (id < 0) return -1;
    const lp_token_type ty = lp_tokenizer_token_type(tok, id);
    if (ty != LP_TOKEN_CONTROL && ty != LP_TOKEN_USER_DEFINED) return -1;
    int32_t ids[4];
    lp_error e = {0};
    const int n = lp_tokenize(tok, LP_REGION_TOKEN, strlen(LP_REGION_TOKEN), false, true, ids, 4, &e);
    return n == 1 && ids[0] == id ? id : -1;
}

/* The sampler, when the mmproj has one, checked against CLIP and the LM. */
static loupe_status load_region_sampler(lp_vlm *v, lp_error *err) {
    lp_error e = {0};
    v->region_id = find_region_token(v->tok);
    v->rs = lp_region_sampler_load(v->mm_gguf, v->mm_ws, &e);
    if (!v->rs) {
        if (e.status == LOUPE_OK) return LOUPE_OK; /* none: plain LLaVA */
        if (err) *err = e;
        return e.status;
    }
    const int in_dim = lp_region_sampler_in_dim(v->rs), feat = lp_clip_feature_dim(v->clip);
    if (in_dim != feat)
        return lp_fail(err, LOUPE_ERR_MISMATCH,
                       "%s: region sampler input width %d does not match the CLIP feature width %d", v->mm_path,
                       in_dim, feat);
    const int out_dim = lp_region_sampler_out_dim(v->rs), n_embd = lp_llama_n_embd(v->llama);
    if (out_dim != n_embd)
        return lp_fail(err, LOUPE_ERR_MISMATCH,
                       "%s: region sampler output width %d does not match the embedding width %d of %s", v->mm_path,
                       out_dim, n_embd, v->lm_path);
    return LOUPE_OK;
}

/* A Qwen2/2.5-VL vision tower (vision/qwen_vit.h) rather than a CLIP one. */
static bool is_qwen_mmproj(const lp_gguf *g) {
    lp_error e = {0};
    const char *t = NULL;
    if (lp_gguf_get_str_opt(g, "clip.projector_type", &t, &e) || !t || !t[0])
        if (lp_gguf_get_str_opt(g, "clip.vision.projector_type", &t, &e) || !t) return false;
    return !strcmp(t, "qwen2.5vl_merger") || !strcmp(t, "qwen2vl_merger") || !strcmp(t, "qwen2.5o");
}

lp_vlm *lp_vlm_load(const char *lm_path, const char *mmproj_path, const lp_vlm_params *params, lp_error *err) {
    const double t0 = now_ms();
    if (!lm_path || !mmproj_path) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_load: a language model and an mmproj file are both required");
        return NULL;
    }
    const lp_vlm_params p = params ? *params : lp_vlm_default_params();
    lp_vlm *v = calloc(1, sizeof *v);
    if (!v || !(v->lm_path = dupstr(lm_path)) || !(v->mm_path = dupstr(mmproj_path))) {
        lp_fail(err, LOUPE_ERR_NOMEM, "loading %s: out of memory", lm_path);
        goto fail;
    }
    /* Language model first: its errors are the likelier ones to matter. */
    if (!(v->lm_gguf = lp_gguf_open(lm_path, err))) goto fail;
    v->lm_ws = p.flash.budget > 0 ? lp_weights_flash(v->lm_gguf, &p.flash, err) : lp_weights_resident(v->lm_gguf, err);
    if (!v->lm_ws) goto fail;
    if (!(v->tok = lp_tokenizer_load(v->lm_gguf, err))) goto fail;
    if (!(v->llama = lp_llama_load(v->lm_ws, err))) goto fail;

    if (!(v->mm_gguf = lp_gguf_open(mmproj_path, err))) goto fail;
    if (!(v->mm_ws = lp_weights_resident(v->mm_gguf, err))) goto fail;
    if (is_qwen_mmproj(v->mm_gguf)) {
        v->family = LP_VLM_QWEN25VL;
        if (!(v->qvit = lp_qwen_vit_load(v->mm_gguf, v->mm_ws, err))) goto fail;
        if (lp_llama_n_pos_per_token(v->llama) != 4) {
            lp_fail(err, LOUPE_ERR_MISMATCH,
                    "%s: a Qwen2-VL/2.5-VL mmproj needs a language model with M-RoPE (general.architecture "
                    "\"qwen2vl\"), but %s is \"%s\"",
                    mmproj_path, lm_path, lp_llama_get_config(v->llama)->arch_name);
            goto fail;
        }
    } else if (!(v->clip = lp_clip_load(v->mm_gguf, v->mm_ws, err))) {
        goto fail;
    }

    const int out_dim = v->qvit ? lp_qwen_vit_out_dim(v->qvit) : lp_clip_out_dim(v->clip);
    const int n_embd = lp_llama_n_embd(v->llama);
    if (out_dim != n_embd) {
        lp_fail(err, LOUPE_ERR_MISMATCH,
                "%s: projector output width %d does not match the embedding width %d of %s (not a pair)", mmproj_path,
                out_dim, n_embd, lm_path);
        goto fail;
    }
    const int tok_vocab = lp_tokenizer_n_vocab(v->tok), lm_vocab = lp_llama_n_vocab(v->llama);
    if (tok_vocab > lm_vocab) {
        lp_fail(err, LOUPE_ERR_FORMAT, "%s: the tokenizer has %d tokens but token_embd only %d rows", lm_path,
                tok_vocab, lm_vocab);
        goto fail;
    }
    /* Output rows past the tokenizer's vocabulary (padding) have no text. */
    v->n_vocab = tok_vocab;

    unsigned quirks = p.llamacpp ? LP_CLIP_QUIRKS_LLAMACPP : p.clip_quirks;
    v->prep = p.llamacpp ? LP_PREP_LLAMACPP : p.prep;
    if (v->prep != LP_PREP_LLAMACPP && v->prep != LP_PREP_PAD_PIL && v->prep != LP_PREP_SQUASH_PIL) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_load: unknown preprocessing mode %d", (int)v->prep);
        goto fail;
    }
    if (v->qvit) {
        /* llama.cpp mode: its numerics and its 8..4096 tokens; else HF's model (erf GELU) and
         * the grounding token range */
        v->qprep = p.llamacpp ? LP_QWEN_PREP_LLAMACPP : LP_QWEN_PREP_HF;
        int lo = p.image_min_tokens > 0 ? p.image_min_tokens : p.llamacpp ? 0 : LP_QWEN_GROUND_MIN_TOKENS;
        int hi = p.image_max_tokens > 0 ? p.image_max_tokens : p.llamacpp ? 0 : LP_QWEN_GROUND_MAX_TOKENS;
        /* a default bound gives way to the other one the caller set; two set bounds must agree */
        if (p.image_max_tokens <= 0 && hi > 0 && hi < lo) hi = lo;
        if (p.image_min_tokens <= 0 && hi > 0 && lo > hi) lo = hi;
        if (lp_qwen_vit_set_quirks(v->qvit, p.llamacpp ? LP_QWEN_VIT_QUIRKS_LLAMACPP : 0, err) ||
            lp_qwen_vit_set_token_limits(v->qvit, lo, hi, err)) {
            lp_error_prefix(err, "%s", mmproj_path);
            goto fail;
        }
    } else {
        if (lp_clip_set_quirks(v->clip, quirks, err)) {
            lp_error_prefix(err, "%s", mmproj_path);
            goto fail;
        }
        v->family = lp_clip_projector_type(v->clip) == LP_PROJECTOR_INTERNVL ? LP_VLM_INTERNVL : LP_VLM_LLAVA;
        lp_clip_tile_limits(v->clip, &v->min_tiles, &v->max_tiles);
    }
    if (load_region_sampler(v, err)) goto fail;
    if (v->family == LP_VLM_LLAVA && v->rs && lp_region_sampler_ferret_transpose(v->rs)) v->family = LP_VLM_FERRET;
    if (choose_template(v, p.template_name, err)) goto fail;
    if (collect_eog(v, err)) goto fail;
    v->load_ms = now_ms() - t0;
    return v;
fail:
    lp_vlm_free(v);
    return NULL;
}

void lp_vlm_free(lp_vlm *v) {
    if (!v) return;
    lp_qwen_vit_free(v->qvit);
    lp_region_sampler_free(v->rs);
    lp_clip_free(v->clip);
    lp_llama_free(v->llama);
    lp_tokenizer_free(v->tok);
    lp_ws_free(v->mm_ws);
    lp_ws_free(v->lm_ws);
    lp_gguf_close(v->mm_gguf);
    lp_gguf_close(v->lm_gguf);
    free(v->eog);
    free(v->lm_path);
    free(v->mm_path);
    free(v);
}

const lp_template *lp_vlm_template(const lp_vlm *v) { return v->tmpl; }
int lp_vlm_n_image_tokens(const lp_vlm *v) { return v->clip ? lp_clip_n_out_tokens(v->clip) : 0; }
lp_vlm_family lp_vlm_get_family(const lp_vlm *v) { return v->family; }
const lp_llama *lp_vlm_llama(const lp_vlm *v) { return v->llama; }

const char *lp_vlm_family_name(lp_vlm_family f) {
    switch (f) {
    case LP_VLM_LLAVA: return "llava";
    case LP_VLM_INTERNVL: return "internvl";
    case LP_VLM_QWEN25VL: return "qwen2.5-vl";
    case LP_VLM_FERRET: return "ferret";
    }
    return "?";
}

/* InternVL: the tile plan of a w × h image under this model's rule. */
static loupe_status tile_plan(const lp_vlm *v, int w, int h, lp_tile_plan *plan, lp_error *err) {
    return lp_tiles_plan(w, h, lp_clip_image_size(v->clip), v->min_tiles, v->max_tiles, v->prep, plan, err);
}

loupe_status lp_vlm_image_tokens(const lp_vlm *v, int w, int h, int *n, lp_error *err) {
    if (v->qvit) {
        lp_qwen_geom qg;
        loupe_status st = lp_qwen_vit_plan(v->qvit, w, h, v->qprep, &qg, err);
        *n = st ? 0 : qg.nx * qg.ny;
        return st;
    }
    if (v->family != LP_VLM_INTERNVL) {
        *n = lp_clip_n_out_tokens(v->clip);
        return LOUPE_OK;
    }
    lp_tile_plan plan;
    loupe_status st = tile_plan(v, w, h, &plan, err);
    *n = st ? 0 : plan.n_tiles * lp_clip_n_out_tokens(v->clip);
    return st;
}
int lp_vlm_n_ctx_train(const lp_vlm *v) { return lp_llama_n_ctx_train(v->llama); }
double lp_vlm_load_ms(const lp_vlm *v) { return v->load_ms; }
int lp_vlm_image_size(const lp_vlm *v) { return v->clip ? lp_clip_image_size(v->clip) : 0; }
lp_prep_mode lp_vlm_prep(const lp_vlm *v) { return v->prep; }
const char *lp_vlm_lm_path(const lp_vlm *v) { return v->lm_path; }
const char *lp_vlm_mmproj_path(const lp_vlm *v) { return v->mm_path; }
lp_weight_store *lp_vlm_lm_store(const lp_vlm *v) { return v->lm_ws; }
bool lp_vlm_is_flash_layout(const lp_vlm *v) { return v->llama->flash; }

const char *lp_vlm_meta_str(const lp_vlm *v, int which, const char *key) {
    if (!v || !key || (which != 0 && which != 1)) return NULL;
    const char *out = NULL;
    lp_error e = {0};
    if (lp_gguf_get_str_opt(which == 0 ? v->lm_gguf : v->mm_gguf, key, &out, &e)) return NULL;
    return out;
}

/* ---- per-run state ---- */

/* A decoder state with this context's settings. */
static lp_llama_state *new_state(lp_vlm_ctx *c, int n_ctx, lp_error *err) {
    lp_llama_state *st = lp_llama_state_new_ex(c->vlm->llama, n_ctx, c->p.n_batch, err);
    if (st && lp_llama_state_set_ffn_sparsity(st, c->p.ffn_keep, c->p.ffn_threshold, err) != LOUPE_OK) {
        lp_llama_state_free(st);
        return NULL;
    }
    return st;
}

/* io (what happened between two snapshots of the store's counters) */
static lp_vlm_io io_diff(const lp_ws_stats *a, const lp_ws_stats *b, double ms) {
    return (lp_vlm_io){.bytes_read = b->bytes_read - a->bytes_read,
                       .reads = b->reads - a->reads,
                       .neuron_hits = b->neuron_hits - a->neuron_hits,
                       .neuron_misses = b->neuron_misses - a->neuron_misses,
                       .ffn_active = b->ffn_active - a->ffn_active,
                       .ffn_total = b->ffn_total - a->ffn_total,
                       .io_ms = (double)(b->io_wait_ns - a->io_wait_ns) / 1e6,
                       .ms = ms};
}

lp_vlm_ctx *lp_vlm_ctx_new(const lp_vlm *vlm, const lp_vlm_ctx_params *params, lp_error *err) {
    if (!vlm) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_ctx_new: no model");
        return NULL;
    }
    lp_vlm_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        lp_fail(err, LOUPE_ERR_NOMEM, "lp_vlm_ctx_new: out of memory");
        return NULL;
    }
    c->vlm = vlm;
    c->p = params ? *params : lp_vlm_ctx_default_params();
    if (c->p.n_ctx < 0) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "context size %d is negative", c->p.n_ctx);
        goto fail;
    }
    if (!(c->pool = lp_pool_new(c->p.n_threads))) {
        lp_fail(err, LOUPE_ERR_NOMEM, "could not start %d threads", c->p.n_threads);
        goto fail;
    }
    if (c->p.n_ctx > 0 && !(c->st = new_state(c, c->p.n_ctx, err))) goto fail;
    return c;
fail:
    lp_vlm_ctx_free(c);
    return NULL;
}

void lp_vlm_ctx_free(lp_vlm_ctx *c) {
    if (!c) return;
    free(c->img_embd);
    free(c->img_feat);
    free(c->pfx_embd);
    free(c->tok_io);
    free(c->pos);
    lp_llama_state_free(c->st);
    lp_pool_free(c->pool);
    free(c);
}

void lp_vlm_ctx_set_dump(lp_vlm_ctx *c, lp_llama_dump_fn fn, void *user) {
    if (!c) return;
    c->dump = fn;
    c->dump_user = user;
}

void lp_vlm_ctx_set_exact_matvec(lp_vlm_ctx *c, bool on) {
    if (c) c->exact_matvec = on;
}

/* The cache capacity this question gets, and the state to match. */
static loupe_status ensure_state(lp_vlm_ctx *c, const lp_prompt *pr, int n_predict, lp_error *err) {
    const lp_vlm *v = c->vlm;
    if (c->p.n_ctx > 0) return lp_prompt_check_ctx(pr, c->p.n_ctx, err);
    int cap = lp_llama_n_ctx_train(v->llama);
    if (cap <= 0) cap = FALLBACK_MAX_CTX;
    loupe_status st = lp_prompt_check_ctx(pr, cap, err);
    if (st) return st;
    int64_t need = n_predict < 0 ? cap : (int64_t)pr->n_pos + n_predict;
    if (need > cap) need = cap;
    if (c->st && c->st->n_ctx >= need) return LOUPE_OK;
    c->pfx_len = 0; /* a new state holds no prefix */
    lp_llama_state_free(c->st);
    c->st = new_state(c, (int)need, err);
    return c->st ? LOUPE_OK : (err ? err->status : LOUPE_ERR_NOMEM);
}

/* InternVL's box frame: the whole image, as an S×S squeeze (its boxes are
 * 0..1000 of the image whatever the tiling). */
static void internvl_geom(int S, const lp_image *img, lp_prep_geom *g) {
    lp_prep_geom_set(g, (double)S / img->w, (double)S / img->h, 0.0, 0.0, 0, 0, S, S);
}

/* InternVL: every tile through the ViT and projector, rows in tile order;
 * geom: internvl_geom. */
static loupe_status encode_tiles(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *img, float *embd,
                                 lp_prep_geom *geom, lp_error *err) {
    const int S = lp_clip_image_size(v->clip), n_tok = lp_clip_n_out_tokens(v->clip), E = lp_clip_out_dim(v->clip);
    lp_tile_plan plan;
    loupe_status st = tile_plan(v, img->w, img->h, &plan, err);
    if (st) return st;
    const size_t per = (size_t)3 * S * S;
    float *pixels = malloc((size_t)plan.n_tiles * per * sizeof *pixels); // (n_tiles, 3, S, S)
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    st = lp_tiles_pixels(img, S, v->min_tiles, v->max_tiles, v->prep, lp_clip_mean(v->clip), lp_clip_std(v->clip),
                         pixels, &plan, err);
    for (int t = 0; t < plan.n_tiles && !st; t++) {
        st = lp_clip_encode(v->clip, pixels + (size_t)t * per, embd + (size_t)t * n_tok * E, c->pool, err);
        if (st) lp_error_prefix(err, "%s: tile %d of %d", v->mm_path, t + 1, plan.n_tiles);
    }
    free(pixels);
    if (!st) internvl_geom(S, img, geom);
    return st;
}

/* Qwen2.5-VL: one smart-resized input; geom maps original -> input pixels
 * (the frame of its bbox_2d answers), c->img_qgeom gets the token grid. */
static loupe_status encode_qwen(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *img, float *embd,
                                lp_prep_geom *geom, lp_error *err) {
    lp_qwen_geom qg;
    loupe_status st = lp_qwen_vit_plan(v->qvit, img->w, img->h, v->qprep, &qg, err);
    if (st) return st;
    float *pixels = malloc((size_t)3 * qg.width * qg.height * sizeof *pixels); // (3, H, W)
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    st = lp_qwen_vit_preprocess(v->qvit, img, v->qprep, pixels, &qg, err);
    if (!st) st = lp_qwen_vit_encode(v->qvit, pixels, qg.width, qg.height, embd, c->pool, err);
    if (st) lp_error_prefix(err, "%s", v->mm_path);
    free(pixels);
    if (!st) {
        c->img_qgeom = qg;
        if (geom) *geom = qg.map;
    }
    return st;
}

/* Image -> (n_image, n_embd) rows for the prompt; with `features`, also the
 * (N, feature_dim) patch features; `geom` (may be NULL) gets the
 * preprocessing geometry. */
static loupe_status encode_image(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *img, float *embd, float *features,
                                 lp_prep_geom *geom, lp_error *err) {
    if (v->qvit) return encode_qwen(v, c, img, embd, geom, err);
    const int S = lp_clip_image_size(v->clip);
    if (v->family == LP_VLM_INTERNVL) return encode_tiles(v, c, img, embd, geom, err);
    float *pixels = malloc((size_t)3 * S * S * sizeof *pixels);
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    loupe_status st = lp_clip_preprocess(v->clip, img, v->prep, pixels, geom, err);
    if (!st) {
        st = features ? lp_clip_encode_ex(v->clip, pixels, embd, features, c->pool, err)
                      : lp_clip_encode(v->clip, pixels, embd, c->pool, err);
        if (st) lp_error_prefix(err, "%s", v->mm_path);
    }
    free(pixels);
    return st;
}

/* Put `beg` and `end` around the image marker of the rendered text (what
 * llama.cpp's mtmd adds as text around an image's tokens). */
static loupe_status wrap_image(char **text, size_t *image_at, const char *beg, const char *end, lp_error *err) {
    const size_t len = strlen(*text), mk = strlen(LP_IMAGE_MARKER), lb = strlen(beg), le = strlen(end);
    char *out = malloc(len + lb + le + 1);
    if (!out) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for the prompt");
    const size_t at = *image_at;
    memcpy(out, *text, at);
    memcpy(out + at, beg, lb);
    memcpy(out + at + lb, *text + at, mk);
    memcpy(out + at + lb + mk, end, le);
    memcpy(out + at + lb + mk + le, *text + at + mk, len - at - mk + 1);
    free(*text);
    *text = out;
    *image_at = at + lb;
    return LOUPE_OK;
}

/* FNV-1a over the size and pixels: the identity of an image for reuse. */
static uint64_t image_key(const lp_image *img) {
    uint64_t h = 1469598103934665603ull;
    const int dims[2] = {img->w, img->h};
    const uint8_t *d = (const uint8_t *)dims;
    for (size_t i = 0; i < sizeof dims; i++) h = (h ^ d[i]) * 1099511628211ull;
    const size_t n = (size_t)img->w * img->h * 3;
    for (size_t i = 0; i < n; i++) h = (h ^ img->rgb[i]) * 1099511628211ull;
    return h ? h : 1;
}

/* encode_image through the context's one-image cache: the same pixels give
 * the same encoding, so it is computed once. features may be NULL. */
static loupe_status encode_image_cached(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *img, int n_img,
                                        float *embd, float *features, lp_prep_geom *geom, bool *hit, lp_error *err) {
    const int E = lp_llama_n_embd(v->llama);
    const size_t ne = (size_t)n_img * E;
    const size_t nf = v->clip ? (size_t)lp_clip_n_patches(v->clip) * lp_clip_feature_dim(v->clip) : 0;
    const uint64_t key = image_key(img);
    *hit = false;
    if (key == c->img_key && c->img_embd && c->img_n == n_img && (!features || c->img_feat)) {
        memcpy(embd, c->img_embd, ne * sizeof *embd);
        if (features) memcpy(features, c->img_feat, nf * sizeof *features);
        *geom = c->img_geom;
        *hit = true;
        return LOUPE_OK;
    }
    c->img_key = 0;
    loupe_status st = encode_image(v, c, img, embd, features, geom, err);
    if (st) return st;
    if (c->img_cap < n_img) {
        free(c->img_embd);
        c->img_embd = malloc(ne * sizeof *c->img_embd);
        c->img_cap = c->img_embd ? n_img : 0;
    }
    if (features && !c->img_feat) c->img_feat = malloc(nf * sizeof *c->img_feat);
    if (!c->img_embd || (features && !c->img_feat)) return LOUPE_OK; /* no cache, no harm */
    memcpy(c->img_embd, embd, ne * sizeof *embd);
    if (features) memcpy(c->img_feat, features, nf * sizeof *features);
    else {
        free(c->img_feat);
        c->img_feat = NULL;
    }
    c->img_geom = *geom;
    c->img_n = n_img;
    c->img_key = key;
    return LOUPE_OK;
}

/* Positions up to the end of the image rows (0 when the prompt has none). */
static int prefix_positions(const lp_prompt *pr) {
    int n = 0;
    for (int i = 0; i < pr->n_seg; i++) {
        n += pr->seg[i].n_pos;
        if (pr->seg[i].kind == LP_SEGMENT_IMAGE) return n;
    }
    return 0;
}

/* The prefill: [prefix] then [rest] as two forward calls. When the state
 * already holds exactly this prefix (the same rows) only the rest is
 * computed. */
/* M-RoPE ids (language/decoder.h) of prompt positions [a, b) into c->pos,
 * laid out (4, b - a); the image is the prompt's image segment, nx × ny.
 * Returns the position after the whole prompt. */
static int32_t prompt_positions(lp_vlm_ctx *c, const lp_prompt *pr, int nx, int ny, int a, int b, lp_error *err,
                                loupe_status *st) {
    int n_pre = 0, n_post = 0;
    bool seen = false;
    for (int i = 0; i < pr->n_seg; i++) {
        if (pr->seg[i].kind == LP_SEGMENT_IMAGE) seen = true;
        else if (seen) n_post += pr->seg[i].n_pos;
        else n_pre += pr->seg[i].n_pos;
    }
    const int n = pr->n_pos;
    int32_t *all = malloc((size_t)4 * n * sizeof *all); // (4, n)
    if (all && b - a > c->pos_cap) {
        int32_t *p = realloc(c->pos, (size_t)4 * (b - a) * sizeof *p);
        if (p) {
            c->pos = p;
            c->pos_cap = b - a;
        }
    }
    if (!all || b - a > c->pos_cap) {
        free(all);
        *st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for positions");
        return 0;
    }
    const int32_t end = seen ? lp_mrope_pos_prompt(all, n_pre, nx, ny, n_post, 0) : lp_mrope_pos_text(all, n, 0, n, 0);
    for (int k = 0; k < 4; k++) memcpy(c->pos + (size_t)k * (b - a), all + (size_t)k * n + a, (size_t)(b - a) * sizeof *all);
    free(all);
    *st = LOUPE_OK;
    return end;
}

/* One prefill call over prompt positions [a, b): explicit M-RoPE ids when the model has them. */
static loupe_status forward_span(lp_vlm_ctx *c, lp_llama *llama, const float *embd, const lp_prompt *pr, int a,
                                 int b, float *logits, lp_error *err) {
    const int E = lp_llama_n_embd(llama);
    if (lp_llama_n_pos_per_token(llama) != 4)
        return lp_llama_forward(llama, c->st, embd + (size_t)a * E, b - a, logits, c->pool, err);
    loupe_status st;
    c->next_pos = prompt_positions(c, pr, c->img_qgeom.nx, c->img_qgeom.ny, a, b, err, &st);
    if (st) return st;
    return lp_llama_forward_pos(llama, c->st, embd + (size_t)a * E, c->pos, b - a, logits, c->pool, err);
}

static loupe_status prefill(lp_vlm_ctx *c, lp_llama *llama, const float *embd, const lp_prompt *pr, float *logits,
                            int *computed, lp_error *err) {
    const int E = lp_llama_n_embd(llama);
    int n_pfx = prefix_positions(pr);
    /* One call when nothing follows the image, and under a dump (whose
     * readers expect the whole prompt in one "embd_in"). */
    if (n_pfx >= pr->n_pos || c->dump) n_pfx = 0;
    const size_t bytes = (size_t)n_pfx * E * sizeof *embd;
    const bool reuse = n_pfx > 0 && c->pfx_len == n_pfx && c->st->n_past >= n_pfx &&
                       !memcmp(c->pfx_embd, embd, bytes);
    loupe_status st;
    lp_llama_state_set_logits_all(c->st, false);
    lp_llama_state_set_kv_f16(c->st, c->p.kv_f16);
    lp_llama_state_set_dump(c->st, c->dump, c->dump_user);
    lp_llama_state_set_exact_matvec(c->st, c->exact_matvec);
    if (reuse) {
        if ((st = lp_llama_state_truncate(c->st, n_pfx, err))) return st;
    } else {
        c->pfx_len = 0;
        lp_llama_state_reset(c->st);
        if (n_pfx > 0) {
            if ((st = forward_span(c, llama, embd, pr, 0, n_pfx, logits, err))) return st;
            if (c->pfx_cap < n_pfx) {
                float *p = realloc(c->pfx_embd, bytes);
                if (p) {
                    c->pfx_embd = p;
                    c->pfx_cap = n_pfx;
                }
            }
            if (c->pfx_cap >= n_pfx) {
                memcpy(c->pfx_embd, embd, bytes);
                c->pfx_len = n_pfx;
            }
        }
    }
    *computed = pr->n_pos - (reuse ? n_pfx : 0);
    (void)E;
    return forward_span(c, llama, embd, pr, n_pfx, pr->n_pos, logits, err);
}

/* ---- regions ---- */

bool lp_vlm_has_region_sampler(const lp_vlm *v) { return v && v->rs; }
int32_t lp_vlm_region_token(const lp_vlm *v) { return v ? v->region_id : -1; }

void lp_vlm_set_region_dump(lp_vlm *v, lp_region_dump_fn fn, void *user) {
    if (v && v->rs) lp_region_sampler_set_dump(v->rs, fn, user);
}

static double clampd(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

loupe_status lp_vlm_region_box(const lp_vlm_region *r, int W, int H, double box[4], lp_error *err) {
    if (!r || !box) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_region_box: NULL argument");
    if (W <= 0 || H <= 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region: bad image size %dx%d", W, H);
    if (r->kind == LP_VLM_REGION_BOX) {
        const double *b = r->box;
        for (int i = 0; i < 4; i++)
            if (!isfinite(b[i])) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box: coordinate %d is not finite", i + 1);
        if (!(b[0] < b[2]) || !(b[1] < b[3]))
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box [%g, %g, %g, %g]: needs x1 < x2 and y1 < y2", b[0],
                           b[1], b[2], b[3]);
        box[0] = clampd(b[0], 0, W);
        box[1] = clampd(b[1], 0, H);
        box[2] = clampd(b[2], 0, W);
        box[3] = clampd(b[3], 0, H);
        if (!(box[0] < box[2]) || !(box[1] < box[3]))
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box [%g, %g, %g, %g] lies outside the %dx%d image", b[0],
                           b[1], b[2], b[3], W, H);
        return LOUPE_OK;
    }
    if (r->kind != LP_VLM_REGION_MASK) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region: unknown kind %d", (int)r->kind);
    if (!r->mask) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region mask: no data");
    if (r->mask_w != W || r->mask_h != H)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region mask is %dx%d but the image is %dx%d (they must match)",
                       r->mask_w, r->mask_h, W, H);
    int x0 = W, y0 = H, x1 = -1, y1 = -1;
    for (int y = 0; y < H; y++) {
        const uint8_t *row = r->mask + (size_t)y * W;
        for (int x = 0; x < W; x++)
            if (row[x]) {
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                y1 = y;
            }
    }
    if (x1 < 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region mask %dx%d is empty (no nonzero pixel)", W, H);
    box[0] = x0;
    box[1] = y0;
    box[2] = x1 + 1;
    box[3] = y1 + 1;
    return LOUPE_OK;
}

/* "[x1, y1, x2, y2] <region_fea>" for region i. */
static loupe_status region_text(const lp_vlm_region *r, int i, int W, int H, char *buf, size_t cap, lp_error *err) {
    double box[4];
    loupe_status st = lp_vlm_region_box(r, W, H, box, err);
    if (st) {
        lp_error_prefix(err, "region %d", i + 1);
        return st;
    }
    if ((st = lp_region_format(box, W, H, buf, cap, err))) return st;
    size_t n = strlen(buf);
    if (n + 1 + strlen(LP_REGION_TOKEN) + 1 > cap) return lp_fail(err, LOUPE_ERR_INTERNAL, "region text too long");
    snprintf(buf + n, cap - n, " %s", LP_REGION_TOKEN);
    return LOUPE_OK;
}

static size_t count_sub(const char *s, const char *sub) {
    size_t n = 0, k = strlen(sub);
    for (const char *p = strstr(s, sub); p; p = strstr(p + k, sub)) n++;
    return n;
}

loupe_status lp_vlm_region_question(const char *q, const lp_vlm_region *regions, int n_regions, int W, int H,
                                    char **out, lp_error *err) {
    if (out) *out = NULL;
    if (!q || !out || n_regions < 0 || (n_regions > 0 && !regions))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_region_question: bad arguments");
    if (n_regions > LP_VLM_MAX_REGIONS)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%d regions, at most %d", n_regions, LP_VLM_MAX_REGIONS);
    enum { CAP = 96 };
    char(*texts)[CAP] = n_regions > 0 ? malloc((size_t)n_regions * sizeof *texts) : NULL;
    if (n_regions > 0 && !texts) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    loupe_status st = LOUPE_OK;
    for (int i = 0; i < n_regions && !st; i++) st = region_text(&regions[i], i, W, H, texts[i], CAP, err);
    const size_t ph = strlen(LP_VLM_REGION_PLACEHOLDER), ql = strlen(q);
    const size_t n_ph = n_regions > 0 ? count_sub(q, LP_VLM_REGION_PLACEHOLDER) : 0;
    if (!st && n_ph > 0 && n_ph != (size_t)n_regions)
        st = lp_fail(err, LOUPE_ERR_INVALID_ARG,
                     "the question has %zu " LP_VLM_REGION_PLACEHOLDER " placeholders but %d regions were given "
                     "(one placeholder per region, or none to append the regions)",
                     n_ph, n_regions);
    char *res = NULL;
    if (!st) {
        res = malloc(ql + (size_t)n_regions * (CAP + 1) + 1);
        if (!res) st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    }
    if (!st) {
        char *w = res;
        if (n_ph == 0) {
            memcpy(w, q, ql);
            w += ql;
            for (int i = 0; i < n_regions; i++) w += sprintf(w, " %s", texts[i]);
        } else {
            const char *p = q;
            for (int i = 0; i < n_regions; i++) {
                const char *at = strstr(p, LP_VLM_REGION_PLACEHOLDER);
                memcpy(w, p, (size_t)(at - p));
                w += at - p;
                w += sprintf(w, "%s", texts[i]);
                p = at + ph;
            }
            const size_t rest = strlen(p);
            memcpy(w, p, rest);
            w += rest;
        }
        *w = '\0';
        *out = res;
    }
    free(texts);
    return st;
}

/* Original pixel -> feature-map [0, 1] coordinate: u = a·x + b per axis. */
typedef struct fmap_map {
    double ax, bx, ay, by;
    bool identity; /* squeeze: u = x / W exactly (Ferret) */
} fmap_map;

static fmap_map fmap_map_from(const lp_clip *clip, const lp_prep_geom *g, int W, int H) {
    const double cover = (double)lp_clip_n_side(clip) * lp_clip_patch_size(clip);
    fmap_map m = {g->scale_x / cover, g->off_x / cover, g->scale_y / cover, g->off_y / cover, false};
    m.identity = fabs(m.ax * W - 1.0) < 1e-12 && fabs(m.bx) < 1e-12 && fabs(m.ay * H - 1.0) < 1e-12 &&
                 fabs(m.by) < 1e-12;
    return m;
}

static float map_u(double a, double b, double x, int size, bool identity) {
    const double u = identity ? x / size : a * x + b;
    return (float)clampd(u, 0.0, 1.0);
}

static void map_box(const fmap_map *m, const double box[4], int W, int H, float out[4]) {
    out[0] = map_u(m->ax, m->bx, box[0], W, m->identity);
    out[1] = map_u(m->ay, m->by, box[1], H, m->identity);
    out[2] = map_u(m->ax, m->bx, box[2], W, m->identity);
    out[3] = map_u(m->ay, m->by, box[3], H, m->identity);
}

loupe_status lp_vlm_region_feature_box(const lp_vlm *v, const lp_image *img, const lp_vlm_region *r, float fbox[4],
                                       lp_error *err) {
    if (!v || !img || !img->rgb || !r || !fbox)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_region_feature_box: NULL argument");
    if (!v->clip) return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: no region sampler", v->mm_path);
    double box[4];
    loupe_status st = lp_vlm_region_box(r, img->w, img->h, box, err);
    if (st) return st;
    const int S = lp_clip_image_size(v->clip);
    float *pixels = malloc((size_t)3 * S * S * sizeof *pixels);
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    lp_prep_geom g;
    st = lp_clip_preprocess(v->clip, img, v->prep, pixels, &g, err);
    free(pixels);
    if (st) return st;
    const fmap_map m = fmap_map_from(v->clip, &g, img->w, img->h);
    map_box(&m, box, img->w, img->h, fbox);
    return LOUPE_OK;
}

loupe_status lp_vlm_prep_frame(const lp_vlm *v, const lp_image *img, lp_prep_geom *g, int *W, int *H,
                               lp_error *err) {
    if (!v || !img || !img->rgb || !g || !W || !H)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_prep_frame: NULL argument");
    if (v->qvit) {
        lp_qwen_geom qg;
        loupe_status st = lp_qwen_vit_plan(v->qvit, img->w, img->h, v->qprep, &qg, err);
        if (st) return st;
        *g = qg.map;
        *W = qg.width;
        *H = qg.height;
        return LOUPE_OK;
    }
    loupe_status st = lp_vlm_prep_geom(v, img, g, W, err);
    *H = *W;
    return st;
}

loupe_status lp_vlm_prep_geom(const lp_vlm *v, const lp_image *img, lp_prep_geom *g, int *S_out, lp_error *err) {
    if (!v || !img || !img->rgb || !g || !S_out)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_prep_geom: NULL argument");
    if (!v->clip) return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: the model input is not square (use lp_vlm_prep_frame)", v->mm_path);
    const int S = lp_clip_image_size(v->clip);
    if (v->family == LP_VLM_INTERNVL) { /* the box frame is the whole image */
        internvl_geom(S, img, g);
        *S_out = S;
        return LOUPE_OK;
    }
    float *pixels = malloc((size_t)3 * S * S * sizeof *pixels);
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    loupe_status st = lp_clip_preprocess(v->clip, img, v->prep, pixels, g, err);
    free(pixels);
    *S_out = S;
    return st;
}

/* One region -> one embedding (out_dim = n_embd) from the patch features. */
static loupe_status embed_region(const lp_vlm *v, lp_vlm_ctx *c, const lp_vlm_region *r, int i, const lp_image *img,
                                 const lp_prep_geom *g, const float *features, float *out, lp_error *err) {
    const int W = img->w, H = img->h, n = lp_region_sampler_n_points(v->rs);
    double box[4];
    loupe_status st = lp_vlm_region_box(r, W, H, box, err);
    if (st) {
        lp_error_prefix(err, "region %d", i + 1);
        return st;
    }
    float *xy = malloc((size_t)n * 2 * sizeof *xy); // (n, 2)
    if (!xy) return lp_fail(err, LOUPE_ERR_NOMEM, "region %d: out of memory", i + 1);
    const fmap_map m = fmap_map_from(v->clip, g, W, H);
    lp_region reg = {0};
    if (r->kind == LP_VLM_REGION_BOX) {
        reg.kind = LP_REGION_BOX;
        map_box(&m, box, W, H, reg.box);
        st = lp_region_sample_points(&reg, n, LP_VLM_REGION_SEED, xy, err);
    } else {
        reg.kind = LP_REGION_MASK;
        reg.mask = r->mask;
        reg.mask_w = W;
        reg.mask_h = H;
        st = lp_region_sample_points(&reg, n, LP_VLM_REGION_SEED, xy, err);
        if (!st && !m.identity)
            for (int k = 0; k < n; k++) { /* (x / W, y / H) -> the pixel -> the feature map */
                const double px = nearbyint((double)xy[2 * k] * W), py = nearbyint((double)xy[2 * k + 1] * H);
                xy[2 * k] = map_u(m.ax, m.bx, px, W, false);
                xy[2 * k + 1] = map_u(m.ay, m.by, py, H, false);
            }
    }
    if (!st) st = lp_region_sampler_forward(v->rs, features, lp_clip_n_side(v->clip), xy, n, out, c->pool, err);
    if (st) lp_error_prefix(err, "region %d", i + 1);
    free(xy);
    return st;
}

/* Tell the progress callback; nonzero from it cancels. */
static loupe_status progress(const lp_vlm_gen_params *g, lp_vlm_stage stage, int done, int total, lp_error *err) {
    static const char *const names[] = {"image encode", "prefill", "decode"};
    if (g->progress && g->progress(g->progress_user, stage, done, total) != 0)
        return lp_fail(err, LOUPE_ERR_CANCELLED, "cancelled by the progress callback during the %s (%d of %d)",
                       names[stage], done, total);
    return LOUPE_OK;
}

/* Hand a piece of text to the caller; nonzero from it cancels. */
static loupe_status emit(lp_vlm_text_fn fn, void *user, const lp_stop_result *r, int n_gen, lp_error *err) {
    if (fn && r->emit_len > 0 && fn(user, r->emit, r->emit_len) != 0)
        return lp_fail(err, LOUPE_ERR_CANCELLED, "cancelled by the caller after %d tokens", n_gen);
    return LOUPE_OK;
}

loupe_status lp_vlm_ask(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *image, const char *question,
                        const lp_vlm_gen_params *gen, lp_vlm_text_fn on_text, void *user, char **answer,
                        lp_vlm_stats *stats, lp_error *err) {
    return lp_vlm_ask_regions(v, c, image, question, NULL, 0, gen, on_text, user, answer, stats, err);
}

loupe_status lp_vlm_ask_regions(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *image, const char *question,
                                const lp_vlm_region *regions, int n_regions, const lp_vlm_gen_params *gen,
                                lp_vlm_text_fn on_text, void *user, char **answer, lp_vlm_stats *stats,
                                lp_error *err) {
    lp_vlm_stats S = {0};
    if (answer) *answer = NULL;
    if (!v || !c || !image || !image->rgb || !question || !answer || n_regions < 0 || (n_regions > 0 && !regions)) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_ask: NULL argument");
        if (stats) *stats = S;
        return LOUPE_ERR_INVALID_ARG;
    }
    if (n_regions > 0 && !v->rs) {
        if (stats) *stats = S;
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: this mmproj has no region sampler (no " LP_REGION_PREFIX ".* tensors): it cannot take "
                       "regions",
                       v->mm_path);
    }
    if (n_regions > 0 && v->region_id < 0) {
        if (stats) *stats = S;
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: model has no " LP_REGION_TOKEN " token (needed as one control or user-defined token to "
                       "ask about regions)",
                       v->lm_path);
    }
    if (c->vlm != v) {
        if (stats) *stats = S;
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_ask: the context was made for another model");
    }
    const lp_vlm_gen_params g = gen ? *gen : lp_vlm_gen_default_params();
    /* lp_llama_forward takes a non-const model only because it shares the
     * signature with code that may one day cache; it writes nothing to it. */
    lp_llama *llama = (lp_llama *)v->llama;
    const int E = lp_llama_n_embd(llama), V = lp_llama_n_vocab(llama);
    S.load_ms = v->load_ms;

    loupe_status st;
    char *text = NULL, *q = NULL;
    size_t image_at = 0;
    lp_prompt pr = {0};
    float *img_embd = NULL, *embd = NULL, *logits = NULL, *features = NULL, *reg_embd = NULL;
    lp_prep_geom geom;
    lp_sampler *smp = NULL;
    lp_stop_checker *stop = NULL;
    lp_detok dt;
    bool dt_live = false;
    lp_stop_result r = {0};
    double t = 0;

    /* Prompt first: an over-long one is refused before any heavy work. */
    if ((st = lp_vlm_image_tokens(v, image->w, image->h, &S.n_image_tokens, err))) goto done;
    if ((st = lp_vlm_region_question(question, regions, n_regions, image->w, image->h, &q, err))) goto done;
    const char *system = g.system;
    if (!system && v->family == LP_VLM_INTERNVL) system = LP_INTERNVL_SYSTEM;
    if (!system && v->family == LP_VLM_FERRET) system = LP_FERRET_SYSTEM;
    if ((st = lp_template_render(v->tmpl, system, q, &text, &image_at, err))) goto done;
    if (v->family == LP_VLM_INTERNVL && (st = wrap_image(&text, &image_at, "<img>", "</img>", err))) goto done;
    if (v->family == LP_VLM_QWEN25VL &&
        (st = wrap_image(&text, &image_at, "<|vision_start|>", "<|vision_end|>", err)))
        goto done;
    if ((st = lp_prompt_build(&pr, v->tok, text, strlen(text), image_at, strlen(LP_IMAGE_MARKER), S.n_image_tokens,
                              err)))
        goto done;
    S.n_text_tokens = pr.n_text;
    if (v->region_id >= 0) {
        /* One marker per region: a "<region_fea>" typed in the question or
         * the system text would otherwise get no embedding. */
        const int have = lp_prompt_count_token(&pr, v->region_id);
        if (have != n_regions) {
            st = lp_fail(err, LOUPE_ERR_INVALID_ARG,
                         "the prompt holds %d " LP_REGION_TOKEN " tokens but %d regions were given (write "
                         LP_VLM_REGION_PLACEHOLDER " where a region goes, not " LP_REGION_TOKEN ")",
                         have, n_regions);
            goto done;
        }
    }
    if ((st = ensure_state(c, &pr, g.n_predict, err))) goto done;
    S.n_ctx = c->st->n_ctx;

    t = now_ms();
    img_embd = malloc((size_t)S.n_image_tokens * E * sizeof *img_embd);
    embd = malloc((size_t)pr.n_pos * E * sizeof *embd);
    logits = malloc((size_t)V * sizeof *logits);
    if (!img_embd || !embd || !logits) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for a %d-position prompt", pr.n_pos);
        goto done;
    }
    if (n_regions > 0) {
        features = malloc((size_t)lp_clip_n_patches(v->clip) * lp_clip_feature_dim(v->clip) * sizeof *features);
        reg_embd = malloc((size_t)n_regions * E * sizeof *reg_embd);
        if (!features || !reg_embd) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for the region features");
            goto done;
        }
    }
    if ((st = progress(&g, LP_VLM_STAGE_ENCODE, 0, 1, err))) goto cancelled;
    bool enc_hit = false;
    if ((st = encode_image_cached(v, c, image, S.n_image_tokens, img_embd, features, &geom, &enc_hit, err)))
        goto done;
    S.image_reused = enc_hit;
    S.has_geom = 1;
    S.image_size = lp_vlm_image_size(v);
    S.frame_w = v->qvit ? c->img_qgeom.width : S.image_size;
    S.frame_h = v->qvit ? c->img_qgeom.height : S.image_size;
    S.geom = geom;
    if (n_regions > 0) {
        const double t_reg = now_ms();
        for (int i = 0; i < n_regions; i++)
            if ((st = embed_region(v, c, &regions[i], i, image, &geom, features, reg_embd + (size_t)i * E, err)))
                goto done;
        S.n_regions = n_regions;
        S.region_ms = now_ms() - t_reg;
    }
    S.encode_ms = now_ms() - t;
    if ((st = progress(&g, LP_VLM_STAGE_ENCODE, 1, 1, err))) goto cancelled;
    if ((st = progress(&g, LP_VLM_STAGE_PREFILL, 0, pr.n_pos, err))) goto cancelled;

    /* Prefill: the whole prompt in one call (matrix-matrix passes). */
    t = now_ms();
    const lp_ws_stats io0 = lp_ws_stats_get(v->lm_ws);
    S.tokens = c->tok_io;
    if ((st = lp_prompt_embed(&pr, llama, img_embd, embd, err))) goto done;
    if (n_regions > 0 && (st = lp_prompt_splice_marker(&pr, v->region_id, reg_embd, n_regions, E, embd, err)))
        goto done;
    int computed = 0;
    if ((st = prefill(c, llama, embd, &pr, logits, &computed, err))) {
        c->pfx_len = 0;
        goto done;
    }
    S.prefill_tokens = computed;
    S.prefix_reused = pr.n_pos - computed;
    S.prefill_ms = now_ms() - t;
    const lp_ws_stats io1 = lp_ws_stats_get(v->lm_ws);
    S.prefill_io = io_diff(&io0, &io1, S.prefill_ms);
    if ((st = progress(&g, LP_VLM_STAGE_PREFILL, pr.n_pos, pr.n_pos, err))) goto cancelled;

    /* Decode. */
    t = now_ms();
    if (!(smp = lp_sampler_new(&g.sampling, v->n_vocab, err))) {
        st = err ? err->status : LOUPE_ERR_NOMEM;
        goto done;
    }
    if (!(stop = lp_stop_new(v->eog, v->n_eog, v->tmpl->stops, v->tmpl->n_stops, err))) {
        st = err ? err->status : LOUPE_ERR_NOMEM;
        goto done;
    }
    lp_detok_init(&dt, v->tok, false);
    dt_live = true;
    S.stop = LP_VLM_STOP_NONE;
    while (S.stop == LP_VLM_STOP_NONE) {
        if (g.n_predict >= 0 && S.decode_tokens >= g.n_predict) {
            S.stop = LP_VLM_STOP_MAX_TOKENS;
            break;
        }
        int32_t id = lp_sampler_sample(smp, logits);
        if (id < 0) {
            st = lp_fail(err, LOUPE_ERR_INTERNAL, "every logit is NaN or -inf after %d tokens", S.decode_tokens);
            goto done;
        }
        S.decode_tokens++;
        if ((st = progress(&g, LP_VLM_STAGE_DECODE, S.decode_tokens, g.n_predict < 0 ? -1 : g.n_predict, err)))
            goto cancelled;
        const char *piece;
        size_t n;
        if ((st = lp_detok_push(&dt, id, &piece, &n, err))) goto done;
        if ((st = lp_stop_push(stop, id, piece, n, &r, err))) goto done;
        if ((st = emit(on_text, user, &r, S.decode_tokens, err))) {
            S.stop = LP_VLM_STOP_CANCELLED;
            goto done;
        }
        if (r.reason == LP_STOP_EOS) S.stop = LP_VLM_STOP_EOG;
        else if (r.reason == LP_STOP_STRING) S.stop = LP_VLM_STOP_STRING;
        else if (g.n_predict >= 0 && S.decode_tokens >= g.n_predict) S.stop = LP_VLM_STOP_MAX_TOKENS;
        else if (c->st->n_past >= c->st->n_ctx) S.stop = LP_VLM_STOP_CONTEXT;
        else {
            if (S.n_tokens == c->tok_io_cap) { /* grows per ask, never per pass once sized */
                int cap = c->tok_io_cap ? 2 * c->tok_io_cap : (g.n_predict > 0 ? g.n_predict : 64);
                lp_vlm_io *t2 = realloc(c->tok_io, (size_t)cap * sizeof *t2);
                if (!t2) {
                    st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for per-token statistics");
                    goto done;
                }
                c->tok_io = t2;
                c->tok_io_cap = cap;
                S.tokens = c->tok_io;
            }
            const lp_ws_stats before = lp_ws_stats_get(v->lm_ws);
            const double tp = now_ms();
            if (lp_llama_n_pos_per_token(llama) == 4) {
                int32_t p4[4] = {c->next_pos, c->next_pos, c->next_pos, 0}; /* text: (p, p, p, 0) */
                c->next_pos++;
                if ((st = lp_llama_forward_tokens_pos(llama, c->st, &id, p4, 1, logits, c->pool, err))) goto done;
            } else if ((st = lp_llama_forward_tokens(llama, c->st, &id, 1, logits, c->pool, err))) {
                goto done;
            }
            const lp_ws_stats after = lp_ws_stats_get(v->lm_ws);
            c->tok_io[S.n_tokens++] = io_diff(&before, &after, now_ms() - tp);
        }
    }
    if (S.stop == LP_VLM_STOP_MAX_TOKENS || S.stop == LP_VLM_STOP_CONTEXT) {
        /* No stop happened: release an unfinished character and whatever the
         * checker held back as a possible stop-string prefix. */
        const char *piece;
        size_t n;
        if ((st = lp_detok_finish(&dt, &piece, &n, err))) goto done;
        if (n > 0) {
            if ((st = lp_stop_push(stop, -1, piece, n, &r, err))) goto done;
            if ((st = emit(on_text, user, &r, S.decode_tokens, err))) {
                S.stop = LP_VLM_STOP_CANCELLED;
                goto done;
            }
            if (r.reason == LP_STOP_STRING) S.stop = LP_VLM_STOP_STRING;
        }
        if (r.reason == LP_STOP_NONE) {
            lp_stop_flush(stop, &r);
            if ((st = emit(on_text, user, &r, S.decode_tokens, err))) {
                S.stop = LP_VLM_STOP_CANCELLED;
                goto done;
            }
        }
    }
    size_t len;
    const char *all = lp_stop_text(stop, &len);
    size_t keep = r.keep_len <= len ? r.keep_len : len;
    char *out = malloc(keep + 1);
    if (!out) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory for the answer");
        goto done;
    }
    memcpy(out, all, keep);
    out[keep] = '\0';
    *answer = out;
    st = LOUPE_OK;
    goto done;
cancelled:
    S.stop = LP_VLM_STOP_CANCELLED;
done:
    if (S.prefill_tokens > 0 && S.prefill_ms > 0) S.prefill_tok_s = S.prefill_tokens / (S.prefill_ms / 1e3);
    if (S.prefill_tokens > 0) {
        S.decode_ms = now_ms() - t;
        if (S.decode_tokens > 0 && S.decode_ms > 0) S.decode_tok_s = S.decode_tokens / (S.decode_ms / 1e3);
    }
    S.peak_rss_kb = peak_rss_kb();
    if (stats) *stats = S;
    if (dt_live) lp_detok_free(&dt);
    lp_stop_free(stop);
    lp_sampler_free(smp);
    free(logits);
    free(embd);
    free(img_embd);
    free(reg_embd);
    free(features);
    lp_prompt_free(&pr);
    free(text);
    free(q);
    return st;
}
