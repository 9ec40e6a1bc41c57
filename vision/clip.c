/* vision/clip.c — CLIP ViT + LLaVA projector over an mmproj GGUF.
 * Semantics and the llama.cpp quirks are documented in clip.h. */
#include "clip.h"

#include "kernels.h"
#include "tiles.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIP_MAX_FEATURE_LAYERS 64
#define CLIP_MAX_IMAGE 8192
#define CLIP_MAX_TOKENS (1 << 16)
#define CLIP_MAX_EMBD (1 << 16)
#define CLIP_MAX_FF (1 << 18)
#define CLIP_MAX_LAYERS 1024

typedef struct clip_layer {
    lp_dense q, k, v, o; /* (n_embd, n_embd) each                         */
    lp_dense up, down;   /* up (n_ff, n_embd), down (n_embd, n_ff)        */
    float *ln1_w, *ln1_b; /* (n_embd) or NULL                            */
    float *ln2_w, *ln2_b; /* (n_embd) or NULL                            */
    /* InternViT */
    float *ls1, *ls2;     /* (n_embd) layer scales of the two branches, or NULL */
    float *qn_w, *kn_w;   /* (qk_norm_dim) q/k norm weights, or NULL     */
} clip_layer;

struct lp_clip {
    const lp_gguf *g;
    lp_weight_store *ws;
    const char *path;

    /* hyperparameters */
    int image_size, patch_size, n_side, n_patches, n_pos;
    int n_embd, n_head, head_dim, n_ff, n_layer;
    lp_vit_common vc;       /* eps, mean/std, FFN activation */
    int feature_layers[CLIP_MAX_FEATURE_LAYERS]; /* sorted, unique        */
    int n_feature_layers;                        /* 0: key absent        */
    bool has_pinpoints;
    lp_projector_type ptype;
    /* InternVL: pixel shuffle by n_merge (clip.vision.projector.scale_factor),
     * RMSNorm instead of LayerNorm for the 6B ViT, q/k norm width */
    int n_merge;
    bool rms_norm;
    int qk_norm_dim;
    int min_tiles, max_tiles;

    /* weights (matrices stay in the store; vectors are f32 copies) */
    lp_dense patch;      /* w ne = [P, P, 3, n_embd] used as (n_embd, 3·P·P) */
    float *patch_r16;    /* (n_embd, 3·P·P) an F32 kernel rounded to f16, or NULL (MATMUL_F16) */
    float *class_embd;   /* (n_embd) or NULL                          */
    float *pos_embd;     /* (n_pos, n_embd)                           */
    float *pre_ln_w, *pre_ln_b;   /* (n_embd) or NULL                 */
    float *post_ln_w, *post_ln_b; /* (n_embd) or NULL                 */
    clip_layer *layers;  /* (n_layer)                                 */
    lp_projector proj;

    unsigned quirks;
    lp_clip_dump_fn dump;
    void *dump_user;
};

/* Activations of one encode call. */
typedef struct clip_acts {
    float *cols;     // (N, 3*P*P)        im2col of the pixels
    float *pe;       // (N, n_embd)       patch embeddings
    float *x;        // (n_pos, n_embd)   residual stream
    float *xn;       // (n_pos, n_embd)   layernorm output
    float *q;        // (n_pos, n_embd)   queries  = heads × head_dim
    float *k;        // (n_pos, n_embd)   keys
    float *v;        // (n_pos, n_embd)   values
    float *att;      // (n_pos, n_embd)   attention output, before attn_out
    float *tmp;      // (n_pos, n_embd)   block branch output, added to x
    float *ff;       // (n_pos, n_ff)     FFN hidden
    float *rnd;      // (n_pos, max(n_ff, n_embd, 3*P*P)) f16-rounded inputs
    float *stack;    // (n_pos, feature_dim) stacked hidden states, or NULL
    float *proj_in;  // (N, feature_dim)  projector input
    float *mm_hid;   // (N, hidden_dim)   projector hidden (mlp)
    void *attn_scratch;       // lp_attention_ex scratch, sized for T tokens and this pool
    size_t attn_scratch_bytes;
} clip_acts;

/* ------------------------------------------------------------------------ */
/* small helpers                                                             */

static const char *cpath(const lp_gguf *g) { return g && g->path ? g->path : "(gguf)"; }

static bool has_tensor(const lp_gguf *g, const char *name) { return lp_gguf_find_tensor(g, name) >= 0; }

static void dump(const lp_clip *c, const char *name, const float *data, int64_t n) {
    if (c->dump) c->dump(c->dump_user, name, data, n);
}

static int feature_dim_of(const lp_clip *c) {
    return c->n_embd * (c->n_feature_layers > 0 ? c->n_feature_layers : 1);
}

static bool is_internvl(const lp_clip *c) { return c->ptype == LP_PROJECTOR_INTERNVL; }

/* Projector input: the features, pixel-shuffled for InternVL (n_merge² patches per row). */
static int proj_in_dim_of(const lp_clip *c) { return feature_dim_of(c) * (is_internvl(c) ? c->n_merge * c->n_merge : 1); }
static int n_out_of(const lp_clip *c) {
    if (c->ptype == LP_PROJECTOR_LDPV2 || c->ptype == LP_PROJECTOR_LDP) return c->n_patches / 4;
    return c->n_patches / (is_internvl(c) ? c->n_merge * c->n_merge : 1);
}

static int n_run_of(const lp_clip *c, unsigned quirks) {
    if (c->n_feature_layers > 0) return c->feature_layers[c->n_feature_layers - 1];
    /* DROP_LAYER is a defect of llama.cpp's llava graph only; its InternVL graph runs every block */
    return (quirks & LP_CLIP_QUIRK_DROP_LAYER) && !is_internvl(c) ? c->n_layer - 1 : c->n_layer;
}

static bool is_feature_layer(const lp_clip *c, int il) {
    for (int i = 0; i < c->n_feature_layers; i++)
        if (c->feature_layers[i] == il) return true;
    return false;
}

