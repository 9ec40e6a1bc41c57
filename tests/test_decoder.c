/* tests/test_decoder.c — the llama/qwen2 decoder against a double-precision
 * reference written here.
 *
 * Each test builds a tiny random model (vocab 64, n_embd 32, 4 heads, 2 KV
 * heads, ffn 64, 2 layers) with lp_gguf_writer, loads it through the resident
 * weight store, and compares logits with ref_forward(): a plain
 * double-precision transcription of the llama.cpp graph that recomputes the
 * whole sequence for every step (no cache). Quantized weights are given to
 * the reference dequantized, so every test measures the decoder's arithmetic,
 * not quantization error.
 *
 * Tolerances: logits are O(1) and every dot product is at most 64 terms, so
 * the f32 decoder is within ~1e-6 of the reference; 1e-4 leaves room for
 * RoPE's float angle recurrence and still catches any wrong pairing, head
 * mapping, mask or position by orders of magnitude. Prefill-vs-decode uses
 * 1e-5 (matrix-matrix vs matrix-vector summation order only). */
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

#include "../language/decoder.h"
#include "../language/weights.h"
#include "gguf.h"
#include "pool.h"
#include "types.h"

#define MAXL 4

// ----------------------------------------------------------------------------
// random numbers


/* These tests compare logits with a double-precision reference at 1e-4, so
 * decode keeps activations in f32 (the default q8_0-activation path is
 * tested in test_kernels against its own error bound). */
static lp_llama_state *exact_state_new_ex(const lp_llama *m, int n_ctx, int n_batch, lp_error *err) {
    lp_llama_state *s = lp_llama_state_new_ex(m, n_ctx, n_batch, err);
    if (s) lp_llama_state_set_exact_matvec(s, true);
    return s;
}
static lp_llama_state *exact_state_new(const lp_llama *m, int n_ctx, lp_error *err) {
    lp_llama_state *s = lp_llama_state_new(m, n_ctx, err);
    if (s) lp_llama_state_set_exact_matvec(s, true);
    return s;
}

static uint64_t rng_state;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_f(float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_u64() >> 40) * 0x1p-24);
}

// ----------------------------------------------------------------------------
// model description and builder

typedef struct spec {
    const char *arch;           // "llama" / "qwen2" / anything (error tests)
    int V, E, H, HKV, F, L;
    float eps, base;
    lp_type wtype;              // matrices
    lp_type etype;              // token_embd
    bool tied;                  // no output.weight
    bool bias;                  // q/k/v biases
    const char *omit_tensor;    // leave this tensor out
    const char *bad_tensor;     // write this tensor with one extra row
    const char *omit_key;       // leave this key out
} spec;

static spec default_spec(void) {
    spec s = {.arch = "llama", .V = 64, .E = 32, .H = 4, .HKV = 2, .F = 64, .L = 2,
              .eps = 1e-5f, .base = 10000.0f, .wtype = LP_TYPE_F32, .etype = LP_TYPE_F32};
    return s;
}

typedef struct ref_layer {
    double *an, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *fn, *wg, *wu, *wd;
} ref_layer;

typedef struct tmodel {
    spec s;
    int hd;
    double *tok;    // (V, E)
    double *out;    // (V, E)  (== tok when tied)
    double *onorm;  // (E)
    ref_layer ly[MAXL];
    void *bufs[256];
    int n_bufs;
    char path[64];
    lp_gguf *g;
    lp_weight_store *ws;
    lp_llama *m;
    lp_error err;
} tmodel;

static void keep(tmodel *t, void *p) {
    assert_true(t->n_bufs < 256);
    t->bufs[t->n_bufs++] = p;
}

/* A (rows, cols) tensor of random values in [-scale, scale) (offset added),
 * stored as type; returns the values the model will see, as doubles. */
