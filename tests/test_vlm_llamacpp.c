/* tests/test_vlm_llamacpp.c — loupe's InternVL and Qwen2.5-VL paths against
 * llama.cpp on random-weight pairs in llama.cpp's conventions
 * (tests/fixtures/internvl/, qwen25vl/, photos/; made by tools/gen_model
 * --family internvl|qwen25vl and tools/llamacpp/vlm_dump.cpp, commands in
 * tests/fixtures/README.md).
 *
 * For each fixture photo (square, below the tile size / pixel minimum, a
 * 1280×853 photo, extreme aspect ratios, above the pixel maximum), loupe in
 * llama.cpp mode (lp_vlm_params.llamacpp: llama.cpp's tiling or smart
 * resize and its numerics) must give:
 *   - the same tiles (InternVL) or resized input (Qwen), every f32 pixel
 *     bit-identical (FNV-1a 64 of the bytes, as the dump records them);
 *   - image embeddings within ABS_TOL max abs of llama.cpp's;
 *   - the prompt: the whole chat turn through lp_vlm_ask (template, image
 *     wrapper tokens, tokenizer) gives the dump's token ids at the text
 *     positions (their embedding rows, exactly) and image rows at the image
 *     positions;
 *   - last-position logits within ABS_TOL and 32 greedy tokens identical
 *     (the decoder run on the same rows, Qwen with its M-RoPE positions, no
 *     stop at end-of-turn).
 * Run from the repository root. */
#include "support/testutil.h"
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

#include "../fusion/boxes.h"
#include "../fusion/vlm.h"
#include "../language/decoder.h"
#include "../language/weights.h"
#include "../vision/clip.h"
#include "../vision/qwen_vit.h"
#include "../vision/tiles.h"
#include "gguf.h"
#include "pool.h"

#define PHOTOS "tests/fixtures/photos/"
#define ABS_TOL 1e-3
#define N_GEN 32
#define SYSTEM "You are a helpful assistant."

typedef struct family {
    const char *dir;      /* fixtures of the pair and its dumps */
    const char *variant;  /* "" or "qknorm-": another mmproj, tiny-f32-VARIANTmmproj.gguf and llamacpp-VARIANT*.gguf */
    const char *question; /* the user turn after the image */
    bool qwen;
    lp_vlm_family kind;   /* what lp_vlm must recognise */
    const char *lm;       /* NULL: DIR/tiny-f32.gguf */
    const char *system;   /* NULL: SYSTEM */
} family;

#define INTERNVL_QUESTION "Please provide the bounding box coordinate of the region this sentence describes: <ref>the cup</ref>"
static const family INTERNVL = {"tests/fixtures/internvl/", "", INTERNVL_QUESTION, false, LP_VLM_INTERNVL, NULL, NULL};
static const family INTERNVL_QK = {"tests/fixtures/internvl/", "qknorm-", INTERNVL_QUESTION, false, LP_VLM_INTERNVL,
                                   NULL, NULL};
/* MobileVLM V2's ldpv2 projector on the LLaVA parity decoder (vicuna template, no system text) */
static const family MOBILEVLM_V2 = {"tests/fixtures/mobilevlm/", "ldpv2-", "What is in the image?", false,
                                    LP_VLM_LLAVA, "tests/fixtures/parity/tiny-f32.gguf", ""};
/* ... and MobileVLM (v1)'s ldp projector */
static const family MOBILEVLM_V1 = {"tests/fixtures/mobilevlm/", "ldp-", "What is in the image?", false, LP_VLM_LLAVA,
                                    "tests/fixtures/parity/tiny-f32.gguf", ""};
/* an OpenELM decoder (per-layer heads and FFN widths, fused QKV, q/k norms,
 * tied output) under a LLaVA-style mlp mmproj (vicuna template, no system text) */
static const family OPENELM = {"tests/fixtures/openelm/", "", "What is in the image?", false, LP_VLM_LLAVA, NULL, ""};
#define QWEN_DIR "tests/fixtures/qwen25vl/"
static const family QWEN = {QWEN_DIR, "", "Locate the cup in the image, output its bbox coordinates using JSON format.",
                            true, LP_VLM_QWEN25VL, NULL, NULL};

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

/* The pair of one family, loaded twice: through lp_vlm (the whole turn)
 * and as bare pieces (vision encoder, decoder) for the exact comparisons. */
