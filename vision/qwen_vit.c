/* vision/qwen_vit.c — the Qwen2.5-VL (and Qwen2-VL) vision tower + merger of
 * an mmproj GGUF, as llama.cpp's clip_graph_qwen2vl computes it. The graph,
 * the window and RoPE rules and every deviation are documented in
 * qwen_vit.h; preprocessing is in qwen_prep.c. */
#include "qwen_vit.h"

#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define QV_MAX_EMBD (1 << 16)
#define QV_MAX_FF (1 << 18)
#define QV_MAX_LAYERS 1024
#define QV_MAX_PATCHES (1 << 18) /* patches per image (N); 4096 tokens = 16384 */

typedef struct qv_layer {
    lp_dense q, k, v, o;      /* (E, E) each; q/k/v biases required         */
    lp_dense up, gate, down;  /* up/gate (F, E), down (E, F); gate optional  */
    bool has_gate;
    float *ln1_w, *ln1_b;     /* (E) or NULL                                 */
    float *ln2_w, *ln2_b;
} qv_layer;


struct lp_qwen_vit {
    const lp_gguf *g;
    lp_weight_store *ws;
    const char *path;
    bool qwen2; /* "qwen2vl_merger": LayerNorm */

    int patch, merge, n_embd, n_head, head_dim, n_ff, n_layer, n_wa_pattern, window, proj_dim;
    lp_vit_common vc;    /* eps, mean/std, FFN activation (clip.h) */
    int file_min_pixels, file_max_pixels; /* clip.vision.image_min/max_pixels, 0: absent */
    int min_tokens, max_tokens;           /* custom limits, 0: default                */

    lp_dense patch0, patch1;              /* used as (E, 3·P·P)                        */
    float *patch_r16[2];                  /* (E, 3·P·P) f16-rounded copies of f32 kernels */
    float *pre_ln_w, *pre_ln_b, *post_ln_w, *post_ln_b;
    qv_layer *layers;
    lp_projector proj;                    /* mm.0 (4E -> 4E), mm.2 (4E -> out)        */

    unsigned quirks;
    lp_clip_dump_fn dump;
    void *dump_user;
};

static const char *gpath(const lp_gguf *g) { return g && g->path ? g->path : "(gguf)"; }
static bool has_tensor(const lp_gguf *g, const char *name) { return lp_gguf_find_tensor(g, name) >= 0; }

