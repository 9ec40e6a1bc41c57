/* language/flash_format.c — reading and checking the loupe.flash.* keys of a
 * flash decoder file (the format is described in flash_format.h).
 *
 * lp_flash_layout_read trusts nothing: every key is checked for presence,
 * type and range, and every statement it makes about a tensor (type, shape,
 * data offset) is checked against the tensor table, so the flash weight
 * store can read bundles at i * stride without further checks. */
#include "flash_format.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_VERSION "loupe.flash.version"
#define KEY_GATE_TYPE "loupe.flash.gate_type"
#define KEY_UP_TYPE "loupe.flash.up_type"
#define KEY_DOWN_TYPE "loupe.flash.down_type"
#define KEY_BUNDLE_BYTES "loupe.flash.bundle_bytes"
#define KEY_STRIDE "loupe.flash.bundle_stride"
#define KEY_OFFSETS "loupe.flash.layer_offsets"
#define KEY_PREDICTOR "loupe.flash.predictor"
#define KEY_PRED_RANK "loupe.flash.predictor_rank"
#define KEY_PRED_ENERGY "loupe.flash.predictor_energy"
#define KEY_SOURCE "loupe.flash.source"

/* Sizes beyond these are not decoders loupe can hold; they also keep every
 * product below (stride * n_ff, rank * n_embd) far from overflow. */
#define MAX_LAYER 4096
#define MAX_DIM (1 << 20)

lp_flash_convert_params lp_flash_convert_default_params(void) {
    return (lp_flash_convert_params){
        .predictor = LP_FLASH_PRED_SVD,
        .rank = 0,
        .energy = 0.9f,
        .max_pred_frac = 0.05f,
        .seed = 1,
    };
}

void lp_flash_convert_report_free(lp_flash_convert_report *r) {
    if (!r) return;
    free(r->layers);
    r->layers = NULL;
    r->n_layer = 0;
}

bool lp_flash_is_flash(const lp_gguf *g) { return g && lp_gguf_find_key(g, KEY_VERSION) >= 0; }

/* {arch}.suffix as a count in [1, max]. */
static loupe_status read_dim(const lp_gguf *g, const char *arch, const char *suffix, int64_t max, int *out, lp_error *err) {
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v = 0;
    loupe_status st = lp_gguf_get_u32(g, key, &v, err);
    if (st != LOUPE_OK) return st;
    if (v == 0 || (int64_t)v > max)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %" PRIu32 " is out of range [1, %" PRId64 "]", g->path, key, v, max);
    *out = (int)v;
    return LOUPE_OK;
}

/* A row-type key: a ggml type loupe can compute with, rows of n_embd whole blocks. */
static loupe_status read_row_type(const lp_gguf *g, const char *key, int n_embd, lp_type *type, size_t *row_bytes,
                                  lp_error *err) {
    uint32_t t = 0;
    loupe_status st = lp_gguf_get_u32(g, key, &t, err);
    if (st != LOUPE_OK) return st;
    if (!lp_type_valid(t))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %" PRIu32 " is not a ggml type", g->path, key, t);
    if (!lp_type_can_dequantize((lp_type)t))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %" PRIu32 " (%s) is a type loupe cannot dequantize", g->path, key,
                       t, lp_type_name(t));
    size_t rb = lp_row_size((lp_type)t, n_embd);
    if (rb == 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s = %s: n_embd = %d is not a multiple of its block size %" PRId64,
                       g->path, key, lp_type_name(t), n_embd, lp_type_block_size((lp_type)t));
    *type = (lp_type)t;
    *row_bytes = rb;
    return LOUPE_OK;
}

/* An integer array of exactly n elements (any integer element type). */
static loupe_status read_int_arr(const lp_gguf *g, const char *key, int64_t n, const lp_gguf_value **out, lp_error *err) {
    const lp_gguf_value *v = lp_gguf_get(g, key);
    if (!v) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s not found", g->path, key);
    bool ints = false;
    if (v->type == LP_GGUF_ARRAY) switch (v->v.arr.elem) {
        case LP_GGUF_UINT8: case LP_GGUF_INT8: case LP_GGUF_UINT16: case LP_GGUF_INT16:
        case LP_GGUF_UINT32: case LP_GGUF_INT32: case LP_GGUF_UINT64: case LP_GGUF_INT64:
            ints = true;
            break;
        default:
            break;
        }
    if (!ints)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s is %s, expected an array of integers", g->path, key,
                       v->type == LP_GGUF_ARRAY ? "an array of another type" : lp_gguf_vtype_name(v->type));
    if ((int64_t)v->v.arr.n != n)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s has %" PRIu64 " elements, expected n_layer = %" PRId64, g->path, key,
                       v->v.arr.n, n);
    *out = v;
    return LOUPE_OK;
}

