/* language/flash.c — the flash weight store (see flash.h for the design).
 *
 * Layout, top to bottom:
 *   I/O         aligned reads, the I/O thread pool, batches
 *   roles       which tensor lives where (resident, streamed, rows, bundles)
 *   plan        spending the budget
 *   streaming   attention groups in two buffers with prefetch
 *   neurons     the per-layer bundle matrices (window, swap-with-last)
 *   ops         the weight-store interface
 *   open/free */
#include "flash.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define IO_ALIGN 4096              /* O_DIRECT offset/length/buffer alignment used everywhere */
#define MAX_IO_THREADS 16
#define MAX_READ (256u << 10)      /* longer ranges are split into reads this long, issued together */
#define IO_QUEUE 1024              /* pending reads */
#define STAGING_DEFAULT (1u << 20) /* coalesced-read staging, bytes */
#define STAGING_MIN (128u << 10)
#define STREAM_BUNDLES_DEFAULT 256 /* bundle stream buffer, bundles */
#define STREAM_BUNDLES_MIN 16
#define CACHE_BUNDLES_MIN 16       /* per layer: below this the neuron cache is pointless */

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
static uint64_t align_down64(uint64_t n, uint64_t a) { return n / a * a; }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// ----------------------------------------------------------------------------
// I/O: every read is (aligned file offset, aligned length, aligned buffer)

typedef struct io_batch {
    int pending;   /* reads not finished */
    int error;     /* first errno seen (EIO for a short read inside the file) */
    uint64_t bytes;
    int reads;
} io_batch;

typedef struct io_req {
    uint64_t off;
    size_t len;
    uint8_t *dst;
    io_batch *batch;
} io_req;

