/* fusion/hf_convert.c — Hugging Face checkpoint -> GGUF pair (see hf_convert.h). */
#include "hf_convert.h"
#include "region_sampler.h"
#include "../core/fileio.h"
#include "../core/gguf.h"
#include "../core/safetensors.h"
#include "../language/hf_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* CLIP's defaults (openai/clip-vit-large-patch14-336's preprocessor_config.json) */
static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Ferret's GeoRegionSampler constants (ferret/model/ferret_arch.py,
 * FERRETMetaModel: max_sample_point, num_sub_point, num_neighbor). */
static const int FERRET_POINTS = 512;
static const int32_t FERRET_SUB[2] = {128, 32};
static const int32_t FERRET_NB[2] = {24, 24};

lp_hf_convert_params lp_hf_convert_default_params(void) {
    return (lp_hf_convert_params){.outtype = LP_TYPE_F16, .vision_dir = NULL, .force = false};
}

/* ---- JSON ---- */

static loupe_status read_json(const char *path, cJSON **out, lp_error *err) {
    char *text = NULL;
    size_t len = 0;
    loupe_status st = lp_read_file(path, 64u << 20, "64 MiB JSON file", &text, &len, err);
    if (st) return st;
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return LOUPE_OK;
}

/* An integer key: def when absent (def < 0 and absent: an error). */
static loupe_status json_int(const cJSON *o, const char *path, const char *key, long def, long lo, long hi, long *out,
                             lp_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (def == LONG_MIN) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: missing \"%s\"", path, key);
        *out = def;
        return LOUPE_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: \"%s\" must be an integer in %ld..%ld", path, key, lo, hi);
    *out = (long)v->valuedouble;
    return LOUPE_OK;
}

static loupe_status json_float(const cJSON *o, const char *path, const char *key, double def, double *out,
                               lp_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (isnan(def)) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: missing \"%s\"", path, key);
        *out = def;
        return LOUPE_OK;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: \"%s\" must be a positive number", path, key);
    *out = v->valuedouble;
    return LOUPE_OK;
}

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool json_true(const cJSON *o, const char *key) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key)); }

/* ---- output tensors ---- */

typedef struct otensor {
    char name[64];
    const lp_st_tensor *src;
    lp_type type;
    int n_dims;
    int64_t ne[4];      /* ggml order */
    int perm_heads;     /* > 0: llama.cpp's q/k row permutation with this many heads */
    /* fill state */
    float *row;         /* (ne[0]) */
    uint8_t *qrow;      /* (row bytes) */
} otensor;

typedef struct olist {
    otensor *t;
    int n, cap;
    uint64_t bytes;
    int n_fallback;
} olist;

static void olist_free(olist *l) {
    for (int i = 0; i < l->n; i++) {
        free(l->t[i].row);
        free(l->t[i].qrow);
    }
    free(l->t);
    memset(l, 0, sizeof *l);
}

/* Source row of output row r: within each head of hd rows, llama.cpp's
 * permute() reorders (2, hd/2) -> (hd/2, 2), i.e. output row j·2 + t comes
 * from input row t·hd/2 + j. */
static int64_t src_row(const otensor *o, int64_t r) {
    if (o->perm_heads <= 0) return r;
    int64_t hd = o->ne[1] / o->perm_heads, h = r / hd, i = r % hd;
    return h * hd + (i % 2) * (hd / 2) + i / 2;
}

static loupe_status fill_tensor(void *ctx, uint64_t offset, void *dst, size_t n, lp_error *err) {
    otensor *o = ctx;
    int64_t ne0 = o->ne[0];
    size_t rb = lp_row_size(o->type, ne0);
    if (!o->row && (!(o->row = malloc((size_t)ne0 * sizeof(float))) || !(o->qrow = malloc(rb))))
        return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    uint8_t *d = dst;
    uint64_t end = offset + n;
    for (int64_t r = (int64_t)(offset / rb); (uint64_t)r * rb < end; r++) {
        loupe_status st = lp_st_read_f32(o->src, src_row(o, r) * ne0, ne0, o->row, err);
        if (st) return st;
        for (int64_t i = 0; i < ne0; i++)
            if (!isfinite(o->row[i]))
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s holds a non-finite value (row %lld)",
                               o->src->file, o->src->name, (long long)src_row(o, r));
        if (o->type == LP_TYPE_F32) memcpy(o->qrow, o->row, rb);
        else if (lp_quantize_row(o->type, o->row, o->qrow, ne0) != rb)
            return lp_fail(err, LOUPE_ERR_INTERNAL, "cannot write %s rows", lp_type_name(o->type));
        uint64_t a = (uint64_t)r * rb, b = a + rb;
        uint64_t lo = a > offset ? a : offset, hi = b < end ? b : end;
        memcpy(d + (lo - offset), o->qrow + (lo - a), (size_t)(hi - lo));
    }
    int64_t rows = 1;
    for (int i = 1; i < o->n_dims; i++) rows *= o->ne[i];
    if (end >= (uint64_t)rows * rb) { /* the tensor is written: its row buffers and source pages can go */
        free(o->row);
        free(o->qrow);
        o->row = NULL;
        o->qrow = NULL;
        lp_st_release(o->src);
    }
    return LOUPE_OK;
}

