/* tests/test_region_sampler.c — Ferret's spatial-aware visual sampler
 * (fusion/region_sampler.c) against the PyTorch module
 * tools/reference/region_sampler.py, plus unit tests of point sampling,
 * bilinear reads, degenerate regions, loading errors, the region text and
 * the prompt splice.
 *
 * Parity (tests/fixtures/region/, see tests/fixtures/README.md):
 *   - points from lp_region_sample_points equal the reference's bit for bit;
 *   - FPS and kNN indices of every stage equal exactly;
 *   - every float intermediate within REL_TOL: max|loupe − ref| ≤
 *     REL_TOL · max|ref| per tensor.
 * Run from the repository root. */
#include "support/dumps.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fusion/prompt.h"
#include "../fusion/region_sampler.h"
#include "../language/weights.h"
#include "gguf.h"
#include "pool.h"

#define DIR "tests/fixtures/region/"
#define REL_TOL 1e-4

/* ------------------------------------------------------------------------ */
/* dumps                                                                     */

static void dump_cb(void *user, const char *name, lp_type type, const void *data, int64_t n) {
    dumps_add(user, name, type, data, n);
}

/* ------------------------------------------------------------------------ */
/* fixtures                                                                  */

typedef struct model {
    lp_gguf *g;
    lp_weight_store *ws;
    lp_region_sampler *rs;
} model;

static lp_gguf *open_file(const char *path) {
    lp_error err;
    lp_error_clear(&err);
    lp_gguf *g = lp_gguf_open(path, &err);
    if (!g) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(g);
    return g;
}

static void model_open(model *m, const char *path) {
    lp_error err;
    lp_error_clear(&err);
    m->g = open_file(path);
    m->ws = lp_weights_resident(m->g, &err);
    assert_non_null(m->ws);
    m->rs = lp_region_sampler_load(m->g, m->ws, &err);
    if (!m->rs) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(m->rs);
}

static void model_close(model *m) {
    lp_region_sampler_free(m->rs);
    lp_ws_free(m->ws);
    lp_gguf_close(m->g);
}

static const lp_gguf_tensor *ref_tensor(const lp_gguf *g, const char *name) {
    int64_t i = lp_gguf_find_tensor(g, name);
    return i < 0 ? NULL : &g->tensors[i];
}

static const void *ref_data(const lp_gguf *g, const char *name, lp_type type, int64_t *n) {
    const lp_gguf_tensor *t = ref_tensor(g, name);
    if (!t) fprintf(stderr, "reference tensor %s missing\n", name);
    assert_non_null(t);
    assert_int_equal(t->type, type);
    *n = lp_gguf_tensor_nelements(t);
    return t->data;
}

/* max |a − b| / max |b| over n values */
static double rel_diff(const float *a, const float *b, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - (double)b[i]);
        if (!(x <= d)) d = x;
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return d / (m > 1e-30 ? m : 1e-30);
}

