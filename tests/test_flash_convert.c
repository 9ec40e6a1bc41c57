/* tests/test_flash_convert.c — `loupe convert --flash` (language/flash_convert.c)
 * and the flash layout reader (language/flash_format.c).
 *
 * Inputs: the shipped tiny model (llama, f16, 4 layers, n_embd 256, n_ff 704)
 * and copies of it written here with the attention and FFN matrices
 * requantized to Q8_0 / Q4_0 (and one with a different ffn_down type in one
 * layer). Every converted file is checked against its input byte by byte:
 * bundles (gate and up rows as in the input, down columns exact or equal to
 * lp_quantize_row of the dequantized column, zero padding), 4096-aligned
 * offsets, untouched non-FFN tensors, and the predictor's error against the
 * energy it claims. Predictor files (LP_FLASH_PRED_FILE) written here with
 * random factors are carried into the output exactly after f16 rounding.
 * Then the refusals (each names the file and the key or tensor, the
 * predictor file's included) and lp_flash_layout_read on files with edited
 * keys. */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/gguf.h"
#include "../language/flash_format.h"

#define TINY "models/loupe-tiny.gguf"

static char g_dir[256];

static int setup_dir(void **state) {
    (void)state;
    return tu_mkdtemp(g_dir, sizeof g_dir, "flash");
}

static int teardown_dir(void **state) {
    (void)state;
    return tu_rmtree(g_dir);
}

#define assert_contains(hay, needle)                                                              \
    do {                                                                                          \
        if (!strstr((hay), (needle))) fail_msg("expected \"%s\" in \"%s\"", (needle), (hay));     \
    } while (0)

static bool exists(const char *p) { return access(p, F_OK) == 0; }

/* No temporary file of a conversion is left in the test directory. */
static void assert_no_temp_files(void) {
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".flash") || strstr(e->d_name, ".tmp")) fail_msg("temporary file left: %s", e->d_name);
    closedir(d);
}

static const lp_gguf_tensor *find(const lp_gguf *g, const char *fmt, int l) {
    char name[64];
    snprintf(name, sizeof name, fmt, l);
    int64_t i = lp_gguf_find_tensor(g, name);
    return i < 0 ? NULL : &g->tensors[i];
}

static int ffn_part(const char *name) {
    int n = 0;
    unsigned l;
    char part[8];
    if (sscanf(name, "blk.%u.ffn_%7[a-z].weight%n", &l, part, &n) != 2 || name[n]) return -1;
    return !strcmp(part, "gate") ? 0 : !strcmp(part, "up") ? 1 : !strcmp(part, "down") ? 2 : -1;
}

/* ---- writing input models ---- */

typedef struct variant {
    lp_type mat_type;       /* attention and FFN matrices; LP_TYPE_COUNT: as in the tiny model */
    int mixed_layer;        /* >= 0: this layer's ffn_down gets mixed_type instead */
    lp_type mixed_type;
    const char *drop;       /* a tensor left out */
    const char *arch;       /* general.architecture instead of "llama" */
    const char *poison;     /* an f16 tensor whose first element becomes NaN */
    const char *retype;     /* a tensor rewritten as zero bytes of type retype_to */
    lp_type retype_to;
    const char *halve;      /* a tensor written with half its rows */
} variant;

static const variant PLAIN = {.mat_type = LP_TYPE_COUNT, .mixed_layer = -1};