/* The type a matrix of row length ne0 gets for the wanted type. */
static lp_type matrix_type(lp_type want, int64_t ne0) {
    if (ne0 % lp_type_block_size(want) == 0) return want;
    if (want == LP_TYPE_Q4_K && ne0 % 32 == 0) return LP_TYPE_Q4_0;
    return LP_TYPE_F16;
}

typedef struct conv {
    const char *dir;
    lp_safetensors *st;      /* the checkpoint */
    lp_safetensors *vst;     /* the CLIP tower (== st when inside it) */
    const char *vprefix;     /* "vision_model." or "model.vision_tower.vision_tower.vision_model." */
    const char *vdir;        /* where the tower was found, for messages */
    lp_type outtype;
} conv;

/* Add src (HF shape (d0, d1, ...)) as GGUF name with ne = reversed shape.
 * want_shape: the HF shape expected (< 0 entries: any), n_want dims. */
static loupe_status add(olist *l, const lp_safetensors *st, const char *where, const char *gname, const char *hname,
                        int n_want, const int64_t *want, lp_type type, int perm_heads, lp_error *err) {
    const lp_st_tensor *t;
    loupe_status s = lp_st_get(st, hname, where, &t, err);
    if (s) return s;
    /* a Conv1d 1x1 weight (out, in, 1) is a matrix */
    int nd = t->n_dims;
    if (nd == 3 && n_want == 2 && t->shape[2] == 1) nd = 2;
    bool ok = nd == n_want;
    for (int i = 0; ok && i < n_want; i++) ok = want[i] < 0 || want[i] == t->shape[i];
    if (!ok) {
        int64_t w2[LP_ST_MAX_DIMS];
        memcpy(w2, want, (size_t)n_want * sizeof *w2);
        return lp_st_check_shape(t, n_want, w2, err);
    }
    if (t->dtype != LP_ST_F32 && t->dtype != LP_ST_F16 && t->dtype != LP_ST_BF16)
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s is %s; loupe converts F32, F16 and BF16 weights",
                       t->file, hname, t->dtype_name);
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 128;
        otensor *nt = realloc(l->t, (size_t)cap * sizeof *nt);
        if (!nt) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
        l->t = nt;
        l->cap = cap;
    }
    otensor *o = &l->t[l->n];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", gname);
    o->src = t;
    o->n_dims = n_want;
    for (int i = 0; i < n_want; i++) o->ne[i] = t->shape[n_want - 1 - i];
    o->type = n_want >= 2 ? matrix_type(type, o->ne[0]) : type;
    if (o->type != type) l->n_fallback++;
    o->perm_heads = perm_heads;
    if (perm_heads > 0 && (o->ne[1] % perm_heads || (o->ne[1] / perm_heads) % 2))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: %lld rows do not split into %d heads of even size",
                       t->file, hname, (long long)o->ne[1], perm_heads);
    l->n++;
    return LOUPE_OK;
}

static loupe_status add_all(lp_gguf_writer *w, olist *l, lp_error *err) {
    for (int i = 0; i < l->n; i++) {
        otensor *o = &l->t[i];
        loupe_status st = lp_gguf_writer_add_tensor_fn(w, o->name, o->type, (uint32_t)o->n_dims, o->ne, fill_tensor, o);
        if (st) return lp_fail(err, st, "cannot add tensor %s (%s, row %lld)", o->name, lp_type_name(o->type),
                               (long long)o->ne[0]);
        int64_t rows = 1;
        for (int d = 1; d < o->n_dims; d++) rows *= o->ne[d];
        l->bytes += lp_row_size(o->type, o->ne[0]) * (uint64_t)rows;
    }
    return LOUPE_OK;
}

/* ---- the decoder ---- */

typedef struct lm_config {
    long n_embd, n_ff, n_head, n_head_kv, n_layer, n_ctx, n_vocab;
    double rms_eps, rope_theta;
    bool tied;
} lm_config;