static double *add_tensor(tmodel *t, lp_gguf_writer *w, const char *name, lp_type type, int rows, int cols,
                          float offset, float scale) {
    if (t->s.omit_tensor && strcmp(name, t->s.omit_tensor) == 0) return NULL;
    int wrows = rows;
    if (t->s.bad_tensor && strcmp(name, t->s.bad_tensor) == 0) wrows = rows + 1;
    float *f = malloc((size_t)wrows * cols * sizeof(float));
    assert_non_null(f);
    for (int i = 0; i < wrows * cols; i++) f[i] = offset + rng_f(-scale, scale);
    size_t rb = lp_row_size(type, cols);
    assert_true(rb > 0);
    uint8_t *data = malloc(rb * (size_t)wrows);
    assert_non_null(data);
    for (int r = 0; r < wrows; r++) {
        if (type == LP_TYPE_F32) memcpy(data + r * rb, f + (size_t)r * cols, rb);
        else assert_int_equal(lp_quantize_row(type, f + (size_t)r * cols, data + r * rb, cols), rb);
    }
    double *d = malloc((size_t)wrows * cols * sizeof(double));
    assert_non_null(d);
    for (int r = 0; r < wrows; r++) {
        assert_true(lp_dequantize_row(type, data + r * rb, f + (size_t)r * cols, cols));
    }
    for (int i = 0; i < wrows * cols; i++) d[i] = f[i];
    free(f);
    keep(t, data);
    keep(t, d);
    int64_t ne[2] = {cols, wrows};
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, type, wrows == 1 ? 1 : 2, ne, data), LOUPE_OK);
    return d;
}

static void set_u32(tmodel *t, lp_gguf_writer *w, const char *suffix, uint32_t v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", t->s.arch, suffix);
    if (t->s.omit_key && strcmp(key, t->s.omit_key) == 0) return;
    assert_int_equal(lp_gguf_writer_set_u32(w, key, v), LOUPE_OK);
}

static void set_f32(tmodel *t, lp_gguf_writer *w, const char *suffix, float v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", t->s.arch, suffix);
    if (t->s.omit_key && strcmp(key, t->s.omit_key) == 0) return;
    assert_int_equal(lp_gguf_writer_set_f32(w, key, v), LOUPE_OK);
}

