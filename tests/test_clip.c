/* tests/test_clip.c — the CLIP ViT + LLaVA projector on tiny random mmproj
 * files built here with lp_gguf_writer, against a scalar double-precision
 * reference written independently in this file.
 *
 * Tolerance: max |got − ref| ≤ tol · max |ref| per output tensor. Exact f32
 * arithmetic (quirks that only change structure) must agree to 1e-4; the
 * ggml f16 emulations (activation tables, f16 matmul inputs) round to 11
 * significant bits at data-dependent points, where f32 and double can land on
 * different sides of a rounding boundary, so they get 5e-3. */
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
#include "../language/weights.h"
#include "../vision/clip.h"
#include "../vision/preprocess.h"
#include "gguf.h"
#include "pool.h"
#include "types.h"

#define MAXL 4

/* ------------------------------------------------------------------------ */
/* random numbers                                                            */

static uint64_t rng_state;

static uint64_t rng_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_f(float lo, float hi) { return lo + (hi - lo) * (float)((rng_u64() >> 40) * 0x1p-24); }

/* ------------------------------------------------------------------------ */
/* the tiny model                                                            */

typedef struct spec {
    int S, P, E, H, F, L, hid, out;
    bool cls, pre_ln, post_ln, patch_bias, legacy_ffn_names, use_gelu;
    lp_type wtype;         /* type of matrices, patch and position embeddings */
    const char *proj_type; /* "mlp" or "linear"                               */
    int fl[4], n_fl;       /* clip.vision.feature_layer                       */
    int ff_key;            /* feed_forward_length written, 0: F               */
    /* mutations for the error tests */
    const char *omit_tensor;
    const char *omit_key;
    bool bad_mm2_shape;
    bool extra_mm2;        /* write mm.2 even for "linear"                    */
    bool pinpoints;        /* write clip.vision.image_grid_pinpoints          */
} spec;

typedef struct layer_w {
    float *q, *k, *v, *o;       /* (E, E)            */
    float *qb, *kb, *vb, *ob;   /* (E)               */
    float *up, *upb;            /* (F, E), (F)       */
    float *down, *downb;        /* (E, F), (E)       */
    float *l1w, *l1b, *l2w, *l2b;
} layer_w;

typedef struct model {
    spec s;
    int N, n_pos, K, D;      /* patches, tokens, 3·P·P, feature dim */
    float *patch_w, *patch_b; /* (E, K), (E)     */
    float *cls;               /* (E)            */
    float *pos;               /* (n_pos, E)     */
    float *pre_w, *pre_b, *post_w, *post_b;
    layer_w l[MAXL];
    float *mm0, *mm0b;        /* (hid, D), (hid) */
    float *mm2, *mm2b;        /* (out, hid), (out) */
    float mean[3], std[3];
    void *allocs[256];
    int n_allocs;
} model;

static void *track(model *m, void *p) {
    assert_non_null(p);
    assert_true(m->n_allocs < 256);
    m->allocs[m->n_allocs++] = p;
    return p;
}

static float *rnd(model *m, int64_t n, float lo, float hi, bool f16_round) {
    float *v = track(m, malloc((size_t)n * sizeof(float)));
    for (int64_t i = 0; i < n; i++) {
        v[i] = rng_f(lo, hi);
        if (f16_round) v[i] = lp_f16_to_f32(lp_f32_to_f16(v[i]));
    }
    return v;
}

static float *mat(model *m, int out, int in) {
    float a = 1.5f / sqrtf((float)in);
    return rnd(m, (int64_t)out * in, -a, a, m->s.wtype == LP_TYPE_F16);
}

static void model_build(model *m, const spec *s, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->s = *s;
    rng_state = seed;
    const int E = s->E, F = s->F;
    const int ns = s->S / s->P;
    m->N = ns * ns;
    m->n_pos = m->N + (s->cls ? 1 : 0);
    m->K = 3 * s->P * s->P;
    m->D = E * (s->n_fl > 1 ? s->n_fl : 1);
    const bool h = s->wtype == LP_TYPE_F16;
    m->patch_w = mat(m, E, m->K);
    if (s->patch_bias) m->patch_b = rnd(m, E, -0.1f, 0.1f, false);
    if (s->cls) m->cls = rnd(m, E, -0.5f, 0.5f, false);
    m->pos = rnd(m, (int64_t)m->n_pos * E, -0.5f, 0.5f, h);
    if (s->pre_ln) {
        m->pre_w = rnd(m, E, 0.8f, 1.2f, false);
        m->pre_b = rnd(m, E, -0.1f, 0.1f, false);
    }
    if (s->post_ln) {
        m->post_w = rnd(m, E, 0.8f, 1.2f, false);
        m->post_b = rnd(m, E, -0.1f, 0.1f, false);
    }
    for (int il = 0; il < s->L; il++) {
        layer_w *L = &m->l[il];
        L->q = mat(m, E, E);
        L->k = mat(m, E, E);
        L->v = mat(m, E, E);
        L->o = mat(m, E, E);
        L->qb = rnd(m, E, -0.1f, 0.1f, false);
        L->kb = rnd(m, E, -0.1f, 0.1f, false);
        L->vb = rnd(m, E, -0.1f, 0.1f, false);
        L->ob = rnd(m, E, -0.1f, 0.1f, false);
        L->up = mat(m, F, E);
        L->upb = rnd(m, F, -0.1f, 0.1f, false);
        L->down = mat(m, E, F);
        L->downb = rnd(m, E, -0.1f, 0.1f, false);
        L->l1w = rnd(m, E, 0.8f, 1.2f, false);
        L->l1b = rnd(m, E, -0.1f, 0.1f, false);
        L->l2w = rnd(m, E, 0.8f, 1.2f, false);
        L->l2b = rnd(m, E, -0.1f, 0.1f, false);
    }
    m->mm0 = mat(m, s->hid, m->D);
    m->mm0b = rnd(m, s->hid, -0.1f, 0.1f, false);
    if (strcmp(s->proj_type, "mlp") == 0 || s->extra_mm2) {
        m->mm2 = mat(m, s->out, s->hid);
        m->mm2b = rnd(m, s->out, -0.1f, 0.1f, false);
    }
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memcpy(m->mean, mean, sizeof mean);
    memcpy(m->std, std, sizeof std);
}

static void model_free(model *m) {
    for (int i = 0; i < m->n_allocs; i++) free(m->allocs[i]);
    m->n_allocs = 0;
}

