/* tests/test_flash.c — the flash weight store (language/flash.h) and the
 * decoder's flash-layout FFN.
 *
 * The shipped tiny decoder (models/loupe-tiny.gguf, f16) and Q8_0 / Q4_0
 * copies of it made here are converted with lp_flash_convert, then run
 *   - resident (the flash file mmap'd: the reference), and
 *   - from the flash store at budgets from the whole file down to the
 *     smallest plan the store accepts (attention resident, streamed per
 *     layer, streamed per tensor; neuron caches from all neurons to a few;
 *     windows 0, 1 and 5; with and without I/O threads),
 * over the same prompt (a prefill) and a run of decode steps. Dense mode
 * (no predictor) must give bit-identical logits at every step: the store
 * may only change where the bytes come from, never the arithmetic.
 * Sparse mode (top-k by the predictor) is checked for its neuron counts and
 * cache statistics, and the error paths for their messages.
 *
 * BLAS threads: while a flash store is open OpenBLAS runs one thread for
 * the whole process (language/flash.c; test_blas_threads_restored), and
 * OpenBLAS's threaded and single-threaded sgemm need not round alike (on
 * AMD EPYC a resident run with two BLAS threads differed from the flash runs
 * by 3e-5 in the logits). setup() therefore fixes one BLAS thread before
 * anything runs, so reference and flash runs do the same arithmetic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../language/decoder.h"
#include "../language/flash.h"
#include "../language/flash_format.h"
#include "gguf.h"
#include "support/testutil.h"
#include "types.h"

#define TINY "models/loupe-tiny.gguf"
#define OPENELM "tests/fixtures/openelm/tiny-f32.gguf"
#define N_PROMPT 24
#define N_DECODE 12

typedef struct fixture {
    char dir[256];
    char flash[3][512];  /* f16, q8_0, q4_0 flash files */
    char plain[3][512];  /* their non-flash inputs */
} fixture;