static void dump(const lp_qwen_vit *v, const char *name, const float *data, int64_t n) {
    if (v->dump) v->dump(v->dump_user, name, data, n);
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */

static loupe_status get_dim(const lp_gguf *g, const char *key, bool required, int lo, int hi, int *out, lp_error *err) {
    uint32_t val = (uint32_t)*out;
    loupe_status st = required ? lp_gguf_get_u32(g, key, &val, err) : lp_gguf_get_u32_opt(g, key, &val, err);
    if (st != LOUPE_OK) return st;
    if ((int64_t)val < lo || (int64_t)val > hi) {
        return lp_fail(err, (int64_t)val > hi ? LOUPE_ERR_LIMIT : LOUPE_ERR_FORMAT, "%s: key %s = %u out of range [%d, %d]",
                       gpath(g), key, val, lo, hi);
    }
    *out = (int)val;
    return LOUPE_OK;
}

static loupe_status opt_vec(const lp_qwen_vit *v, const char *name, int64_t n, float **out, lp_error *err) {
    *out = NULL;
    if (!has_tensor(v->g, name)) return LOUPE_OK;
    return lp_load_f32(v->g, v->ws, name, n, out, err);
}

static loupe_status load_hparams(lp_qwen_vit *v, lp_error *err) {
    const lp_gguf *g = v->g;
    loupe_status st;
    bool has_vision = false;
    if ((st = lp_gguf_get_bool_opt(g, "clip.has_vision_encoder", &has_vision, err))) return st;
    if (!has_vision) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.has_vision_encoder missing or false: not a vision mmproj",
                       gpath(g));
    }
    /* projector type: clip.projector_type, else clip.vision.projector_type (mixed-modality files) */
    const char *key = "clip.projector_type", *pt = NULL;
    if ((st = lp_gguf_get_str_opt(g, key, &pt, err))) return st;
    if (!pt || !pt[0]) {
        key = "clip.vision.projector_type";
        if ((st = lp_gguf_get_str_opt(g, key, &pt, err))) return st;
    }
    if (!pt || !pt[0]) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.projector_type missing", gpath(g));
    /* "qwen2.5o" (Qwen2.5-Omni) is QWEN25VL for the vision modality in llama.cpp */
    if (strcmp(pt, "qwen2.5vl_merger") == 0 || strcmp(pt, "qwen2.5o") == 0) {
        v->qwen2 = false;
    } else if (strcmp(pt, "qwen2vl_merger") == 0) {
        v->qwen2 = true;
    } else {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s = \"%s\": not a Qwen2/2.5-VL vision projector", gpath(g),
                       key, pt);
    }

    int image_size = 0; /* required by llama.cpp, unused by this graph */
    if ((st = get_dim(g, "clip.vision.image_size", true, 1, 1 << 16, &image_size, err))) return st;
    if ((st = get_dim(g, "clip.vision.patch_size", true, 1, 1024, &v->patch, err))) return st;
    if ((st = get_dim(g, "clip.vision.embedding_length", true, 1, QV_MAX_EMBD, &v->n_embd, err))) return st;
    if ((st = get_dim(g, "clip.vision.feed_forward_length", true, 1, QV_MAX_FF, &v->n_ff, err))) return st;
    if ((st = get_dim(g, "clip.vision.block_count", true, 1, QV_MAX_LAYERS, &v->n_layer, err))) return st;
    if ((st = get_dim(g, "clip.vision.attention.head_count", true, 1, QV_MAX_EMBD, &v->n_head, err))) return st;
    if ((st = get_dim(g, "clip.vision.projection_dim", true, 1, QV_MAX_FF, &v->proj_dim, err))) return st;

    v->head_dim = 0;
    if ((st = get_dim(g, "clip.vision.attention.head_dim", false, 0, QV_MAX_EMBD, &v->head_dim, err))) return st;
    if (v->head_dim == 0) {
        if (v->n_embd % v->n_head) {
            return lp_fail(err, LOUPE_ERR_FORMAT,
                           "%s: key clip.vision.attention.head_count = %d does not divide clip.vision.embedding_length = %d",
                           gpath(g), v->n_head, v->n_embd);
        }
        v->head_dim = v->n_embd / v->n_head;
    } else if ((int64_t)v->head_dim * v->n_head != v->n_embd) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key clip.vision.attention.head_dim = %d: head_dim × head_count != embedding_length", gpath(g),
                       v->head_dim);
    }
    if (v->head_dim % 4) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: head size %d: the vision RoPE needs a multiple of 4", gpath(g),
                       v->head_dim);
    }
    int n_head_kv = v->n_head;
    if ((st = get_dim(g, "clip.vision.attention.head_count_kv", false, 1, QV_MAX_EMBD, &n_head_kv, err))) return st;
    if (n_head_kv != v->n_head) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key clip.vision.attention.head_count_kv = %d: grouped-query ViT not supported", gpath(g),
                       n_head_kv);
    }
    if ((st = lp_vit_common_load(g, &v->vc, err))) return st;

    v->merge = 2;
    if ((st = get_dim(g, "clip.vision.spatial_merge_size", false, 1, 64, &v->merge, err))) return st;
    if (v->merge != 2) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key clip.vision.spatial_merge_size = %d: llama.cpp's Qwen-VL graph merges 2×2 patches only",
                       gpath(g), v->merge);
    }
    v->n_wa_pattern = 0;
    if ((st = get_dim(g, "clip.vision.n_wa_pattern", !v->qwen2, 0, QV_MAX_LAYERS, &v->n_wa_pattern, err))) return st;
    v->window = LP_QWEN_WINDOW_PIXELS / v->patch / v->merge;
    if (v->n_wa_pattern > 0 && v->window < 1) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key clip.vision.patch_size = %d: a %d-pixel window holds no merged token", gpath(g), v->patch,
                       LP_QWEN_WINDOW_PIXELS);
    }
    /* only the HF preprocessing mode reads these (llama.cpp ignores them here) */
    v->file_min_pixels = v->file_max_pixels = 0;
    if ((st = get_dim(g, "clip.vision.image_min_pixels", false, 0, INT32_MAX, &v->file_min_pixels, err))) return st;
    if ((st = get_dim(g, "clip.vision.image_max_pixels", false, 0, INT32_MAX, &v->file_max_pixels, err))) return st;
    return LOUPE_OK;
}

/* The patch embedding kernel `name` [P, P, 3, E], used as (E, 3·P·P). */
static loupe_status load_patch(lp_qwen_vit *v, const char *name, lp_dense *d, lp_error *err) {
    const int64_t P = v->patch, E = v->n_embd, K = 3 * P * P;
    memset(d, 0, sizeof *d);
    loupe_status st = lp_ws_lookup(v->ws, name, &d->w, err);
    if (st != LOUPE_OK) return st;
    const lp_tensor *w = &d->w;
    if (w->ne[0] != P || w->ne[1] != P || w->ne[2] != 3 || w->ne[3] != E) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, 3, %lld]",
                       v->path, name, (long long)w->ne[0], (long long)w->ne[1], (long long)w->ne[2], (long long)w->ne[3],
                       (long long)P, (long long)P, (long long)E);
    }
    size_t rs = lp_row_size(w->type, K);
    if (!lp_type_can_dequantize(w->type) || rs == 0 || rs * (size_t)E != w->row_bytes * (size_t)w->n_rows) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s not usable for the patch embedding", v->path,
                       name, lp_type_name(w->type) ? lp_type_name(w->type) : "?");
    }
    d->in = K;
    d->out = E;
    return LOUPE_OK;
}

/* ggml_conv_2d builds its im2col in f16 for every kernel type but BF16 and
 * multiplies it with the kernel converted to f16: for an f32 kernel keep an
 * f16-rounded copy (used under LP_CLIP_QUIRK_MATMUL_F16). */
static loupe_status round_patch(lp_qwen_vit *v, const lp_dense *d, float **out, lp_error *err) {
    *out = NULL;
    if (d->w.type != LP_TYPE_F32) return LOUPE_OK;
    const size_t n = (size_t)d->in * (size_t)d->out;
    float *r = malloc(n * sizeof(float));
    if (!r) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: tensor %s: out of memory", v->path, d->w.name);
    const void *data = NULL;
    loupe_status st = lp_ws_get(v->ws, &d->w, &data, err);
    if (st != LOUPE_OK) {
        free(r);
        return st;
    }
    const float *w = data;
    for (size_t i = 0; i < n; i++) r[i] = lp_f16_to_f32(lp_f32_to_f16(w[i]));
    lp_ws_release(v->ws, &d->w);
    *out = r;
    return LOUPE_OK;
}