/* A required positive u32 key with an upper bound. */
static loupe_status get_dim(const lp_gguf *g, const char *key, int lo, int hi, int *out, lp_error *err) {
    uint32_t v = 0;
    loupe_status st = lp_gguf_get_u32(g, key, &v, err);
    if (st != LOUPE_OK) return st;
    if ((int64_t)v < lo || (int64_t)v > hi) {
        return lp_fail(err, (int64_t)v > hi ? LOUPE_ERR_LIMIT : LOUPE_ERR_FORMAT,
                       "%s: key %s = %u out of range [%d, %d]", cpath(g), key, v, lo, hi);
    }
    *out = (int)v;
    return LOUPE_OK;
}

/* A 3-vector from an f32 array key (llama.cpp uses the first 3 entries). */
static loupe_status get_vec3(const lp_gguf *g, const char *key, float out[3], lp_error *err) {
    const lp_gguf_value *v = NULL;
    loupe_status st = lp_gguf_get_arr(g, key, LP_GGUF_FLOAT32, &v, err);
    if (st != LOUPE_OK) return st;
    if (v->v.arr.n < 3 || !v->v.arr.data) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s has %llu elements, expected 3", cpath(g), key,
                       (unsigned long long)v->v.arr.n);
    }
    memcpy(out, v->v.arr.data, 3 * sizeof(float));
    for (int i = 0; i < 3; i++) {
        if (!isfinite(out[i])) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: non-finite value", cpath(g), key);
    }
    return LOUPE_OK;
}


static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* An optional f32 vector tensor of n elements. */
static loupe_status opt_vec(const lp_clip *c, const char *name, int64_t n, float **out, lp_error *err) {
    *out = NULL;
    if (!has_tensor(c->g, name)) return LOUPE_OK;
    return lp_load_f32(c->g, c->ws, name, n, out, err);
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */

loupe_status lp_vit_common_load(const lp_gguf *g, lp_vit_common *o, lp_error *err) {
    loupe_status st;
    if ((st = lp_gguf_get_f32(g, "clip.vision.attention.layer_norm_epsilon", &o->eps, err))) return st;
    if (!isfinite(o->eps) || o->eps < 0.0f) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.vision.attention.layer_norm_epsilon: bad value %g", cpath(g),
                       (double)o->eps);
    }
    if ((st = get_vec3(g, "clip.vision.image_mean", o->mean, err))) return st;
    if ((st = get_vec3(g, "clip.vision.image_std", o->std, err))) return st;
    for (int i = 0; i < 3; i++) {
        if (o->std[i] == 0.0f) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.vision.image_std: zero entry", cpath(g));
    }
    bool use_gelu = false, use_silu = false;
    if ((st = lp_gguf_get_bool_opt(g, "clip.use_gelu", &use_gelu, err))) return st;
    if ((st = lp_gguf_get_bool_opt(g, "clip.use_silu", &use_silu, err))) return st;
    if (use_gelu && use_silu) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: keys clip.use_gelu and clip.use_silu are both true", cpath(g));
    }
    o->ffn = use_gelu ? LP_VIT_FFN_GELU : (use_silu ? LP_VIT_FFN_SILU : LP_VIT_FFN_QUICK_GELU);
    return LOUPE_OK;
}

lp_act lp_vit_gelu_act(unsigned q) {
    if (q & LP_CLIP_QUIRK_GELU_TANH) return (q & LP_CLIP_QUIRK_ACT_F16) ? LP_ACT_GELU_TANH_F16 : LP_ACT_GELU_TANH;
    return LP_ACT_GELU_ERF;
}

lp_act lp_vit_ffn_act(lp_vit_ffn ffn, unsigned q) {
    switch (ffn) {
    case LP_VIT_FFN_GELU: return lp_vit_gelu_act(q);
    case LP_VIT_FFN_SILU: return LP_ACT_SILU;
    case LP_VIT_FFN_QUICK_GELU: break;
    }
    return (q & LP_CLIP_QUIRK_ACT_F16) ? LP_ACT_QUICK_GELU_F16 : LP_ACT_QUICK_GELU;
}

lp_dense_round lp_vit_dense_round(unsigned q) {
    return (q & LP_CLIP_QUIRK_MATMUL_F16) ? LP_DENSE_ROUND_LIKE_GGML : LP_DENSE_ROUND_NONE;
}

