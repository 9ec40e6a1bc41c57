/* tests/test_parity.c — loupe's LLaVA pipeline (CLIP ViT + mlp projector +
 * llama decoder) against two independent references on random-weight
 * models in llama.cpp's conventions (tests/fixtures/parity/, made by
 * tools/gen_model, tools/reference/llava_reference.py and
 * tools/llamacpp/llava_dump.cpp; see tests/fixtures/README.md).
 *
 * Sequence: prefix ids | image embeddings | suffix ids, ids from the fixture
 * (prompt.prefix / prompt.suffix), then 32 greedy tokens.
 *
 * Against PyTorch (float64; ref-tiny-*.gguf):
 *   - pixels: lp_clip_preprocess(LP_PREP_LLAMACPP) of image-32.png equals
 *     the reference's f32 normalization exactly;
 *   - "llama.cpp structure" (quirks CLS_LAST | DROP_LAYER | POST_LN |
 *     GELU_TANH, i.e. LP_CLIP_QUIRKS_LLAMACPP without the two numeric
 *     shortcuts ACT_F16 and MATMUL_F16, which PyTorch does not model) and
 *     "HF semantics" (LP_CLIP_QUIRKS_NONE, reference names "hf.*"): every
 *     dumped ViT/projector activation, then every decoder activation for
 *     the reference's own decoder input (embd_in), and the logits of the
 *     whole pipeline, within REL_TOL relative: max|loupe − ref| ≤
 *     REL_TOL · max|ref| per tensor;
 *   - greedy 32 tokens identical.
 * Against llama.cpp (CPU, flash attention off, f32 KV cache;
 * llamacpp-tiny-*.gguf), loupe with its default quirks
 * (LP_CLIP_QUIRKS_LLAMACPP) and an f32 KV cache:
 *   - F32 model: image embeddings and last-position logits within ABS_TOL
 *     max abs, greedy 32 tokens identical;
 *   - Q8_0 model: greedy 32 tokens identical (llama.cpp quantizes
 *     activations to q8_0 for q8_0 weights and loupe does not, so only the
 *     argmax path is compared; the fixture's seed was checked to leave
 *     margin, see the README).
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

#include "../language/decoder.h"
#include "../language/weights.h"
#include "../vision/clip.h"
#include "../vision/image.h"
#include "gguf.h"
#include "pool.h"

#define DIR "tests/fixtures/parity/"
#define REL_TOL 1e-4
#define ABS_TOL 1e-3
#define N_GEN 32
#define N_CTX 512

/* ---------------------------------------------------------------- dumps */

/* dump hooks of clip and decoder report f32 activations */
static void dump_cb(void *user, const char *name, const float *data, int64_t n) {
    dumps_add(user, name, LP_TYPE_F32, data, n);
}

/* ---------------------------------------------------------------- fixtures */

static lp_gguf *open_fixture(const char *name) {
    char path[256];
    snprintf(path, sizeof path, DIR "%s", name);
    lp_error err;
    lp_error_clear(&err);
    lp_gguf *g = lp_gguf_open(path, &err);
    if (!g) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(g);
    return g;
}

/* An F32 (or I32) tensor of a reference dump; NULL if absent. */
static const lp_gguf_tensor *ref_tensor(const lp_gguf *g, const char *name) {
    int64_t i = lp_gguf_find_tensor(g, name);
    return i < 0 ? NULL : &g->tensors[i];
}

static const float *ref_f32(const lp_gguf *g, const char *name, int64_t *n) {
    const lp_gguf_tensor *t = ref_tensor(g, name);
    if (!t) fprintf(stderr, "reference tensor %s missing\n", name);
    assert_non_null(t);
    assert_int_equal(t->type, LP_TYPE_F32);
    *n = lp_gguf_tensor_nelements(t);
    return t->data;
}

static const int32_t *ref_i32(const lp_gguf *g, const char *name, int64_t *n) {
    const lp_gguf_tensor *t = ref_tensor(g, name);
    if (!t) fprintf(stderr, "reference tensor %s missing\n", name);
    assert_non_null(t);
    assert_int_equal(t->type, LP_TYPE_I32);
    *n = lp_gguf_tensor_nelements(t);
    return t->data;
}