/* Write the file and open it; t->m is NULL (and t->err set) if loading fails. */
static tmodel *build(const spec *s, uint64_t seed) {
    rng_state = seed;
    tmodel *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->s = *s;
    t->hd = s->E / s->H;
    const int E = s->E, F = s->F, V = s->V, Dq = s->H * t->hd, Dkv = s->HKV * t->hd;
    const float ws_e = 1.0f / sqrtf((float)E), ws_q = 1.0f / sqrtf((float)Dq), ws_f = 1.0f / sqrtf((float)F);

    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", s->arch), LOUPE_OK);
    set_u32(t, w, "context_length", 256);
    set_u32(t, w, "embedding_length", (uint32_t)E);
    set_u32(t, w, "block_count", (uint32_t)s->L);
    set_u32(t, w, "feed_forward_length", (uint32_t)F);
    set_u32(t, w, "attention.head_count", (uint32_t)s->H);
    set_u32(t, w, "attention.head_count_kv", (uint32_t)s->HKV);
    set_f32(t, w, "attention.layer_norm_rms_epsilon", s->eps);
    set_f32(t, w, "rope.freq_base", s->base);

    t->tok = add_tensor(t, w, "token_embd.weight", s->etype, V, E, 0.0f, 1.0f);
    t->onorm = add_tensor(t, w, "output_norm.weight", LP_TYPE_F32, 1, E, 1.0f, 0.2f);
    t->out = s->tied ? t->tok : add_tensor(t, w, "output.weight", s->wtype, V, E, 0.0f, 2.0f * ws_e);
    char name[64];
    for (int l = 0; l < s->L; l++) {
        ref_layer *R = &t->ly[l];
#define NM(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, l), name)
        R->an = add_tensor(t, w, NM("attn_norm.weight"), LP_TYPE_F32, 1, E, 1.0f, 0.2f);
        R->wq = add_tensor(t, w, NM("attn_q.weight"), s->wtype, Dq, E, 0.0f, 2.0f * ws_e);
        R->wk = add_tensor(t, w, NM("attn_k.weight"), s->wtype, Dkv, E, 0.0f, 2.0f * ws_e);
        R->wv = add_tensor(t, w, NM("attn_v.weight"), s->wtype, Dkv, E, 0.0f, 2.0f * ws_e);
        if (s->bias) {
            R->bq = add_tensor(t, w, NM("attn_q.bias"), LP_TYPE_F32, 1, Dq, 0.0f, 0.5f);
            R->bk = add_tensor(t, w, NM("attn_k.bias"), LP_TYPE_F32, 1, Dkv, 0.0f, 0.5f);
            R->bv = add_tensor(t, w, NM("attn_v.bias"), LP_TYPE_F32, 1, Dkv, 0.0f, 0.5f);
        }
        R->wo = add_tensor(t, w, NM("attn_output.weight"), s->wtype, E, Dq, 0.0f, ws_q);
        R->fn = add_tensor(t, w, NM("ffn_norm.weight"), LP_TYPE_F32, 1, E, 1.0f, 0.2f);
        R->wg = add_tensor(t, w, NM("ffn_gate.weight"), s->wtype, F, E, 0.0f, 2.0f * ws_e);
        R->wu = add_tensor(t, w, NM("ffn_up.weight"), s->wtype, F, E, 0.0f, 2.0f * ws_e);
        R->wd = add_tensor(t, w, NM("ffn_down.weight"), s->wtype, E, F, 0.0f, ws_f);
#undef NM
    }
    snprintf(t->path, sizeof t->path, "/tmp/loupe_test_decoder_XXXXXX");
    int fd = mkstemp(t->path);
    assert_true(fd >= 0);
    close(fd);
    lp_error err = {0};
    assert_int_equal(lp_gguf_writer_write(w, t->path, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    t->g = lp_gguf_open(t->path, &err);
    if (!t->g) fail_msg("gguf open: %s", err.msg);
    unlink(t->path); // the mapping keeps the data
    t->ws = lp_weights_resident(t->g, &err);
    assert_non_null(t->ws);
    t->m = lp_llama_load(t->ws, &t->err);
    return t;
}

static tmodel *build_ok(const spec *s, uint64_t seed) {
    tmodel *t = build(s, seed);
    if (!t->m) fail_msg("load: %s", t->err.msg);
    return t;
}

static void destroy(tmodel *t) {
    lp_llama_free(t->m);
    lp_ws_free(t->ws);
    lp_gguf_close(t->g);
    for (int i = 0; i < t->n_bufs; i++) free(t->bufs[i]);
    free(t);
}

// ----------------------------------------------------------------------------
// the reference: whole sequence, double precision, no cache

static void ref_rmsnorm(double *out, const double *x, const double *w, int n, double eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double sc = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * sc * w[i];
}

/* y (rows) = W (rows, cols) x (+ b) */
static void ref_linear(double *y, const double *W, const double *b, const double *x, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        double s = b ? b[r] : 0.0;
        for (int c = 0; c < cols; c++) s += W[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

/* llama: pairs (2i, 2i+1); qwen2 (neox): pairs (i, i + hd/2); theta_i = pos base^(-2i/hd) */
static void ref_rope(double *v, int n_head, int hd, int pos, double base, bool neox) {
    for (int h = 0; h < n_head; h++) {
        double *x = v + h * hd;
        for (int i = 0; i < hd / 2; i++) {
            double th = pos * pow(base, -2.0 * i / hd);
            int a = neox ? i : 2 * i, b = neox ? i + hd / 2 : 2 * i + 1;
            double x0 = x[a], x1 = x[b];
            x[a] = x0 * cos(th) - x1 * sin(th);
            x[b] = x0 * sin(th) + x1 * cos(th);
        }
    }
}

/* logits (T, V) for tokens[0..T) */
static void ref_forward(const tmodel *t, const int32_t *tokens, int T, double *logits) {
    const spec *s = &t->s;
    const int E = s->E, F = s->F, V = s->V, H = s->H, HKV = s->HKV, hd = t->hd;
    const int Dq = H * hd, Dkv = HKV * hd;
    const bool neox = strcmp(s->arch, "qwen2") == 0;
    double *x = calloc((size_t)T * E, sizeof(double));
    double *h = calloc((size_t)E > (size_t)F ? E : F, sizeof(double));
    double *Q = calloc((size_t)T * Dq, sizeof(double));
    double *K = calloc((size_t)T * Dkv, sizeof(double));
    double *Vv = calloc((size_t)T * Dkv, sizeof(double));
    double *att = calloc((size_t)Dq, sizeof(double));
    double *o = calloc((size_t)E, sizeof(double));
    double *g = calloc((size_t)F, sizeof(double));
    double *u = calloc((size_t)F, sizeof(double));
    double *sc = calloc((size_t)T, sizeof(double));
    for (int i = 0; i < T; i++) memcpy(x + (size_t)i * E, t->tok + (size_t)tokens[i] * E, E * sizeof(double));
    for (int l = 0; l < s->L; l++) {
        const ref_layer *R = &t->ly[l];
        for (int i = 0; i < T; i++) {
            ref_rmsnorm(h, x + (size_t)i * E, R->an, E, s->eps);
            ref_linear(Q + (size_t)i * Dq, R->wq, R->bq, h, Dq, E);
            ref_linear(K + (size_t)i * Dkv, R->wk, R->bk, h, Dkv, E);
            ref_linear(Vv + (size_t)i * Dkv, R->wv, R->bv, h, Dkv, E);
            ref_rope(Q + (size_t)i * Dq, H, hd, i, s->base, neox);
            ref_rope(K + (size_t)i * Dkv, HKV, hd, i, s->base, neox);
        }
        for (int i = 0; i < T; i++) {
            for (int hh = 0; hh < H; hh++) {
                int kh = hh / (H / HKV); // consecutive query heads share a kv head
                const double *q = Q + (size_t)i * Dq + hh * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    double d = 0;
                    for (int c = 0; c < hd; c++) d += q[c] * K[(size_t)j * Dkv + kh * hd + c];
                    sc[j] = d / sqrt((double)hd);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= i; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int c = 0; c < hd; c++) {
                    double a = 0;
                    for (int j = 0; j <= i; j++) a += sc[j] / sum * Vv[(size_t)j * Dkv + kh * hd + c];
                    att[hh * hd + c] = a;
                }
            }
            ref_linear(o, R->wo, NULL, att, E, Dq);
            for (int c = 0; c < E; c++) x[(size_t)i * E + c] += o[c];
        }
        for (int i = 0; i < T; i++) {
            double *xi = x + (size_t)i * E;
            ref_rmsnorm(h, xi, R->fn, E, s->eps);
            ref_linear(g, R->wg, NULL, h, F, E);
            ref_linear(u, R->wu, NULL, h, F, E);
            for (int c = 0; c < F; c++) g[c] = g[c] / (1.0 + exp(-g[c])) * u[c];
            ref_linear(o, R->wd, NULL, g, E, F);
            for (int c = 0; c < E; c++) xi[c] += o[c];
        }
    }
    for (int i = 0; i < T; i++) {
        ref_rmsnorm(h, x + (size_t)i * E, t->onorm, E, s->eps);
        ref_linear(logits + (size_t)i * V, t->out, NULL, h, V, E);
    }
    free(x); free(h); free(Q); free(K); free(Vv); free(att); free(o); free(g); free(u); free(sc);
}

// ----------------------------------------------------------------------------
// helpers

static void assert_close_vec(const float *got, const double *want, int n, double tol, const char *what) {
    double worst = 0;
    int wi = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]);
        if (!(e <= worst)) { worst = e; wi = i; }
    }
    if (!(worst <= tol)) fail_msg("%s: |%g - %g| = %g > %g at %d", what, (double)got[wi], want[wi], worst, tol, wi);
}