/* add a tensor (f32 master data) in the requested type unless omitted */
static void put(model *m, lp_gguf_writer *w, const char *name, lp_type t, uint32_t nd, const int64_t *ne,
                const float *data) {
    if (m->s.omit_tensor && strcmp(m->s.omit_tensor, name) == 0) return;
    int64_t n = 1;
    for (uint32_t d = 0; d < nd; d++) n *= ne[d];
    const void *buf = data;
    if (t == LP_TYPE_F16) {
        uint16_t *h = track(m, malloc((size_t)n * sizeof(uint16_t)));
        for (int64_t i = 0; i < n; i++) h[i] = lp_f32_to_f16(data[i]);
        buf = h;
    }
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, t, nd, ne, buf), LOUPE_OK);
}

static void put_vec(model *m, lp_gguf_writer *w, const char *name, const float *d, int64_t n) {
    if (d) put(m, w, name, LP_TYPE_F32, 1, (int64_t[]){n}, d);
}

static void put_mat(model *m, lp_gguf_writer *w, const char *name, const float *d, int64_t out, int64_t in) {
    put(m, w, name, m->s.wtype, 2, (int64_t[]){in, out}, d);
}

static void set_u32(model *m, lp_gguf_writer *w, const char *key, uint32_t v) {
    if (m->s.omit_key && strcmp(m->s.omit_key, key) == 0) return;
    assert_int_equal(lp_gguf_writer_set_u32(w, key, v), LOUPE_OK);
}

/* Write the model as an mmproj GGUF at path. */
static void model_write(model *m, const char *path) {
    const spec *s = &m->s;
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    char name[96];
    assert_int_equal(lp_gguf_writer_set_str(w, "general.architecture", "clip"), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "clip.has_vision_encoder", true), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "clip.has_llava_projector", true), LOUPE_OK);
    if (!(s->omit_key && strcmp(s->omit_key, "clip.projector_type") == 0)) {
        assert_int_equal(lp_gguf_writer_set_str(w, "clip.projector_type", s->proj_type), LOUPE_OK);
    }
    set_u32(m, w, "clip.vision.image_size", (uint32_t)s->S);
    set_u32(m, w, "clip.vision.patch_size", (uint32_t)s->P);
    set_u32(m, w, "clip.vision.embedding_length", (uint32_t)s->E);
    set_u32(m, w, "clip.vision.feed_forward_length", (uint32_t)(s->ff_key ? s->ff_key : s->F));
    set_u32(m, w, "clip.vision.projection_dim", 16);
    set_u32(m, w, "clip.vision.attention.head_count", (uint32_t)s->H);
    set_u32(m, w, "clip.vision.block_count", (uint32_t)s->L);
    assert_int_equal(lp_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-5f), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.image_mean", LP_GGUF_FLOAT32, m->mean, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.image_std", LP_GGUF_FLOAT32, m->std, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "clip.use_gelu", s->use_gelu), LOUPE_OK);
    if (s->pinpoints) {
        const int32_t pp[4] = {32, 64, 64, 32};
        assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.image_grid_pinpoints", LP_GGUF_INT32, pp, 4), LOUPE_OK);
    }
    if (s->n_fl > 0) {
        int32_t fl[4];
        for (int i = 0; i < s->n_fl; i++) fl[i] = s->fl[i];
        assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.feature_layer", LP_GGUF_INT32, fl, (uint64_t)s->n_fl),
                         LOUPE_OK);
    }

    const int E = s->E;
    put(m, w, "v.patch_embd.weight", s->wtype, 4, (int64_t[]){s->P, s->P, 3, E}, m->patch_w);
    put_vec(m, w, "v.patch_embd.bias", m->patch_b, E);
    put_vec(m, w, "v.class_embd", m->cls, E);
    put(m, w, "v.position_embd.weight", s->wtype, 2, (int64_t[]){E, m->n_pos}, m->pos);
    put_vec(m, w, "v.pre_ln.weight", m->pre_w, E);
    put_vec(m, w, "v.pre_ln.bias", m->pre_b, E);
    for (int il = 0; il < s->L; il++) {
        const layer_w *L = &m->l[il];
        const struct { const char *n; const float *wt, *b; int out, in; } t[] = {
            {"attn_q", L->q, L->qb, E, E},
            {"attn_k", L->k, L->kb, E, E},
            {"attn_v", L->v, L->vb, E, E},
            {"attn_out", L->o, L->ob, E, E},
            /* the legacy converter calls fc1 "ffn_down" and fc2 "ffn_up" */
            {s->legacy_ffn_names ? "ffn_down" : "ffn_up", L->up, L->upb, s->F, E},
            {s->legacy_ffn_names ? "ffn_up" : "ffn_down", L->down, L->downb, E, s->F},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            snprintf(name, sizeof name, "v.blk.%d.%s.weight", il, t[i].n);
            put_mat(m, w, name, t[i].wt, t[i].out, t[i].in);
            snprintf(name, sizeof name, "v.blk.%d.%s.bias", il, t[i].n);
            put_vec(m, w, name, t[i].b, t[i].out);
        }
        snprintf(name, sizeof name, "v.blk.%d.ln1.weight", il);
        put_vec(m, w, name, L->l1w, E);
        snprintf(name, sizeof name, "v.blk.%d.ln1.bias", il);
        put_vec(m, w, name, L->l1b, E);
        snprintf(name, sizeof name, "v.blk.%d.ln2.weight", il);
        put_vec(m, w, name, L->l2w, E);
        snprintf(name, sizeof name, "v.blk.%d.ln2.bias", il);
        put_vec(m, w, name, L->l2b, E);
    }
    put_vec(m, w, "v.post_ln.weight", m->post_w, E);
    put_vec(m, w, "v.post_ln.bias", m->post_b, E);
    put_mat(m, w, "mm.0.weight", m->mm0, s->hid, m->D);
    put_vec(m, w, "mm.0.bias", m->mm0b, s->hid);
    if (m->mm2) {
        if (s->bad_mm2_shape) {
            float *z = track(m, calloc((size_t)s->out * (size_t)(s->hid + 8), sizeof(float)));
            put_mat(m, w, "mm.2.weight", z, s->out, s->hid + 8);
        } else {
            put_mat(m, w, "mm.2.weight", m->mm2, s->out, s->hid);
        }
        put_vec(m, w, "mm.2.bias", m->mm2b, s->out);
    }
    lp_error err = {0};
    loupe_status st = lp_gguf_writer_write(w, path, &err);
    if (st != LOUPE_OK) fail_msg("write %s: %s", path, err.msg);
    lp_gguf_writer_free(w);
}

/* ------------------------------------------------------------------------ */
/* reference forward, double precision, written from the llama.cpp graph    */

enum { Q_CLS_LAST = 1, Q_DROP = 2, Q_POST_LN = 4, Q_TANH = 8, Q_ACT16 = 16, Q_MM16 = 32 };

static double r16(double x) { return lp_f16_to_f32(lp_f32_to_f16((float)x)); }