/* Run one reference case `tag` of ref against the model m. */
static void check_case(const model *m, const lp_gguf *ref, const char *tag, lp_pool *pool) {
    char name[96];
    int64_t n, nf;
    lp_error err;
    lp_error_clear(&err);
    const int P = lp_region_sampler_n_points(m->rs), C = lp_region_sampler_in_dim(m->rs);
    uint32_t n_side = 0, seed = 0;
    assert_int_equal(lp_gguf_get_u32(ref, "ref.n_side", &n_side, &err), LOUPE_OK);
    snprintf(name, sizeof name, "%s.seed", tag);
    assert_int_equal(lp_gguf_get_u32(ref, name, &seed, &err), LOUPE_OK);
    const float *fmap = ref_data(ref, "input.features", LP_TYPE_F32, &nf);
    assert_int_equal(nf, (int64_t)n_side * n_side * C);

    /* the points: same sampler, same bits */
    lp_region region;
    memset(&region, 0, sizeof region);
    uint8_t *mask = NULL;
    snprintf(name, sizeof name, "%s.box", tag);
    if (ref_tensor(ref, name)) {
        const float *box = ref_data(ref, name, LP_TYPE_F32, &n);
        assert_int_equal(n, 4);
        region.kind = LP_REGION_BOX;
        memcpy(region.box, box, sizeof region.box);
    } else {
        snprintf(name, sizeof name, "%s.mask", tag);
        const lp_gguf_tensor *t = ref_tensor(ref, name);
        assert_non_null(t);
        const int32_t *mi = ref_data(ref, name, LP_TYPE_I32, &n);
        mask = malloc((size_t)n);
        for (int64_t i = 0; i < n; i++) mask[i] = mi[i] != 0;
        region.kind = LP_REGION_MASK;
        region.mask = mask;
        region.mask_w = (int)t->ne[0];
        region.mask_h = (int)t->ne[1];
    }
    float *xy = malloc(sizeof(float) * 2 * (size_t)P);
    assert_int_equal(lp_region_sample_points(&region, P, seed, xy, &err), LOUPE_OK);
    snprintf(name, sizeof name, "%s.points", tag);
    const float *ref_xy = ref_data(ref, name, LP_TYPE_F32, &n);
    assert_int_equal(n, 2 * P);
    int64_t first = -1;
    for (int64_t i = 0; i < n && first < 0; i++)
        if (memcmp(&xy[i], &ref_xy[i], sizeof(float)) != 0) first = i;
    if (first >= 0) fprintf(stderr, "%s points differ at %lld: %.9g vs %.9g\n", tag, (long long)first, xy[first], ref_xy[first]);
    assert_int_equal(first, -1);

    /* the forward pass, every intermediate */
    dumps d = {0};
    lp_region_sampler_set_dump(m->rs, dump_cb, &d);
    float *out = malloc(sizeof(float) * (size_t)lp_region_sampler_out_dim(m->rs));
    loupe_status st = lp_region_sampler_forward(m->rs, fmap, (int)n_side, ref_xy, P, out, pool, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, LOUPE_OK);
    lp_region_sampler_set_dump(m->rs, NULL, NULL);

    int checked = 0;
    double worst = 0;
    for (int i = 0; i < d.n; i++) {
        const dump_entry *e = &d.e[i];
        snprintf(name, sizeof name, "%s.%s", tag, e->name);
        const lp_gguf_tensor *t = ref_tensor(ref, name);
        if (!t) continue; /* the reference leaves some large ones out */
        assert_int_equal(lp_gguf_tensor_nelements(t), e->n);
        assert_int_equal(t->type, e->type);
        if (e->type == LP_TYPE_I32) {
            const bool same = memcmp(e->data, t->data, 4 * (size_t)e->n) == 0;
            printf("  %-8s %-12s %lld indices %s\n", tag, e->name, (long long)e->n, same ? "identical" : "DIFFER");
            assert_true(same);
        } else {
            const double r = rel_diff(e->data, t->data, e->n);
            printf("  %-8s %-12s rel %.3e\n", tag, e->name, r);
            assert_true(r <= REL_TOL);
            if (r > worst) worst = r;
        }
        checked++;
    }
    snprintf(name, sizeof name, "%s.out", tag);
    const float *ref_out = ref_data(ref, name, LP_TYPE_F32, &n);
    assert_int_equal(n, lp_region_sampler_out_dim(m->rs));
    assert_true(rel_diff(out, ref_out, n) <= REL_TOL);
    /* point_fea, flatten, out and per stage fps, knn, out at least */
    assert_true(checked >= 3 + 3 * lp_region_sampler_n_stages(m->rs));
    printf("  %-8s %d tensors compared, worst rel %.3e\n", tag, checked, worst);

    /* lp_region_embed = sample + forward */
    float *out2 = malloc(sizeof(float) * (size_t)n);
    assert_int_equal(lp_region_embed(m->rs, fmap, (int)n_side, &region, seed, out2, pool, &err), LOUPE_OK);
    assert_memory_equal(out, out2, sizeof(float) * (size_t)n);
    free(out2);
    dumps_free(&d);
    free(out);
    free(xy);
    free(mask);
}