typedef struct fixture {
    const family *fam;
    int min_tokens, max_tokens; /* Qwen: --image-min/max-tokens of the dump, 0: llama.cpp's */
    lp_vlm *vlm;
    lp_gguf *lm_g, *mm_g;
    lp_weight_store *lm_ws, *mm_ws;
    lp_llama *lm;
    lp_clip *clip;      /* InternVL */
    lp_qwen_vit *qvit;  /* Qwen2.5-VL */
    lp_pool *pool;
} fixture;

static void open_pair(fixture *f, const family *fam, int min_tokens, int max_tokens) {
    char lm[256], mm[256];
    lp_error err = {0};
    memset(f, 0, sizeof *f);
    f->fam = fam;
    f->min_tokens = min_tokens;
    f->max_tokens = max_tokens;
    if (fam->lm) snprintf(lm, sizeof lm, "%s", fam->lm);
    else snprintf(lm, sizeof lm, "%stiny-f32.gguf", fam->dir);
    snprintf(mm, sizeof mm, "%stiny-f32-%smmproj.gguf", fam->dir, fam->variant);
    lp_vlm_params vp = lp_vlm_default_params();
    vp.llamacpp = true;
    vp.image_min_tokens = min_tokens;
    vp.image_max_tokens = max_tokens;
    f->vlm = lp_vlm_load(lm, mm, &vp, &err);
    if (!f->vlm) fail_msg("%s", err.msg);
    assert_int_equal(lp_vlm_get_family(f->vlm), fam->kind);
    assert_non_null(f->lm_g = lp_gguf_open(lm, &err));
    assert_non_null(f->lm_ws = lp_weights_resident(f->lm_g, &err));
    assert_non_null(f->lm = lp_llama_load(f->lm_ws, &err));
    assert_non_null(f->mm_g = lp_gguf_open(mm, &err));
    assert_non_null(f->mm_ws = lp_weights_resident(f->mm_g, &err));
    if (fam->qwen) {
        if (!(f->qvit = lp_qwen_vit_load(f->mm_g, f->mm_ws, &err))) fail_msg("%s", err.msg);
        assert_int_equal(lp_qwen_vit_set_token_limits(f->qvit, min_tokens, max_tokens, &err), LOUPE_OK);
    } else {
        if (!(f->clip = lp_clip_load(f->mm_g, f->mm_ws, &err))) fail_msg("%s", err.msg);
        assert_int_equal(lp_clip_set_quirks(f->clip, LP_CLIP_QUIRKS_LLAMACPP, &err), LOUPE_OK);
    }
    f->pool = lp_pool_new(2);
}

static void close_pair(fixture *f) {
    lp_pool_free(f->pool);
    lp_clip_free(f->clip);
    lp_qwen_vit_free(f->qvit);
    lp_ws_free(f->mm_ws);
    lp_gguf_close(f->mm_g);
    lp_llama_free(f->lm);
    lp_ws_free(f->lm_ws);
    lp_gguf_close(f->lm_g);
    lp_vlm_free(f->vlm);
}

static void check_hash(const float *px, size_t n, const int32_t *hash, int t, const char *what) {
    const uint64_t h = fnv1a(px, n * sizeof(float));
    const uint64_t want = (uint64_t)(uint32_t)hash[2 * t] | (uint64_t)(uint32_t)hash[2 * t + 1] << 32;
    if (h != want) fail_msg("%s: tile %d: pixels differ from llama.cpp's", what, t + 1);
}

/* The image through the bare encoder: pixels checked against the dump's
 * tile hashes, embeddings into *embd (n_tok, E); *nx, *ny: Qwen's grid. */
