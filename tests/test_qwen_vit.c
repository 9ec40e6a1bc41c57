/* tests/test_qwen_vit.c — Qwen2.5-VL pieces: the smart-resize rule of both
 * preprocessing modes, the window partition, the vision RoPE, the vision
 * tower + merger on tiny random mmproj files (against a double-precision
 * reference written here from the llama.cpp graph, in plain raster order with
 * an explicit window mask, so the token reordering is checked
 * independently), and the decoder's M-RoPE ("qwen2vl"): text-only positions
 * are exactly the NEOX rope of qwen2, image positions follow mtmd's rule.
 *
 * test_llamacpp_parity_embedded compares a model built here with numbers
 * taken from llama.cpp itself (pixels bit for bit, image embeddings, and the
 * decoder's logits with mtmd's M-RoPE positions). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fusion/projector.h"
#include "../language/decoder.h"
#include "../language/weights.h"
#include "../vision/qwen_vit.h"
#include "gguf.h"
#include "kernels.h"
#include "pool.h"
#include "types.h"

/* ------------------------------------------------------------------------ */
/* random numbers, temp files                                                */

static uint64_t rng_state;

static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_f(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * 0x1p-24); }

static void tmp_path(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/loupe-qwen-XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
}

/* ------------------------------------------------------------------------ */
/* smart resize                                                              */

typedef struct rs_case {
    int w, h, min_tok, max_tok; /* 0: llama.cpp's default 8 / 4096 */
    int W, H;
} rs_case;

static void llamacpp_sizes(int w, int h, int min_tok, int max_tok, int *W, int *H) {
    const int a = 28 * 28;
    lp_error err = {0};
    loupe_status st = lp_qwen_vit_smart_resize(w, h, 28, (min_tok ? min_tok : 8) * a, (max_tok ? max_tok : 4096) * a,
                                               LP_QWEN_PREP_LLAMACPP, W, H, &err);
    if (st != LOUPE_OK) fail_msg("%dx%d: %s", w, h, err.msg);
}

/* Expected sizes worked out from mtmd-image.cpp calc_size_preserved_ratio
 * (f32 arithmetic, roundf half away from zero). */
static void test_smart_resize_llamacpp(void **state) {
    (void)state;
    static const rs_case cases[] = {
        {640, 480, 0, 0, 644, 476},     /* round: 22.86 -> 23, 17.14 -> 17                   */
        {70, 70, 0, 0, 84, 84},         /* 2.5 rounds up (HF: to even, 56)                   */
        {1, 1, 0, 0, 84, 84},           /* tiny: max(28, 0) then min_pixels 6272 -> ceil      */
        {10, 10, 0, 0, 84, 84},
        {8000, 6000, 0, 0, 2044, 1540}, /* huge: beta = sqrtf(48e6 / 3211264), floors         */
        {10000, 10, 0, 0, 9996, 28},    /* extreme aspect: the short side stays at 28         */
        {28, 5000, 0, 0, 28, 5012},
        {640, 480, 1024, 0, 1036, 784}, /* --image-min-tokens 1024                            */
        {640, 480, 0, 64, 252, 168},    /* --image-max-tokens 64                              */
        {56, 56, 0, 0, 84, 84},         /* 4 tokens < 8: grows                                */
        {224, 224, 0, 0, 224, 224},     /* already aligned and in range: unchanged            */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const rs_case *c = &cases[i];
        int W = 0, H = 0;
        llamacpp_sizes(c->w, c->h, c->min_tok, c->max_tok, &W, &H);
        if (W != c->W || H != c->H) {
            fail_msg("%dx%d (tokens %d..%d): got %dx%d, expected %dx%d", c->w, c->h, c->min_tok, c->max_tok, W, H, c->W,
                     c->H);
        }
    }
}

/* Invariants over many sizes: multiples of 28, the token budget respected
 * (up to the one-row clamp for extreme aspect ratios), the aspect ratio
 * roughly kept. */
static void test_smart_resize_invariants(void **state) {
    (void)state;
    rng_state = 7;
    for (int it = 0; it < 4000; it++) {
        const int w = 1 + (int)(rng_u64() % 6000), h = 1 + (int)(rng_u64() % 6000);
        const int mode_tok = (int)(rng_u64() % 3); /* default, low max, high min */
        const int min_tok = mode_tok == 2 ? 256 : 0, max_tok = mode_tok == 1 ? 100 : 0;
        int W, H;
        const double ar = (double)w / h;
        lp_error err0 = {0};
        loupe_status st0 = lp_qwen_vit_smart_resize(w, h, 28, (min_tok ? min_tok : 8) * 784,
                                                    (max_tok ? max_tok : 4096) * 784, LP_QWEN_PREP_LLAMACPP, &W, &H, &err0);
        if (st0 == LOUPE_ERR_LIMIT && (ar > 100 || ar < 0.01)) continue; /* e.g. 1×5123 -> 28×20020: refused, not allocated */
        if (st0 != LOUPE_OK) fail_msg("%dx%d: %s", w, h, err0.msg);
        assert_int_equal(W % 28, 0);
        assert_int_equal(H % 28, 0);
        assert_true(W >= 28 && H >= 28);
        const long tok = (long)(W / 28) * (H / 28);
        const long lo = min_tok ? min_tok : 8, hi = max_tok ? max_tok : 4096;
        if (ar > 1.0 / 20 && ar < 20) {
            if (tok < lo || tok > hi) fail_msg("%dx%d -> %dx%d: %ld tokens outside %ld..%ld", w, h, W, H, tok, lo, hi);
            const double ar2 = (double)W / H;
            if (fabs(log(ar2 / ar)) > 0.45) fail_msg("%dx%d -> %dx%d: aspect not kept", w, h, W, H);
        }
        /* HF mode on the same size: multiples of 28, never refused inside its domain */
        if (w >= 28 && h >= 28 && (double)(w > h ? w : h) / (w > h ? h : w) <= 200.0) {
            int W2, H2;
            lp_error err = {0};
            assert_int_equal(lp_qwen_vit_smart_resize(w, h, 28, 3136, 12845056, LP_QWEN_PREP_HF, &W2, &H2, &err), LOUPE_OK);
            assert_int_equal(W2 % 28, 0);
            assert_int_equal(H2 % 28, 0);
            assert_true((long)W2 * H2 <= 12845056 && (long)W2 * H2 >= 3136);
        }
    }
}

static void test_smart_resize_hf(void **state) {
    (void)state;
    lp_error err = {0};
    int W, H;
    /* Python round() is half-to-even: 70/28 = 2.5 -> 2 */
    assert_int_equal(lp_qwen_vit_smart_resize(70, 70, 28, 3136, 12845056, LP_QWEN_PREP_HF, &W, &H, &err), LOUPE_OK);
    assert_int_equal(W, 56);
    assert_int_equal(H, 56);
    assert_int_equal(lp_qwen_vit_smart_resize(640, 480, 28, 3136, 12845056, LP_QWEN_PREP_HF, &W, &H, &err), LOUPE_OK);
    assert_int_equal(W, 644);
    assert_int_equal(H, 476);
    /* max_pixels 1280 tokens: beta = sqrt(8000·6000 / 1003520), floors */
    assert_int_equal(lp_qwen_vit_smart_resize(8000, 6000, 28, 3136, 1003520, LP_QWEN_PREP_HF, &W, &H, &err), LOUPE_OK);
    assert_int_equal(W, 1148);
    assert_int_equal(H, 840);
    /* HF refuses sides below the factor and aspect ratios above 200 */
    assert_int_equal(lp_qwen_vit_smart_resize(20, 100, 28, 3136, 12845056, LP_QWEN_PREP_HF, &W, &H, &err),
                     LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_qwen_vit_smart_resize(6000, 28, 28, 3136, 12845056, LP_QWEN_PREP_HF, &W, &H, &err),
                     LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_qwen_vit_smart_resize(100, 100, 28, 5000, 4000, LP_QWEN_PREP_HF, &W, &H, &err),
                     LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_qwen_vit_smart_resize(0, 100, 28, 0, 0, LP_QWEN_PREP_LLAMACPP, &W, &H, &err),
                     LOUPE_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------------ */
/* window partition                                                          */

static void test_window_partition(void **state) {
    (void)state;
    /* clip.cpp's example shape: 5 × 3 merged tokens, windows of 4 */
    int32_t idx[15], inv[15], start[8];
    assert_int_equal(lp_qwen_window_partition(5, 3, 4, idx, inv, start), 2);
    static const int32_t want_inv[15] = {0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 4, 9, 14};
    for (int i = 0; i < 15; i++) assert_int_equal(inv[i], want_inv[i]);
    assert_int_equal(start[0], 0);
    assert_int_equal(start[1], 12);
    assert_int_equal(start[2], 15);

    for (int ny = 1; ny <= 13; ny++) {
        for (int nx = 1; nx <= 13; nx++) {
            for (int win = 1; win <= 6; win++) {
                const int G = nx * ny;
                int32_t *wi = malloc((size_t)G * sizeof *wi), *iv = malloc((size_t)G * sizeof *iv);
                int32_t *st = malloc((size_t)(G + 1) * sizeof *st);
                char *seen = calloc((size_t)G, 1);
                assert_non_null(wi);
                assert_non_null(iv);
                assert_non_null(st);
                assert_non_null(seen);
                const int nw = lp_qwen_window_partition(nx, ny, win, wi, iv, st);
                assert_int_equal(nw, ((nx + win - 1) / win) * ((ny + win - 1) / win));
                /* a permutation, and its inverse restores the order */
                for (int g = 0; g < G; g++) {
                    assert_true(wi[g] >= 0 && wi[g] < G);
                    assert_false(seen[wi[g]]);
                    seen[wi[g]] = 1;
                    assert_int_equal(iv[wi[g]], g);
                    assert_int_equal(wi[iv[g]], g);
                }
                /* windows are contiguous ranges; each lies in one win × win block,
                 * blocks visited row-major, groups row-major inside */
                assert_int_equal(st[0], 0);
                assert_int_equal(st[nw], G);
                for (int k = 0; k < nw; k++) {
                    assert_true(st[k + 1] > st[k]);
                    const int bx = k % ((nx + win - 1) / win), by = k / ((nx + win - 1) / win);
                    int prev = -1;
                    for (int p = st[k]; p < st[k + 1]; p++) {
                        const int g = iv[p];
                        assert_int_equal((g % nx) / win, bx);
                        assert_int_equal((g / nx) / win, by);
                        assert_true(g > prev);
                        prev = g;
                    }
                }
                free(wi);
                free(iv);
                free(st);
                free(seen);
            }
        }
    }
    assert_int_equal(lp_qwen_window_partition(0, 3, 4, idx, inv, NULL), -1);
}

/* ------------------------------------------------------------------------ */
/* RoPE                                                                      */

/* The vision rope against the closed form (HF's VisionRotaryEmbedding). */
static void test_vision_rope(void **state) {
    (void)state;
    const int H = 3, d = 80; /* Qwen2.5-VL's head size */
    rng_state = 11;
    for (int it = 0; it < 20; it++) {
        const int py = (int)(rng_u64() % 90), px = (int)(rng_u64() % 90);
        float x[3 * 80], y[3 * 80];
        for (int i = 0; i < H * d; i++) x[i] = y[i] = rng_f(-1, 1);
        lp_qwen_vision_rope(y, H, d, py, px);
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < d / 2; i++) {
                const int j = i < d / 4 ? i : i - d / 4;
                const double inv_freq = pow(10000.0, -2.0 * j / (d / 2.0));
                const double th = (i < d / 4 ? py : px) * inv_freq;
                const double x0 = x[h * d + i], x1 = x[h * d + i + d / 2];
                const double r0 = x0 * cos(th) - x1 * sin(th), r1 = x0 * sin(th) + x1 * cos(th);
                if (fabs(r0 - y[h * d + i]) > 2e-5 || fabs(r1 - y[h * d + i + d / 2]) > 2e-5) {
                    fail_msg("pos (%d, %d) head %d pair %d: %g %g vs %g %g", py, px, h, i, y[h * d + i],
                             y[h * d + i + d / 2], r0, r1);
                }
            }
        }
    }
}

