/* fusion/vlm.c — load a language model + mmproj pair and answer a question
 * about an image. */
#include "vlm.h"

#include "../core/gguf.h"
#include "../core/pool.h"
#include "../language/decoder.h"
#include "../language/tokenizer.h"
#include "../language/weights.h"
#include "../vision/clip.h"
#include "prompt.h"

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
    lp_clip *clip;
    const lp_template *tmpl;
    lp_prep_mode prep;
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
                           .llamacpp = false};
}

lp_vlm_ctx_params lp_vlm_ctx_default_params(void) {
    return (lp_vlm_ctx_params){.n_ctx = 0, .n_threads = 0, .n_batch = 0, .kv_f16 = false};
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
    if (!(v->lm_ws = lp_weights_resident(v->lm_gguf, err))) goto fail;
    if (!(v->tok = lp_tokenizer_load(v->lm_gguf, err))) goto fail;
    if (!(v->llama = lp_llama_load(v->lm_ws, err))) goto fail;

    if (!(v->mm_gguf = lp_gguf_open(mmproj_path, err))) goto fail;
    if (!(v->mm_ws = lp_weights_resident(v->mm_gguf, err))) goto fail;
    if (!(v->clip = lp_clip_load(v->mm_gguf, v->mm_ws, err))) goto fail;

    const int out_dim = lp_clip_out_dim(v->clip), n_embd = lp_llama_n_embd(v->llama);
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
    if (lp_clip_set_quirks(v->clip, quirks, err)) {
        lp_error_prefix(err, "%s", mmproj_path);
        goto fail;
    }
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
int lp_vlm_n_image_tokens(const lp_vlm *v) { return lp_clip_n_out_tokens(v->clip); }
int lp_vlm_n_ctx_train(const lp_vlm *v) { return lp_llama_n_ctx_train(v->llama); }
double lp_vlm_load_ms(const lp_vlm *v) { return v->load_ms; }

/* ---- per-run state ---- */

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
    if (c->p.n_ctx > 0 && !(c->st = lp_llama_state_new_ex(vlm->llama, c->p.n_ctx, c->p.n_batch, err))) goto fail;
    return c;
fail:
    lp_vlm_ctx_free(c);
    return NULL;
}

void lp_vlm_ctx_free(lp_vlm_ctx *c) {
    if (!c) return;
    lp_llama_state_free(c->st);
    lp_pool_free(c->pool);
    free(c);
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
    lp_llama_state_free(c->st);
    c->st = lp_llama_state_new_ex(v->llama, (int)need, c->p.n_batch, err);
    return c->st ? LOUPE_OK : (err ? err->status : LOUPE_ERR_NOMEM);
}

/* Image -> (n_image, n_embd) rows for the prompt. */
static loupe_status encode_image(const lp_vlm *v, lp_vlm_ctx *c, const lp_image *img, float *embd, lp_error *err) {
    const int S = lp_clip_image_size(v->clip);
    float *pixels = malloc((size_t)3 * S * S * sizeof *pixels);
    if (!pixels) return lp_fail(err, LOUPE_ERR_NOMEM, "preprocessing the image: out of memory");
    loupe_status st = lp_clip_preprocess(v->clip, img, v->prep, pixels, NULL, err);
    if (!st && (st = lp_clip_encode(v->clip, pixels, embd, c->pool, err))) lp_error_prefix(err, "%s", v->mm_path);
    free(pixels);
    return st;
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
    lp_vlm_stats S = {0};
    if (answer) *answer = NULL;
    if (!v || !c || !image || !image->rgb || !question || !answer) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_vlm_ask: NULL argument");
        if (stats) *stats = S;
        return LOUPE_ERR_INVALID_ARG;
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
    S.n_image_tokens = lp_clip_n_out_tokens(v->clip);

    loupe_status st;
    char *text = NULL;
    size_t image_at = 0;
    lp_prompt pr = {0};
    float *img_embd = NULL, *embd = NULL, *logits = NULL;
    lp_sampler *smp = NULL;
    lp_stop_checker *stop = NULL;
    lp_detok dt;
    bool dt_live = false;
    lp_stop_result r = {0};
    double t = 0;

    /* Prompt first: an over-long one is refused before any heavy work. */
    if ((st = lp_template_render(v->tmpl, g.system, question, &text, &image_at, err))) goto done;
    if ((st = lp_prompt_build(&pr, v->tok, text, strlen(text), image_at, strlen(LP_IMAGE_MARKER), S.n_image_tokens,
                              err)))
        goto done;
    S.n_text_tokens = pr.n_text;
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
    if ((st = encode_image(v, c, image, img_embd, err))) goto done;
    S.encode_ms = now_ms() - t;

    /* Prefill: the whole prompt in one call (matrix-matrix passes). */
    t = now_ms();
    if ((st = lp_prompt_embed(&pr, llama, img_embd, embd, err))) goto done;
    lp_llama_state_reset(c->st);
    lp_llama_state_set_logits_all(c->st, false);
    lp_llama_state_set_kv_f16(c->st, c->p.kv_f16);
    if ((st = lp_llama_forward(llama, c->st, embd, pr.n_pos, logits, c->pool, err))) goto done;
    S.prefill_tokens = pr.n_pos;
    S.prefill_ms = now_ms() - t;

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
        else if ((st = lp_llama_forward_tokens(llama, c->st, &id, 1, logits, c->pool, err)))
            goto done;
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
    lp_prompt_free(&pr);
    free(text);
    return st;
}