/* The tiny model rewritten as v says. */
static void write_variant(const char *out, const variant *v) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(TINY, &err);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (v->arch && !strcmp(g->kv[i].key, "general.architecture"))
            assert_int_equal(lp_gguf_writer_set_str(w, g->kv[i].key, v->arch), LOUPE_OK);
        else
            assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    }
    void **bufs = calloc(g->n_tensors, sizeof *bufs);
    assert_non_null(bufs);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        if (v->drop && !strcmp(t->name, v->drop)) continue;
        lp_type type = t->type;
        bool mat = t->n_dims == 2 && (strstr(t->name, ".attn_") || strstr(t->name, ".ffn_"));
        if (mat && v->mat_type != LP_TYPE_COUNT) type = v->mat_type;
        char mixed[64];
        snprintf(mixed, sizeof mixed, "blk.%d.ffn_down.weight", v->mixed_layer);
        if (v->mixed_layer >= 0 && !strcmp(t->name, mixed)) type = v->mixed_type;
        const void *data = t->data;
        if (v->poison && !strcmp(t->name, v->poison)) {
            assert_int_equal(t->type, LP_TYPE_F16);
            bufs[i] = malloc(t->nbytes);
            assert_non_null(bufs[i]);
            memcpy(bufs[i], t->data, t->nbytes);
            const uint16_t nan16 = 0x7e00;
            memcpy(bufs[i], &nan16, 2);
            data = bufs[i];
        }
        if (v->retype && !strcmp(t->name, v->retype)) {
            type = v->retype_to;
            bufs[i] = calloc(lp_row_size(type, t->ne[0]), (size_t)(lp_gguf_tensor_nelements(t) / t->ne[0]));
            assert_non_null(bufs[i]);
            data = bufs[i];
        } else if (type != t->type) {
            int64_t n = lp_gguf_tensor_nelements(t);
            float *f = malloc((size_t)n * sizeof *f);
            bufs[i] = malloc(lp_row_size(type, t->ne[0]) * (size_t)(n / t->ne[0]));
            assert_non_null(f);
            assert_non_null(bufs[i]);
            assert_true(lp_dequantize_row(t->type, t->data, f, n));
            for (int64_t r = 0; r < n / t->ne[0]; r++)
                assert_true(lp_quantize_row(type, f + r * t->ne[0], (uint8_t *)bufs[i] + (size_t)r * lp_row_size(type, t->ne[0]),
                                            t->ne[0]) > 0);
            free(f);
            data = bufs[i];
        }
        int64_t ne[LP_GGUF_MAX_DIMS];
        memcpy(ne, t->ne, sizeof ne);
        if (v->halve && !strcmp(t->name, v->halve)) ne[1] /= 2;
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, type, t->n_dims, ne, data), LOUPE_OK);
    }
    assert_int_equal(lp_gguf_writer_write(w, out, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    for (uint64_t i = 0; i < g->n_tensors; i++) free(bufs[i]);
    free(bufs);
    lp_gguf_close(g);
}

/* src with key replaced by val (or removed when val is NULL), everything else
 * (alignment, tensors, their offsets) as it is. */
static void rewrite_key(const char *src, const char *dst, const char *key, const lp_gguf_value *val) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(src, &err);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        bool hit = !strcmp(g->kv[i].key, key);
        if (hit && !val) continue;
        assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, hit ? val : &g->kv[i].val), LOUPE_OK);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    assert_int_equal(lp_gguf_writer_write(w, dst, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
}

/* ---- checking a converted file against its input ---- */

static float *dequant(const lp_gguf_tensor *t) {
    int64_t n = lp_gguf_tensor_nelements(t);
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    assert_true(lp_dequantize_row(t->type, t->data, f, n));
    return f;
}

static void check_converted(const char *in_path, const char *out_path, const lp_flash_convert_params *p,
                            const lp_flash_convert_report *rep, lp_type want_down) {
    lp_error err = {0};
    lp_gguf *in = lp_gguf_open(in_path, &err);
    assert_non_null(in);
    lp_gguf *out = lp_gguf_open(out_path, &err);
    if (!out) fail_msg("%s", err.msg);
    assert_true(lp_flash_is_flash(out));
    assert_false(lp_flash_is_flash(in));
    lp_flash_layout L;
    if (lp_flash_layout_read(out, &L, &err) != LOUPE_OK) fail_msg("%s", err.msg);
    assert_int_equal(L.n_layer, 4);
    assert_int_equal(L.n_embd, 256);
    assert_int_equal(L.n_ff, 704);
    assert_int_equal(L.down_type, want_down);
    assert_int_equal(L.stride % LP_FLASH_BUNDLE_ALIGN, 0);
    assert_true(L.stride >= L.bundle_bytes && L.stride < L.bundle_bytes + LP_FLASH_BUNDLE_ALIGN);
    assert_int_equal(out->alignment, LP_FLASH_FILE_ALIGN);
    /* a predictor file says its own kind: lowrank or svd */
    const bool from_file = p->predictor == LP_FLASH_PRED_FILE, has_pred = p->predictor != LP_FLASH_PRED_NONE;
    const bool svd = p->predictor == LP_FLASH_PRED_SVD || (from_file && !strcmp(L.predictor, "svd"));
    if (from_file) assert_true(!strcmp(L.predictor, "svd") || !strcmp(L.predictor, "lowrank"));
    else assert_string_equal(L.predictor, svd ? "svd" : "none");
    const char *src = NULL;
    assert_int_equal(lp_gguf_get_str(out, "loupe.flash.source", &src, &err), LOUPE_OK);
    const char *slash = strrchr(in_path, '/');
    assert_string_equal(src, slash ? slash + 1 : in_path);
    assert_int_equal(rep->n_layer, L.n_layer);
    assert_int_equal(rep->bundle_stride, L.stride);
    assert_int_equal(rep->in_bytes, in->file_size);
    assert_int_equal(rep->out_bytes, out->file_size);

    /* every tensor on a direct-I/O boundary */
    assert_int_equal(out->data_offset % LP_FLASH_FILE_ALIGN, 0);
    for (uint64_t i = 0; i < out->n_tensors; i++) assert_int_equal(out->tensors[i].offset % LP_FLASH_FILE_ALIGN, 0);

    /* non-FFN tensors byte-identical; the FFN matrices gone */
    uint64_t n_kept = 0;
    for (uint64_t i = 0; i < in->n_tensors; i++) {
        const lp_gguf_tensor *t = &in->tensors[i];
        int64_t j = lp_gguf_find_tensor(out, t->name);
        if (ffn_part(t->name) >= 0) {
            assert_true(j < 0);
            continue;
        }
        assert_true(j >= 0);
        const lp_gguf_tensor *u = &out->tensors[j];
        assert_int_equal(u->type, t->type);
        assert_int_equal(u->n_dims, t->n_dims);
        assert_memory_equal(u->ne, t->ne, sizeof t->ne);
        assert_int_equal(u->nbytes, t->nbytes);
        assert_memory_equal(u->data, t->data, t->nbytes);
        n_kept++;
    }
    assert_int_equal(out->n_tensors, n_kept + (uint64_t)L.n_layer * (has_pred ? 3 : 1));
    /* every input key is there with its value, but general.alignment */
    for (uint64_t i = 0; i < in->n_kv; i++) {
        if (!strcmp(in->kv[i].key, "general.alignment")) continue;
        const lp_gguf_value *a = &in->kv[i].val, *b = lp_gguf_get(out, in->kv[i].key);
        assert_non_null(b);
        assert_int_equal(a->type, b->type);
        if (a->type == LP_GGUF_STRING) assert_string_equal(a->v.str.s, b->v.str.s);
        else if (a->type != LP_GGUF_ARRAY) assert_memory_equal(&a->v, &b->v, sizeof a->v.u64);
        else assert_int_equal(a->v.arr.n, b->v.arr.n);
    }

    const lp_gguf_value *ranks = lp_gguf_get(out, "loupe.flash.predictor_rank");
    const lp_gguf_value *energies = lp_gguf_get(out, "loupe.flash.predictor_energy");
    assert_int_equal(ranks != NULL, has_pred);
    assert_int_equal(energies != NULL, svd);

    uint8_t *q = malloc(L.down_bytes);
    float *col = malloc((size_t)L.n_embd * sizeof *col);
    assert_non_null(q);
    assert_non_null(col);
    for (int l = 0; l < L.n_layer; l++) {
        const lp_gguf_tensor *gate = find(in, "blk.%d.ffn_gate.weight", l), *up = find(in, "blk.%d.ffn_up.weight", l);
        const lp_gguf_tensor *down = find(in, "blk.%d.ffn_down.weight", l), *b = find(out, "blk.%d.ffn_bundle", l);
        assert_non_null(b);
        assert_int_equal(b->type, LP_TYPE_I8);
        assert_int_equal(L.gate_type, gate->type);
        assert_int_equal(L.up_type, up->type);
        const uint8_t *bd = b->data;
        float *d = dequant(down); /* (n_embd, n_ff) */
        const bool exact = down->type == L.down_type && lp_type_block_size(down->type) == 1;
        const size_t es = lp_type_block_bytes(down->type), drow = lp_row_size(down->type, L.n_ff);
        for (int i = 0; i < L.n_ff; i++) {
            const uint8_t *bi = bd + (size_t)i * L.stride;
            assert_memory_equal(bi, (const uint8_t *)gate->data + (size_t)i * L.gate_bytes, L.gate_bytes);
            assert_memory_equal(bi + L.gate_bytes, (const uint8_t *)up->data + (size_t)i * L.up_bytes, L.up_bytes);
            const uint8_t *dc = bi + L.gate_bytes + L.up_bytes;
            if (exact) {
                for (int e = 0; e < L.n_embd; e++)
                    assert_memory_equal(dc + (size_t)e * es, (const uint8_t *)down->data + (size_t)e * drow + (size_t)i * es, es);
            } else {
                for (int e = 0; e < L.n_embd; e++) col[e] = d[(size_t)e * L.n_ff + i];
                assert_int_equal(lp_quantize_row(L.down_type, col, q, L.n_embd), L.down_bytes);
                assert_memory_equal(dc, q, L.down_bytes);
            }
            for (size_t k = L.bundle_bytes; k < L.stride; k++)
                if (bi[k]) fail_msg("layer %d bundle %d: padding byte %zu is %u", l, i, k, bi[k]);
        }
        free(d);

        const lp_gguf_tensor *pa = find(out, "blk.%d.ffn_pred_a", l), *pb = find(out, "blk.%d.ffn_pred_b", l);
        if (!has_pred) {
            assert_null(pa);
            assert_null(pb);
            continue;
        }
        int64_t rank = 0;
        assert_true(lp_gguf_arr_int(ranks, (uint64_t)l, &rank));
        assert_int_equal(rank, rep->layers[l].rank);
        if (p->rank > 0) assert_int_equal(rank, p->rank);
        else if (!from_file) assert_int_equal(rank % 16, 0);
        if (!svd) { /* lowrank: shapes only (the test compares the values) */
            assert_true(isnan(rep->layers[l].energy));
            assert_non_null(pa);
            assert_non_null(pb);
            assert_int_equal(pa->type, LP_TYPE_F16);
            assert_int_equal(pb->type, LP_TYPE_F16);
            assert_int_equal(pa->ne[0], L.n_embd);
            assert_int_equal(pa->ne[1], rank);
            assert_int_equal(pb->ne[0], rank);
            assert_int_equal(pb->ne[1], L.n_ff);
            continue;
        }
        float energy = ((const float *)energies->v.arr.data)[l];
        assert_true(energy == rep->layers[l].energy);
        assert_non_null(pa);
        assert_non_null(pb);
        assert_int_equal(pa->type, LP_TYPE_F16);
        assert_int_equal(pb->type, LP_TYPE_F16);
        assert_int_equal(pa->ne[0], L.n_embd);
        assert_int_equal(pa->ne[1], rank);
        assert_int_equal(pb->ne[0], rank);
        assert_int_equal(pb->ne[1], L.n_ff);
        /* ||W - B A||^2 / ||W||^2 = 1 - energy: B A is W projected on an orthonormal basis */
        float *w = dequant(gate), *A = dequant(pa), *B = dequant(pb);
        double nw = 0, nr = 0;
        for (int i = 0; i < L.n_ff; i++)
            for (int e = 0; e < L.n_embd; e++) {
                double s = 0;
                for (int r = 0; r < rank; r++) s += (double)B[(size_t)i * rank + r] * A[(size_t)r * L.n_embd + e];
                double x = w[(size_t)i * L.n_embd + e];
                nw += x * x;
                nr += (x - s) * (x - s);
            }
        double rel = nr / nw;
        if (fabs(rel - (1.0 - energy)) > 1e-2)
            fail_msg("layer %d: ||W - BA||^2/||W||^2 = %g, but energy %g claims %g", l, rel, (double)energy, 1.0 - energy);
        free(w);
        free(A);
        free(B);
    }
    free(q);
    free(col);
    lp_gguf_close(in);
    lp_gguf_close(out);
}

static void convert_ok(const char *in, const char *out, const lp_flash_convert_params *p, lp_flash_convert_report *rep) {
    lp_error err = {0};
    if (lp_flash_convert(in, out, p, rep, &err) != LOUPE_OK) fail_msg("%s", err.msg);
    assert_no_temp_files();
}

/* ---- conversions ---- */

static void test_tiny_default(void **state) {
    (void)state;
    const char *out = tu_path(g_dir, "tiny-flash.gguf");
    lp_flash_convert_params p = lp_flash_convert_default_params();
    assert_int_equal(p.predictor, LP_FLASH_PRED_SVD);
    assert_int_equal(p.rank, 0);
    lp_flash_convert_report rep;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    /* 5% of a layer's 1 MiB of f16 FFN holds 28 ranks of (256 + 704) f16: capped at 16 */
    for (int l = 0; l < rep.n_layer; l++) assert_int_equal(rep.layers[l].rank, 16);
    lp_flash_convert_report_free(&rep);
    assert_null(rep.layers);
}

static void test_energy_target(void **state) {
    (void)state;
    const char *out = tu_path(g_dir, "tiny-e90.gguf");
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.max_pred_frac = 1.0f; /* no byte cap: the energy decides */
    p.energy = 0.9f;
    lp_flash_convert_report rep;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    for (int l = 0; l < rep.n_layer; l++) {
        assert_true(rep.layers[l].energy >= 0.9f);
        assert_true(rep.layers[l].rank >= 16 && rep.layers[l].rank <= 256);
        /* the smallest such multiple of 16: 16 fewer do not reach the target */
        if (rep.layers[l].rank > 16) {
            lp_flash_convert_params q = p;
            q.rank = rep.layers[l].rank - 16;
            lp_flash_convert_report r2;
            const char *out2 = tu_path(g_dir, "tiny-less.gguf");
            convert_ok(TINY, out2, &q, &r2);
            assert_true(r2.layers[l].energy < 0.9f);
            lp_flash_convert_report_free(&r2);
            unlink(out2);
        }
    }
    lp_flash_convert_report_free(&rep);
}

static void test_fixed_rank(void **state) {
    (void)state;
    const char *out = tu_path(g_dir, "tiny-r24.gguf");
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.rank = 24; /* not a multiple of 16, and above the byte cap: honoured as given */
    lp_flash_convert_report rep;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    for (int l = 0; l < rep.n_layer; l++) assert_int_equal(rep.layers[l].rank, 24);
    lp_flash_convert_report_free(&rep);

    /* a rank the matrix cannot have */
    lp_error err = {0};
    p.rank = 257;
    assert_int_equal(lp_flash_convert(TINY, tu_path(g_dir, "bad.gguf"), &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_contains(err.msg, "257");
    assert_false(exists(tu_path(g_dir, "bad.gguf")));
}

static void test_predictor_none(void **state) {
    (void)state;
    const char *out = tu_path(g_dir, "tiny-none.gguf");
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.predictor = LP_FLASH_PRED_NONE;
    lp_flash_convert_report rep;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(out, &err);
    assert_non_null(g);
    const char *pred = NULL;
    assert_int_equal(lp_gguf_get_str(g, "loupe.flash.predictor", &pred, &err), LOUPE_OK);
    assert_string_equal(pred, "none");
    assert_true(lp_gguf_find_key(g, "loupe.flash.predictor_rank") < 0);
    assert_true(lp_gguf_find_key(g, "loupe.flash.predictor_energy") < 0);
    for (uint64_t i = 0; i < g->n_tensors; i++) assert_null(strstr(g->tensors[i].name, "pred"));
    lp_gguf_close(g);
    lp_flash_convert_report_free(&rep);
}

static void convert_variant(lp_type type, int mixed_layer, lp_type mixed_type, lp_type want_down) {
    const char *in = tu_path(g_dir, "variant.gguf"), *out = tu_path(g_dir, "variant-flash.gguf");
    char in_buf[512], out_buf[512];
    snprintf(in_buf, sizeof in_buf, "%s", in);
    snprintf(out_buf, sizeof out_buf, "%s", out);
    variant v = {.mat_type = type, .mixed_layer = mixed_layer, .mixed_type = mixed_type};
    write_variant(in_buf, &v);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    lp_flash_convert_report rep;
    convert_ok(in_buf, out_buf, &p, &rep);
    check_converted(in_buf, out_buf, &p, &rep, want_down);
    lp_flash_convert_report_free(&rep);
    unlink(in_buf);
    unlink(out_buf);
}

static void test_q8_0(void **state) {
    (void)state;
    convert_variant(LP_TYPE_Q8_0, -1, LP_TYPE_COUNT, LP_TYPE_Q8_0);
}

static void test_q4_0(void **state) {
    (void)state;
    convert_variant(LP_TYPE_Q4_0, -1, LP_TYPE_COUNT, LP_TYPE_Q4_0);
}

/* ffn_down in q4_0 except one layer in q8_0: one down type for the file, q8_0 */
static void test_mixed_down(void **state) {
    (void)state;
    convert_variant(LP_TYPE_Q4_0, 2, LP_TYPE_Q8_0, LP_TYPE_Q8_0);
}

/* f16 in one layer, bf16 elsewhere: f32 keeps every value exactly */
static void test_mixed_float_down(void **state) {
    (void)state;
    convert_variant(LP_TYPE_BF16, 1, LP_TYPE_F16, LP_TYPE_F32);
}

static void test_deterministic(void **state) {
    (void)state;
    const char *a = tu_path(g_dir, "det-a.gguf"), *b = tu_path(g_dir, "det-b.gguf");
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.rank = 64;
    p.seed = 7;
    lp_flash_convert_report r1, r2;
    convert_ok(TINY, a, &p, &r1);
    convert_ok(TINY, b, &p, &r2);
    size_t na = 0, nb = 0;
    char *da = tu_read_file(a, &na), *db = tu_read_file(b, &nb);
    assert_non_null(da);
    assert_non_null(db);
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na);
    free(da);
    free(db);
    lp_flash_convert_report_free(&r1);
    lp_flash_convert_report_free(&r2);
    unlink(a);
    unlink(b);
}

/* ---- predictor files ---- */

/* What write_pred_file writes: per layer a rank and a type for both factors,
 * and the deliberate faults the refusal tests need. */
typedef struct pred_spec {
    int rank[4];
    lp_type type[4];        /* F32 or F16 (anything else: to be refused) */
    const char *kind;       /* loupe.flash.predictor; NULL: key absent */
    const char *drop;       /* a tensor left out */
    const char *reshape;    /* a tensor written with ne[0] = reshape_ne0 */
    int64_t reshape_ne0;
    const char *extra;      /* one more tensor of this name, shaped like blk.0.ffn_pred_a */
    const char *poison;     /* a tensor whose element 5 becomes infinite */
    const char *from;       /* a flash file whose ffn_pred_a/_b are copied (F16, their ranks) */
} pred_spec;

/* The f16 bits each factor must have in the output (the values written, f16 rounded). */
typedef struct pred_want {
    uint16_t *a[4], *b[4];
    int rank[4];
} pred_want;

static void pred_want_free(pred_want *w) {
    for (int l = 0; l < 4; l++) {
        free(w->a[l]);
        free(w->b[l]);
    }
}

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static float urand(void) { /* in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * 0x1.0p-24) * 2.0f - 1.0f;
}

/* One factor tensor: ne = [ne0, ne1] of `type` from random values (or the
 * f16 bits `copy`), poisoned if asked; the expected output bits in *want. */
static void add_factor(lp_gguf_writer *w, const pred_spec *sp, const char *name, lp_type type, int64_t ne0, int64_t ne1,
                       const uint16_t *copy, void **keep, uint16_t **want) {
    if (sp->reshape && !strcmp(name, sp->reshape)) ne0 = sp->reshape_ne0;
    const size_t n = (size_t)(ne0 * ne1);
    float *f = malloc(n * sizeof *f);
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) f[i] = copy ? lp_f16_to_f32(copy[i]) : 0.25f * urand();
    if (sp->poison && !strcmp(name, sp->poison)) f[5] = INFINITY;
    *keep = malloc(lp_row_size(type, ne0) * (size_t)ne1);
    assert_non_null(*keep);
    for (int64_t r = 0; r < ne1; r++)
        assert_true(lp_quantize_row(type, f + r * ne0, (uint8_t *)*keep + (size_t)r * lp_row_size(type, ne0), ne0) > 0);
    if (want) {
        *want = malloc(n * sizeof **want);
        assert_non_null(*want);
        lp_quantize_row(LP_TYPE_F16, f, *want, (int64_t)n);
        if (copy) assert_memory_equal(*want, copy, n * 2); /* f16 through f32 and back: the same bits */
    }
    const int64_t ne[2] = {ne0, ne1};
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, type, 2, ne, *keep), LOUPE_OK);
    free(f);
}

