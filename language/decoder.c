/* language/decoder.c — the llama-architecture decoder (llama, qwen2, qwen2vl,
 * openelm).
 *
 * Layout, top to bottom:
 *   loading     config keys, tensor lookup and shape checks
 *   state       KV cache and scratch, allocated once
 *   helpers     weight access through the store, linear layers, dumps
 *   forward     attention_forward, ffn_forward, block_forward,
 *               output_forward, lp_llama_forward
 *
 * The math is that of llama.cpp's llama / qwen2 graphs; see decoder.h. */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sanity bounds on hyperparameters, far above any real model; they keep all
 * size arithmetic below comfortably inside int64/size_t. */
#define LP_LLAMA_MAX_DIM (1 << 20)
#define LP_LLAMA_MAX_LAYER 4096
#define LP_LLAMA_MAX_HEAD 4096
#define LP_LLAMA_MAX_VOCAB (1 << 24)

// ----------------------------------------------------------------------------
// loading: config

static const char *model_path(const lp_weight_store *ws) {
    return ws->gguf && ws->gguf->path ? ws->gguf->path : "(gguf)";
}

/* "{arch}.{suffix}" */
static void arch_key(char *buf, size_t size, const lp_llama_config *c, const char *suffix) {
    snprintf(buf, size, "%s.%s", c->arch_name, suffix);
}

/* Read a positive integer key into *out, within [1, max]. Absent and not
 * required: *out keeps its default. */
static loupe_status read_dim(const lp_gguf *g, const char *path, const char *key, bool required,
                             int64_t max, int *out, lp_error *err) {
    uint32_t v = (uint32_t)*out;
    loupe_status st = required ? lp_gguf_get_u32(g, key, &v, err) : lp_gguf_get_u32_opt(g, key, &v, err);
    if (st != LOUPE_OK) return st;
    if (v == 0 || (int64_t)v > max) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %u is out of range [1, %lld]", path, key, v,
                       (long long)max);
    }
    *out = (int)v;
    return LOUPE_OK;
}

/* {arch}.rope.dimension_sections, as llama.cpp's get_key_or_arr reads it
 * (src/models/qwen2vl.cpp:4): required; an array of exactly 4 integers, or
 * one integer repeated. ggml needs sum > 0 and sum <= head_dim. */
static loupe_status read_rope_sections(const lp_gguf *g, const char *path, lp_llama_config *c, lp_error *err) {
    char key[128];
    arch_key(key, sizeof key, c, "rope.dimension_sections");
    const lp_gguf_value *v = lp_gguf_get(g, key);
    if (!v) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s missing (required for M-RoPE)", path, key);
    int64_t sec[4];
    if (v->type == LP_GGUF_ARRAY) {
        if (v->v.arr.n != 4) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s has %llu elements, expected 4", path, key,
                           (unsigned long long)v->v.arr.n);
        }
        for (int i = 0; i < 4; i++) {
            if (!v->v.arr.data || !lp_gguf_arr_int(v, (uint64_t)i, &sec[i])) {
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: expected an array of integers", path, key);
            }
        }
    } else {
        int64_t one = 0;
        loupe_status st = lp_gguf_get_i64(g, key, &one, err);
        if (st != LOUPE_OK) return st;
        for (int i = 0; i < 4; i++) sec[i] = one;
    }
    int64_t sum = 0;
    for (int i = 0; i < 4; i++) {
        if (sec[i] < 0 || sec[i] > LP_LLAMA_MAX_DIM) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: section %d = %lld out of range", path, key, i, (long long)sec[i]);
        }
        sum += sec[i];
        c->rope_sections[i] = (int)sec[i];
    }
    if (sum <= 0 || sum > c->head_dim) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: sections sum to %lld, expected 1 .. %d (the head size)", path, key,
                       (long long)sum, c->head_dim);
    }
    return LOUPE_OK;
}

static loupe_status load_config(lp_weight_store *ws, lp_llama_config *c, lp_error *err) {
    const lp_gguf *g = ws->gguf;
    const char *path = model_path(ws);
    char key[128];
    loupe_status st;

    memset(c, 0, sizeof *c);
    const char *arch = NULL;
    if ((st = lp_gguf_get_str(g, "general.architecture", &arch, err)) != LOUPE_OK) return st;
    if (strcmp(arch, "llama") == 0) {
        c->arch = LP_ARCH_LLAMA;
        c->rope_mode = LP_ROPE_NORMAL; /* convert_hf_to_gguf permuted Wq/Wk to adjacent pairs */
    } else if (strcmp(arch, "qwen2") == 0) {
        c->arch = LP_ARCH_QWEN2;
        c->rope_mode = LP_ROPE_NEOX;
    } else if (strcmp(arch, "qwen2vl") == 0) {
        c->arch = LP_ARCH_QWEN2VL;
        c->rope_mode = LP_ROPE_NEOX; /* pair layout of M-RoPE */
        c->mrope = true;
    } else if (strcmp(arch, "openelm") == 0) {
        c->arch = LP_ARCH_OPENELM;
        c->rope_mode = LP_ROPE_NEOX; /* llama.cpp's rope type for OPENELM */
    } else {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key general.architecture = \"%s\" is not supported (llama, qwen2, qwen2vl, openelm)", path,
                       arch);
    }
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);

    struct { const char *suffix; bool required; int64_t max; int *out; } dims[] = {
        {"context_length", true, INT32_MAX, &c->n_ctx_train},
        {"embedding_length", true, LP_LLAMA_MAX_DIM, &c->n_embd},
        {"block_count", true, LP_LLAMA_MAX_LAYER, &c->n_layer},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        arch_key(key, sizeof key, c, dims[i].suffix);
        if ((st = read_dim(g, path, key, dims[i].required, dims[i].max, dims[i].out, err)) != LOUPE_OK) return st;
    }

    /* heads, kv heads (default: heads) and FFN width: one value for every
     * layer, or (openelm) an array with one per layer; c->n_* keep the largest */
    if (!(c->layer_dims = calloc((size_t)c->n_layer * 3, sizeof *c->layer_dims)))
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    static const char *const per_layer[3] = {"attention.head_count", "attention.head_count_kv", "feed_forward_length"};
    int *maxes[3] = {&c->n_head, &c->n_head_kv, &c->n_ff};
    for (int d = 0; d < 3; d++) {
        arch_key(key, sizeof key, c, per_layer[d]);
        const lp_gguf_value *v = lp_gguf_get(g, key);
        if (v && v->type == LP_GGUF_ARRAY) {
            if (c->arch != LP_ARCH_OPENELM)
                return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s is an array (per-layer values): only openelm has them",
                               path, key);
            if (v->v.arr.n != (uint64_t)c->n_layer)
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s has %llu entries but %s.block_count = %d", path, key,
                               (unsigned long long)v->v.arr.n, c->arch_name, c->n_layer);
            for (int il = 0; il < c->n_layer; il++) {
                int64_t x;
                if (!lp_gguf_arr_int(v, (uint64_t)il, &x) || x < 1 || x > (d == 2 ? LP_LLAMA_MAX_DIM : LP_LLAMA_MAX_HEAD))
                    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: entry %d is not a count in range", path, key, il);
                c->layer_dims[il * 3 + d] = (int)x;
                if ((int)x > *maxes[d]) *maxes[d] = (int)x;
            }
        } else {
            int x = d == 1 ? c->n_head : 0; /* kv heads default to heads */
            if ((st = read_dim(g, path, key, d != 1, d == 2 ? LP_LLAMA_MAX_DIM : LP_LLAMA_MAX_HEAD, &x, err)) != LOUPE_OK)
                return st;
            for (int il = 0; il < c->n_layer; il++) c->layer_dims[il * 3 + d] = x;
            *maxes[d] = x;
        }
    }
    for (int il = 0; il < c->n_layer; il++) {
        const int h = c->layer_dims[il * 3], hkv = c->layer_dims[il * 3 + 1];
        if (h % hkv != 0) {
            arch_key(key, sizeof key, c, "attention.head_count_kv");
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %d does not divide %s.attention.head_count = %d (layer %d)",
                           path, key, hkv, c->arch_name, h, il);
        }
    }

    c->head_dim = c->n_embd / c->n_head;
    arch_key(key, sizeof key, c, "attention.key_length");
    bool has_key_length = lp_gguf_find_key(g, key) >= 0;
    if ((st = read_dim(g, path, key, false, LP_LLAMA_MAX_DIM, &c->head_dim, err)) != LOUPE_OK) return st;
    if (!has_key_length && c->n_embd % c->n_head != 0) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.embedding_length = %d is not a multiple of %s.attention.head_count = %d",
                       path, c->arch_name, c->n_embd, c->arch_name, c->n_head);
    }
    int head_dim_v = c->head_dim;
    arch_key(key, sizeof key, c, "attention.value_length");
    if ((st = read_dim(g, path, key, false, LP_LLAMA_MAX_DIM, &head_dim_v, err)) != LOUPE_OK) return st;
    if (head_dim_v != c->head_dim) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s = %d differs from the key length %d",
                       path, key, head_dim_v, c->head_dim);
    }

    if ((int64_t)c->n_head * c->head_dim > LP_LLAMA_MAX_DIM) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %d heads of %d exceed the size limit %d", path, c->n_head, c->head_dim,
                       LP_LLAMA_MAX_DIM);
    }

    c->n_rot = c->head_dim;
    arch_key(key, sizeof key, c, "rope.dimension_count");
    if ((st = read_dim(g, path, key, false, LP_LLAMA_MAX_DIM, &c->n_rot, err)) != LOUPE_OK) return st;
    if (c->n_rot != c->head_dim) { /* both llama.cpp graphs assert this */
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %d, expected the head size %d", path, key, c->n_rot, c->head_dim);
    }
    if (c->n_rot % 2 != 0) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %d is odd", path, key, c->n_rot);
    }

    arch_key(key, sizeof key, c, "attention.layer_norm_rms_epsilon");
    if ((st = lp_gguf_get_f32(g, key, &c->rms_eps, err)) != LOUPE_OK) return st;
    if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps)) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %g is not a positive number", path, key, (double)c->rms_eps);
    }
    c->rope_base = 10000.0f;
    arch_key(key, sizeof key, c, "rope.freq_base");
    if ((st = lp_gguf_get_f32_opt(g, key, &c->rope_base, err)) != LOUPE_OK) return st;
    if (!(c->rope_base > 0.0f) || !isfinite(c->rope_base)) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %g is not a positive number", path, key, (double)c->rope_base);
    }
    if (c->mrope && (st = read_rope_sections(g, path, c, err)) != LOUPE_OK) return st;

    /* features of the architecture that this decoder does not implement */
    const char *scaling = "linear";
    arch_key(key, sizeof key, c, "rope.scaling.type");
    if ((st = lp_gguf_get_str_opt(g, key, &scaling, err)) != LOUPE_OK) return st;
    if (strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s = \"%s\": RoPE scaling is not supported", path, key, scaling);
    }
    float factor = 0.0f;
    arch_key(key, sizeof key, c, "rope.scaling.factor");
    if ((st = lp_gguf_get_f32_opt(g, key, &factor, err)) != LOUPE_OK) return st;
    if (factor != 0.0f && factor != 1.0f) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s = %g: RoPE scaling is not supported", path, key, (double)factor);
    }
    uint32_t n_expert = 0;
    arch_key(key, sizeof key, c, "expert_count");
    if ((st = lp_gguf_get_u32_opt(g, key, &n_expert, err)) != LOUPE_OK) return st;
    if (n_expert > 0) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s = %u: mixture-of-experts models are not supported", path, key, n_expert);
    }
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// loading: tensors

