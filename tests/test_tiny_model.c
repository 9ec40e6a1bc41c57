/* tests/test_tiny_model.c — the shipped model (models/loupe-tiny*.gguf)
 * against its PyTorch reference (tests/fixtures/tiny/, written by
 * tools/train/make_fixture.py): the whole path — squeeze preprocessing, ViT,
 * projector, Ferret's region sampler for box and mask regions, decoder —
 * must give PyTorch's greedy tokens and every step's logits within 1e-3.
 * Then the public API on the same model: a grounded answer's boxes through
 * loupe_ground equal loupe_answer_parse of its text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/gguf.h"
#include "../fusion/vlm.h"
#include "../vision/image.h"
#include "loupe.h"

#define MODEL "models/loupe-tiny.gguf"
#define MMPROJ "models/loupe-tiny-mmproj.gguf"
#define FIX "tests/fixtures/tiny/"
#define TOL 1e-3

typedef struct logits_log {
    float *data; // (n, V)
    int n, cap, V;
} logits_log;

static void on_dump(void *user, const char *name, const float *data, int64_t n) {
    logits_log *l = user;
    if (strcmp(name, "logits")) return;
    if (l->n == l->cap) return;
    memcpy(l->data + (size_t)l->n * l->V, data + (n - l->V), (size_t)l->V * sizeof *data); /* the last row */
    l->n++;
}

static const lp_gguf_tensor *tensor(const lp_gguf *g, const char *fmt, int k) {
    char name[64];
    snprintf(name, sizeof name, fmt, k);
    int64_t i = lp_gguf_find_tensor(g, name);
    return i < 0 ? NULL : &g->tensors[i];
}

static const char *str(const lp_gguf *g, const char *fmt, int k) {
    char key[64];
    snprintf(key, sizeof key, fmt, k);
    const char *s = NULL;
    lp_error err = {0};
    assert_int_equal(lp_gguf_get_str(g, key, &s, &err), LOUPE_OK);
    return s;
}

/* COCO column-major RLE (first run background) -> row-major w*h bytes. */
static uint8_t *rle_decode(const int32_t *c, int64_t n, int w, int h) {
    uint8_t *m = calloc((size_t)w * h, 1);
    int64_t pos = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i & 1)
            for (int64_t p = pos; p < pos + c[i] && p < (int64_t)w * h; p++) m[(p % h) * w + p / h] = 1;
        pos += c[i];
    }
    return m;
}