/* A 2-d tensor of the given type and shape [ne0, ne1]. */
static loupe_status check_tensor(const lp_gguf *g, const char *name, lp_type type, int64_t ne0, int64_t ne1,
                                 const lp_gguf_tensor **out, lp_error *err) {
    int64_t i = lp_gguf_find_tensor(g, name);
    if (i < 0) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s is missing", g->path, name);
    const lp_gguf_tensor *t = &g->tensors[i];
    if (t->type != type)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s has type %s, expected %s", g->path, name, lp_type_name(t->type),
                       lp_type_name(type));
    if (t->n_dims != 2 || t->ne[0] != ne0 || t->ne[1] != ne1)
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: tensor %s has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (%" PRIu32
                       " dims), expected [%" PRId64 ", %" PRId64 "]",
                       g->path, name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->n_dims, ne0, ne1);
    if (out) *out = t;
    return LOUPE_OK;
}

/* true if name is blk.<L>.ffn_{gate,up,down}.weight (any L). */
static bool is_dense_ffn(const char *name) {
    int n = 0;
    unsigned layer;
    char part[8];
    if (sscanf(name, "blk.%u.ffn_%7[a-z].weight%n", &layer, part, &n) != 2 || n == 0 || name[n] != '\0') return false;
    return !strcmp(part, "gate") || !strcmp(part, "up") || !strcmp(part, "down");
}

loupe_status lp_flash_ffn_widths(const lp_gguf *g, const char *arch, int n_layer, int *widths, int *max, lp_error *err) {
    char key[96];
    snprintf(key, sizeof key, "%s.feed_forward_length", arch);
    const lp_gguf_value *v = lp_gguf_get(g, key);
    *max = 0;
    if (v && v->type == LP_GGUF_ARRAY) {
        if (v->v.arr.n != (uint64_t)n_layer)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s has %" PRIu64 " entries, expected %d (one per layer)", g->path,
                           key, v->v.arr.n, n_layer);
        for (int l = 0; l < n_layer; l++) {
            int64_t x;
            if (!lp_gguf_arr_int(v, (uint64_t)l, &x) || x < 1 || x > MAX_DIM)
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: entry %d is out of range [1, %d]", g->path, key, l, MAX_DIM);
            widths[l] = (int)x;
            if (widths[l] > *max) *max = widths[l];
        }
        return LOUPE_OK;
    }
    int n = 0;
    loupe_status st = read_dim(g, arch, "feed_forward_length", MAX_DIM, &n, err);
    if (st != LOUPE_OK) return st;
    for (int l = 0; l < n_layer; l++) widths[l] = n;
    *max = n;
    return LOUPE_OK;
}