static void absent(lp_tensor *t) {
    memset(t, 0, sizeof *t);
    t->id = -1;
}

static bool present(const lp_tensor *t) { return t->id >= 0; }

/* Look up a required tensor of shape [ne0] (ne1 == 0) or [ne0, ne1]. */
static loupe_status need(lp_weight_store *ws, const char *name, int64_t ne0, int64_t ne1, lp_tensor *t, lp_error *err) {
    loupe_status st = lp_ws_lookup(ws, name, t, err);
    if (st != LOUPE_OK) return st;
    const int64_t want[4] = {ne0, ne1 > 0 ? ne1 : 1, 1, 1};
    bool ok = true;
    for (int d = 0; d < 4; d++) ok = ok && t->ne[d] == want[d];
    if (!ok) {
        if (ne1 > 0) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                           model_path(ws), name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                           (long long)t->ne[3], (long long)ne0, (long long)ne1);
        }
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s has shape [%lld, %lld, %lld, %lld], expected [%lld]",
                       model_path(ws), name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                       (long long)t->ne[3], (long long)ne0);
    }
    if (!lp_type_can_dequantize(t->type) && t->type != LP_TYPE_I8) { /* I8: flash bundles (bytes) */
        const char *tn = lp_type_name(t->type);
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s is not supported", model_path(ws), name,
                       tn ? tn : "?");
    }
    return LOUPE_OK;
}

/* An optional tensor: absent is fine, present must have the shape. */
static loupe_status maybe(lp_weight_store *ws, const char *name, int64_t ne0, int64_t ne1, lp_tensor *t, lp_error *err) {
    if (lp_gguf_find_tensor(ws->gguf, name) < 0) {
        absent(t);
        return LOUPE_OK;
    }
    return need(ws, name, ne0, ne1, t, err);
}

static loupe_status load_layer(lp_weight_store *ws, const lp_llama_config *c, const lp_flash_layout *fl, int il,
                               lp_llama_layer *L, lp_error *err) {
    L->n_head = c->layer_dims[il * 3];
    L->n_head_kv = c->layer_dims[il * 3 + 1];
    L->n_ff = c->layer_dims[il * 3 + 2];
    const int64_t E = c->n_embd, F = L->n_ff;
    const int64_t Dq = (int64_t)L->n_head * c->head_dim, Dkv = (int64_t)L->n_head_kv * c->head_dim;
    char name[96];
    loupe_status st;
#define LP_T(req, suffix, ne0, ne1, dst)                                            \
    do {                                                                            \
        snprintf(name, sizeof name, "blk.%d." suffix, il);                          \
        st = (req) ? need(ws, name, ne0, ne1, dst, err) : maybe(ws, name, ne0, ne1, dst, err); \
        if (st != LOUPE_OK) return st;                                              \
    } while (0)

    const bool elm = c->arch == LP_ARCH_OPENELM;
    snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", il);
    if (!elm && lp_gguf_find_tensor(ws->gguf, name) >= 0) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: fused QKV weights are not supported for %s", model_path(ws),
                       name, c->arch_name);
    }
    LP_T(true, "attn_norm.weight", E, 0, &L->attn_norm);
    if (elm) { /* fused q|k|v rows; per-head q/k norms; no biases */
        absent(&L->wq), absent(&L->wk), absent(&L->wv), absent(&L->bq), absent(&L->bk), absent(&L->bv);
        LP_T(true, "attn_qkv.weight", E, Dq + 2 * Dkv, &L->wqkv);
        LP_T(true, "attn_q_norm.weight", c->head_dim, 0, &L->q_norm);
        LP_T(true, "attn_k_norm.weight", c->head_dim, 0, &L->k_norm);
    } else {
        absent(&L->wqkv), absent(&L->q_norm), absent(&L->k_norm);
        LP_T(true, "attn_q.weight", E, Dq, &L->wq);
        LP_T(true, "attn_k.weight", E, Dkv, &L->wk);
        LP_T(true, "attn_v.weight", E, Dkv, &L->wv);
        LP_T(false, "attn_q.bias", Dq, 0, &L->bq);
        LP_T(false, "attn_k.bias", Dkv, 0, &L->bk);
        LP_T(false, "attn_v.bias", Dkv, 0, &L->bv);
    }
    LP_T(true, "attn_output.weight", Dq, E, &L->wo);
    LP_T(false, "attn_output.bias", E, 0, &L->bo);
    LP_T(true, "ffn_norm.weight", E, 0, &L->ffn_norm);
    if (fl) {
        L->ffn_gate.id = L->ffn_up.id = L->ffn_down.id = -1;
        LP_T(true, "ffn_bundle", (int64_t)fl->stride, F, &L->ffn_bundle);
        L->ffn_pred_a.id = L->ffn_pred_b.id = -1;
        if (strcmp(fl->predictor, "none") != 0) {
            snprintf(name, sizeof name, "blk.%d.ffn_pred_a", il);
            if ((st = lp_ws_lookup(ws, name, &L->ffn_pred_a, err)) != LOUPE_OK) return st;
            int64_t rank = L->ffn_pred_a.ne[1];
            LP_T(true, "ffn_pred_a", E, rank, &L->ffn_pred_a);
            LP_T(true, "ffn_pred_b", rank, F, &L->ffn_pred_b);
        }
    } else {
        LP_T(true, "ffn_gate.weight", E, F, &L->ffn_gate);
        LP_T(true, "ffn_up.weight", E, F, &L->ffn_up);
        LP_T(true, "ffn_down.weight", F, E, &L->ffn_down);
    }
    LP_T(false, "ffn_gate.bias", F, 0, &L->ffn_gate_b);
    LP_T(false, "ffn_up.bias", F, 0, &L->ffn_up_b);
    LP_T(false, "ffn_down.bias", E, 0, &L->ffn_down_b);