static void write_pred_file(const char *path, const pred_spec *sp, pred_want *want) {
    lp_error err = {0};
    lp_gguf *from = NULL;
    if (sp->from) {
        from = lp_gguf_open(sp->from, &err);
        if (!from) fail_msg("%s", err.msg);
    }
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", "llama"), LOUPE_OK);
    if (sp->kind) assert_int_equal(lp_gguf_writer_set_str(w, "loupe.flash.predictor", sp->kind), LOUPE_OK);
    void *keep[10] = {0};
    int nk = 0;
    if (want) memset(want, 0, sizeof *want);
    char name[64];
    for (int l = 0; l < 4; l++) {
        const uint16_t *ca = NULL, *cb = NULL;
        int rank = sp->rank[l];
        lp_type type = sp->type[l];
        if (from) {
            const lp_gguf_tensor *a = find(from, "blk.%d.ffn_pred_a", l), *b = find(from, "blk.%d.ffn_pred_b", l);
            assert_non_null(a);
            assert_non_null(b);
            ca = a->data;
            cb = b->data;
            rank = (int)a->ne[1];
            type = LP_TYPE_F16;
        }
        if (want) want->rank[l] = rank;
        snprintf(name, sizeof name, "blk.%d.ffn_pred_a", l);
        if (!sp->drop || strcmp(name, sp->drop))
            add_factor(w, sp, name, type, 256, rank, ca, &keep[nk++], want ? &want->a[l] : NULL);
        snprintf(name, sizeof name, "blk.%d.ffn_pred_b", l);
        if (!sp->drop || strcmp(name, sp->drop))
            add_factor(w, sp, name, type, rank, 704, cb, &keep[nk++], want ? &want->b[l] : NULL);
    }
    if (sp->extra) add_factor(w, sp, sp->extra, LP_TYPE_F32, 256, sp->rank[0], NULL, &keep[nk++], NULL);
    assert_int_equal(lp_gguf_writer_write(w, path, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    for (int i = 0; i < nk; i++) free(keep[i]);
    lp_gguf_close(from);
}

/* The output's predictor tensors hold exactly the f16 bits wanted. */
static void check_pred_values(const char *out_path, const pred_want *want, const char *kind) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(out_path, &err);
    if (!g) fail_msg("%s", err.msg);
    const char *pred = NULL;
    assert_int_equal(lp_gguf_get_str(g, "loupe.flash.predictor", &pred, &err), LOUPE_OK);
    assert_string_equal(pred, kind);
    for (int l = 0; l < 4; l++) {
        const lp_gguf_tensor *a = find(g, "blk.%d.ffn_pred_a", l), *b = find(g, "blk.%d.ffn_pred_b", l);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(a->ne[1], want->rank[l]);
        assert_int_equal(a->nbytes, (size_t)want->rank[l] * 256 * 2);
        assert_int_equal(b->nbytes, (size_t)want->rank[l] * 704 * 2);
        assert_memory_equal(a->data, want->a[l], a->nbytes);
        assert_memory_equal(b->data, want->b[l], b->nbytes);
    }
    lp_gguf_close(g);
}

static const pred_spec PRED_PLAIN = {
    .rank = {16, 8, 24, 16},
    .type = {LP_TYPE_F32, LP_TYPE_F16, LP_TYPE_F32, LP_TYPE_F16},
};

/* Random factors, one rank per layer, F32 and F16, no kind key: carried
 * into the output as f16 bits, kind "lowrank", ranks from the tensors, no
 * energy key. */
static void test_predictor_file_lowrank(void **state) {
    (void)state;
    char pf[512], out[512];
    snprintf(pf, sizeof pf, "%s", tu_path(g_dir, "pred.gguf"));
    snprintf(out, sizeof out, "%s", tu_path(g_dir, "tiny-lowrank.gguf"));
    pred_want want;
    write_pred_file(pf, &PRED_PLAIN, &want);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    assert_null(p.predictor_path);
    p.predictor = LP_FLASH_PRED_FILE;
    p.predictor_path = pf;
    lp_flash_convert_report rep;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    check_pred_values(out, &want, "lowrank");
    for (int l = 0; l < 4; l++) assert_int_equal(rep.layers[l].rank, PRED_PLAIN.rank[l]);
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(out, &err);
    assert_non_null(g);
    assert_true(lp_gguf_find_key(g, "loupe.flash.predictor_energy") < 0);
    const lp_gguf_value *ranks = lp_gguf_get(g, "loupe.flash.predictor_rank");
    for (int l = 0; l < 4; l++) {
        int64_t r = 0;
        assert_true(lp_gguf_arr_int(ranks, (uint64_t)l, &r));
        assert_int_equal(r, PRED_PLAIN.rank[l]);
    }
    lp_gguf_close(g);
    lp_flash_convert_report_free(&rep);
    pred_want_free(&want);

    /* the key, explicitly "lowrank": the same */
    pred_spec sp = PRED_PLAIN;
    sp.kind = "lowrank";
    write_pred_file(pf, &sp, &want);
    unlink(out);
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    check_pred_values(out, &want, "lowrank");
    lp_flash_convert_report_free(&rep);
    pred_want_free(&want);
    unlink(out);
    unlink(pf);
}

/* An "svd" predictor file holding the factors of an SVD conversion: the
 * same bits, and the energy computed from them equals the one the SVD
 * conversion stated. */
static void test_predictor_file_svd(void **state) {
    (void)state;
    char svd[512], pf[512], out[512];
    snprintf(svd, sizeof svd, "%s", tu_path(g_dir, "tiny-svd32.gguf"));
    snprintf(pf, sizeof pf, "%s", tu_path(g_dir, "pred-svd.gguf"));
    snprintf(out, sizeof out, "%s", tu_path(g_dir, "tiny-svd-file.gguf"));
    lp_flash_convert_params q = lp_flash_convert_default_params();
    q.rank = 32;
    lp_flash_convert_report r0, rep;
    convert_ok(TINY, svd, &q, &r0);
    pred_spec sp = {.kind = "svd", .from = svd};
    pred_want want;
    write_pred_file(pf, &sp, &want);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.predictor = LP_FLASH_PRED_FILE;
    p.predictor_path = pf;
    convert_ok(TINY, out, &p, &rep);
    check_converted(TINY, out, &p, &rep, LP_TYPE_F16);
    check_pred_values(out, &want, "svd");
    for (int l = 0; l < 4; l++) {
        assert_int_equal(rep.layers[l].rank, 32);
        if (fabsf(rep.layers[l].energy - r0.layers[l].energy) > 2e-3f)
            fail_msg("layer %d: energy %g from the file, %g from the SVD", l, (double)rep.layers[l].energy,
                     (double)r0.layers[l].energy);
    }
    lp_flash_convert_report_free(&r0);
    lp_flash_convert_report_free(&rep);
    pred_want_free(&want);
    unlink(svd);
    unlink(pf);
    unlink(out);
}

/* A faulty predictor file: refused with the status, naming the predictor
 * file and `what`; no output, no temporary file. */
static void expect_pred_refusal(const pred_spec *sp, loupe_status want, const char *what, const char *what2) {
    char pf[512], out[512];
    snprintf(pf, sizeof pf, "%s", tu_path(g_dir, "bad-pred.gguf"));
    snprintf(out, sizeof out, "%s", tu_path(g_dir, "refused.gguf"));
    write_pred_file(pf, sp, NULL);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.predictor = LP_FLASH_PRED_FILE;
    p.predictor_path = pf;
    lp_error err = {0};
    lp_flash_convert_report rep;
    assert_int_equal(lp_flash_convert(TINY, out, &p, &rep, &err), want);
    assert_int_equal(err.status, want);
    assert_contains(err.msg, pf);
    assert_contains(err.msg, what);
    if (what2) assert_contains(err.msg, what2);
    assert_false(exists(out));
    assert_null(rep.layers);
    assert_no_temp_files();
    unlink(pf);
}

static void test_predictor_file_refusals(void **state) {
    (void)state;
    pred_spec sp = PRED_PLAIN;
    /* a missing layer tensor */
    sp.drop = "blk.2.ffn_pred_b";
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.2.ffn_pred_b", "missing");
    sp.drop = "blk.3.ffn_pred_a";
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.3.ffn_pred_a", "missing");
    sp.drop = NULL;
    /* wrong shapes: A's rows are not n_embd long; B's rank is not A's */
    sp.reshape = "blk.1.ffn_pred_a";
    sp.reshape_ne0 = 128;
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.1.ffn_pred_a", "[128, 8, 1, 1]");
    sp.reshape = "blk.0.ffn_pred_b";
    sp.reshape_ne0 = 17;
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.0.ffn_pred_b", "[17, 704, 1, 1]");
    sp.reshape = NULL;
    /* a rank beyond min(n_embd, n_ff) */
    sp.rank[2] = 257;
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.2.ffn_pred_a", "257");
    sp.rank[2] = 24;
    /* a type other than f32/f16 */
    sp.type[1] = LP_TYPE_BF16;
    expect_pred_refusal(&sp, LOUPE_ERR_UNSUPPORTED, "blk.1.ffn_pred_a", "bf16");
    sp.type[1] = LP_TYPE_F16;
    /* a layer the decoder does not have */
    sp.extra = "blk.4.ffn_pred_a";
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.4.ffn_pred_a", "4 layers");
    sp.extra = NULL;
    /* a kind a file cannot hold */
    sp.kind = "none";
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "loupe.flash.predictor", "\"none\"");
    sp.kind = NULL;
    /* a value that is not finite */
    sp.poison = "blk.2.ffn_pred_a";
    expect_pred_refusal(&sp, LOUPE_ERR_FORMAT, "blk.2.ffn_pred_a", "not finite");
    sp.poison = NULL;

    /* no such file */
    char none[512], out[512];
    snprintf(none, sizeof none, "%s", tu_path(g_dir, "no-such-pred.gguf"));
    snprintf(out, sizeof out, "%s", tu_path(g_dir, "refused.gguf"));
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.predictor = LP_FLASH_PRED_FILE;
    p.predictor_path = none;
    lp_error err = {0};
    assert_int_not_equal(lp_flash_convert(TINY, out, &p, NULL, &err), LOUPE_OK);
    assert_contains(err.msg, none);
    assert_false(exists(out));
    /* parameters: a file kind needs a path, a path needs the file kind, ranks come from the file */
    p.predictor_path = NULL;
    assert_int_equal(lp_flash_convert(TINY, out, &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_contains(err.msg, "predictor_path");
    p.predictor_path = none;
    p.rank = 16;
    assert_int_equal(lp_flash_convert(TINY, out, &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_contains(err.msg, "rank");
    p = lp_flash_convert_default_params();
    p.predictor_path = none;
    assert_int_equal(lp_flash_convert(TINY, out, &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_contains(err.msg, none);
    assert_false(exists(out));
    assert_no_temp_files();
}

/* ---- refusals ---- */

static void expect_refusal(const char *in, loupe_status want, const char *what) {
    const char *out = tu_path(g_dir, "refused.gguf");
    char out_buf[512];
    snprintf(out_buf, sizeof out_buf, "%s", out);
    lp_error err = {0};
    lp_flash_convert_params p = lp_flash_convert_default_params();
    lp_flash_convert_report rep;
    assert_int_equal(lp_flash_convert(in, out_buf, &p, &rep, &err), want);
    assert_int_equal(err.status, want);
    assert_contains(err.msg, in);
    assert_contains(err.msg, what);
    assert_false(exists(out_buf));
    assert_null(rep.layers);
    assert_no_temp_files();
}

static void test_refuse_flash_input(void **state) {
    (void)state;
    const char *flash = tu_path(g_dir, "already.gguf");
    char buf[512];
    snprintf(buf, sizeof buf, "%s", flash);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    p.predictor = LP_FLASH_PRED_NONE;
    lp_flash_convert_report rep;
    convert_ok(TINY, buf, &p, &rep);
    lp_flash_convert_report_free(&rep);
    expect_refusal(buf, LOUPE_ERR_INVALID_ARG, "loupe.flash.version");
    unlink(buf);
}

static void test_refuse_missing_tensor(void **state) {
    (void)state;
    char in[512];
    snprintf(in, sizeof in, "%s", tu_path(g_dir, "no-up.gguf"));
    variant v = PLAIN;
    v.drop = "blk.1.ffn_up.weight";
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_FORMAT, "blk.1.ffn_up.weight");
    unlink(in);
}

static void test_refuse_arch(void **state) {
    (void)state;
    char in[512];
    snprintf(in, sizeof in, "%s", tu_path(g_dir, "gpt2.gguf"));
    variant v = PLAIN;
    v.arch = "gpt2";
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_UNSUPPORTED, "general.architecture");
    expect_refusal(in, LOUPE_ERR_UNSUPPORTED, "gpt2");
    unlink(in);
}

static void test_refuse_types(void **state) {
    (void)state;
    char in[512];
    snprintf(in, sizeof in, "%s", tu_path(g_dir, "types.gguf"));
    variant v = PLAIN;
    v.retype = "blk.3.ffn_down.weight";
    v.retype_to = LP_TYPE_Q5_1; /* a ggml type loupe cannot dequantize */
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_UNSUPPORTED, "blk.3.ffn_down.weight");
    expect_refusal(in, LOUPE_ERR_UNSUPPORTED, "q5_1");
    /* gate rows are copied, so all layers need one gate type */
    v.retype = "blk.1.ffn_gate.weight";
    v.retype_to = LP_TYPE_Q8_0;
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_UNSUPPORTED, "blk.1.ffn_gate.weight");
    /* and the shapes must be the decoder's */
    v.retype = NULL;
    v.halve = "blk.0.ffn_up.weight";
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_FORMAT, "blk.0.ffn_up.weight");
    expect_refusal(in, LOUPE_ERR_FORMAT, "[256, 352, 1, 1]");
    unlink(in);
}

static void test_refuse_nonfinite(void **state) {
    (void)state;
    char in[512];
    snprintf(in, sizeof in, "%s", tu_path(g_dir, "nan.gguf"));
    variant v = PLAIN;
    v.poison = "blk.2.ffn_gate.weight";
    write_variant(in, &v);
    expect_refusal(in, LOUPE_ERR_FORMAT, "blk.2.ffn_gate.weight");
    unlink(in);
}

static void test_refuse_truncated(void **state) {
    (void)state;
    size_t n = 0;
    char *data = tu_read_file(TINY, &n);
    assert_non_null(data);
    char in[512];
    snprintf(in, sizeof in, "%s", tu_path(g_dir, "truncated.gguf"));
    FILE *f = fopen(in, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n / 2, f), n / 2);
    fclose(f);
    free(data);
    expect_refusal(in, LOUPE_ERR_FORMAT, "tensor");
    expect_refusal(in, LOUPE_ERR_FORMAT, "past end of file");
    unlink(in);
}