/* max |a - b| and max |b| */
static void diff(const float *a, const float *b, int64_t n, double *max_abs, double *max_ref) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - (double)b[i]);
        if (!(x <= d)) d = x; /* NaN propagates */
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    *max_abs = d;
    *max_ref = m;
}

/* Compare a loupe array to reference tensor `refname`: relative (rel > 0:
 * max_abs <= rel * max|ref|) or absolute (rel == 0: max_abs <= abs). */
static void expect_close(const char *what, const float *got, int64_t n, const lp_gguf *ref, const char *refname,
                         double rel, double abs_tol) {
    int64_t rn;
    const float *r = ref_f32(ref, refname, &rn);
    if (rn != n) fprintf(stderr, "%s: %lld values, reference %s has %lld\n", what, (long long)n, refname, (long long)rn);
    assert_int_equal(rn, n);
    double d, m;
    diff(got, r, n, &d, &m);
    double tol = rel > 0 ? rel * m : abs_tol;
    printf("    %-28s max_abs %.3e  max|ref| %.3e  rel %.3e  %s\n", what, d, m, d / (m > 0 ? m : 1),
           d <= tol ? "ok" : "FAIL");
    if (!(d <= tol)) fail_msg("%s vs %s: max abs diff %g > %g", what, refname, d, tol);
}

static void expect_tokens(const char *what, const int32_t *got, const lp_gguf *ref, const char *refname) {
    int64_t n;
    const int32_t *r = ref_i32(ref, refname, &n);
    assert_int_equal(n, N_GEN);
    int first = -1;
    for (int i = 0; i < N_GEN; i++)
        if (got[i] != r[i] && first < 0) first = i;
    printf("    %-28s %s\n", what, first < 0 ? "identical" : "DIFFER");
    if (first >= 0) {
        printf("      loupe:");
        for (int i = 0; i < N_GEN; i++) printf(" %d", got[i]);
        printf("\n      ref:  ");
        for (int i = 0; i < N_GEN; i++) printf(" %d", r[i]);
        printf("\n");
        fail_msg("%s: greedy token %d differs (%d vs %d)", what, first, got[first], r[first]);
    }
}

/* ---------------------------------------------------------------- model */

typedef struct pair {
    lp_gguf *lm_g, *mm_g;
    lp_weight_store *lm_ws, *mm_ws;
    lp_llama *lm;
    lp_clip *clip;
    lp_pool *pool;
} pair;

static void pair_open(pair *p, const char *variant) {
    char name[128];
    lp_error err;
    lp_error_clear(&err);
    snprintf(name, sizeof name, "tiny-%s.gguf", variant);
    p->lm_g = open_fixture(name);
    snprintf(name, sizeof name, "tiny-%s-mmproj.gguf", variant);
    p->mm_g = open_fixture(name);
    p->lm_ws = lp_weights_resident(p->lm_g, &err);
    assert_non_null(p->lm_ws);
    p->mm_ws = lp_weights_resident(p->mm_g, &err);
    assert_non_null(p->mm_ws);
    p->lm = lp_llama_load(p->lm_ws, &err);
    if (!p->lm) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(p->lm);
    p->clip = lp_clip_load(p->mm_g, p->mm_ws, &err);
    if (!p->clip) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(p->clip);
    p->pool = lp_pool_new(2);
    assert_non_null(p->pool);
}

static void pair_close(pair *p) {
    lp_clip_free(p->clip);
    lp_llama_free(p->lm);
    lp_ws_free(p->mm_ws);
    lp_ws_free(p->lm_ws);
    lp_gguf_close(p->mm_g);
    lp_gguf_close(p->lm_g);
    lp_pool_free(p->pool);
}

/* The reference's pixel tensor (3, S, S). */
static const float *ref_pixels(const pair *p, const lp_gguf *ref) {
    int64_t n;
    const float *px = ref_f32(ref, "pixels", &n);
    int S = lp_clip_image_size(p->clip);
    assert_int_equal(n, 3 * (int64_t)S * S);
    return px;
}