#undef LP_T
    return LOUPE_OK;
}

static loupe_status load_tensors(lp_weight_store *ws, lp_llama *m, lp_error *err) {
    lp_llama_config *c = &m->cfg;
    const char *path = model_path(ws);
    loupe_status st;

    /* the vocabulary size comes from the embedding matrix */
    if ((st = lp_ws_lookup(ws, "token_embd.weight", &m->w.token_embd, err)) != LOUPE_OK) return st;
    const lp_tensor *te = &m->w.token_embd;
    if (te->ne[1] < 1 || te->ne[1] > LP_LLAMA_MAX_VOCAB) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor token_embd.weight: %lld rows is out of range",
                       path, (long long)te->ne[1]);
    }
    if ((st = need(ws, "token_embd.weight", c->n_embd, te->ne[1], &m->w.token_embd, err)) != LOUPE_OK) return st;
    c->n_vocab = (int)m->w.token_embd.ne[1];

    char key[128];
    int vocab_key = c->n_vocab;
    arch_key(key, sizeof key, c, "vocab_size");
    if ((st = read_dim(ws->gguf, path, key, false, LP_LLAMA_MAX_VOCAB, &vocab_key, err)) != LOUPE_OK) return st;
    if (vocab_key != c->n_vocab) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %d but tensor token_embd.weight has %d rows",
                       path, key, vocab_key, c->n_vocab);
    }
    const lp_gguf_value *toks = lp_gguf_get(ws->gguf, "tokenizer.ggml.tokens");
    if (toks && toks->type == LP_GGUF_ARRAY && toks->v.arr.n != (uint64_t)c->n_vocab) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key tokenizer.ggml.tokens has %llu entries but tensor token_embd.weight has %d rows",
                       path, (unsigned long long)toks->v.arr.n, c->n_vocab);
    }

    if ((st = need(ws, "output_norm.weight", c->n_embd, 0, &m->w.output_norm, err)) != LOUPE_OK) return st;
    if ((st = maybe(ws, "output.weight", c->n_embd, c->n_vocab, &m->w.output, err)) != LOUPE_OK) return st;
    c->tied_output = !present(&m->w.output);
    if (c->tied_output) m->w.output = m->w.token_embd;
    if ((st = maybe(ws, "output.bias", c->n_vocab, 0, &m->w.output_b, err)) != LOUPE_OK) return st;
    if (lp_gguf_find_tensor(ws->gguf, "rope_freqs.weight") >= 0) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor rope_freqs.weight: RoPE frequency factors are not supported", path);
    }

    m->w.layers = calloc((size_t)c->n_layer, sizeof *m->w.layers);
    if (!m->w.layers) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for %d layers", path, c->n_layer);
    m->flash = lp_flash_is_flash(ws->gguf);
    if (m->flash) {
        if ((st = lp_flash_layout_read(ws->gguf, &m->fl, err)) != LOUPE_OK) return st;
        m->pred_svd = strcmp(m->fl.predictor, "svd") == 0;
        if (m->fl.n_embd != c->n_embd || m->fl.n_layer != c->n_layer) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: the flash layout's shape does not match the decoder's keys", path);
        }
        for (int il = 0; il < c->n_layer; il++)
            if (lp_flash_layer_n_ff(&m->fl, il) != c->layer_dims[il * 3 + 2])
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: the flash layout's layer %d has %d neurons, the decoder's keys %d",
                               path, il, lp_flash_layer_n_ff(&m->fl, il), c->layer_dims[il * 3 + 2]);
    }
    for (int il = 0; il < c->n_layer; il++) {
        lp_llama_layer *L = &m->w.layers[il];
        if ((st = load_layer(ws, c, m->flash ? &m->fl : NULL, il, L, err)) != LOUPE_OK) return st;
        if (present(&L->ffn_pred_a) && L->ffn_pred_a.ne[1] > m->pred_rank) m->pred_rank = (int)L->ffn_pred_a.ne[1];
    }
    /* a block past block_count means the file and its metadata disagree */
    char name[64];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", c->n_layer);
    if (lp_gguf_find_tensor(ws->gguf, name) >= 0) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s exists but %s.block_count = %d", path, name, c->arch_name, c->n_layer);
    }
    return LOUPE_OK;
}

lp_llama *lp_llama_load(lp_weight_store *ws, lp_error *err) {
    if (!ws || !ws->gguf) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_load: no weight store");
        return NULL;
    }
    lp_llama *m = calloc(1, sizeof *m);
    if (!m) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", model_path(ws));
        return NULL;
    }
    m->ws = ws;
    if (load_config(ws, &m->cfg, err) != LOUPE_OK || load_tensors(ws, m, err) != LOUPE_OK) {
        lp_llama_free(m);
        return NULL;
    }
    return m;
}

void lp_llama_free(lp_llama *m) {
    if (!m) return;
    free(m->cfg.layer_dims);
    free(m->w.layers);
    free(m);
}

const lp_llama_config *lp_llama_get_config(const lp_llama *m) { return &m->cfg; }
int lp_llama_n_vocab(const lp_llama *m) { return m->cfg.n_vocab; }
int lp_llama_n_embd(const lp_llama *m) { return m->cfg.n_embd; }
int lp_llama_n_layer(const lp_llama *m) { return m->cfg.n_layer; }
int lp_llama_n_ctx_train(const lp_llama *m) { return m->cfg.n_ctx_train; }

// ----------------------------------------------------------------------------
// state

/* calloc of a*b elements of size sz, NULL on overflow. */
static void *alloc3(size_t a, size_t b, size_t sz) {
    if (a == 0 || b == 0 || sz == 0) return calloc(1, 1);
    if (a > SIZE_MAX / b || a * b > SIZE_MAX / sz) return NULL;
    return calloc(a * b, sz);
}