typedef struct io_pool {
    int fd;
    uint64_t file_size;
    bool direct;               /* fd has O_DIRECT; else fadvise DONTNEED after reads */
    int n_threads;
    pthread_t threads[MAX_IO_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t work, done, room;
    io_req queue[IO_QUEUE];    /* ring */
    int head, count;
    bool stop;
} io_pool;

/* One aligned read, whole or failed. Bytes past the end of the file read as
 * zeros (an aligned range may run past it). Returns 0 or an errno. */
static int read_aligned(io_pool *io, uint64_t off, size_t len, uint8_t *dst) {
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(io->fd, dst + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    if (done < len) {
        if (off + done < io->file_size) return EIO; /* short inside the file: truncated underneath us */
        memset(dst + done, 0, len - done);
    }
    if (!io->direct) posix_fadvise(io->fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
    return 0;
}

static void *io_thread(void *p) {
    io_pool *io = p;
    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (!io->stop && io->count == 0) pthread_cond_wait(&io->work, &io->mu);
        if (io->stop && io->count == 0) break;
        io_req r = io->queue[io->head];
        io->head = (io->head + 1) % IO_QUEUE;
        io->count--;
        pthread_cond_signal(&io->room);
        pthread_mutex_unlock(&io->mu);
        int e = read_aligned(io, r.off, r.len, r.dst);
        pthread_mutex_lock(&io->mu);
        if (e && !r.batch->error) r.batch->error = e;
        r.batch->bytes += r.len;
        r.batch->reads++;
        if (--r.batch->pending == 0) pthread_cond_broadcast(&io->done);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

/* Queue one read of batch b (or do it now without threads). */
static void io_submit(io_pool *io, io_batch *b, uint64_t off, size_t len, uint8_t *dst) {
    if (io->n_threads == 0) {
        int e = read_aligned(io, off, len, dst);
        if (e && !b->error) b->error = e;
        b->bytes += len;
        b->reads++;
        return;
    }
    pthread_mutex_lock(&io->mu);
    while (io->count == IO_QUEUE) pthread_cond_wait(&io->room, &io->mu);
    io->queue[(io->head + io->count) % IO_QUEUE] = (io_req){off, len, dst, b};
    io->count++;
    b->pending++;
    pthread_cond_signal(&io->work);
    pthread_mutex_unlock(&io->mu);
}

/* A long aligned range as several reads of at most MAX_READ bytes, so the
 * I/O threads read it in parallel (one 1 MiB read at a time runs at less
 * than half this disk's bandwidth). */
static void io_submit_split(io_pool *io, io_batch *b, uint64_t off, size_t len, uint8_t *dst) {
    while (len > 0) {
        size_t n = len < MAX_READ ? len : MAX_READ;
        io_submit(io, b, off, n, dst);
        off += n, dst += n, len -= n;
    }
}

static void io_wait(io_pool *io, io_batch *b) {
    if (io->n_threads == 0) return;
    pthread_mutex_lock(&io->mu);
    while (b->pending > 0) pthread_cond_wait(&io->done, &io->mu);
    pthread_mutex_unlock(&io->mu);
}

static void io_stop(io_pool *io) {
    if (io->n_threads > 0) {
        pthread_mutex_lock(&io->mu);
        io->stop = true;
        pthread_cond_broadcast(&io->work);
        pthread_mutex_unlock(&io->mu);
        for (int i = 0; i < io->n_threads; i++) pthread_join(io->threads[i], NULL);
        pthread_mutex_destroy(&io->mu);
        pthread_cond_destroy(&io->work);
        pthread_cond_destroy(&io->done);
        pthread_cond_destroy(&io->room);
    }
    if (io->fd >= 0) close(io->fd);
}

static void *aligned_alloc_zero(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, IO_ALIGN, n ? n : IO_ALIGN) != 0) return NULL;
    memset(p, 0, n ? n : IO_ALIGN); /* touch it now: the budget is RSS, not address space */
    return p;
}

// ----------------------------------------------------------------------------
// roles

enum role { ROLE_RESIDENT, ROLE_STREAM, ROLE_ROWS, ROLE_BUNDLE };

typedef struct stream_group {
    int first, count;   /* range in flash_store.stream_order */
    size_t bytes;       /* buffer bytes: sum of the tensors' aligned sizes */
} stream_group;

typedef struct stream_buf {
    uint8_t *mem;       // (group bytes) the group's tensors, each at a 4096-aligned place
    int group;          /* loaded or loading, -1 none */
    int refs;           /* gets not yet released */
    io_batch batch;     /* the read in flight */
    bool loading;
} stream_buf;

typedef struct neuron_cache {
    uint8_t *slots;     // (cap, stride) bundles; slots [0, used) live
    int32_t *neuron;    // (cap) neuron of each slot
    uint64_t *last;     // (cap) step of last use
    uint64_t *pin;      // (cap) call that last handed the slot out
    int32_t *where;     // (n_ff) slot of each neuron, -1 = not cached
    int used, cap;
    uint64_t swept;     /* step whose window eviction is done */
    uint64_t bundle_off;/* file offset of blk.L.ffn_bundle */
} neuron_cache;

/* Misses of the last bundle request, being read (indices into its ids). */
typedef struct pending_read {
    int il;
    const int32_t *ids;    // the request's ids (the caller keeps them until the wait)
    int n_miss;            /* 0: nothing pending; the indices are in flash_store.miss */
    const uint8_t **out;   // the request's destinations
} pending_read;

typedef struct flash_store {
    lp_weight_store base;  /* first member */
    pthread_mutex_t serial;
    lp_flash_params p;
    lp_flash_plan plan;
    lp_flash_layout fl;
    io_pool io;

    int n_tensors;
    uint8_t *role;         // (n_tensors) enum role
    const uint8_t **data;  // (n_tensors) resident data, NULL otherwise
    int *group_of;         // (n_tensors) stream group, -1
    size_t *group_off;     // (n_tensors) offset inside the group buffer

    uint8_t *arena;        // resident tensors, packed (64-byte aligned)
    size_t arena_bytes;

    int *stream_order;     // (n_stream) tensor ids in the order the decoder uses them
    int n_stream;
    stream_group *groups;
    int n_groups;
    stream_buf buf[2];

    neuron_cache *caches;  // (n_layer)
    uint8_t *stream_bundles; // (stream_cap, stride) bundles that did not fit a cache
    int stream_cap;
    uint64_t call;         /* get_bundles calls, for pinning */
    pending_read pend;
    /* the loader thread: reads a request's misses while the caller computes its hits */
    pthread_t ld_thread;
    pthread_mutex_t ld_mu;
    pthread_cond_t ld_cv;
    bool ld_running, ld_job, ld_stop;
    loupe_status ld_status;
    lp_error ld_err;

    uint8_t *staging;      // (staging_bytes) aligned, coalesced reads land here
    size_t staging_bytes;

    int32_t *miss;         // (stream_cap) scratch: indices into the request of missing ids
    int *evict_order;      // (cache cap) scratch for LRU eviction
    bool blas_single;      // this store holds OpenBLAS at one thread (blas_single_acquire)
} flash_store;

/* OpenBLAS's idle threads spin (sched_yield) after every sgemm; on a small
 * machine they take the cores the I/O threads and the pool need (a 7B
 * prefill went from 72 s to 18 s on 2 cores with one thread). Flash mode is
 * bound by reads, not by sgemm, so while any flash store is open OpenBLAS
 * runs one thread; the count it had comes back when the last one closes.
 * The setting is process-wide (OpenBLAS has no per-call count). */
static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_holders, blas_saved_threads;

static void blas_single_acquire(flash_store *s) {
    pthread_mutex_lock(&blas_mu);
    if (blas_holders++ == 0) blas_saved_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    s->blas_single = true;
    pthread_mutex_unlock(&blas_mu);
}

static void blas_single_release(flash_store *s) {
    if (!s->blas_single) return;
    pthread_mutex_lock(&blas_mu);
    if (--blas_holders == 0 && blas_saved_threads > 1) openblas_set_num_threads(blas_saved_threads);
    s->blas_single = false;
    pthread_mutex_unlock(&blas_mu);
}

static const char *fpath(const flash_store *s) { return s->base.gguf->path ? s->base.gguf->path : "(gguf)"; }

/* "blk.N.rest" -> N and rest, or -1. */
static int layer_of(const char *name, const char **rest) {
    if (strncmp(name, "blk.", 4) != 0) return -1;
    char *end = NULL;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > 1000000) return -1;
    if (rest) *rest = end + 1;
    return (int)l;
}

/* Order inside a layer in which the decoder asks for attention tensors. */
static int attn_rank(const char *rest) {
    static const char *order[] = {"attn_qkv.", "attn_q.", "attn_k.", "attn_v.", "attn_output."}; /* qkv: openelm */
    for (int i = 0; i < 5; i++) {
        if (strncmp(rest, order[i], strlen(order[i])) == 0) return i * 2 + (strstr(rest, ".bias") ? 1 : 0);
    }
    return 10;
}

/* qsort_r comparators: the context comes as an argument (two stores may
 * sort at the same time on two threads). */
static int cmp_stream(const void *a, const void *b, void *ctx) {
    const lp_gguf *g = ctx;
    const lp_gguf_tensor *ta = &g->tensors[*(const int *)a];
    const lp_gguf_tensor *tb = &g->tensors[*(const int *)b];
    const char *ra, *rb;
    int la = layer_of(ta->name, &ra), lb = layer_of(tb->name, &rb);
    if (la != lb) return la < lb ? -1 : 1;
    int ka = attn_rank(ra), kb = attn_rank(rb);
    if (ka != kb) return ka < kb ? -1 : 1;
    return ta->offset < tb->offset ? -1 : ta->offset > tb->offset;
}

static size_t stream_size(const lp_gguf_tensor *t) { return align_up((size_t)t->nbytes, IO_ALIGN) + IO_ALIGN; }

/* Roles: per-layer matrices other than the FFN bundles and the predictors
 * are streamable (the attention); token_embd is read by rows unless the head
 * is tied to it; everything else is resident. */
static loupe_status assign_roles(flash_store *s, lp_error *err) {
    const lp_gguf *g = s->base.gguf;
    bool tied = lp_gguf_find_tensor(g, "output.weight") < 0;
    s->n_stream = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        const char *rest = NULL;
        int l = layer_of(t->name, &rest);
        s->group_of[i] = -1;
        if (l >= 0 && strcmp(rest, "ffn_bundle") == 0) {
            s->role[i] = ROLE_BUNDLE;
        } else if (l >= 0 && t->n_dims >= 2 && strncmp(rest, "ffn_pred_", 9) != 0) {
            if (strncmp(rest, "ffn_gate.", 9) == 0 || strncmp(rest, "ffn_up.", 7) == 0 || strncmp(rest, "ffn_down.", 9) == 0) {
                return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: a flash file has no FFN matrices (re-run loupe convert --flash)",
                               fpath(s), t->name);
            }
            s->role[i] = ROLE_STREAM;
            s->stream_order[s->n_stream++] = i;
        } else if (strcmp(t->name, "token_embd.weight") == 0 && !tied) {
            s->role[i] = ROLE_ROWS;
        } else {
            s->role[i] = ROLE_RESIDENT;
        }
    }
    qsort_r(s->stream_order, (size_t)s->n_stream, sizeof(int), cmp_stream, (void *)g);
    return LOUPE_OK;
}