static loupe_status load_hparams(lp_clip *c, lp_error *err) {
    const lp_gguf *g = c->g;
    loupe_status st;

    bool has_vision = false;
    st = lp_gguf_get_bool_opt(g, "clip.has_vision_encoder", &has_vision, err);
    if (st != LOUPE_OK) return st;
    if (!has_vision) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.has_vision_encoder missing or false: not a vision mmproj",
                       cpath(g));
    }

    if ((st = get_dim(g, "clip.vision.image_size", 1, CLIP_MAX_IMAGE, &c->image_size, err))) return st;
    if ((st = get_dim(g, "clip.vision.patch_size", 1, CLIP_MAX_IMAGE, &c->patch_size, err))) return st;
    if (c->patch_size > c->image_size) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.vision.patch_size = %d exceeds clip.vision.image_size = %d",
                       cpath(g), c->patch_size, c->image_size);
    }
    c->n_side = c->image_size / c->patch_size; /* ggml conv_2d drops the remainder */
    if ((int64_t)c->n_side * c->n_side + 1 > CLIP_MAX_TOKENS) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: key clip.vision.image_size: %d×%d patches is too many", cpath(g),
                       c->n_side, c->n_side);
    }
    c->n_patches = c->n_side * c->n_side;
    if ((st = get_dim(g, "clip.vision.embedding_length", 1, CLIP_MAX_EMBD, &c->n_embd, err))) return st;
    if ((st = get_dim(g, "clip.vision.feed_forward_length", 1, CLIP_MAX_FF, &c->n_ff, err))) return st;
    if ((st = get_dim(g, "clip.vision.block_count", 1, CLIP_MAX_LAYERS, &c->n_layer, err))) return st;
    if ((st = get_dim(g, "clip.vision.attention.head_count", 1, CLIP_MAX_EMBD, &c->n_head, err))) return st;
    uint32_t proj_dim = 0; /* required by llama.cpp, unused by the llava graph */
    if ((st = lp_gguf_get_u32(g, "clip.vision.projection_dim", &proj_dim, err))) return st;

    uint32_t head_dim = 0;
    if ((st = lp_gguf_get_u32_opt(g, "clip.vision.attention.head_dim", &head_dim, err))) return st;
    if (head_dim == 0) {
        if (c->n_embd % c->n_head != 0) {
            return lp_fail(err, LOUPE_ERR_FORMAT,
                           "%s: key clip.vision.attention.head_count = %d does not divide clip.vision.embedding_length = %d",
                           cpath(g), c->n_head, c->n_embd);
        }
        c->head_dim = c->n_embd / c->n_head;
    } else {
        if ((int64_t)head_dim * c->n_head != c->n_embd) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                           "%s: key clip.vision.attention.head_dim = %u: head_dim × head_count != embedding_length",
                           cpath(g), head_dim);
        }
        c->head_dim = (int)head_dim;
    }
    uint32_t n_head_kv = (uint32_t)c->n_head;
    if ((st = lp_gguf_get_u32_opt(g, "clip.vision.attention.head_count_kv", &n_head_kv, err))) return st;
    if ((int)n_head_kv != c->n_head) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key clip.vision.attention.head_count_kv = %u: grouped-query ViT not supported",
                       cpath(g), n_head_kv);
    }

    if ((st = lp_vit_common_load(g, &c->vc, err))) return st;

    const char *key_fl = "clip.vision.feature_layer";
    const lp_gguf_value *fl = lp_gguf_get(g, key_fl);
    if (fl) {
        if (fl->type != LP_GGUF_ARRAY) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: expected an array of integers", cpath(g), key_fl);
        }
        if (fl->v.arr.n > CLIP_MAX_FEATURE_LAYERS) {
            return lp_fail(err, LOUPE_ERR_LIMIT, "%s: key %s: %llu entries (max %d)", cpath(g), key_fl,
                           (unsigned long long)fl->v.arr.n, CLIP_MAX_FEATURE_LAYERS);
        }
        int n = 0;
        for (uint64_t i = 0; i < fl->v.arr.n; i++) {
            int64_t val;
            if (!fl->v.arr.data || !lp_gguf_arr_int(fl, i, &val)) {
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: expected an array of integers", cpath(g), key_fl);
            }
            if (val < 0 || val > c->n_layer) {
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: layer %lld outside [0, %d] (block_count)", cpath(g),
                               key_fl, (long long)val, c->n_layer);
            }
            bool dup = false;
            for (int j = 0; j < n; j++) dup = dup || c->feature_layers[j] == (int)val;
            if (!dup) c->feature_layers[n++] = (int)val;
        }
        qsort(c->feature_layers, (size_t)n, sizeof(int), cmp_int);
        c->n_feature_layers = n; /* an empty array behaves like no key */
    }
    c->has_pinpoints = lp_gguf_find_key(g, "clip.vision.image_grid_pinpoints") >= 0;
    return LOUPE_OK;
}

/* InternVL: pixel shuffle factor, tile limits, the 6B ViT's RMSNorm. */
static loupe_status load_internvl_keys(lp_clip *c, lp_error *err) {
    const lp_gguf *g = c->g;
    loupe_status st;
    if ((st = get_dim(g, "clip.vision.projector.scale_factor", 1, 16, &c->n_merge, err))) return st;
    if (c->n_side % c->n_merge) {
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: key clip.vision.projector.scale_factor = %d does not divide the %d patches per side",
                       cpath(g), c->n_merge, c->n_side);
    }
    /* llama.cpp's defaults when the keys are absent (older InternVL files) */
    uint32_t lo = 1, hi = 12;
    if ((st = lp_gguf_get_u32_opt(g, "clip.vision.preproc_min_tiles", &lo, err))) return st;
    if ((st = lp_gguf_get_u32_opt(g, "clip.vision.preproc_max_tiles", &hi, err))) return st;
    if (lo < 1 || hi < lo || hi > LP_TILES_MAX) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: keys clip.vision.preproc_min/max_tiles = %u/%u out of range [1, %d]",
                       cpath(g), lo, hi, LP_TILES_MAX);
    }
    c->min_tiles = (int)lo;
    c->max_tiles = (int)hi;
    /* llama.cpp tells InternViT-6B (RMSNorm) from InternViT-300M (LayerNorm)
     * by its shape; the file has no key for it */
    c->rms_norm = c->n_embd == 3200 && c->n_layer == 45;
    return LOUPE_OK;
}