lp_llama_state *lp_llama_state_new_ex(const lp_llama *m, int n_ctx, int n_batch, lp_error *err) {
    if (!m) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_state_new: no model");
        return NULL;
    }
    if (n_ctx < 1) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_state_new: n_ctx = %d must be at least 1", n_ctx);
        return NULL;
    }
    const lp_llama_config *c = &m->cfg;
    if (n_batch <= 0) n_batch = LP_LLAMA_DEFAULT_BATCH;
    if (n_batch > n_ctx) n_batch = n_ctx;

    lp_llama_state *s = calloc(1, sizeof *s);
    if (!s) {
        lp_fail(err, LOUPE_ERR_NOMEM, "lp_llama_state_new: out of memory");
        return NULL;
    }
    s->model = m;
    s->n_ctx = n_ctx;
    s->n_batch = n_batch;
    const size_t kv_dim = (size_t)c->n_head_kv * (size_t)c->head_dim;
    const size_t q_dim = (size_t)c->n_head * (size_t)c->head_dim;
    size_t vec = (size_t)c->n_embd;
    if ((size_t)c->n_ff > vec) vec = (size_t)c->n_ff;
    if (q_dim > vec) vec = q_dim;
    if ((size_t)c->n_vocab > vec) vec = (size_t)c->n_vocab;

    s->k_cache = alloc3((size_t)c->n_layer * (size_t)n_ctx, kv_dim, sizeof(float));
    s->v_cache = alloc3((size_t)c->n_layer * (size_t)n_ctx, kv_dim, sizeof(float));
    s->x = alloc3((size_t)n_batch, (size_t)c->n_embd, sizeof(float));
    s->xb = alloc3((size_t)n_batch, (size_t)c->n_embd, sizeof(float));
    s->xb2 = alloc3((size_t)n_batch, (size_t)c->n_embd, sizeof(float));
    s->q = alloc3((size_t)n_batch, q_dim, sizeof(float));
    s->att = alloc3((size_t)n_batch, q_dim, sizeof(float));
    if (c->arch == LP_ARCH_OPENELM) s->qkv = alloc3((size_t)n_batch, q_dim + 2 * kv_dim, sizeof(float));
    s->hb = alloc3((size_t)n_batch, (size_t)c->n_ff, sizeof(float));
    s->hb2 = alloc3((size_t)n_batch, (size_t)c->n_ff, sizeof(float));
    s->vec = alloc3(vec, 1, sizeof(float));
    s->emb = alloc3((size_t)n_batch, (size_t)c->n_embd, sizeof(float));
    s->emb_rows = alloc3((size_t)n_batch, m->w.token_embd.row_bytes, 1);
    s->emb_ids = alloc3((size_t)n_batch, 1, sizeof(int64_t));
    bool flash_ok = true;
    s->ffn_keep = 1.0f;
    if (m->flash) {
        const size_t F = (size_t)c->n_ff, E = (size_t)c->n_embd;
        int max_b = lp_ws_max_bundles(m->ws);
        s->ffn_chunk = max_b < c->n_ff ? max_b : c->n_ff;
        s->ffn_ids = alloc3(F, 1, sizeof(int32_t));
        s->ffn_score = alloc3(F, 1, sizeof(float));
        s->ffn_sel = alloc3(F, 1, sizeof(float));
        s->ffn_low = alloc3((size_t)(m->pred_rank > 0 ? m->pred_rank : 1), 1, sizeof(float));
        s->ffn_bundles = alloc3((size_t)s->ffn_chunk, 1, sizeof(*s->ffn_bundles));
        s->ffn_rows = alloc3((size_t)s->ffn_chunk, 3, sizeof(*s->ffn_rows));
        s->ffn_g = alloc3((size_t)s->ffn_chunk, 1, sizeof(float));
        s->ffn_u = alloc3((size_t)s->ffn_chunk, 1, sizeof(float));
        s->ffn_tg = alloc3((size_t)s->ffn_chunk, 1, sizeof(float));
        s->ffn_tu = alloc3((size_t)s->ffn_chunk, 1, sizeof(float));
        s->ffn_ready = alloc3((size_t)s->ffn_chunk, 1, 1);
        s->ffn_sub = alloc3((size_t)s->ffn_chunk, 1, sizeof(int32_t));
        s->pnl_g = alloc3(LP_FLASH_PANEL, E, sizeof(float));
        s->pnl_u = alloc3(LP_FLASH_PANEL, E, sizeof(float));
        s->pnl_d = alloc3(LP_FLASH_PANEL, E, sizeof(float));
        s->pnl_h = alloc3((size_t)n_batch, LP_FLASH_PANEL, sizeof(float));
        s->pnl_h2 = alloc3((size_t)n_batch, LP_FLASH_PANEL, sizeof(float));
        flash_ok = s->ffn_chunk > 0 && s->ffn_ids && s->ffn_score && s->ffn_sel && s->ffn_low && s->ffn_bundles &&
                   s->ffn_rows && s->ffn_g && s->ffn_u && s->ffn_tg && s->ffn_tu && s->ffn_ready && s->ffn_sub && s->pnl_g && s->pnl_u && s->pnl_d && s->pnl_h && s->pnl_h2;
    }
    if (!flash_ok || !s->k_cache || !s->v_cache || !s->x || !s->xb || !s->xb2 || !s->q || !s->att || !s->hb || !s->hb2 ||
        (c->arch == LP_ARCH_OPENELM && !s->qkv) ||
        !s->vec || !s->emb || !s->emb_rows || !s->emb_ids) {
        double mib = 2.0 * (double)c->n_layer * n_ctx * (double)kv_dim * sizeof(float) / (1024.0 * 1024.0);
        lp_fail(err, LOUPE_ERR_NOMEM, "lp_llama_state_new: out of memory for n_ctx = %d (KV cache %.1f MiB)", n_ctx, mib);
        lp_llama_state_free(s);
        return NULL;
    }
    return s;
}

lp_llama_state *lp_llama_state_new(const lp_llama *m, int n_ctx, lp_error *err) {
    return lp_llama_state_new_ex(m, n_ctx, 0, err);
}

void lp_llama_state_free(lp_llama_state *s) {
    if (!s) return;
    free(s->k_cache);
    free(s->v_cache);
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->q);
    free(s->att);
    free(s->qkv);
    free(s->hb);
    free(s->hb2);
    free(s->vec);
    free(s->emb);
    free(s->emb_rows);
    free(s->emb_ids);
    free(s->att_scratch);
    free(s->ffn_ids);
    free(s->ffn_score);
    free(s->ffn_sel);
    free(s->ffn_low);
    free(s->ffn_bundles);
    free(s->ffn_rows);
    free(s->ffn_g);
    free(s->ffn_u);
    free(s->ffn_tg);
    free(s->ffn_tu);
    free(s->ffn_ready);
    free(s->ffn_sub);
    free(s->pnl_g);
    free(s->pnl_u);
    free(s->pnl_d);
    free(s->pnl_h);
    free(s->pnl_h2);
    free(s);
}

void lp_llama_state_reset(lp_llama_state *s) {
    if (s) s->n_past = 0;
}

loupe_status lp_llama_state_truncate(lp_llama_state *s, int n_past, lp_error *err) {
    if (!s) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_state_truncate: no state");
    if (n_past < 0 || n_past > s->n_past) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_state_truncate: n_past = %d outside [0, %d]", n_past, s->n_past);
    }
    s->n_past = n_past; /* rows past n_past are overwritten by the next forward */
    return LOUPE_OK;
}

void lp_llama_state_set_dump(lp_llama_state *s, lp_llama_dump_fn fn, void *user) {
    s->dump = fn;
    s->dump_user = user;
}

void lp_llama_state_set_logits_all(lp_llama_state *s, bool all) { s->logits_all = all; }
void lp_llama_state_set_kv_f16(lp_llama_state *s, bool on) { s->kv_f16 = on; }
void lp_llama_state_set_exact_matvec(lp_llama_state *s, bool on) { s->exact_matvec = on; }

loupe_status lp_llama_state_set_ffn_sparsity(lp_llama_state *s, float keep, float threshold, lp_error *err) {
    if (!s || !(keep > 0.0f && keep <= 1.0f) || !(threshold >= 0.0f)) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "FFN sparsity: keep = %g must be in (0, 1], threshold = %g >= 0",
                       (double)keep, (double)threshold);
    }
    s->ffn_keep = keep;
    s->ffn_threshold = threshold;
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// helpers

static void dump(const lp_llama_state *s, const char *name, const float *data, int64_t n) {
    if (s->dump) s->dump(s->dump_user, name, data, n);
}

static void dump_blk(const lp_llama_state *s, int il, const char *what, const float *data, int64_t n) {
    if (!s->dump) return;
    char name[64];
    if (what) snprintf(name, sizeof name, "blk.%d.%s", il, what);
    else snprintf(name, sizeof name, "blk.%d", il);
    s->dump(s->dump_user, name, data, n);
}

/* A 1-D tensor (norm weight, bias) dequantized into dst (t->ne[0]). */
static loupe_status load_vec(lp_llama *m, const lp_tensor *t, float *dst, lp_error *err) {
    const void *data = NULL;
    loupe_status st = lp_ws_get(m->ws, t, &data, err);
    if (st != LOUPE_OK) return st;
    bool ok = lp_dequantize_row(t->type, data, dst, t->ne[0]);
    lp_ws_release(m->ws, t);
    if (!ok) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: cannot dequantize", model_path(m->ws), t->name);
    return LOUPE_OK;
}

/* Y (B, t->n_rows) = X (B, t->ne[0]) · W^T: matrix-vector for one token,
 * matrix-matrix otherwise. The weight is held only for the call. */
static loupe_status linear(lp_llama *m, const lp_llama_state *s, const lp_tensor *t, const float *X, float *Y, int B, lp_pool *pool, lp_error *err) {
    const void *W = NULL;
    loupe_status st = lp_ws_get(m->ws, t, &W, err);
    if (st != LOUPE_OK) return st;
    /* Decode (B == 1): by default lp_matvec, which quantizes x to q8_0 for
     * q4_0/q8_0 weights as llama.cpp does (faster, and closer to llama.cpp's
     * numbers); with exact_matvec, x stays f32 (lp_matvec_exact), so logits
     * stay within f32 rounding of a reference with dequantized weights. */
    bool ok = B == 1 ? (s->exact_matvec ? lp_matvec_exact(t->type, W, X, Y, t->n_rows, t->ne[0], pool)
                                        : lp_matvec(t->type, W, X, Y, t->n_rows, t->ne[0], pool))
                     : lp_matmul_w(t->type, W, X, Y, B, t->n_rows, t->ne[0], pool);
    lp_ws_release(m->ws, t);
    if (!ok) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: tensor %s: matrix product failed (out of memory)", model_path(m->ws), t->name);
    return LOUPE_OK;
}

/* Y (B, dim) += bias, if the optional bias tensor exists. */
static loupe_status add_bias(lp_llama *m, lp_llama_state *s, const lp_tensor *b, float *Y, int B, int64_t dim, lp_error *err) {
    if (!present(b)) return LOUPE_OK;
    loupe_status st = load_vec(m, b, s->vec, err);
    if (st != LOUPE_OK) return st;
    for (int i = 0; i < B; i++) lp_add(Y + (int64_t)i * dim, s->vec, dim);
    return LOUPE_OK;
}