/* Input embeddings prefix | img | suffix; returns the row count. *out is malloc'ed. */
static int build_embd(const pair *p, const lp_gguf *ref, const float *img, int n_img, float **out) {
    int64_t n_pre, n_suf;
    const int32_t *pre = ref_i32(ref, "prompt.prefix", &n_pre);
    const int32_t *suf = ref_i32(ref, "prompt.suffix", &n_suf);
    int E = lp_llama_n_embd(p->lm);
    int T = (int)n_pre + n_img + (int)n_suf;
    float *e = malloc(sizeof(float) * (size_t)T * (size_t)E);
    assert_non_null(e);
    lp_error err;
    lp_error_clear(&err);
    assert_int_equal(lp_llama_embed(p->lm, pre, (int)n_pre, e, &err), LOUPE_OK);
    memcpy(e + (size_t)n_pre * E, img, sizeof(float) * (size_t)n_img * E);
    assert_int_equal(lp_llama_embed(p->lm, suf, (int)n_suf, e + (size_t)(n_pre + n_img) * E, &err), LOUPE_OK);
    *out = e;
    return T;
}

/* Prefill embd (T rows) into a fresh state, writing the last logits, then
 * N_GEN greedy tokens. dec_dumps (may be NULL) receives the prefill's dumps.
 * exact: decode keeps activations in f32 (as the PyTorch reference does);
 * otherwise loupe's default decode path, which quantizes activations to q8_0
 * for q8_0 weights as llama.cpp does. */
static void run_decoder(pair *p, const float *embd, int T, float *logits, int32_t *greedy, dumps *dec_dumps,
                        bool exact) {
    lp_error err;
    lp_error_clear(&err);
    lp_llama_state *s = lp_llama_state_new(p->lm, N_CTX, &err);
    assert_non_null(s);
    lp_llama_state_set_kv_f16(s, false);
    lp_llama_state_set_exact_matvec(s, exact);
    if (dec_dumps) lp_llama_state_set_dump(s, dump_cb, dec_dumps);
    loupe_status st = lp_llama_forward(p->lm, s, embd, T, logits, p->pool, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, LOUPE_OK);
    lp_llama_state_set_dump(s, NULL, NULL);
    int V = lp_llama_n_vocab(p->lm);
    float *cur = malloc(sizeof(float) * (size_t)V);
    assert_non_null(cur);
    memcpy(cur, logits, sizeof(float) * (size_t)V);
    for (int i = 0; i < N_GEN; i++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (cur[v] > cur[best]) best = v;
        greedy[i] = best;
        if (i + 1 == N_GEN) break;
        int32_t tok = best;
        st = lp_llama_forward_tokens(p->lm, s, &tok, 1, cur, p->pool, &err);
        if (st) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(st, LOUPE_OK);
    }
    free(cur);
    lp_llama_state_free(s);
}

/* ---------------------------------------------------------------- tests */

static void test_pixels(void **state) {
    (void)state;
    pair p;
    pair_open(&p, "f32");
    lp_gguf *ref = open_fixture("ref-tiny-f32.gguf");
    lp_error err;
    lp_error_clear(&err);
    lp_image img = {0};
    assert_int_equal(lp_image_load(DIR "image-32.png", &img, &err), LOUPE_OK);
    int S = lp_clip_image_size(p.clip);
    float *px = malloc(sizeof(float) * 3 * (size_t)S * S);
    assert_non_null(px);
    assert_int_equal(lp_clip_preprocess(p.clip, &img, LP_PREP_LLAMACPP, px, NULL, &err), LOUPE_OK);
    expect_close("pixels", px, 3 * (int64_t)S * S, ref, "pixels", 0, 0.0);
    free(px);
    lp_image_free(&img);
    lp_gguf_close(ref);
    pair_close(&p);
}