/* M-RoPE with text positions (p, p, p, 0) is bit for bit the NEOX rope. */
static void test_mrope_text_equals_neox(void **state) {
    (void)state;
    static const int secs[][4] = {{16, 24, 24, 0}, {2, 3, 3, 0}, {1, 1, 1, 0}, {64, 0, 0, 0}};
    static const int dims[] = {128, 16, 16, 128};
    rng_state = 3;
    for (size_t k = 0; k < 4; k++) {
        const int d = dims[k], H = 4;
        float *a = malloc((size_t)H * d * sizeof(float)), *b = malloc((size_t)H * d * sizeof(float));
        assert_non_null(a);
        assert_non_null(b);
        for (int p = 0; p < 3000; p += 37) {
            for (int i = 0; i < H * d; i++) a[i] = b[i] = rng_f(-2, 2);
            const int32_t pos[4] = {p, p, p, 0};
            lp_rope_mrope(a, H, d, d, pos, secs[k], 1000000.0f);
            lp_rope(b, H, d, d, p, 1000000.0f, LP_ROPE_NEOX);
            assert_memory_equal(a, b, (size_t)H * d * sizeof(float));
        }
        free(a);
        free(b);
    }
}

/* M-RoPE with distinct ids against the rule in double: pair i takes the id
 * of sector i mod sum(sections): t, h, w, e in that order. */
static void test_mrope_sections(void **state) {
    (void)state;
    const int d = 128, H = 2;
    static const int secs[][4] = {{16, 24, 24, 0}, {4, 8, 8, 4}, {8, 4, 4, 0}};
    rng_state = 5;
    for (size_t k = 0; k < 3; k++) {
        const int *s = secs[k];
        const int sum = s[0] + s[1] + s[2] + s[3];
        const int32_t pos[4] = {9, 23, 41, 60};
        float x[2 * 128], y[2 * 128];
        for (int i = 0; i < H * d; i++) x[i] = y[i] = rng_f(-1, 1);
        lp_rope_mrope(y, H, d, d, pos, s, 10000.0f);
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < d / 2; i++) {
                const int sec = i % sum;
                const int which = sec < s[0] ? 0 : sec < s[0] + s[1] ? 1 : sec < s[0] + s[1] + s[2] ? 2 : 3;
                const double th = pos[which] * pow(10000.0, -2.0 * i / d);
                const double x0 = x[h * d + i], x1 = x[h * d + i + d / 2];
                const double r0 = x0 * cos(th) - x1 * sin(th), r1 = x0 * sin(th) + x1 * cos(th);
                if (fabs(r0 - y[h * d + i]) > 5e-5 || fabs(r1 - y[h * d + i + d / 2]) > 5e-5) {
                    fail_msg("sections %zu pair %d: %g vs %g", k, i, y[h * d + i], r0);
                }
            }
        }
    }
}

/* mtmd's positions for text | image | text. */
static void test_mrope_positions(void **state) {
    (void)state;
    const int n_pre = 3, nx = 4, ny = 2, n_post = 2, n = n_pre + nx * ny + n_post;
    int32_t pos[4 * 13];
    assert_int_equal(n, 13);
    const int32_t next = lp_mrope_pos_prompt(pos, n_pre, nx, ny, n_post, 5);
    assert_int_equal(next, 5 + 3 + 4 + 2);
    static const int32_t t[13] = {5, 6, 7, 8, 8, 8, 8, 8, 8, 8, 8, 12, 13};
    static const int32_t hh[13] = {5, 6, 7, 8, 8, 8, 8, 9, 9, 9, 9, 12, 13};
    static const int32_t ww[13] = {5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11, 12, 13};
    for (int i = 0; i < n; i++) {
        assert_int_equal(pos[i], t[i]);
        assert_int_equal(pos[n + i], hh[i]);
        assert_int_equal(pos[2 * n + i], ww[i]);
        assert_int_equal(pos[3 * n + i], 0);
    }
    /* a tall image advances by its height */
    int32_t p2[4 * 6];
    assert_int_equal(lp_mrope_pos_image(p2, 6, 0, 2, 3, 10), 13);
}

/* ------------------------------------------------------------------------ */
/* tiny qwen2vl language model                                               */

typedef struct lm {
    char path[64];
    lp_gguf *g;
    lp_weight_store *ws;
    lp_llama *m;
} lm;

enum { LM_V = 48, LM_E = 32, LM_H = 2, LM_HKV = 1, LM_F = 40, LM_L = 2 };

/* Tensor data must live until the writer has written the file. */
static void *lm_bufs[64];
static int lm_n_bufs;

static void add_t(lp_gguf_writer *w, const char *name, int n0, int n1, float scale, float off) {
    const int64_t n = (int64_t)n0 * (n1 > 0 ? n1 : 1);
    float *d = malloc((size_t)n * sizeof(float));
    assert_non_null(d);
    assert_true(lm_n_bufs < 64);
    lm_bufs[lm_n_bufs++] = d;
    for (int64_t i = 0; i < n; i++) d[i] = off + rng_f(-scale, scale);
    const int64_t ne[2] = {n0, n1};
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, LP_TYPE_F32, n1 > 0 ? 2 : 1, ne, d), LOUPE_OK);
}

/* arch "qwen2vl" or "qwen2"; the same seed gives the same weights. */
static void lm_write(const char *path, const char *arch, uint64_t seed, const char *sections_mode) {
    rng_state = seed;
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    char k[128];
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", arch), LOUPE_OK);
#define KU(suffix, v)                                                                 \
    do {                                                                              \
        snprintf(k, sizeof k, "%s." suffix, arch);                                   \
        assert_int_equal(lp_gguf_writer_set_u32(w, k, (uint32_t)(v)), LOUPE_OK);      \
    } while (0)
    KU("context_length", 256);
    KU("embedding_length", LM_E);
    KU("block_count", LM_L);
    KU("feed_forward_length", LM_F);
    KU("attention.head_count", LM_H);
    KU("attention.head_count_kv", LM_HKV);
#undef KU
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", arch);
    assert_int_equal(lp_gguf_writer_set_f32(w, k, 1e-6f), LOUPE_OK);
    snprintf(k, sizeof k, "%s.rope.freq_base", arch);
    assert_int_equal(lp_gguf_writer_set_f32(w, k, 1000000.0f), LOUPE_OK);
    snprintf(k, sizeof k, "%s.rope.dimension_sections", arch);
    if (sections_mode && strcmp(sections_mode, "array") == 0) {
        const int32_t sec[4] = {2, 3, 3, 0}; /* head size 16: 8 pairs */
        assert_int_equal(lp_gguf_writer_set_arr(w, k, LP_GGUF_INT32, sec, 4), LOUPE_OK);
    } else if (sections_mode && strcmp(sections_mode, "three") == 0) {
        const int32_t sec[3] = {2, 3, 3};
        assert_int_equal(lp_gguf_writer_set_arr(w, k, LP_GGUF_INT32, sec, 3), LOUPE_OK);
    } else if (sections_mode && strcmp(sections_mode, "scalar") == 0) {
        assert_int_equal(lp_gguf_writer_set_u32(w, k, 2), LOUPE_OK);
    }
    /* a minimal SentencePiece vocabulary, so llama.cpp loads the file too */
    char *toks[LM_V];
    float scores[LM_V];
    int32_t types[LM_V];
    for (int i = 0; i < LM_V; i++) {
        char t[24];
        if (i < 3) snprintf(t, sizeof t, "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
        else if (i >= LM_V - 2) snprintf(t, sizeof t, "%s", i == LM_V - 2 ? "<|vision_start|>" : "<|vision_end|>");
        else if (i < 29) snprintf(t, sizeof t, "%c", 'a' + (i - 3));
        else snprintf(t, sizeof t, "\xe2\x96\x81%c", 'a' + (i - 29));
        toks[i] = strdup(t);
        assert_non_null(toks[i]);
        scores[i] = -(float)i;
        types[i] = i == 0 ? 2 : (i < 3 || i >= LM_V - 2) ? 3 : 1; /* mtmd wraps images in the last two */
    }
    assert_int_equal(lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, LM_V), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LP_GGUF_FLOAT32, scores, LM_V), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, types, LM_V), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2), LOUPE_OK);
    for (int i = 0; i < LM_V; i++) free(toks[i]);
    const int hd = LM_E / LM_H, kv = LM_HKV * hd;
    add_t(w, "token_embd.weight", LM_E, LM_V, 1.0f, 0.0f);
    add_t(w, "output_norm.weight", LM_E, 0, 0.2f, 1.0f);
    add_t(w, "output.weight", LM_E, LM_V, 0.3f, 0.0f);
    char name[64];
    for (int il = 0; il < LM_L; il++) {
#define T(suffix, n0, n1, sc, off)                                    \
    do {                                                              \
        snprintf(name, sizeof name, "blk.%d." suffix, il);           \
        add_t(w, name, n0, n1, sc, off);                              \
    } while (0)
        T("attn_norm.weight", LM_E, 0, 0.2f, 1.0f);
        T("attn_q.weight", LM_E, LM_E, 0.3f, 0.0f);
        T("attn_k.weight", LM_E, kv, 0.3f, 0.0f);
        T("attn_v.weight", LM_E, kv, 0.3f, 0.0f);
        T("attn_q.bias", LM_E, 0, 0.3f, 0.0f);
        T("attn_k.bias", kv, 0, 0.3f, 0.0f);
        T("attn_v.bias", kv, 0, 0.3f, 0.0f);
        T("attn_output.weight", LM_E, LM_E, 0.3f, 0.0f);
        T("ffn_norm.weight", LM_E, 0, 0.2f, 1.0f);
        T("ffn_gate.weight", LM_E, LM_F, 0.3f, 0.0f);
        T("ffn_up.weight", LM_E, LM_F, 0.3f, 0.0f);
        T("ffn_down.weight", LM_F, LM_E, 0.3f, 0.0f);
#undef T
    }
    lp_error err = {0};
    if (lp_gguf_writer_write(w, path, &err) != LOUPE_OK) fail_msg("write %s: %s", path, err.msg);
    lp_gguf_writer_free(w);
    for (int i = 0; i < lm_n_bufs; i++) free(lm_bufs[i]);
    lm_n_bufs = 0;
}