static loupe_status read_lm_config(const cJSON *c, const char *path, lm_config *m, lp_error *err) {
    loupe_status st;
    if ((st = json_int(c, path, "hidden_size", LONG_MIN, 1, 1 << 16, &m->n_embd, err)) ||
        (st = json_int(c, path, "intermediate_size", LONG_MIN, 1, 1 << 20, &m->n_ff, err)) ||
        (st = json_int(c, path, "num_attention_heads", LONG_MIN, 1, 1024, &m->n_head, err)) ||
        (st = json_int(c, path, "num_key_value_heads", m->n_head, 1, 1024, &m->n_head_kv, err)) ||
        (st = json_int(c, path, "num_hidden_layers", LONG_MIN, 1, 1024, &m->n_layer, err)) ||
        (st = json_int(c, path, "max_position_embeddings", 2048, 1, 1 << 24, &m->n_ctx, err)) ||
        (st = json_int(c, path, "vocab_size", 0, 0, 1 << 24, &m->n_vocab, err)) ||
        (st = json_float(c, path, "rms_norm_eps", 1e-6, &m->rms_eps, err)) ||
        (st = json_float(c, path, "rope_theta", 10000.0, &m->rope_theta, err)))
        return st;
    if (m->n_embd % m->n_head || m->n_head % m->n_head_kv || (m->n_embd / m->n_head) % 2)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: hidden_size %ld, num_attention_heads %ld, num_key_value_heads %ld do not fit",
                       path, m->n_embd, m->n_head, m->n_head_kv);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(c, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: rope_scaling is not supported", path);
    m->tied = json_true(c, "tie_word_embeddings");
    return LOUPE_OK;
}

static loupe_status lm_tensors(const conv *cv, const lm_config *m, olist *l, lp_error *err) {
    const lp_safetensors *st = cv->st;
    const char *where = cv->dir;
    lp_type q = cv->outtype;
    int64_t E = m->n_embd, F = m->n_ff, hd = E / m->n_head, kv = m->n_head_kv * hd;
    const lp_st_tensor *emb;
    loupe_status s = lp_st_get(st, "model.embed_tokens.weight", where, &emb, err);
    if (s) return s;
    int64_t V = emb->shape[0];
    char g[96], h[128];
#define ADD(gn, hn, nd, q_, perm, ...)                                                                      \
    do {                                                                                                    \
        const int64_t want_[] = {__VA_ARGS__};                                                              \
        if ((s = add(l, st, where, gn, hn, nd, want_, q_, perm, err))) return s;                            \
    } while (0)
    ADD("token_embd.weight", "model.embed_tokens.weight", 2, q, 0, V, E);
    ADD("output_norm.weight", "model.norm.weight", 1, LP_TYPE_F32, 0, E);
    if (!m->tied || lp_st_find(st, "lm_head.weight")) ADD("output.weight", "lm_head.weight", 2, q, 0, V, E);
    for (long i = 0; i < m->n_layer; i++) {
#define LAYER(gs, hs, nd, q_, perm, ...)                                                                     \
        do {                                                                                                 \
            snprintf(g, sizeof g, "blk.%ld.%s", i, gs);                                                      \
            snprintf(h, sizeof h, "model.layers.%ld.%s", i, hs);                                            \
            ADD(g, h, nd, q_, perm, __VA_ARGS__);                                                            \
        } while (0)
        LAYER("attn_norm.weight", "input_layernorm.weight", 1, LP_TYPE_F32, 0, E);
        LAYER("attn_q.weight", "self_attn.q_proj.weight", 2, q, (int)m->n_head, E, E);
        LAYER("attn_k.weight", "self_attn.k_proj.weight", 2, q, (int)m->n_head_kv, kv, E);
        LAYER("attn_v.weight", "self_attn.v_proj.weight", 2, q, 0, kv, E);
        LAYER("attn_output.weight", "self_attn.o_proj.weight", 2, q, 0, E, E);
        LAYER("ffn_norm.weight", "post_attention_layernorm.weight", 1, LP_TYPE_F32, 0, E);
        LAYER("ffn_gate.weight", "mlp.gate_proj.weight", 2, q, 0, F, E);
        LAYER("ffn_up.weight", "mlp.up_proj.weight", 2, q, 0, F, E);
        LAYER("ffn_down.weight", "mlp.down_proj.weight", 2, q, 0, E, F);
#undef LAYER
    }
    return LOUPE_OK;
}

/* ---- the tower, projector and sampler ---- */

typedef struct vis_config {
    long n_embd, n_ff, n_head, n_layer, patch, image, n_keep; /* n_keep: layers written */
    double eps;
    bool gelu;              /* hidden_act "gelu" (else quick_gelu) */
    float mean[3], std[3];
} vis_config;

/* The CLIP vision config: config.json's "vision_config" (CLIPModel or a llava
 * config), or a CLIPVisionModel config.json itself; HF's CLIP defaults for
 * absent keys. */