static void test_refuse_same_file(void **state) {
    (void)state;
    char a[512];
    snprintf(a, sizeof a, "%s", tu_path(g_dir, "same.gguf"));
    write_variant(a, &PLAIN);
    size_t n0 = 0, n1 = 0;
    char *before = tu_read_file(a, &n0);
    lp_error err = {0};
    assert_int_equal(lp_flash_convert(a, a, NULL, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_contains(err.msg, a);
    char *after = tu_read_file(a, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);
    unlink(a);
}

/* ---- lp_flash_layout_read on edited files ---- */

static char g_flash[512]; /* a converted tiny model, made by the first test below */

static void expect_layout_error(const char *key, const lp_gguf_value *val, const char *what1, const char *what2) {
    char bad[512];
    snprintf(bad, sizeof bad, "%s", tu_path(g_dir, "edited.gguf"));
    rewrite_key(g_flash, bad, key, val);
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(bad, &err);
    if (!g) fail_msg("%s", err.msg);
    lp_flash_layout L;
    assert_int_equal(lp_flash_layout_read(g, &L, &err), LOUPE_ERR_FORMAT);
    assert_int_equal(err.status, LOUPE_ERR_FORMAT);
    assert_contains(err.msg, bad);
    assert_contains(err.msg, what1);
    if (what2) assert_contains(err.msg, what2);
    lp_gguf_close(g);
    unlink(bad);
}

static lp_gguf_value u32v(uint64_t x) {
    lp_gguf_value v = {.type = LP_GGUF_UINT32};
    v.v.u64 = x;
    return v;
}

static void test_layout_errors(void **state) {
    (void)state;
    snprintf(g_flash, sizeof g_flash, "%s", tu_path(g_dir, "layout.gguf"));
    lp_flash_convert_params p = lp_flash_convert_default_params();
    lp_flash_convert_report rep;
    convert_ok(TINY, g_flash, &p, &rep);
    lp_flash_convert_report_free(&rep);

    /* the unedited copy reads fine (the edit helper itself changes nothing) */
    char same[512];
    snprintf(same, sizeof same, "%s", tu_path(g_dir, "same-copy.gguf"));
    rewrite_key(g_flash, same, "no.such.key", NULL);
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(same, &err);
    assert_non_null(g);
    lp_flash_layout L;
    if (lp_flash_layout_read(g, &L, &err) != LOUPE_OK) fail_msg("%s", err.msg);
    assert_int_equal(L.stride, 1536);
    assert_int_equal(L.bundle_bytes, 1536);
    assert_int_equal(L.gate_bytes, 512);
    lp_gguf_close(g);
    unlink(same);

    g = lp_gguf_open(g_flash, &err);
    assert_non_null(g);
    const lp_gguf_value *off = lp_gguf_get(g, "loupe.flash.layer_offsets");
    assert_non_null(off);
    uint64_t offsets[4];
    memcpy(offsets, off->v.arr.data, sizeof offsets);
    lp_gguf_close(g);

    /* a layer offset that misses its tensor */
    offsets[2] += 4096;
    lp_gguf_value v = {.type = LP_GGUF_ARRAY};
    v.v.arr.elem = LP_GGUF_UINT64;
    v.v.arr.n = 4;
    v.v.arr.data = offsets;
    expect_layout_error("loupe.flash.layer_offsets", &v, "loupe.flash.layer_offsets[2]", "blk.2.ffn_bundle");
    /* one offset too few */
    v.v.arr.n = 3;
    expect_layout_error("loupe.flash.layer_offsets", &v, "loupe.flash.layer_offsets", "3 elements");
    expect_layout_error("loupe.flash.layer_offsets", NULL, "loupe.flash.layer_offsets", "not found");

    /* strides: not a sector multiple, smaller than a bundle, not the tensor's row */
    lp_gguf_value s = u32v(100);
    expect_layout_error("loupe.flash.bundle_stride", &s, "key loupe.flash.bundle_stride = 100 is not a multiple of 512", NULL);
    s = u32v(1024);
    expect_layout_error("loupe.flash.bundle_stride", &s, "loupe.flash.bundle_stride = 1024", "less than");
    s = u32v(2048);
    expect_layout_error("loupe.flash.bundle_stride", &s, "blk.0.ffn_bundle", "[2048, 704]");

    s = u32v(1537);
    expect_layout_error("loupe.flash.bundle_bytes", &s, "loupe.flash.bundle_bytes = 1537", NULL);
    s = u32v(2);
    expect_layout_error("loupe.flash.version", &s, "loupe.flash.version = 2", NULL);
    s = u32v(LP_TYPE_Q4_0); /* rows are f16: q4_0 rows would make other bundle bytes */
    expect_layout_error("loupe.flash.gate_type", &s, "loupe.flash.bundle_bytes", NULL);
    s = u32v(LP_TYPE_IQ2_XXS);
    expect_layout_error("loupe.flash.down_type", &s, "loupe.flash.down_type", "cannot dequantize");
    s = u32v(77);
    expect_layout_error("loupe.flash.up_type", &s, "loupe.flash.up_type = 77", "not a ggml type");

    /* predictor keys against the predictor tensors */
    uint32_t ranks[4] = {16, 16, 32, 16};
    lp_gguf_value r = {.type = LP_GGUF_ARRAY};
    r.v.arr.elem = LP_GGUF_UINT32;
    r.v.arr.n = 4;
    r.v.arr.data = ranks;
    expect_layout_error("loupe.flash.predictor_rank", &r, "blk.2.ffn_pred_a", "[256, 32]");
    expect_layout_error("loupe.flash.predictor_energy", NULL, "loupe.flash.predictor_energy", "not found");
    lp_gguf_value ps = {.type = LP_GGUF_STRING};
    ps.v.str.s = "magic";
    ps.v.str.len = 5;
    expect_layout_error("loupe.flash.predictor", &ps, "loupe.flash.predictor", "magic");
    s = u32v(5);
    expect_layout_error("llama.block_count", &s, "loupe.flash.layer_offsets", "expected n_layer = 5");
    s = u32v(512);
    expect_layout_error("general.alignment", &s, "general.alignment = 512", "4096");
}

/* A flash file that still holds a dense FFN matrix is refused. */
static void test_layout_leftover_ffn(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(g_flash, &err);
    assert_non_null(g);
    lp_gguf *tiny = lp_gguf_open(TINY, &err);
    assert_non_null(tiny);
    lp_gguf_writer *w = lp_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    const lp_gguf_tensor *d = find(tiny, "blk.3.ffn_down.weight", 0);
    assert_int_equal(lp_gguf_writer_add_tensor(w, d->name, d->type, d->n_dims, d->ne, d->data), LOUPE_OK);
    char bad[512];
    snprintf(bad, sizeof bad, "%s", tu_path(g_dir, "leftover.gguf"));
    assert_int_equal(lp_gguf_writer_write(w, bad, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
    lp_gguf_close(tiny);

    g = lp_gguf_open(bad, &err);
    assert_non_null(g);
    lp_flash_layout L;
    assert_int_equal(lp_flash_layout_read(g, &L, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, bad);
    assert_contains(err.msg, "blk.3.ffn_down.weight");
    lp_gguf_close(g);
    unlink(bad);

    /* and a plain decoder is not a flash file */
    g = lp_gguf_open(TINY, &err);
    assert_false(lp_flash_is_flash(g));
    assert_int_equal(lp_flash_layout_read(g, &L, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, TINY);
    assert_contains(err.msg, "loupe.flash.version");
    lp_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_default),
        cmocka_unit_test(test_energy_target),
        cmocka_unit_test(test_fixed_rank),
        cmocka_unit_test(test_predictor_none),
        cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_q4_0),
        cmocka_unit_test(test_mixed_down),
        cmocka_unit_test(test_mixed_float_down),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_predictor_file_lowrank),
        cmocka_unit_test(test_predictor_file_svd),
        cmocka_unit_test(test_predictor_file_refusals),
        cmocka_unit_test(test_refuse_flash_input),
        cmocka_unit_test(test_refuse_missing_tensor),
        cmocka_unit_test(test_refuse_arch),
        cmocka_unit_test(test_refuse_types),
        cmocka_unit_test(test_refuse_nonfinite),
        cmocka_unit_test(test_refuse_truncated),
        cmocka_unit_test(test_refuse_same_file),
        cmocka_unit_test(test_layout_errors),
        cmocka_unit_test(test_layout_leftover_ffn),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