static void lm_open(lm *l, const char *arch, uint64_t seed) {
    memset(l, 0, sizeof *l);
    tmp_path(l->path, sizeof l->path);
    lm_write(l->path, arch, seed, "array");
    lp_error err = {0};
    l->g = lp_gguf_open(l->path, &err);
    if (!l->g) fail_msg("%s", err.msg);
    l->ws = lp_weights_resident(l->g, &err);
    assert_non_null(l->ws);
    l->m = lp_llama_load(l->ws, &err);
    if (!l->m) fail_msg("load %s: %s", arch, err.msg);
}

static void lm_close(lm *l) {
    lp_llama_free(l->m);
    lp_ws_free(l->ws);
    lp_gguf_close(l->g);
    unlink(l->path);
}

static lp_llama_state *state_new(lm *l, int n_batch) {
    lp_error err = {0};
    lp_llama_state *s = lp_llama_state_new_ex(l->m, 64, n_batch, &err);
    assert_non_null(s);
    lp_llama_state_set_exact_matvec(s, true);
    lp_llama_state_set_logits_all(s, true);
    return s;
}

static double max_diff(const float *a, const float *b, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* The qwen2vl decoder on text equals the qwen2 decoder with the same weights,
 * bit for bit, with default and with explicit text positions. */
static void test_qwen2vl_text_equals_qwen2(void **state) {
    (void)state;
    lm a, b;
    lm_open(&a, "qwen2vl", 99);
    lm_open(&b, "qwen2", 99);
    const lp_llama_config *c = lp_llama_get_config(a.m);
    assert_int_equal(c->arch, LP_ARCH_QWEN2VL);
    assert_true(c->mrope);
    assert_int_equal(c->rope_sections[0], 2);
    assert_int_equal(c->rope_sections[1], 3);
    assert_int_equal(c->rope_sections[2], 3);
    assert_int_equal(c->rope_sections[3], 0);
    assert_int_equal(lp_llama_n_pos_per_token(a.m), 4);
    assert_int_equal(lp_llama_n_pos_per_token(b.m), 1);

    const int n = 12;
    int32_t tok[12];
    for (int i = 0; i < n; i++) tok[i] = (int32_t)((i * 7 + 3) % LM_V);
    float *la = malloc((size_t)n * LM_V * sizeof(float)), *lb = malloc((size_t)n * LM_V * sizeof(float));
    float *lc = malloc((size_t)n * LM_V * sizeof(float));
    assert_non_null(la);
    assert_non_null(lb);
    assert_non_null(lc);
    lp_error err = {0};
    lp_llama_state *sa = state_new(&a, 0), *sb = state_new(&b, 0), *sc = state_new(&a, 0);
    /* two calls, so the default positions continue from n_past */
    assert_int_equal(lp_llama_forward_tokens(a.m, sa, tok, 5, la, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(a.m, sa, tok + 5, n - 5, la + 5 * LM_V, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(b.m, sb, tok, 5, lb, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(b.m, sb, tok + 5, n - 5, lb + 5 * LM_V, NULL, &err), LOUPE_OK);
    assert_memory_equal(la, lb, (size_t)n * LM_V * sizeof(float));
    /* explicit text positions (p, p, p, 0) */
    int32_t pos[4 * 12];
    assert_int_equal(lp_mrope_pos_text(pos, n, 0, n, 0), n);
    assert_int_equal(lp_llama_forward_tokens_pos(a.m, sc, tok, pos, n, lc, NULL, &err), LOUPE_OK);
    assert_true(max_diff(lc, la, (int64_t)n * LM_V) <= 1e-5);
    lp_llama_state_free(sa);
    lp_llama_state_free(sb);
    lp_llama_state_free(sc);
    free(la);
    free(lb);
    free(lc);
    lm_close(&a);
    lm_close(&b);
}

/* A prompt with an image: explicit M-RoPE positions change the result, and
 * the same positions give the same logits whether fed at once, in batches
 * of 4 (position slices of a section-major array), or token by token. */
static void test_qwen2vl_image_positions(void **state) {
    (void)state;
    lm a;
    lm_open(&a, "qwen2vl", 123);
    const int n_pre = 3, nx = 3, ny = 2, n_post = 3, n = n_pre + nx * ny + n_post;
    float *embd = malloc((size_t)n * LM_E * sizeof(float));
    assert_non_null(embd);
    int32_t tok[12];
    for (int i = 0; i < n; i++) tok[i] = (int32_t)((i * 5 + 1) % LM_V);
    lp_error err = {0};
    assert_int_equal(lp_llama_embed(a.m, tok, n, embd, &err), LOUPE_OK);
    rng_state = 77;
    for (int i = n_pre * LM_E; i < (n_pre + nx * ny) * LM_E; i++) embd[i] = rng_f(-1, 1); /* "image" rows */
    int32_t pos[4 * 12];
    assert_int_equal(lp_mrope_pos_prompt(pos, n_pre, nx, ny, n_post, 0), n_pre + 3 + n_post);

    float *l_all = malloc((size_t)n * LM_V * sizeof(float)), *l_b4 = malloc((size_t)n * LM_V * sizeof(float));
    float *l_one = malloc((size_t)n * LM_V * sizeof(float)), *l_def = malloc((size_t)n * LM_V * sizeof(float));
    assert_non_null(l_all);
    assert_non_null(l_b4);
    assert_non_null(l_one);
    assert_non_null(l_def);
    lp_llama_state *s1 = state_new(&a, 0), *s2 = state_new(&a, 4), *s3 = state_new(&a, 0), *s4 = state_new(&a, 0);
    assert_int_equal(lp_llama_forward_pos(a.m, s1, embd, pos, n, l_all, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_pos(a.m, s2, embd, pos, n, l_b4, NULL, &err), LOUPE_OK);
    for (int i = 0; i < n; i++) {
        int32_t p1[4] = {pos[i], pos[n + i], pos[2 * n + i], pos[3 * n + i]};
        assert_int_equal(lp_llama_forward_pos(a.m, s3, embd + (int64_t)i * LM_E, p1, 1, l_one + (int64_t)i * LM_V, NULL,
                                              &err),
                         LOUPE_OK);
    }
    assert_int_equal(lp_llama_forward(a.m, s4, embd, n, l_def, NULL, &err), LOUPE_OK);
    assert_int_equal(s1->n_past, n);
    assert_true(max_diff(l_all, l_b4, (int64_t)n * LM_V) <= 1e-4);
    assert_true(max_diff(l_all, l_one, (int64_t)n * LM_V) <= 1e-4);
    /* the text before the image has default positions: same logits there */
    assert_true(max_diff(l_all, l_def, (int64_t)n_pre * LM_V) <= 1e-5);
    /* from the second image token on, the positions differ */
    assert_true(max_diff(l_all + (n_pre + 1) * LM_V, l_def + (n_pre + 1) * LM_V, (int64_t)(n - n_pre - 1) * LM_V) > 1e-3);
    /* negative ids are refused and leave the cache alone */
    int32_t bad[4] = {-1, 0, 0, 0};
    assert_int_equal(lp_llama_forward_pos(a.m, s1, embd, bad, 1, NULL, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(s1->n_past, n);
    lp_llama_state_free(s1);
    lp_llama_state_free(s2);
    lp_llama_state_free(s3);
    lp_llama_state_free(s4);
    free(embd);
    free(l_all);
    free(l_b4);
    free(l_one);
    free(l_def);
    lm_close(&a);
}

/* Explicit positions on a non-M-RoPE model: one id per token. */
static void test_forward_pos_plain(void **state) {
    (void)state;
    lm b;
    lm_open(&b, "qwen2", 5);
    const int n = 6;
    int32_t tok[6] = {1, 2, 3, 4, 5, 6}, pos[6];
    for (int i = 0; i < n; i++) pos[i] = i;
    float *l1 = malloc((size_t)n * LM_V * sizeof(float)), *l2 = malloc((size_t)n * LM_V * sizeof(float));
    assert_non_null(l1);
    assert_non_null(l2);
    lp_error err = {0};
    lp_llama_state *s1 = state_new(&b, 0), *s2 = state_new(&b, 0);
    assert_int_equal(lp_llama_forward_tokens(b.m, s1, tok, n, l1, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens_pos(b.m, s2, tok, pos, n, l2, NULL, &err), LOUPE_OK);
    assert_memory_equal(l1, l2, (size_t)n * LM_V * sizeof(float));
    lp_llama_state_free(s1);
    lp_llama_state_free(s2);
    free(l1);
    free(l2);
    lm_close(&b);
}

/* The sections key: required, 4 entries or a scalar. */
static void test_sections_key(void **state) {
    (void)state;
    static const struct { const char *mode; loupe_status st; } cases[] = {
        {NULL, LOUPE_ERR_FORMAT}, {"three", LOUPE_ERR_FORMAT}, {"scalar", LOUPE_OK}};
    for (size_t i = 0; i < 3; i++) {
        char path[64];
        tmp_path(path, sizeof path);
        lm_write(path, "qwen2vl", 1, cases[i].mode);
        lp_error err = {0};
        lp_gguf *g = lp_gguf_open(path, &err);
        assert_non_null(g);
        lp_weight_store *ws = lp_weights_resident(g, &err);
        lp_llama *m = lp_llama_load(ws, &err);
        if (cases[i].st == LOUPE_OK) {
            if (!m) fail_msg("%s", err.msg);
            assert_int_equal(lp_llama_get_config(m)->rope_sections[3], 2);
        } else {
            assert_null(m);
            assert_int_equal(err.status, cases[i].st);
            assert_non_null(strstr(err.msg, "qwen2vl.rope.dimension_sections"));
        }
        lp_llama_free(m);
        lp_ws_free(ws);
        lp_gguf_close(g);
        unlink(path);
    }
}

/* ------------------------------------------------------------------------ */
/* tiny Qwen2.5-VL mmproj                                                    */

#define VMAXL 4

typedef struct vspec {
    int P, E, H, F, L, OUT, n_wa;
    lp_type wtype;
    const char *proj_type;
    bool no_gate;
    const char *omit_tensor, *omit_key, *extra_tensor;
    int proj_dim_key; /* 0: OUT */
} vspec;

typedef struct vlayer {
    float *q, *k, *v, *o, *qb, *kb, *vb, *ob;
    float *up, *upb, *gate, *gateb, *down, *downb;
    float *l1, *l2;
} vlayer;

typedef struct vmodel {
    vspec s;
    int K;
    float *p0, *p1; /* (E, K) */
    vlayer l[VMAXL];
    float *post;
    float *mm0, *mm0b, *mm2, *mm2b;
    float mean[3], std[3];
    void *allocs[256];
    int n_allocs;
} vmodel;

static float *vrnd(vmodel *m, int64_t n, float lo, float hi) {
    float *v = malloc((size_t)n * sizeof(float));
    assert_non_null(v);
    assert_true(m->n_allocs < 256);
    m->allocs[m->n_allocs++] = v;
    for (int64_t i = 0; i < n; i++) {
        v[i] = rng_f(lo, hi);
        if (m->s.wtype == LP_TYPE_F16) v[i] = lp_f16_to_f32(lp_f32_to_f16(v[i]));
    }
    return v;
}

static float *vmat(vmodel *m, int out, int in) {
    const float a = 1.5f / sqrtf((float)in);
    return vrnd(m, (int64_t)out * in, -a, a);
}

static void vmodel_build(vmodel *m, const vspec *s, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->s = *s;
    rng_state = seed;
    const int E = s->E, F = s->F;
    m->K = 3 * s->P * s->P;
    m->p0 = vmat(m, E, m->K);
    m->p1 = vmat(m, E, m->K);
    for (int il = 0; il < s->L; il++) {
        vlayer *L = &m->l[il];
        L->q = vmat(m, E, E);
        L->k = vmat(m, E, E);
        L->v = vmat(m, E, E);
        L->o = vmat(m, E, E);
        L->qb = vrnd(m, E, -0.2f, 0.2f);
        L->kb = vrnd(m, E, -0.2f, 0.2f);
        L->vb = vrnd(m, E, -0.2f, 0.2f);
        L->ob = vrnd(m, E, -0.2f, 0.2f);
        L->up = vmat(m, F, E);
        L->upb = vrnd(m, F, -0.1f, 0.1f);
        L->gate = vmat(m, F, E);
        L->gateb = vrnd(m, F, -0.1f, 0.1f);
        L->down = vmat(m, E, F);
        L->downb = vrnd(m, E, -0.1f, 0.1f);
        L->l1 = vrnd(m, E, 0.8f, 1.2f);
        L->l2 = vrnd(m, E, 0.8f, 1.2f);
    }
    m->post = vrnd(m, E, 0.8f, 1.2f);
    m->mm0 = vmat(m, 4 * E, 4 * E);
    m->mm0b = vrnd(m, 4 * E, -0.1f, 0.1f);
    m->mm2 = vmat(m, s->OUT, 4 * E);
    m->mm2b = vrnd(m, s->OUT, -0.1f, 0.1f);
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memcpy(m->mean, mean, sizeof mean);
    memcpy(m->std, std, sizeof std);
}

static void vmodel_free(vmodel *m) {
    for (int i = 0; i < m->n_allocs; i++) free(m->allocs[i]);
    m->n_allocs = 0;
}

static void vput(vmodel *m, lp_gguf_writer *w, const char *name, lp_type t, uint32_t nd, const int64_t *ne,
                 const float *data) {
    if (m->s.omit_tensor && strcmp(m->s.omit_tensor, name) == 0) return;
    int64_t n = 1;
    for (uint32_t d = 0; d < nd; d++) n *= ne[d];
    const void *buf = data;
    if (t == LP_TYPE_F16) {
        uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
        assert_non_null(h);
        m->allocs[m->n_allocs++] = h;
        for (int64_t i = 0; i < n; i++) h[i] = lp_f32_to_f16(data[i]);
        buf = h;
    }
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, t, nd, ne, buf), LOUPE_OK);
}

static void vset_u32(vmodel *m, lp_gguf_writer *w, const char *key, uint32_t v) {
    if (m->s.omit_key && strcmp(m->s.omit_key, key) == 0) return;
    assert_int_equal(lp_gguf_writer_set_u32(w, key, v), LOUPE_OK);
}

static void vmodel_write(vmodel *m, const char *path) {
    const vspec *s = &m->s;
    const int E = s->E, F = s->F;
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", "clip"), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "clip.has_vision_encoder", true), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_str(w, "clip.projector_type", s->proj_type ? s->proj_type : "qwen2.5vl_merger"),
                     LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "clip.use_silu", true), LOUPE_OK);
    vset_u32(m, w, "clip.vision.image_size", 560);
    vset_u32(m, w, "clip.vision.patch_size", (uint32_t)s->P);
    vset_u32(m, w, "clip.vision.embedding_length", (uint32_t)E);
    vset_u32(m, w, "clip.vision.feed_forward_length", (uint32_t)F);
    vset_u32(m, w, "clip.vision.block_count", (uint32_t)s->L);
    vset_u32(m, w, "clip.vision.attention.head_count", (uint32_t)s->H);
    vset_u32(m, w, "clip.vision.projection_dim", (uint32_t)(s->proj_dim_key ? s->proj_dim_key : s->OUT));
    vset_u32(m, w, "clip.vision.n_wa_pattern", (uint32_t)s->n_wa);
    assert_int_equal(lp_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-6f), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.image_mean", LP_GGUF_FLOAT32, m->mean, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.image_std", LP_GGUF_FLOAT32, m->std, 3), LOUPE_OK);

    char name[96];
    vput(m, w, "v.patch_embd.weight", s->wtype, 4, (int64_t[]){s->P, s->P, 3, E}, m->p0);
    vput(m, w, "v.patch_embd.weight.1", s->wtype, 4, (int64_t[]){s->P, s->P, 3, E}, m->p1);
    if (s->extra_tensor) vput(m, w, s->extra_tensor, LP_TYPE_F32, 1, (int64_t[]){E}, m->post);
    for (int il = 0; il < s->L; il++) {
        const vlayer *L = &m->l[il];
        const struct { const char *n; const float *wt, *b; int out, in; } t[] = {
            {"attn_q", L->q, L->qb, E, E},       {"attn_k", L->k, L->kb, E, E},
            {"attn_v", L->v, L->vb, E, E},       {"attn_out", L->o, L->ob, E, E},
            {"ffn_up", L->up, L->upb, F, E},     {"ffn_gate", L->gate, L->gateb, F, E},
            {"ffn_down", L->down, L->downb, E, F},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            if (s->no_gate && strcmp(t[i].n, "ffn_gate") == 0) continue;
            snprintf(name, sizeof name, "v.blk.%d.%s.weight", il, t[i].n);
            vput(m, w, name, s->wtype, 2, (int64_t[]){t[i].in, t[i].out}, t[i].wt);
            snprintf(name, sizeof name, "v.blk.%d.%s.bias", il, t[i].n);
            vput(m, w, name, LP_TYPE_F32, 1, (int64_t[]){t[i].out}, t[i].b);
        }
        snprintf(name, sizeof name, "v.blk.%d.ln1.weight", il);
        vput(m, w, name, LP_TYPE_F32, 1, (int64_t[]){E}, L->l1);
        snprintf(name, sizeof name, "v.blk.%d.ln2.weight", il);
        vput(m, w, name, LP_TYPE_F32, 1, (int64_t[]){E}, L->l2);
    }
    vput(m, w, "v.post_ln.weight", LP_TYPE_F32, 1, (int64_t[]){E}, m->post);
    vput(m, w, "mm.0.weight", s->wtype, 2, (int64_t[]){4 * E, 4 * E}, m->mm0);
    vput(m, w, "mm.0.bias", LP_TYPE_F32, 1, (int64_t[]){4 * E}, m->mm0b);
    vput(m, w, "mm.2.weight", s->wtype, 2, (int64_t[]){4 * E, s->OUT}, m->mm2);
    vput(m, w, "mm.2.bias", LP_TYPE_F32, 1, (int64_t[]){s->OUT}, m->mm2b);
    lp_error err = {0};
    if (lp_gguf_writer_write(w, path, &err) != LOUPE_OK) fail_msg("write %s: %s", path, err.msg);
    lp_gguf_writer_free(w);
}

static vspec default_vspec(void) {
    vspec s = {.P = 14, .E = 16, .H = 2, .F = 24, .L = 3, .OUT = 20, .n_wa = 2, .wtype = LP_TYPE_F32};
    return s;
}

typedef struct vloaded {
    char path[64];
    lp_gguf *g;
    lp_weight_store *ws;
    lp_qwen_vit *v;
} vloaded;

static void vload(vloaded *ld, vmodel *m, lp_error *err) {
    memset(ld, 0, sizeof *ld);
    tmp_path(ld->path, sizeof ld->path);
    vmodel_write(m, ld->path);
    ld->g = lp_gguf_open(ld->path, err);
    if (!ld->g) fail_msg("open %s: %s", ld->path, err->msg);
    ld->ws = lp_weights_resident(ld->g, err);
    assert_non_null(ld->ws);
    ld->v = lp_qwen_vit_load(ld->g, ld->ws, err);
}

static void vunload(vloaded *ld) {
    lp_qwen_vit_free(ld->v);
    lp_ws_free(ld->ws);
    lp_gguf_close(ld->g);
    unlink(ld->path);
}

/* ---- reference, double precision, raster patch order ---- */

static void rlin(const double *x, int n, int in, const float *W, const float *b, int out, double *y) {
    for (int t = 0; t < n; t++)
        for (int o = 0; o < out; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < in; i++) acc += x[(int64_t)t * in + i] * W[(int64_t)o * in + i];
            y[(int64_t)t * out + o] = acc;
        }
}

static void rrms(double *x, int n, int E, const float *w) {
    for (int t = 0; t < n; t++) {
        double *r = x + (int64_t)t * E, ss = 0.0;
        for (int i = 0; i < E; i++) ss += r[i] * r[i];
        const double inv = 1.0 / sqrt(ss / E + 1e-6);
        for (int i = 0; i < E; i++) r[i] = r[i] * inv * w[i];
    }
}

static void rrope(double *x, int H, int d, int py, int px) {
    for (int h = 0; h < H; h++)
        for (int i = 0; i < d / 2; i++) {
            const int j = i < d / 4 ? i : i - d / 4;
            const double th = (i < d / 4 ? py : px) * pow(10000.0, -4.0 * j / d);
            double *r = x + (int64_t)h * d;
            const double a = r[i], b = r[i + d / 2];
            r[i] = a * cos(th) - b * sin(th);
            r[i + d / 2] = a * sin(th) + b * cos(th);
        }
}

/* out (nx·ny, OUT). gelu_tanh: the merger's GELU in tanh form (f32 formula). */
static void ref_encode(const vmodel *m, const float *pix, int W, int Himg, bool gelu_tanh, double *out) {
    const vspec *s = &m->s;
    const int P = s->P, E = s->E, F = s->F, d = E / s->H, pw = W / P, ph = Himg / P, N = pw * ph, nx = pw / 2,
              ny = ph / 2, win = 112 / P / 2;
    double *x = calloc((size_t)N * E, sizeof(double)), *xn = calloc((size_t)N * E, sizeof(double));
    double *q = calloc((size_t)N * E, sizeof(double)), *k = calloc((size_t)N * E, sizeof(double));
    double *v = calloc((size_t)N * E, sizeof(double)), *att = calloc((size_t)N * E, sizeof(double));
    double *t1 = calloc((size_t)N * E, sizeof(double)), *u = calloc((size_t)N * F, sizeof(double));
    double *g = calloc((size_t)N * F, sizeof(double)), *col = calloc((size_t)m->K, sizeof(double));
    double *sc = calloc((size_t)N, sizeof(double));
    assert_true(x && xn && q && k && v && att && t1 && u && g && col && sc);
    for (int py = 0; py < ph; py++)
        for (int px = 0; px < pw; px++) {
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++)
                    for (int kx = 0; kx < P; kx++)
                        col[(c * P + ky) * P + kx] = pix[(size_t)c * W * Himg + (size_t)(py * P + ky) * W + px * P + kx];
            double a[64], b[64];
            rlin(col, 1, m->K, m->p0, NULL, E, a);
            rlin(col, 1, m->K, m->p1, NULL, E, b);
            for (int e = 0; e < E; e++) x[(int64_t)(py * pw + px) * E + e] = a[e] + b[e];
        }
    for (int il = 0; il < s->L; il++) {
        const vlayer *L = &m->l[il];
        const bool full = s->n_wa <= 0 || (il + 1) % s->n_wa == 0;
        memcpy(xn, x, (size_t)N * E * sizeof(double));
        rrms(xn, N, E, L->l1);
        rlin(xn, N, E, L->q, L->qb, E, q);
        rlin(xn, N, E, L->k, L->kb, E, k);
        rlin(xn, N, E, L->v, L->vb, E, v);
        for (int p = 0; p < N; p++) {
            rrope(q + (int64_t)p * E, s->H, d, p / pw, p % pw);
            rrope(k + (int64_t)p * E, s->H, d, p / pw, p % pw);
        }
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < N; i++) {
                const int wiy = (i / pw / 2) / win, wix = (i % pw / 2) / win;
                double mx = -INFINITY;
                for (int j = 0; j < N; j++) {
                    const bool vis = full || ((j / pw / 2) / win == wiy && (j % pw / 2) / win == wix);
                    if (!vis) {
                        sc[j] = -INFINITY;
                        continue;
                    }
                    double dot = 0.0;
                    for (int e = 0; e < d; e++) dot += q[(int64_t)i * E + h * d + e] * k[(int64_t)j * E + h * d + e];
                    sc[j] = dot / sqrt((double)d);
                    if (sc[j] > mx) mx = sc[j];
                }
                double sum = 0.0;
                for (int j = 0; j < N; j++) {
                    sc[j] = sc[j] == -INFINITY ? 0.0 : exp(sc[j] - mx);
                    sum += sc[j];
                }
                for (int e = 0; e < d; e++) {
                    double acc = 0.0;
                    for (int j = 0; j < N; j++) acc += sc[j] * v[(int64_t)j * E + h * d + e];
                    att[(int64_t)i * E + h * d + e] = acc / sum;
                }
            }
        rlin(att, N, E, L->o, L->ob, E, t1);
        for (int i = 0; i < N * E; i++) x[i] += t1[i];
        memcpy(xn, x, (size_t)N * E * sizeof(double));
        rrms(xn, N, E, L->l2);
        rlin(xn, N, E, L->up, L->upb, F, u);
        if (!s->no_gate) {
            rlin(xn, N, E, L->gate, L->gateb, F, g);
            for (int i = 0; i < N * F; i++) u[i] *= g[i] / (1.0 + exp(-g[i]));
        } else {
            for (int i = 0; i < N * F; i++) u[i] = u[i] / (1.0 + exp(-u[i]));
        }
        rlin(u, N, F, L->down, L->downb, E, t1);
        for (int i = 0; i < N * E; i++) x[i] += t1[i];
    }
    rrms(x, N, E, m->post);
    double *cat = calloc((size_t)4 * E, sizeof(double)), *hid = calloc((size_t)4 * E, sizeof(double));
    assert_true(cat && hid);
    for (int gy = 0; gy < ny; gy++)
        for (int gx = 0; gx < nx; gx++) {
            for (int j = 0; j < 4; j++) {
                const int p = (2 * gy + j / 2) * pw + 2 * gx + j % 2;
                memcpy(cat + j * E, x + (int64_t)p * E, (size_t)E * sizeof(double));
            }
            rlin(cat, 1, 4 * E, m->mm0, m->mm0b, 4 * E, hid);
            for (int i = 0; i < 4 * E; i++) {
                const double z = hid[i];
                hid[i] = gelu_tanh ? 0.5 * z * (1.0 + tanh(sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)))
                                   : 0.5 * z * (1.0 + erf(z / sqrt(2.0)));
            }
            rlin(hid, 1, 4 * E, m->mm2, m->mm2b, s->OUT, out + (int64_t)(gy * nx + gx) * s->OUT);
        }
    free(cat);
    free(hid);
    free(x);
    free(xn);
    free(q);
    free(k);
    free(v);
    free(att);
    free(t1);
    free(u);
    free(g);
    free(col);
    free(sc);
}