static loupe_status load_layer(lp_qwen_vit *v, int il, lp_error *err) {
    qv_layer *L = &v->layers[il];
    const lp_gguf *g = v->g;
    const int64_t E = v->n_embd, F = v->n_ff;
    char name[128], name2[128];
    loupe_status st;

    snprintf(name, sizeof name, "v.blk.%d.attn_qkv.weight", il);
    if (has_tensor(g, name)) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: fused QKV is not used by llama.cpp's Qwen-VL graph",
                       v->path, name);
    }
    const struct { lp_dense *d; const char *n; bool bias; } att[] = {
        {&L->q, "attn_q", true}, {&L->k, "attn_k", true}, {&L->v, "attn_v", true}, {&L->o, "attn_out", false},
    };
    for (size_t i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "v.blk.%d.%s", il, att[i].n);
        if ((st = lp_dense_load(att[i].d, g, v->ws, name, E, E, att[i].bias, err))) return st;
    }
    /* clip.cpp is_ffn_swapped: ffn_down with input width E means the legacy naming */
    const char *up = "ffn_up", *down = "ffn_down";
    snprintf(name, sizeof name, "v.blk.%d.ffn_down.weight", il);
    lp_tensor td;
    if ((st = lp_ws_lookup(v->ws, name, &td, err))) return st;
    if (td.ne[0] == E) {
        up = "ffn_down";
        down = "ffn_up";
    }
    snprintf(name, sizeof name, "v.blk.%d.%s", il, up);
    if ((st = lp_dense_load(&L->up, g, v->ws, name, E, F, false, err))) return st;
    snprintf(name, sizeof name, "v.blk.%d.%s", il, down);
    if ((st = lp_dense_load(&L->down, g, v->ws, name, F, E, false, err))) return st;
    snprintf(name, sizeof name, "v.blk.%d.ffn_gate.weight", il);
    L->has_gate = has_tensor(g, name);
    if (L->has_gate) {
        snprintf(name, sizeof name, "v.blk.%d.ffn_gate", il);
        if ((st = lp_dense_load(&L->gate, g, v->ws, name, E, F, false, err))) return st;
    }
    for (int n = 1; n <= 2; n++) {
        snprintf(name, sizeof name, "v.blk.%d.ln%d.weight", il, n);
        snprintf(name2, sizeof name2, "v.blk.%d.ln%d.bias", il, n);
        if ((st = opt_vec(v, name, E, n == 1 ? &L->ln1_w : &L->ln2_w, err))) return st;
        if ((st = opt_vec(v, name2, E, n == 1 ? &L->ln1_b : &L->ln2_b, err))) return st;
    }
    return LOUPE_OK;
}

static void free_layer(qv_layer *L) {
    lp_dense_free(&L->q);
    lp_dense_free(&L->k);
    lp_dense_free(&L->v);
    lp_dense_free(&L->o);
    lp_dense_free(&L->up);
    lp_dense_free(&L->gate);
    lp_dense_free(&L->down);
    free(L->ln1_w);
    free(L->ln1_b);
    free(L->ln2_w);
    free(L->ln2_b);
}

static loupe_status load_tensors(lp_qwen_vit *v, lp_error *err) {
    const lp_gguf *g = v->g;
    const int64_t E = v->n_embd;
    loupe_status st;
    /* what llama.cpp's Qwen-VL graph asserts away */
    static const char *const refused[] = {"v.patch_embd.bias", "v.class_embd"};
    for (size_t i = 0; i < 2; i++) {
        if (has_tensor(g, refused[i])) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: not supported by the Qwen-VL graph", v->path,
                           refused[i]);
        }
    }
    if ((st = load_patch(v, "v.patch_embd.weight", &v->patch0, err))) return st;
    if ((st = load_patch(v, "v.patch_embd.weight.1", &v->patch1, err))) return st;
    if ((st = round_patch(v, &v->patch0, &v->patch_r16[0], err))) return st;
    if ((st = round_patch(v, &v->patch1, &v->patch_r16[1], err))) return st;
    if ((st = opt_vec(v, "v.pre_ln.weight", E, &v->pre_ln_w, err))) return st;
    if ((st = opt_vec(v, "v.pre_ln.bias", E, &v->pre_ln_b, err))) return st;
    if ((st = opt_vec(v, "v.post_ln.weight", E, &v->post_ln_w, err))) return st;
    if ((st = opt_vec(v, "v.post_ln.bias", E, &v->post_ln_b, err))) return st;
    v->layers = calloc((size_t)v->n_layer, sizeof *v->layers);
    if (!v->layers) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", v->path);
    for (int il = 0; il < v->n_layer; il++) {
        if ((st = load_layer(v, il, err))) return st;
    }
    char name[64];
    snprintf(name, sizeof name, "v.blk.%d.attn_q.weight", v->n_layer);
    if (has_tensor(g, name)) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s exists but clip.vision.block_count = %d", v->path, name,
                       v->n_layer);
    }
    if ((st = lp_projector_load(&v->proj, LP_PROJECTOR_MLP, g, v->ws, 4 * E, err))) return st;
    if (v->proj.hidden_dim > QV_MAX_FF || v->proj.out_dim > QV_MAX_FF) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: tensor mm.0.weight: merger too wide", v->path);
    }
    if (v->proj.out_dim != v->proj_dim) {
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: key clip.vision.projection_dim = %d but tensor mm.2.weight has %lld rows (llama.cpp reshapes the "
                       "output by projection_dim)",
                       v->path, v->proj_dim, (long long)v->proj.out_dim);
    }
    return LOUPE_OK;
}