/* A copy of `in` with every matrix whose rows are whole blocks quantized to t. */
static void write_quantized(const char *in, const char *out, lp_type t) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(in, &err);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    void **bufs = calloc(g->n_tensors, sizeof *bufs);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *gt = &g->tensors[i];
        int64_t rows = lp_gguf_tensor_nelements(gt) / gt->ne[0];
        bool q = gt->n_dims == 2 && gt->ne[0] % 32 == 0 && gt->type == LP_TYPE_F16;
        const void *data = gt->data;
        lp_type type = gt->type;
        if (q) {
            size_t rb = lp_row_size(t, gt->ne[0]);
            float *row = malloc((size_t)gt->ne[0] * sizeof(float));
            uint8_t *dst = malloc(rb * (size_t)rows);
            size_t src_rb = lp_row_size(gt->type, gt->ne[0]);
            for (int64_t r = 0; r < rows; r++) {
                assert_true(lp_dequantize_row(gt->type, (const uint8_t *)gt->data + (size_t)r * src_rb, row, gt->ne[0]));
                assert_int_equal(lp_quantize_row(t, row, dst + (size_t)r * rb, gt->ne[0]), rb);
            }
            free(row);
            bufs[i] = dst;
            data = dst;
            type = t;
        }
        assert_int_equal(lp_gguf_writer_add_tensor(w, gt->name, type, gt->n_dims, gt->ne, data), LOUPE_OK);
    }
    assert_int_equal(lp_gguf_writer_write(w, out, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    for (uint64_t i = 0; i < g->n_tensors; i++) free(bufs[i]);
    free(bufs);
    lp_gguf_close(g);
}

static int setup(void **state) {
    openblas_set_num_threads(1); /* as every flash store does: see the top of this file */
    fixture *f = calloc(1, sizeof *f);
    if (!f || tu_mkdtemp(f->dir, sizeof f->dir, "flash") != 0) return -1;
    const char *types[3] = {"f16", "q8_0", "q4_0"};
    char dir[256];
    memcpy(dir, f->dir, sizeof dir);
    for (int k = 0; k < 3; k++) {
        char *pl = f->plain[k], *fl = f->flash[k];
        snprintf(pl, sizeof f->plain[k], "%s/tiny-%s.gguf", dir, types[k]);
        snprintf(fl, sizeof f->flash[k], "%s/tiny-%s-flash.gguf", dir, types[k]);
    }
    /* f16: the shipped file as it is */
    char *buf = NULL;
    size_t n = 0;
    if (!(buf = tu_read_file(TINY, &n))) return -1;
    FILE *fp = fopen(f->plain[0], "wb");
    if (!fp || fwrite(buf, 1, n, fp) != n || fclose(fp) != 0) return -1;
    free(buf);
    write_quantized(TINY, f->plain[1], LP_TYPE_Q8_0);
    write_quantized(TINY, f->plain[2], LP_TYPE_Q4_0);
    lp_flash_convert_params cp = lp_flash_convert_default_params();
    for (int k = 0; k < 3; k++) {
        lp_error err = {0};
        if (lp_flash_convert(f->plain[k], f->flash[k], &cp, NULL, &err) != LOUPE_OK) {
            fprintf(stderr, "convert: %s\n", err.msg);
            return -1;
        }
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    tu_rmtree(f->dir);
    free(f);
    return 0;
}

static long file_size(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 ? (long)sb.st_size : -1;
}

/* A model over one store; run() feeds the fixed prompt then N_DECODE
 * greedy steps and records every step's logits (N_DECODE + 1, n_vocab). */
typedef struct runner {
    lp_gguf *g;
    lp_weight_store *ws;
    lp_llama *m;
    lp_llama_state *s;
    lp_ws_stats after_prefill; /* the store's counters after the prompt */
} runner;

static void runner_open(runner *r, const char *path, const lp_flash_params *fp) {
    lp_error err = {0};
    memset(r, 0, sizeof *r);
    r->g = lp_gguf_open(path, &err);
    assert_non_null(r->g);
    r->ws = fp ? lp_weights_flash(r->g, fp, &err) : lp_weights_resident(r->g, &err);
    if (!r->ws) fprintf(stderr, "store: %s\n", err.msg);
    assert_non_null(r->ws);
    r->m = lp_llama_load(r->ws, &err);
    if (!r->m) fprintf(stderr, "load: %s\n", err.msg);
    assert_non_null(r->m);
    r->s = lp_llama_state_new(r->m, 128, &err);
    assert_non_null(r->s);
}

static void runner_close(runner *r) {
    lp_llama_state_free(r->s);
    lp_llama_free(r->m);
    lp_ws_free(r->ws);
    lp_gguf_close(r->g);
}

/* logits: (N_DECODE + 1, n_vocab) */
static void runner_run(runner *r, float *logits, bool exact) {
    lp_error err = {0};
    const int V = lp_llama_n_vocab(r->m);
    lp_llama_state_reset(r->s);
    lp_llama_state_set_exact_matvec(r->s, exact);
    int32_t prompt[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % V);
    prompt[0] = 1; /* BOS */
    assert_int_equal(lp_llama_forward_tokens(r->m, r->s, prompt, N_PROMPT, logits, NULL, &err), LOUPE_OK);
    r->after_prefill = lp_ws_stats_get(r->ws);
    for (int t = 0; t < N_DECODE; t++) {
        const float *prev = logits + (size_t)t * V;
        int32_t best = 0;
        for (int v = 1; v < V; v++) best = prev[v] > prev[best] ? v : best;
        assert_int_equal(lp_llama_forward_tokens(r->m, r->s, &best, 1, logits + (size_t)(t + 1) * V, NULL, &err), LOUPE_OK);
    }
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* Dense flash mode == resident, bit for bit, for every type and plan. */
static void test_dense_bit_identical(void **state) {
    fixture *f = *state;
    struct { double frac; int window, io; } cfg[] = {
        {1.00, 5, 4}, {0.60, 5, 4}, {0.40, 1, 4}, {0.25, 5, 0}, {0.25, 0, 2}, {0.19, 5, 4},
    };
    int modes_seen[3] = {0};
    for (int k = 0; k < 3; k++) {
        runner ref;
        runner_open(&ref, f->flash[k], NULL);
        const int V = lp_llama_n_vocab(ref.m);
        const size_t n = (size_t)(N_DECODE + 1) * (size_t)V;
        float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
        for (int exact = 0; exact < 2; exact++) {
            runner_run(&ref, want, exact);
            for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
                lp_flash_params fp = lp_flash_default_params();
                fp.budget = (size_t)(cfg[c].frac * (double)file_size(f->flash[k]));
                fp.window = cfg[c].window;
                fp.io_threads = cfg[c].io;
                runner r;
                lp_error err = {0};
                lp_gguf *g = lp_gguf_open(f->flash[k], &err);
                lp_weight_store *probe = lp_weights_flash(g, &fp, &err);
                if (!probe) { /* q4_0 files are small: their smallest fractions may be refused */
                    assert_int_equal(err.status, LOUPE_ERR_LIMIT);
                    lp_gguf_close(g);
                    continue;
                }
                const lp_flash_plan *pl = lp_flash_get_plan(probe);
                assert_non_null(pl);
                assert_true(pl->total_bytes <= fp.budget);
                modes_seen[pl->attention_mode]++;
                lp_ws_free(probe);
                lp_gguf_close(g);

                runner_open(&r, f->flash[k], &fp);
                runner_run(&r, got, exact);
                if (memcmp(want, got, n * sizeof(float)) != 0) {
                    fail_msg("type %d exact %d budget %.2f window %d io %d: logits differ (max %g)", k, exact,
                             cfg[c].frac, cfg[c].window, cfg[c].io, (double)max_abs_diff(want, got, n));
                }
                /* every bundle request was a hit or a miss; dense: all neurons */
                const lp_ws_stats *st = &r.ws->stats;
                assert_true(st->neuron_hits + st->neuron_misses > 0);
                assert_int_equal(st->ffn_active, st->ffn_total);
                assert_true(st->bytes_read > 0);
                runner_close(&r);
            }
        }
        free(want);
        free(got);
        runner_close(&ref);
    }
    /* the budgets above exercise every attention plan */
    assert_true(modes_seen[0] > 0);
    assert_true(modes_seen[1] + modes_seen[2] > 0);
}

/* The flash file against its own input, both resident: f16 columns are the
 * input's values, only the summation order of the down projection differs. */
static void test_flash_file_close_to_input(void **state) {
    fixture *f = *state;
    runner a, b;
    runner_open(&a, f->plain[0], NULL);
    runner_open(&b, f->flash[0], NULL);
    const int V = lp_llama_n_vocab(a.m);
    const size_t n = (size_t)(N_DECODE + 1) * (size_t)V;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    runner_run(&a, x, true);
    runner_run(&b, y, true);
    float d = max_abs_diff(x, y, n);
    assert_true(d < 1e-3f);
    free(x);
    free(y);
    runner_close(&a);
    runner_close(&b);
}

/* A flash store holds OpenBLAS at one thread while it is open, and the
 * count comes back when the last open store closes. */
static void test_blas_threads_restored(void **state) {
    fixture *f = *state;
    openblas_set_num_threads(2);
    const int n0 = openblas_get_num_threads(); /* 1 where OpenBLAS sees one core */
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)file_size(f->flash[0]);
    lp_error err = {0};
    lp_gguf *g1 = lp_gguf_open(f->flash[0], &err), *g2 = lp_gguf_open(f->flash[0], &err);
    assert_non_null(g1);
    assert_non_null(g2);
    lp_weight_store *a = lp_weights_flash(g1, &fp, &err), *b = lp_weights_flash(g2, &fp, &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(openblas_get_num_threads(), 1);
    lp_ws_free(a);
    assert_int_equal(openblas_get_num_threads(), 1); /* b is still open */
    lp_ws_free(b);
    assert_int_equal(openblas_get_num_threads(), n0);
    lp_gguf_close(g1);
    lp_gguf_close(g2);
    openblas_set_num_threads(1); /* back to what setup() fixed for the other tests */
    if (n0 == 1) skip(); /* nothing to restore on one core: the check above could not fail */
}

/* Top-k: exactly round(keep * n_ff) neurons per layer per decode step;
 * the window makes later tokens hit the cache. */
static void test_sparse_counts_and_window(void **state) {
    fixture *f = *state;
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)file_size(f->flash[0]); /* everything fits: the window decides */
    fp.window = 5;
    runner r;
    runner_open(&r, f->flash[0], &fp);
    lp_error err = {0};
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 0.25f, 0.0f, &err), LOUPE_OK);
    const int V = lp_llama_n_vocab(r.m), F = r.m->cfg.n_ff, L = r.m->cfg.n_layer;
    float *lg = malloc((size_t)(N_DECODE + 1) * (size_t)V * sizeof(float));
    runner_run(&r, lg, false);
    const lp_ws_stats *st = &r.ws->stats;
    assert_int_equal(st->ffn_total, (uint64_t)N_DECODE * (uint64_t)L * (uint64_t)F);
    assert_int_equal(st->ffn_active, (uint64_t)N_DECODE * (uint64_t)L * (uint64_t)lroundf(0.25f * (float)F));
    for (size_t i = 0; i < (size_t)(N_DECODE + 1) * (size_t)V; i++) assert_true(isfinite(lg[i]));
    /* the prompt loaded every neuron; the window keeps them: decode hits */
    assert_true(st->neuron_hits > st->neuron_misses);
    free(lg);
    runner_close(&r);

    /* bad settings are refused */
    runner_open(&r, f->flash[0], NULL);
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 0.0f, 0.0f, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 1.5f, 0.0f, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 1.0f, -1.0f, &err), LOUPE_ERR_INVALID_ARG);
    runner_close(&r);
}