static void test_parity_ferret(void **state) {
    (void)state;
    model m;
    model_open(&m, DIR "ferret-mmproj.gguf");
    assert_int_equal(lp_region_sampler_n_points(m.rs), 512);
    assert_int_equal(lp_region_sampler_n_stages(m.rs), 2);
    assert_int_equal(lp_region_sampler_in_dim(m.rs), 16);
    assert_int_equal(lp_region_sampler_out_dim(m.rs), 24);
    assert_int_equal(lp_region_sampler_pooler(m.rs), LP_REGION_POOL_MAX);
    assert_false(lp_region_sampler_ferret_transpose(m.rs));
    lp_gguf *ref = open_file(DIR "ferret-ref.gguf");
    check_case(&m, ref, "box", NULL);
    check_case(&m, ref, "mask", NULL);
    check_case(&m, ref, "small", NULL);
    lp_pool *pool = lp_pool_new(2);
    assert_non_null(pool);
    check_case(&m, ref, "box", pool);
    lp_pool_free(pool);
    lp_gguf_close(ref);
    model_close(&m);
}

static void test_parity_mean_transposed(void **state) {
    (void)state;
    model m;
    model_open(&m, DIR "mean-mmproj.gguf");
    assert_int_equal(lp_region_sampler_n_stages(m.rs), 3);
    assert_int_equal(lp_region_sampler_pooler(m.rs), LP_REGION_POOL_MEAN);
    assert_true(lp_region_sampler_ferret_transpose(m.rs));
    lp_gguf *ref = open_file(DIR "mean-ref.gguf");
    check_case(&m, ref, "box", NULL);
    lp_gguf_close(ref);
    model_close(&m);
}

/* ------------------------------------------------------------------------ */
/* points                                                                    */

static void test_points_in_box(void **state) {
    (void)state;
    lp_error err;
    lp_region r = {.kind = LP_REGION_BOX, .box = {0.125f, 0.5f, 0.375f, 0.75f}};
    float xy[2 * 1000], xy2[2 * 1000];
    for (uint64_t seed = 0; seed < 5; seed++) {
        assert_int_equal(lp_region_sample_points(&r, 1000, seed, xy, &err), LOUPE_OK);
        for (int i = 0; i < 1000; i++) {
            assert_true(xy[2 * i] >= 0.125f && xy[2 * i] <= 0.375f);
            assert_true(xy[2 * i + 1] >= 0.5f && xy[2 * i + 1] <= 0.75f);
        }
        /* deterministic per seed, different across seeds */
        assert_int_equal(lp_region_sample_points(&r, 1000, seed, xy2, &err), LOUPE_OK);
        assert_memory_equal(xy, xy2, sizeof xy);
        assert_int_equal(lp_region_sample_points(&r, 1000, seed + 100, xy2, &err), LOUPE_OK);
        assert_memory_not_equal(xy, xy2, sizeof xy);
    }
}