/* Everything against the PyTorch reference for one variant and one semantics. */
static void check_pytorch(const char *variant, bool hf) {
    char refname[64];
    snprintf(refname, sizeof refname, "ref-tiny-%s.gguf", variant);
    printf("  %s, %s semantics\n", refname, hf ? "HF" : "llama.cpp");
    pair p;
    pair_open(&p, variant);
    lp_gguf *ref = open_fixture(refname);
    const char *pre = hf ? "hf." : "";
    lp_error err;
    lp_error_clear(&err);
    unsigned q = hf ? LP_CLIP_QUIRKS_NONE
                    : (LP_CLIP_QUIRK_CLS_LAST | LP_CLIP_QUIRK_DROP_LAYER | LP_CLIP_QUIRK_POST_LN |
                       LP_CLIP_QUIRK_GELU_TANH);
    assert_int_equal(lp_clip_set_quirks(p.clip, q, &err), LOUPE_OK);

    /* vision */
    dumps vd = {0};
    lp_clip_set_dump(p.clip, dump_cb, &vd);
    int n_img = lp_clip_n_out_tokens(p.clip), E = lp_llama_n_embd(p.lm);
    assert_int_equal(lp_clip_out_dim(p.clip), E);
    float *img = malloc(sizeof(float) * (size_t)n_img * E);
    assert_non_null(img);
    loupe_status st = lp_clip_encode(p.clip, ref_pixels(&p, ref), img, p.pool, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, LOUPE_OK);
    lp_clip_set_dump(p.clip, NULL, NULL);
    int n_checked = 0;
    for (int64_t i = 0; i < (int64_t)ref->n_tensors; i++) {
        const char *tn = ref->tensors[i].name;
        if (strncmp(tn, pre, strlen(pre)) != 0) continue;
        const char *base = tn + strlen(pre);
        if (!hf && strncmp(base, "hf.", 3) == 0) continue;
        if (strncmp(base, "v.", 2) != 0 && strncmp(base, "mm.", 3) != 0) continue;
        const dump_entry *e = dump_find(&vd, base);
        if (!e) fail_msg("loupe did not dump %s", base);
        expect_close(base, e->data, e->n, ref, tn, REL_TOL, 0);
        n_checked++;
    }
    assert_true(n_checked >= 5);
    char nm[64];
    snprintf(nm, sizeof nm, "%smm.out", pre);
    expect_close("image embeddings", img, (int64_t)n_img * E, ref, nm, REL_TOL, 0);

    /* decoder on the reference's own input */
    int64_t n_in;
    snprintf(nm, sizeof nm, "%sembd_in", pre);
    const float *embd_in = ref_f32(ref, nm, &n_in);
    int T = (int)(n_in / E);
    int V = lp_llama_n_vocab(p.lm);
    float *logits = malloc(sizeof(float) * (size_t)V);
    assert_non_null(logits);
    int32_t greedy[N_GEN];
    dumps dd = {0};
    run_decoder(&p, embd_in, T, logits, greedy, &dd, true);
    n_checked = 0;
    for (int64_t i = 0; i < (int64_t)ref->n_tensors; i++) {
        const char *tn = ref->tensors[i].name;
        if (strncmp(tn, pre, strlen(pre)) != 0) continue;
        const char *base = tn + strlen(pre);
        if (!hf && strncmp(base, "hf.", 3) == 0) continue;
        if (strncmp(base, "blk.", 4) != 0 && strcmp(base, "embd_in") != 0 && strcmp(base, "output_norm") != 0)
            continue;
        const dump_entry *e = dump_find(&dd, base);
        if (!e) fail_msg("loupe did not dump %s", base);
        expect_close(base, e->data, e->n, ref, tn, REL_TOL, 0);
        n_checked++;
    }
    assert_true(n_checked >= 5);
    snprintf(nm, sizeof nm, "%slogits", pre);
    expect_close("logits (reference input)", logits, V, ref, nm, REL_TOL, 0);

    /* the whole pipeline: loupe's image embeddings spliced by loupe */
    float *embd;
    int T2 = build_embd(&p, ref, img, n_img, &embd);
    assert_int_equal(T2, T);
    expect_close("decoder input", embd, (int64_t)T * E, ref, (snprintf(nm, sizeof nm, "%sembd_in", pre), nm),
                 REL_TOL, 0);
    run_decoder(&p, embd, T, logits, greedy, NULL, true);
    snprintf(nm, sizeof nm, "%slogits", pre);
    expect_close("logits (pipeline)", logits, V, ref, nm, REL_TOL, 0);
    snprintf(nm, sizeof nm, "%sgreedy.tokens", pre);
    expect_tokens("greedy 32 tokens", greedy, ref, nm);

    free(embd);
    free(logits);
    free(img);
    dumps_free(&vd);
    dumps_free(&dd);
    lp_gguf_close(ref);
    pair_close(&p);
}