lp_qwen_vit *lp_qwen_vit_load(const lp_gguf *mmproj, lp_weight_store *ws, lp_error *err) {
    if (!mmproj || !ws) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: NULL gguf or weight store");
        return NULL;
    }
    lp_qwen_vit *v = calloc(1, sizeof *v);
    if (!v) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", gpath(mmproj));
        return NULL;
    }
    v->g = mmproj;
    v->ws = ws;
    v->path = gpath(mmproj);
    v->quirks = LP_QWEN_VIT_QUIRKS_LLAMACPP;
    if (load_hparams(v, err) != LOUPE_OK || load_tensors(v, err) != LOUPE_OK) {
        lp_qwen_vit_free(v);
        return NULL;
    }
    return v;
}

void lp_qwen_vit_free(lp_qwen_vit *v) {
    if (!v) return;
    if (v->layers) {
        for (int il = 0; il < v->n_layer; il++) free_layer(&v->layers[il]);
        free(v->layers);
    }
    lp_dense_free(&v->patch0);
    lp_dense_free(&v->patch1);
    free(v->patch_r16[0]);
    free(v->patch_r16[1]);
    free(v->pre_ln_w);
    free(v->pre_ln_b);
    free(v->post_ln_w);
    free(v->post_ln_b);
    lp_projector_free(&v->proj);
    free(v);
}

/* ------------------------------------------------------------------------ */
/* accessors and settings                                                    */

int lp_qwen_vit_patch_size(const lp_qwen_vit *v) { return v->patch; }
int lp_qwen_vit_merge(const lp_qwen_vit *v) { return v->merge; }
int lp_qwen_vit_factor(const lp_qwen_vit *v) { return v->patch * v->merge; }
int lp_qwen_vit_n_embd(const lp_qwen_vit *v) { return v->n_embd; }
int lp_qwen_vit_n_head(const lp_qwen_vit *v) { return v->n_head; }
int lp_qwen_vit_n_layer(const lp_qwen_vit *v) { return v->n_layer; }
int lp_qwen_vit_out_dim(const lp_qwen_vit *v) { return (int)v->proj.out_dim; }
int lp_qwen_vit_n_wa_pattern(const lp_qwen_vit *v) { return v->n_wa_pattern; }
int lp_qwen_vit_window(const lp_qwen_vit *v) { return v->window; }
bool lp_qwen_vit_is_qwen2(const lp_qwen_vit *v) { return v->qwen2; }
const float *lp_qwen_vit_mean(const lp_qwen_vit *v) { return v->vc.mean; }
const float *lp_qwen_vit_std(const lp_qwen_vit *v) { return v->vc.std; }
unsigned lp_qwen_vit_quirks(const lp_qwen_vit *v) { return v->quirks; }

bool lp_qwen_vit_layer_full(const lp_qwen_vit *v, int il) {
    return v->n_wa_pattern <= 0 || (il + 1) % v->n_wa_pattern == 0; /* qwen2vl.cpp:104 */
}

loupe_status lp_qwen_vit_set_quirks(lp_qwen_vit *v, unsigned quirks, lp_error *err) {
    if (quirks & ~(unsigned)LP_QWEN_VIT_QUIRKS_LLAMACPP) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: quirk bits 0x%x do not apply",
                       quirks & ~(unsigned)LP_QWEN_VIT_QUIRKS_LLAMACPP);
    }
    v->quirks = quirks;
    return LOUPE_OK;
}

void lp_qwen_vit_set_dump(lp_qwen_vit *v, lp_clip_dump_fn fn, void *user) {
    v->dump = fn;
    v->dump_user = user;
}

static int64_t token_area(const lp_qwen_vit *v) { return (int64_t)lp_qwen_vit_factor(v) * lp_qwen_vit_factor(v); }

static void limits_with(const lp_qwen_vit *v, int min_tokens, int max_tokens, lp_qwen_prep_mode mode, int64_t *lo,
                        int64_t *hi) {
    const int64_t a = token_area(v);
    if (mode == LP_QWEN_PREP_LLAMACPP) { /* set_limit_image_tokens(8, 4096) */
        *lo = (min_tokens > 0 ? min_tokens : LP_QWEN_LLAMACPP_MIN_TOKENS) * a;
        *hi = (max_tokens > 0 ? max_tokens : LP_QWEN_LLAMACPP_MAX_TOKENS) * a;
    } else {
        *lo = min_tokens > 0 ? min_tokens * a : (v->file_min_pixels > 0 ? v->file_min_pixels : LP_QWEN_HF_MIN_PIXELS);
        *hi = max_tokens > 0 ? max_tokens * a : (v->file_max_pixels > 0 ? v->file_max_pixels : LP_QWEN_HF_MAX_PIXELS);
    }
}

