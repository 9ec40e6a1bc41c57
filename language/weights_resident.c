/* language/weights_resident.c — the resident weight store: every tensor is
 * answered straight from the read-only GGUF mapping.
 *
 * get() hands out a pointer into the mapping and release() does nothing; the
 * store still checks every handle and row index it is given, so model code
 * that works here also works against the flash store, which cannot afford to
 * trust its callers. */
#include "weights.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct resident_store {
    lp_weight_store base; /* first member: the ops receive &base */
} resident_store;

static const char *store_path(const lp_weight_store *ws) {
    return ws->gguf && ws->gguf->path ? ws->gguf->path : "(gguf)";
}

/* The gguf tensor a handle refers to, or NULL if the handle is stale/bogus. */
static const lp_gguf_tensor *handle_tensor(const lp_weight_store *ws, const lp_tensor *t) {
    const lp_gguf *g = ws->gguf;
    if (!t || t->id < 0 || (uint64_t)t->id >= g->n_tensors) return NULL;
    const lp_gguf_tensor *gt = &g->tensors[t->id];
    if (gt->type != t->type || gt->ne[0] != t->ne[0]) return NULL;
    return gt;
}

loupe_status lp_ws_lookup_gguf(lp_weight_store *ws, const char *name, lp_tensor *out, lp_error *err) {
    const lp_gguf *g = ws->gguf;
    int64_t idx = name ? lp_gguf_find_tensor(g, name) : -1;
    if (idx < 0) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s not found", store_path(ws), name ? name : "(null)");
    }
    if (idx > INT32_MAX) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: tensor %s: index %lld too large", store_path(ws), name, (long long)idx);
    }
    const lp_gguf_tensor *gt = &g->tensors[idx];
    size_t row_bytes = lp_row_size(gt->type, gt->ne[0]);
    if (row_bytes == 0) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: row length %lld is not a whole number of %s blocks",
                       store_path(ws), name, (long long)gt->ne[0],
                       lp_type_name(gt->type) ? lp_type_name(gt->type) : "?");
    }
    int64_t n_rows = 1;
    for (int d = 1; d < LP_GGUF_MAX_DIMS; d++) {
        if (gt->ne[d] < 0 || (gt->ne[d] > 0 && n_rows > INT64_MAX / gt->ne[d])) {
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: bad dimensions", store_path(ws), name);
        }
        n_rows *= gt->ne[d];
    }
    if (n_rows > 0 && row_bytes > UINT64_MAX / (uint64_t)n_rows) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: size overflows", store_path(ws), name);
    }
    if ((uint64_t)n_rows * row_bytes != gt->nbytes) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: %llu bytes, expected %llu",
                       store_path(ws), name, (unsigned long long)gt->nbytes,
                       (unsigned long long)((uint64_t)n_rows * row_bytes));
    }
    memset(out, 0, sizeof *out);
    out->name = gt->name;
    out->type = gt->type;
    out->n_dims = (int)gt->n_dims;
    for (int d = 0; d < 4; d++) out->ne[d] = gt->ne[d];
    out->row_bytes = row_bytes;
    out->n_rows = n_rows;
    out->id = (int)idx;
    return LOUPE_OK;
}

static loupe_status resident_get(lp_weight_store *ws, const lp_tensor *t, const void **data, lp_error *err) {
    const lp_gguf_tensor *gt = handle_tensor(ws, t);
    if (!gt) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: invalid tensor handle %s", store_path(ws),
                       t && t->name ? t->name : "(null)");
    }
    if (!gt->data) {
        return lp_fail(err, LOUPE_ERR_IO, "%s: tensor %s has no mapped data", store_path(ws), gt->name);
    }
    *data = gt->data;
    return LOUPE_OK;
}

static void resident_release(lp_weight_store *ws, const lp_tensor *t) {
    (void)ws;
    (void)t; /* the mapping stays for the life of the gguf */
}

static loupe_status resident_get_rows(lp_weight_store *ws, const lp_tensor *t, const int64_t *rows, int64_t n,
                                      void *dst, lp_error *err) {
    const void *base = NULL;
    loupe_status st = resident_get(ws, t, &base, err);
    if (st != LOUPE_OK) return st;
    if (n < 0 || (n > 0 && (!rows || !dst))) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: tensor %s: bad row request", store_path(ws), t->name);
    }
    /* check all first, so a failed call writes nothing */
    for (int64_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= t->n_rows) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: tensor %s: row %lld out of range [0, %lld)",
                           store_path(ws), t->name, (long long)rows[i], (long long)t->n_rows);
        }
    }
    const uint8_t *src = base;
    uint8_t *out = dst;
    for (int64_t i = 0; i < n; i++) {
        memcpy(out + (size_t)i * t->row_bytes, src + (size_t)rows[i] * t->row_bytes, t->row_bytes);
    }
    return LOUPE_OK;
}

/* Flash layout run resident: a bundle is read where the mapping has it. */
static loupe_status resident_get_bundles(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out,
                                         lp_error *err) {
    const lp_gguf *g = ws->gguf;
    char name[64];
    snprintf(name, sizeof name, "blk.%d.ffn_bundle", il);
    int64_t idx = lp_gguf_find_tensor(g, name); /* a few hundred names: cheap next to the layer's FFN */
    if (idx < 0 || !g->tensors[idx].data || g->tensors[idx].type != LP_TYPE_I8) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s not found (not a flash layout?)", store_path(ws), name);
    }
    const lp_gguf_tensor *gt = &g->tensors[idx];
    const size_t stride = (size_t)gt->ne[0];
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= gt->ne[1]) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: %s: neuron %d out of range [0, %lld)", store_path(ws), gt->name,
                           (int)ids[i], (long long)gt->ne[1]);
        }
        out[i] = (const uint8_t *)gt->data + (size_t)ids[i] * stride;
    }
    ws->stats.neuron_hits += (uint64_t)n;
    return LOUPE_OK;
}

static void resident_release_bundles(lp_weight_store *ws, int il) {
    (void)ws;
    (void)il;
}

static void resident_free(lp_weight_store *ws) {
    free((resident_store *)ws);
}

static const lp_weight_store_ops resident_ops = {
    .lookup = lp_ws_lookup_gguf,
    .get = resident_get,
    .release = resident_release,
    .get_rows = resident_get_rows,
    .free = resident_free,
    .get_bundles = resident_get_bundles,
    .release_bundles = resident_release_bundles,
};

lp_weight_store *lp_weights_resident(const lp_gguf *g, lp_error *err) {
    if (!g) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_weights_resident: no gguf");
        return NULL;
    }
    resident_store *s = calloc(1, sizeof *s);
    if (!s) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for the weight store", g->path ? g->path : "(gguf)");
        return NULL;
    }
    s->base.ops = &resident_ops;
    s->base.gguf = g;
    s->base.max_bundles = INT32_MAX;
    return &s->base;
}