/* out (B, dim) = rmsnorm(x (B, dim)) * w */
static loupe_status rmsnorm_rows(lp_llama *m, lp_llama_state *s, const lp_tensor *w, float *out, const float *x, int B,
                                 int64_t dim, lp_error *err) {
    loupe_status st = load_vec(m, w, s->vec, err);
    if (st != LOUPE_OK) return st;
    for (int i = 0; i < B; i++) lp_rmsnorm(out + (int64_t)i * dim, x + (int64_t)i * dim, s->vec, dim, m->cfg.rms_eps);
    return LOUPE_OK;
}

static void round_f16(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = lp_f16_to_f32(lp_f32_to_f16(x[i]));
}

// ----------------------------------------------------------------------------
// forward

/* Self-attention of block il over s->x (B, n_embd) at positions
 * n_past..n_past+B-1; adds its output to s->x and appends k, v to the cache. */
/* The attention scratch is sized once for the worst case this state can
 * see (n_batch queries or one query, against n_ctx keys) with this pool, so
 * decoding allocates nothing per token. It is re-sized only if the caller
 * switches to a pool of another size. */
static loupe_status attention_scratch(lp_llama_state *s, lp_pool *pool, lp_error *err) {
    int nth = lp_pool_size(pool);
    if (s->att_scratch && s->att_scratch_threads == nth) return LOUPE_OK;
    size_t need = lp_attention_scratch_bound(s->n_batch, s->n_ctx, pool);
    free(s->att_scratch);
    s->att_scratch = malloc(need ? need : 1);
    if (!s->att_scratch) {
        s->att_scratch_bytes = 0;
        return lp_fail(err, LOUPE_ERR_NOMEM, "attention scratch: out of memory (%zu bytes)", need);
    }
    s->att_scratch_bytes = need;
    s->att_scratch_threads = nth;
    return LOUPE_OK;
}

/* RoPE of one token's q (n_head rows) and k (n_head_kv rows). pos: NULL
 * (position n_past + i), or this token's first id with ids stride apart. */
static void rope_token(const lp_llama_config *c, const lp_llama_layer *L, float *q, float *k, int64_t p_default,
                       const int32_t *pos, int64_t stride) {
    if (c->mrope) {
        int32_t p4[4];
        if (pos) {
            for (int j = 0; j < 4; j++) p4[j] = pos[j * stride];
        } else { /* a text token: (p, p, p, 0), as llama-graph.cpp sets it */
            p4[0] = p4[1] = p4[2] = (int32_t)p_default;
            p4[3] = 0;
        }
        lp_rope_mrope(q, L->n_head, c->head_dim, c->n_rot, p4, c->rope_sections, c->rope_base);
        lp_rope_mrope(k, L->n_head_kv, c->head_dim, c->n_rot, p4, c->rope_sections, c->rope_base);
        return;
    }
    const int64_t p = pos ? (int64_t)pos[0] : p_default;
    lp_rope(q, L->n_head, c->head_dim, c->n_rot, p, c->rope_base, c->rope_mode);
    lp_rope(k, L->n_head_kv, c->head_dim, c->n_rot, p, c->rope_base, c->rope_mode);
}

static loupe_status attention_forward(lp_llama *m, lp_llama_state *s, int il, int B, const int32_t *pos,
                                      int64_t pos_stride, lp_pool *pool, lp_error *err) {
    const lp_llama_config *c = &m->cfg;
    const lp_llama_layer *L = &m->w.layers[il];
    const int64_t E = c->n_embd, hd = c->head_dim;
    const int64_t q_dim = (int64_t)L->n_head * hd;                   /* this layer's */
    const int64_t kv_dim = (int64_t)L->n_head_kv * hd;
    const int64_t kv_max = (int64_t)c->n_head_kv * hd;               /* the cache's per-layer block width */
    const int64_t pos0 = s->n_past;
    float *k_layer = s->k_cache + (int64_t)il * s->n_ctx * kv_max; // (n_ctx, kv_dim) rows
    float *v_layer = s->v_cache + (int64_t)il * s->n_ctx * kv_max; // (n_ctx, kv_dim)
    float *k_new = k_layer + pos0 * kv_dim;                          // (B, kv_dim) rows of this call
    float *v_new = v_layer + pos0 * kv_dim;                          // (B, kv_dim)
    loupe_status st;

    // xb = rmsnorm(x) * attn_norm
    if ((st = rmsnorm_rows(m, s, &L->attn_norm, s->xb, s->x, B, E, err)) != LOUPE_OK) return st;

    if (present(&L->wqkv)) {
        // openelm: qkv (B, q_dim + 2 kv_dim) = xb Wqkv^T, split into q and the cache
        const int64_t w = q_dim + 2 * kv_dim;
        if ((st = linear(m, s, &L->wqkv, s->xb, s->qkv, B, pool, err)) != LOUPE_OK) return st;
        for (int i = 0; i < B; i++) {
            const float *r = s->qkv + i * w;
            memcpy(s->q + i * q_dim, r, (size_t)q_dim * sizeof(float));
            memcpy(k_new + i * kv_dim, r + q_dim, (size_t)kv_dim * sizeof(float));
            memcpy(v_new + i * kv_dim, r + q_dim + kv_dim, (size_t)kv_dim * sizeof(float));
        }
        // each q and k head RMS-normalised over head_dim (llama.cpp: build_norm on the (hd, heads) view)
        if ((st = load_vec(m, &L->q_norm, s->vec, err)) != LOUPE_OK) return st;
        for (int64_t r = 0; r < (int64_t)B * L->n_head; r++) lp_rmsnorm(s->q + r * hd, s->q + r * hd, s->vec, hd, c->rms_eps);
        if ((st = load_vec(m, &L->k_norm, s->vec, err)) != LOUPE_OK) return st;
        for (int64_t r = 0; r < (int64_t)B * L->n_head_kv; r++) lp_rmsnorm(k_new + r * hd, k_new + r * hd, s->vec, hd, c->rms_eps);
    } else {
        // q, k, v projections; k and v land directly in the cache
        if ((st = linear(m, s, &L->wq, s->xb, s->q, B, pool, err)) != LOUPE_OK) return st;
        if ((st = add_bias(m, s, &L->bq, s->q, B, q_dim, err)) != LOUPE_OK) return st;
        if ((st = linear(m, s, &L->wk, s->xb, k_new, B, pool, err)) != LOUPE_OK) return st;
        if ((st = add_bias(m, s, &L->bk, k_new, B, kv_dim, err)) != LOUPE_OK) return st;
        if ((st = linear(m, s, &L->wv, s->xb, v_new, B, pool, err)) != LOUPE_OK) return st;
        if ((st = add_bias(m, s, &L->bv, v_new, B, kv_dim, err)) != LOUPE_OK) return st;
    }

    // rotary position embedding of q and k, token i at position pos0 + i (or the given ids)
    for (int i = 0; i < B; i++) {
        rope_token(c, L, s->q + i * q_dim, k_new + i * kv_dim, pos0 + i, pos ? pos + i : NULL, pos_stride);
    }
    if (s->kv_f16) {
        round_f16(k_new, B * kv_dim);
        round_f16(v_new, B * kv_dim);
        round_f16(s->q, B * q_dim); /* ggml converts q to the f16 type of the cache for KQ */
    }

    // causal grouped-query attention over positions 0..pos0+B-1
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    if ((st = attention_scratch(s, pool, err)) != LOUPE_OK) return st;
    if (!lp_attention_ex(s->att, s->q, k_layer, v_layer, B, (int)(pos0 + B), L->n_head, L->n_head_kv, c->head_dim,
                         pos0, true, scale, s->att_scratch, s->att_scratch_bytes, pool)) {
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: blk.%d: attention failed (out of memory)", model_path(m->ws), il);
    }

    // output projection and residual
    if ((st = linear(m, s, &L->wo, s->att, s->xb2, B, pool, err)) != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &L->bo, s->xb2, B, E, err)) != LOUPE_OK) return st;
    dump_blk(s, il, "attn_out", s->xb2, B * E);
    lp_add(s->x, s->xb2, B * E);
    dump_blk(s, il, "ffn_inp", s->x, B * E);
    return LOUPE_OK;
}