static float *rand_pixels(int W, int H, uint64_t seed) {
    rng_state = seed;
    float *p = malloc((size_t)3 * W * H * sizeof(float));
    assert_non_null(p);
    for (int64_t i = 0; i < (int64_t)3 * W * H; i++) p[i] = rng_f(-1.8f, 2.1f);
    return p;
}

/* Encode and compare with the reference: max |got − ref| <= tol · max |ref|. */
static void check_encode(vmodel *m, int W, int H, unsigned quirks, bool ref_tanh, double tol, lp_pool *pool) {
    lp_error err = {0};
    vloaded ld;
    vload(&ld, m, &err);
    if (!ld.v) fail_msg("load: %s", err.msg);
    assert_int_equal(lp_qwen_vit_set_quirks(ld.v, quirks, &err), LOUPE_OK);
    const int nx = W / 28, ny = H / 28, OUT = m->s.OUT;
    assert_int_equal(lp_qwen_vit_out_dim(ld.v), OUT);
    float *px = rand_pixels(W, H, 1234 + (uint64_t)W * 7 + H);
    float *out = malloc((size_t)nx * ny * OUT * sizeof(float));
    double *ref = malloc((size_t)nx * ny * OUT * sizeof(double));
    assert_non_null(out);
    assert_non_null(ref);
    if (lp_qwen_vit_encode(ld.v, px, W, H, out, pool, &err) != LOUPE_OK) fail_msg("encode %dx%d: %s", W, H, err.msg);
    ref_encode(m, px, W, H, ref_tanh, ref);
    double md = 0.0, mr = 0.0;
    for (int64_t i = 0; i < (int64_t)nx * ny * OUT; i++) {
        assert_true(isfinite(out[i]));
        md = fmax(md, fabs(out[i] - ref[i]));
        mr = fmax(mr, fabs(ref[i]));
    }
    if (!(md <= tol * mr)) fail_msg("%dx%d quirks 0x%x: max diff %g, max |ref| %g", W, H, quirks, md, mr);
    free(px);
    free(out);
    free(ref);
    vunload(&ld);
}