static void encode_bare(fixture *f, const lp_image *img, const lp_gguf *ref, const char *what, int n_tok, int E,
                        float **embd, int *nx, int *ny) {
    lp_error err = {0};
    int64_t n_hash;
    const int32_t *hash = ref_data(ref, "tiles.hash", LP_TYPE_I32, &n_hash);
    *embd = malloc((size_t)n_tok * E * sizeof **embd);
    if (f->qvit) {
        lp_qwen_geom qg;
        assert_int_equal(lp_qwen_vit_plan(f->qvit, img->w, img->h, LP_QWEN_PREP_LLAMACPP, &qg, &err), LOUPE_OK);
        assert_int_equal(n_hash, 2);
        assert_int_equal(qg.nx * qg.ny, n_tok);
        const size_t n = (size_t)3 * qg.width * qg.height;
        float *px = malloc(n * sizeof *px);
        assert_int_equal(lp_qwen_vit_preprocess(f->qvit, img, LP_QWEN_PREP_LLAMACPP, px, &qg, &err), LOUPE_OK);
        check_hash(px, n, hash, 0, what);
        assert_int_equal(lp_qwen_vit_encode(f->qvit, px, qg.width, qg.height, *embd, f->pool, &err), LOUPE_OK);
        printf("    input %dx%d, %dx%d tokens", qg.width, qg.height, qg.nx, qg.ny);
        *nx = qg.nx;
        *ny = qg.ny;
        free(px);
        return;
    }
    const int S = lp_clip_image_size(f->clip), per_tile = lp_clip_n_out_tokens(f->clip);
    if (f->fam->kind == LP_VLM_LLAVA) { /* one S×S input, llama.cpp's letterbox */
        assert_int_equal(n_hash, 2);
        assert_int_equal(per_tile, n_tok);
        const size_t n = (size_t)3 * S * S;
        float *px = malloc(n * sizeof *px);
        assert_int_equal(lp_clip_preprocess(f->clip, img, LP_PREP_LLAMACPP, px, NULL, &err), LOUPE_OK);
        check_hash(px, n, hash, 0, what);
        assert_int_equal(lp_clip_encode(f->clip, px, *embd, f->pool, &err), LOUPE_OK);
        printf("    1 input");
        *nx = *ny = 0;
        free(px);
        return;
    }
    int lo, hi;
    lp_clip_tile_limits(f->clip, &lo, &hi);
    lp_tile_plan plan;
    assert_int_equal(lp_tiles_plan(img->w, img->h, S, lo, hi, LP_PREP_LLAMACPP, &plan, &err), LOUPE_OK);
    assert_int_equal(plan.n_tiles, (int)(n_hash / 2));
    assert_int_equal(plan.n_tiles * per_tile, n_tok);
    const size_t px_n = (size_t)3 * S * S;
    float *px = malloc((size_t)plan.n_tiles * px_n * sizeof *px);
    assert_int_equal(lp_tiles_pixels(img, S, lo, hi, LP_PREP_LLAMACPP, lp_clip_mean(f->clip), lp_clip_std(f->clip),
                                     px, &plan, &err),
                     LOUPE_OK);
    for (int t = 0; t < plan.n_tiles; t++) {
        check_hash(px + (size_t)t * px_n, px_n, hash, t, what);
        assert_int_equal(lp_clip_encode(f->clip, px + (size_t)t * px_n, *embd + (size_t)t * per_tile * E, f->pool,
                                        &err),
                         LOUPE_OK);
    }
    printf("    %d tiles", plan.n_tiles);
    *nx = *ny = 0;
    free(px);
}