/* Group the streamed tensors per layer (per_tensor: one each). */
static loupe_status make_groups(flash_store *s, bool per_tensor, lp_error *err) {
    const lp_gguf *g = s->base.gguf;
    free(s->groups);
    s->groups = calloc((size_t)(s->n_stream ? s->n_stream : 1), sizeof *s->groups);
    if (!s->groups) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", fpath(s));
    s->n_groups = 0;
    for (int k = 0; k < s->n_stream; k++) {
        const lp_gguf_tensor *t = &g->tensors[s->stream_order[k]];
        int l = layer_of(t->name, NULL);
        bool join = !per_tensor && s->n_groups > 0 &&
                    layer_of(g->tensors[s->stream_order[s->groups[s->n_groups - 1].first]].name, NULL) == l;
        if (!join) s->groups[s->n_groups++] = (stream_group){.first = k, .count = 0, .bytes = 0};
        stream_group *gr = &s->groups[s->n_groups - 1];
        s->group_of[s->stream_order[k]] = s->n_groups - 1;
        s->group_off[s->stream_order[k]] = gr->bytes;
        gr->count++;
        gr->bytes += stream_size(t);
    }
    return LOUPE_OK;
}

static size_t max_group_bytes(const flash_store *s) {
    size_t m = 0;
    for (int i = 0; i < s->n_groups; i++) m = s->groups[i].bytes > m ? s->groups[i].bytes : m;
    return m;
}

// ----------------------------------------------------------------------------
// plan: resident part first; then attention resident, streamed per layer or
// per tensor, whichever leaves the neuron caches the fewest expected reads.

static loupe_status make_plan(flash_store *s, lp_error *err) {
    const lp_gguf *g = s->base.gguf;
    const lp_flash_layout *fl = &s->fl;
    lp_flash_plan *pl = &s->plan;
    memset(pl, 0, sizeof *pl);
    pl->budget = s->p.budget;
    pl->file_bytes = (size_t)g->file_size;

    size_t resident = 0, attention_all = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        if (s->role[i] == ROLE_RESIDENT) resident += align_up((size_t)g->tensors[i].nbytes, 64);
        if (s->role[i] == ROLE_STREAM) attention_all += align_up((size_t)g->tensors[i].nbytes, 64);
    }
    const size_t stride = fl->stride;
    const size_t book_per_layer = (size_t)fl->n_ff * sizeof(int32_t);
    /* per cache slot: neuron, last, pin, an eviction-order entry, a miss entry */
    const size_t slot_book = sizeof(int32_t) + 2 * sizeof(uint64_t) + sizeof(int) + sizeof(int32_t);
    const double active = s->p.expected_active > 0 ? s->p.expected_active : 0.5;

    /* I/O staging and the bundle stream buffer scale with the budget (a
     * thirty-second of it each, within their bounds) */
    size_t staging = align_up(s->p.budget / 32, IO_ALIGN);
    staging = staging < STAGING_MIN ? STAGING_MIN : staging > STAGING_DEFAULT ? STAGING_DEFAULT : staging;
    size_t stream_cap = s->p.budget / 32 / stride;
    stream_cap = stream_cap < STREAM_BUNDLES_MIN ? STREAM_BUNDLES_MIN
                 : stream_cap > STREAM_BUNDLES_DEFAULT ? STREAM_BUNDLES_DEFAULT : stream_cap;
    if (stream_cap > (size_t)fl->n_ff) stream_cap = (size_t)fl->n_ff;
    for (int shrink = 0; shrink < 3; shrink++) {
        size_t io_bytes = staging;
        size_t stream_bytes = stream_cap * stride;
        size_t fixed = resident + io_bytes + stream_bytes + (size_t)fl->n_layer * book_per_layer +
                       stream_cap * sizeof(int32_t);
        double best_cost = -1;
        int best_mode = -1;
        size_t best_att = 0;
        int best_cap = 0;
        for (int mode = 0; mode < 3; mode++) {
            size_t att;
            if (mode == 0) {
                att = attention_all;
            } else {
                loupe_status st = make_groups(s, mode == 2, err);
                if (st != LOUPE_OK) return st;
                att = 2 * max_group_bytes(s);
            }
            if (fixed + att > s->p.budget) continue;
            size_t rest = s->p.budget - fixed - att;
            size_t per_layer = rest / (size_t)fl->n_layer;
            size_t cap = per_layer / (stride + slot_book);
            if (cap > (size_t)fl->n_ff) cap = (size_t)fl->n_ff;
            if (cap < CACHE_BUNDLES_MIN && fl->n_ff >= CACHE_BUNDLES_MIN) continue;
            /* expected bytes read per step: neurons the cache cannot hold, and streamed attention */
            double want = active * fl->n_ff;
            double miss = want > (double)cap ? want - (double)cap : 0.0;
            double cost = miss * (double)stride * fl->n_layer + (mode == 0 ? 0.0 : (double)attention_all);
            if (best_mode < 0 || cost < best_cost) {
                best_cost = cost;
                best_mode = mode;
                best_att = att;
                best_cap = (int)cap;
            }
        }
        if (best_mode >= 0) {
            if (best_mode > 0) {
                loupe_status st = make_groups(s, best_mode == 2, err);
                if (st != LOUPE_OK) return st;
            } else {
                s->n_groups = 0;
            }
            pl->resident_bytes = resident;
            pl->attention_mode = best_mode;
            pl->attention_bytes = best_att;
            pl->cache_bundles = best_cap;
            pl->cache_bytes = (size_t)best_cap * stride * (size_t)fl->n_layer;
            pl->stream_bundles = (int)stream_cap;
            pl->stream_bytes = stream_bytes;
            pl->io_bytes = io_bytes;
            pl->bookkeeping_bytes = (size_t)fl->n_layer * (book_per_layer + (size_t)best_cap * slot_book) +
                                    stream_cap * sizeof(int32_t);
            pl->total_bytes = pl->resident_bytes + pl->attention_bytes + pl->cache_bytes + pl->stream_bytes +
                              pl->io_bytes + pl->bookkeeping_bytes;
            s->staging_bytes = staging;
            s->stream_cap = (int)stream_cap;
            return LOUPE_OK;
        }
        staging = STAGING_MIN;
        stream_cap = shrink == 0 && stream_cap > 64 ? 64 : STREAM_BUNDLES_MIN;
        if (stream_cap > (size_t)fl->n_ff) stream_cap = (size_t)fl->n_ff;
    }
    /* the smallest plan: per-tensor streaming, minimal buffers and caches */
    make_groups(s, true, err);
    size_t min_need = resident + STAGING_MIN + STREAM_BUNDLES_MIN * (stride + sizeof(int32_t)) +
                      (size_t)fl->n_layer * (book_per_layer + (size_t)CACHE_BUNDLES_MIN * (stride + slot_book)) +
                      2 * max_group_bytes(s);
    return lp_fail(err, LOUPE_ERR_LIMIT,
                   "%s: memory budget %zu bytes is below the %zu this model needs in flash mode "
                   "(resident %zu: norms, output head, predictors; attention stream buffers %zu; I/O and neuron caches)",
                   fpath(s), s->p.budget, min_need, resident, 2 * max_group_bytes(s));
}