static void assert_close_f(const float *got, const float *want, int n, double tol, const char *what) {
    for (int i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= tol)) fail_msg("%s: |%g - %g| = %g > %g at %d", what, (double)got[i], (double)want[i], e, tol, i);
    }
}

static const int32_t SEQ[] = {3, 17, 42, 0, 63, 8, 25, 25, 1, 50, 33, 12, 7, 60, 2, 19};
#define SEQ_N ((int)(sizeof SEQ / sizeof SEQ[0]))

/* Prefill n_prompt tokens, then decode the rest of SEQ[0..T) one by one;
 * every step's logits against the reference. */
static void check_against_ref(const spec *s, uint64_t seed, int n_prompt, int T, double tol) {
    tmodel *t = build_ok(s, seed);
    const int V = s->V;
    double *ref = malloc((size_t)T * V * sizeof(double));
    ref_forward(t, SEQ, T, ref);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 32, &err);
    assert_non_null(st);
    float *logits = malloc((size_t)V * sizeof(float));
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, n_prompt, logits, NULL, &err), LOUPE_OK);
    assert_close_vec(logits, ref + (size_t)(n_prompt - 1) * V, V, tol, "prefill logits");
    for (int i = n_prompt; i < T; i++) {
        assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ + i, 1, logits, NULL, &err), LOUPE_OK);
        char what[64];
        snprintf(what, sizeof what, "decode logits at %d", i);
        assert_close_vec(logits, ref + (size_t)i * V, V, tol, what);
    }
    assert_int_equal(st->n_past, T);
    free(logits);
    free(ref);
    lp_llama_state_free(st);
    destroy(t);
}

// ----------------------------------------------------------------------------
// parity with the reference

static void test_llama_f32(void **state) {
    (void)state;
    spec s = default_spec();
    check_against_ref(&s, 1, 6, 12, 1e-4);
}