static void test_points_in_mask(void **state) {
    (void)state;
    lp_error err;
    enum { W = 23, H = 17 };
    uint8_t mask[W * H] = {0};
    int inside = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if ((x - 11) * (x - 11) + (y - 8) * (y - 8) < 30 || (x == 0 && y == H - 1)) {
                mask[y * W + x] = 255;
                inside++;
            }
    lp_region r = {.kind = LP_REGION_MASK, .mask = mask, .mask_w = W, .mask_h = H};
    for (int n = 1; n <= 200; n += 199) { /* fewer and more points than pixels */
        float xy[2 * 200], xy2[2 * 200];
        int hits[W * H] = {0};
        assert_int_equal(lp_region_sample_points(&r, n, 42, xy, &err), LOUPE_OK);
        for (int i = 0; i < n; i++) {
            const int x = (int)lrintf(xy[2 * i] * W), y = (int)lrintf(xy[2 * i + 1] * H);
            assert_true(x >= 0 && x < W && y >= 0 && y < H);
            assert_true(xy[2 * i] == (float)x / (float)W && xy[2 * i + 1] == (float)y / (float)H);
            assert_true(mask[y * W + x] != 0);
            hits[y * W + x]++;
        }
        if (n > inside) { /* every pixel used at least once */
            for (int i = 0; i < W * H; i++) assert_true(!mask[i] || hits[i] > 0);
        } else {          /* without replacement */
            for (int i = 0; i < W * H; i++) assert_true(hits[i] <= 1);
        }
        assert_int_equal(lp_region_sample_points(&r, n, 42, xy2, &err), LOUPE_OK);
        assert_memory_equal(xy, xy2, sizeof(float) * 2 * (size_t)n);
    }
}