loupe_status lp_qwen_vit_set_token_limits(lp_qwen_vit *v, int min_tokens, int max_tokens, lp_error *err) {
    if (min_tokens < 0 || max_tokens < 0 || (int64_t)min_tokens * token_area(v) > INT32_MAX ||
        (int64_t)max_tokens * token_area(v) > INT32_MAX) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: bad image token limits %d..%d", min_tokens, max_tokens);
    }
    for (int m = 0; m < 2; m++) {
        int64_t lo, hi;
        limits_with(v, min_tokens, max_tokens, (lp_qwen_prep_mode)m, &lo, &hi);
        if (lo > hi) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG,
                           "qwen vit: image token limits %d..%d give min pixels %lld above max pixels %lld", min_tokens,
                           max_tokens, (long long)lo, (long long)hi);
        }
    }
    v->min_tokens = min_tokens;
    v->max_tokens = max_tokens;
    return LOUPE_OK;
}

void lp_qwen_vit_pixel_limits(const lp_qwen_vit *v, lp_qwen_prep_mode mode, int *min_pixels, int *max_pixels) {
    int64_t lo, hi;
    limits_with(v, v->min_tokens, v->max_tokens, mode, &lo, &hi);
    *min_pixels = (int)lo;
    *max_pixels = (int)hi;
}

loupe_status lp_qwen_vit_plan(const lp_qwen_vit *v, int w, int h, lp_qwen_prep_mode mode, lp_qwen_geom *geom,
                              lp_error *err) {
    if (!v || !geom) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: NULL argument");
    int lo, hi, W, H;
    lp_qwen_vit_pixel_limits(v, mode, &lo, &hi);
    const int f = lp_qwen_vit_factor(v);
    loupe_status st = lp_qwen_vit_smart_resize(w, h, f, lo, hi, mode, &W, &H, err);
    if (st != LOUPE_OK) return st;
    if ((int64_t)(W / v->patch) * (H / v->patch) > QV_MAX_PATCHES) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: a %dx%d input has more than %d patches", v->path, W, H, QV_MAX_PATCHES);
    }
    memset(geom, 0, sizeof *geom);
    geom->width = W;
    geom->height = H;
    geom->nx = W / f;
    geom->ny = H / f;
    lp_qwen_prep_map(w, h, W, H, mode, &geom->map);
    return LOUPE_OK;
}

loupe_status lp_qwen_vit_preprocess(const lp_qwen_vit *v, const lp_image *img, lp_qwen_prep_mode mode, float *pixels,
                                    lp_qwen_geom *geom, lp_error *err) {
    if (!v || !img || !pixels) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: NULL argument");
    lp_qwen_geom g;
    loupe_status st = lp_qwen_vit_plan(v, img->w, img->h, mode, &g, err);
    if (st != LOUPE_OK) return st;
    lp_image rgb;
    if ((st = lp_qwen_prep_rgb(img, g.width, g.height, mode, &rgb, &g.map, err)) != LOUPE_OK) return st;
    lp_qwen_prep_normalize(&rgb, v->vc.mean, v->vc.std, mode, pixels);
    lp_image_free(&rgb);
    if (geom) *geom = g;
    return LOUPE_OK;
}

/* ------------------------------------------------------------------------ */
/* window partition and RoPE                                                 */

int lp_qwen_window_partition(int nx, int ny, int win, int32_t *win_idx, int32_t *inv_idx, int32_t *win_start) {
    if (nx <= 0 || ny <= 0 || win <= 0 || !win_idx || !inv_idx) return -1;
    int dst = 0, nw = 0;
    if (win_start) win_start[0] = 0;
    /* clip.cpp, PROJECTOR_TYPE_QWEN25VL: windows row-major, groups row-major inside */
    for (int y = 0; y < ny; y += win) {
        for (int x = 0; x < nx; x += win) {
            const int wh = win < ny - y ? win : ny - y, ww = win < nx - x ? win : nx - x;
            for (int dy = 0; dy < wh; dy++) {
                for (int dx = 0; dx < ww; dx++) {
                    const int src = (y + dy) * nx + (x + dx);
                    win_idx[src] = dst;
                    inv_idx[dst] = src;
                    dst++;
                }
            }
            nw++;
            if (win_start) win_start[nw] = dst;
        }
    }
    return nw;
}

/* cos/sin of the vision RoPE angles for a patch at (py, px): c, s (d/2). */
static void vision_rope_angles(int head_dim, int py, int px, float *c, float *s) {
    const int n_dims = head_dim / 2, sec = head_dim / 4;
    const float theta_scale = powf(10000.0f, -2.0f / (float)n_dims);
    float th_y = (float)py, th_x = (float)px;
    for (int i = 0; i < n_dims; i++) {
        if (i == sec) th_x = (float)px; /* ggml_mrope_cache_init: independent sections restart here */
        const float theta = i < sec ? th_y : th_x;
        c[i] = cosf(theta);
        s[i] = sinf(theta);
        th_y *= theta_scale;
        th_x *= theta_scale;
    }
}

/* x (n_head, d): pairs (i, i + d/2) rotated by (c[i], s[i]). */
static void rope_rotate(float *x, int n_head, int head_dim, const float *c, const float *s) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_head; h++) {
        float *xh = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float x0 = xh[i], x1 = xh[i + half];
            xh[i] = x0 * c[i] - x1 * s[i];
            xh[i + half] = x0 * s[i] + x1 * c[i];
        }
    }
}