// ----------------------------------------------------------------------------
// reading a tensor (or any file range) into memory through the staging buffer

/* dst (len) = file bytes [off, off + len): aligned chunks through staging. */
static loupe_status read_range(flash_store *s, uint64_t off, size_t len, uint8_t *dst, lp_error *err) {
    uint64_t t0 = now_ns();
    while (len > 0) {
        uint64_t a0 = align_down64(off, IO_ALIGN);
        size_t lead = (size_t)(off - a0);
        size_t take = s->staging_bytes - lead < len ? s->staging_bytes - lead : len;
        size_t alen = align_up(lead + take, IO_ALIGN);
        io_batch b = {0};
        io_submit_split(&s->io, &b, a0, alen, s->staging);
        io_wait(&s->io, &b);
        s->base.stats.bytes_read += b.bytes;
        s->base.stats.reads += (uint64_t)b.reads;
        if (b.error) {
            return lp_fail(err, LOUPE_ERR_IO, "%s: read of %zu bytes at offset %" PRIu64 " failed: %s", fpath(s), alen, a0,
                           strerror(b.error));
        }
        memcpy(dst, s->staging + lead, take);
        dst += take;
        off += take;
        len -= take;
    }
    s->base.stats.io_wait_ns += now_ns() - t0;
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// streaming: groups of attention tensors through two buffers

/* Start reading group gi into buffer b (no wait). Tensors start 4096-aligned
 * in a flash file, so each is read whole into its aligned place. */
static void stream_start(flash_store *s, int b, int gi) {
    const lp_gguf *g = s->base.gguf;
    stream_buf *sb = &s->buf[b];
    const stream_group *gr = &s->groups[gi];
    sb->group = gi;
    sb->loading = true;
    sb->batch = (io_batch){0};
    for (int k = gr->first; k < gr->first + gr->count; k++) {
        int id = s->stream_order[k];
        const lp_gguf_tensor *t = &g->tensors[id];
        uint64_t off = g->data_offset + t->offset;
        uint64_t a0 = align_down64(off, IO_ALIGN);
        size_t alen = align_up((size_t)(off - a0) + (size_t)t->nbytes, IO_ALIGN);
        io_submit_split(&s->io, &sb->batch, a0, alen, sb->mem + s->group_off[id]);
    }
}

static loupe_status stream_finish(flash_store *s, int b, lp_error *err) {
    stream_buf *sb = &s->buf[b];
    if (!sb->loading) return LOUPE_OK;
    uint64_t t0 = now_ns();
    io_wait(&s->io, &sb->batch);
    s->base.stats.io_wait_ns += now_ns() - t0;
    sb->loading = false;
    s->base.stats.bytes_read += sb->batch.bytes;
    s->base.stats.reads += (uint64_t)sb->batch.reads;
    if (sb->batch.error) {
        int gi = sb->group;
        sb->group = -1;
        return lp_fail(err, LOUPE_ERR_IO, "%s: reading %s failed: %s", fpath(s),
                       s->base.gguf->tensors[s->stream_order[s->groups[gi].first]].name, strerror(sb->batch.error));
    }
    return LOUPE_OK;
}

static loupe_status stream_get(flash_store *s, int id, const void **data, lp_error *err) {
    const int gi = s->group_of[id];
    int b = s->buf[0].group == gi ? 0 : s->buf[1].group == gi ? 1 : -1;
    loupe_status st;
    if (b < 0) { /* not prefetched: load it now into a free buffer */
        b = s->buf[0].refs == 0 ? 0 : s->buf[1].refs == 0 ? 1 : -1;
        if (b < 0) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: both attention stream buffers are in use", fpath(s));
        if ((st = stream_finish(s, b, err)) != LOUPE_OK) return st; /* a stale prefetch */
        stream_start(s, b, gi);
    }
    if ((st = stream_finish(s, b, err)) != LOUPE_OK) return st;
    s->buf[b].refs++;
    /* prefetch the next group into the other buffer if it is free */
    const int nb = 1 - b, next = (gi + 1) % s->n_groups;
    if (s->n_groups > 1 && s->buf[nb].refs == 0 && s->buf[nb].group != next) {
        if ((st = stream_finish(s, nb, err)) != LOUPE_OK) return st;
        stream_start(s, nb, next);
    }
    const lp_gguf_tensor *t = &s->base.gguf->tensors[id];
    uint64_t off = s->base.gguf->data_offset + t->offset;
    *data = s->buf[b].mem + s->group_off[id] + (size_t)(off % IO_ALIGN);
    return LOUPE_OK;
}

// ----------------------------------------------------------------------------
// neurons

/* Delete slot k: the last live bundle moves into it (swap-with-last). */
static void cache_delete(flash_store *s, neuron_cache *c, int k) {
    const size_t stride = s->fl.stride;
    int last = c->used - 1;
    c->where[c->neuron[k]] = -1;
    if (k != last) {
        memcpy(c->slots + (size_t)k * stride, c->slots + (size_t)last * stride, stride);
        c->neuron[k] = c->neuron[last];
        c->last[k] = c->last[last];
        c->pin[k] = c->pin[last];
        c->where[c->neuron[k]] = k;
    }
    c->used--;
}

/* Window: neurons not used in the last `window` steps leave, once a step. */
static void cache_sweep(flash_store *s, neuron_cache *c, uint64_t step) {
    if (c->swept == step) return;
    c->swept = step;
    for (int k = c->used - 1; k >= 0; k--) {
        if (step - c->last[k] > (uint64_t)s->p.window) cache_delete(s, c, k);
    }
}

static int cmp_lru(const void *a, const void *b, void *ctx) {
    const uint64_t *last = ctx;
    uint64_t x = last[*(const int *)a], y = last[*(const int *)b];
    return x < y ? -1 : x > y;
}

/* Make room for `need` more bundles by deleting the least recently used
 * slots not handed out by this call; returns the room there is. */
static int cache_make_room(flash_store *s, neuron_cache *c, int need) {
    int room = c->cap - c->used;
    if (room >= need) return room;
    int n = 0;
    for (int k = 0; k < c->used; k++) {
        if (c->pin[k] != s->call) s->evict_order[n++] = k;
    }
    qsort_r(s->evict_order, (size_t)n, sizeof(int), cmp_lru, c->last); /* oldest first */
    /* deleting moves slots, so go by neuron */
    for (int i = 0; i < n; i++) s->evict_order[i] = c->neuron[s->evict_order[i]];
    for (int i = 0; i < n && room < need; i++) {
        cache_delete(s, c, c->where[s->evict_order[i]]);
        room++;
    }
    return room;
}

/* Hits are handed out at once; the misses get their destinations (cache
 * slots or the stream buffer) and are recorded in s->pend for read_misses. */
static loupe_status bundles_begin(flash_store *s, int il, const int32_t *ids, int n, const uint8_t **out, lp_error *err) {
    lp_weight_store *ws = &s->base;
    const lp_flash_layout *fl = &s->fl;
    const size_t stride = fl->stride;
    if (il < 0 || il >= fl->n_layer) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: layer %d out of range", fpath(s), il);
    if (n < 0 || n > ws->max_bundles) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: %d bundles requested, at most %d per call", fpath(s), n, ws->max_bundles);
    }
    const int n_ff = lp_flash_layer_n_ff(fl, il);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= n_ff || (i > 0 && ids[i] <= ids[i - 1])) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: blk.%d: neuron ids must be ascending in [0, %d)", fpath(s), il,
                           n_ff);
        }
    }
    neuron_cache *c = &s->caches[il];
    const uint64_t step = ws->stats.steps;
    s->call++;
    cache_sweep(s, c, step);

    /* hits are pinned first (their slots may still move, below); misses are collected */
    int n_miss = 0;
    for (int i = 0; i < n; i++) {
        int k = c->where[ids[i]];
        if (k >= 0) {
            c->last[k] = step;
            c->pin[k] = s->call;
            out[i] = c->slots + (size_t)k * stride;
        } else {
            s->miss[n_miss++] = i;
        }
    }
    ws->stats.neuron_hits += (uint64_t)(n - n_miss);
    ws->stats.neuron_misses += (uint64_t)n_miss;
    s->pend.n_miss = 0;
    if (n_miss == 0) return LOUPE_OK;

    /* destinations: append to the cache while there is room, then the stream buffer */
    int room = c->cap > 0 ? cache_make_room(s, c, n_miss) : 0;
    /* eviction deletes by swap-with-last, which can move a pinned hit into
     * the hole: hand out the hits' slots as they are now (before any append
     * reuses a freed position) */
    for (int i = 0; i < n; i++) {
        int k = c->where[ids[i]];
        if (k >= 0) out[i] = c->slots + (size_t)k * stride;
    }
    int n_stream = 0;
    for (int m = 0; m < n_miss; m++) {
        int i = s->miss[m];
        if (room > 0) {
            int k = c->used++;
            room--;
            c->neuron[k] = ids[i];
            c->last[k] = step;
            c->pin[k] = s->call;
            c->where[ids[i]] = k;
            out[i] = c->slots + (size_t)k * stride;
        } else {
            out[i] = s->stream_bundles + (size_t)n_stream * stride;
            n_stream++;
        }
    }

    s->pend = (pending_read){.il = il, .ids = ids, .n_miss = n_miss, .out = out};
    return LOUPE_OK;
}