/* SwiGLU feed-forward of block il over s->x (B, n_embd), with residual. */
static loupe_status ffn_forward(lp_llama *m, lp_llama_state *s, int il, int B, lp_pool *pool, lp_error *err) {
    const lp_llama_config *c = &m->cfg;
    const lp_llama_layer *L = &m->w.layers[il];
    const int64_t E = c->n_embd, F = L->n_ff;
    loupe_status st;

    // xb = rmsnorm(x) * ffn_norm
    if ((st = rmsnorm_rows(m, s, &L->ffn_norm, s->xb, s->x, B, E, err)) != LOUPE_OK) return st;

    // hb = silu(xb Wgate^T) * (xb Wup^T)
    if ((st = linear(m, s, &L->ffn_gate, s->xb, s->hb, B, pool, err)) != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &L->ffn_gate_b, s->hb, B, F, err)) != LOUPE_OK) return st;
    if ((st = linear(m, s, &L->ffn_up, s->xb, s->hb2, B, pool, err)) != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &L->ffn_up_b, s->hb2, B, F, err)) != LOUPE_OK) return st;
    lp_silu(s->hb, B * F);
    lp_mul(s->hb, s->hb2, B * F);

    // down projection and residual
    if ((st = linear(m, s, &L->ffn_down, s->hb, s->xb2, B, pool, err)) != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &L->ffn_down_b, s->xb2, B, E, err)) != LOUPE_OK) return st;
    dump_blk(s, il, "ffn_out", s->xb2, B * E);
    lp_add(s->x, s->xb2, B * E);
    return LOUPE_OK;
}

/* The k-th largest of a (n), 1 <= k <= n; reorders a (quickselect). */
static float kth_largest(float *a, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return a[want];
}

/* The neurons a decode step of layer il computes, ascending, into
 * s->ffn_ids; returns their count. xb (n_embd) is the normed FFN input. */
static loupe_status ffn_select(lp_llama *m, lp_llama_state *s, int il, lp_pool *pool, int *n_out, lp_error *err) {
    const lp_llama_layer *L = &m->w.layers[il];
    const int F = m->w.layers[il].n_ff;
    const bool sparse = (s->ffn_keep < 1.0f || s->ffn_threshold > 0.0f) && present(&L->ffn_pred_a);
    if (!sparse) {
        for (int i = 0; i < F; i++) s->ffn_ids[i] = i;
        *n_out = F;
        return LOUPE_OK;
    }
    // score = B (A xb): (rank) then (n_ff)
    loupe_status st;
    if ((st = linear(m, s, &L->ffn_pred_a, s->xb, s->ffn_low, 1, pool, err)) != LOUPE_OK) return st;
    if ((st = linear(m, s, &L->ffn_pred_b, s->ffn_low, s->ffn_score, 1, pool, err)) != LOUPE_OK) return st;
    if (m->pred_svd) { /* estimated gate pre-activation -> |silu| */
        for (int i = 0; i < F; i++) {
            float g = s->ffn_score[i];
            s->ffn_score[i] = fabsf(g / (1.0f + expf(-g)));
        }
    }
    int n = 0;
    if (s->ffn_threshold > 0.0f) {
        for (int i = 0; i < F; i++) {
            if (s->ffn_score[i] >= s->ffn_threshold) s->ffn_ids[n++] = i;
        }
    } else {
        int k = (int)lroundf(s->ffn_keep * (float)F);
        if (k < 1) k = 1;
        if (k > F) k = F;
        memcpy(s->ffn_sel, s->ffn_score, (size_t)F * sizeof(float));
        float v = kth_largest(s->ffn_sel, F, k);
        int above = 0;
        for (int i = 0; i < F; i++) above += s->ffn_score[i] > v;
        int ties = k - above; /* the first `ties` neurons scoring exactly v also go */
        for (int i = 0; i < F; i++) {
            if (s->ffn_score[i] > v || (s->ffn_score[i] == v && ties-- > 0)) s->ffn_ids[n++] = i;
        }
    }
    *n_out = n;
    return LOUPE_OK;
}

/* Flash-layout FFN of block il for one token: y (xb2) = sum over the active
 * neurons, in ascending order, of silu(g_i) u_i down[:, i]. */
static loupe_status ffn_decode_flash(lp_llama *m, lp_llama_state *s, int il, lp_pool *pool, lp_error *err) {
    const lp_llama_layer *L = &m->w.layers[il];
    const lp_flash_layout *fl = &m->fl;
    const int64_t E = m->cfg.n_embd;
    const bool exact = s->exact_matvec;
    loupe_status st;
    int n_act = 0;
    if ((st = ffn_select(m, s, il, pool, &n_act, err)) != LOUPE_OK) return st;
    m->ws->stats.ffn_active += (uint64_t)n_act;
    m->ws->stats.ffn_total += (uint64_t)m->w.layers[il].n_ff;
    // optional biases, whole: hb (n_ff) gate, hb2 (n_ff) up
    if (present(&L->ffn_gate_b) && (st = load_vec(m, &L->ffn_gate_b, s->hb, err)) != LOUPE_OK) return st;
    if (present(&L->ffn_up_b) && (st = load_vec(m, &L->ffn_up_b, s->hb2, err)) != LOUPE_OK) return st;

    memset(s->xb2, 0, (size_t)E * sizeof(float));
    const void **rg = s->ffn_rows, **ru = s->ffn_rows + s->ffn_chunk, **rd = s->ffn_rows + 2 * s->ffn_chunk;
    for (int c0 = 0; c0 < n_act; c0 += s->ffn_chunk) {
        const int n = n_act - c0 < s->ffn_chunk ? n_act - c0 : s->ffn_chunk;
        const int32_t *ids = s->ffn_ids + c0;
        // bundles: with an asynchronous store, the gate and up dots of the
        // neurons already in memory run while the others are read (each row's
        // dot is the same whichever batch computes it)
        const bool async = m->ws->ops->get_bundles_async != NULL;
        st = async ? m->ws->ops->get_bundles_async(m->ws, il, ids, n, s->ffn_bundles, s->ffn_ready, err)
                   : lp_ws_get_bundles(m->ws, il, ids, n, s->ffn_bundles, err);
        if (st != LOUPE_OK) return st;
        bool ok = true;
        for (int pass = async ? 0 : 1; pass < 2 && ok; pass++) {
            if (pass == 1 && async && (st = m->ws->ops->wait_bundles(m->ws, il, err)) != LOUPE_OK) return st;
            int k = 0; // pass 0: the ready bundles; pass 1: the rest (all of them without async)
            for (int j = 0; j < n; j++) {
                if (async && (s->ffn_ready[j] != 0) != (pass == 0)) continue;
                s->ffn_sub[k] = j;
                rg[k] = s->ffn_bundles[j];
                ru[k] = s->ffn_bundles[j] + fl->gate_bytes;
                k++;
            }
            ok = lp_matvec_gather(fl->gate_type, rg, s->xb, s->ffn_tg, k, E, exact, pool) &&
                 lp_matvec_gather(fl->up_type, ru, s->xb, s->ffn_tu, k, E, exact, pool);
            for (int q = 0; q < k; q++) {
                s->ffn_g[s->ffn_sub[q]] = s->ffn_tg[q];
                s->ffn_u[s->ffn_sub[q]] = s->ffn_tu[q];
            }
        }
        for (int j = 0; j < n; j++) rd[j] = s->ffn_bundles[j] + fl->gate_bytes + fl->up_bytes;
        if (ok) {
            for (int j = 0; j < n; j++) {
                if (present(&L->ffn_gate_b)) s->ffn_g[j] += s->hb[ids[j]];
                if (present(&L->ffn_up_b)) s->ffn_u[j] += s->hb2[ids[j]];
            }
            lp_silu(s->ffn_g, n);
            lp_mul(s->ffn_g, s->ffn_u, n);
            ok = lp_axpy_gather(fl->down_type, rd, s->ffn_g, s->xb2, n, E, pool);
        }
        lp_ws_release_bundles(m->ws, il);
        if (!ok) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: blk.%d: FFN bundle product failed", model_path(m->ws), il);
    }
    return LOUPE_OK;
}

/* Flash-layout FFN of block il for B > 1 tokens, dense: per panel of
 * LP_FLASH_PANEL neurons, dequantize the bundles and run three sgemms. */