static loupe_status load_layer(lp_clip *c, int il, lp_error *err) {
    clip_layer *L = &c->layers[il];
    const lp_gguf *g = c->g;
    const int64_t E = c->n_embd, F = c->n_ff;
    char name[128], name2[128];
    loupe_status st;

    /* tensors the llava graph would use differently: refuse, don't ignore */
    static const char *const foreign[] = {"attn_qkv", "ffn_gate", "attn_q_norm", "attn_k_norm", "ls1", "ls2"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        if (is_internvl(c) && i >= 2) break; /* InternViT has q/k norms and layer scales */
        snprintf(name, sizeof name, "v.blk.%d.%s.weight", il, foreign[i]);
        if (has_tensor(g, name)) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: not supported by the CLIP ViT", cpath(g), name);
        }
    }

    const struct { lp_dense *d; const char *n; } att[] = {
        {&L->q, "attn_q"}, {&L->k, "attn_k"}, {&L->v, "attn_v"}, {&L->o, "attn_out"},
    };
    for (size_t i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "v.blk.%d.%s", il, att[i].n);
        if ((st = lp_dense_load(att[i].d, g, c->ws, name, E, E, false, err))) return st;
    }

    /* The legacy converter names fc1 "ffn_down" and fc2 "ffn_up"; llama.cpp
     * swaps them back when ffn_down's input width is n_embd. Same rule here. */
    const char *up = "ffn_up", *down = "ffn_down";
    snprintf(name, sizeof name, "v.blk.%d.ffn_down.weight", il);
    lp_tensor td;
    if ((st = lp_ws_lookup(c->ws, name, &td, err))) return st;
    if (td.ne[0] == E) {
        up = "ffn_down";
        down = "ffn_up";
    }
    snprintf(name, sizeof name, "v.blk.%d.%s", il, up);
    if ((st = lp_dense_load(&L->up, g, c->ws, name, E, F, false, err))) return st;
    snprintf(name, sizeof name, "v.blk.%d.%s", il, down);
    if ((st = lp_dense_load(&L->down, g, c->ws, name, F, E, false, err))) return st;

    for (int n = 1; n <= 2; n++) {
        snprintf(name, sizeof name, "v.blk.%d.ln%d.weight", il, n);
        snprintf(name2, sizeof name2, "v.blk.%d.ln%d.bias", il, n);
        if ((st = opt_vec(c, name, E, n == 1 ? &L->ln1_w : &L->ln2_w, err))) return st;
        if ((st = opt_vec(c, name2, E, n == 1 ? &L->ln1_b : &L->ln2_b, err))) return st;
    }
    if (!is_internvl(c)) return LOUPE_OK;
    for (int n = 1; n <= 2; n++) {
        snprintf(name, sizeof name, "v.blk.%d.ls%d.weight", il, n);
        if ((st = opt_vec(c, name, E, n == 1 ? &L->ls1 : &L->ls2, err))) return st;
    }
    /* q/k norm over the whole projection (InternViT-6B) or per head; every
     * layer must agree with layer 0 */
    snprintf(name, sizeof name, "v.blk.%d.attn_q_norm.weight", il);
    if (has_tensor(g, name)) {
        lp_tensor tq;
        if ((st = lp_ws_lookup(c->ws, name, &tq, err))) return st;
        if (il == 0) c->qk_norm_dim = (int)tq.ne[0];
        if (c->qk_norm_dim != E && c->qk_norm_dim != c->head_dim)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: %lld elements, expected %lld or %d (head_dim)",
                           cpath(g), name, (long long)tq.ne[0], (long long)E, c->head_dim);
        /* weights only: InternViT-6B's q/k norms (InternRMSNorm) have no bias,
         * and llama.cpp's build_vit passes none even if a file had one */
        const int64_t D = c->qk_norm_dim;
        snprintf(name, sizeof name, "v.blk.%d.attn_q_norm.weight", il);
        if ((st = lp_load_f32(g, c->ws, name, D, &L->qn_w, err))) return st;
        snprintf(name, sizeof name, "v.blk.%d.attn_k_norm.weight", il);
        if ((st = lp_load_f32(g, c->ws, name, D, &L->kn_w, err))) return st;
    } else if (c->qk_norm_dim) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s missing (layer 0 has q/k norms)", cpath(g), name);
    }
    return LOUPE_OK;
}

static void free_layer(clip_layer *L) {
    lp_dense_free(&L->q);
    lp_dense_free(&L->k);
    lp_dense_free(&L->v);
    lp_dense_free(&L->o);
    lp_dense_free(&L->up);
    lp_dense_free(&L->down);
    free(L->ln1_w);
    free(L->ln1_b);
    free(L->ln2_w);
    free(L->ln2_b);
    free(L->ls1);
    free(L->ls2);
    free(L->qn_w);
    free(L->kn_w);
}