/* Exact numerics (erf GELU, f32) against the reference on several grids:
 * one window, windows cut at the right and bottom, several full rows. */
static void test_vit_reference(void **state) {
    (void)state;
    vmodel m;
    vspec s = default_vspec();
    vmodel_build(&m, &s, 42);
    static const int sizes[][2] = {{56, 56}, {140, 84}, {28, 252}, {252, 168}, {28, 28}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_encode(&m, sizes[i][0], sizes[i][1], 0, false, 1e-4, NULL);
    vmodel_free(&m);
}

/* With a pool, with every layer full (n_wa_pattern 0) or every one windowed
 * (n_wa_pattern > layers), and the gate-less MLP. */
static void test_vit_variants(void **state) {
    (void)state;
    lp_pool *pool = lp_pool_new(2);
    assert_non_null(pool);
    vspec s = default_vspec();
    vmodel m;
    vmodel_build(&m, &s, 43);
    check_encode(&m, 196, 140, 0, false, 1e-4, pool);
    vmodel_free(&m);
    s.n_wa = 0;
    vmodel_build(&m, &s, 44);
    check_encode(&m, 140, 140, 0, false, 1e-4, NULL);
    vmodel_free(&m);
    s.n_wa = 100;
    s.no_gate = true;
    vmodel_build(&m, &s, 45);
    check_encode(&m, 168, 112, 0, false, 1e-4, pool);
    vmodel_free(&m);
    lp_pool_free(pool);
}

/* llama.cpp's numerics (the default): tanh GELU through the f16 table and
 * f16-rounded products with f16 weights; close to the f32 reference. */
static void test_vit_llamacpp_numerics(void **state) {
    (void)state;
    vspec s = default_vspec();
    s.wtype = LP_TYPE_F16;
    vmodel m;
    vmodel_build(&m, &s, 46);
    check_encode(&m, 140, 84, LP_QWEN_VIT_QUIRKS_LLAMACPP, true, 5e-3, NULL);
    check_encode(&m, 140, 84, LP_CLIP_QUIRK_GELU_TANH, true, 1e-4, NULL);
    vmodel_free(&m);
}

typedef struct dump_rec {
    int n;
    char names[16][32];
    int64_t sizes[16];
} dump_rec;

static void rec_dump(void *user, const char *name, const float *data, int64_t n) {
    dump_rec *r = user;
    (void)data;
    if (r->n < 16) {
        snprintf(r->names[r->n], sizeof r->names[0], "%s", name);
        r->sizes[r->n++] = n;
    }
}

/* Accessors, the dump hook, the token count, and refused inputs. */
static void test_vit_api(void **state) {
    (void)state;
    vspec s = default_vspec();
    vmodel m;
    vmodel_build(&m, &s, 47);
    lp_error err = {0};
    vloaded ld;
    vload(&ld, &m, &err);
    if (!ld.v) fail_msg("%s", err.msg);
    lp_qwen_vit *v = ld.v;
    assert_int_equal(lp_qwen_vit_factor(v), 28);
    assert_int_equal(lp_qwen_vit_window(v), 4);
    assert_int_equal(lp_qwen_vit_n_wa_pattern(v), 2);
    assert_false(lp_qwen_vit_layer_full(v, 0));
    assert_true(lp_qwen_vit_layer_full(v, 1));
    assert_false(lp_qwen_vit_layer_full(v, 2));
    assert_int_equal(lp_qwen_vit_quirks(v), LP_QWEN_VIT_QUIRKS_LLAMACPP);
    assert_int_equal(lp_qwen_vit_set_quirks(v, LP_CLIP_QUIRK_CLS_LAST, &err), LOUPE_ERR_INVALID_ARG);
    dump_rec r = {0};
    lp_qwen_vit_set_dump(v, rec_dump, &r);
    const int W = 84, H = 56; /* 3 × 2 merged tokens */
    float *px = rand_pixels(W, H, 9), *out = malloc((size_t)6 * s.OUT * sizeof(float));
    assert_non_null(out);
    assert_int_equal(lp_qwen_vit_encode(v, px, W, H, out, NULL, &err), LOUPE_OK);
    static const char *const want[] = {"v.patch_embd", "v.blk.0", "v.blk.1", "v.blk.2", "v.post_ln", "mm.hidden", "mm.out"};
    const int64_t wsz[] = {24 * 16, 24 * 16, 24 * 16, 24 * 16, 24 * 16, 6 * 64, 6 * 20};
    assert_int_equal(r.n, 7);
    for (int i = 0; i < 7; i++) {
        assert_string_equal(r.names[i], want[i]);
        assert_int_equal(r.sizes[i], wsz[i]);
    }
    /* sides must be multiples of 28 */
    assert_int_equal(lp_qwen_vit_encode(v, px, 70, 56, out, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_qwen_vit_encode(v, px, 0, 56, out, NULL, &err), LOUPE_ERR_INVALID_ARG);
    /* token limits */
    int lo, hi;
    lp_qwen_vit_pixel_limits(v, LP_QWEN_PREP_LLAMACPP, &lo, &hi);
    assert_int_equal(lo, 8 * 784);
    assert_int_equal(hi, 4096 * 784);
    lp_qwen_vit_pixel_limits(v, LP_QWEN_PREP_HF, &lo, &hi);
    assert_int_equal(lo, 3136);
    assert_int_equal(hi, 12845056);
    assert_int_equal(lp_qwen_vit_set_token_limits(v, 1024, 0, &err), LOUPE_OK);
    lp_qwen_vit_pixel_limits(v, LP_QWEN_PREP_LLAMACPP, &lo, &hi);
    assert_int_equal(lo, 1024 * 784);
    assert_int_equal(lp_qwen_vit_set_token_limits(v, 100, 50, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_qwen_vit_set_token_limits(v, 0, 0, &err), LOUPE_OK);
    free(px);
    free(out);
    vunload(&ld);
    vmodel_free(&m);
}

static void expect_load_error(const vspec *s, loupe_status status, const char *needle) {
    vmodel m;
    vmodel_build(&m, s, 48);
    lp_error err = {0};
    vloaded ld;
    vload(&ld, &m, &err);
    if (ld.v) fail_msg("loaded, expected an error mentioning %s", needle);
    if (err.status != status || !strstr(err.msg, needle) || !strstr(err.msg, ld.path)) {
        fail_msg("status %d, message \"%s\": expected %d and \"%s\" and the path", err.status, err.msg, status, needle);
    }
    vunload(&ld);
    vmodel_free(&m);
}

static void test_vit_bad_files(void **state) {
    (void)state;
    vspec s = default_vspec();
    vspec b = s;
    b.proj_type = "mlp";
    expect_load_error(&b, LOUPE_ERR_UNSUPPORTED, "clip.projector_type");
    b = s;
    b.omit_key = "clip.vision.n_wa_pattern";
    expect_load_error(&b, LOUPE_ERR_FORMAT, "clip.vision.n_wa_pattern");
    b = s;
    b.omit_tensor = "v.patch_embd.weight.1";
    expect_load_error(&b, LOUPE_ERR_FORMAT, "v.patch_embd.weight.1");
    b = s;
    b.omit_tensor = "v.blk.1.attn_k.bias";
    expect_load_error(&b, LOUPE_ERR_FORMAT, "v.blk.1.attn_k.bias");
    b = s;
    b.extra_tensor = "v.patch_embd.bias";
    expect_load_error(&b, LOUPE_ERR_UNSUPPORTED, "v.patch_embd.bias");
    b = s;
    b.proj_dim_key = 24;
    expect_load_error(&b, LOUPE_ERR_FORMAT, "clip.vision.projection_dim");
    b = s;
    b.H = 4; /* head size 4: fine */
    vmodel m;
    vmodel_build(&m, &b, 49);
    lp_error err = {0};
    vloaded ld;
    vload(&ld, &m, &err);
    if (!ld.v) fail_msg("%s", err.msg);
    vunload(&ld);
    vmodel_free(&m);
    b = s;
    b.H = 8; /* head size 2: the rope needs a multiple of 4 */
    expect_load_error(&b, LOUPE_ERR_FORMAT, "multiple of 4");
}

/* ------------------------------------------------------------------------ */
/* preprocessing                                                             */

static void test_preprocess(void **state) {
    (void)state;
    vspec s = default_vspec();
    vmodel m;
    vmodel_build(&m, &s, 50);
    lp_error err = {0};
    vloaded ld;
    vload(&ld, &m, &err);
    if (!ld.v) fail_msg("%s", err.msg);
    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 640, 480, &err), LOUPE_OK);
    for (int i = 0; i < 640 * 480 * 3; i++) img.rgb[i] = (uint8_t)(100 + (i * 7) % 101);

    /* llama.cpp: 644 × 476, the image fitted to 635 × 476 and centred on black */
    lp_qwen_geom g;
    assert_int_equal(lp_qwen_vit_plan(ld.v, 640, 480, LP_QWEN_PREP_LLAMACPP, &g, &err), LOUPE_OK);
    assert_int_equal(g.width, 644);
    assert_int_equal(g.height, 476);
    assert_int_equal(g.nx, 23);
    assert_int_equal(g.ny, 17);
    float *px = malloc((size_t)3 * g.width * g.height * sizeof(float));
    assert_non_null(px);
    const lp_prep_geom planned = g.map;
    assert_int_equal(lp_qwen_vit_preprocess(ld.v, &img, LP_QWEN_PREP_LLAMACPP, px, &g, &err), LOUPE_OK);
    assert_memory_equal(&planned, &g.map, sizeof planned); /* the plan already knows the mapping */
    int nw, nh;
    lp_fit_inside_rect(640, 480, 644, 476, &nw, &nh);
    assert_int_equal(g.map.content_w, nw);
    assert_int_equal(g.map.content_h, nh);
    assert_int_equal(g.map.content_x, (644 - nw) / 2);
    assert_int_equal(g.map.content_y, (476 - nh) / 2);
    assert_true(nw < 644 && nh == 476 && g.map.content_x > 0);
    for (int c = 0; c < 3; c++) { /* the pad column is black */
        const float want = (0.0f - m.mean[c]) / m.std[c];
        assert_true(px[(size_t)c * 644 * 476 + 10 * 644 + 0] == want);
    }
    /* HF: stretched to 644 × 476, no pad */
    assert_int_equal(lp_qwen_vit_preprocess(ld.v, &img, LP_QWEN_PREP_HF, px, &g, &err), LOUPE_OK);
    assert_int_equal(g.map.content_x, 0);
    assert_int_equal(g.map.content_w, 644);
    assert_true(fabs(g.map.scale_x - 644.0 / 640.0) < 1e-12);
    /* an image already at an allowed size is normalized as is */
    lp_image sq;
    assert_int_equal(lp_image_alloc(&sq, 112, 84, &err), LOUPE_OK);
    for (int i = 0; i < 112 * 84 * 3; i++) sq.rgb[i] = (uint8_t)(i * 13);
    assert_int_equal(lp_qwen_vit_preprocess(ld.v, &sq, LP_QWEN_PREP_LLAMACPP, px, &g, &err), LOUPE_OK);
    assert_int_equal(g.width, 112);
    assert_int_equal(g.height, 84);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 112 * 84; i++) {
            const float want = ((float)sq.rgb[i * 3 + c] / 255.0f - m.mean[c]) / m.std[c];
            assert_true(px[(size_t)c * 112 * 84 + i] == want);
        }
    /* and encodes to nx · ny tokens */
    float *out = malloc((size_t)4 * 3 * s.OUT * sizeof(float));
    assert_non_null(out);
    assert_int_equal(lp_qwen_vit_encode(ld.v, px, g.width, g.height, out, NULL, &err), LOUPE_OK);
    free(out);
    lp_image_free(&sq);
    lp_image_free(&img);
    free(px);
    vunload(&ld);
    vmodel_free(&m);
}