void lp_qwen_vision_rope(float *x, int n_head, int head_dim, int py, int px) {
    if (head_dim <= 0 || head_dim % 4 || n_head <= 0) return;
    float c[512], s[512];
    float *cc = c, *ss = s, *own = NULL;
    if (head_dim / 2 > 512) {
        own = malloc((size_t)head_dim * sizeof(float));
        if (!own) return;
        cc = own;
        ss = own + head_dim / 2;
    }
    vision_rope_angles(head_dim, py, px, cc, ss);
    rope_rotate(x, n_head, head_dim, cc, ss);
    free(own);
}

/* ------------------------------------------------------------------------ */
/* forward                                                                   */

typedef struct qv_acts {
    int pw, ph, nx, ny, G, N, K;
    int n_win;
    int32_t *win_idx, *inv_idx, *win_start; /* (G), (G), (n_win + 1)        */
    int32_t *tok_py, *tok_px;               /* (N) patch of each token       */
    float *rc, *rs;                         /* (N, d/2) RoPE cos / sin       */
    float *cols;      // (N, K)          im2col in token order
    float *x;         // (N, E)          residual stream
    float *xn;        // (N, E)          normed input of a branch
    float *q, *k, *v; // (N, E)
    float *att;       // (N, E)          attention output before attn_out
    float *tmp;       // (N, max(E, ...)) branch output / second patch conv
    float *ff, *ff2;  // (N, F)          up, gate
    float *rnd;       // (N, max(K, E, F)) f16-rounded product inputs
    float *mm_hid;    // (G, 4E)         merger hidden
    float *merged;    // (G, out)        merger output, window order
    void *attn_scratch;
    size_t attn_scratch_bytes;
} qv_acts;

static void acts_free(qv_acts *a) {
    free(a->win_idx);
    free(a->inv_idx);
    free(a->win_start);
    free(a->tok_py);
    free(a->tok_px);
    free(a->rc);
    free(a->rs);
    free(a->cols);
    free(a->x);
    free(a->xn);
    free(a->q);
    free(a->k);
    free(a->v);
    free(a->att);
    free(a->tmp);
    free(a->ff);
    free(a->ff2);
    free(a->rnd);
    free(a->mm_hid);
    free(a->merged);
    free(a->attn_scratch);
}

static bool acts_alloc(const lp_qwen_vit *v, qv_acts *a, const lp_pool *pool) {
    const size_t N = (size_t)a->N, G = (size_t)a->G, E = (size_t)v->n_embd, F = (size_t)v->n_ff, K = (size_t)a->K;
    const size_t f = sizeof(float);
    size_t widest = F > E ? F : E;
    widest = widest > K ? widest : K;
    const int win = v->n_wa_pattern > 0 ? v->window : (a->nx > a->ny ? a->nx : a->ny);
    const size_t max_win = (size_t)((a->nx + win - 1) / win) * (size_t)((a->ny + win - 1) / win);
    a->win_idx = malloc(G * sizeof(int32_t));
    a->inv_idx = malloc(G * sizeof(int32_t));
    a->win_start = malloc((max_win + 1) * sizeof(int32_t));
    a->tok_py = malloc(N * sizeof(int32_t));
    a->tok_px = malloc(N * sizeof(int32_t));
    a->rc = malloc(N * (size_t)(v->head_dim / 2) * f);
    a->rs = malloc(N * (size_t)(v->head_dim / 2) * f);
    a->cols = malloc(N * K * f);
    a->x = malloc(N * E * f);
    a->xn = malloc(N * E * f);
    a->q = malloc(N * E * f);
    a->k = malloc(N * E * f);
    a->v = malloc(N * E * f);
    a->att = malloc(N * E * f);
    a->tmp = malloc(N * E * f);
    a->ff = malloc(N * F * f);
    a->ff2 = malloc(N * F * f);
    a->rnd = malloc(N * widest * f);
    a->mm_hid = malloc(G * (size_t)v->proj.hidden_dim * f);
    a->merged = malloc(G * (size_t)v->proj.out_dim * f);
    if (!(a->win_idx && a->inv_idx && a->win_start && a->tok_py && a->tok_px && a->rc && a->rs && a->cols && a->x &&
          a->xn && a->q && a->k && a->v && a->att && a->tmp && a->ff && a->ff2 && a->rnd && a->mm_hid && a->merged)) {
        return false;
    }
    a->n_win = lp_qwen_window_partition(a->nx, a->ny, win, a->win_idx, a->inv_idx, a->win_start);
    if (a->n_win < 1) return false;
    /* scratch for the widest attention call: the whole image and every window length */
    size_t need = lp_attention_scratch_size(a->N, a->N, v->n_head, v->head_dim, pool);
    for (int w = 0; w < a->n_win; w++) {
        const int L = 4 * (a->win_start[w + 1] - a->win_start[w]);
        size_t s = lp_attention_scratch_size(L, L, v->n_head, v->head_dim, pool);
        if (s > need) need = s;
    }
    a->attn_scratch_bytes = need;
    a->attn_scratch = malloc(need);
    return a->attn_scratch != NULL;
}

static lp_act ffn_act(const lp_qwen_vit *v) { return lp_vit_ffn_act(v->vc.ffn, v->quirks); }
static lp_act merger_act(const lp_qwen_vit *v) { return lp_vit_gelu_act(v->quirks); } /* build_ffn(FFN_GELU): ggml_gelu */
static lp_dense_round dense_round(const lp_qwen_vit *v) { return lp_vit_dense_round(v->quirks); }