/* Read the misses recorded by bundles_begin into their slots. Runs on the
 * loader thread (or inline); touches only the staging buffer, the I/O pool,
 * the destinations and the read counters, which nothing else uses until
 * loader_wait returns. */
static loupe_status read_misses(flash_store *s, const pending_read *pr, lp_error *err) {
    lp_weight_store *ws = &s->base;
    const lp_flash_layout *fl = &s->fl;
    const size_t stride = fl->stride;
    const int il = pr->il, n_miss = pr->n_miss;
    const int32_t *ids = pr->ids;
    const uint8_t **out = pr->out;
    const neuron_cache *c = &s->caches[il];
    /* read the misses in runs: bundles within min_read of each other share a
     * read, every read is at least min_read (clipped to the tensor) and at
     * most the staging buffer; runs are issued together and land in staging */
    const uint64_t base = c->bundle_off;
    const uint64_t t_end = base + (uint64_t)lp_flash_layer_n_ff(fl, il) * stride;
    int m = 0;
    while (m < n_miss) { /* one staging load: up to 64 runs */
        struct { uint64_t a0; size_t alen, at; } runs[64];
        io_batch b = {0};
        size_t used = 0;
        int n_runs = 0, first = m;
        while (m < n_miss && n_runs < 64) {
            const size_t room = s->staging_bytes - used;
            uint64_t r0 = base + (uint64_t)ids[s->miss[m]] * stride, r1 = r0 + stride;
            const uint64_t a0 = align_down64(r0, IO_ALIGN);
            if (align_up((size_t)(r1 - a0), IO_ALIGN) > room) break;
            int mm = m + 1;
            for (; mm < n_miss; mm++) { /* coalesce neighbours */
                uint64_t nx = base + (uint64_t)ids[s->miss[mm]] * stride;
                if (nx - r1 > s->p.min_read || align_up((size_t)(nx + stride - a0), IO_ALIGN) > room) break;
                r1 = nx + stride;
            }
            /* at least min_read (clipped to the tensor and to the room left) */
            uint64_t want = r0 + s->p.min_read < t_end ? r0 + s->p.min_read : t_end;
            size_t alen = align_up((size_t)((want > r1 ? want : r1) - a0), IO_ALIGN);
            if (alen > room) alen = align_up((size_t)(r1 - a0), IO_ALIGN);
            runs[n_runs].a0 = a0;
            runs[n_runs].alen = alen;
            runs[n_runs].at = used;
            io_submit_split(&s->io, &b, a0, alen, s->staging + used);
            used += alen;
            n_runs++;
            m = mm;
        }
        if (n_runs == 0) return lp_fail(err, LOUPE_ERR_INTERNAL, "%s: staging buffer too small for a bundle", fpath(s));
        io_wait(&s->io, &b);
        ws->stats.bytes_read += b.bytes;
        ws->stats.reads += (uint64_t)b.reads;
        if (b.error) {
            return lp_fail(err, LOUPE_ERR_IO, "%s: reading blk.%d.ffn_bundle failed: %s", fpath(s), il, strerror(b.error));
        }
        /* each miss of these runs: staging -> its slot */
        int r = 0;
        for (int q = first; q < m; q++) {
            uint64_t off = base + (uint64_t)ids[s->miss[q]] * stride;
            while (off + stride > runs[r].a0 + runs[r].alen) r++;
            memcpy((uint8_t *)out[s->miss[q]], s->staging + runs[r].at + (size_t)(off - runs[r].a0), stride);
        }
    }
    return LOUPE_OK;
}