static void test_llama_q8_0(void **state) {
    (void)state;
    spec s = default_spec();
    s.wtype = LP_TYPE_Q8_0;
    s.etype = LP_TYPE_Q8_0;
    check_against_ref(&s, 2, 5, 10, 1e-4);
}

static void test_llama_q4_0(void **state) {
    (void)state;
    spec s = default_spec();
    s.wtype = LP_TYPE_Q4_0;
    s.etype = LP_TYPE_Q4_0;
    check_against_ref(&s, 3, 5, 10, 1e-4);
}

static void test_llama_f16(void **state) {
    (void)state;
    spec s = default_spec();
    s.wtype = LP_TYPE_F16;
    s.etype = LP_TYPE_F16;
    check_against_ref(&s, 4, 4, 8, 1e-4);
}

static void test_qwen2_bias_neox(void **state) {
    (void)state;
    spec s = default_spec();
    s.arch = "qwen2";
    s.bias = true;
    s.base = 1000000.0f;
    s.eps = 1e-6f;
    check_against_ref(&s, 5, 6, 12, 1e-4);
}

static void test_tied_output(void **state) {
    (void)state;
    spec s = default_spec();
    s.tied = true;
    s.etype = LP_TYPE_Q8_0;
    tmodel *t = build_ok(&s, 6);
    assert_true(lp_llama_get_config(t->m)->tied_output);
    destroy(t);
    check_against_ref(&s, 6, 3, 9, 1e-4);
}

static void test_mha_one_layer(void **state) { // n_head_kv == n_head, other sizes
    (void)state;
    spec s = default_spec();
    s.HKV = 4;
    s.L = 1;
    s.E = 64;
    s.F = 96;
    s.V = 72;
    check_against_ref(&s, 7, 1, 8, 1e-4);
}

static void test_config(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 8);
    const lp_llama_config *c = lp_llama_get_config(t->m);
    assert_int_equal(c->arch, LP_ARCH_LLAMA);
    assert_int_equal(lp_llama_n_vocab(t->m), 64);
    assert_int_equal(lp_llama_n_embd(t->m), 32);
    assert_int_equal(lp_llama_n_layer(t->m), 2);
    assert_int_equal(lp_llama_n_ctx_train(t->m), 256);
    assert_int_equal(c->n_head, 4);
    assert_int_equal(c->n_head_kv, 2);
    assert_int_equal(c->head_dim, 8);
    assert_int_equal(c->n_rot, 8);
    assert_int_equal(c->rope_mode, LP_ROPE_NORMAL);
    assert_false(c->tied_output);
    destroy(t);
    s.arch = "qwen2";
    t = build_ok(&s, 8);
    assert_int_equal(lp_llama_get_config(t->m)->rope_mode, LP_ROPE_NEOX);
    destroy(t);
}

// ----------------------------------------------------------------------------
// cache behaviour

/* prefill of N then decode == token-by-token from scratch */
static void test_prefill_equals_decode(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 11);
    const int V = s.V, N = 9, T = 13;
    lp_error err = {0};
    lp_llama_state *a = exact_state_new(t->m, 16, &err);
    lp_llama_state *b = exact_state_new(t->m, 16, &err);
    assert_non_null(a);
    assert_non_null(b);
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < N; i++) assert_int_equal(lp_llama_forward_tokens(t->m, b, SEQ + i, 1, lb, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(t->m, a, SEQ, N, la, NULL, &err), LOUPE_OK);
    assert_close_f(la, lb, V, 1e-5, "after prefill");
    for (int i = N; i < T; i++) {
        assert_int_equal(lp_llama_forward_tokens(t->m, a, SEQ + i, 1, la, NULL, &err), LOUPE_OK);
        assert_int_equal(lp_llama_forward_tokens(t->m, b, SEQ + i, 1, lb, NULL, &err), LOUPE_OK);
        assert_close_f(la, lb, V, 1e-5, "decode after prefill");
    }
    free(la);
    free(lb);
    lp_llama_state_free(a);
    lp_llama_state_free(b);
    destroy(t);
}

/* logits_all gives every position's logits; chunked prefill (n_batch 4) and
 * embeddings passed to lp_llama_forward agree with the reference */