static void check_image(fixture *f, int w, int h) {
    char path[256], what[64];
    lp_error err = {0};
    snprintf(what, sizeof what, "%dx%d", w, h);
    if (f->min_tokens || f->max_tokens)
        snprintf(path, sizeof path, "%sllamacpp-%s%dx%d-%d-%d.gguf", f->fam->dir, f->fam->variant, w, h, f->min_tokens,
                 f->max_tokens);
    else
        snprintf(path, sizeof path, "%sllamacpp-%s%dx%d.gguf", f->fam->dir, f->fam->variant, w, h);
    lp_gguf *ref = lp_gguf_open(path, &err);
    if (!ref) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, PHOTOS "image-%dx%d.png", w, h);
    lp_image img;
    assert_int_equal(lp_image_load(path, &img, &err), LOUPE_OK);
    printf("  %s%s\n", what, f->min_tokens ? " (image tokens limited)" : "");

    /* token count, pixels and embeddings */
    int64_t n;
    const int n_tok = ((const int32_t *)ref_data(ref, "image.n_tokens", LP_TYPE_I32, &n))[0];
    int n_tok_vlm = 0;
    assert_int_equal(lp_vlm_image_tokens(f->vlm, w, h, &n_tok_vlm, &err), LOUPE_OK);
    assert_int_equal(n_tok_vlm, n_tok);
    const int E = lp_llama_n_embd(f->lm);
    int64_t n_embd_ref;
    const float *embd_ref = ref_data(ref, "image.embd", LP_TYPE_F32, &n_embd_ref);
    assert_int_equal(n_embd_ref, (int64_t)n_tok * E);
    float *embd;
    int nx, ny;
    encode_bare(f, &img, ref, what, n_tok, E, &embd, &nx, &ny);
    const double d_img = max_abs_diff(embd, embd_ref, n_embd_ref);
    double ref_max = 0;
    for (int64_t i = 0; i < n_embd_ref; i++) ref_max = fmax(ref_max, fabs(embd_ref[i]));
    printf(", %d image tokens, embeddings max|diff| %.3g (max|ref| %.3g)\n", n_tok, d_img, ref_max);
    assert_true(d_img <= ABS_TOL);

    /* the whole turn through lp_vlm_ask: its decoder input */
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 2;
    lp_vlm_ctx *ctx = lp_vlm_ctx_new(f->vlm, &cp, &err);
    assert_non_null(ctx);
    rows in = {0};
    lp_vlm_ctx_set_dump(ctx, dump_cb, &in);
    lp_vlm_gen_params g = lp_vlm_gen_default_params();
    g.system = f->fam->system ? f->fam->system : SYSTEM;
    g.n_predict = 1;
    char *answer = NULL;
    lp_vlm_stats st;
    assert_int_equal(lp_vlm_ask(f->vlm, ctx, &img, f->fam->question, &g, NULL, NULL, &answer, &st, &err), LOUPE_OK);
    free(answer);
    int64_t n_pos;
    const int32_t *ids = ref_data(ref, "prompt.ids", LP_TYPE_I32, &n_pos);
    assert_int_equal(in.n, n_pos * E);
    const float *rows = in.v;
    float *tok_row = malloc((size_t)E * sizeof *tok_row);
    int img_row = 0, n_pre = 0;
    for (int64_t i = 0; i < n_pos; i++) {
        if (ids[i] < 0) {
            assert_true(max_abs_diff(rows + i * E, embd_ref + (size_t)img_row++ * E, E) <= ABS_TOL);
            continue;
        }
        if (img_row == 0) n_pre++;
        assert_int_equal(lp_llama_embed(f->lm, &ids[i], 1, tok_row, &err), LOUPE_OK);
        if (memcmp(tok_row, rows + i * E, (size_t)E * sizeof *tok_row))
            fail_msg("%s: prompt position %lld is not token %d", what, (long long)i, ids[i]);
    }
    assert_int_equal(img_row, n_tok);

    /* logits and 32 greedy tokens from the same rows (Qwen: M-RoPE ids) */
    const int V = lp_llama_n_vocab(f->lm);
    float *logits = malloc((size_t)V * sizeof *logits);
    lp_llama_state *s = lp_llama_state_new(f->lm, (int)n_pos + N_GEN + 1, &err);
    assert_non_null(s);
    int32_t next = 0, *pos = NULL;
    if (f->qvit) {
        const int n_post = (int)n_pos - n_pre - n_tok;
        pos = malloc((size_t)4 * n_pos * sizeof *pos);
        next = lp_mrope_pos_prompt(pos, n_pre, nx, ny, n_post, 0);
        const int32_t adv = ((const int32_t *)ref_data(ref, "image.n_pos", LP_TYPE_I32, &n))[0];
        assert_int_equal(adv, nx > ny ? nx : ny); /* llama.cpp advances by max(nx, ny) */
        assert_int_equal(lp_llama_forward_pos(f->lm, s, rows, pos, (int)n_pos, logits, f->pool, &err), LOUPE_OK);
    } else {
        assert_int_equal(lp_llama_forward(f->lm, s, rows, (int)n_pos, logits, f->pool, &err), LOUPE_OK);
    }
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
        if (best != greedy_ref[k]) fail_msg("%s: greedy token %d: loupe %d, llama.cpp %d", what, k, best, greedy_ref[k]);
        if (f->qvit) {
            int32_t p4[4] = {next, next, next, 0};
            next++;
            assert_int_equal(lp_llama_forward_tokens_pos(f->lm, s, &best, p4, 1, logits, f->pool, &err), LOUPE_OK);
        } else {
            assert_int_equal(lp_llama_forward_tokens(f->lm, s, &best, 1, logits, f->pool, &err), LOUPE_OK);
        }
    }
    printf("    logits max|diff| %.3g, %d greedy tokens identical\n", d_log, N_GEN);
    assert_true(d_log <= ABS_TOL);

    free(pos);
    lp_llama_state_free(s);
    free(logits);
    free(tok_row);
    free(in.v);
    lp_vlm_ctx_free(ctx);
    free(embd);
    lp_image_free(&img);
    lp_gguf_close(ref);
}