/* Sparse decode reads only what it needs: with window 0, a small cache and
 * 4 KiB reads, 5% of the neurons read far fewer bytes per token than all. */
static void test_sparse_reads_less(void **state) {
    fixture *f = *state;
    uint64_t bytes[2];
    float keeps[2] = {1.0f, 0.05f};
    for (int i = 0; i < 2; i++) {
        lp_flash_params fp = lp_flash_default_params();
        fp.budget = (size_t)(0.6 * (double)file_size(f->flash[2])); /* attention resident: the FFN is all that is read */
        fp.window = 0;
        fp.min_read = 4096; /* a tiny model's layer is ~11 reads of 32 KiB: 5% would still touch all of it */
        runner r;
        runner_open(&r, f->flash[2], &fp);
        lp_error err = {0};
        assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, keeps[i], 0.0f, &err), LOUPE_OK);
        const int V = lp_llama_n_vocab(r.m);
        float *lg = malloc((size_t)(N_DECODE + 1) * (size_t)V * sizeof(float));
        runner_run(&r, lg, false);
        bytes[i] = r.ws->stats.bytes_read - r.after_prefill.bytes_read; /* decode only: prefill is dense */
        free(lg);
        runner_close(&r);
    }
    fprintf(stderr, "decode bytes: dense %llu, 5%% %llu\n", (unsigned long long)bytes[0], (unsigned long long)bytes[1]);
    assert_true(bytes[1] * 2 < bytes[0]);
}