static void test_logits_all_and_chunks(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 12);
    const int V = s.V, E = s.E, T = 11;
    double *ref = malloc((size_t)T * V * sizeof(double));
    ref_forward(t, SEQ, T, ref);
    lp_error err = {0};
    float *lg = malloc((size_t)T * V * sizeof(float));
    float *embd = malloc((size_t)T * E * sizeof(float));
    assert_int_equal(lp_llama_embed(t->m, SEQ, T, embd, &err), LOUPE_OK);
    for (int i = 0; i < T * E; i++) assert_true(fabs(embd[i] - t->tok[(size_t)SEQ[i / E] * E + i % E]) == 0.0);
    const int batches[] = {0, 4, 1};
    for (int bi = 0; bi < 3; bi++) {
        lp_llama_state *st = exact_state_new_ex(t->m, 16, batches[bi], &err);
        assert_non_null(st);
        lp_llama_state_set_logits_all(st, true);
        memset(lg, 0, (size_t)T * V * sizeof(float));
        assert_int_equal(lp_llama_forward(t->m, st, embd, T, lg, NULL, &err), LOUPE_OK);
        for (int i = 0; i < T; i++) assert_close_vec(lg + (size_t)i * V, ref + (size_t)i * V, V, 1e-4, "logits_all");
        // last-only mode writes just the last row
        lp_llama_state_reset(st);
        lp_llama_state_set_logits_all(st, false);
        assert_int_equal(lp_llama_forward(t->m, st, embd, T, lg, NULL, &err), LOUPE_OK);
        assert_close_vec(lg, ref + (size_t)(T - 1) * V, V, 1e-4, "chunked last");
        // NULL logits: cache only, then decode continues correctly
        lp_llama_state_reset(st);
        assert_int_equal(lp_llama_forward(t->m, st, embd, T - 1, NULL, NULL, &err), LOUPE_OK);
        assert_int_equal(lp_llama_forward(t->m, st, embd + (size_t)(T - 1) * E, 1, lg, NULL, &err), LOUPE_OK);
        assert_close_vec(lg, ref + (size_t)(T - 1) * V, V, 1e-4, "after NULL-logits prefill");
        lp_llama_state_free(st);
    }
    free(lg);
    free(embd);
    free(ref);
    destroy(t);
}

static void test_truncate_reset(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 13);
    const int V = s.V;
    double *ref = malloc((size_t)8 * V * sizeof(double));
    ref_forward(t, SEQ, 8, ref);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 16, &err);
    float *lg = malloc((size_t)V * sizeof(float));
    // a different continuation first, then truncate back to 5 and take SEQ's
    const int32_t other[3] = {9, 9, 9};
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 5, lg, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(t->m, st, other, 3, lg, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_state_truncate(st, 5, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ + 5, 3, lg, NULL, &err), LOUPE_OK);
    assert_close_vec(lg, ref + (size_t)7 * V, V, 1e-4, "after truncate");
    assert_int_equal(lp_llama_state_truncate(st, 9, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_llama_state_truncate(st, -1, &err), LOUPE_ERR_INVALID_ARG);
    lp_llama_state_reset(st);
    assert_int_equal(st->n_past, 0);
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 3, lg, NULL, &err), LOUPE_OK);
    assert_close_vec(lg, ref + (size_t)2 * V, V, 1e-4, "after reset");
    free(lg);
    free(ref);
    lp_llama_state_free(st);
    destroy(t);
}

static void test_context_overflow(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 14);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 8, &err);
    float *lg = malloc((size_t)s.V * sizeof(float));
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 6, lg, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 3, lg, NULL, &err), LOUPE_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "n_ctx = 8"));
    assert_int_equal(st->n_past, 6);
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 2, lg, NULL, &err), LOUPE_OK);
    assert_int_equal(st->n_past, 8);
    lp_error e2 = {0};
    float embd[32] = {0};
    assert_int_equal(lp_llama_forward(t->m, st, embd, 1, lg, NULL, &e2), LOUPE_ERR_LIMIT);
    assert_int_equal(e2.status, LOUPE_ERR_LIMIT);
    assert_int_equal(st->n_past, 8);
    free(lg);
    lp_llama_state_free(st);
    destroy(t);
}

static void test_bad_token(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 15);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 8, &err);
    float lg[64];
    const int32_t toks[3] = {1, 64, 2};
    assert_int_equal(lp_llama_forward_tokens(t->m, st, toks, 3, lg, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "64"));
    assert_int_equal(st->n_past, 0);
    const int32_t neg = -1;
    float e[32];
    assert_int_equal(lp_llama_embed(t->m, &neg, 1, e, &err), LOUPE_ERR_INVALID_ARG);
    lp_llama_state_free(st);
    destroy(t);
}