static loupe_status ffn_prefill_flash(lp_llama *m, lp_llama_state *s, int il, int B, lp_pool *pool, lp_error *err) {
    const lp_llama_layer *L = &m->w.layers[il];
    const lp_flash_layout *fl = &m->fl;
    const int64_t E = m->cfg.n_embd;
    const int F = m->w.layers[il].n_ff;
    loupe_status st;
    if (present(&L->ffn_gate_b) && (st = load_vec(m, &L->ffn_gate_b, s->hb, err)) != LOUPE_OK) return st;
    if (present(&L->ffn_up_b) && (st = load_vec(m, &L->ffn_up_b, s->hb2, err)) != LOUPE_OK) return st;
    for (int p0 = 0; p0 < F; p0 += LP_FLASH_PANEL) {
        const int np = F - p0 < LP_FLASH_PANEL ? F - p0 : LP_FLASH_PANEL;
        for (int c0 = 0; c0 < np; c0 += s->ffn_chunk) {
            const int n = np - c0 < s->ffn_chunk ? np - c0 : s->ffn_chunk;
            for (int j = 0; j < n; j++) s->ffn_ids[j] = p0 + c0 + j;
            if ((st = lp_ws_get_bundles(m->ws, il, s->ffn_ids, n, s->ffn_bundles, err)) != LOUPE_OK) return st;
            const void **rg = s->ffn_rows, **ru = s->ffn_rows + s->ffn_chunk, **rd = s->ffn_rows + 2 * s->ffn_chunk;
            for (int j = 0; j < n; j++) {
                rg[j] = s->ffn_bundles[j];
                ru[j] = s->ffn_bundles[j] + fl->gate_bytes;
                rd[j] = s->ffn_bundles[j] + fl->gate_bytes + fl->up_bytes;
            }
            const int64_t r = (int64_t)c0 * E;
            bool ok = lp_dequantize_gather(fl->gate_type, rg, s->pnl_g + r, n, E, pool) &&
                      lp_dequantize_gather(fl->up_type, ru, s->pnl_u + r, n, E, pool) &&
                      lp_dequantize_gather(fl->down_type, rd, s->pnl_d + r, n, E, pool);
            lp_ws_release_bundles(m->ws, il);
            if (!ok) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: blk.%d: cannot dequantize a bundle", model_path(m->ws), il);
        }
        // H (B, np) = silu(xb G^T + bg) * (xb U^T + bu); xb2 (B, E) += H D
        lp_matmul(s->xb, s->pnl_g, s->pnl_h, B, np, (int)E, false);
        lp_matmul(s->xb, s->pnl_u, s->pnl_h2, B, np, (int)E, false);
        for (int b = 0; b < B; b++) {
            float *h = s->pnl_h + (int64_t)b * np, *h2 = s->pnl_h2 + (int64_t)b * np;
            for (int j = 0; j < np; j++) {
                if (present(&L->ffn_gate_b)) h[j] += s->hb[p0 + j];
                if (present(&L->ffn_up_b)) h2[j] += s->hb2[p0 + j];
            }
            lp_silu(h, np);
            lp_mul(h, h2, np);
        }
        lp_matmul_nn(s->pnl_h, s->pnl_d, s->xb2, B, (int)E, np, p0 > 0);
    }
    return LOUPE_OK;
}

/* ffn_forward for the flash layout: same input norm, bias and residual. */
static loupe_status ffn_forward_flash(lp_llama *m, lp_llama_state *s, int il, int B, lp_pool *pool, lp_error *err) {
    const lp_llama_layer *L = &m->w.layers[il];
    const int64_t E = m->cfg.n_embd;
    loupe_status st;
    if ((st = rmsnorm_rows(m, s, &L->ffn_norm, s->xb, s->x, B, E, err)) != LOUPE_OK) return st;
    st = B == 1 ? ffn_decode_flash(m, s, il, pool, err) : ffn_prefill_flash(m, s, il, B, pool, err);
    if (st != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &L->ffn_down_b, s->xb2, B, E, err)) != LOUPE_OK) return st;
    dump_blk(s, il, "ffn_out", s->xb2, B * E);
    lp_add(s->x, s->xb2, B * E);
    return LOUPE_OK;
}

static loupe_status block_forward(lp_llama *m, lp_llama_state *s, int il, int B, const int32_t *pos, int64_t pos_stride,
                                  lp_pool *pool, lp_error *err) {
    loupe_status st = attention_forward(m, s, il, B, pos, pos_stride, pool, err);
    if (st == LOUPE_OK) st = m->flash ? ffn_forward_flash(m, s, il, B, pool, err) : ffn_forward(m, s, il, B, pool, err);
    if (st == LOUPE_OK) dump_blk(s, il, NULL, s->x, (int64_t)B * m->cfg.n_embd);
    return st;
}

/* Final norm and output head over the last row of s->x (B, n_embd), or all
 * B rows when all is set: logits (1 or B, n_vocab). */
static loupe_status output_forward(lp_llama *m, lp_llama_state *s, int B, bool all, float *logits, lp_pool *pool,
                                   lp_error *err) {
    const lp_llama_config *c = &m->cfg;
    const int64_t E = c->n_embd;
    const int rows = all ? B : 1;
    const float *x = all ? s->x : s->x + (int64_t)(B - 1) * E; // (rows, n_embd)
    loupe_status st;

    if ((st = rmsnorm_rows(m, s, &m->w.output_norm, s->xb, x, rows, E, err)) != LOUPE_OK) return st;
    dump(s, "output_norm", s->xb, rows * E);
    if ((st = linear(m, s, &m->w.output, s->xb, logits, rows, pool, err)) != LOUPE_OK) return st;
    if ((st = add_bias(m, s, &m->w.output_b, logits, rows, c->n_vocab, err)) != LOUPE_OK) return st;
    dump(s, "logits", logits, (int64_t)rows * c->n_vocab);
    return LOUPE_OK;
}

/* One pass of B <= n_batch tokens; pos: NULL or the chunk's first ids,
 * pos_stride apart (section-major over the whole call). */
static loupe_status forward_chunk(lp_llama *m, lp_llama_state *s, const float *embd, int B, const int32_t *pos,
                                  int64_t pos_stride, float *logits, lp_pool *pool, lp_error *err) {
    const int64_t E = m->cfg.n_embd;
    lp_ws_step(m->ws); /* the flash store's window counts passes */
    memcpy(s->x, embd, (size_t)B * (size_t)E * sizeof(float));
    dump(s, "embd_in", s->x, B * E);
    for (int il = 0; il < m->cfg.n_layer; il++) {
        loupe_status st = block_forward(m, s, il, B, pos, pos_stride, pool, err);
        if (st != LOUPE_OK) return st;
    }
    s->n_past += B; /* every layer has its k, v for these positions now */
    if (!logits) return LOUPE_OK;
    return output_forward(m, s, B, s->logits_all, logits, pool, err);
}

/* Explicit position ids must not be negative (ggml takes them as i32 positions). */
static loupe_status check_pos(const lp_llama *m, const int32_t *pos, int n, lp_error *err) {
    if (!pos) return LOUPE_OK;
    const int64_t total = (int64_t)n * lp_llama_n_pos_per_token(m);
    for (int64_t i = 0; i < total; i++) {
        if (pos[i] < 0) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "position id %lld of token %lld is negative (%d)",
                           (long long)(i / n), (long long)(i % n), (int)pos[i]);
        }
    }
    return LOUPE_OK;
}

static loupe_status check_room(const lp_llama *m, const lp_llama_state *s, int n, lp_error *err) {
    if (s->model != m) return lp_fail(err, LOUPE_ERR_MISMATCH, "lp_llama_forward: the state belongs to another model");
    if (n > s->n_ctx - s->n_past) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "context full: %d positions cached + %d new exceeds n_ctx = %d",
                       s->n_past, n, s->n_ctx);
    }
    return LOUPE_OK;
}

static loupe_status lp_llama_forward_impl(lp_llama *m, lp_llama_state *s, const float *embd, const int32_t *pos, int n,
                                          float *logits, lp_pool *pool, lp_error *err) {
    if (!m || !s || n < 0 || (n > 0 && !embd)) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_forward: bad arguments");
    loupe_status st = check_room(m, s, n, err);
    if (st == LOUPE_OK) st = check_pos(m, pos, n, err);
    if (st != LOUPE_OK) return st;
    const int64_t E = m->cfg.n_embd, V = m->cfg.n_vocab;
    const int start = s->n_past;
    for (int c0 = 0; c0 < n; c0 += s->n_batch) {
        const int B = n - c0 < s->n_batch ? n - c0 : s->n_batch;
        float *lg = NULL; // where this chunk's logits go, if anywhere
        if (logits && s->logits_all) lg = logits + (int64_t)c0 * V;
        else if (logits && c0 + B == n) lg = logits;
        st = forward_chunk(m, s, embd + (int64_t)c0 * E, B, pos ? pos + c0 : NULL, n, lg, pool, err);
        if (st != LOUPE_OK) {
            s->n_past = start;
            return st;
        }
    }
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// token embeddings

/* out (n, n_embd) from token ids; rows (n, row_bytes) and ids (n) are scratch. */
static loupe_status embed_into(const lp_llama *m, const int32_t *tokens, int n, float *out, void *rows, int64_t *ids,
                               lp_error *err) {
    const lp_tensor *te = &m->w.token_embd;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->cfg.n_vocab) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "token id %d at position %d is outside the vocabulary [0, %d)",
                           (int)tokens[i], i, m->cfg.n_vocab);
        }
        ids[i] = tokens[i];
    }
    loupe_status st = lp_ws_get_rows(m->ws, te, ids, n, rows, err);
    if (st != LOUPE_OK) return st;
    for (int i = 0; i < n; i++) {
        const uint8_t *row = (const uint8_t *)rows + (size_t)i * te->row_bytes;
        if (!lp_dequantize_row(te->type, row, out + (int64_t)i * m->cfg.n_embd, m->cfg.n_embd)) {
            return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: tensor %s: cannot dequantize", model_path(m->ws), te->name);
        }
    }
    return LOUPE_OK;
}