static void test_internvl(void **state) {
    (void)state;
    static const int sizes[][2] = {{448, 448}, {300, 200}, {1280, 853}, {2000, 300}, {300, 1500}, {900, 900}};
    fixture f;
    open_pair(&f, &INTERNVL, 0, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_image(&f, sizes[i][0], sizes[i][1]);
    close_pair(&f);
}

/* InternViT-6B-style q/k norms (LayerNorm over the whole projection, after the bias). */
static void test_internvl_qk_norm(void **state) {
    (void)state;
    fixture f;
    open_pair(&f, &INTERNVL_QK, 0, 0);
    check_image(&f, 900, 900);
    close_pair(&f);
}

/* MobileVLM's projectors against llama.cpp: V2's (mlp, 2×2 pooling, PEG)
 * and v1's (mlp, two MobileNetV3 blocks with squeeze-excite). */
static void test_mobilevlm(void **state) {
    (void)state;
    const family *fams[2] = {&MOBILEVLM_V2, &MOBILEVLM_V1};
    for (int i = 0; i < 2; i++) {
        fixture f;
        open_pair(&f, fams[i], 0, 0);
        printf("  %s\n", fams[i]->variant);
        check_image(&f, 448, 448);
        check_image(&f, 1280, 853);
        close_pair(&f);
    }
}

/* OpenELM as the decoder of a VLM pair against llama.cpp's openelm graph. */
static void test_openelm(void **state) {
    (void)state;
    fixture f;
    open_pair(&f, &OPENELM, 0, 0);
    const lp_llama_config *c = lp_llama_get_config(f.lm);
    assert_int_equal(c->arch, LP_ARCH_OPENELM);
    assert_true(c->tied_output);
    assert_int_not_equal(c->layer_dims[0], c->layer_dims[3]);     /* heads differ per layer */
    assert_int_not_equal(c->layer_dims[2], c->layer_dims[3 + 2]); /* and FFN widths */
    check_image(&f, 448, 448);
    check_image(&f, 1280, 853);
    close_pair(&f);
}

/* Copy an OpenELM GGUF with one change: a tensor dropped or replaced by one
 * of another shape, or a per-layer array cut short; then load it. */
static void openelm_broken(const char *drop, const int64_t *new_ne, const char *cut_key, const char *want) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open("tests/fixtures/openelm/tiny-f32.gguf", &err);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) {
        lp_gguf_value v = g->kv[i].val;
        if (cut_key && !strcmp(g->kv[i].key, cut_key)) v.v.arr.n--;
        assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &v), LOUPE_OK);
    }
    float *junk = calloc(1 << 16, sizeof(float));
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        if (drop && !strcmp(t->name, drop)) {
            if (new_ne) assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, LP_TYPE_F32, 2, new_ne, junk), LOUPE_OK);
            continue;
        }
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/loupe-test-elm-%d.gguf", (int)getpid());
    assert_int_equal(lp_gguf_writer_write(w, path, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
    free(junk);
    lp_gguf *b = lp_gguf_open(path, &err);
    assert_non_null(b);
    lp_weight_store *ws = lp_weights_resident(b, &err);
    assert_non_null(ws);
    lp_llama *m = lp_llama_load(ws, &err);
    if (m || !strstr(err.msg, want) || !strstr(err.msg, path))
        fail_msg("loaded=%d, error \"%s\", wanted \"%s\" and the path", m != NULL, err.msg, want);
    printf("    refused: %s\n", err.msg);
    lp_ws_free(ws);
    lp_gguf_close(b);
    unlink(path);
}

/* OpenELM files that do not fit together are refused, naming the file and the part. */
static void test_openelm_errors(void **state) {
    (void)state;
    openelm_broken(NULL, NULL, "openelm.attention.head_count", "openelm.attention.head_count has 2 entries");
    openelm_broken(NULL, NULL, "openelm.feed_forward_length", "openelm.feed_forward_length has 2 entries");
    openelm_broken("blk.1.attn_q_norm.weight", NULL, NULL, "blk.1.attn_q_norm.weight");
    const int64_t bad_qkv[2] = {24, 40}; /* layer 1 needs (4 + 2*2) * 8 = 64 rows */
    openelm_broken("blk.1.attn_qkv.weight", bad_qkv, NULL, "blk.1.attn_qkv.weight has shape [24, 40");
    const int64_t bad_up[2] = {24, 16}; /* layer 2's FFN is 48 wide */
    openelm_broken("blk.2.ffn_up.weight", bad_up, NULL, "blk.2.ffn_up.weight has shape [24, 16");
}

static void test_qwen25vl(void **state) {
    (void)state;
    /* 56×56: below the 8-token minimum (upscaled); 2400×1600: above the 4096-token maximum */
    static const int sizes[][2] = {{1280, 853}, {300, 200}, {2000, 300}, {56, 56}, {448, 448}, {2400, 1600}};
    fixture f;
    open_pair(&f, &QWEN, 0, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_image(&f, sizes[i][0], sizes[i][1]);
    close_pair(&f);
}

/* The grounding range (1024..2048 tokens) through --image-min/max-tokens: a small photo upscaled. */
static void test_qwen25vl_token_limits(void **state) {
    (void)state;
    fixture f;
    open_pair(&f, &QWEN, 1024, 2048);
    check_image(&f, 300, 200);
    close_pair(&f);
}

/* Geometry: Qwen2.5-VL answers in pixels of its resized input; mapped back,
 * the content rectangle of that input is the whole original image (within a
 * pixel: llama.cpp letterboxes by a few pixels, HF stretches), and any box
 * the model states maps back to where that frame pixel came from (the exact
 * inverse of the preprocessing, checked by mapping forward again). Sizes:
 * below the pixel minimum, above the maximum, extreme aspect ratios; both
 * preprocessing rules; the grounding token range. */
static void test_qwen25vl_box_geometry(void **state) {
    (void)state;
    static const int sizes[][2] = {{1280, 853}, {300, 200}, {2000, 300}, {56, 56},  {2400, 1600},
                                   {5000, 30},  {29, 4000}, {1, 1},     {8000, 8000}, {640, 481}};
    for (int mode = 0; mode < 2; mode++) {
        lp_vlm_params vp = lp_vlm_default_params();
        vp.llamacpp = mode == 0;
        lp_error err = {0};
        lp_vlm *vlm = lp_vlm_load(QWEN_DIR "tiny-f32.gguf", QWEN_DIR "tiny-f32-mmproj.gguf", &vp, &err);
        if (!vlm) fail_msg("%s", err.msg);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            const int w = sizes[i][0], h = sizes[i][1];
            lp_image img;
            assert_int_equal(lp_image_alloc(&img, w, h, &err), LOUPE_OK);
            lp_prep_geom pg;
            int W, H;
            loupe_status st = lp_vlm_prep_frame(vlm, &img, &pg, &W, &H, &err);
            if (mode == 1 && (w < 28 || h < 28 || (double)(w > h ? w : h) / (w < h ? w : h) > 200)) {
                assert_int_equal(st, LOUPE_ERR_INVALID_ARG); /* HF's processor refuses these too */
                lp_image_free(&img);
                continue;
            }
            if (st) fail_msg("%dx%d: %s", w, h, err.msg);
            assert_true(W % 28 == 0 && H % 28 == 0);
            lp_box_geom g;
            assert_int_equal(lp_box_geom_from_prep_wh(&g, &pg, w, h, W, H, &err), LOUPE_OK);
            char text[256];
            snprintf(text, sizeof text, "```json\n[{\"bbox_2d\": [%d, %d, %d, %d], \"label\": \"all\"}]\n```",
                     pg.content_x, pg.content_y, pg.content_x + pg.content_w, pg.content_y + pg.content_h);
            lp_box b[2];
            lp_box_issue why[2];
            if (lp_boxes_parse(LP_BOX_QWEN25VL, text, &g, b, 2, why, 2) != 1)
                fail_msg("%dx%d: %s not parsed: %s", w, h, text, why[0].reason);
            if (fabsf(b[0].x1) > 1 || fabsf(b[0].y1) > 1 || fabsf(b[0].x2 - w) > 1 || fabsf(b[0].y2 - h) > 1)
                fail_msg("%dx%d (%s, input %dx%d): the content maps to [%g, %g, %g, %g]", w, h,
                         mode ? "hf" : "llama.cpp", W, H, b[0].x1, b[0].y1, b[0].x2, b[0].y2);
            /* a box inside: frame -> original -> frame is the identity */
            const int fx1 = W / 4, fy1 = H / 3, fx2 = 3 * W / 4, fy2 = H - 1;
            lp_box o;
            if (lp_box_from_frame(&g, fx1, fy1, fx2, fy2, &o) == 0 && o.x1 > 0 && o.x2 < w && o.y2 < h) {
                double f[4];
                lp_box_to_frame(&g, &o, f);
                assert_true(fabs(f[0] - fx1) < 1e-3 && fabs(f[1] - fy1) < 1e-3); /* lp_box holds floats */
                assert_true(fabs(f[2] - fx2) < 1e-3 && fabs(f[3] - fy2) < 1e-3);
            }
            lp_image_free(&img);
        }
        lp_vlm_free(vlm);
    }
}

/* A second question about the same image reuses the image's encoding and
 * the prompt prefix's KV cache; with M-RoPE the positions after the reused
 * prefix must still be right: the answer equals a fresh context's, for both
 * families with a variable image size. */
static void test_prefix_reuse(void **state) {
    (void)state;
    const family *fams[2] = {&QWEN, &INTERNVL};
    for (int fi = 0; fi < 2; fi++) {
        fixture f;
        open_pair(&f, fams[fi], 0, 0);
        lp_error err = {0};
        lp_image img;
        assert_int_equal(lp_image_load(PHOTOS "image-300x200.png", &img, &err), LOUPE_OK);
        lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
        cp.n_threads = 2;
        cp.n_ctx = 2048; /* fixed: an automatic cache grown for a longer question starts afresh */
        lp_vlm_ctx *a = lp_vlm_ctx_new(f.vlm, &cp, &err), *b = lp_vlm_ctx_new(f.vlm, &cp, &err);
        assert_non_null(a);
        assert_non_null(b);
        lp_vlm_gen_params g = lp_vlm_gen_default_params();
        g.n_predict = 12;
        char *ans1 = NULL, *ans2 = NULL, *fresh = NULL;
        lp_vlm_stats s1, s2, s3;
        assert_int_equal(lp_vlm_ask(f.vlm, a, &img, "Where is the dog?", &g, NULL, NULL, &ans1, &s1, &err), LOUPE_OK);
        assert_int_equal(lp_vlm_ask(f.vlm, a, &img, "Where is the red cup?", &g, NULL, NULL, &ans2, &s2, &err), LOUPE_OK);
        assert_int_equal(lp_vlm_ask(f.vlm, b, &img, "Where is the red cup?", &g, NULL, NULL, &fresh, &s3, &err), LOUPE_OK);
        printf("  %s: prefix reused %d of %d (image %d)\n", lp_vlm_family_name(fams[fi]->kind), s2.prefix_reused, s2.prefill_tokens + s2.prefix_reused, s2.n_image_tokens);
        assert_true(s2.image_reused);
        assert_true(s2.prefix_reused > s2.n_image_tokens); /* the system turn and the image rows */
        assert_int_equal(s3.prefix_reused, 0);
        assert_string_equal(ans2, fresh);
        assert_int_equal(s2.decode_tokens, s3.decode_tokens);
        free(ans1);
        free(ans2);
        free(fresh);
        lp_vlm_ctx_free(a);
        lp_vlm_ctx_free(b);
        lp_image_free(&img);
        close_pair(&f);
    }
}

/* Pairs that do not belong together are refused, naming both files. */
static void test_pair_errors(void **state) {
    (void)state;
    lp_error err = {0};
    lp_vlm_params vp = lp_vlm_default_params();
    /* the shipped tiny model's decoder is 256 wide; the InternVL projector gives 64 */
    lp_vlm *v = lp_vlm_load("models/loupe-tiny.gguf", "tests/fixtures/internvl/tiny-f32-mmproj.gguf", &vp, &err);
    assert_null(v);
    assert_int_equal(err.status, LOUPE_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, "projector output width 64 does not match the embedding width 256"));
    assert_non_null(strstr(err.msg, "internvl/tiny-f32-mmproj.gguf"));
    /* a Qwen2.5-VL vision tower needs an M-RoPE decoder; InternVL's is plain qwen2 */
    err = (lp_error){0};
    v = lp_vlm_load("tests/fixtures/internvl/tiny-f32.gguf", QWEN_DIR "tiny-f32-mmproj.gguf", &vp, &err);
    assert_null(v);
    assert_int_equal(err.status, LOUPE_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, "M-RoPE"));
    assert_non_null(strstr(err.msg, "\"qwen2\""));
}