static loupe_status load_embeddings(lp_clip *c, lp_error *err) {
    const lp_gguf *g = c->g;
    const int64_t E = c->n_embd, P = c->patch_size;
    loupe_status st;

    /* patch embedding: a conv kernel [P, P, 3, n_embd], used as a matrix */
    const char *pname = "v.patch_embd.weight";
    lp_dense *pd = &c->patch;
    memset(pd, 0, sizeof *pd);
    if ((st = lp_ws_lookup(c->ws, pname, &pd->w, err))) return st;
    const lp_tensor *w = &pd->w;
    if (w->ne[0] != P || w->ne[1] != P || w->ne[2] != 3 || w->ne[3] != E) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, 3, %lld]",
                       cpath(g), pname, (long long)w->ne[0], (long long)w->ne[1], (long long)w->ne[2],
                       (long long)w->ne[3], (long long)P, (long long)P, (long long)E);
    }
    const int64_t K = 3 * P * P;
    size_t rs = lp_row_size(w->type, K);
    if (!lp_type_can_dequantize(w->type) || rs == 0 || rs * (size_t)E != w->row_bytes * (size_t)w->n_rows) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s not usable for the patch embedding",
                       cpath(g), pname, lp_type_name(w->type) ? lp_type_name(w->type) : "?");
    }
    pd->in = K;
    pd->out = E;
    if ((st = opt_vec(c, "v.patch_embd.bias", E, &pd->b, err))) return st;
    if (w->type == LP_TYPE_F32) {
        /* ggml_conv_2d multiplies in f16 whatever the kernel (its im2col is
         * f16, so an f32 kernel is converted to f16 for the dot products):
         * keep the rounded kernel for MATMUL_F16 */
        const float *k = NULL;
        if ((st = lp_ws_get(c->ws, w, (const void **)&k, err))) return st;
        c->patch_r16 = malloc((size_t)E * (size_t)K * sizeof(float));
        if (c->patch_r16)
            for (int64_t i = 0; i < E * K; i++) c->patch_r16[i] = lp_f16_to_f32(lp_f32_to_f16(k[i]));
        lp_ws_release(c->ws, w);
        if (!c->patch_r16) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: %s: out of memory", cpath(g), pname);
    }
    if (has_tensor(g, "v.patch_embd.weight.1")) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor v.patch_embd.weight.1: temporal patch embedding not supported",
                       cpath(g));
    }

    if ((st = opt_vec(c, "v.class_embd", E, &c->class_embd, err))) return st;
    c->n_pos = c->n_patches + (c->class_embd ? 1 : 0);

    /* position embedding: [n_embd, >= n_pos]; llama.cpp reads rows 0..n_pos-1 */
    const char *posname = "v.position_embd.weight";
    lp_tensor tp;
    if ((st = lp_ws_lookup(c->ws, posname, &tp, err))) return st;
    if (tp.ne[0] != E || tp.n_rows < c->n_pos || tp.ne[2] != 1 || tp.ne[3] != 1) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: shape [%lld, %lld], expected [%lld, %d]", cpath(g), posname,
                       (long long)tp.ne[0], (long long)tp.ne[1], (long long)E, c->n_pos);
    }
    if (!lp_type_can_dequantize(tp.type)) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s cannot be computed on", cpath(g), posname,
                       lp_type_name(tp.type) ? lp_type_name(tp.type) : "?");
    }
    c->pos_embd = malloc((size_t)c->n_pos * (size_t)E * sizeof(float)); // (n_pos, n_embd)
    if (!c->pos_embd) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: tensor %s: out of memory", cpath(g), posname);
    const void *pdata = NULL;
    if ((st = lp_ws_get(c->ws, &tp, &pdata, err))) return st;
    bool ok = true;
    for (int r = 0; r < c->n_pos && ok; r++) {
        ok = lp_dequantize_row(tp.type, (const uint8_t *)pdata + (size_t)r * tp.row_bytes, c->pos_embd + (int64_t)r * E, E);
    }
    lp_ws_release(c->ws, &tp);
    if (!ok) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: cannot convert rows", cpath(g), posname);

    if ((st = opt_vec(c, "v.pre_ln.weight", E, &c->pre_ln_w, err))) return st;
    if ((st = opt_vec(c, "v.pre_ln.bias", E, &c->pre_ln_b, err))) return st;
    if ((st = opt_vec(c, "v.post_ln.weight", E, &c->post_ln_w, err))) return st;
    if ((st = opt_vec(c, "v.post_ln.bias", E, &c->post_ln_b, err))) return st;
    return LOUPE_OK;
}

lp_clip *lp_clip_load(const lp_gguf *mmproj, lp_weight_store *ws, lp_error *err) {
    if (!mmproj || !ws) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "clip: NULL gguf or weight store");
        return NULL;
    }
    lp_clip *c = calloc(1, sizeof *c);
    if (!c) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", cpath(mmproj));
        return NULL;
    }
    c->g = mmproj;
    c->ws = ws;
    c->path = cpath(mmproj);
    c->quirks = LP_CLIP_QUIRKS_LLAMACPP;
    loupe_status st = load_hparams(c, err);
    if (st != LOUPE_OK) goto fail;

    /* projector type first: an unknown type is the most useful message */
    const char *key = "clip.projector_type";
    const char *ptype = NULL;
    if ((st = lp_gguf_get_str_opt(mmproj, key, &ptype, err))) goto fail;
    if (!ptype || !ptype[0]) {
        key = "clip.vision.projector_type";
        if ((st = lp_gguf_get_str_opt(mmproj, key, &ptype, err))) goto fail;
    }
    if (!ptype || !ptype[0]) {
        st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: key clip.projector_type missing", c->path);
        goto fail;
    }
    lp_projector_type pt;
    if ((st = lp_projector_type_parse(ptype, c->path, key, &pt, err))) goto fail;
    c->ptype = pt;
    if (pt == LP_PROJECTOR_INTERNVL && (st = load_internvl_keys(c, err))) goto fail;

    if ((st = load_embeddings(c, err))) goto fail;
    c->layers = calloc((size_t)c->n_layer, sizeof *c->layers);
    if (!c->layers) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", c->path);
        goto fail;
    }
    for (int il = 0; il < c->n_layer; il++) {
        if ((st = load_layer(c, il, err))) goto fail;
    }
    if ((pt == LP_PROJECTOR_LDPV2 || pt == LP_PROJECTOR_LDP) && c->n_side % 2) {
        st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: clip.projector_type \"%s\" needs an even patch grid, not %d×%d",
                     c->path, ptype, c->n_side, c->n_side);
        goto fail;
    }
    if ((st = lp_projector_load(&c->proj, pt, mmproj, ws, proj_in_dim_of(c), err))) goto fail;
    c->proj.ln_eps = c->vc.eps;
    if (c->proj.hidden_dim > CLIP_MAX_FF || c->proj.out_dim > CLIP_MAX_FF) {
        st = lp_fail(err, LOUPE_ERR_LIMIT, "%s: tensor mm.0.weight: projector too wide", c->path);
        goto fail;
    }
    return c;
fail:
    (void)st;
    lp_clip_free(c);
    return NULL;
}