static void expect_open_error(const char *path, const lp_flash_params *fp, loupe_status want, const char *n1,
                              const char *n2) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(path, &err);
    if (!g) {
        assert_int_equal(err.status, want);
    } else {
        lp_weight_store *ws = lp_weights_flash(g, fp, &err);
        assert_null(ws);
        assert_int_equal(err.status, want);
        lp_gguf_close(g);
    }
    if (!strstr(err.msg, n1) || (n2 && !strstr(err.msg, n2))) fail_msg("message '%s' lacks '%s' / '%s'", err.msg, n1, n2 ? n2 : "");
}

static void test_errors(void **state) {
    fixture *f = *state;
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = 1 << 20;
    /* a plain file: not a flash layout, and the message says how to make one */
    expect_open_error(f->plain[0], &fp, LOUPE_ERR_FORMAT, f->plain[0], "loupe convert --flash");
    /* a budget below the minimum: LIMIT, with the minimum */
    fp.budget = 4096;
    expect_open_error(f->flash[0], &fp, LOUPE_ERR_LIMIT, f->flash[0], "below");
    /* no budget */
    fp.budget = 0;
    expect_open_error(f->flash[0], &fp, LOUPE_ERR_INVALID_ARG, f->flash[0], "budget");
    /* a truncated flash file is refused when opened */
    char trunc[600];
    snprintf(trunc, sizeof trunc, "%s/truncated.gguf", f->dir);
    size_t n = 0;
    char *buf = tu_read_file(f->flash[0], &n);
    assert_non_null(buf);
    FILE *fp2 = fopen(trunc, "wb");
    assert_non_null(fp2);
    assert_int_equal(fwrite(buf, 1, n / 2, fp2), n / 2);
    fclose(fp2);
    free(buf);
    fp.budget = 8 << 20;
    expect_open_error(trunc, &fp, LOUPE_ERR_FORMAT, trunc, NULL);
    /* bad requests to the store are refused, not served */
    runner r;
    fp.budget = (size_t)file_size(f->flash[0]);
    runner_open(&r, f->flash[0], &fp);
    const uint8_t *out[4];
    int32_t ids[2] = {5, 3};
    lp_error err = {0};
    assert_int_equal(lp_ws_get_bundles(r.ws, 0, ids, 2, out, &err), LOUPE_ERR_INVALID_ARG); /* not ascending */
    ids[0] = -1;
    assert_int_equal(lp_ws_get_bundles(r.ws, 0, ids, 1, out, &err), LOUPE_ERR_INVALID_ARG);
    ids[0] = 0;
    assert_int_equal(lp_ws_get_bundles(r.ws, 99, ids, 1, out, &err), LOUPE_ERR_INVALID_ARG);
    runner_close(&r);
}

