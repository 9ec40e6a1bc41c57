/* tests/test_internvl.c — loupe's InternVL path against llama.cpp on a
 * random-weight pair in llama.cpp's conventions (tests/fixtures/internvl/,
 * made by tools/gen_model --family internvl and
 * tools/llamacpp/vlm_dump.cpp; commands in tests/fixtures/README.md).
 *
 * For each fixture image (square, below the tile size, a 1280×853 photo,
 * extreme aspect ratios), loupe in llama.cpp mode (lp_vlm_params.llamacpp:
 * llama.cpp's tiling and its CLIP quirks) must give:
 *   - tiles: the same number, and every tile's f32 pixels bit-identical
 *     (FNV-1a 64 of the bytes, as the dump records them);
 *   - image embeddings (every tile through the ViT, pixel shuffle and
 *     projector) within ABS_TOL max abs of llama.cpp's;
 *   - the prompt: the whole chat turn through lp_vlm_ask (template,
 *     <img>…</img> wrapping, tokenizer) gives the dump's token ids at the
 *     text positions (their embedding rows, exactly) and the image rows at
 *     the image positions;
 *   - last-position logits within ABS_TOL, and 32 greedy tokens identical
 *     (the decoder run on the same input rows, no stop at end-of-turn).
 * Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fusion/vlm.h"
#include "../language/decoder.h"
#include "../language/weights.h"
#include "../vision/clip.h"
#include "../vision/tiles.h"
#include "gguf.h"
#include "pool.h"

#define DIR "tests/fixtures/internvl/"
#define ABS_TOL 1e-3
#define N_GEN 32
#define SYSTEM "You are a helpful assistant."
#define QUESTION "Please provide the bounding box coordinate of the region this sentence describes: <ref>the cup</ref>"

/* The decoder input of every prefill pass ("embd_in"), concatenated: a long
 * prompt runs in several n_batch passes. */
typedef struct rows {
    float *v;
    int64_t n, cap;
} rows;

static void dump_cb(void *user, const char *name, const float *data, int64_t n) {
    rows *r = user;
    if (strcmp(name, "embd_in")) return;
    if (r->n + n > r->cap) {
        r->cap = 2 * (r->n + n);
        r->v = realloc(r->v, (size_t)r->cap * sizeof *r->v);
        assert_non_null(r->v);
    }
    memcpy(r->v + r->n, data, (size_t)n * sizeof *data);
    r->n += n;
}

static const void *ref_data(const lp_gguf *g, const char *name, lp_type type, int64_t *n) {
    const int64_t i = lp_gguf_find_tensor(g, name);
    if (i < 0) fail_msg("reference tensor %s missing", name);
    assert_int_equal(g->tensors[i].type, type);
    *n = lp_gguf_tensor_nelements(&g->tensors[i]);
    return g->tensors[i].data;
}

static double max_abs_diff(const float *a, const float *b, int64_t n) {
    double d = 0;
    for (int64_t i = 0; i < n; i++) {
        const double x = fabs((double)a[i] - (double)b[i]);
        if (!(x <= d)) d = x;
    }
    return d;
}

static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

typedef struct fixture {
    lp_vlm *vlm;
    lp_gguf *lm_g;
    lp_weight_store *lm_ws;
    lp_llama *lm;
    lp_pool *pool;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    lp_error err = {0};
    lp_vlm_params vp = lp_vlm_default_params();
    vp.llamacpp = true;
    f->vlm = lp_vlm_load(DIR "tiny-f32.gguf", DIR "tiny-f32-mmproj.gguf", &vp, &err);
    if (!f->vlm) fail_msg("%s", err.msg);
    assert_int_equal(lp_vlm_get_family(f->vlm), LP_VLM_INTERNVL);
    f->lm_g = lp_gguf_open(DIR "tiny-f32.gguf", &err);
    assert_non_null(f->lm_g);
    f->lm_ws = lp_weights_resident(f->lm_g, &err);
    assert_non_null(f->lm_ws);
    f->lm = lp_llama_load(f->lm_ws, &err);
    assert_non_null(f->lm);
    f->pool = lp_pool_new(2);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    lp_pool_free(f->pool);
    lp_llama_free(f->lm);
    lp_ws_free(f->lm_ws);
    lp_gguf_close(f->lm_g);
    lp_vlm_free(f->vlm);
    free(f);
    return 0;
}

