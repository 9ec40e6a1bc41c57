/* language/flash.h — the flash weight store: runs a decoder whose weights
 * stay on storage, within a fixed DRAM budget (LLM in a flash, Alizadeh et
 * al. 2023).
 *
 * It serves a flash-layout GGUF (language/flash_format.h, written by
 * `loupe convert --flash`) through the weight-store interface
 * (language/weights.h), so the decoder does not know which store it runs on.
 * Everything it keeps in DRAM is allocated once, at open, inside the budget:
 *
 *   resident   norms, biases, the output head, the sparsity predictors
 *              (and token_embd when the head is tied to it)
 *   attention  every layer's attention matrices when they fit; otherwise two
 *              stream buffers: while one layer (or, on a very small budget,
 *              one tensor) is computed, the next is read into the other
 *   neurons    per layer, a preallocated matrix of FFN bundles (gate row,
 *              up row, down column): the neurons used in the last `window`
 *              steps stay; deletion moves the last bundle into the hole
 *              (swap-with-last), insertion appends; nothing is allocated per
 *              token. Requests that do not fit go through a stream buffer.
 *   I/O        a staging buffer for coalesced reads and a row buffer for
 *              token embeddings, which are read row by row when needed
 *   bookkeeping per-neuron slot maps
 *
 * Reads bypass the page cache (O_DIRECT with 4096-aligned offsets, lengths
 * and buffers; where the file system refuses O_DIRECT, buffered reads
 * followed by POSIX_FADV_DONTNEED). Missing neurons are read in runs: ids
 * whose bundles lie within min_read of each other share one read, and a
 * read is at least min_read long; runs are issued to io_threads threads at
 * once. Attention prefetch overlaps the computation; a request's missing
 * neurons are read by a loader thread while the caller computes with the
 * neurons already in memory (get_bundles_async / wait_bundles); the time
 * the caller still waits is stats.io_wait_ns.
 *
 * One forward pass at a time: the store's mutex (ws->serial) is held by the
 * decoder for a whole pass, so several contexts may share a flash model but
 * take turns. Opening a flash store sets OpenBLAS to one thread for the
 * process (its idle threads spin and starve the I/O threads on small
 * machines; flash mode is bound by reads). */
#ifndef LP_FLASH_H
#define LP_FLASH_H

#include "flash_format.h"
#include "weights.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct lp_flash_params {
    size_t budget;          /* DRAM bytes for everything above (> 0) */
    int window;             /* keep neurons used in the last `window` steps (default 5; 0 = no reuse) */
    int io_threads;         /* parallel reads (default 8; 0 = read in the calling thread) */
    size_t min_read;        /* bytes; coalesced reads are at least this long (default 32 KiB) */
    bool direct_io;         /* try O_DIRECT (default true) */
    float expected_active;  /* fraction of FFN neurons a step uses (default 0.5): decides whether
                               attention stays resident or is streamed to leave room for neurons */
} lp_flash_params;

lp_flash_params lp_flash_default_params(void);

/* How the budget was spent (all bytes as allocated). */
typedef struct lp_flash_plan {
    size_t budget;
    size_t resident_bytes;     /* norms, biases, output head, predictors (+ tied embeddings) */
    size_t attention_bytes;    /* resident attention, or the two stream buffers */
    int attention_mode;        /* 0 resident, 1 streamed per layer, 2 streamed per tensor */
    size_t cache_bytes;        /* neuron matrices of all layers */
    int cache_bundles;         /* capacity per layer */
    size_t stream_bytes;       /* bundle stream buffer */
    int stream_bundles;
    size_t io_bytes;           /* staging + embedding row buffer */
    size_t bookkeeping_bytes;  /* slot maps */
    size_t total_bytes;        /* the sum; <= budget */
    size_t file_bytes;         /* the model file, for reference */
    bool direct_io;            /* O_DIRECT in use */
} lp_flash_plan;

/* Open the store over a flash-layout GGUF (g stays owned by the caller and
 * must outlive the store; the store opens g->path again for its reads).
 * LOUPE_ERR_FORMAT if g is not a flash layout (naming the file and the
 * conversion command), LOUPE_ERR_LIMIT if the budget is below the minimum
 * (the message gives the minimum), LOUPE_ERR_IO for read failures. */
lp_weight_store *lp_weights_flash(const lp_gguf *g, const lp_flash_params *p, lp_error *err);

/* The plan of a flash store; NULL for any other store. */
const lp_flash_plan *lp_flash_get_plan(const lp_weight_store *ws);

#endif