static void test_pytorch_f32_llamacpp(void **state) {
    (void)state;
    check_pytorch("f32", false);
}
static void test_pytorch_f32_hf(void **state) {
    (void)state;
    check_pytorch("f32", true);
}
static void test_pytorch_q8_0_llamacpp(void **state) {
    (void)state;
    check_pytorch("q8_0", false);
}
static void test_pytorch_q8_0_hf(void **state) {
    (void)state;
    check_pytorch("q8_0", true);
}

/* loupe with llama.cpp's quirks against llama.cpp itself. */
static void check_llamacpp(const char *variant, bool values) {
    char refname[64];
    snprintf(refname, sizeof refname, "llamacpp-tiny-%s.gguf", variant);
    printf("  %s\n", refname);
    pair p;
    pair_open(&p, variant);
    lp_gguf *lc = open_fixture(refname);
    lp_gguf *ref = open_fixture(variant[0] == 'f' ? "ref-tiny-f32.gguf" : "ref-tiny-q8_0.gguf"); /* prompt ids, pixels */
    lp_error err;
    lp_error_clear(&err);
    assert_int_equal(lp_clip_set_quirks(p.clip, LP_CLIP_QUIRKS_LLAMACPP, &err), LOUPE_OK);
    int n_img = lp_clip_n_out_tokens(p.clip), E = lp_llama_n_embd(p.lm), V = lp_llama_n_vocab(p.lm);
    float *img = malloc(sizeof(float) * (size_t)n_img * E);
    assert_non_null(img);
    /* the pixels of image-32.png as loupe preprocesses them (checked
     * against the reference in test_pixels) */
    lp_image im = {0};
    assert_int_equal(lp_image_load(DIR "image-32.png", &im, &err), LOUPE_OK);
    int S = lp_clip_image_size(p.clip);
    float *px = malloc(sizeof(float) * 3 * (size_t)S * S);
    assert_non_null(px);
    assert_int_equal(lp_clip_preprocess(p.clip, &im, LP_PREP_LLAMACPP, px, NULL, &err), LOUPE_OK);
    loupe_status st = lp_clip_encode(p.clip, px, img, p.pool, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, LOUPE_OK);
    if (values) expect_close("image embeddings", img, (int64_t)n_img * E, lc, "mm.out", 0, ABS_TOL);

    float *embd, *logits = malloc(sizeof(float) * (size_t)V);
    assert_non_null(logits);
    int T = build_embd(&p, ref, img, n_img, &embd);
    int32_t greedy[N_GEN];
    run_decoder(&p, embd, T, logits, greedy, NULL, false);
    if (values) expect_close("logits", logits, V, lc, "logits", 0, ABS_TOL);
    expect_tokens("greedy 32 tokens", greedy, lc, "greedy.tokens");

    free(embd);
    free(logits);
    free(px);
    free(img);
    lp_image_free(&im);
    lp_gguf_close(ref);
    lp_gguf_close(lc);
    pair_close(&p);
}

static void test_llamacpp_f32(void **state) {
    (void)state;
    check_llamacpp("f32", true);
}
static void test_llamacpp_q8_0(void **state) {
    (void)state;
    check_llamacpp("q8_0", false);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pixels),
        cmocka_unit_test(test_pytorch_f32_llamacpp),
        cmocka_unit_test(test_pytorch_f32_hf),
        cmocka_unit_test(test_pytorch_q8_0_llamacpp),
        cmocka_unit_test(test_pytorch_q8_0_hf),
        cmocka_unit_test(test_llamacpp_f32),
        cmocka_unit_test(test_llamacpp_q8_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
