/* language/weights.h — the one interface through which model code reaches
 * its weights.
 *
 * Model code never touches a GGUF mapping directly. It asks a weight store
 * for a tensor (whole) or for some rows of it. The resident store (this
 * file's lp_weights_resident) answers from the mmap'd GGUF; the flash store
 * (language/flash.h) answers from a bounded DRAM cache fed by direct I/O. Swapping one for the other touches no model code.
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

#include <pthread.h>

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

/* Counters a store keeps (cumulative; callers take differences around a
 * token to get per-token figures). The decoder adds the ffn_* counts. */
typedef struct lp_ws_stats {
    uint64_t bytes_read;     /* bytes read from storage (aligned ranges as issued) */
    uint64_t reads;          /* read requests issued */
    uint64_t neuron_hits;    /* FFN bundles served from the neuron cache */
    uint64_t neuron_misses;  /* FFN bundles that had to be read */
    uint64_t ffn_active;     /* FFN neurons computed (flash layout, decode) */
    uint64_t ffn_total;      /* FFN neurons the dense model would compute */
    uint64_t io_wait_ns;     /* time the computing thread waited for reads */
    uint64_t steps;          /* forward passes begun (lp_ws_step) */
} lp_ws_stats;

typedef struct lp_weight_store_ops {
    /* Describe a tensor by name; LOUPE_ERR_FORMAT naming file+tensor if absent. */
    loupe_status (*lookup)(lp_weight_store *ws, const char *name, lp_tensor *out, lp_error *err);
    /* Whole tensor data, n_rows * row_bytes bytes. */
    loupe_status (*get)(lp_weight_store *ws, const lp_tensor *t, const void **data, lp_error *err);
    void (*release)(lp_weight_store *ws, const lp_tensor *t);
    /* Copy rows rows[0..n) of t, each row_bytes, into dst (n * row_bytes). */
    loupe_status (*get_rows)(lp_weight_store *ws, const lp_tensor *t, const int64_t *rows, int64_t n, void *dst, lp_error *err);
    void (*free)(lp_weight_store *ws);
    /* ---- flash layout (language/flash_format.h) ----
     * Addresses of the bundles of neurons ids[0..n) of layer il (gate row, up
     * row, down column; loupe.flash.bundle_stride apart in the file), valid
     * until release_bundles(il). n <= max_bundles. ids ascending, in range. */
    loupe_status (*get_bundles)(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out, lp_error *err);
    void (*release_bundles)(lp_weight_store *ws, int il);
    /* Optional (NULL: use get_bundles): the same request, returning before
     * the misses are read so the caller can compute with the hits
     * (ready[i] = 1) meanwhile; wait_bundles must follow before the others
     * are touched, and before any other call on the store. */
    loupe_status (*get_bundles_async)(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out,
                                      uint8_t *ready, lp_error *err);
    loupe_status (*wait_bundles)(lp_weight_store *ws, int il, lp_error *err);
} lp_weight_store_ops;

struct lp_weight_store {
    const lp_weight_store_ops *ops;
    const lp_gguf *gguf; /* the file the store reads (metadata, names) */
    lp_ws_stats stats;
    int max_bundles;     /* most ids one get_bundles call may ask for */
    /* Non-NULL when the store has per-call state (the flash store): the
     * decoder holds it for a whole forward pass, so contexts sharing the
     * model take turns instead of racing on the store's buffers. */
    pthread_mutex_t *serial;
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
static inline loupe_status lp_ws_get_bundles(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out,
                                             lp_error *err) {
    return ws->ops->get_bundles(ws, il, ids, n, out, err);
}
static inline void lp_ws_release_bundles(lp_weight_store *ws, int il) { ws->ops->release_bundles(ws, il); }
static inline int lp_ws_max_bundles(const lp_weight_store *ws) { return ws->max_bundles; }
/* A copy of the counters, taken under the store's lock when it has one.
 * They are store-wide: while several contexts decode on one flash model,
 * each one's differences include the others' reads. */
static inline lp_ws_stats lp_ws_stats_get(lp_weight_store *ws) {
    if (ws->serial) pthread_mutex_lock(ws->serial);
    lp_ws_stats s = ws->stats;
    if (ws->serial) pthread_mutex_unlock(ws->serial);
    return s;
}

/* A forward pass begins: the flash store's window counts these. */
static inline void lp_ws_step(lp_weight_store *ws) { ws->stats.steps++; }

/* Describe tensor `name` of ws->gguf (shape, type, row size, checked against
 * the file): the lookup op of the resident and the flash store. */
loupe_status lp_ws_lookup_gguf(lp_weight_store *ws, const char *name, lp_tensor *out, lp_error *err);

/* The resident store over an open GGUF (not owned: close it after lp_ws_free). */
lp_weight_store *lp_weights_resident(const lp_gguf *g, lp_error *err);

#endif