/* ------------------------------------------------------------------------ */
/* llama.cpp parity (fixture made by tools/llamacpp/vlm_dump.cpp)             */

static uint64_t fnv1a64(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---- llama.cpp's numbers for a model built here (embedded) ----
 * The mmproj, LM and image below are deterministic. Their llama.cpp results
 * (the tree at /work/llama.cpp, CPU, flash attention off, f32 KV cache) were
 * taken with a small program linking libmtmd/libllama: the preprocessor
 * (mtmd_image_preprocessor_dyn_size) for the f32 pixel tensor,
 * mtmd_encode_chunk for the image embeddings, and llama_decode of PARITY_PRE
 * (a token batch), mtmd_helper_decode_image_chunk (M-RoPE positions from
 * mtmd) and PARITY_POST for the last logits. LOUPE_QWEN_PARITY_OUT=dir makes
 * this test write the three inputs (mmproj.gguf, lm.gguf, image.rgb) there,
 * to redo that. */
/* PARITY-BEGIN (generated from llama.cpp's output; see above) */
#define PARITY_W 150
#define PARITY_H 100
#define PARITY_IN_W 140 /* llama.cpp's input: 140 x 112, 5 x 4 merged tokens */
#define PARITY_IN_H 112
#define PARITY_TOKENS 20
#define PARITY_PIXEL_HASH 0xd792bf1100a623d3ull /* FNV-1a 64 of llama.cpp's f32 pixel tensor (3, 112, 140) */
#define PARITY_PRE {1, 5, 9}
#define PARITY_POST {7, 3}
#define PARITY_N_PAST_END 10 /* 3 + max(5, 4) + 2: mtmd's n_past after PRE | image | POST */
/* mtmd_get_output_embd: (20, 32) */
static const float parity_embd[640] = {
    -0.632859647f, -0.783194065f, 0.552131414f, 0.105245396f, -0.548413336f, 0.269528836f,
    -0.393302858f, -0.337178499f, -0.300037324f, 0.236730218f, 0.592282355f, -0.255559027f,
    0.513547063f, -0.222991914f, -0.463020056f, 0.325482666f, 0.404283941f, -0.584703505f,
    0.144328654f, -0.774294376f, 1.0755372f, 0.84463042f, -0.0445971265f, -0.737176776f,
    -0.940388799f, -0.642127514f, -0.697259724f, -0.424313486f, 0.252686352f, 0.121474303f,
    -0.0438116118f, 0.345383257f, -0.917663276f, -0.4563784f, 0.375126064f, -0.01215069f,
    -0.195315257f, 0.476542175f, -0.617542684f, -0.32019338f, -0.540618658f, 0.619773805f,
    0.586641848f, -0.222397536f, 0.773798048f, 0.0358562618f, -0.657772779f, 0.843872607f,
    0.424383879f, -0.243588358f, 0.264092296f, -0.747609377f, 1.23288524f, 0.543777466f,
    0.148574293f, -0.565749705f, -0.872960091f, -0.551598608f, -0.587318361f, -0.229436696f,
    -0.115449779f, -0.28289187f, -0.216084212f, 0.269580454f, -0.827827275f, -0.5078547f,
    0.459854394f, -0.010646686f, -0.512648582f, 0.31046775f, -0.497575462f, -0.231393039f,
    -0.277586699f, 0.324385941f, 0.812271297f, -0.193508953f, 0.51612705f, -0.402307361f,
    -0.621830225f, 0.41538462f, 0.359664679f, -0.353689671f, 0.0253128633f, -0.703213632f,
    1.1142019f, 0.890015304f, -0.00755075365f, -0.680067241f, -0.824066818f, -0.594422638f,
    -0.554109573f, -0.246234477f, 0.365665674f, -0.120014608f, 0.157333046f, -0.0265735909f,
    -0.846099854f, -0.568889916f, 0.249045521f, 0.224373862f, -0.513939381f, 0.319778293f,
    -0.437462509f, -0.336334527f, -0.264114976f, 0.370298773f, 0.74367708f, -0.326878101f,
    0.445692599f, -0.138900936f, -0.526793361f, 0.685714126f, 0.437572747f, -0.538560033f,
    0.0608965382f, -0.701524973f, 0.861720026f, 0.563986957f, -0.160050809f, -0.605063796f,
    -0.772134721f, -0.378369927f, -0.536008239f, -0.379062653f, 0.270318061f, -0.175086617f,
    0.109651037f, 0.348115295f, -0.634979248f, -0.579064369f, 0.453546792f, 0.281307101f,
    -0.440991998f, 0.511150599f, -0.594499171f, -0.195923597f, -0.398604214f, 0.122872584f,
    0.684632182f, -0.427355468f, 0.334110916f, 0.13668713f, -0.546605766f, 0.624719799f,
    0.474524438f, -0.347695321f, -0.102087267f, -0.898148596f, 1.49039805f, 0.906881273f,
    -0.146493077f, -0.614552557f, -0.756623924f, -0.854148746f, -0.416550159f, -0.397318333f,
    0.19053328f, -0.201696932f, -0.124807976f, 0.36054343f, -0.731872022f, -0.481467128f,
    0.521987557f, 0.0945982188f, 0.160137266f, 0.418247163f, -0.493691683f, -0.464658469f,
    -0.570845842f, 0.821336329f, 0.641455173f, -0.174953967f, 0.54819113f, 0.0490111485f,
    -0.427469403f, 0.22164771f, 0.787643492f, 0.204571515f, 0.0826922581f, -0.938871205f,
    1.33213115f, 0.871786594f, 0.301332921f, -0.56218344f, -0.760790884f, -0.313664377f,
    -0.581568301f, 0.422739446f, -0.204164863f, -0.149344116f, -0.519008934f, 0.167307645f,
    -0.740842879f, -0.745521188f, 0.898904979f, 0.0175860077f, -0.365630269f, 0.23974058f,
    -0.30871731f, -0.149454117f, -0.284067869f, 0.2811912f, 0.542229235f, -0.310402423f,
    0.39576593f, 0.0181279927f, -0.523661017f, 0.188828155f, 0.1082756f, -0.794075429f,
    0.163756877f, -0.97375077f, 1.46298623f, 1.06561351f, -0.327840716f, -0.966034472f,
    -0.784456074f, -0.883893788f, -0.428307295f, -0.325551599f, 0.328100592f, -0.0860056877f,
    -0.107789688f, 0.299921036f, -0.652484357f, -0.562391937f, 0.732796609f, 0.0929292887f,
    -0.214950219f, 0.15995872f, -0.528155327f, -0.43232587f, -0.47895205f, 0.403972626f,
    0.721793294f, 0.0593766645f, 0.704326093f, -0.308697611f, -0.216239572f, 0.288343132f,
    0.709035099f, -0.184519529f, 0.297966093f, -1.06042635f, 1.18845356f, 1.03870058f,
    0.311596543f, -0.819315851f, -0.578064263f, -0.168087244f, -0.382693529f, 0.117483489f,
    0.0408284143f, 0.0953269675f, -0.346854329f, 0.0826771557f, -0.584920466f, -0.81747508f,
    0.627826452f, 0.236467823f, -0.179355055f, 0.732517183f, -0.480673432f, -0.254445553f,
    -0.168453231f, 0.169264793f, 0.569153488f, -0.0574883893f, 0.984129488f, 0.0126296282f,
    -0.562166452f, 0.338426888f, 0.553539991f, -0.400606781f, 0.309691399f, -0.761702299f,
    1.30991995f, 0.816720188f, 0.143976122f, -0.741469562f, -0.819647491f, -0.79349184f,
    -0.474286735f, -0.479646802f, -0.143667459f, 0.157174736f, -0.329681516f, 0.664358616f,
    -1.17393351f, -0.506086767f, 0.632981479f, 0.110681579f, -0.421414793f, 0.496536374f,
    -0.884269655f, -0.318221718f, -0.388943076f, 0.664849341f, 0.427971989f, 0.0410801247f,
    0.952789843f, 0.048292689f, -0.395564467f, 0.857248008f, 0.397497624f, -0.568685532f,
    0.612968147f, -1.13786459f, 1.38698697f, 0.824527621f, 0.272418231f, -0.280982435f,
    -0.732742965f, -0.519206882f, -0.461048841f, -0.0723665431f, 0.142279804f, -0.0534325689f,
    -0.751376569f, 0.302956551f, -0.762028277f, -0.668327749f, 0.427606851f, 0.275852263f,
    -0.697692633f, 0.39374429f, -0.539632976f, -0.335403055f, -0.446751177f, 0.582184792f,
    0.533304751f, -0.13582027f, 0.313780695f, -0.00485553592f, -0.78104949f, 0.612402558f,
    0.0237511769f, -0.569183707f, 0.534144998f, -1.12335086f, 1.02601969f, 0.488953114f,
    -0.229746819f, -0.265994579f, -0.443857878f, -0.702749193f, -0.500290811f, -0.496672034f,
    0.0238859579f, -0.299807489f, -0.157994747f, 0.727593124f, -0.683560967f, -0.553824544f,
    0.646584392f, 0.57860291f, -0.478235126f, 0.434769392f, -0.475616693f, -0.47862336f,
    -0.5980106f, 0.355899543f, 0.245833576f, -0.226991415f, 0.0541100465f, 0.0248135477f,
    -0.756004333f, 0.55495286f, 0.239299893f, -0.17238754f, 0.153860301f, -1.15130413f,
    1.24721181f, 1.01066446f, -0.225313395f, -0.661426604f, -0.321144819f, -0.503167808f,
    -0.663206697f, -0.191851288f, -0.0326148495f, -0.172548354f, 0.0117454901f, 0.32414946f,
    -0.461917818f, -0.765348673f, 0.483178169f, 0.2482474f, -0.0811117887f, 0.575218618f,
    -0.528047562f, -0.217870951f, -0.654910982f, 0.668753803f, 0.201570541f, 0.104054205f,
    0.738997281f, -0.126036391f, -0.547230244f, 0.535404861f, -0.00680847466f, -0.167632669f,
    0.275982946f, -0.85256511f, 1.02946889f, 0.433648765f, 0.263172716f, -0.714650393f,
    -0.535734832f, -0.253018588f, -0.744594812f, 0.00499919057f, -0.357675076f, 0.0725404248f,
    -0.440596104f, 0.584976256f, -0.838559747f, -0.275339425f, 0.804329872f, 0.366554499f,
    -0.179369584f, 0.487092823f, -0.607891202f, -0.290782958f, -0.683539093f, 0.787743032f,
    0.415272057f, -0.243518919f, 0.595966518f, -0.146572486f, -0.84996748f, 0.406054974f,
    0.29072541f, -0.206101477f, 0.616912901f, -1.06509507f, 1.1650399f, 0.731622875f,
    0.0122046694f, 0.208266646f, -0.648647308f, -0.0233386979f, -0.583747685f, 0.248259753f,
    -0.161298305f, -0.125977904f, -0.491322786f, 0.0830476284f, -0.699699879f, -0.702803135f,
    0.478274494f, 0.594525337f, -0.402635276f, 0.40852946f, -0.360546827f, -0.0815096125f,
    -0.793990314f, 0.596973062f, 0.364163637f, 0.17042011f, 0.260912299f, -0.0425978154f,
    -0.665727139f, 0.310800999f, -0.15106988f, -0.863595724f, 0.262401938f, -1.07756281f,
    1.37641799f, 0.874111176f, -0.120754711f, -0.515851557f, -0.610349119f, -0.88562268f,
    -0.346247554f, -0.00256945193f, 0.245208353f, 0.0844838247f, -0.0813454315f, 0.353007346f,
    -0.295018673f, -0.872232676f, 0.483814746f, 0.323598504f, -0.610179842f, 0.430716157f,
    -0.540110171f, -0.265160054f, -0.57404089f, 0.140682399f, 0.658229828f, -0.188079298f,
    0.245865539f, 0.113162786f, -0.741808295f, 0.438795656f, 0.0833523646f, -0.497902751f,
    0.382540137f, -0.810055375f, 1.29838204f, 0.948636889f, -0.0658083037f, -0.506175995f,
    -0.471357822f, -0.725553334f, -0.479348481f, -0.217176795f, 0.000929914415f, -0.0423349515f,
    -0.00178345293f, 0.353838146f, -0.612318933f, -0.728602409f, 0.517842412f, 0.270846903f,
    -0.527756691f, 0.863557637f, -0.631997824f, -0.487502187f, -0.287102401f, 0.512297571f,
    0.777635813f, -0.187599629f, 0.523850322f, -0.0212061405f, -0.79715836f, 0.526773155f,
    0.596185982f, -0.245216221f, 0.235600382f, -1.08977354f, 0.953403175f, 0.933306277f,
    0.175861984f, -0.152336508f, -0.769494593f, -0.702576816f, -0.171792328f, 0.0378328636f,
    0.0164275542f, -0.173916638f, -0.236646175f, 0.0772688538f, -0.425678432f, -0.616173744f,
    0.597459435f, 0.0999954194f, -0.541328132f, 0.277412027f, -0.734761417f, -0.181350499f,
    -0.627389312f, 0.321899205f, 0.846280515f, -0.454008311f, 0.217235133f, -0.111186743f,
    -0.624648571f, 0.714056671f, 0.258380741f, -0.458248675f, 0.367333204f, -0.526111424f,
    1.05442953f, 1.03375828f, -0.0247779712f, -0.42095831f, -0.657403827f, -0.48379606f,
    -0.564956069f, -0.170062661f, -0.0185931548f, -0.163362801f, 0.0569980219f, 0.112138301f,
    -0.43763119f, -0.616115749f, 0.499313146f, 0.381818831f, -0.493430257f, 0.417203426f,
    -0.822972f, -0.172604769f, -0.580741227f, 0.304276764f, 0.886545956f, -0.478373677f,
    0.194018647f, -0.151410818f, -0.753481388f, 0.60959655f, 0.264536589f, -0.300894141f,
    0.561401129f, -0.772022784f, 0.812507868f, 0.728814721f, -0.0404535308f, -0.37912336f,
    -0.484473884f, -0.466537893f, -0.212271512f, -0.205967158f, -0.0932606086f, -0.345641285f,
    -0.0685612187f, 0.18676798f, -0.686330676f, -0.272928476f, 0.728849947f, 0.290131629f,
    -0.562620044f, 0.34119913f, -0.800270736f, -0.230536491f, -0.560436964f, 0.192086309f,
    1.03730035f, -0.633946598f, 0.0238193758f, 0.0828028023f, -0.83643496f, 0.546973348f,
    0.570551991f, -0.483312041f, 0.029531084f, -0.98518151f, 1.36776519f, 0.997374535f,
    -0.187000453f, -0.328526318f, -0.243559331f, -0.884498417f, -0.244062752f, -0.130354464f,
    0.111078419f, -0.186090171f, -0.166038156f, 0.198370531f,
};
/* llama_get_logits_ith(-1) after PARITY_POST: (48) */
static const float parity_logits[48] = {
    -1.07913649f, 0.26954031f, -0.969174385f, 1.04203606f, -1.8019135f, -0.990337491f,
    0.96846807f, -1.53999615f, -0.849468291f, 0.429626107f, -0.454296649f, -1.08737326f,
    0.0468052402f, 1.22585177f, 1.39273596f, 0.156142727f, 0.127371401f, 1.05389071f,
    -0.776711583f, -0.205803558f, 0.476927102f, -0.635214925f, 1.57046175f, 1.11100817f,
    -0.514199138f, 0.258858114f, 0.278601259f, 0.234364241f, 1.68936872f, -0.791298389f,
    -0.440900117f, -1.64818954f, 0.337489069f, 0.593782544f, -0.372645468f, 0.220371991f,
    0.583325505f, 1.28132486f, 0.771594703f, -0.230988443f, 1.68232048f, 1.23987758f,
    0.577162683f, 0.204375595f, -0.22020112f, 0.732208908f, -0.899625063f, -0.112436399f,
};
/* PARITY-END */

static void parity_image(lp_image *img) {
    lp_error err = {0};
    assert_int_equal(lp_image_alloc(img, PARITY_W, PARITY_H, &err), LOUPE_OK);
    for (int y = 0; y < PARITY_H; y++)
        for (int x = 0; x < PARITY_W; x++)
            for (int c = 0; c < 3; c++) { /* integer-only pattern: the same bytes everywhere */
                uint32_t v = (uint32_t)(x * 37 + y * 91 + c * 53) * 2654435761u;
                img->rgb[((size_t)y * PARITY_W + x) * 3 + c] = (uint8_t)(((x * (c + 2) + y * 3) & 127) + ((v >> 27) & 31));
            }
}

static void test_llamacpp_parity_embedded(void **state) {
    (void)state;
    vspec s = default_vspec();
    s.E = 32;
    s.F = 48;
    s.L = 4;
    s.OUT = LM_E;
    vmodel m;
    vmodel_build(&m, &s, 2024);
    lp_error err = {0};
    vloaded ld;
    vload(&ld, &m, &err);
    if (!ld.v) fail_msg("%s", err.msg);
    lm l;
    lm_open(&l, "qwen2vl", 2025);
    lp_image img;
    parity_image(&img);
    const char *out_dir = getenv("LOUPE_QWEN_PARITY_OUT");
    if (out_dir) {
        char p[512];
        snprintf(p, sizeof p, "%s/mmproj.gguf", out_dir);
        vmodel_write(&m, p);
        snprintf(p, sizeof p, "%s/lm.gguf", out_dir);
        lm_write(p, "qwen2vl", 2025, "array");
        snprintf(p, sizeof p, "%s/image.rgb", out_dir);
        FILE *f = fopen(p, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(img.rgb, 1, (size_t)PARITY_W * PARITY_H * 3, f), (size_t)PARITY_W * PARITY_H * 3);
        fclose(f);
    }
    /* pixels: bit for bit */
    lp_qwen_geom g;
    assert_int_equal(lp_qwen_vit_plan(ld.v, PARITY_W, PARITY_H, LP_QWEN_PREP_LLAMACPP, &g, &err), LOUPE_OK);
    assert_int_equal(g.width, PARITY_IN_W);
    assert_int_equal(g.height, PARITY_IN_H);
    const size_t np = (size_t)3 * g.width * g.height;
    float *px = malloc(np * sizeof(float));
    assert_non_null(px);
    assert_int_equal(lp_qwen_vit_preprocess(ld.v, &img, LP_QWEN_PREP_LLAMACPP, px, &g, &err), LOUPE_OK);
    if (out_dir) printf("pixels fnv1a64 0x%016llxull\n", (unsigned long long)fnv1a64(px, np * sizeof(float)));
    assert_true(fnv1a64(px, np * sizeof(float)) == PARITY_PIXEL_HASH);
    /* image embeddings */
    const int T = g.nx * g.ny;
    assert_int_equal(T, PARITY_TOKENS);
    float *emb = malloc((size_t)T * LM_E * sizeof(float));
    assert_non_null(emb);
    assert_int_equal(lp_qwen_vit_encode(ld.v, px, g.width, g.height, emb, NULL, &err), LOUPE_OK);
    const double de = max_diff(emb, parity_embd, (int64_t)T * LM_E);
    if (out_dir) printf("image embeddings: max abs diff %g\n", de);
    if (!(de <= 1e-3)) fail_msg("image embeddings differ from llama.cpp's by %g", de);
    /* the decoder on PRE | image | POST with mtmd's M-RoPE positions, fed
     * llama.cpp's image embeddings (the decoder alone) and loupe's (end to end) */
    static const int32_t pre[] = PARITY_PRE, post[] = PARITY_POST;
    const int n_pre = (int)(sizeof pre / sizeof pre[0]), n_post = (int)(sizeof post / sizeof post[0]);
    const int n = n_pre + T + n_post;
    float *x = malloc((size_t)n * LM_E * sizeof(float)), *logits = malloc(LM_V * sizeof(float));
    int32_t *pos = malloc((size_t)4 * n * sizeof(int32_t));
    assert_true(x && logits && pos);
    assert_int_equal(lp_mrope_pos_prompt(pos, n_pre, g.nx, g.ny, n_post, 0), PARITY_N_PAST_END);
    assert_int_equal(lp_llama_embed(l.m, pre, n_pre, x, &err), LOUPE_OK);
    assert_int_equal(lp_llama_embed(l.m, post, n_post, x + (int64_t)(n_pre + T) * LM_E, &err), LOUPE_OK);
    for (int pass = 0; pass < 2; pass++) {
        memcpy(x + (int64_t)n_pre * LM_E, pass ? emb : parity_embd, (size_t)T * LM_E * sizeof(float));
        lp_llama_state *st = lp_llama_state_new(l.m, 128, &err);
        assert_non_null(st);
        lp_llama_state_set_exact_matvec(st, true);
        assert_int_equal(lp_llama_forward_pos(l.m, st, x, pos, n, logits, NULL, &err), LOUPE_OK);
        const double dl = max_diff(logits, parity_logits, LM_V);
        if (out_dir) printf("logits (%s image embeddings): max abs diff %g\n", pass ? "loupe's" : "llama.cpp's", dl);
        if (!(dl <= 1e-3)) fail_msg("logits differ from llama.cpp's by %g (pass %d)", dl, pass);
        lp_llama_state_free(st);
    }
    free(x);
    free(logits);
    free(pos);
    free(emb);
    free(px);
    lp_image_free(&img);
    lm_close(&l);
    vunload(&ld);
    vmodel_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smart_resize_llamacpp),
        cmocka_unit_test(test_smart_resize_invariants),
        cmocka_unit_test(test_smart_resize_hf),
        cmocka_unit_test(test_window_partition),
        cmocka_unit_test(test_vision_rope),
        cmocka_unit_test(test_mrope_text_equals_neox),
        cmocka_unit_test(test_mrope_sections),
        cmocka_unit_test(test_mrope_positions),
        cmocka_unit_test(test_qwen2vl_text_equals_qwen2),
        cmocka_unit_test(test_qwen2vl_image_positions),
        cmocka_unit_test(test_forward_pos_plain),
        cmocka_unit_test(test_sections_key),
        cmocka_unit_test(test_vit_reference),
        cmocka_unit_test(test_vit_variants),
        cmocka_unit_test(test_vit_llamacpp_numerics),
        cmocka_unit_test(test_vit_api),
        cmocka_unit_test(test_vit_bad_files),
        cmocka_unit_test(test_preprocess),
        cmocka_unit_test(test_llamacpp_parity_embedded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