static loupe_status lp_llama_embed_impl(const lp_llama *m, const int32_t *tokens, int n, float *out, lp_error *err) {
    if (!m || n < 0 || (n > 0 && (!tokens || !out))) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_embed: bad arguments");
    if (n == 0) return LOUPE_OK;
    void *rows = malloc((size_t)n * m->w.token_embd.row_bytes);
    int64_t *ids = malloc((size_t)n * sizeof *ids);
    loupe_status st = rows && ids ? embed_into(m, tokens, n, out, rows, ids, err)
                                  : lp_fail(err, LOUPE_ERR_NOMEM, "lp_llama_embed: out of memory for %d tokens", n);
    free(rows);
    free(ids);
    return st;
}

static loupe_status lp_llama_forward_tokens_impl(lp_llama *m, lp_llama_state *s, const int32_t *tokens, const int32_t *pos,
                                                 int n, float *logits, lp_pool *pool, lp_error *err) {
    if (!m || !s || n < 0 || (n > 0 && !tokens)) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_llama_forward_tokens: bad arguments");
    }
    loupe_status st = check_room(m, s, n, err);
    if (st == LOUPE_OK) st = check_pos(m, pos, n, err);
    if (st != LOUPE_OK) return st;
    const int64_t V = m->cfg.n_vocab;
    const int start = s->n_past;
    for (int c0 = 0; c0 < n; c0 += s->n_batch) {
        const int B = n - c0 < s->n_batch ? n - c0 : s->n_batch;
        float *lg = NULL;
        if (logits && s->logits_all) lg = logits + (int64_t)c0 * V;
        else if (logits && c0 + B == n) lg = logits;
        st = embed_into(m, tokens + c0, B, s->emb, s->emb_rows, s->emb_ids, err);
        if (st == LOUPE_OK) st = forward_chunk(m, s, s->emb, B, pos ? pos + c0 : NULL, n, lg, pool, err);
        if (st != LOUPE_OK) {
            s->n_past = start;
            return st;
        }
    }
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// entry points: a store with per-call state (the flash store) serves one
// pass at a time

static void ws_lock(const lp_llama *m) {
    if (m && m->ws && m->ws->serial) pthread_mutex_lock(m->ws->serial);
}
static void ws_unlock(const lp_llama *m) {
    if (m && m->ws && m->ws->serial) pthread_mutex_unlock(m->ws->serial);
}

loupe_status lp_llama_forward(lp_llama *m, lp_llama_state *s, const float *embd, int n, float *logits, lp_pool *pool,
                              lp_error *err) {
    ws_lock(m);
    loupe_status st = lp_llama_forward_impl(m, s, embd, NULL, n, logits, pool, err);
    ws_unlock(m);
    return st;
}

loupe_status lp_llama_embed(const lp_llama *m, const int32_t *tokens, int n, float *out, lp_error *err) {
    ws_lock(m);
    loupe_status st = lp_llama_embed_impl(m, tokens, n, out, err);
    ws_unlock(m);
    return st;
}

loupe_status lp_llama_forward_tokens(lp_llama *m, lp_llama_state *s, const int32_t *tokens, int n, float *logits,
                                     lp_pool *pool, lp_error *err) {
    ws_lock(m);
    loupe_status st = lp_llama_forward_tokens_impl(m, s, tokens, NULL, n, logits, pool, err);
    ws_unlock(m);
    return st;
}

loupe_status lp_llama_forward_pos(lp_llama *m, lp_llama_state *s, const float *embd, const int32_t *pos, int n,
                                  float *logits, lp_pool *pool, lp_error *err) {
    ws_lock(m);
    loupe_status st = lp_llama_forward_impl(m, s, embd, pos, n, logits, pool, err);
    ws_unlock(m);
    return st;
}

loupe_status lp_llama_forward_tokens_pos(lp_llama *m, lp_llama_state *s, const int32_t *tokens, const int32_t *pos,
                                         int n, float *logits, lp_pool *pool, lp_error *err) {
    ws_lock(m);
    loupe_status st = lp_llama_forward_tokens_impl(m, s, tokens, pos, n, logits, pool, err);
    ws_unlock(m);
    return st;
}

// ----------------------------------------------------------------------------
// M-RoPE (see decoder.h for the rule and its llama.cpp sources)

int lp_llama_n_pos_per_token(const lp_llama *m) { return m && m->cfg.mrope ? 4 : 1; }

void lp_rope_mrope(float *x, int n_head, int head_dim, int n_rot, const int32_t pos[4], const int sections[4],
                   float base) {
    // x (n_head, head_dim)
    if (n_rot > head_dim) n_rot = head_dim;
    n_rot &= ~1;
    const int sect_dims = sections[0] + sections[1] + sections[2] + sections[3];
    if (n_rot <= 0 || n_head <= 0 || sect_dims <= 0) return;
    const int sec_w = sections[0] + sections[1], sec_e = sec_w + sections[2];
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    float cs[2 * 256], *cache = cs, *own = NULL; // (half) cos, (half) sin
    if (half > 256) {
        own = malloc((size_t)n_rot * sizeof(float));
        if (!own) return;
        cache = own;
    }
    /* ggml_mrope_cache_init, GGML_ROPE_TYPE_MROPE: four chains multiplied
     * in step, the sector picks which one a pair uses */
    float th_t = (float)pos[0], th_h = (float)pos[1], th_w = (float)pos[2], th_e = (float)pos[3];
    for (int i = 0; i < half; i++) {
        const int sector = i % sect_dims;
        float theta = th_t;
        if (sector >= sections[0] && sector < sec_w) theta = th_h;
        else if (sector >= sec_w && sector < sec_e) theta = th_w;
        else if (sector >= sec_e) theta = th_e;
        cache[i] = cosf(theta);
        cache[half + i] = sinf(theta);
        th_t *= theta_scale;
        th_h *= theta_scale;
        th_w *= theta_scale;
        th_e *= theta_scale;
    }
    for (int h = 0; h < n_head; h++) {
        float *xh = x + (int64_t)h * head_dim; // (head_dim); dims n_rot.. pass through
        for (int i = 0; i < half; i++) {
            const float c = cache[i], s = cache[half + i];
            const float x0 = xh[i], x1 = xh[i + half];
            xh[i] = x0 * c - x1 * s;
            xh[i + half] = x0 * s + x1 * c;
        }
    }
    free(own);
}

int32_t lp_mrope_pos_text(int32_t *pos, int64_t stride, int64_t i0, int n, int32_t p) {
    for (int k = 0; k < n; k++) {
        const int64_t i = i0 + k;
        pos[i] = pos[stride + i] = pos[2 * stride + i] = p + k;
        pos[3 * stride + i] = 0;
    }
    return p + n;
}

int32_t lp_mrope_pos_image(int32_t *pos, int64_t stride, int64_t i0, int nx, int ny, int32_t p) {
    const int n = nx * ny;
    for (int k = 0; k < n; k++) {
        const int64_t i = i0 + k;
        pos[i] = p;                        /* t */
        pos[stride + i] = p + k / nx;      /* h: row    */
        pos[2 * stride + i] = p + k % nx;  /* w: column */
        pos[3 * stride + i] = 0;
    }
    return p + (nx > ny ? nx : ny);
}

int32_t lp_mrope_pos_prompt(int32_t *pos, int n_pre, int nx, int ny, int n_post, int32_t p0) {
    const int64_t n = (int64_t)n_pre + (int64_t)nx * ny + n_post;
    int32_t p = lp_mrope_pos_text(pos, n, 0, n_pre, p0);
    p = lp_mrope_pos_image(pos, n, n_pre, nx, ny, p);
    return lp_mrope_pos_text(pos, n, n_pre + (int64_t)nx * ny, n_post, p);
}