static loupe_status read_vis_config(const cJSON *vc, const char *path, vis_config *v, lp_error *err) {
    loupe_status st;
    if ((st = json_int(vc, path, "hidden_size", 768, 1, 1 << 15, &v->n_embd, err)) ||
        (st = json_int(vc, path, "intermediate_size", 3072, 1, 1 << 18, &v->n_ff, err)) ||
        (st = json_int(vc, path, "num_attention_heads", 12, 1, 1024, &v->n_head, err)) ||
        (st = json_int(vc, path, "num_hidden_layers", 12, 1, 1024, &v->n_layer, err)) ||
        (st = json_int(vc, path, "patch_size", 32, 1, 1024, &v->patch, err)) ||
        (st = json_int(vc, path, "image_size", 224, 1, 8192, &v->image, err)) ||
        (st = json_float(vc, path, "layer_norm_eps", 1e-5, &v->eps, err)))
        return st;
    const char *act = json_str(vc, "hidden_act");
    if (act && strcmp(act, "quick_gelu") && strcmp(act, "gelu"))
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: hidden_act \"%.32s\" (quick_gelu or gelu)", path, act);
    v->gelu = act && !strcmp(act, "gelu");
    if (v->n_embd % v->n_head)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: hidden_size %ld is not a multiple of num_attention_heads %ld", path,
                       v->n_embd, v->n_head);
    return LOUPE_OK;
}

static void read_norm(const cJSON *pp, const char *key, const float def[3], float out[3]) {
    memcpy(out, def, 3 * sizeof *out);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(pp, key);
    if (cJSON_GetArraySize(a) != 3) return;
    for (int i = 0; i < 3; i++)
        if (cJSON_IsNumber(cJSON_GetArrayItem(a, i))) out[i] = (float)cJSON_GetArrayItem(a, i)->valuedouble;
}

static loupe_status vis_tensors(const conv *cv, const vis_config *v, const char *proj, long E, bool sampler, olist *l,
                                lp_error *err) {
    const lp_safetensors *st = cv->vst;
    const char *where = cv->vdir;
    lp_type mt = cv->outtype == LP_TYPE_F32 ? LP_TYPE_F32 : LP_TYPE_F16, f32 = LP_TYPE_F32;
    int64_t D = v->n_embd, F = v->n_ff, P = v->patch, n_pos = (v->image / v->patch) * (v->image / v->patch) + 1;
    char g[96], h[192];
    loupe_status s;
#define VADD(gn, hs, nd, q_, ...)                                                                            \
    do {                                                                                                     \
        const int64_t want_[] = {__VA_ARGS__};                                                               \
        snprintf(h, sizeof h, "%s%s", cv->vprefix, hs);                                                      \
        if ((s = add(l, st, where, gn, h, nd, want_, q_, 0, err))) return s;                                 \
    } while (0)
    VADD("v.class_embd", "embeddings.class_embedding", 1, f32, D);
    VADD("v.patch_embd.weight", "embeddings.patch_embedding.weight", 4, LP_TYPE_F16, D, 3, P, P);
    VADD("v.position_embd.weight", "embeddings.position_embedding.weight", 2, f32, n_pos, D);
    VADD("v.pre_ln.weight", "pre_layrnorm.weight", 1, f32, D);
    VADD("v.pre_ln.bias", "pre_layrnorm.bias", 1, f32, D);
    /* one CLIP encoder layer: GGUF name, HF name, 1 = vector / 2 = matrix, rows, columns */
    static const struct { const char *g, *h; int nd; char rows, cols; } VLAYER[] = {
        {"attn_q.weight", "self_attn.q_proj.weight", 2, 'D', 'D'},   {"attn_q.bias", "self_attn.q_proj.bias", 1, 'D', 0},
        {"attn_k.weight", "self_attn.k_proj.weight", 2, 'D', 'D'},   {"attn_k.bias", "self_attn.k_proj.bias", 1, 'D', 0},
        {"attn_v.weight", "self_attn.v_proj.weight", 2, 'D', 'D'},   {"attn_v.bias", "self_attn.v_proj.bias", 1, 'D', 0},
        {"attn_out.weight", "self_attn.out_proj.weight", 2, 'D', 'D'}, {"attn_out.bias", "self_attn.out_proj.bias", 1, 'D', 0},
        {"ln1.weight", "layer_norm1.weight", 1, 'D', 0},             {"ln1.bias", "layer_norm1.bias", 1, 'D', 0},
        {"ffn_up.weight", "mlp.fc1.weight", 2, 'F', 'D'},            {"ffn_up.bias", "mlp.fc1.bias", 1, 'F', 0},
        {"ffn_down.weight", "mlp.fc2.weight", 2, 'D', 'F'},          {"ffn_down.bias", "mlp.fc2.bias", 1, 'D', 0},
        {"ln2.weight", "layer_norm2.weight", 1, 'D', 0},             {"ln2.bias", "layer_norm2.bias", 1, 'D', 0},
    };
    for (long i = 0; i < v->n_keep; i++) {
        for (size_t k = 0; k < sizeof VLAYER / sizeof VLAYER[0]; k++) {
            char hh[128];
            snprintf(g, sizeof g, "v.blk.%ld.%s", i, VLAYER[k].g);
            snprintf(hh, sizeof hh, "encoder.layers.%ld.%s", i, VLAYER[k].h);
            const int64_t r = VLAYER[k].rows == 'D' ? D : F, c = VLAYER[k].cols == 'D' ? D : F;
            if (VLAYER[k].nd == 2) VADD(g, hh, 2, mt, r, c);
            else VADD(g, hh, 1, f32, r);
        }
    }
#undef VADD
    /* projector and sampler: in the checkpoint itself */
    st = cv->st;
    where = cv->dir;
#define PADD(gn, hn, nd, q_, ...)                                                                            \
    do {                                                                                                     \
        const int64_t want_[] = {__VA_ARGS__};                                                               \
        if ((s = add(l, st, where, gn, hn, nd, want_, q_, 0, err))) return s;                                \
    } while (0)
    if (!strcmp(proj, "linear")) {
        PADD("mm.0.weight", "model.mm_projector.weight", 2, mt, E, D);
        PADD("mm.0.bias", "model.mm_projector.bias", 1, f32, E);
    } else {
        PADD("mm.0.weight", "model.mm_projector.0.weight", 2, mt, E, D);
        PADD("mm.0.bias", "model.mm_projector.0.bias", 1, f32, E);
        PADD("mm.2.weight", "model.mm_projector.2.weight", 2, mt, E, E);
        PADD("mm.2.bias", "model.mm_projector.2.bias", 1, f32, E);
    }
    if (sampler) {
        const char *R = "model.region_geo_sampler.";
        int64_t C = D;
        for (int i = 0; i < 2; i++) {
            char hn[160];
#define SADD(gs, hs, nd, q_, ...)                                                                            \
            do {                                                                                             \
                snprintf(g, sizeof g, LP_REGION_PREFIX ".%d.%s", i, gs);                                     \
                snprintf(hn, sizeof hn, "%s" hs, R, i);                                                      \
                PADD(g, hn, nd, q_, __VA_ARGS__);                                                            \
            } while (0)
            SADD("diff.weight", "diff_projector_list.%d.weight", 2, mt, C + 2, C + 2);
            SADD("diff.bias", "diff_projector_list.%d.bias", 1, f32, C + 2);
            SADD("agg.weight", "agg_projector_list.%d.net.0.weight", 2, mt, C, 2 * (C + 2));
            SADD("agg.bias", "agg_projector_list.%d.net.0.bias", 1, f32, C);
            SADD("norm.weight", "agg_projector_list.%d.norm.weight", 1, f32, C);
            SADD("norm.bias", "agg_projector_list.%d.norm.bias", 1, f32, C);
#undef SADD
        }
        char hn[160];
        snprintf(hn, sizeof hn, "%sflatten_projector.weight", R);
        PADD(LP_REGION_PREFIX ".flatten.weight", hn, 2, mt, C, C * FERRET_SUB[1]);
        snprintf(hn, sizeof hn, "%sflatten_projector.bias", R);
        PADD(LP_REGION_PREFIX ".flatten.bias", hn, 1, f32, C);
        snprintf(hn, sizeof hn, "%sdim_projector.weight", R);
        PADD(LP_REGION_PREFIX ".proj.weight", hn, 2, mt, E, C);
        snprintf(hn, sizeof hn, "%sdim_projector.bias", R);
        PADD(LP_REGION_PREFIX ".proj.bias", hn, 1, f32, E);
    }
#undef PADD
    return LOUPE_OK;
}