static void ref_linear(const model *m, unsigned q, const double *x, int n, int in, const float *W, const float *b,
                       int out, double *y) {
    for (int t = 0; t < n; t++) {
        for (int o = 0; o < out; o++) {
            double acc = 0.0;
            for (int i = 0; i < in; i++) {
                double xi = x[(int64_t)t * in + i];
                if ((q & Q_MM16) && m->s.wtype == LP_TYPE_F16) xi = r16(xi);
                acc += xi * W[(int64_t)o * in + i];
            }
            y[(int64_t)t * out + o] = acc + (b ? b[o] : 0.0);
        }
    }
}

static void ref_ln(double *x, int n, int E, const float *w, const float *b) {
    for (int t = 0; t < n; t++) {
        double *r = x + (int64_t)t * E, mu = 0.0, var = 0.0;
        for (int i = 0; i < E; i++) mu += r[i];
        mu /= E;
        for (int i = 0; i < E; i++) var += (r[i] - mu) * (r[i] - mu);
        var /= E;
        double inv = 1.0 / sqrt(var + 1e-5f);
        for (int i = 0; i < E; i++) r[i] = (r[i] - mu) * inv * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
    }
}

static double ref_gelu(double x, unsigned q) {
    if (!(q & Q_TANH)) return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    if (q & Q_ACT16) {
        if (x <= -10.0) return 0.0;
        if (x >= 10.0) return x;
        x = r16(x);
    }
    double y = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    return (q & Q_ACT16) ? r16(y) : y;
}

static double ref_quick(double x, unsigned q) {
    if (q & Q_ACT16) x = r16(x);
    double y = x / (1.0 + exp(-1.702 * x));
    return (q & Q_ACT16) ? r16(y) : y;
}

/* features_grid (N, D), proj (N, out); either may be NULL */
static void ref_encode(const model *m, unsigned q, const float *pix, double *features_grid, double *proj) {
    const spec *s = &m->s;
    const int E = s->E, N = m->N, T = m->n_pos, K = m->K, P = s->P, S = s->S, ns = S / P, H = s->H, hd = E / H;
    const bool cls_first = s->cls && !(q & Q_CLS_LAST);
    double *cols = calloc((size_t)N * K, sizeof(double));
    double *pe = calloc((size_t)N * E, sizeof(double));
    double *x = calloc((size_t)T * E, sizeof(double));
    double *xn = calloc((size_t)T * E, sizeof(double));
    double *qq = calloc((size_t)T * E, sizeof(double)), *kk = calloc((size_t)T * E, sizeof(double));
    double *vv = calloc((size_t)T * E, sizeof(double)), *at = calloc((size_t)T * E, sizeof(double));
    double *br = calloc((size_t)T * E, sizeof(double)), *ff = calloc((size_t)T * s->F, sizeof(double));
    double *hs[MAXL + 2] = {0};
    int n_hs = 0;
    assert_true(cols && pe && x && xn && qq && kk && vv && at && br && ff);

    /* patch embedding as a convolution written directly */
    for (int py = 0; py < ns; py++)
        for (int px = 0; px < ns; px++)
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++)
                    for (int kx = 0; kx < P; kx++)
                        cols[(py * ns + px) * K + (c * P + ky) * P + kx] = pix[(c * S + py * P + ky) * S + px * P + kx];
    ref_linear(m, q, cols, N, K, m->patch_w, m->patch_b, E, pe);
    for (int p = 0; p < N; p++)
        for (int i = 0; i < E; i++) x[(p + (cls_first ? 1 : 0)) * E + i] = pe[p * E + i];
    if (s->cls)
        for (int i = 0; i < E; i++) x[(cls_first ? 0 : N) * E + i] = m->cls[i];
    for (int t = 0; t < T * E; t++) x[t] += m->pos[t];
    if (s->pre_ln) ref_ln(x, T, E, m->pre_w, m->pre_b);

    int n_run = s->n_fl > 0 ? 0 : ((q & Q_DROP) ? s->L - 1 : s->L);
    for (int i = 0; i < s->n_fl; i++) n_run = s->fl[i] > n_run ? s->fl[i] : n_run;

    for (int il = 0; il < n_run; il++) {
        for (int i = 0; i < s->n_fl; i++) {
            if (s->fl[i] == il) {
                hs[n_hs] = malloc((size_t)T * E * sizeof(double));
                memcpy(hs[n_hs++], x, (size_t)T * E * sizeof(double));
            }
        }
        const layer_w *L = &m->l[il];
        memcpy(xn, x, (size_t)T * E * sizeof(double));
        ref_ln(xn, T, E, L->l1w, L->l1b);
        ref_linear(m, q, xn, T, E, L->q, L->qb, E, qq);
        ref_linear(m, q, xn, T, E, L->k, L->kb, E, kk);
        ref_linear(m, q, xn, T, E, L->v, L->vb, E, vv);
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < T; i++) {
                double sc[128], mx = -1e300, sum = 0.0;
                assert_true(T <= 128);
                for (int j = 0; j < T; j++) {
                    double d = 0.0;
                    for (int e = 0; e < hd; e++) d += qq[i * E + h * hd + e] * kk[j * E + h * hd + e];
                    sc[j] = d / sqrt((double)hd);
                    mx = sc[j] > mx ? sc[j] : mx;
                }
                for (int j = 0; j < T; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double o = 0.0;
                    for (int j = 0; j < T; j++) o += sc[j] / sum * vv[j * E + h * hd + e];
                    at[i * E + h * hd + e] = o;
                }
            }
        }
        ref_linear(m, q, at, T, E, L->o, L->ob, E, br);
        for (int t = 0; t < T * E; t++) x[t] += br[t];
        memcpy(xn, x, (size_t)T * E * sizeof(double));
        ref_ln(xn, T, E, L->l2w, L->l2b);
        ref_linear(m, q, xn, T, E, L->up, L->upb, s->F, ff);
        for (int t = 0; t < T * s->F; t++) ff[t] = s->use_gelu ? ref_gelu(ff[t], q) : ref_quick(ff[t], q);
        ref_linear(m, q, ff, T, s->F, L->down, L->downb, E, br);
        for (int t = 0; t < T * E; t++) x[t] += br[t];
    }
    if ((q & Q_POST_LN) && s->post_ln) ref_ln(x, T, E, m->post_w, m->post_b);
    if (s->n_fl > 0) {
        hs[n_hs] = malloc((size_t)T * E * sizeof(double));
        memcpy(hs[n_hs++], x, (size_t)T * E * sizeof(double));
    } else {
        hs[n_hs++] = x;
    }
    /* stacked hidden states, (T, D) */
    const int D = m->D;
    assert_int_equal(n_hs * E, D);
    double *st = malloc((size_t)T * D * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int k = 0; k < n_hs; k++)
            for (int i = 0; i < E; i++) st[t * D + k * E + i] = hs[k][t * E + i];

    if (features_grid) {
        for (int p = 0; p < N; p++)
            for (int i = 0; i < D; i++) features_grid[p * D + i] = st[(p + (cls_first ? 1 : 0)) * D + i];
    }
    if (proj) {
        /* llama.cpp feeds token rows 1..N (with a class token) to the projector */
        double *in = malloc((size_t)N * D * sizeof(double));
        for (int p = 0; p < N; p++)
            for (int i = 0; i < D; i++) in[p * D + i] = st[(p + (s->cls ? 1 : 0)) * D + i];
        if (m->mm2) {
            double *hid = malloc((size_t)N * s->hid * sizeof(double));
            ref_linear(m, q, in, N, D, m->mm0, m->mm0b, s->hid, hid);
            for (int i = 0; i < N * s->hid; i++) hid[i] = ref_gelu(hid[i], q);
            ref_linear(m, q, hid, N, s->hid, m->mm2, m->mm2b, s->out, proj);
            free(hid);
        } else {
            ref_linear(m, q, in, N, D, m->mm0, m->mm0b, s->hid, proj);
        }
        free(in);
    }
    free(st);
    for (int k = 0; k < n_hs; k++)
        if (hs[k] != x) free(hs[k]);
    free(cols), free(pe), free(x), free(xn), free(qq), free(kk), free(vv), free(at), free(br), free(ff);
}