static void test_degenerate_regions(void **state) {
    (void)state;
    lp_error err;
    float xy[2 * 64];
    /* one-pixel box: every point is the same */
    lp_region r = {.kind = LP_REGION_BOX, .box = {0.3f, 0.6f, 0.3f, 0.6f}};
    assert_int_equal(lp_region_sample_points(&r, 64, 1, xy, &err), LOUPE_OK);
    for (int i = 0; i < 64; i++) assert_true(xy[2 * i] == 0.3f && xy[2 * i + 1] == 0.6f);
    /* partly outside: clipped to the image */
    lp_region c = {.kind = LP_REGION_BOX, .box = {-0.5f, 0.8f, 0.25f, 1.7f}};
    assert_int_equal(lp_region_sample_points(&c, 64, 2, xy, &err), LOUPE_OK);
    for (int i = 0; i < 64; i++) {
        assert_true(xy[2 * i] >= 0.0f && xy[2 * i] <= 0.25f);
        assert_true(xy[2 * i + 1] >= 0.8f && xy[2 * i + 1] <= 1.0f);
    }
    /* wholly outside, inverted, not finite: errors */
    lp_region o = {.kind = LP_REGION_BOX, .box = {1.2f, 0.1f, 1.5f, 0.2f}};
    assert_int_equal(lp_region_sample_points(&o, 64, 2, xy, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "outside the image"));
    lp_region inv = {.kind = LP_REGION_BOX, .box = {0.5f, 0.1f, 0.4f, 0.2f}};
    assert_int_equal(lp_region_sample_points(&inv, 64, 2, xy, &err), LOUPE_ERR_INVALID_ARG);
    lp_region nan_box = {.kind = LP_REGION_BOX, .box = {NAN, 0.1f, 0.4f, 0.2f}};
    assert_int_equal(lp_region_sample_points(&nan_box, 64, 2, xy, &err), LOUPE_ERR_INVALID_ARG);
    /* empty mask */
    uint8_t mask[12] = {0};
    lp_region e = {.kind = LP_REGION_MASK, .mask = mask, .mask_w = 4, .mask_h = 3};
    assert_int_equal(lp_region_sample_points(&e, 64, 2, xy, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "empty"));
    lp_region bad = {.kind = LP_REGION_MASK, .mask = NULL, .mask_w = 4, .mask_h = 3};
    assert_int_equal(lp_region_sample_points(&bad, 64, 2, xy, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_region_sample_points(&r, 0, 2, xy, &err), LOUPE_ERR_INVALID_ARG);

    /* a one-pixel region runs through the whole model (all points equal:
     * FPS and kNN fall back to index order) */
    model m;
    model_open(&m, DIR "ferret-mmproj.gguf");
    const int C = lp_region_sampler_in_dim(m.rs), n_side = 4;
    float fmap[4 * 4 * 16];
    for (int i = 0; i < n_side * n_side * C; i++) fmap[i] = (float)((i * 37) % 11) - 5.0f;
    float out[64], out2[64];
    assert_int_equal(lp_region_embed(m.rs, fmap, n_side, &r, 9, out, NULL, &err), LOUPE_OK);
    for (int i = 0; i < lp_region_sampler_out_dim(m.rs); i++) assert_true(isfinite(out[i]));
    assert_int_equal(lp_region_embed(m.rs, fmap, n_side, &r, 10, out2, NULL, &err), LOUPE_OK);
    assert_memory_equal(out, out2, sizeof(float) * (size_t)lp_region_sampler_out_dim(m.rs));
    /* bad forward arguments */
    float pts[2 * 512];
    for (int i = 0; i < 2 * 512; i++) pts[i] = 0.5f;
    assert_int_equal(lp_region_sampler_forward(m.rs, fmap, n_side, pts, 100, out, NULL, &err), LOUPE_ERR_INVALID_ARG);
    pts[7] = 1.5f;
    assert_int_equal(lp_region_sampler_forward(m.rs, fmap, n_side, pts, 512, out, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "point 3"));
    model_close(&m);
}

/* ------------------------------------------------------------------------ */
/* bilinear reads at grid points                                             */

static void grid_read(const char *file, bool transposed) {
    model m;
    model_open(&m, file);
    lp_error err;
    const int C = lp_region_sampler_in_dim(m.rs), P = lp_region_sampler_n_points(m.rs), n_side = 5;
    float *fmap = malloc(sizeof(float) * (size_t)(n_side * n_side * C));
    for (int i = 0; i < n_side * n_side * C; i++) fmap[i] = sinf((float)i * 0.7f) * 3.0f;
    float *xy = malloc(sizeof(float) * 2 * (size_t)P);
    /* grid point (i, j) is (i/4, j/4): exact in binary, so the read is exact */
    for (int p = 0; p < P; p++) {
        xy[2 * p] = (float)(p % n_side) / 4.0f;
        xy[2 * p + 1] = (float)((p / n_side) % n_side) / 4.0f;
    }
    dumps d = {0};
    lp_region_sampler_set_dump(m.rs, dump_cb, &d);
    float out[64];
    assert_int_equal(lp_region_sampler_forward(m.rs, fmap, n_side, xy, P, out, NULL, &err), LOUPE_OK);
    const dump_entry *e = dump_find(&d, "point_fea");
    assert_non_null(e);
    assert_int_equal(e->n, (int64_t)P * C);
    const float *fea = e->data;
    for (int p = 0; p < P; p++) {
        int col = p % n_side, row = (p / n_side) % n_side;
        if (transposed) {
            int t = col;
            col = row;
            row = t;
        }
        assert_memory_equal(fea + (size_t)p * C, fmap + ((size_t)row * n_side + col) * C, sizeof(float) * (size_t)C);
    }
    dumps_free(&d);
    free(xy);
    free(fmap);
    model_close(&m);
}

static void test_bilinear_grid_points(void **state) {
    (void)state;
    grid_read(DIR "ferret-mmproj.gguf", false);
    grid_read(DIR "mean-mmproj.gguf", true);
}

/* ------------------------------------------------------------------------ */
/* loading                                                                   */

static void test_load_absent(void **state) {
    (void)state;
    lp_error err;
    lp_gguf *g = open_file("tests/fixtures/parity/tiny-f32-mmproj.gguf");
    lp_weight_store *ws = lp_weights_resident(g, &err);
    assert_false(lp_region_sampler_present(g));
    err.status = LOUPE_ERR_INTERNAL;
    assert_null(lp_region_sampler_load(g, ws, &err));
    assert_int_equal(err.status, LOUPE_OK);
    lp_ws_free(ws);
    lp_gguf_close(g);
}

/* Copy ferret-mmproj.gguf to path, leaving out tensor `drop` and replacing
 * key `key` (and `key2`) with an i32 array `arr` of n values when not NULL. */
static void write_variant2(const char *path, const char *drop, const char *key, const char *key2, const int32_t *arr,
                           int n) {
    lp_gguf *src = open_file(DIR "ferret-mmproj.gguf");
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    for (uint64_t i = 0; i < src->n_kv; i++) {
        if (strcmp(src->kv[i].key, "general.alignment") == 0) continue;
        assert_int_equal(lp_gguf_writer_set_value(w, src->kv[i].key, &src->kv[i].val), LOUPE_OK);
    }
    if (key) assert_int_equal(lp_gguf_writer_set_arr(w, key, LP_GGUF_INT32, arr, (uint64_t)n), LOUPE_OK);
    if (key2) assert_int_equal(lp_gguf_writer_set_arr(w, key2, LP_GGUF_INT32, arr, (uint64_t)n), LOUPE_OK);
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const lp_gguf_tensor *t = &src->tensors[i];
        if (drop && strcmp(t->name, drop) == 0) continue;
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    lp_error err;
    assert_int_equal(lp_gguf_writer_write(w, path, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(src);
}

static void write_variant(const char *path, const char *drop, const char *key, const int32_t *arr, int n) {
    write_variant2(path, drop, key, NULL, arr, n);
}

static void expect_load_error(const char *path, loupe_status want, const char *needle) {
    lp_error err;
    lp_error_clear(&err);
    lp_gguf *g = open_file(path);
    lp_weight_store *ws = lp_weights_resident(g, &err);
    assert_non_null(ws);
    lp_region_sampler *rs = lp_region_sampler_load(g, ws, &err);
    assert_null(rs);
    if (err.status != want || !strstr(err.msg, needle) || !strstr(err.msg, path))
        fprintf(stderr, "unexpected: %s (status %d)\n", err.msg, err.status);
    assert_int_equal(err.status, want);
    assert_non_null(strstr(err.msg, needle));
    assert_non_null(strstr(err.msg, path));
    lp_ws_free(ws);
    lp_gguf_close(g);
}

static void test_load_errors(void **state) {
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "/tmp/loupe-region-%d.gguf", (int)getpid());
    write_variant(path, "mm.region.1.norm.bias", NULL, NULL, 0);
    expect_load_error(path, LOUPE_ERR_FORMAT, "mm.region.1.norm.bias");
    write_variant(path, "mm.region.flatten.weight", NULL, NULL, 0);
    expect_load_error(path, LOUPE_ERR_FORMAT, "mm.region.flatten.weight");
    const int32_t too_many[2] = {600, 32};
    write_variant(path, NULL, "clip.vision.region.sub_points", too_many, 2);
    expect_load_error(path, LOUPE_ERR_FORMAT, "sub_points");
    const int32_t three[3] = {128, 32, 8};
    write_variant(path, NULL, "clip.vision.region.sub_points", three, 3);
    expect_load_error(path, LOUPE_ERR_FORMAT, "3 vs 2 stages");
    /* one stage in the keys, two in the tensors */
    const int32_t one[1] = {24};
    write_variant2(path, NULL, "clip.vision.region.sub_points", "clip.vision.region.neighbors", one, 1);
    expect_load_error(path, LOUPE_ERR_FORMAT, "mm.region.1.diff.weight present");
    /* flatten width follows sub_points[-1]: 16 anchors mismatch the tensor */
    const int32_t fewer[2] = {128, 16};
    write_variant(path, NULL, "clip.vision.region.sub_points", fewer, 2);
    expect_load_error(path, LOUPE_ERR_FORMAT, "mm.region.flatten.weight");
    unlink(path);
}

/* ------------------------------------------------------------------------ */
/* region text                                                               */

static void test_format(void **state) {
    (void)state;
    lp_error err;
    char buf[64];
    const double full[4] = {0, 0, 639, 479};
    assert_int_equal(lp_region_format(full, 640, 480, buf, sizeof buf, &err), LOUPE_OK);
    assert_string_equal(buf, "[0, 0, 998, 997]");
    const double edge[4] = {-3, 0.4, 640, 480}; /* clipped to 0 and 999 */
    assert_int_equal(lp_region_format(edge, 640, 480, buf, sizeof buf, &err), LOUPE_OK);
    assert_string_equal(buf, "[0, 0, 999, 999]");
    const double mid[4] = {64, 48, 320.64, 240.48}; /* exact 100s and truncation */
    assert_int_equal(lp_region_format(mid, 640, 480, buf, sizeof buf, &err), LOUPE_OK);
    assert_string_equal(buf, "[100, 100, 501, 501]");
    const double pt[2] = {1, 999.9};
    assert_int_equal(lp_region_format_point(pt, 1000, 1000, buf, sizeof buf, &err), LOUPE_OK);
    assert_string_equal(buf, "[1, 999]");
    assert_int_equal(lp_region_quantize(0.999, 1000), 0);
    assert_int_equal(lp_region_quantize(998.999, 1000), 998);
    assert_int_equal(lp_region_quantize(1e300, 7), 999);
    assert_int_equal(lp_region_format(full, 640, 480, buf, 8, &err), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_region_format(full, 0, 480, buf, sizeof buf, &err), LOUPE_ERR_INVALID_ARG);
    const double bad[4] = {0, NAN, 1, 1};
    assert_int_equal(lp_region_format(bad, 640, 480, buf, sizeof buf, &err), LOUPE_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------ */
/* the prompt splice                                                         */

static void test_prompt_splice(void **state) {
    (void)state;
    lp_error err;
    enum { E = 3, MARK = 9 };
    int32_t *a = malloc(4 * sizeof *a), *b = malloc(2 * sizeof *b);
    const int32_t ta[4] = {1, MARK, 5, MARK}, tb[2] = {7, MARK};
    memcpy(a, ta, sizeof ta);
    memcpy(b, tb, sizeof tb);
    lp_prompt p = {.n_seg = 3, .n_text = 6, .n_image = 2, .n_pos = 8};
    p.seg[0] = (lp_segment){LP_SEGMENT_TOKENS, 4, a};
    p.seg[1] = (lp_segment){LP_SEGMENT_IMAGE, 2, NULL};
    p.seg[2] = (lp_segment){LP_SEGMENT_TOKENS, 2, b};
    assert_int_equal(lp_prompt_count_token(&p, MARK), 3);
    float out[8 * E], extra[3 * E];
    for (int i = 0; i < 8 * E; i++) out[i] = (float)i;
    for (int i = 0; i < 3 * E; i++) extra[i] = -1.0f - (float)i;
    assert_int_equal(lp_prompt_splice_marker(&p, MARK, extra, 2, E, out, &err), LOUPE_ERR_MISMATCH);
    assert_true(out[E] == (float)E); /* untouched */
    assert_int_equal(lp_prompt_splice_marker(&p, MARK, extra, 3, E, out, &err), LOUPE_OK);
    const int rows[3] = {1, 3, 7};
    for (int k = 0; k < 3; k++) assert_memory_equal(out + rows[k] * E, extra + k * E, sizeof(float) * E);
    for (int r = 0; r < 8; r++)
        if (r != 1 && r != 3 && r != 7) assert_true(out[r * E] == (float)(r * E));
    lp_prompt_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_ferret),
        cmocka_unit_test(test_parity_mean_transposed),
        cmocka_unit_test(test_points_in_box),
        cmocka_unit_test(test_points_in_mask),
        cmocka_unit_test(test_degenerate_regions),
        cmocka_unit_test(test_bilinear_grid_points),
        cmocka_unit_test(test_load_absent),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_prompt_splice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