/* ---- writing ---- */

static loupe_status check_out(const char *path, bool force, lp_error *err) {
    if (!force && lp_path_exists(path))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s exists (use --force to overwrite)", path);
    return LOUPE_OK;
}

static uint32_t file_type(lp_type t) {
    switch (t) { /* llama_ftype */
    case LP_TYPE_F32: return 0;
    case LP_TYPE_F16: return 1;
    case LP_TYPE_Q4_0: return 2;
    case LP_TYPE_Q8_0: return 7;
    case LP_TYPE_Q4_K: return 15; /* Q4_K_M's number; every matrix is q4_K here */
    default: return 1;
    }
}

static const char *base_name(const char *dir, char *buf, size_t n) {
    snprintf(buf, n, "%s", dir);
    size_t k = strlen(buf);
    while (k > 1 && buf[k - 1] == '/') buf[--k] = 0;
    const char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

#define TRY(x)                                                                                               \
    do {                                                                                                     \
        if ((st = (x)) != LOUPE_OK) goto out;                                                                \
    } while (0)
#define TRYW(x)                                                                                              \
    do {                                                                                                     \
        if ((st = (x)) != LOUPE_OK) {                                                                        \
            lp_fail(err, st, "cannot set GGUF metadata");                                                    \
            goto out;                                                                                        \
        }                                                                                                    \
    } while (0)

loupe_status lp_hf_convert(const char *dir, const char *out_prefix, const lp_hf_convert_params *pin,
                           lp_hf_convert_report *rep, lp_error *err) {
    lp_hf_convert_params p = pin ? *pin : lp_hf_convert_default_params();
    if (!dir || !out_prefix || !*out_prefix) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_hf_convert: no directory or prefix");
    if (p.outtype != LP_TYPE_F32 && p.outtype != LP_TYPE_F16 && p.outtype != LP_TYPE_Q8_0 && p.outtype != LP_TYPE_Q4_0 &&
        p.outtype != LP_TYPE_Q4_K)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "outtype %s: f32, f16, q8_0, q4_0 or q4_k", lp_type_name(p.outtype));
    lp_hf_convert_report r;
    memset(&r, 0, sizeof r);

    loupe_status st = LOUPE_OK;
    conv cv = {.dir = dir, .outtype = p.outtype};
    cJSON *cfg = NULL, *vcfg_root = NULL, *pp = NULL;
    lp_hf_vocab *vocab = NULL;
    lp_gguf_writer *w = NULL;
    olist lm = {0}, mm = {0};
    char *cfg_path = lp_path_join(dir, "config.json"), *lm_path = NULL, *mm_path = NULL, *vdir_alloc = NULL;
    size_t plen = strlen(out_prefix) + 16;
    lm_path = malloc(plen);
    mm_path = malloc(plen);
    if (!cfg_path || !lm_path || !mm_path) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
        goto out;
    }
    snprintf(lm_path, plen, "%s.gguf", out_prefix);
    snprintf(mm_path, plen, "%s-mmproj.gguf", out_prefix);

    if (!lp_path_is_dir(dir)) {
        st = lp_fail(err, LOUPE_ERR_IO, "%s: not a directory", dir);
        goto out;
    }
    TRY(read_json(cfg_path, &cfg, err));
    const char *arch = NULL;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(cfg, "architectures");
    if (cJSON_GetArraySize(archs) > 0 && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        arch = cJSON_GetArrayItem(archs, 0)->valuestring;
    const char *mtype = json_str(cfg, "model_type");
    bool llama_like = (arch && strstr(arch, "Llama") && strstr(arch, "ForCausalLM")) ||
                      (mtype && (!strcmp(mtype, "llama") || !strcmp(mtype, "ferret_llama") || !strcmp(mtype, "llava")));
    if (!llama_like) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                     "%s: architecture \"%.64s\" (model_type \"%.32s\"): loupe converts llama decoders "
                     "(LlamaForCausalLM, FERRETLlamaForCausalLM, LlavaLlamaForCausalLM)",
                     cfg_path, arch ? arch : "?", mtype ? mtype : "?");
        goto out;
    }
    lm_config m;
    TRY(read_lm_config(cfg, cfg_path, &m, err));
    const char *tower = json_str(cfg, "mm_vision_tower");
    bool vlm = tower != NULL;
    bool sampler = vlm && json_true(cfg, "region_geo_sampler");
    const char *proj = vlm ? json_str(cfg, "mm_projector_type") : NULL;
    if (vlm && !proj) proj = "linear"; /* Ferret and LLaVA-1.0 */
    snprintf(r.kind, sizeof r.kind, "%s", sampler ? "ferret" : vlm ? "llava" : "llama");
    if (vlm && strcmp(proj, "linear") && strcmp(proj, "mlp2x_gelu")) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: mm_projector_type \"%.32s\" (linear or mlp2x_gelu)", cfg_path, proj);
        goto out;
    }
    if (vlm && json_true(cfg, "mm_use_im_start_end")) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: mm_use_im_start_end is true (image start/end tokens)", cfg_path);
        goto out;
    }
    const char *sel = json_str(cfg, "mm_vision_select_feature");
    if (vlm && sel && strcmp(sel, "patch")) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: mm_vision_select_feature \"%.32s\" (patch)", cfg_path, sel);
        goto out;
    }
    if (vlm && json_true(cfg, "region_fea_adapter") && !sampler) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: region_fea_adapter (Ferret without the geo sampler)", cfg_path);
        goto out;
    }
    const char *pool = sampler ? json_str(cfg, "sampler_pooler_mode") : NULL;
    if (sampler && pool && strcmp(pool, "max") && strcmp(pool, "mean")) {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: sampler_pooler_mode \"%.16s\"", cfg_path, pool);
        goto out;
    }
    TRY(check_out(lm_path, p.force, err));
    if (vlm) TRY(check_out(mm_path, p.force, err));

    TRY(lp_st_open_dir(dir, &cv.st, err));
    TRY(lp_hf_vocab_load(dir, (int)m.n_vocab, &vocab, err));

    /* decoder */
    TRY(lm_tensors(&cv, &m, &lm, err));
    int64_t n_vocab_w = lm.t[0].ne[1];
    if (!(w = lp_gguf_writer_new())) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
        goto out;
    }
    char nb[256];
    const char *name = base_name(dir, nb, sizeof nb);
    TRYW(lp_gguf_writer_set_str(w, "general.architecture", "llama"));
    TRYW(lp_gguf_writer_set_str(w, "general.name", name));
    TRYW(lp_gguf_writer_set_u32(w, "general.file_type", file_type(p.outtype)));
    TRYW(lp_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)n_vocab_w));
    TRYW(lp_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)m.n_ctx));
    TRYW(lp_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)m.n_embd));
    TRYW(lp_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)m.n_layer));
    TRYW(lp_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)m.n_ff));
    TRYW(lp_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(m.n_embd / m.n_head)));
    TRYW(lp_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)m.n_head));
    TRYW(lp_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)m.n_head_kv));
    TRYW(lp_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", (float)m.rms_eps));
    TRYW(lp_gguf_writer_set_f32(w, "llama.rope.freq_base", (float)m.rope_theta));
    TRY(lp_hf_vocab_write_gguf(vocab, w, err));
    if (lp_hf_vocab_size(vocab) != n_vocab_w) {
        st = lp_fail(err, LOUPE_ERR_MISMATCH, "%s: the tokenizer has %d tokens but model.embed_tokens.weight has %lld rows",
                     dir, lp_hf_vocab_size(vocab), (long long)n_vocab_w);
        goto out;
    }
    TRY(add_all(w, &lm, err));
    TRY(lp_gguf_writer_write(w, lm_path, err));
    lp_gguf_writer_free(w);
    w = NULL;
    r.n_tensors_lm = lm.n;
    r.bytes_lm = lm.bytes;
    r.n_fallback = lm.n_fallback;

    if (vlm) {
        /* where is the tower? */
        vis_config v;
        memset(&v, 0, sizeof v);
        const char *vdir = p.vision_dir;
        if (!vdir && !lp_st_find(cv.st, "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight")) {
            if (tower[0] == '/' ) vdir = tower;
            else if ((vdir_alloc = lp_path_join(dir, tower)) && lp_path_is_dir(vdir_alloc)) vdir = vdir_alloc;
            if (!vdir || !lp_path_is_dir(vdir)) {
                st = lp_fail(err, LOUPE_ERR_IO,
                             "%s: the CLIP tower \"%.128s\" (mm_vision_tower) is not in the checkpoint and not a local "
                             "directory: pass its Hugging Face checkpoint with --vision DIR",
                             cfg_path, tower);
                goto out;
            }
        }
        const cJSON *vc = cJSON_GetObjectItemCaseSensitive(cfg, "vision_config");
        const char *vc_path = cfg_path;
        char *vcp = NULL;
        if (vdir) {
            vcp = lp_path_join(vdir, "config.json");
            st = vcp ? read_json(vcp, &vcfg_root, err) : lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
            if (st) {
                free(vcp);
                goto out;
            }
            vc = cJSON_GetObjectItemCaseSensitive(vcfg_root, "vision_config");
            if (!vc) vc = vcfg_root; /* a CLIPVisionModel config */
            char *pp_path = lp_path_join(vdir, "preprocessor_config.json");
            if (pp_path && lp_path_exists(pp_path)) st = read_json(pp_path, &pp, err);
            free(pp_path);
            if (st) {
                free(vcp);
                goto out;
            }
            st = lp_st_open_dir(vdir, &cv.vst, err);
            if (st) {
                free(vcp);
                goto out;
            }
            cv.vprefix = "vision_model.";
            cv.vdir = vdir;
            vc_path = vcp;
        } else {
            if (!vc) {
                st = lp_fail(err, LOUPE_ERR_FORMAT,
                             "%s: the CLIP tower is inside the checkpoint but there is no \"vision_config\": pass the "
                             "tower's own checkpoint with --vision DIR",
                             cfg_path);
                goto out;
            }
            cv.vst = cv.st;
            cv.vprefix = "model.vision_tower.vision_tower.vision_model.";
            cv.vdir = dir;
            char *pp_path = lp_path_join(dir, "preprocessor_config.json");
            if (pp_path && lp_path_exists(pp_path)) st = read_json(pp_path, &pp, err);
            free(pp_path);
            if (st) goto out;
        }
        st = read_vis_config(vc, vc_path, &v, err);
        free(vcp);
        if (st) goto out;
        read_norm(pp, "image_mean", CLIP_MEAN, v.mean);
        read_norm(pp, "image_std", CLIP_STD, v.std);
        long select;
        TRY(json_int(cfg, cfg_path, "mm_vision_select_layer", -2, -1024, 1024, &select, err));
        /* hidden_states has n_layer + 1 entries (0 = embeddings after pre-LN) */
        v.n_keep = select < 0 ? v.n_layer + 1 + select : select;
        if (v.n_keep < 1 || v.n_keep > v.n_layer) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: mm_vision_select_layer %ld with %ld layers", cfg_path, select,
                         v.n_layer);
            goto out;
        }
        long mm_hidden;
        TRY(json_int(cfg, cfg_path, "mm_hidden_size", v.n_embd, 1, 1 << 15, &mm_hidden, err));
        if (mm_hidden != v.n_embd) {
            st = lp_fail(err, LOUPE_ERR_MISMATCH, "%s: mm_hidden_size %ld but the CLIP tower (%s) is %ld wide", cfg_path,
                         mm_hidden, cv.vdir, v.n_embd);
            goto out;
        }
        TRY(vis_tensors(&cv, &v, proj, m.n_embd, sampler, &mm, err));
        if (!(w = lp_gguf_writer_new())) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
            goto out;
        }
        lp_type mt = p.outtype == LP_TYPE_F32 ? LP_TYPE_F32 : LP_TYPE_F16;
        char desc[320];
        snprintf(desc, sizeof desc, "image encoder of %s (loupe convert --from-hf)", name);
        TRYW(lp_gguf_writer_set_str(w, "general.architecture", "clip"));
        TRYW(lp_gguf_writer_set_str(w, "general.name", name));
        TRYW(lp_gguf_writer_set_str(w, "general.description", desc));
        TRYW(lp_gguf_writer_set_u32(w, "general.file_type", file_type(mt)));
        TRYW(lp_gguf_writer_set_bool(w, "clip.has_text_encoder", false));
        TRYW(lp_gguf_writer_set_bool(w, "clip.has_vision_encoder", true));
        TRYW(lp_gguf_writer_set_bool(w, "clip.has_llava_projector", true));
        TRYW(lp_gguf_writer_set_str(w, "clip.projector_type", !strcmp(proj, "linear") ? "linear" : "mlp"));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.image_size", (uint32_t)v.image));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.patch_size", (uint32_t)v.patch));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.embedding_length", (uint32_t)v.n_embd));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.feed_forward_length", (uint32_t)v.n_ff));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.projection_dim", (uint32_t)m.n_embd));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.attention.head_count", (uint32_t)v.n_head));
        TRYW(lp_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", (float)v.eps));
        TRYW(lp_gguf_writer_set_u32(w, "clip.vision.block_count", (uint32_t)v.n_keep));
        int32_t fl = (int32_t)v.n_keep;
        TRYW(lp_gguf_writer_set_arr(w, "clip.vision.feature_layer", LP_GGUF_INT32, &fl, 1));
        TRYW(lp_gguf_writer_set_arr(w, "clip.vision.image_mean", LP_GGUF_FLOAT32, v.mean, 3));
        TRYW(lp_gguf_writer_set_arr(w, "clip.vision.image_std", LP_GGUF_FLOAT32, v.std, 3));
        TRYW(lp_gguf_writer_set_bool(w, "clip.use_gelu", v.gelu));
        /* Ferret squeezes the image to S x S (CLIPImageProcessor_GIT); LLaVA-1.5 pads */
        const char *ar = json_str(cfg, "image_aspect_ratio");
        TRYW(lp_gguf_writer_set_str(w, "clip.vision.image_aspect_ratio",
                                    sampler || !ar || strcmp(ar, "pad") ? "squash" : "pad"));
        if (sampler) {
            TRYW(lp_gguf_writer_set_u32(w, LP_REGION_KEY "num_points", (uint32_t)FERRET_POINTS));
            TRYW(lp_gguf_writer_set_arr(w, LP_REGION_KEY "sub_points", LP_GGUF_INT32, FERRET_SUB, 2));
            TRYW(lp_gguf_writer_set_arr(w, LP_REGION_KEY "neighbors", LP_GGUF_INT32, FERRET_NB, 2));
            TRYW(lp_gguf_writer_set_u32(w, LP_REGION_KEY "input_dim", (uint32_t)v.n_embd));
            TRYW(lp_gguf_writer_set_u32(w, LP_REGION_KEY "output_dim", (uint32_t)m.n_embd));
            TRYW(lp_gguf_writer_set_str(w, LP_REGION_KEY "pooler", pool ? pool : "mean"));
            TRYW(lp_gguf_writer_set_f32(w, LP_REGION_KEY "layer_norm_epsilon", 1e-5f));
            TRYW(lp_gguf_writer_set_bool(w, LP_REGION_KEY "ferret_transpose", true));
        }
        TRY(add_all(w, &mm, err));
        TRY(lp_gguf_writer_write(w, mm_path, err));
        r.n_tensors_mmproj = mm.n;
        r.bytes_mmproj = mm.bytes;
        r.wrote_mmproj = true;
    }

out:
    if (st && r.n_tensors_lm && !r.wrote_mmproj) remove(lm_path); /* never leave half a pair */
    if (rep) *rep = r;
    lp_gguf_writer_free(w);
    olist_free(&lm);
    olist_free(&mm);
    if (cv.vst && cv.vst != cv.st) lp_st_close(cv.vst);
    lp_st_close(cv.st);
    lp_hf_vocab_free(vocab);
    cJSON_Delete(cfg);
    cJSON_Delete(vcfg_root);
    cJSON_Delete(pp);
    free(cfg_path);
    free(lm_path);
    free(mm_path);
    free(vdir_alloc);
    return st;
}