/* ------------------------------------------------------------------------ */
/* harness                                                                   */

typedef struct loaded {
    char path[64];
    lp_gguf *g;
    lp_weight_store *ws;
    lp_clip *clip;
} loaded;

static void tmp_path(char *buf) {
    strcpy(buf, "/tmp/test_clip_XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
}

/* write + open + load; on load failure returns false with err filled */
static bool load_model(model *m, loaded *ld, lp_error *err) {
    memset(ld, 0, sizeof *ld);
    tmp_path(ld->path);
    model_write(m, ld->path);
    ld->g = lp_gguf_open(ld->path, err);
    if (!ld->g) fail_msg("open %s: %s", ld->path, err->msg);
    ld->ws = lp_weights_resident(ld->g, err);
    assert_non_null(ld->ws);
    ld->clip = lp_clip_load(ld->g, ld->ws, err);
    return ld->clip != NULL;
}

static void unload(loaded *ld) {
    lp_clip_free(ld->clip);
    lp_ws_free(ld->ws);
    lp_gguf_close(ld->g);
    unlink(ld->path);
}

static float *rand_pixels(int S) {
    float *p = malloc((size_t)3 * S * S * sizeof(float));
    assert_non_null(p);
    for (int i = 0; i < 3 * S * S; i++) p[i] = rng_f(-2.0f, 2.0f);
    return p;
}

static double max_rel(const float *got, const double *want, int64_t n) {
    double md = 0.0, mr = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        md = d > md ? d : md;
        mr = fabs(want[i]) > mr ? fabs(want[i]) : mr;
    }
    return md / (mr > 0 ? mr : 1.0);
}

static unsigned to_q(unsigned quirks) {
    unsigned q = 0;
    if (quirks & LP_CLIP_QUIRK_CLS_LAST) q |= Q_CLS_LAST;
    if (quirks & LP_CLIP_QUIRK_DROP_LAYER) q |= Q_DROP;
    if (quirks & LP_CLIP_QUIRK_POST_LN) q |= Q_POST_LN;
    if (quirks & LP_CLIP_QUIRK_GELU_TANH) q |= Q_TANH;
    if (quirks & LP_CLIP_QUIRK_ACT_F16) q |= Q_ACT16;
    if (quirks & LP_CLIP_QUIRK_MATMUL_F16) q |= Q_MM16;
    return q;
}

/* Encode one random image under `quirks` and compare with the reference. */
static void check_model(const spec *s, unsigned quirks, double tol, uint64_t seed, int n_threads) {
    model m;
    model_build(&m, s, seed);
    loaded ld;
    lp_error err = {0};
    if (!load_model(&m, &ld, &err)) fail_msg("load: %s", err.msg);
    assert_int_equal(lp_clip_set_quirks(ld.clip, quirks, &err), LOUPE_OK);
    lp_clip *c = ld.clip;
    assert_int_equal(lp_clip_image_size(c), s->S);
    assert_int_equal(lp_clip_n_patches(c), m.N);
    assert_int_equal(lp_clip_n_out_tokens(c), m.N);
    assert_int_equal(lp_clip_feature_dim(c), m.D);
    assert_int_equal(lp_clip_out_dim(c), m.mm2 ? s->out : s->hid);
    assert_int_equal(lp_clip_has_class(c), s->cls);

    float *pix = rand_pixels(s->S);
    const int od = lp_clip_out_dim(c);
    float *out = malloc((size_t)m.N * od * sizeof(float));
    float *feat = malloc((size_t)m.N * m.D * sizeof(float));
    double *rout = malloc((size_t)m.N * od * sizeof(double));
    double *rfeat = malloc((size_t)m.N * m.D * sizeof(double));
    lp_pool *pool = n_threads > 1 ? lp_pool_new(n_threads) : NULL;
    loupe_status st = lp_clip_encode_ex(c, pix, out, feat, pool, &err);
    if (st != LOUPE_OK) fail_msg("encode: %s", err.msg);
    ref_encode(&m, to_q(quirks), pix, rfeat, rout);
    double ef = max_rel(feat, rfeat, (int64_t)m.N * m.D);
    double eo = max_rel(out, rout, (int64_t)m.N * od);
    if (!(ef <= tol) || !(eo <= tol)) {
        fail_msg("quirks 0x%x: features rel err %.3g, output rel err %.3g (tol %.1g)", quirks, ef, eo, tol);
    }
    /* lp_clip_encode gives the same projector output */
    float *out2 = malloc((size_t)m.N * od * sizeof(float));
    assert_int_equal(lp_clip_encode(c, pix, out2, pool, &err), LOUPE_OK);
    assert_memory_equal(out, out2, (size_t)m.N * od * sizeof(float));
    lp_pool_free(pool);
    free(out2), free(pix), free(out), free(feat), free(rout), free(rfeat);
    unload(&ld);
    model_free(&m);
}

/* image 32, patch 8, dim 32, 2 heads, 3 layers, mlp projector to 48 */
static spec base_spec(void) {
    spec s = {0};
    s.S = 32, s.P = 8, s.E = 32, s.H = 2, s.F = 64, s.L = 3, s.hid = 48, s.out = 48;
    s.cls = true, s.pre_ln = true, s.post_ln = false, s.patch_bias = false;
    s.legacy_ffn_names = true, s.use_gelu = false;
    s.wtype = LP_TYPE_F32;
    s.proj_type = "mlp";
    return s;
}

/* ------------------------------------------------------------------------ */
/* tests                                                                     */