static void test_state_mismatch(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *a = build_ok(&s, 30), *b = build_ok(&s, 31);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(a->m, 8, &err);
    float lg[64];
    assert_int_equal(lp_llama_forward_tokens(b->m, st, SEQ, 2, lg, NULL, &err), LOUPE_ERR_MISMATCH);
    assert_null(exact_state_new(a->m, 0, &err));
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
    lp_llama_state_free(st);
    destroy(a);
    destroy(b);
}

// ----------------------------------------------------------------------------
// dump hook, threads, f16 cache

typedef struct dump_log {
    int n;
    char names[64][32];
    float logits[64];
    int64_t logits_n;
} dump_log;

static void on_dump(void *user, const char *name, const float *data, int64_t n) {
    dump_log *d = user;
    if (d->n < 64) snprintf(d->names[d->n], sizeof d->names[0], "%s", name);
    d->n++;
    if (strcmp(name, "logits") == 0 && n <= 64) {
        memcpy(d->logits, data, (size_t)n * sizeof(float));
        d->logits_n = n;
    }
}

static void test_dump_hook(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 16);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 8, &err);
    dump_log d = {0};
    lp_llama_state_set_dump(st, on_dump, &d);
    float lg[64];
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 3, lg, NULL, &err), LOUPE_OK);
    const char *want[] = {"embd_in", "blk.0.attn_out", "blk.0.ffn_inp", "blk.0.ffn_out", "blk.0",
                          "blk.1.attn_out", "blk.1.ffn_inp", "blk.1.ffn_out", "blk.1", "output_norm", "logits"};
    assert_int_equal(d.n, 11);
    for (int i = 0; i < 11; i++) assert_string_equal(d.names[i], want[i]);
    assert_int_equal(d.logits_n, 64);
    assert_memory_equal(d.logits, lg, sizeof lg);
    lp_llama_state_free(st);
    destroy(t);
}

static void test_threads(void **state) {
    (void)state;
    spec s = default_spec();
    s.wtype = LP_TYPE_Q8_0;
    tmodel *t = build_ok(&s, 17);
    lp_error err = {0};
    lp_pool *pool = lp_pool_new(2);
    assert_non_null(pool);
    lp_llama_state *a = exact_state_new(t->m, 16, &err), *b = exact_state_new(t->m, 16, &err);
    float la[64], lb[64];
    assert_int_equal(lp_llama_forward_tokens(t->m, a, SEQ, 7, la, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_llama_forward_tokens(t->m, b, SEQ, 7, lb, pool, &err), LOUPE_OK);
    assert_close_f(la, lb, 64, 1e-6, "pool prefill");
    for (int i = 7; i < 10; i++) {
        assert_int_equal(lp_llama_forward_tokens(t->m, a, SEQ + i, 1, la, NULL, &err), LOUPE_OK);
        assert_int_equal(lp_llama_forward_tokens(t->m, b, SEQ + i, 1, lb, pool, &err), LOUPE_OK);
        assert_close_f(la, lb, 64, 1e-6, "pool decode");
    }
    lp_llama_state_free(a);
    lp_llama_state_free(b);
    lp_pool_free(pool);
    destroy(t);
}

static void test_kv_f16(void **state) {
    (void)state;
    spec s = default_spec();
    tmodel *t = build_ok(&s, 18);
    double ref[6 * 64];
    ref_forward(t, SEQ, 6, ref);
    lp_error err = {0};
    lp_llama_state *st = exact_state_new(t->m, 8, &err);
    lp_llama_state_set_kv_f16(st, true);
    float lg[64];
    assert_int_equal(lp_llama_forward_tokens(t->m, st, SEQ, 6, lg, NULL, &err), LOUPE_OK);
    assert_close_vec(lg, ref + 5 * 64, 64, 1e-2, "f16 cache"); // f16 has 11 bits: ~1e-3 relative
    // the cached values really are f16-representable
    for (int i = 0; i < 6 * 16; i++) {
        float k = st->k_cache[i];
        assert_true(lp_f16_to_f32(lp_f32_to_f16(k)) == k);
    }
    lp_llama_state_free(st);
    destroy(t);
}

// ----------------------------------------------------------------------------
// load errors

static void expect_load_error(const spec *s, loupe_status want, const char *needle) {
    tmodel *t = build(s, 20);
    if (t->m) fail_msg("load succeeded, expected an error mentioning %s", needle);
    assert_int_equal(t->err.status, want);
    if (!strstr(t->err.msg, needle)) fail_msg("error \"%s\" does not mention %s", t->err.msg, needle);
    if (!strstr(t->err.msg, "/tmp/loupe_test_decoder_")) fail_msg("error \"%s\" does not name the file", t->err.msg);
    destroy(t);
}

static void test_missing_tensor(void **state) {
    (void)state;
    spec s = default_spec();
    s.omit_tensor = "blk.1.ffn_up.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "blk.1.ffn_up.weight");
    s.omit_tensor = "output_norm.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "output_norm.weight");
    s.omit_tensor = "token_embd.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "token_embd.weight");
}

static void test_wrong_shape(void **state) {
    (void)state;
    spec s = default_spec();
    s.bad_tensor = "blk.0.attn_k.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "blk.0.attn_k.weight");
    s.bad_tensor = "output.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "output.weight");
    s.bad_tensor = "blk.1.ffn_down.weight";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "blk.1.ffn_down.weight");
    s.bad_tensor = NULL;
    s.bias = true;
    s.bad_tensor = "blk.0.attn_v.bias";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "blk.0.attn_v.bias");
}