/* The cache hands out the bytes of the file: every bundle equals the file's. */
/* One pass of pseudo-random ascending requests over every layer; every
 * handed-out bundle must equal the file's bytes. */
static bool in_set(int i, int k, unsigned sixteenths) {
    return ((unsigned)(i * 2654435761u + (unsigned)k * 40503u) >> 28) < sixteenths;
}

/* overlapping: round r asks for sets k = r/2 and (r+1)/2 of 1/16 each, so
 * consecutive rounds share one (hits) and bring one new (evictions) */
static void bundle_rounds(const char *path, double budget_frac, int window, int rounds, bool overlapping,
                          lp_ws_stats *stats) {
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)(budget_frac * (double)file_size(path));
    fp.window = window;
    runner flash, res;
    runner_open(&flash, path, &fp);
    runner_open(&res, path, NULL);
    const int F = flash.m->cfg.n_ff;
    const size_t stride = flash.m->fl.stride;
    const int chunk = lp_ws_max_bundles(flash.ws);
    int32_t *ids = malloc((size_t)F * sizeof *ids);
    const uint8_t **a = malloc((size_t)F * sizeof *a), **b = malloc((size_t)F * sizeof *b);
    lp_error err = {0};
    for (int round = 0; round < rounds; round++) {
        lp_ws_step(flash.ws);
        int n = 0;
        for (int i = 0; i < F; i++) {
            bool take = overlapping ? in_set(i, round / 2, 3) || in_set(i, (round + 1) / 2 + 1000, 3) : in_set(i, round, 5);
            if (take) ids[n++] = i;
        }
        for (int l = 0; l < flash.m->cfg.n_layer; l++) {
            for (int c0 = 0; c0 < n; c0 += chunk) {
                int m = n - c0 < chunk ? n - c0 : chunk;
                assert_int_equal(lp_ws_get_bundles(flash.ws, l, ids + c0, m, a, &err), LOUPE_OK);
                assert_int_equal(lp_ws_get_bundles(res.ws, l, ids + c0, m, b, &err), LOUPE_OK);
                for (int j = 0; j < m; j++) assert_memory_equal(a[j], b[j], stride);
                lp_ws_release_bundles(flash.ws, l);
            }
        }
    }
    *stats = flash.ws->stats;
    free(ids);
    free(a);
    free(b);
    runner_close(&flash);
    runner_close(&res);
}

static void test_bundles_are_file_bytes(void **state) {
    fixture *f = *state;
    lp_ws_stats st;
    /* the cache holds a round's neurons: later rounds hit */
    bundle_rounds(f->flash[1], 0.70, 1, 6, false, &st);
    assert_true(st.neuron_hits > 0);
    assert_true(st.neuron_misses > 0);
    /* a small cache and a long window: requests evict least-recently-used
     * slots, which moves this request's own hits (swap-with-last) */
    bundle_rounds(f->flash[1], 0.25, 5, 12, true, &st);
    assert_true(st.neuron_hits > 0);
    assert_true(st.neuron_misses > st.neuron_hits / 4);
}

/* A "lowrank" predictor file (the kind tools/flash/train_predictor.py
 * writes), with fixed arbitrary factors, carried into a flash file by
 * lp_flash_convert: the decoder computes exactly half of the neurons at every
 * step, ranks them by the raw scores s = B (A x) (negative scores exist; the
 * svd rule's |silu| never is), and the logits stay finite. */