static void test_hf_semantics(void **st) {
    (void)st;
    spec s = base_spec();
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 1, 1);
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 2, 2); /* threaded */
    s.legacy_ffn_names = false;                       /* converter-new names */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 3, 1);
    s.wtype = LP_TYPE_F16; /* f16 weights, exact in the reference */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 4, 1);
    s.use_gelu = true; /* erf GELU in the ViT */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 5, 1);
}

static void test_llamacpp_structure(void **st) {
    (void)st;
    spec s = base_spec();
    s.post_ln = true; /* so POST_LN has something to do */
    const unsigned structural = LP_CLIP_QUIRK_CLS_LAST | LP_CLIP_QUIRK_DROP_LAYER | LP_CLIP_QUIRK_POST_LN |
                                LP_CLIP_QUIRK_GELU_TANH;
    check_model(&s, structural, 1e-4, 10, 1);
    check_model(&s, LP_CLIP_QUIRK_CLS_LAST, 1e-4, 11, 1);
    check_model(&s, LP_CLIP_QUIRK_DROP_LAYER, 1e-4, 12, 1);
    check_model(&s, LP_CLIP_QUIRK_POST_LN, 1e-4, 13, 1);
    s.use_gelu = true;
    check_model(&s, structural, 1e-4, 14, 2);
}

static void test_llamacpp_f16_numerics(void **st) {
    (void)st;
    spec s = base_spec();
    s.wtype = LP_TYPE_F16;
    check_model(&s, LP_CLIP_QUIRKS_LLAMACPP, 5e-3, 20, 1);
    s.use_gelu = true;
    check_model(&s, LP_CLIP_QUIRKS_LLAMACPP, 5e-3, 21, 2);
    check_model(&s, LP_CLIP_QUIRK_MATMUL_F16, 5e-3, 22, 1);
}

static void test_default_quirks(void **st) {
    (void)st;
    spec s = base_spec();
    model m;
    model_build(&m, &s, 30);
    loaded ld;
    lp_error err = {0};
    assert_true(load_model(&m, &ld, &err));
    assert_int_equal(lp_clip_quirks(ld.clip), LP_CLIP_QUIRKS_LLAMACPP);
    assert_int_equal(lp_clip_n_layer(ld.clip), 3);
    assert_int_equal(lp_clip_n_layer_run(ld.clip), 2); /* llama.cpp: block_count - 1 */
    assert_int_equal(lp_clip_set_quirks(ld.clip, 1u << 20, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_clip_set_quirks(ld.clip, 0, &err), LOUPE_OK);
    assert_int_equal(lp_clip_n_layer_run(ld.clip), 3);
    assert_float_equal(lp_clip_mean(ld.clip)[0], 0.48145466f, 0);
    assert_float_equal(lp_clip_std(ld.clip)[2], 0.27577711f, 0);
    assert_int_equal(lp_clip_n_side(ld.clip), 4);
    assert_int_equal(lp_clip_patch_size(ld.clip), 8);
    assert_int_equal(lp_clip_n_embd(ld.clip), 32);
    assert_int_equal(lp_clip_projector_type(ld.clip), LP_PROJECTOR_MLP);
    unload(&ld);
    model_free(&m);
}

static void test_feature_layers(void **st) {
    (void)st;
    spec s = base_spec();
    s.fl[0] = 3, s.fl[1] = 1, s.n_fl = 2; /* stacked hidden states before block 1 and after block 2 */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 40, 1);
    check_model(&s, LP_CLIP_QUIRK_CLS_LAST | LP_CLIP_QUIRK_DROP_LAYER, 1e-4, 41, 1);
    s.fl[0] = 2, s.n_fl = 1; /* LLaVA-1.5 style explicit layer: runs 2 of 3 in both modes */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 42, 1);
    check_model(&s, LP_CLIP_QUIRK_DROP_LAYER, 1e-4, 43, 1);
}

static void test_linear_no_cls(void **st) {
    (void)st;
    spec s = base_spec();
    s.proj_type = "linear";
    s.cls = false, s.pre_ln = false, s.patch_bias = true;
    s.hid = 40;
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 50, 1);
    check_model(&s, LP_CLIP_QUIRK_CLS_LAST | LP_CLIP_QUIRK_DROP_LAYER, 1e-4, 51, 1);
    s.proj_type = "mlp"; /* an mlp without class token either */
    s.S = 36;            /* 36 / 8: the 4-pixel remainder is ignored, as ggml conv_2d */
    check_model(&s, LP_CLIP_QUIRKS_NONE, 1e-4, 52, 1);
}

typedef struct dump_log {
    int n;
    char names[32][32];
    int64_t sizes[32];
    float last_out[64];
} dump_log;

static void dump_cb(void *user, const char *name, const float *data, int64_t n) {
    dump_log *d = user;
    if (d->n < 32) {
        snprintf(d->names[d->n], sizeof d->names[0], "%s", name);
        d->sizes[d->n] = n;
        d->n++;
    }
    if (strcmp(name, "mm.out") == 0) memcpy(d->last_out, data, sizeof d->last_out);
}

static void test_dump_hook(void **st) {
    (void)st;
    spec s = base_spec();
    s.post_ln = true;
    model m;
    model_build(&m, &s, 60);
    loaded ld;
    lp_error err = {0};
    assert_true(load_model(&m, &ld, &err));
    dump_log d;
    memset(&d, 0, sizeof d);
    lp_clip_set_dump(ld.clip, dump_cb, &d);
    float *pix = rand_pixels(s.S);
    float *out = malloc((size_t)m.N * s.out * sizeof(float));
    assert_int_equal(lp_clip_encode(ld.clip, pix, out, NULL, &err), LOUPE_OK);
    /* default quirks: 2 blocks run, post_ln applied */
    const char *want[] = {"v.patch_embd", "v.pre_ln", "v.blk.0", "v.blk.1", "v.post_ln", "v.features", "mm.hidden", "mm.out"};
    const int64_t T = m.n_pos, E = s.E, N = m.N;
    const int64_t sizes[] = {T * E, T * E, T * E, T * E, T * E, N * E, N * s.hid, N * s.out};
    assert_int_equal(d.n, 8);
    for (int i = 0; i < 8; i++) {
        assert_string_equal(d.names[i], want[i]);
        assert_int_equal(d.sizes[i], sizes[i]);
    }
    assert_memory_equal(d.last_out, out, sizeof d.last_out);
    /* removing the hook stops the calls */
    lp_clip_set_dump(ld.clip, NULL, NULL);
    d.n = 0;
    assert_int_equal(lp_clip_encode(ld.clip, pix, out, NULL, &err), LOUPE_OK);
    assert_int_equal(d.n, 0);
    /* features only: projector skipped */
    float *feat = malloc((size_t)N * E * sizeof(float));
    assert_int_equal(lp_clip_encode_ex(ld.clip, pix, NULL, feat, NULL, &err), LOUPE_OK);
    free(feat), free(pix), free(out);
    unload(&ld);
    model_free(&m);
}