void lp_clip_free(lp_clip *c) {
    if (!c) return;
    if (c->layers) {
        for (int il = 0; il < c->n_layer; il++) free_layer(&c->layers[il]);
        free(c->layers);
    }
    lp_dense_free(&c->patch);
    free(c->patch_r16);
    free(c->class_embd);
    free(c->pos_embd);
    free(c->pre_ln_w);
    free(c->pre_ln_b);
    free(c->post_ln_w);
    free(c->post_ln_b);
    lp_projector_free(&c->proj);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* accessors                                                                 */

int lp_clip_image_size(const lp_clip *c) { return c->image_size; }
int lp_clip_patch_size(const lp_clip *c) { return c->patch_size; }
int lp_clip_n_side(const lp_clip *c) { return c->n_side; }
int lp_clip_n_patches(const lp_clip *c) { return c->n_patches; }
int lp_clip_n_embd(const lp_clip *c) { return c->n_embd; }
int lp_clip_n_layer(const lp_clip *c) { return c->n_layer; }
int lp_clip_n_layer_run(const lp_clip *c) { return n_run_of(c, c->quirks); }
int lp_clip_feature_dim(const lp_clip *c) { return feature_dim_of(c); }
int lp_clip_n_out_tokens(const lp_clip *c) { return n_out_of(c); }
int lp_clip_n_merge(const lp_clip *c) { return is_internvl(c) ? c->n_merge : 1; }
void lp_clip_tile_limits(const lp_clip *c, int *min_tiles, int *max_tiles) {
    *min_tiles = is_internvl(c) ? c->min_tiles : 1;
    *max_tiles = is_internvl(c) ? c->max_tiles : 1;
}
int lp_clip_out_dim(const lp_clip *c) { return (int)c->proj.out_dim; }
bool lp_clip_has_class(const lp_clip *c) { return c->class_embd != NULL; }
lp_projector_type lp_clip_projector_type(const lp_clip *c) { return c->ptype; }
const float *lp_clip_mean(const lp_clip *c) { return c->vc.mean; }
const float *lp_clip_std(const lp_clip *c) { return c->vc.std; }
unsigned lp_clip_quirks(const lp_clip *c) { return c->quirks; }

loupe_status lp_clip_set_quirks(lp_clip *c, unsigned quirks, lp_error *err) {
    if (quirks & ~LP_CLIP_QUIRKS_LLAMACPP) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "clip: unknown quirk bits 0x%x", quirks & ~LP_CLIP_QUIRKS_LLAMACPP);
    }
    if (n_run_of(c, quirks) < 0) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: no layer would run", c->path);
    }
    c->quirks = quirks;
    return LOUPE_OK;
}

void lp_clip_set_dump(lp_clip *c, lp_clip_dump_fn fn, void *user) {
    c->dump = fn;
    c->dump_user = user;
}

loupe_status lp_clip_preprocess(const lp_clip *c, const lp_image *img, lp_prep_mode mode, float *pixels,
                                lp_prep_geom *geom, lp_error *err) {
    if (!c) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "clip: NULL model");
    if (mode == LP_PREP_LLAMACPP && c->has_pinpoints) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                       "%s: key clip.vision.image_grid_pinpoints: llama.cpp tiles such images (llava-uhd), not implemented",
                       c->path);
    }
    return lp_preprocess_image(img, c->image_size, c->vc.mean, c->vc.std, mode, pixels, geom, err);
}

/* ------------------------------------------------------------------------ */
/* forward                                                                   */

static lp_act ffn_act(const lp_clip *c) { return lp_vit_ffn_act(c->vc.ffn, c->quirks); }
static lp_act proj_act(const lp_clip *c) { return lp_vit_gelu_act(c->quirks); }
static lp_dense_round dense_round(const lp_clip *c) { return lp_vit_dense_round(c->quirks); }

static void acts_free(clip_acts *a) {
    free(a->cols);
    free(a->pe);
    free(a->x);
    free(a->xn);
    free(a->q);
    free(a->k);
    free(a->v);
    free(a->att);
    free(a->tmp);
    free(a->ff);
    free(a->rnd);
    free(a->stack);
    free(a->proj_in);
    free(a->mm_hid);
    free(a->attn_scratch);
}

static bool acts_alloc(const lp_clip *c, clip_acts *a, const lp_pool *pool) {
    memset(a, 0, sizeof *a);
    const size_t N = (size_t)c->n_patches, T = (size_t)c->n_pos, E = (size_t)c->n_embd;
    const size_t K = 3 * (size_t)c->patch_size * (size_t)c->patch_size;
    const size_t F = (size_t)c->n_ff, D = (size_t)feature_dim_of(c);
    size_t widest = F > E ? F : E;
    widest = widest > K ? widest : K;
    const size_t f = sizeof(float);
    a->cols = malloc(N * K * f);
    a->pe = malloc(N * E * f);
    a->x = malloc(T * E * f);
    a->xn = malloc(T * E * f);
    a->q = malloc(T * E * f);
    a->k = malloc(T * E * f);
    a->v = malloc(T * E * f);
    a->att = malloc(T * E * f);
    a->tmp = malloc(T * E * f);
    a->ff = malloc(T * F * f);
    a->rnd = malloc(T * widest * f);
    a->stack = c->n_feature_layers > 0 ? malloc(T * D * f) : NULL;
    a->proj_in = malloc(N * D * f); /* = (N / n_merge², D · n_merge²) for InternVL */
    const bool mlp = c->proj.type == LP_PROJECTOR_MLP || c->proj.type == LP_PROJECTOR_INTERNVL; /* mm_hid: their dumped hidden layer */
    a->mm_hid = mlp ? malloc((size_t)n_out_of(c) * (size_t)c->proj.hidden_dim * f) : NULL;
    a->attn_scratch_bytes = lp_attention_scratch_size(c->n_pos, c->n_pos, c->n_head, c->head_dim, pool);
    a->attn_scratch = malloc(a->attn_scratch_bytes);
    return a->attn_scratch && a->cols && a->pe && a->x && a->xn && a->q && a->k && a->v && a->att && a->tmp && a->ff && a->rnd &&
           (a->stack || c->n_feature_layers == 0) && a->proj_in && (a->mm_hid || !mlp);
}

static void layernorm_rows(float *out, const float *x, const float *w, const float *b, int n, int E, float eps) {
    // out, x (n, E)
    for (int t = 0; t < n; t++) lp_layernorm(out + (int64_t)t * E, x + (int64_t)t * E, w, b, E, eps);
}

/* The ViT's norm: LayerNorm, or RMSNorm (+ bias) for InternViT-6B. */
static void norm_rows(const lp_clip *c, float *out, const float *x, const float *w, const float *b, int n, int E) {
    if (!c->rms_norm) {
        layernorm_rows(out, x, w, b, n, E, c->vc.eps);
        return;
    }
    for (int t = 0; t < n; t++) {
        lp_rmsnorm(out + (int64_t)t * E, x + (int64_t)t * E, w, E, c->vc.eps);
        if (b) lp_add(out + (int64_t)t * E, b, E);
    }
}

