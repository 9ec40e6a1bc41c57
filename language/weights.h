/* language/weights.h — the one interface through which model code reaches
 * its weights.
 *
 * Model code never touches a GGUF mapping directly. It asks a weight store
 * for a tensor (whole) or for some rows of it. The resident store (this
 * file's lp_weights_resident) answers from the mmap'd GGUF; the flash store
 * (language/flash.c, issue #7) answers from a bounded DRAM cache fed by
 * direct I/O. Swapping one for the other touches no model code.
 *
 * Lifetime: a pointer from lp_ws_get() stays valid until the matching
 * lp_ws_release(). The resident store makes release a no-op; the flash store
 * uses it to recycle buffers, so model code must release what it got,
 * layer by layer. */
#ifndef LP_WEIGHTS_H
#define LP_WEIGHTS_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/types.h"

/* A tensor's description; data is filled by lp_ws_get. */
typedef struct lp_tensor {
    const char *name;
    lp_type type;
    int n_dims;
    int64_t ne[4];     /* ggml order: ne[0] = row length (input dim of a matrix) */
    size_t row_bytes;  /* lp_row_size(type, ne[0]) */
    int64_t n_rows;    /* ne[1] * ne[2] * ne[3] */
    int id;            /* store-private handle */
} lp_tensor;

typedef struct lp_weight_store lp_weight_store;

typedef struct lp_weight_store_ops {
    /* Describe a tensor by name; LOUPE_ERR_FORMAT naming file+tensor if absent. */
    loupe_status (*lookup)(lp_weight_store *ws, const char *name, lp_tensor *out, lp_error *err);
    /* Whole tensor data, n_rows * row_bytes bytes. */
    loupe_status (*get)(lp_weight_store *ws, const lp_tensor *t, const void **data, lp_error *err);
    void (*release)(lp_weight_store *ws, const lp_tensor *t);
    /* Copy rows rows[0..n) of t, each row_bytes, into dst (n * row_bytes). */
    loupe_status (*get_rows)(lp_weight_store *ws, const lp_tensor *t, const int64_t *rows, int64_t n, void *dst, lp_error *err);
    void (*free)(lp_weight_store *ws);
} lp_weight_store_ops;

struct lp_weight_store {
    const lp_weight_store_ops *ops;
    const lp_gguf *gguf; /* the file the store reads (metadata, names) */
};

static inline loupe_status lp_ws_lookup(lp_weight_store *ws, const char *name, lp_tensor *out, lp_error *err) {
    return ws->ops->lookup(ws, name, out, err);
}
static inline loupe_status lp_ws_get(lp_weight_store *ws, const lp_tensor *t, const void **data, lp_error *err) {
    return ws->ops->get(ws, t, data, err);
}
static inline void lp_ws_release(lp_weight_store *ws, const lp_tensor *t) { ws->ops->release(ws, t); }
static inline loupe_status lp_ws_get_rows(lp_weight_store *ws, const lp_tensor *t, const int64_t *rows, int64_t n, void *dst, lp_error *err) {
    return ws->ops->get_rows(ws, t, rows, n, dst, err);
}
static inline void lp_ws_free(lp_weight_store *ws) { if (ws) ws->ops->free(ws); }

/* The resident store over an open GGUF (not owned: close it after lp_ws_free). */
lp_weight_store *lp_weights_resident(const lp_gguf *g, lp_error *err);

#endif