/* load must fail with `status` and a message containing the file name and `needle` */
static void expect_load_error(spec s, loupe_status status, const char *needle) {
    model m;
    model_build(&m, &s, 70);
    loaded ld;
    lp_error err = {0};
    bool ok = load_model(&m, &ld, &err);
    if (ok) fail_msg("load succeeded, expected an error naming %s", needle);
    if (err.status != status || !strstr(err.msg, needle) || !strstr(err.msg, ld.path)) {
        fail_msg("expected status %d naming %s and the file; got %d: %s", (int)status, needle, (int)err.status, err.msg);
    }
    unload(&ld);
    model_free(&m);
}

static void test_bad_inputs(void **st) {
    (void)st;
    spec s = base_spec();
    s.omit_tensor = "v.blk.1.attn_k.weight";
    expect_load_error(s, LOUPE_ERR_FORMAT, "v.blk.1.attn_k.weight");
    s = base_spec();
    s.omit_tensor = "v.position_embd.weight";
    expect_load_error(s, LOUPE_ERR_FORMAT, "v.position_embd.weight");
    s = base_spec();
    s.omit_tensor = "mm.2.weight";
    expect_load_error(s, LOUPE_ERR_FORMAT, "mm.2.weight");
    s = base_spec();
    s.omit_tensor = "mm.0.bias";
    expect_load_error(s, LOUPE_ERR_FORMAT, "mm.0.bias");
    s = base_spec();
    s.bad_mm2_shape = true;
    expect_load_error(s, LOUPE_ERR_FORMAT, "mm.2.weight");
    s = base_spec();
    s.proj_type = "foo";
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.projector_type");
    s.proj_type = "resampler"; /* a llama.cpp type loupe does not run */
    expect_load_error(s, LOUPE_ERR_UNSUPPORTED, "resampler");
    s = base_spec();
    s.omit_key = "clip.projector_type";
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.projector_type");
    s = base_spec();
    s.omit_key = "clip.vision.patch_size";
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.vision.patch_size");
    s = base_spec();
    s.omit_key = "clip.vision.block_count";
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.vision.block_count");
    s = base_spec();
    s.fl[0] = 7, s.n_fl = 1;
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.vision.feature_layer");
    s = base_spec();
    s.proj_type = "linear"; /* linear with an mm.2 present */
    s.extra_mm2 = true;
    expect_load_error(s, LOUPE_ERR_FORMAT, "mm.2.weight");
}

/* Keys that disagree with the tensors. */
static void test_key_tensor_mismatch(void **st) {
    (void)st;
    spec s = base_spec();
    s.ff_key = 48; /* tensors are 64 wide */
    expect_load_error(s, LOUPE_ERR_FORMAT, "v.blk.0.ffn_");
    s = base_spec();
    s.H = 3; /* 32 % 3 != 0 */
    expect_load_error(s, LOUPE_ERR_FORMAT, "clip.vision.attention.head_count");
    s = base_spec();
    s.wtype = LP_TYPE_F16;
    s.omit_tensor = "v.class_embd"; /* then position rows (17) exceed n_pos (16): accepted, llama.cpp reads 16 */
    model m;
    model_build(&m, &s, 81);
    loaded ld;
    lp_error err = {0};
    assert_true(load_model(&m, &ld, &err));
    assert_false(lp_clip_has_class(ld.clip));
    unload(&ld);
    model_free(&m);
}

/* lp_dense_forward alone: ggml-style input rounding must be exact for f16 and
 * bf16 weights, absent for f32 and q8_0 (no compounding here, so tight). */
static void test_dense_round(void **st) {
    (void)st;
    enum { IN = 64, OUT = 5, NT = 3 };
    rng_state = 123;
    float w[OUT * IN], b[OUT], x[NT * IN], wq[OUT * IN];
    uint16_t wh[OUT * IN], wb[OUT * IN];
    uint8_t w8[OUT * (IN / 32) * 34];
    for (int i = 0; i < OUT * IN; i++) w[i] = rng_f(-0.5f, 0.5f);
    for (int i = 0; i < OUT; i++) b[i] = rng_f(-0.1f, 0.1f);
    for (int i = 0; i < NT * IN; i++) x[i] = rng_f(-3.0f, 3.0f);
    for (int i = 0; i < OUT * IN; i++) wh[i] = lp_f32_to_f16(w[i]), wb[i] = lp_f32_to_bf16(w[i]);
    for (int r = 0; r < OUT; r++) {
        assert_int_equal(lp_quantize_row(LP_TYPE_Q8_0, w + r * IN, w8 + r * (IN / 32) * 34, IN), (IN / 32) * 34);
        assert_true(lp_dequantize_row(LP_TYPE_Q8_0, w8 + r * (IN / 32) * 34, wq + r * IN, IN));
    }
    char path[64];
    tmp_path(path);
    lp_gguf_writer *wr = lp_gguf_writer_new();
    const int64_t ne[2] = {IN, OUT};
    assert_int_equal(lp_gguf_writer_add_tensor(wr, "h.weight", LP_TYPE_F16, 2, ne, wh), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(wr, "h.bias", LP_TYPE_F32, 1, ne + 1, b), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(wr, "b.weight", LP_TYPE_BF16, 2, ne, wb), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(wr, "f.weight", LP_TYPE_F32, 2, ne, w), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(wr, "q.weight", LP_TYPE_Q8_0, 2, ne, w8), LOUPE_OK);
    lp_error err = {0};
    assert_int_equal(lp_gguf_writer_write(wr, path, &err), LOUPE_OK);
    lp_gguf_writer_free(wr);
    lp_gguf *g = lp_gguf_open(path, &err);
    assert_non_null(g);
    lp_weight_store *ws = lp_weights_resident(g, &err);
    assert_non_null(ws);
    const struct { const char *p; lp_type t; bool bias; } cases[] = {
        {"h", LP_TYPE_F16, true}, {"b", LP_TYPE_BF16, false}, {"f", LP_TYPE_F32, false}, {"q", LP_TYPE_Q8_0, false},
    };
    for (size_t ci = 0; ci < 4; ci++) {
        lp_dense d;
        assert_int_equal(lp_dense_load(&d, g, ws, cases[ci].p, IN, OUT, cases[ci].bias, &err), LOUPE_OK);
        for (int round = 0; round < 2; round++) {
            float y[NT * OUT];
            assert_int_equal(lp_dense_forward(&d, ws, x, y, NT, round ? LP_DENSE_ROUND_LIKE_GGML : LP_DENSE_ROUND_NONE,
                                              NULL, NULL, &err), LOUPE_OK);
            for (int t = 0; t < NT; t++)
                for (int o = 0; o < OUT; o++) {
                    double acc = cases[ci].bias ? b[o] : 0.0, mag = 0.0;
                    for (int i = 0; i < IN; i++) {
                        double xi = x[t * IN + i], wi;
                        if (round && cases[ci].t == LP_TYPE_F16) xi = lp_f16_to_f32(lp_f32_to_f16((float)xi));
                        if (round && cases[ci].t == LP_TYPE_BF16) xi = lp_bf16_to_f32(lp_f32_to_bf16((float)xi));
                        switch (cases[ci].t) {
                        case LP_TYPE_F16: wi = lp_f16_to_f32(wh[o * IN + i]); break;
                        case LP_TYPE_BF16: wi = lp_bf16_to_f32(wb[o * IN + i]); break;
                        case LP_TYPE_Q8_0: wi = wq[o * IN + i]; break;
                        default: wi = w[o * IN + i]; break;
                        }
                        acc += xi * wi;
                        mag += fabs(xi * wi);
                    }
                    /* f32 dot-product bound: (n + 2) 2^-24 sum|x w| */
                    assert_float_equal(y[t * OUT + o], acc, (IN + 2) * 0x1p-24 * mag + 1e-6);
                }
        }
        lp_dense_free(&d);
    }
    /* shape mismatch names the tensor */
    lp_dense d;
    assert_int_equal(lp_dense_load(&d, g, ws, "h", IN + 1, OUT, true, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "h.weight"));
    lp_dense_free(&d);
    assert_int_equal(lp_dense_load(&d, g, ws, "f", IN, OUT, true, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "f.bias"));
    lp_dense_free(&d);
    lp_ws_free(ws);
    lp_gguf_close(g);
    unlink(path);
}