static void check_image(fixture *f, int w, int h) {
    char path[256];
    lp_error err = {0};
    snprintf(path, sizeof path, DIR "llamacpp-%dx%d.gguf", w, h);
    lp_gguf *ref = lp_gguf_open(path, &err);
    if (!ref) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, DIR "image-%dx%d.png", w, h);
    lp_image img;
    assert_int_equal(lp_image_load(path, &img, &err), LOUPE_OK);
    printf("  %dx%d\n", w, h);

    /* tiles: count and bits */
    const lp_clip *clip = NULL; /* through the vlm's accessors below */
    (void)clip;
    int64_t n_hash, n_tok_ref, n;
    const int32_t *hash = ref_data(ref, "tiles.hash", LP_TYPE_I32, &n_hash);
    const int n_tiles = (int)(n_hash / 2);
    const int32_t *ntok = ref_data(ref, "image.n_tokens", LP_TYPE_I32, &n);
    n_tok_ref = ntok[0];
    int n_tok = 0;
    assert_int_equal(lp_vlm_image_tokens(f->vlm, w, h, &n_tok, &err), LOUPE_OK);
    assert_int_equal(n_tok, n_tok_ref);

    lp_gguf *mm = lp_gguf_open(DIR "tiny-f32-mmproj.gguf", &err);
    lp_weight_store *mws = lp_weights_resident(mm, &err);
    lp_clip *c = lp_clip_load(mm, mws, &err);
    if (!c) fail_msg("%s", err.msg);
    assert_int_equal(lp_clip_set_quirks(c, LP_CLIP_QUIRKS_LLAMACPP, &err), LOUPE_OK);
    const int S = lp_clip_image_size(c), per_tile = lp_clip_n_out_tokens(c), E = lp_clip_out_dim(c);
    int lo, hi;
    lp_clip_tile_limits(c, &lo, &hi);
    lp_tile_plan plan;
    assert_int_equal(lp_tiles_plan(w, h, S, lo, hi, LP_PREP_LLAMACPP, &plan, &err), LOUPE_OK);
    assert_int_equal(plan.n_tiles, n_tiles);
    const size_t px_n = (size_t)3 * S * S;
    float *px = malloc((size_t)n_tiles * px_n * sizeof *px);
    assert_int_equal(lp_tiles_pixels(&img, S, lo, hi, LP_PREP_LLAMACPP, lp_clip_mean(c), lp_clip_std(c), px, &plan,
                                     &err),
                     LOUPE_OK);
    for (int t = 0; t < n_tiles; t++) {
        const uint64_t hh = fnv1a(px + (size_t)t * px_n, px_n * sizeof(float));
        const uint64_t want = (uint64_t)(uint32_t)hash[2 * t] | (uint64_t)(uint32_t)hash[2 * t + 1] << 32;
        if (hh != want) fail_msg("%dx%d: tile %d of %d: pixels differ from llama.cpp's", w, h, t + 1, n_tiles);
    }

    /* image embeddings */
    int64_t n_embd_ref;
    const float *embd_ref = ref_data(ref, "image.embd", LP_TYPE_F32, &n_embd_ref);
    assert_int_equal(n_embd_ref, (int64_t)n_tok * E);
    float *embd = malloc((size_t)n_tok * E * sizeof *embd);
    for (int t = 0; t < n_tiles; t++)
        assert_int_equal(lp_clip_encode(c, px + (size_t)t * px_n, embd + (size_t)t * per_tile * E, f->pool, &err),
                         LOUPE_OK);
    const double d_img = max_abs_diff(embd, embd_ref, n_embd_ref);
    double ref_max = 0;
    for (int64_t i = 0; i < n_embd_ref; i++) ref_max = fmax(ref_max, fabs(embd_ref[i]));
    printf("    %d tiles, %d image tokens, embeddings max|diff| %.3g (max|ref| %.3g)\n", n_tiles, n_tok, d_img,
           ref_max);
    assert_true(d_img <= ABS_TOL);

    /* the whole turn through lp_vlm_ask: its decoder input and logits */
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 2;
    lp_vlm_ctx *ctx = lp_vlm_ctx_new(f->vlm, &cp, &err);
    assert_non_null(ctx);
    rows in = {0};
    lp_vlm_ctx_set_dump(ctx, dump_cb, &in);
    lp_vlm_gen_params g = lp_vlm_gen_default_params();
    g.system = SYSTEM;
    g.n_predict = 1;
    char *answer = NULL;
    lp_vlm_stats st;
    assert_int_equal(lp_vlm_ask(f->vlm, ctx, &img, QUESTION, &g, NULL, NULL, &answer, &st, &err), LOUPE_OK);
    free(answer);
    int64_t n_pos;
    const int32_t *ids = ref_data(ref, "prompt.ids", LP_TYPE_I32, &n_pos);
    assert_int_equal(in.n, n_pos * E);
    const float *rows = in.v;
    float *tok_row = malloc((size_t)E * sizeof *tok_row);
    int img_row = 0;
    for (int64_t i = 0; i < n_pos; i++) {
        if (ids[i] < 0) {
            assert_true(max_abs_diff(rows + i * E, embd_ref + (size_t)img_row++ * E, E) <= ABS_TOL);
            continue;
        }
        assert_int_equal(lp_llama_embed(f->lm, &ids[i], 1, tok_row, &err), LOUPE_OK);
        if (memcmp(tok_row, rows + i * E, (size_t)E * sizeof *tok_row))
            fail_msg("%dx%d: prompt position %lld is not token %d", w, h, (long long)i, ids[i]);
    }
    assert_int_equal(img_row, n_tok);

    /* logits and 32 greedy tokens, from the same rows */
    const int V = lp_llama_n_vocab(f->lm);
    float *logits = malloc((size_t)V * sizeof *logits);
    lp_llama_state *s = lp_llama_state_new(f->lm, (int)n_pos + N_GEN + 1, &err);
    assert_non_null(s);
    assert_int_equal(lp_llama_forward(f->lm, s, rows, (int)n_pos, logits, f->pool, &err), LOUPE_OK);
    int64_t nv;
    const float *logits_ref = ref_data(ref, "logits", LP_TYPE_F32, &nv);
    assert_int_equal(nv, V);
    const double d_log = max_abs_diff(logits, logits_ref, V);
    int64_t ng;
    const int32_t *greedy_ref = ref_data(ref, "greedy.tokens", LP_TYPE_I32, &ng);
    assert_int_equal(ng, N_GEN);
    for (int k = 0; k < N_GEN; k++) {
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        if (best != greedy_ref[k]) fail_msg("%dx%d: greedy token %d: loupe %d, llama.cpp %d", w, h, k, best, greedy_ref[k]);
        assert_int_equal(lp_llama_forward_tokens(f->lm, s, &best, 1, logits, f->pool, &err), LOUPE_OK);
    }
    printf("    logits max|diff| %.3g, %d greedy tokens identical\n", d_log, N_GEN);
    assert_true(d_log <= ABS_TOL);

    lp_llama_state_free(s);
    free(logits);
    free(tok_row);
    free(in.v);
    lp_vlm_ctx_free(ctx);
    free(embd);
    free(px);
    lp_clip_free(c);
    lp_ws_free(mws);
    lp_gguf_close(mm);
    lp_image_free(&img);
    lp_gguf_close(ref);
}

static void test_square(void **state) { check_image(*state, 448, 448); }
static void test_small(void **state) { check_image(*state, 300, 200); }
static void test_photo(void **state) { check_image(*state, 1280, 853); }
static void test_wide(void **state) { check_image(*state, 2000, 300); }
static void test_tall(void **state) { check_image(*state, 300, 1500); }
static void test_big_square(void **state) { check_image(*state, 900, 900); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_square), cmocka_unit_test(test_small), cmocka_unit_test(test_photo),
        cmocka_unit_test(test_wide),   cmocka_unit_test(test_tall),  cmocka_unit_test(test_big_square),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