/* q/k norm in place on x (T, n_embd), over rows of qk_norm_dim (whole or per head). */
static void qk_norm(const lp_clip *c, float *x, const float *w, int T) {
    const int D = c->qk_norm_dim, per = c->n_embd / D;
    norm_rows(c, x, x, w, NULL, T * per, D); /* row-wise, in place is safe */
}

/* pixels (3, S, S) -> a->x (n_pos, n_embd): patches, class token, positions */
static loupe_status embed_forward(const lp_clip *c, clip_acts *a, const float *pixels, lp_pool *pool, lp_error *err) {
    const int S = c->image_size, P = c->patch_size, ns = c->n_side, E = c->n_embd, N = c->n_patches;
    const int64_t K = 3 * (int64_t)P * P;
    /* im2col: row (py·ns + px), column (ch·P + ky)·P + kx, as ggml's im2col */
    for (int py = 0; py < ns; py++) {
        for (int px = 0; px < ns; px++) {
            float *row = a->cols + ((int64_t)py * ns + px) * K; // (K)
            for (int ch = 0; ch < 3; ch++) {
                for (int ky = 0; ky < P; ky++) {
                    const float *src = pixels + ((int64_t)ch * S + (int64_t)py * P + ky) * S + (int64_t)px * P;
                    memcpy(row + ((int64_t)ch * P + ky) * P, src, (size_t)P * sizeof(float));
                }
            }
        }
    }
    loupe_status st;
    if (c->patch_r16 && (c->quirks & LP_CLIP_QUIRK_MATMUL_F16)) {
        /* f32 kernel under MATMUL_F16: both sides in f16, as ggml_conv_2d */
        for (int64_t i = 0; i < (int64_t)N * K; i++) a->rnd[i] = lp_f16_to_f32(lp_f32_to_f16(a->cols[i]));
        if (!lp_matmul_w(LP_TYPE_F32, c->patch_r16, a->rnd, a->pe, N, E, K, pool))
            return lp_fail(err, LOUPE_ERR_NOMEM, "%s: patch embedding: matrix product failed", c->path);
        if (c->patch.b)
            for (int i = 0; i < N; i++) lp_add(a->pe + (int64_t)i * E, c->patch.b, E);
    } else if ((st = lp_dense_forward(&c->patch, c->ws, a->cols, a->pe, N, dense_round(c), a->rnd, pool, err))) {
        return st;
    }

    const bool has_cls = c->class_embd != NULL;
    const bool cls_first = has_cls && !(c->quirks & LP_CLIP_QUIRK_CLS_LAST);
    const int first_patch = cls_first ? 1 : 0;
    memcpy(a->x + (int64_t)first_patch * E, a->pe, (size_t)N * (size_t)E * sizeof(float));
    if (has_cls) {
        const int cls_tok = cls_first ? 0 : N;
        memcpy(a->x + (int64_t)cls_tok * E, c->class_embd, (size_t)E * sizeof(float));
    }
    lp_add(a->x, c->pos_embd, (int64_t)c->n_pos * E); /* position t added to token t */
    return LOUPE_OK;
}

/* x (n, E) *= s (E), row by row: InternViT's layer scale. */
static void scale_rows(float *x, const float *s, int n, int E) {
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++) x[(int64_t)t * E + e] *= s[e];
}

/* One pre-norm transformer block on a->x (n_pos, n_embd), in place. */
static loupe_status block_forward(const lp_clip *c, const clip_layer *L, clip_acts *a, lp_pool *pool,
                                  lp_error *err) {
    const int T = c->n_pos, E = c->n_embd;
    const lp_dense_round rnd = dense_round(c);
    loupe_status st;

    // attention branch: x += o(attn(q, k, v)) over ln1(x)
    norm_rows(c, a->xn, a->x, L->ln1_w, L->ln1_b, T, E);
    if ((st = lp_dense_forward(&L->q, c->ws, a->xn, a->q, T, rnd, a->rnd, pool, err))) return st;
    if ((st = lp_dense_forward(&L->k, c->ws, a->xn, a->k, T, rnd, a->rnd, pool, err))) return st;
    if ((st = lp_dense_forward(&L->v, c->ws, a->xn, a->v, T, rnd, a->rnd, pool, err))) return st;
    if (L->qn_w) {
        qk_norm(c, a->q, L->qn_w, T);
        qk_norm(c, a->k, L->kn_w, T);
    }
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    if (!lp_attention_ex(a->att, a->q, a->k, a->v, T, T, c->n_head, c->n_head, c->head_dim, 0, false, scale,
                         a->attn_scratch, a->attn_scratch_bytes, pool)) {
        return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: attention failed", c->path);
    }
    if ((st = lp_dense_forward(&L->o, c->ws, a->att, a->tmp, T, rnd, a->rnd, pool, err))) return st;
    if (L->ls1) scale_rows(a->tmp, L->ls1, T, E);
    lp_add(a->x, a->tmp, (int64_t)T * E);

    // MLP branch: x += down(act(up(ln2(x)))) [· ls2]
    norm_rows(c, a->xn, a->x, L->ln2_w, L->ln2_b, T, E);
    if ((st = lp_dense_forward(&L->up, c->ws, a->xn, a->ff, T, rnd, a->rnd, pool, err))) return st;
    lp_act_apply(ffn_act(c), a->ff, (int64_t)T * c->n_ff);
    if ((st = lp_dense_forward(&L->down, c->ws, a->ff, a->tmp, T, rnd, a->rnd, pool, err))) return st;
    if (L->ls2) scale_rows(a->tmp, L->ls2, T, E);
    lp_add(a->x, a->tmp, (int64_t)T * E);
    return LOUPE_OK;
}