static void test_pytorch_parity(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *fx = lp_gguf_open(FIX "parity.gguf", &err);
    assert_non_null(fx);
    /* squeeze, as trained (the public API picks it from the mmproj's
     * clip.vision.image_aspect_ratio: test_api_on_shipped_model) */
    lp_vlm_params vp = lp_vlm_default_params();
    vp.prep = LP_PREP_SQUASH_PIL;
    lp_vlm *vlm = lp_vlm_load(MODEL, MMPROJ, &vp, &err);
    if (!vlm) fail_msg("%s", err.msg);
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 2;
    lp_vlm_ctx *ctx = lp_vlm_ctx_new(vlm, &cp, &err);
    assert_non_null(ctx);
    /* f32 activations in every decode step: the fixture's PyTorch model uses
     * the weights exactly as loupe dequantizes them (f16, or q8_0 blocks for a
     * q8_0 decoder file), not llama.cpp's q8_0 rounding of the activations,
     * which loupe's default decode applies to q8_0 weights (a no-op for f16). */
    lp_vlm_ctx_set_exact_matvec(ctx, true);
    uint32_t n_samples = 0;
    assert_int_equal(lp_gguf_get_u32(fx, "sample.count", &n_samples, &err), LOUPE_OK);
    assert_true(n_samples >= 5);
    int kinds[3] = {0};
    double worst = 0;
    for (int k = 0; k < (int)n_samples; k++) {
        const lp_gguf_tensor *lt = tensor(fx, "sample.%d.logits", k), *tt = tensor(fx, "sample.%d.tokens", k);
        assert_non_null(lt);
        assert_non_null(tt);
        const int V = (int)lt->ne[0], steps = (int)lt->ne[1];
        char path[256];
        snprintf(path, sizeof path, FIX "%s", str(fx, "sample.%d.image", k));
        lp_image img;
        assert_int_equal(lp_image_load(path, &img, &err), LOUPE_OK);
        const char *kind = str(fx, "sample.%d.region", k);
        lp_vlm_region reg = {0};
        uint8_t *mask = NULL;
        int n_reg = 0;
        if (!strcmp(kind, "box")) {
            const float *b = tensor(fx, "sample.%d.box", k)->data;
            reg.kind = LP_VLM_REGION_BOX;
            for (int i = 0; i < 4; i++) reg.box[i] = b[i];
            n_reg = 1;
            kinds[1]++;
        } else if (!strcmp(kind, "mask")) {
            const lp_gguf_tensor *rt = tensor(fx, "sample.%d.mask_rle", k);
            mask = rle_decode(rt->data, rt->ne[0], img.w, img.h);
            reg = (lp_vlm_region){.kind = LP_VLM_REGION_MASK, .mask = mask, .mask_w = img.w, .mask_h = img.h};
            n_reg = 1;
            kinds[2]++;
        } else {
            kinds[0]++;
        }
        logits_log log = {.data = malloc((size_t)steps * V * sizeof(float)), .cap = steps, .V = V};
        lp_vlm_ctx_set_dump(ctx, on_dump, &log);
        lp_vlm_gen_params gp = lp_vlm_gen_default_params();
        gp.n_predict = steps;
        char *answer = NULL;
        loupe_status st = lp_vlm_ask_regions(vlm, ctx, &img, str(fx, "sample.%d.question", k), &reg, n_reg, &gp, NULL,
                                             NULL, &answer, NULL, &err);
        if (st) fail_msg("sample %d: %s", k, err.msg);
        assert_int_equal(log.n, steps); /* as many decode steps as PyTorch's greedy run */
        const float *ref = lt->data;
        const int32_t *tok = tt->data;
        for (int s = 0; s < steps; s++) {
            const float *mine = log.data + (size_t)s * V, *theirs = ref + (size_t)s * V;
            double d = 0;
            int am = 0;
            for (int v = 0; v < V; v++) {
                d = fmax(d, fabs((double)mine[v] - theirs[v]));
                if (mine[v] > mine[am]) am = v;
            }
            if (d > TOL) fail_msg("sample %d (%s) step %d: max |loupe - torch| = %g > %g", k, kind, s, d, TOL);
            assert_int_equal(am, tok[s]); /* the same greedy token */
            worst = fmax(worst, d);
        }
        print_message("sample %d (%s): %d steps, answer \"%s\"\n", k, kind, steps, answer);
        free(answer);
        free(log.data);
        free(mask);
        lp_image_free(&img);
    }
    print_message("worst logit difference over all samples and steps: %.3g\n", worst);
    assert_true(kinds[0] >= 1 && kinds[1] >= 1 && kinds[2] >= 1); /* grounding, box and mask regions covered */
    lp_vlm_ctx_set_dump(ctx, NULL, NULL);
    lp_vlm_ctx_free(ctx);
    lp_vlm_free(vlm);
    lp_gguf_close(fx);
}

/* The public API on the shipped model: ground gives boxes equal to parsing
 * its own text; the default model can refer. */
static void test_api_on_shipped_model(void **state) {
    (void)state;
    char emsg[512];
    loupe_model *m = NULL;
    assert_int_equal(loupe_model_load(MODEL, MMPROJ, NULL, &m, emsg, sizeof emsg), LOUPE_OK);
    assert_true(loupe_model_can_refer(m));
    assert_int_equal(loupe_model_prep(m), LOUPE_PREP_SQUASH); /* from clip.vision.image_aspect_ratio */
    loupe_context_params cp = loupe_context_default_params();
    cp.n_threads = 2;
    loupe_context *ctx = NULL;
    assert_int_equal(loupe_context_new(m, &cp, &ctx), LOUPE_OK);
    loupe_image *img = NULL;
    assert_int_equal(loupe_image_from_file(FIX "000001.png", &img, emsg, sizeof emsg), LOUPE_OK);
    loupe_answer *a = NULL, *b = NULL;
    assert_int_equal(loupe_ground(ctx, img, "the table", &a), LOUPE_OK);
    assert_int_equal(loupe_answer_n_boxes(a), 1); /* the model answers one Ferret box */
    assert_int_equal(loupe_answer_parse(m, img, loupe_answer_text(a), &b, emsg, sizeof emsg), LOUPE_OK);
    assert_int_equal(loupe_answer_n_boxes(b), 1);
    const loupe_box *x = loupe_answer_box(a, 0), *y = loupe_answer_box(b, 0);
    assert_true(x->x1 == y->x1 && x->y1 == y->y1 && x->x2 == y->x2 && x->y2 == y->y2);
    assert_true(x->x1 < x->x2 && x->y1 < x->y2);
    loupe_answer_free(a);
    loupe_answer_free(b);
    loupe_image_free(img);
    loupe_context_free(ctx);
    loupe_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pytorch_parity),
        cmocka_unit_test(test_api_on_shipped_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