/* out (n, E) = norm(x) * w (+ b): RMSNorm for Qwen2.5-VL, LayerNorm for Qwen2-VL (build_norm) */
static void norm_rows(const lp_qwen_vit *v, float *out, const float *x, const float *w, const float *b, int n) {
    const int E = v->n_embd;
    for (int t = 0; t < n; t++) {
        float *o = out + (int64_t)t * E;
        const float *xi = x + (int64_t)t * E;
        if (v->qwen2) {
            lp_layernorm(o, xi, w, b, E, v->vc.eps);
        } else {
            lp_rmsnorm(o, xi, w, E, v->vc.eps);
            if (b) lp_add(o, b, E);
        }
    }
}

/* Token order, im2col and RoPE tables. Token t = 4·gp + 2·dy + dx holds the
 * patch (2·gy + dy, 2·gx + dx) of raster group g = inv_idx[gp] = gy·nx + gx. */
static void build_tokens(const lp_qwen_vit *v, qv_acts *a, const float *pixels, int W, int H) {
    const int P = v->patch, half = v->head_dim / 2;
    const size_t plane = (size_t)W * (size_t)H;
    for (int gp = 0; gp < a->G; gp++) {
        const int g = a->inv_idx[gp], gy = g / a->nx, gx = g % a->nx;
        for (int j = 0; j < 4; j++) {
            const int t = 4 * gp + j, py = 2 * gy + j / 2, px = 2 * gx + j % 2;
            a->tok_py[t] = py;
            a->tok_px[t] = px;
            float *row = a->cols + (int64_t)t * a->K; // (K): column (c·P + ky)·P + kx
            for (int c = 0; c < 3; c++) {
                for (int ky = 0; ky < P; ky++) {
                    const float *src = pixels + c * plane + ((size_t)py * P + ky) * (size_t)W + (size_t)px * P;
                    memcpy(row + ((int64_t)c * P + ky) * P, src, (size_t)P * sizeof(float));
                }
            }
            vision_rope_angles(v->head_dim, py, px, a->rc + (int64_t)t * half, a->rs + (int64_t)t * half);
        }
    }
}

static loupe_status attention(const lp_qwen_vit *v, qv_acts *a, bool full, lp_pool *pool, lp_error *err) {
    const int E = v->n_embd;
    const float scale = 1.0f / sqrtf((float)v->head_dim);
    const int nw = full ? 1 : a->n_win;
    for (int w = 0; w < nw; w++) {
        const int t0 = full ? 0 : 4 * a->win_start[w];
        const int L = full ? a->N : 4 * (a->win_start[w + 1] - a->win_start[w]);
        const int64_t o = (int64_t)t0 * E;
        if (!lp_attention_ex(a->att + o, a->q + o, a->k + o, a->v + o, L, L, v->n_head, v->n_head, v->head_dim, 0, false,
                             scale, a->attn_scratch, a->attn_scratch_bytes, pool)) {
            return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: attention failed", v->path);
        }
    }
    return LOUPE_OK;
}

static loupe_status block_forward(const lp_qwen_vit *v, const qv_layer *L, int il, qv_acts *a, lp_pool *pool,
                                  lp_error *err) {
    const int N = a->N, E = v->n_embd, F = v->n_ff, half = v->head_dim / 2;
    const lp_dense_round rnd = dense_round(v);
    loupe_status st;

    // attention branch: x += o(attn(rope(q), rope(k), v)) over n1(x)
    norm_rows(v, a->xn, a->x, L->ln1_w, L->ln1_b, N);
    if ((st = lp_dense_forward(&L->q, v->ws, a->xn, a->q, N, rnd, a->rnd, pool, err))) return st;
    if ((st = lp_dense_forward(&L->k, v->ws, a->xn, a->k, N, rnd, a->rnd, pool, err))) return st;
    if ((st = lp_dense_forward(&L->v, v->ws, a->xn, a->v, N, rnd, a->rnd, pool, err))) return st;
    for (int t = 0; t < N; t++) {
        const float *c = a->rc + (int64_t)t * half, *s = a->rs + (int64_t)t * half;
        rope_rotate(a->q + (int64_t)t * E, v->n_head, v->head_dim, c, s);
        rope_rotate(a->k + (int64_t)t * E, v->n_head, v->head_dim, c, s);
    }
    if ((st = attention(v, a, lp_qwen_vit_layer_full(v, il), pool, err))) return st;
    if ((st = lp_dense_forward(&L->o, v->ws, a->att, a->tmp, N, rnd, a->rnd, pool, err))) return st;
    lp_add(a->x, a->tmp, (int64_t)N * E);

    // MLP branch: x += down(act(gate(h)) * up(h)), h = n2(x)
    norm_rows(v, a->xn, a->x, L->ln2_w, L->ln2_b, N);
    if ((st = lp_dense_forward(&L->up, v->ws, a->xn, a->ff, N, rnd, a->rnd, pool, err))) return st;
    if (L->has_gate) {
        if ((st = lp_dense_forward(&L->gate, v->ws, a->xn, a->ff2, N, rnd, a->rnd, pool, err))) return st;
        lp_act_apply(ffn_act(v), a->ff2, (int64_t)N * F);
        lp_mul(a->ff, a->ff2, (int64_t)N * F);
    } else {
        lp_act_apply(ffn_act(v), a->ff, (int64_t)N * F);
    }
    if ((st = lp_dense_forward(&L->down, v->ws, a->ff, a->tmp, N, rnd, a->rnd, pool, err))) return st;
    lp_add(a->x, a->tmp, (int64_t)N * E);
    return LOUPE_OK;
}