static void test_bad_config(void **state) {
    (void)state;
    spec s = default_spec();
    s.omit_key = "llama.block_count";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "llama.block_count");
    s.omit_key = "llama.attention.layer_norm_rms_epsilon";
    expect_load_error(&s, LOUPE_ERR_FORMAT, "llama.attention.layer_norm_rms_epsilon");
    s.omit_key = NULL;
    s.HKV = 3; // does not divide 4
    s.omit_tensor = NULL;
    tmodel *t = build(&s, 21);
    assert_null(t->m);
    assert_non_null(strstr(t->err.msg, "head_count_kv"));
    destroy(t);
    s = default_spec();
    s.arch = "gpt2";
    expect_load_error(&s, LOUPE_ERR_UNSUPPORTED, "gpt2");
}

static void test_resident_store(void **state) {
    (void)state;
    spec s = default_spec();
    s.etype = LP_TYPE_Q8_0;
    tmodel *t = build_ok(&s, 22);
    lp_error err = {0};
    lp_tensor te;
    assert_int_equal(lp_ws_lookup(t->ws, "nope.weight", &te, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "nope.weight"));
    assert_int_equal(lp_ws_lookup(t->ws, "token_embd.weight", &te, &err), LOUPE_OK);
    assert_int_equal(te.type, LP_TYPE_Q8_0);
    assert_int_equal(te.n_rows, 64);
    assert_int_equal(te.row_bytes, lp_row_size(LP_TYPE_Q8_0, 32));
    const void *all = NULL;
    assert_int_equal(lp_ws_get(t->ws, &te, &all, &err), LOUPE_OK);
    uint8_t rows[2 * 34];
    const int64_t ids[2] = {63, 5};
    assert_int_equal(lp_ws_get_rows(t->ws, &te, ids, 2, rows, &err), LOUPE_OK);
    assert_memory_equal(rows, (const uint8_t *)all + 63 * te.row_bytes, te.row_bytes);
    assert_memory_equal(rows + te.row_bytes, (const uint8_t *)all + 5 * te.row_bytes, te.row_bytes);
    lp_ws_release(t->ws, &te);
    const int64_t bad[2] = {1, 64};
    assert_int_equal(lp_ws_get_rows(t->ws, &te, bad, 2, rows, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "token_embd.weight"));
    lp_tensor forged = te;
    forged.id = 100000;
    assert_int_equal(lp_ws_get(t->ws, &forged, &all, &err), LOUPE_ERR_INVALID_ARG);
    destroy(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_f32),
        cmocka_unit_test(test_llama_q8_0),
        cmocka_unit_test(test_llama_q4_0),
        cmocka_unit_test(test_llama_f16),
        cmocka_unit_test(test_qwen2_bias_neox),
        cmocka_unit_test(test_tied_output),
        cmocka_unit_test(test_mha_one_layer),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_prefill_equals_decode),
        cmocka_unit_test(test_logits_all_and_chunks),
        cmocka_unit_test(test_truncate_reset),
        cmocka_unit_test(test_context_overflow),
        cmocka_unit_test(test_bad_token),
        cmocka_unit_test(test_state_mismatch),
        cmocka_unit_test(test_dump_hook),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_kv_f16),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_resident_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