/* ---- preprocessing ---- */

static void test_prep_llamacpp(void **st) {
    (void)st;
    lp_error err = {0};
    lp_image src, dst;
    /* constant image stays constant */
    assert_int_equal(lp_image_alloc(&src, 7, 5, &err), LOUPE_OK);
    for (int i = 0; i < 7 * 5 * 3; i++) src.rgb[i] = 77;
    assert_int_equal(lp_resize_llamacpp_bicubic(&src, &dst, 13, 11, &err), LOUPE_OK);
    for (int i = 0; i < 13 * 11 * 3; i++) assert_int_equal(dst.rgb[i], 77);
    lp_image_free(&dst);
    lp_image_free(&src);

    /* a horizontal ramp v = 10 x, upscaled 2x: the cubic Lagrange through 4
     * samples reproduces a line, and llama.cpp samples at x = j / 2 (no
     * half-pixel offset), so interior outputs are exactly 5 j */
    assert_int_equal(lp_image_alloc(&src, 16, 4, &err), LOUPE_OK);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 16; x++)
            for (int c = 0; c < 3; c++) src.rgb[(y * 16 + x) * 3 + c] = (uint8_t)(10 * x + c);
    assert_int_equal(lp_resize_llamacpp_bicubic(&src, &dst, 32, 8, &err), LOUPE_OK);
    for (int y = 0; y < 8; y++)
        for (int j = 2; j < 27; j++)
            for (int c = 0; c < 3; c++) assert_int_equal(dst.rgb[(y * 32 + j) * 3 + c], 5 * j + c);
    lp_image_free(&dst);
    lp_image_free(&src);

    /* fixed-size path: a 64×32 image into S = 32 is resized to 32×16 and
     * pasted at y = 8 on (122, 116, 104) */
    const float mean[3] = {0.5f, 0.5f, 0.5f}, stdv[3] = {0.25f, 0.5f, 1.0f};
    assert_int_equal(lp_image_alloc(&src, 64, 32, &err), LOUPE_OK);
    for (int i = 0; i < 64 * 32 * 3; i++) src.rgb[i] = 200;
    lp_prep_geom geom;
    float *px = malloc(3 * 32 * 32 * sizeof(float));
    assert_int_equal(lp_preprocess_image(&src, 32, mean, stdv, LP_PREP_LLAMACPP, px, &geom, &err), LOUPE_OK);
    assert_int_equal(geom.content_x, 0);
    assert_int_equal(geom.content_y, 8);
    assert_int_equal(geom.content_w, 32);
    assert_int_equal(geom.content_h, 16);
    assert_true(fabs(geom.scale_x - 0.5) < 1e-12 && fabs(geom.off_y - 8.0) < 1e-12);
    const uint8_t pad[3] = {122, 116, 104};
    for (int c = 0; c < 3; c++) {
        float want_pad = ((float)pad[c] / 255.0f - mean[c]) / stdv[c];
        float want_img = (200.0f / 255.0f - mean[c]) / stdv[c];
        assert_float_equal(px[c * 1024 + 0 * 32 + 5], want_pad, 0);   /* row 0: pad   */
        assert_float_equal(px[c * 1024 + 7 * 32 + 31], want_pad, 0);  /* row 7: pad   */
        assert_float_equal(px[c * 1024 + 8 * 32 + 0], want_img, 0);   /* row 8: image */
        assert_float_equal(px[c * 1024 + 23 * 32 + 31], want_img, 0); /* row 23       */
        assert_float_equal(px[c * 1024 + 24 * 32 + 3], want_pad, 0);  /* row 24: pad  */
    }
    lp_image_free(&src);

    /* an S×S input is used unchanged */
    assert_int_equal(lp_image_alloc(&src, 32, 32, &err), LOUPE_OK);
    rng_state = 99;
    for (int i = 0; i < 32 * 32 * 3; i++) src.rgb[i] = (uint8_t)(rng_u64() & 255);
    assert_int_equal(lp_preprocess_image(&src, 32, mean, stdv, LP_PREP_LLAMACPP, px, &geom, &err), LOUPE_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 1024; i++)
            assert_float_equal(px[c * 1024 + i], ((float)src.rgb[i * 3 + c] / 255.0f - mean[c]) / stdv[c], 0);
    lp_image_free(&src);
    free(px);
}