/* The loader thread: one pending read at a time. */
static void *loader_thread(void *p) {
    flash_store *s = p;
    pthread_mutex_lock(&s->ld_mu);
    for (;;) {
        while (!s->ld_stop && !s->ld_job) pthread_cond_wait(&s->ld_cv, &s->ld_mu);
        if (s->ld_stop) break;
        pthread_mutex_unlock(&s->ld_mu);
        lp_error e = {0};
        loupe_status st = read_misses(s, &s->pend, &e);
        pthread_mutex_lock(&s->ld_mu);
        s->ld_status = st;
        s->ld_err = e;
        s->ld_job = false;
        pthread_cond_broadcast(&s->ld_cv);
    }
    pthread_mutex_unlock(&s->ld_mu);
    return NULL;
}

/* Start reading the pending misses (on the loader thread when there is one). */
static void loader_start(flash_store *s) {
    if (!s->ld_running) return; /* read inline in loader_wait */
    pthread_mutex_lock(&s->ld_mu);
    s->ld_job = true;
    pthread_cond_broadcast(&s->ld_cv);
    pthread_mutex_unlock(&s->ld_mu);
}

/* Wait for the pending misses; the time spent here is I/O the computation
 * did not hide. */
static loupe_status loader_wait(flash_store *s, lp_error *err) {
    if (s->pend.n_miss == 0) return LOUPE_OK;
    uint64_t t0 = now_ns();
    loupe_status st;
    if (!s->ld_running) {
        st = read_misses(s, &s->pend, err);
    } else {
        pthread_mutex_lock(&s->ld_mu);
        while (s->ld_job) pthread_cond_wait(&s->ld_cv, &s->ld_mu);
        st = s->ld_status;
        if (st != LOUPE_OK && err) *err = s->ld_err;
        pthread_mutex_unlock(&s->ld_mu);
    }
    s->pend.n_miss = 0;
    s->base.stats.io_wait_ns += now_ns() - t0;
    return st;
}

static loupe_status flash_get_bundles_async(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out,
                                            uint8_t *ready, lp_error *err) {
    flash_store *s = (flash_store *)ws;
    loupe_status st = loader_wait(s, err); /* a previous call not waited for */
    if (st != LOUPE_OK) return st;
    if ((st = bundles_begin(s, il, ids, n, out, err)) != LOUPE_OK) return st;
    if (ready) {
        for (int i = 0; i < n; i++) ready[i] = 1;
        for (int m = 0; m < s->pend.n_miss; m++) ready[s->miss[m]] = 0;
    }
    if (s->pend.n_miss > 0) loader_start(s);
    return LOUPE_OK;
}

static loupe_status flash_wait_bundles(lp_weight_store *ws, int il, lp_error *err) {
    (void)il;
    return loader_wait((flash_store *)ws, err);
}

static loupe_status flash_get_bundles(lp_weight_store *ws, int il, const int32_t *ids, int n, const uint8_t **out,
                                      lp_error *err) {
    loupe_status st = flash_get_bundles_async(ws, il, ids, n, out, NULL, err);
    return st == LOUPE_OK ? flash_wait_bundles(ws, il, err) : st;
}


static void flash_release_bundles(lp_weight_store *ws, int il) {
    (void)ws;
    (void)il; /* pins end with the next call; slots are only reused by later calls */
}

// ----------------------------------------------------------------------------
// ops

static loupe_status flash_get(lp_weight_store *ws, const lp_tensor *t, const void **data, lp_error *err) {
    flash_store *s = (flash_store *)ws;
    loupe_status st0 = loader_wait(s, err); /* never while a bundle read is pending */
    if (st0 != LOUPE_OK) return st0;
    if (!t || t->id < 0 || t->id >= s->n_tensors) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: invalid tensor handle %s", fpath(s), t && t->name ? t->name : "(null)");
    }
    switch (s->role[t->id]) {
    case ROLE_RESIDENT:
        *data = s->data[t->id];
        return LOUPE_OK;
    case ROLE_STREAM:
        if (s->plan.attention_mode == 0) {
            *data = s->data[t->id];
            return LOUPE_OK;
        }
        return stream_get(s, t->id, data, err);
    default:
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: tensor %s is not held whole in flash mode", fpath(s), t->name);
    }
}