loupe_status lp_flash_layout_read(const lp_gguf *g, lp_flash_layout *out, lp_error *err) {
    if (!g || !out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_flash_layout_read: NULL file or layout");
    const char *path = g->path;
    loupe_status st;
    lp_flash_layout L;
    memset(&L, 0, sizeof L);

    uint32_t version = 0;
    if ((st = lp_gguf_get_u32(g, KEY_VERSION, &version, err)) != LOUPE_OK) return st;
    if (version != LP_FLASH_VERSION)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_VERSION " = %" PRIu32 " is not supported (expected %d)", path,
                       version, LP_FLASH_VERSION);

    /* Every bundle must start on a direct-I/O boundary: the data section and
     * every tensor offset are multiples of general.alignment. */
    if (g->alignment % LP_FLASH_FILE_ALIGN != 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key general.alignment = %" PRIu64 " is not a multiple of %d", path,
                       g->alignment, LP_FLASH_FILE_ALIGN);

    const char *arch = NULL;
    if ((st = lp_gguf_get_str(g, "general.architecture", &arch, err)) != LOUPE_OK) return st;
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0 && strcmp(arch, "openelm") != 0)
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: key general.architecture = \"%s\" is not a flash decoder (llama, qwen2, openelm)", path, arch);
    if ((st = read_dim(g, arch, "block_count", MAX_LAYER, &L.n_layer, err)) != LOUPE_OK) return st;
    if (L.n_layer > LP_FLASH_MAX_LAYER)
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: %d layers (the flash layout holds at most %d)", path, L.n_layer,
                       LP_FLASH_MAX_LAYER);
    if ((st = read_dim(g, arch, "embedding_length", MAX_DIM, &L.n_embd, err)) != LOUPE_OK) return st;
    if ((st = lp_flash_ffn_widths(g, arch, L.n_layer, L.n_ff_layer, &L.n_ff, err)) != LOUPE_OK) return st;

    if ((st = read_row_type(g, KEY_GATE_TYPE, L.n_embd, &L.gate_type, &L.gate_bytes, err)) != LOUPE_OK) return st;
    if ((st = read_row_type(g, KEY_UP_TYPE, L.n_embd, &L.up_type, &L.up_bytes, err)) != LOUPE_OK) return st;
    if ((st = read_row_type(g, KEY_DOWN_TYPE, L.n_embd, &L.down_type, &L.down_bytes, err)) != LOUPE_OK) return st;

    uint32_t bundle_bytes = 0, stride = 0;
    if ((st = lp_gguf_get_u32(g, KEY_BUNDLE_BYTES, &bundle_bytes, err)) != LOUPE_OK) return st;
    size_t want = L.gate_bytes + L.up_bytes + L.down_bytes; /* each < MAX_DIM * 4 bytes: no overflow */
    if (bundle_bytes != want)
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: key " KEY_BUNDLE_BYTES " = %" PRIu32 ", but the rows of %d elements take %zu + %zu + %zu = %zu bytes "
                       "(%s, %s, %s)",
                       path, bundle_bytes, L.n_embd, L.gate_bytes, L.up_bytes, L.down_bytes, want, lp_type_name(L.gate_type),
                       lp_type_name(L.up_type), lp_type_name(L.down_type));
    if ((st = lp_gguf_get_u32(g, KEY_STRIDE, &stride, err)) != LOUPE_OK) return st;
    if (stride % LP_FLASH_BUNDLE_ALIGN != 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_STRIDE " = %" PRIu32 " is not a multiple of %d", path, stride,
                       LP_FLASH_BUNDLE_ALIGN);
    if (stride < bundle_bytes)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_STRIDE " = %" PRIu32 " is less than " KEY_BUNDLE_BYTES " = %" PRIu32,
                       path, stride, bundle_bytes);
    L.bundle_bytes = bundle_bytes;
    L.stride = stride;

    const lp_gguf_value *offsets = NULL;
    if ((st = read_int_arr(g, KEY_OFFSETS, L.n_layer, &offsets, err)) != LOUPE_OK) return st;

    const char *pred = NULL;
    if ((st = lp_gguf_get_str(g, KEY_PREDICTOR, &pred, err)) != LOUPE_OK) return st;
    if (strcmp(pred, "svd") != 0 && strcmp(pred, "lowrank") != 0 && strcmp(pred, "none") != 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PREDICTOR " = \"%s\" is not a predictor (svd, lowrank, none)", path,
                       pred);
    snprintf(L.predictor, sizeof L.predictor, "%s", pred);
    const bool has_pred = strcmp(pred, "none") != 0;

    const lp_gguf_value *ranks = NULL, *energy = NULL;
    if (has_pred) {
        if ((st = read_int_arr(g, KEY_PRED_RANK, L.n_layer, &ranks, err)) != LOUPE_OK) return st;
        /* svd states the captured energy; a trained predictor may */
        energy = lp_gguf_get(g, KEY_PRED_ENERGY);
        if (!energy && !strcmp(pred, "svd"))
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PRED_ENERGY " not found (required for predictor \"svd\")", path);
        if (energy) {
            if (energy->type != LP_GGUF_ARRAY || energy->v.arr.elem != LP_GGUF_FLOAT32)
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PRED_ENERGY " is not an array of f32", path);
            if ((int64_t)energy->v.arr.n != L.n_layer)
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PRED_ENERGY " has %" PRIu64 " elements, expected n_layer = %d",
                               path, energy->v.arr.n, L.n_layer);
        }
    }

    const lp_gguf_value *source = lp_gguf_get(g, KEY_SOURCE);
    if (source && source->type != LP_GGUF_STRING)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_SOURCE " is %s, expected str", path, lp_gguf_vtype_name(source->type));

    char name[64];
    for (int l = 0; l < L.n_layer; l++) {
        const int n_ff = L.n_ff_layer[l], max_rank = L.n_embd < n_ff ? L.n_embd : n_ff;
        const lp_gguf_tensor *t = NULL;
        snprintf(name, sizeof name, "blk.%d.ffn_bundle", l);
        if ((st = check_tensor(g, name, LP_TYPE_I8, (int64_t)L.stride, n_ff, &t, err)) != LOUPE_OK) return st;
        int64_t off = 0;
        if (!lp_gguf_arr_int(offsets, (uint64_t)l, &off) || off < 0 || (uint64_t)off != t->offset)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_OFFSETS "[%d] = %" PRId64 ", but tensor %s is at offset %" PRIu64,
                           path, l, off, name, t->offset);
        if (!has_pred) continue;
        int64_t rank = 0;
        if (!lp_gguf_arr_int(ranks, (uint64_t)l, &rank) || rank < 1 || rank > max_rank)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PRED_RANK "[%d] = %" PRId64 " is out of range [1, %d]", path, l,
                           rank, max_rank);
        if (energy) {
            float e = ((const float *)energy->v.arr.data)[l];
            if (!(e >= 0.0f && e <= 1.01f)) /* a little over 1 from rounding is harmless */
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " KEY_PRED_ENERGY "[%d] = %g is not in [0, 1]", path, l, (double)e);
        }
        snprintf(name, sizeof name, "blk.%d.ffn_pred_a", l);
        if ((st = check_tensor(g, name, LP_TYPE_F16, L.n_embd, rank, NULL, err)) != LOUPE_OK) return st;
        snprintf(name, sizeof name, "blk.%d.ffn_pred_b", l);
        if ((st = check_tensor(g, name, LP_TYPE_F16, rank, n_ff, NULL, err)) != LOUPE_OK) return st;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (is_dense_ffn(g->tensors[i].name))
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s is left in a flash file (its rows belong in the bundles)", path,
                           g->tensors[i].name);

    *out = L;
    return LOUPE_OK;
}