static void test_prep_pil(void **st) {
    (void)st;
    lp_error err = {0};
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    const float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    lp_image src, mid, ref;
    assert_int_equal(lp_image_alloc(&src, 20, 10, &err), LOUPE_OK);
    rng_state = 7;
    for (int i = 0; i < 20 * 10 * 3; i++) src.rgb[i] = (uint8_t)(rng_u64() & 255);

    /* pad: expand2square onto (122, 116, 104) = int(mean*255), then PIL bicubic */
    lp_prep_geom geom;
    assert_int_equal(lp_preprocess_rgb(&src, 32, mean, LP_PREP_PAD_PIL, &mid, &geom, &err), LOUPE_OK);
    lp_image sq;
    assert_int_equal(lp_image_alloc(&sq, 20, 20, &err), LOUPE_OK);
    for (int i = 0; i < 400; i++) sq.rgb[i * 3] = 122, sq.rgb[i * 3 + 1] = 116, sq.rgb[i * 3 + 2] = 104;
    memcpy(sq.rgb + 5 * 20 * 3, src.rgb, 20 * 10 * 3);
    assert_int_equal(lp_image_resize(&sq, &ref, 32, 32, LP_RESAMPLE_BICUBIC, &err), LOUPE_OK);
    assert_memory_equal(mid.rgb, ref.rgb, 32 * 32 * 3);
    assert_true(fabs(geom.scale_x - 1.6) < 1e-12 && fabs(geom.off_y - 8.0) < 1e-12 && geom.off_x == 0.0);
    float *px = malloc(3 * 32 * 32 * sizeof(float));
    assert_int_equal(lp_preprocess_image(&src, 32, mean, stdv, LP_PREP_PAD_PIL, px, NULL, &err), LOUPE_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 1024; i++) {
            float v = (float)((double)mid.rgb[i * 3 + c] * (1.0 / 255.0));
            assert_float_equal(px[c * 1024 + i], (v - mean[c]) / stdv[c], 0);
        }
    lp_image_free(&sq), lp_image_free(&ref), lp_image_free(&mid);

    /* squash: straight PIL bicubic to S×S */
    assert_int_equal(lp_preprocess_rgb(&src, 32, mean, LP_PREP_SQUASH_PIL, &mid, &geom, &err), LOUPE_OK);
    assert_int_equal(lp_image_resize(&src, &ref, 32, 32, LP_RESAMPLE_BICUBIC, &err), LOUPE_OK);
    assert_memory_equal(mid.rgb, ref.rgb, 32 * 32 * 3);
    assert_true(fabs(geom.scale_x - 1.6) < 1e-12 && fabs(geom.scale_y - 3.2) < 1e-12);
    lp_image_free(&ref), lp_image_free(&mid), lp_image_free(&src);

    /* bad arguments */
    lp_image empty = {0};
    assert_int_equal(lp_preprocess_image(&empty, 32, mean, stdv, LP_PREP_LLAMACPP, px, NULL, &err),
                     LOUPE_ERR_INVALID_ARG);
    free(px);
}

static void test_clip_preprocess(void **st) {
    (void)st;
    spec s = base_spec();
    model m;
    model_build(&m, &s, 90);
    loaded ld;
    lp_error err = {0};
    assert_true(load_model(&m, &ld, &err));
    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 50, 30, &err), LOUPE_OK);
    for (int i = 0; i < 50 * 30 * 3; i++) img.rgb[i] = (uint8_t)(i * 7);
    float *a = malloc(3 * 32 * 32 * sizeof(float)), *b = malloc(3 * 32 * 32 * sizeof(float));
    assert_int_equal(lp_clip_preprocess(ld.clip, &img, LP_PREP_LLAMACPP, a, NULL, &err), LOUPE_OK);
    assert_int_equal(lp_preprocess_image(&img, 32, m.mean, m.std, LP_PREP_LLAMACPP, b, NULL, &err), LOUPE_OK);
    assert_memory_equal(a, b, 3 * 32 * 32 * sizeof(float));
    float *out = malloc((size_t)m.N * s.out * sizeof(float));
    assert_int_equal(lp_clip_encode(ld.clip, a, out, NULL, &err), LOUPE_OK);
    for (int i = 0; i < m.N * s.out; i++) assert_true(isfinite(out[i]));
    unload(&ld);
    model_free(&m);

    /* llava-1.6 style files: llama.cpp tiles them, so its mode is refused; PIL modes work */
    s.pinpoints = true;
    model_build(&m, &s, 91);
    assert_true(load_model(&m, &ld, &err));
    assert_int_equal(lp_clip_preprocess(ld.clip, &img, LP_PREP_LLAMACPP, a, NULL, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "clip.vision.image_grid_pinpoints"));
    assert_int_equal(lp_clip_preprocess(ld.clip, &img, LP_PREP_SQUASH_PIL, a, NULL, &err), LOUPE_OK);
    unload(&ld);
    model_free(&m);
    free(a), free(b), free(out);
    lp_image_free(&img);
}

/* ---- activations ---- */

static void test_act_f16(void **st) {
    (void)st;
    float x[8] = {-20.0f, -10.0f, -1.0f, -0.3f, 0.0f, 0.7f, 3.0f, 12.5f};
    float g[8], qg[8];
    memcpy(g, x, sizeof x);
    memcpy(qg, x, sizeof x);
    lp_act_apply(LP_ACT_GELU_TANH_F16, g, 8);
    lp_act_apply(LP_ACT_QUICK_GELU_F16, qg, 8);
    assert_float_equal(g[0], 0.0f, 0);   /* <= -10: 0 */
    assert_float_equal(g[1], 0.0f, 0);
    assert_float_equal(g[7], 12.5f, 0);  /* >= 10: identity */
    for (int i = 2; i < 7; i++) {
        double xi = lp_f16_to_f32(lp_f32_to_f16(x[i]));
        double want = 0.5 * xi * (1.0 + tanh(sqrt(2.0 / M_PI) * (xi + 0.044715 * xi * xi * xi)));
        assert_float_equal(g[i], lp_f16_to_f32(lp_f32_to_f16((float)want)), 1e-3 * fabs(want) + 1e-7);
        assert_float_equal(g[i], lp_f16_to_f32(lp_f32_to_f16(g[i])), 0); /* an f16 value */
        double wq = xi / (1.0 + exp(-1.702 * xi));
        assert_float_equal(qg[i], lp_f16_to_f32(lp_f32_to_f16((float)wq)), 1e-3 * fabs(wq) + 1e-7);
    }
    /* quick GELU's table has no bypass: -20 -> f16(-20 σ(-34)) ~ -3.5e-14 -> f16 flushes toward 0 */
    assert_true(fabs(qg[0]) < 1e-6);
    /* the f32 forms */
    float e[3] = {1.0f, -2.0f, 0.5f};
    lp_act_apply(LP_ACT_GELU_ERF, e, 3);
    assert_float_equal(e[0], 0.5 * (1.0 + erf(1.0 / sqrt(2.0))), 1e-6);
    assert_string_equal(lp_act_name(LP_ACT_QUICK_GELU_F16), "quick_gelu_f16");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_semantics),
        cmocka_unit_test(test_llamacpp_structure),
        cmocka_unit_test(test_llamacpp_f16_numerics),
        cmocka_unit_test(test_default_quirks),
        cmocka_unit_test(test_feature_layers),
        cmocka_unit_test(test_linear_no_cls),
        cmocka_unit_test(test_dump_hook),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_key_tensor_mismatch),
        cmocka_unit_test(test_dense_round),
        cmocka_unit_test(test_prep_llamacpp),
        cmocka_unit_test(test_prep_pil),
        cmocka_unit_test(test_clip_preprocess),
        cmocka_unit_test(test_act_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