/* One patch convolution over the token-ordered im2col: out (N, E). As
 * ggml_conv_2d on the CPU under MATMUL_F16: im2col in f16 (BF16 kernels:
 * f32) and the kernel converted to the im2col's type; a->rnd holds the
 * rounded columns when `rounded` says they are there already. */
static loupe_status patch_forward(const lp_qwen_vit *v, qv_acts *a, int which, float *out, bool *rounded, lp_pool *pool,
                                  lp_error *err) {
    const lp_dense *d = which ? &v->patch1 : &v->patch0;
    const bool f16 = (v->quirks & LP_CLIP_QUIRK_MATMUL_F16) && d->w.type != LP_TYPE_BF16;
    if (!f16) return lp_dense_forward(d, v->ws, a->cols, out, a->N, LP_DENSE_ROUND_NONE, NULL, pool, err);
    const int64_t n = (int64_t)a->N * a->K;
    if (!*rounded) {
        for (int64_t i = 0; i < n; i++) a->rnd[i] = lp_f16_to_f32(lp_f32_to_f16(a->cols[i]));
        *rounded = true;
    }
    if (v->patch_r16[which]) { /* f32 kernel, rounded at load */
        lp_matmul(a->rnd, v->patch_r16[which], out, a->N, (int)d->out, (int)d->in, false);
        return LOUPE_OK;
    }
    return lp_dense_forward(d, v->ws, a->rnd, out, a->N, LP_DENSE_ROUND_NONE, NULL, pool, err); /* f16: exact already */
}

static loupe_status encode(const lp_qwen_vit *v, qv_acts *a, const float *pixels, int W, int H, float *out,
                           lp_pool *pool, lp_error *err) {
    const int N = a->N, E = v->n_embd, G = a->G;
    const lp_dense_round rnd = dense_round(v);
    loupe_status st;
    char name[32];

    build_tokens(v, a, pixels, W, H);
    // the two temporal kernels on the same frame, added (ggml_add(conv0, conv1))
    bool rounded = false;
    if ((st = patch_forward(v, a, 0, a->x, &rounded, pool, err))) return st;
    if ((st = patch_forward(v, a, 1, a->tmp, &rounded, pool, err))) return st;
    lp_add(a->x, a->tmp, (int64_t)N * E);
    dump(v, "v.patch_embd", a->x, (int64_t)N * E);
    if (v->pre_ln_w || v->pre_ln_b) {
        norm_rows(v, a->xn, a->x, v->pre_ln_w, v->pre_ln_b, N);
        memcpy(a->x, a->xn, (size_t)N * (size_t)E * sizeof(float));
        dump(v, "v.pre_ln", a->x, (int64_t)N * E);
    }
    for (int il = 0; il < v->n_layer; il++) {
        if ((st = block_forward(v, &v->layers[il], il, a, pool, err))) return st;
        snprintf(name, sizeof name, "v.blk.%d", il);
        dump(v, name, a->x, (int64_t)N * E);
    }
    if (v->post_ln_w || v->post_ln_b) {
        norm_rows(v, a->xn, a->x, v->post_ln_w, v->post_ln_b, N);
        memcpy(a->x, a->xn, (size_t)N * (size_t)E * sizeof(float));
        dump(v, "v.post_ln", a->x, (int64_t)N * E);
    }
    // merger: x (N, E) read as (G, 4E) — the 4 tokens of a group are consecutive
    const lp_projector *p = &v->proj;
    st = lp_projector_mlp(p, v->ws, a->x, a->merged, G, merger_act(v), rnd, a->mm_hid, pool, err);
    if (st != LOUPE_OK) return st;
    dump(v, "mm.hidden", a->mm_hid, (int64_t)G * p->hidden_dim);
    // back to raster order: out[g] = merged[window_idx[g]]
    const size_t row = (size_t)p->out_dim * sizeof(float);
    for (int g = 0; g < G; g++) memcpy(out + (int64_t)g * p->out_dim, a->merged + (int64_t)a->win_idx[g] * p->out_dim, row);
    dump(v, "mm.out", out, (int64_t)G * p->out_dim);
    return LOUPE_OK;
}

loupe_status lp_qwen_vit_encode(const lp_qwen_vit *v, const float *pixels, int W, int H, float *out, lp_pool *pool,
                                lp_error *err) {
    if (!v || !pixels || !out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen vit: NULL argument");
    const int f = lp_qwen_vit_factor(v);
    if (W <= 0 || H <= 0 || W % f || H % f) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: input %dx%d: sides must be positive multiples of %d", v->path, W,
                       H, f);
    }
    if ((int64_t)(W / v->patch) * (H / v->patch) > QV_MAX_PATCHES) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: a %dx%d input has more than %d patches", v->path, W, H, QV_MAX_PATCHES);
    }
    qv_acts a;
    memset(&a, 0, sizeof a);
    a.pw = W / v->patch;
    a.ph = H / v->patch;
    a.nx = a.pw / 2;
    a.ny = a.ph / 2;
    a.G = a.nx * a.ny;
    a.N = 4 * a.G;
    a.K = 3 * v->patch * v->patch;
    loupe_status st;
    if (!acts_alloc(v, &a, pool)) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: encode %dx%d: out of memory", v->path, W, H);
    } else {
        st = encode(v, &a, pixels, W, H, out, pool, err);
    }
    acts_free(&a);
    return st;
}