/* A copy of GGUF `src` at `dst` with key `key` set to u32 `val` (or dropped
 * when val < 0) and tensor `drop` (may be NULL) left out. */
static void rewrite(const char *src, const char *dst, const char *key, long val, const char *drop) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(src, &err);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (key && !strcmp(g->kv[i].key, key)) continue;
        if (!strcmp(g->kv[i].key, "general.alignment")) continue;
        assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    }
    if (key && val >= 0) assert_int_equal(lp_gguf_writer_set_u32(w, key, (uint32_t)val), LOUPE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    assert_int_equal(lp_gguf_writer_write(w, dst, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
}

/* Broken InternVL / Qwen mmprojs: each refused with the file and the key or tensor named. */
static void test_bad_mmproj(void **state) {
    (void)state;
    static const struct {
        const char *src, *key;
        long val;
        const char *drop, *want;
    } cases[] = {
        {"tests/fixtures/internvl/tiny-f32-mmproj.gguf", "clip.vision.projector.scale_factor", 3, NULL,
         "clip.vision.projector.scale_factor = 3 does not divide the 32 patches per side"},
        {"tests/fixtures/internvl/tiny-f32-mmproj.gguf", "clip.vision.projector.scale_factor", -1, NULL,
         "clip.vision.projector.scale_factor"},
        {"tests/fixtures/internvl/tiny-f32-mmproj.gguf", "clip.vision.preproc_max_tiles", 0, NULL,
         "clip.vision.preproc_min/max_tiles"},
        {"tests/fixtures/internvl/tiny-f32-mmproj.gguf", NULL, 0, "mm.model.mlp.3.weight", "mm.model.mlp.3.weight"},
        {"tests/fixtures/internvl/tiny-f32-mmproj.gguf", NULL, 0, "mm.model.mlp.0.bias", "mm.model.mlp.0.bias"},
        {"tests/fixtures/internvl/tiny-f32-qknorm-mmproj.gguf", NULL, 0, "v.blk.1.attn_q_norm.weight",
         "v.blk.1.attn_q_norm.weight missing"},
        {QWEN_DIR "tiny-f32-mmproj.gguf", NULL, 0, "v.patch_embd.weight.1", "v.patch_embd.weight.1"},
        {QWEN_DIR "tiny-f32-mmproj.gguf", NULL, 0, "v.blk.2.attn_q.bias", "v.blk.2.attn_q.bias"},
    };
    char dir[128];
    assert_int_equal(tu_mkdtemp(dir, sizeof dir, "badmm"), 0);
    const char *bad = tu_path(dir, "bad-mmproj.gguf");
    char badp[256];
    snprintf(badp, sizeof badp, "%s", bad);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite(cases[i].src, badp, cases[i].key, cases[i].val, cases[i].drop);
        const bool qwen = strstr(cases[i].src, "qwen") != NULL;
        lp_error err = {0};
        lp_vlm_params vp = lp_vlm_default_params();
        lp_vlm *v = lp_vlm_load(qwen ? QWEN_DIR "tiny-f32.gguf" : "tests/fixtures/internvl/tiny-f32.gguf", badp, &vp,
                                &err);
        if (v) fail_msg("case %zu: a broken mmproj loaded", i);
        assert_int_not_equal(err.status, LOUPE_OK);
        if (!strstr(err.msg, cases[i].want) || !strstr(err.msg, "bad-mmproj.gguf"))
            fail_msg("case %zu: message \"%s\" does not name \"%s\" and the file", i, err.msg, cases[i].want);
    }
    assert_int_equal(tu_rmtree(dir), 0);
    /* token limits that cannot hold */
    lp_error err = {0};
    lp_vlm_params vp = lp_vlm_default_params();
    vp.image_min_tokens = 4000;
    vp.image_max_tokens = 100;
    lp_vlm *v = lp_vlm_load(QWEN_DIR "tiny-f32.gguf", QWEN_DIR "tiny-f32-mmproj.gguf", &vp, &err);
    assert_null(v);
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_internvl),
        cmocka_unit_test(test_internvl_qk_norm),
        cmocka_unit_test(test_mobilevlm),
        cmocka_unit_test(test_openelm),
        cmocka_unit_test(test_openelm_errors),
        cmocka_unit_test(test_qwen25vl),
        cmocka_unit_test(test_qwen25vl_token_limits),
        cmocka_unit_test(test_qwen25vl_box_geometry),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_pair_errors),
        cmocka_unit_test(test_bad_mmproj),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