/* InternVL's pixel_shuffle(scale 1/s) as llama.cpp computes it (the same
 * as the reference's ps_version "v2"): in (rows, cols, D) patches ->
 * out (rows/s · cols/s, s²·D); output token (i, j), row-major, holds the
 * patches (s·i + u, s·j + v) for u = 0..s−1 (outer), v = 0..s−1 (inner),
 * each D wide: for s = 2 [x(2i,2j) | x(2i,2j+1) | x(2i+1,2j) | x(2i+1,2j+1)]. */
static void pixel_shuffle(float *out, const float *in, int rows, int cols, int D, int s) {
    const int oc = cols / s;
    for (int i = 0; i < rows / s; i++)
        for (int j = 0; j < oc; j++) {
            float *o = out + ((int64_t)i * oc + j) * (int64_t)s * s * D;
            for (int u = 0; u < s; u++)
                for (int v = 0; v < s; v++)
                    memcpy(o + ((int64_t)u * s + v) * D, in + ((int64_t)(s * i + u) * cols + (s * j + v)) * D,
                           (size_t)D * sizeof(float));
        }
}

/* Copy hidden state h (n_pos, n_embd) into slot s of stack (n_pos, D). */
static void stack_put(const lp_clip *c, float *stack, const float *h, int s) {
    const int E = c->n_embd, D = feature_dim_of(c);
    for (int t = 0; t < c->n_pos; t++) {
        memcpy(stack + (int64_t)t * D + (int64_t)s * E, h + (int64_t)t * E, (size_t)E * sizeof(float));
    }
}

static loupe_status encode(const lp_clip *c, const float *pixels, float *out, float *features, clip_acts *a,
                           lp_pool *pool, lp_error *err) {
    const int T = c->n_pos, E = c->n_embd, N = c->n_patches, D = feature_dim_of(c);
    const int n_run = n_run_of(c, c->quirks);
    loupe_status st;
    char name[32];

    if ((st = embed_forward(c, a, pixels, pool, err))) return st;
    dump(c, "v.patch_embd", a->x, (int64_t)T * E);

    if (c->pre_ln_w) {
        norm_rows(c, a->xn, a->x, c->pre_ln_w, c->pre_ln_b, T, E);
        memcpy(a->x, a->xn, (size_t)T * (size_t)E * sizeof(float));
        dump(c, "v.pre_ln", a->x, (int64_t)T * E);
    }

    int slot = 0; /* next free slot of the feature stack */
    for (int il = 0; il < n_run; il++) {
        if (is_feature_layer(c, il)) stack_put(c, a->stack, a->x, slot++);
        if ((st = block_forward(c, &c->layers[il], a, pool, err))) return st;
        snprintf(name, sizeof name, "v.blk.%d", il);
        dump(c, name, a->x, (int64_t)T * E);
    }

    if ((c->quirks & LP_CLIP_QUIRK_POST_LN) && c->post_ln_w) {
        norm_rows(c, a->xn, a->x, c->post_ln_w, c->post_ln_b, T, E);
        memcpy(a->x, a->xn, (size_t)T * (size_t)E * sizeof(float));
        dump(c, "v.post_ln", a->x, (int64_t)T * E);
    }

    const float *hidden = a->x; // (n_pos, D)
    if (c->n_feature_layers > 0) {
        stack_put(c, a->stack, a->x, slot++); /* n_run is the deepest feature layer */
        hidden = a->stack;
    }

    const bool cls_first = c->class_embd && !(c->quirks & LP_CLIP_QUIRK_CLS_LAST);
    const int p0 = cls_first ? 1 : 0; /* first patch row, whatever the class token's place */
    if (is_internvl(c)) {
        /* llama.cpp's InternVL graph drops the class token wherever it is and
         * keeps the patches, then pixel-shuffles them */
        pixel_shuffle(a->proj_in, hidden + (int64_t)p0 * D, c->n_side, c->n_side, D, c->n_merge);
    } else {
        /* projector input: rows 1..N with a class token, 0..N-1 without (llama.cpp "patches") */
        const int row0 = c->class_embd ? 1 : 0;
        memcpy(a->proj_in, hidden + (int64_t)row0 * D, (size_t)N * (size_t)D * sizeof(float));
    }
    const int n_out = n_out_of(c), Din = proj_in_dim_of(c);
    dump(c, "v.features", a->proj_in, (int64_t)n_out * Din);

    if (features) memcpy(features, hidden + (int64_t)p0 * D, (size_t)N * (size_t)D * sizeof(float));
    if (!out) return LOUPE_OK;

    const lp_projector *p = &c->proj;
    if (p->type == LP_PROJECTOR_MLP || p->type == LP_PROJECTOR_INTERNVL) { /* with the hidden layer for the dump */
        st = lp_projector_mlp(p, c->ws, a->proj_in, out, n_out, proj_act(c), dense_round(c), a->mm_hid, pool, err);
        if (st != LOUPE_OK) return st;
        dump(c, "mm.hidden", a->mm_hid, (int64_t)n_out * p->hidden_dim);
    } else if ((st = lp_projector_forward(p, c->ws, a->proj_in, out, N, proj_act(c), dense_round(c), pool, err))) {
        return st;
    }
    dump(c, "mm.out", out, (int64_t)n_out * p->out_dim);
    return LOUPE_OK;
}

loupe_status lp_clip_encode_ex(const lp_clip *c, const float *pixels, float *out, float *features, lp_pool *pool,
                               lp_error *err) {
    if (!c || !pixels) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "clip: NULL argument");
    clip_acts a;
    if (!acts_alloc(c, &a, pool)) {
        acts_free(&a);
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: encode: out of memory", c->path);
    }
    loupe_status st = encode(c, pixels, out, features, &a, pool, err);
    acts_free(&a);
    return st;
}

loupe_status lp_clip_encode(const lp_clip *c, const float *pixels, float *out, lp_pool *pool, lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "clip: NULL output");
    return lp_clip_encode_ex(c, pixels, out, NULL, pool, err);
}