static void test_lowrank_predictor_file(void **state) {
    fixture *f = *state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(f->plain[0], &err);
    assert_non_null(g);
    const int L = 4, E = 256, F = 704, R = 8;
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", "llama"), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_str(w, "loupe.flash.predictor", "lowrank"), LOUPE_OK);
    float *a = calloc((size_t)R * E, sizeof(float)), *b = calloc((size_t)F * R, sizeof(float));
    for (int r = 0; r < R; r++)
        for (int e = 0; e < E; e++) a[r * E + e] = (float)((r * 31 + e * 17) % 13 - 6) / 13.0f;
    for (int i = 0; i < F; i++)
        for (int r = 0; r < R; r++) b[i * R + r] = (float)((i * 7 + r * 5) % 11 - 5) / 11.0f;
    char name[64];
    for (int l = 0; l < L; l++) {
        int64_t nea[2] = {E, R}, neb[2] = {R, F};
        snprintf(name, sizeof name, "blk.%d.ffn_pred_a", l);
        assert_int_equal(lp_gguf_writer_add_tensor(w, name, LP_TYPE_F32, 2, nea, a), LOUPE_OK);
        snprintf(name, sizeof name, "blk.%d.ffn_pred_b", l);
        assert_int_equal(lp_gguf_writer_add_tensor(w, name, LP_TYPE_F32, 2, neb, b), LOUPE_OK);
    }
    char pred[600], out[600];
    snprintf(pred, sizeof pred, "%s/pred.gguf", f->dir);
    snprintf(out, sizeof out, "%s/tiny-lowrank.gguf", f->dir);
    assert_int_equal(lp_gguf_writer_write(w, pred, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
    lp_flash_convert_params cp = lp_flash_convert_default_params();
    cp.predictor = LP_FLASH_PRED_FILE;
    cp.predictor_path = pred;
    assert_int_equal(lp_flash_convert(f->plain[0], out, &cp, NULL, &err), LOUPE_OK);

    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)(0.4 * (double)file_size(out));
    runner r;
    runner_open(&r, out, &fp);
    assert_string_equal(r.m->fl.predictor, "lowrank");
    assert_int_equal(r.m->pred_rank, R);
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 0.5f, 0.0f, &err), LOUPE_OK);
    const int V = lp_llama_n_vocab(r.m);
    float *lg = malloc((size_t)(N_DECODE + 1) * (size_t)V * sizeof(float));
    runner_run(&r, lg, false);
    const lp_ws_stats *st = &r.ws->stats;
    assert_int_equal(st->ffn_active, (uint64_t)N_DECODE * L * (uint64_t)(F / 2));
    for (size_t i = 0; i < (size_t)(N_DECODE + 1) * (size_t)V; i++) assert_true(isfinite(lg[i]));
    /* the selection of the last step is the top half of the raw scores */
    int n_sel = 0;
    float min_sel = INFINITY, max_rest = -INFINITY;
    for (int i = 0, k = 0; i < F; i++) {
        bool sel = k < F / 2 && r.s->ffn_ids[k] == i;
        if (sel) k++, n_sel++, min_sel = fminf(min_sel, r.s->ffn_score[i]);
        else max_rest = fmaxf(max_rest, r.s->ffn_score[i]);
    }
    assert_int_equal(n_sel, F / 2);
    assert_true(min_sel >= max_rest);
    bool negative = false;
    for (int i = 0; i < F; i++) negative = negative || r.s->ffn_score[i] < 0;
    assert_true(negative); /* raw scores, not |silu(s)| */
    free(lg);
    free(a);
    free(b);
    runner_close(&r);
}

/* Two states on one flash model, on two threads at once: the store serves
 * one pass at a time (ws->serial) and each thread gets the logits it gets
 * alone. */
typedef struct shared_run {
    runner *r;
    lp_llama_state *s;
    float *logits;
} shared_run;

static void *shared_thread(void *p) {
    shared_run *sr = p;
    runner mine = *sr->r;
    mine.s = sr->s;
    runner_run(&mine, sr->logits, false);
    return NULL;
}