static void flash_release(lp_weight_store *ws, const lp_tensor *t) {
    flash_store *s = (flash_store *)ws;
    if (!t || t->id < 0 || t->id >= s->n_tensors || s->role[t->id] != ROLE_STREAM || s->plan.attention_mode == 0) return;
    int gi = s->group_of[t->id];
    for (int b = 0; b < 2; b++) {
        if (s->buf[b].group == gi && s->buf[b].refs > 0) {
            s->buf[b].refs--;
            return;
        }
    }
}

static loupe_status flash_get_rows(lp_weight_store *ws, const lp_tensor *t, const int64_t *rows, int64_t n, void *dst,
                                   lp_error *err) {
    flash_store *s = (flash_store *)ws;
    loupe_status st0 = loader_wait(s, err);
    if (st0 != LOUPE_OK) return st0;
    if (!t || t->id < 0 || t->id >= s->n_tensors || n < 0 || (n > 0 && (!rows || !dst))) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: bad row request", fpath(s));
    }
    for (int64_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= t->n_rows) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: tensor %s: row %lld out of range [0, %lld)", fpath(s), t->name,
                           (long long)rows[i], (long long)t->n_rows);
        }
    }
    uint8_t *out = dst;
    if (s->role[t->id] == ROLE_ROWS) {
        const lp_gguf_tensor *gt = &ws->gguf->tensors[t->id];
        for (int64_t i = 0; i < n; i++) {
            uint64_t off = ws->gguf->data_offset + gt->offset + (uint64_t)rows[i] * t->row_bytes;
            loupe_status st = read_range(s, off, t->row_bytes, out + (size_t)i * t->row_bytes, err);
            if (st != LOUPE_OK) return st;
        }
        return LOUPE_OK;
    }
    const void *base = NULL;
    loupe_status st = flash_get(ws, t, &base, err);
    if (st != LOUPE_OK) return st;
    for (int64_t i = 0; i < n; i++) {
        memcpy(out + (size_t)i * t->row_bytes, (const uint8_t *)base + (size_t)rows[i] * t->row_bytes, t->row_bytes);
    }
    flash_release(ws, t);
    return LOUPE_OK;
}

static void flash_free(lp_weight_store *ws) {
    flash_store *s = (flash_store *)ws;
    if (!s) return;
    blas_single_release(s);
    if (s->ld_running) {
        pthread_mutex_lock(&s->ld_mu);
        s->ld_stop = true;
        pthread_cond_broadcast(&s->ld_cv);
        pthread_mutex_unlock(&s->ld_mu);
        pthread_join(s->ld_thread, NULL);
        pthread_mutex_destroy(&s->ld_mu);
        pthread_cond_destroy(&s->ld_cv);
    }
    io_stop(&s->io);
    if (s->caches) {
        for (int l = 0; l < s->fl.n_layer; l++) {
            neuron_cache *c = &s->caches[l];
            free(c->slots);
            free(c->neuron);
            free(c->last);
            free(c->pin);
            free(c->where);
        }
    }
    free(s->caches);
    free(s->buf[0].mem);
    free(s->buf[1].mem);
    free(s->stream_bundles);
    free(s->staging);
    free(s->miss);
    free(s->evict_order);
    free(s->arena);
    free(s->role);
    free(s->data);
    free(s->group_of);
    free(s->group_off);
    free(s->stream_order);
    free(s->groups);
    pthread_mutex_destroy(&s->serial);
    free(s);
}

static const lp_weight_store_ops flash_ops = {
    .lookup = lp_ws_lookup_gguf,
    .get = flash_get,
    .release = flash_release,
    .get_rows = flash_get_rows,
    .free = flash_free,
    .get_bundles = flash_get_bundles,
    .release_bundles = flash_release_bundles,
    .get_bundles_async = flash_get_bundles_async,
    .wait_bundles = flash_wait_bundles,
};

const lp_flash_plan *lp_flash_get_plan(const lp_weight_store *ws) {
    return ws && ws->ops == &flash_ops ? &((const flash_store *)ws)->plan : NULL;
}

lp_flash_params lp_flash_default_params(void) {
    return (lp_flash_params){
        .budget = 0, .window = 5, .io_threads = 8, .min_read = 32u << 10, .direct_io = true, .expected_active = 0.5f,
    };
}

// ----------------------------------------------------------------------------
// open

static loupe_status open_file(flash_store *s, lp_error *err) {
    io_pool *io = &s->io;
    const char *path = fpath(s);
    io->fd = -1;
    io->file_size = s->base.gguf->file_size;
    if (s->p.direct_io) {
        io->fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (io->fd >= 0) { /* some file systems accept the flag and refuse the read */
            uint8_t *probe = aligned_alloc_zero(IO_ALIGN);
            if (!probe) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
            ssize_t r = pread(io->fd, probe, IO_ALIGN, 0);
            free(probe);
            if (r < 0) {
                close(io->fd);
                io->fd = -1;
            }
        }
        io->direct = io->fd >= 0;
    }
    if (io->fd < 0) io->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (io->fd < 0) return lp_fail(err, LOUPE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!io->direct) posix_fadvise(io->fd, 0, 0, POSIX_FADV_RANDOM);
    s->plan.direct_io = io->direct;
    int nt = s->p.io_threads < 0 ? 0 : s->p.io_threads > MAX_IO_THREADS ? MAX_IO_THREADS : s->p.io_threads;
    if (nt > 0) {
        pthread_mutex_init(&io->mu, NULL);
        pthread_cond_init(&io->work, NULL);
        pthread_cond_init(&io->done, NULL);
        pthread_cond_init(&io->room, NULL);
        for (int i = 0; i < nt; i++) {
            if (pthread_create(&io->threads[i], NULL, io_thread, io) != 0) break;
            io->n_threads++;
        }
    }
    return LOUPE_OK;
}