static void test_two_contexts_share_a_flash_model(void **state) {
    fixture *f = *state;
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)(0.3 * (double)file_size(f->flash[0]));
    runner r;
    runner_open(&r, f->flash[0], &fp);
    const int V = lp_llama_n_vocab(r.m);
    const size_t n = (size_t)(N_DECODE + 1) * (size_t)V;
    float *alone = malloc(n * sizeof(float));
    runner_run(&r, alone, false);
    lp_error err = {0};
    shared_run sr[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        sr[i] = (shared_run){.r = &r, .s = lp_llama_state_new(r.m, 128, &err), .logits = malloc(n * sizeof(float))};
        assert_non_null(sr[i].s);
        assert_int_equal(pthread_create(&th[i], NULL, shared_thread, &sr[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_memory_equal(sr[i].logits, alone, n * sizeof(float));
        lp_llama_state_free(sr[i].s);
        free(sr[i].logits);
    }
    free(alone);
    runner_close(&r);
}

/* OpenELM: every layer has its own FFN width (16, 32 and 48 neurons) and
 * a fused QKV matrix; the flash file keeps each layer's width, dense flash
 * mode is bit-identical to resident on it at every budget, the file is
 * within summation order of its input, and a sparse run computes fewer
 * neurons. */
static void test_openelm_flash(void **state) {
    fixture *f = *state;
    char out[300];
    snprintf(out, sizeof out, "%s/openelm-flash.gguf", f->dir);
    lp_flash_convert_params cp = lp_flash_convert_default_params();
    lp_error err = {0};
    if (lp_flash_convert(OPENELM, out, &cp, NULL, &err) != LOUPE_OK) fail_msg("convert: %s", err.msg);
    lp_gguf *g = lp_gguf_open(out, &err);
    assert_non_null(g);
    lp_flash_layout fl;
    assert_int_equal(lp_flash_layout_read(g, &fl, &err), LOUPE_OK);
    assert_int_equal(lp_flash_layer_n_ff(&fl, 0), 16);
    assert_int_equal(lp_flash_layer_n_ff(&fl, 2), 48);
    assert_int_equal(fl.n_ff, 48);
    lp_gguf_close(g);

    runner ref, plain;
    runner_open(&ref, out, NULL);
    runner_open(&plain, OPENELM, NULL);
    const int V = lp_llama_n_vocab(ref.m);
    const size_t n = (size_t)(N_DECODE + 1) * (size_t)V;
    float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    runner_run(&ref, want, true);
    runner_run(&plain, got, true);
    const float d_in = max_abs_diff(want, got, n);
    assert_true(d_in <= 1e-4f);
    /* a 200 KB file: the store's fixed parts (stream buffers, I/O staging)
     * alone are 1.1x of it, so the budgets are multiples of the file */
    const double fracs[] = {4.0, 1.5, 1.2};
    for (size_t c = 0; c < sizeof fracs / sizeof fracs[0]; c++) {
        lp_flash_params fp = lp_flash_default_params();
        fp.budget = (size_t)(fracs[c] * (double)file_size(out));
        runner r;
        runner_open(&r, out, &fp);
        runner_run(&r, got, true);
        if (memcmp(want, got, n * sizeof(float)) != 0)
            fail_msg("openelm budget %.2fx: logits differ (max %g)", fracs[c], (double)max_abs_diff(want, got, n));
        assert_int_equal(r.ws->stats.ffn_active, r.ws->stats.ffn_total);
        runner_close(&r);
    }
    /* sparse: half the neurons of each layer at each decoded token */
    lp_flash_params fp = lp_flash_default_params();
    fp.budget = (size_t)(1.2 * (double)file_size(out));
    runner r;
    runner_open(&r, out, &fp);
    assert_int_equal(lp_llama_state_set_ffn_sparsity(r.s, 0.5f, 0.0f, &err), LOUPE_OK);
    runner_run(&r, got, true);
    const lp_ws_stats *st = &r.ws->stats;
    assert_true(st->ffn_active < st->ffn_total && st->ffn_active > 0);
    printf("  openelm: flash file vs input %.3g; dense flash == resident at 4/1.5/1.2x the file; sparse 0.5: %llu of %llu neurons\n",
           (double)d_in, (unsigned long long)st->ffn_active, (unsigned long long)st->ffn_total);
    runner_close(&r);
    free(want);
    free(got);
    runner_close(&ref);
    runner_close(&plain);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_bit_identical),
        cmocka_unit_test(test_flash_file_close_to_input),
        cmocka_unit_test(test_blas_threads_restored),
        cmocka_unit_test(test_sparse_counts_and_window),
        cmocka_unit_test(test_sparse_reads_less),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_bundles_are_file_bytes),
        cmocka_unit_test(test_two_contexts_share_a_flash_model),
        cmocka_unit_test(test_lowrank_predictor_file),
        cmocka_unit_test(test_openelm_flash),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