static loupe_status alloc_all(flash_store *s, lp_error *err) {
    const lp_flash_layout *fl = &s->fl;
    const lp_flash_plan *pl = &s->plan;
    const lp_gguf *g = s->base.gguf;
    size_t arena = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        if (s->role[i] == ROLE_RESIDENT || (s->role[i] == ROLE_STREAM && pl->attention_mode == 0)) {
            arena += align_up((size_t)g->tensors[i].nbytes, 64);
        }
    }
    s->arena_bytes = arena;
    s->arena = aligned_alloc_zero(arena);
    s->staging = aligned_alloc_zero(s->staging_bytes);
    s->stream_bundles = aligned_alloc_zero((size_t)s->stream_cap * fl->stride);
    s->miss = calloc((size_t)(pl->cache_bundles + s->stream_cap), sizeof *s->miss);
    s->evict_order = calloc((size_t)(pl->cache_bundles > 0 ? pl->cache_bundles : 1), sizeof *s->evict_order);
    s->caches = calloc((size_t)fl->n_layer, sizeof *s->caches);
    bool ok = s->arena && s->staging && s->stream_bundles && s->miss && s->evict_order && s->caches;
    if (ok && pl->attention_mode != 0) {
        for (int b = 0; b < 2; b++) {
            s->buf[b].mem = aligned_alloc_zero(max_group_bytes(s));
            s->buf[b].group = -1;
            ok = ok && s->buf[b].mem;
        }
    }
    for (int l = 0; ok && l < fl->n_layer; l++) {
        neuron_cache *c = &s->caches[l];
        c->cap = pl->cache_bundles;
        c->slots = aligned_alloc_zero((size_t)c->cap * fl->stride);
        c->neuron = calloc((size_t)(c->cap ? c->cap : 1), sizeof *c->neuron);
        c->last = calloc((size_t)(c->cap ? c->cap : 1), sizeof *c->last);
        c->pin = calloc((size_t)(c->cap ? c->cap : 1), sizeof *c->pin);
        c->where = malloc((size_t)fl->n_ff * sizeof *c->where);
        c->swept = UINT64_MAX;
        ok = c->slots && c->neuron && c->last && c->pin && c->where;
        if (ok) memset(c->where, 0xff, (size_t)fl->n_ff * sizeof *c->where); /* -1 */
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_bundle", l);
        int64_t bi = lp_gguf_find_tensor(g, name);
        if (bi < 0) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s not found", fpath(s), name);
        c->bundle_off = g->data_offset + g->tensors[bi].offset;
    }
    if (!ok) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for the flash store (%zu bytes planned)", fpath(s), pl->total_bytes);

    /* read the resident tensors */
    size_t at = 0;
    for (int i = 0; i < s->n_tensors; i++) {
        if (!(s->role[i] == ROLE_RESIDENT || (s->role[i] == ROLE_STREAM && pl->attention_mode == 0))) continue;
        const lp_gguf_tensor *t = &g->tensors[i];
        loupe_status st = read_range(s, g->data_offset + t->offset, (size_t)t->nbytes, s->arena + at, err);
        if (st != LOUPE_OK) return st;
        s->data[i] = s->arena + at;
        at += align_up((size_t)t->nbytes, 64);
    }
    return LOUPE_OK;
}

lp_weight_store *lp_weights_flash(const lp_gguf *g, const lp_flash_params *p, lp_error *err) {
    if (!g || !p) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_weights_flash: bad arguments");
        return NULL;
    }
    const char *path = g->path ? g->path : "(gguf)";
    if (!lp_flash_is_flash(g)) {
        lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a flash layout; write one with: loupe convert --flash %s OUT.gguf", path, path);
        return NULL;
    }
    if (!g->path || !g->owns_map) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: the flash store reads a file, not a memory buffer", path);
        return NULL;
    }
    if (p->budget == 0) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: flash mode needs a memory budget (> 0 bytes)", path);
        return NULL;
    }
    if (p->window < 0 || p->min_read > (STAGING_MIN / 2)) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: flash window %d / min read %zu out of range", path, p->window, p->min_read);
        return NULL;
    }
    flash_store *s = calloc(1, sizeof *s);
    if (!s) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    s->base.ops = &flash_ops;
    s->base.gguf = g;
    s->base.serial = &s->serial;
    pthread_mutex_init(&s->serial, NULL);
    s->io.fd = -1;
    s->p = *p;
    s->buf[0].group = s->buf[1].group = -1;
    loupe_status st = lp_flash_layout_read(g, &s->fl, err);
    if (st != LOUPE_OK) goto fail;
    s->n_tensors = (int)g->n_tensors;
    s->role = calloc((size_t)s->n_tensors + 1, 1);
    s->data = calloc((size_t)s->n_tensors + 1, sizeof *s->data);
    s->group_of = calloc((size_t)s->n_tensors + 1, sizeof *s->group_of);
    s->group_off = calloc((size_t)s->n_tensors + 1, sizeof *s->group_off);
    s->stream_order = calloc((size_t)s->n_tensors + 1, sizeof *s->stream_order);
    if (!s->role || !s->data || !s->group_of || !s->group_off || !s->stream_order) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    if ((st = assign_roles(s, err)) != LOUPE_OK) goto fail;
    if ((st = make_plan(s, err)) != LOUPE_OK) goto fail;
    /* a call's hits stay where they are (pinned); its misses fill the
     * cache (evicting what the call does not use) and then the stream
     * buffer: cache_bundles + stream_bundles always fit */
    s->base.max_bundles = s->plan.cache_bundles + s->stream_cap;
    if ((st = open_file(s, err)) != LOUPE_OK) goto fail;
    if ((st = alloc_all(s, err)) != LOUPE_OK) goto fail;
    if (s->io.n_threads > 0) { /* with reads in threads, also overlap them with the caller's work */
        pthread_mutex_init(&s->ld_mu, NULL);
        pthread_cond_init(&s->ld_cv, NULL);
        if (pthread_create(&s->ld_thread, NULL, loader_thread, s) == 0) {
            s->ld_running = true;
        } else {
            pthread_mutex_destroy(&s->ld_mu);
            pthread_cond_destroy(&s->ld_cv);
        }
    }
    s->base.stats = (lp_ws_stats){0}; /* loading is not a token's I/O */
    blas_single_acquire(s);
    return &s->base;
fail:
    flash_free(&s->base);
    return NULL;
}
