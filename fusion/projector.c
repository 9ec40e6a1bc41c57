/* fusion/projector.c — LLaVA-family projectors, dense layers, activations.
 * See projector.h for which llama.cpp behaviour each piece follows. */
#include "projector.h"

#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static const char *gpath(const lp_gguf *g) { return g && g->path ? g->path : "(gguf)"; }

/* ------------------------------------------------------------------------ */
/* activations                                                               */

const char *lp_act_name(lp_act a) {
    switch (a) {
    case LP_ACT_NONE: return "none";
    case LP_ACT_GELU_ERF: return "gelu_erf";
    case LP_ACT_GELU_TANH: return "gelu_tanh";
    case LP_ACT_GELU_TANH_F16: return "gelu_tanh_f16";
    case LP_ACT_QUICK_GELU: return "quick_gelu";
    case LP_ACT_QUICK_GELU_F16: return "quick_gelu_f16";
    case LP_ACT_SILU: return "silu";
    }
    return "?";
}

/* The scalar formulas ggml-cpu evaluates (vec.h), in f32 with the same
 * constants, used both directly and to fill the f16 tables. */
static float gelu_tanh_f32(float x) {
    const float k = 0.79788456080286535587989211986876f; /* sqrt(2/pi) */
    const float a = 0.044715f;
    return 0.5f * x * (1.0f + tanhf(k * x * (1.0f + a * x * x)));
}

static float quick_gelu_f32(float x) {
    return x * (1.0f / (1.0f + expf(-1.702f * x)));
}

/* ggml-cpu fills, at init, table[h] = f16(f(f32(h))) for every 16-bit
 * pattern h, and evaluates f32 inputs as f32(table[f16(x)]). Same here,
 * built once on first use. */
static uint16_t g_gelu_tab[1 << 16];
static uint16_t g_quick_tab[1 << 16];
static pthread_once_t g_tab_once = PTHREAD_ONCE_INIT;

static void build_tables(void) {
    for (uint32_t h = 0; h < (1u << 16); h++) {
        float f = lp_f16_to_f32((uint16_t)h);
        g_gelu_tab[h] = lp_f32_to_f16(gelu_tanh_f32(f));
        g_quick_tab[h] = lp_f32_to_f16(quick_gelu_f32(f));
    }
}

void lp_act_apply(lp_act a, float *x, int64_t n) {
    switch (a) {
    case LP_ACT_NONE:
        return;
    case LP_ACT_GELU_ERF:
        lp_gelu_erf(x, n);
        return;
    case LP_ACT_GELU_TANH:
        for (int64_t i = 0; i < n; i++) x[i] = gelu_tanh_f32(x[i]);
        return;
    case LP_ACT_QUICK_GELU:
        for (int64_t i = 0; i < n; i++) x[i] = quick_gelu_f32(x[i]);
        return;
    case LP_ACT_SILU:
        lp_silu(x, n);
        return;
    case LP_ACT_GELU_TANH_F16:
        pthread_once(&g_tab_once, build_tables);
        /* ggml bypasses the table outside (-10, 10): 0 below, identity above */
        for (int64_t i = 0; i < n; i++) {
            float v = x[i];
            if (v <= -10.0f) x[i] = 0.0f;
            else if (v >= 10.0f) x[i] = v;
            else x[i] = lp_f16_to_f32(g_gelu_tab[lp_f32_to_f16(v)]);
        }
        return;
    case LP_ACT_QUICK_GELU_F16:
        pthread_once(&g_tab_once, build_tables);
        for (int64_t i = 0; i < n; i++) x[i] = lp_f16_to_f32(g_quick_tab[lp_f32_to_f16(x[i])]);
        return;
    }
}

/* ------------------------------------------------------------------------ */
/* tensors                                                                   */

static bool has_tensor(const lp_gguf *g, const char *name) { return lp_gguf_find_tensor(g, name) >= 0; }

loupe_status lp_load_f32(const lp_gguf *g, lp_weight_store *ws, const char *name, int64_t n, float **out,
                         lp_error *err) {
    *out = NULL;
    lp_tensor t;
    loupe_status st = lp_ws_lookup(ws, name, &t, err);
    if (st != LOUPE_OK) return st;
    int64_t ne = t.ne[0] * t.n_rows;
    if (ne != n) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s has %lld elements, expected %lld", gpath(g), name,
                       (long long)ne, (long long)n);
    }
    if (!lp_type_can_dequantize(t.type)) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s cannot be computed on", gpath(g), name,
                       lp_type_name(t.type) ? lp_type_name(t.type) : "?");
    }
    float *buf = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!buf) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: tensor %s: out of memory", gpath(g), name);
    const void *data = NULL;
    st = lp_ws_get(ws, &t, &data, err);
    if (st != LOUPE_OK) {
        free(buf);
        return st;
    }
    bool ok = true;
    for (int64_t r = 0; r < t.n_rows && ok; r++) {
        ok = lp_dequantize_row(t.type, (const uint8_t *)data + (size_t)r * t.row_bytes, buf + r * t.ne[0], t.ne[0]);
    }
    lp_ws_release(ws, &t);
    if (!ok) {
        free(buf);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: cannot convert %s rows of %lld", gpath(g), name,
                       lp_type_name(t.type) ? lp_type_name(t.type) : "?", (long long)t.ne[0]);
    }
    *out = buf;
    return LOUPE_OK;
}

loupe_status lp_dense_load(lp_dense *d, const lp_gguf *g, lp_weight_store *ws, const char *prefix, int64_t in,
                           int64_t out, bool need_bias, lp_error *err) {
    memset(d, 0, sizeof *d);
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    loupe_status st = lp_ws_lookup(ws, name, &d->w, err);
    if (st != LOUPE_OK) return st;
    const lp_tensor *w = &d->w;
    if (w->n_dims != 2 || w->ne[2] != 1 || w->ne[3] != 1) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: expected a 2-D matrix, got %d dims [%lld, %lld, %lld, %lld]",
                       gpath(g), name, w->n_dims, (long long)w->ne[0], (long long)w->ne[1], (long long)w->ne[2],
                       (long long)w->ne[3]);
    }
    if ((in >= 0 && w->ne[0] != in) || (out >= 0 && w->ne[1] != out)) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: shape [%lld, %lld], expected [%lld, %lld]", gpath(g), name,
                       (long long)w->ne[0], (long long)w->ne[1], (long long)(in >= 0 ? in : w->ne[0]),
                       (long long)(out >= 0 ? out : w->ne[1]));
    }
    if (w->ne[0] <= 0 || w->ne[1] <= 0 || w->ne[0] > INT32_MAX || w->ne[1] > INT32_MAX) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: bad shape [%lld, %lld]", gpath(g), name,
                       (long long)w->ne[0], (long long)w->ne[1]);
    }
    if (!lp_type_can_dequantize(w->type)) {
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: type %s cannot be computed on", gpath(g), name,
                       lp_type_name(w->type) ? lp_type_name(w->type) : "?");
    }
    d->in = w->ne[0];
    d->out = w->ne[1];
    snprintf(name, sizeof name, "%s.bias", prefix);
    if (has_tensor(g, name)) {
        st = lp_load_f32(g, ws, name, d->out, &d->b, err);
        if (st != LOUPE_OK) return st;
    } else if (need_bias) {
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s not found", gpath(g), name);
    }
    return LOUPE_OK;
}

void lp_dense_free(lp_dense *d) {
    if (!d) return;
    free(d->b);
    d->b = NULL;
}

loupe_status lp_dense_forward(const lp_dense *d, lp_weight_store *ws, const float *X, float *Y, int n,
                              lp_dense_round round, float *scratch, lp_pool *pool, lp_error *err) {
    // X (n, in), Y (n, out)
    if (n <= 0) return LOUPE_OK;
    const float *src = X;
    float *own = NULL;
    if (round == LP_DENSE_ROUND_LIKE_GGML && (d->w.type == LP_TYPE_F16 || d->w.type == LP_TYPE_BF16)) {
        size_t cnt = (size_t)n * (size_t)d->in;
        float *tmp = scratch;
        if (!tmp) {
            tmp = own = malloc(cnt * sizeof(float)); // (n, in)
            if (!own) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", d->w.name);
        }
        if (d->w.type == LP_TYPE_F16) {
            for (size_t i = 0; i < cnt; i++) tmp[i] = lp_f16_to_f32(lp_f32_to_f16(X[i]));
        } else {
            for (size_t i = 0; i < cnt; i++) tmp[i] = lp_bf16_to_f32(lp_f32_to_bf16(X[i]));
        }
        src = tmp;
    }
    const void *W = NULL;
    loupe_status st = lp_ws_get(ws, &d->w, &W, err);
    if (st != LOUPE_OK) {
        free(own);
        return st;
    }
    bool ok = lp_matmul_w(d->w.type, W, src, Y, n, d->out, d->in, pool);
    lp_ws_release(ws, &d->w);
    free(own);
    if (!ok) {
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: matrix product failed (type %s, [%lld, %lld])", d->w.name,
                       lp_type_name(d->w.type) ? lp_type_name(d->w.type) : "?", (long long)d->in, (long long)d->out);
    }
    if (d->b) {
        for (int i = 0; i < n; i++) lp_add(Y + (int64_t)i * d->out, d->b, d->out);
    }
    return LOUPE_OK;
}

/* ------------------------------------------------------------------------ */
/* projectors                                                                */

loupe_status lp_projector_type_parse(const char *s, const char *path, const char *key, lp_projector_type *out,
                                     lp_error *err) {
    if (!s) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s missing", path, key);
    if (strcmp(s, "mlp") == 0) {
        *out = LP_PROJECTOR_MLP;
        return LOUPE_OK;
    }
    if (strcmp(s, "linear") == 0) {
        *out = LP_PROJECTOR_LINEAR;
        return LOUPE_OK;
    }
    if (strcmp(s, "internvl") == 0) {
        *out = LP_PROJECTOR_INTERNVL;
        return LOUPE_OK;
    }
    if (strcmp(s, "ldpv2") == 0) {
        *out = LP_PROJECTOR_LDPV2;
        return LOUPE_OK;
    }
    if (strcmp(s, "ldp") == 0) {
        *out = LP_PROJECTOR_LDP;
        return LOUPE_OK;
    }
    /* names llama.cpp knows (clip-impl.h PROJECTOR_TYPE_NAMES) but loupe does not run */
    static const char *const known[] = {
        "resampler", "adapter", "qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger",
        "gemma3", "gemma3nv", "idefics3", "pixtral", "llama4", "lfm2", "kimivl", "cogvlm",
        "janus_pro", "glm4v", "phi4", "ultravox", "qwen2a", "qwen2.5o", "voxtral", "lightonocr",
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(s, known[i]) == 0) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s: projector type \"%s\" is not supported (mlp, linear, internvl, ldp, ldpv2)",
                           path, key, s);
        }
    }
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: unknown projector type \"%s\"", path, key, s);
}

loupe_status lp_projector_load(lp_projector *p, lp_projector_type type, const lp_gguf *g, lp_weight_store *ws,
                               int64_t in_dim, lp_error *err) {
    memset(p, 0, sizeof *p);
    p->type = type;
    p->in_dim = in_dim;
    loupe_status st;
    if (type == LP_PROJECTOR_INTERNVL) {
        if ((st = lp_load_f32(g, ws, "mm.model.mlp.0.weight", in_dim, &p->norm_w, err))) goto fail;
        if ((st = lp_load_f32(g, ws, "mm.model.mlp.0.bias", in_dim, &p->norm_b, err))) goto fail;
        if ((st = lp_dense_load(&p->mm0, g, ws, "mm.model.mlp.1", in_dim, -1, true, err))) goto fail;
        p->hidden_dim = p->mm0.out;
        if ((st = lp_dense_load(&p->mm2, g, ws, "mm.model.mlp.3", p->hidden_dim, -1, true, err))) goto fail;
        p->out_dim = p->mm2.out;
        return LOUPE_OK;
    }
    if (type == LP_PROJECTOR_LDP) {
        if ((st = lp_dense_load(&p->mm0, g, ws, "mm.model.mlp.1", in_dim, -1, true, err))) goto fail;
        p->hidden_dim = p->mm0.out;
        if ((st = lp_dense_load(&p->mm2, g, ws, "mm.model.mlp.3", p->hidden_dim, -1, true, err))) goto fail;
        p->out_dim = p->mm2.out;
        const int64_t C = p->out_dim;
        char nm[96];
        for (int b = 0; b < 2; b++) {
            lp_ldp_block *B = &p->ldp[b];
#define LDP_NAME(fmt) (snprintf(nm, sizeof nm, "mm.model.mb_block.%d.block." fmt, b + 1), nm)
            if ((st = lp_load_f32(g, ws, LDP_NAME("0.0.weight"), 9 * C, &B->dw, err))) goto fail;
            if ((st = lp_load_f32(g, ws, LDP_NAME("0.1.weight"), C, &B->ln0_w, err))) goto fail;
            if ((st = lp_load_f32(g, ws, LDP_NAME("0.1.bias"), C, &B->ln0_b, err))) goto fail;
            if ((st = lp_dense_load(&B->fc1, g, ws, LDP_NAME("1.fc1"), C, -1, true, err))) goto fail;
            if ((st = lp_dense_load(&B->fc2, g, ws, LDP_NAME("1.fc2"), B->fc1.out, C, true, err))) goto fail;
            if ((st = lp_dense_load(&B->pw, g, ws, LDP_NAME("2.0"), C, C, false, err))) goto fail;
            if ((st = lp_load_f32(g, ws, LDP_NAME("2.1.weight"), C, &B->ln2_w, err))) goto fail;
            if ((st = lp_load_f32(g, ws, LDP_NAME("2.1.bias"), C, &B->ln2_b, err))) goto fail;
#undef LDP_NAME
        }
        return LOUPE_OK;
    }
    if (type == LP_PROJECTOR_LDPV2) {
        if ((st = lp_dense_load(&p->mm0, g, ws, "mm.model.mlp.0", in_dim, -1, true, err))) goto fail;
        p->hidden_dim = p->mm0.out;
        if ((st = lp_dense_load(&p->mm2, g, ws, "mm.model.mlp.2", p->hidden_dim, -1, true, err))) goto fail;
        p->out_dim = p->mm2.out;
        if ((st = lp_load_f32(g, ws, "mm.model.peg.0.weight", 9 * p->out_dim, &p->peg_w, err))) goto fail;
        if ((st = lp_load_f32(g, ws, "mm.model.peg.0.bias", p->out_dim, &p->peg_b, err))) goto fail;
        return LOUPE_OK;
    }
    /* Yi-VL style (llama.cpp MLP_NORM) and other mm.N layouts are refused */
    static const char *const foreign[] = {"mm.1.weight", "mm.3.weight", "mm.4.weight"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        if (has_tensor(g, foreign[i])) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                           "%s: tensor %s: this projector layout (llama.cpp mlp_norm / Yi-VL) is not supported",
                           gpath(g), foreign[i]);
        }
    }
    st = lp_dense_load(&p->mm0, g, ws, "mm.0", in_dim, -1, true, err);
    if (st != LOUPE_OK) goto fail;
    p->hidden_dim = p->mm0.out;
    if (type == LP_PROJECTOR_MLP) {
        st = lp_dense_load(&p->mm2, g, ws, "mm.2", p->hidden_dim, -1, true, err);
        if (st != LOUPE_OK) goto fail;
        p->out_dim = p->mm2.out;
    } else {
        if (has_tensor(g, "mm.2.weight")) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor mm.2.weight present but clip.projector_type is \"linear\"",
                         gpath(g));
            goto fail;
        }
        p->out_dim = p->hidden_dim;
    }
    return LOUPE_OK;
fail:
    lp_projector_free(p);
    return st;
}

void lp_projector_free(lp_projector *p) {
    if (!p) return;
    lp_dense_free(&p->mm0);
    lp_dense_free(&p->mm2);
    free(p->norm_w);
    free(p->norm_b);
    free(p->peg_w);
    free(p->peg_b);
    for (int b = 0; b < 2; b++) {
        lp_ldp_block *B = &p->ldp[b];
        free(B->dw);
        free(B->ln0_w);
        free(B->ln0_b);
        free(B->ln2_w);
        free(B->ln2_b);
        lp_dense_free(&B->fc1);
        lp_dense_free(&B->fc2);
        lp_dense_free(&B->pw);
        memset(B, 0, sizeof *B);
    }
    p->norm_w = p->norm_b = p->peg_w = p->peg_b = NULL;
}

/* The mlp stage every projector but "linear" starts with (internvl: after
 * its LayerNorm): out (n, out_dim) = act(x W0^T + b0) W2^T + b2. ldp/ldpv2
 * continue from its output on the patch grid. */
static loupe_status mlp_stage(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n, lp_act act,
                              lp_dense_round round, float *scratch_hidden, lp_pool *pool, lp_error *err) {
    // x (n, in_dim), hidden (n, hidden_dim), out (n, out_dim)
    if (n <= 0) return LOUPE_OK;
    float *hidden = scratch_hidden;
    float *own = NULL, *normed = NULL; // normed (n, in_dim): internvl's LayerNorm of x
    if (!hidden) {
        hidden = own = malloc((size_t)n * (size_t)p->hidden_dim * sizeof(float));
        if (!own) return lp_fail(err, LOUPE_ERR_NOMEM, "projector: out of memory");
    }
    if (p->type == LP_PROJECTOR_INTERNVL) {
        normed = malloc((size_t)n * (size_t)p->in_dim * sizeof(float));
        if (!normed) {
            free(own);
            return lp_fail(err, LOUPE_ERR_NOMEM, "projector: out of memory");
        }
        for (int i = 0; i < n; i++)
            lp_layernorm(normed + (int64_t)i * p->in_dim, x + (int64_t)i * p->in_dim, p->norm_w, p->norm_b, p->in_dim,
                         LP_INTERNVL_PROJ_EPS);
        x = normed;
    }
    loupe_status st = lp_dense_forward(&p->mm0, ws, x, hidden, n, round, NULL, pool, err);
    if (st == LOUPE_OK) {
        lp_act_apply(act, hidden, (int64_t)n * p->hidden_dim);
        st = lp_dense_forward(&p->mm2, ws, hidden, out, n, round, NULL, pool, err);
    }
    free(normed);
    free(own);
    return st;
}

loupe_status lp_projector_mlp(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                              lp_act act, lp_dense_round round, float *scratch_hidden, lp_pool *pool,
                              lp_error *err) {
    if (p->type != LP_PROJECTOR_MLP && p->type != LP_PROJECTOR_INTERNVL)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not an mlp");
    return mlp_stage(p, ws, x, out, n, act, round, scratch_hidden, pool, err);
}

loupe_status lp_projector_linear(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                 lp_dense_round round, lp_pool *pool, lp_error *err) {
    // x (n, in_dim), out (n, out_dim)
    if (p->type != LP_PROJECTOR_LINEAR) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not linear");
    return lp_dense_forward(&p->mm0, ws, x, out, n, round, NULL, pool, err);
}

/* Depthwise 3×3 convolution, zero padding 1, stride s: in (h, h, C) ->
 * out (ho, ho, C), ho = (h - 1) / s + 1; kernel (C, 3, 3). The input is
 * rounded to f16 first when asked (ggml's f16 im2col). */
static void dw_conv3(const float *in, int h, int C, const float *k, int s, bool r16, float *out, float *tmp) {
    const int ho = (h - 1) / s + 1;
    for (int64_t i = 0; i < (int64_t)h * h * C; i++) tmp[i] = r16 ? lp_f16_to_f32(lp_f32_to_f16(in[i])) : in[i];
    for (int i = 0; i < ho; i++)
        for (int j = 0; j < ho; j++)
            for (int c = 0; c < C; c++) {
                const float *kw = k + (int64_t)c * 9; // kw[ky·3 + kx]
                float acc = 0.0f;
                for (int ky = 0; ky < 3; ky++) {
                    const int y = i * s + ky - 1;
                    if (y < 0 || y >= h) continue;
                    for (int kx = 0; kx < 3; kx++) {
                        const int x = j * s + kx - 1;
                        if (x < 0 || x >= h) continue;
                        acc += kw[ky * 3 + kx] * tmp[((int64_t)y * h + x) * C + c];
                    }
                }
                out[((int64_t)i * ho + j) * C + c] = acc;
            }
}

static float hardsigmoid(float x) { return fminf(1.0f, fmaxf(0.0f, (x + 3.0f) / 6.0f)); }

/* One ldp block on x (h, h, C) -> out (ho, ho, C). Scratch: a, b of h·h·C
 * floats, t of h·h·C + 3·C. */
static loupe_status ldp_block(const lp_projector *p, const lp_ldp_block *B, lp_weight_store *ws, const float *x,
                              int h, int stride, bool r16, float *out, float *a, float *b, float *t, lp_pool *pool,
                              lp_error *err) {
    const int C = (int)p->out_dim, ho = (h - 1) / stride + 1, n = ho * ho;
    dw_conv3(x, h, C, B->dw, stride, r16, a, t); // a (n, C)
    for (int i = 0; i < n; i++) lp_layernorm(a + (int64_t)i * C, a + (int64_t)i * C, B->ln0_w, B->ln0_b, C, p->ln_eps);
    for (int64_t i = 0; i < (int64_t)n * C; i++) a[i] = a[i] * hardsigmoid(a[i]); /* hardswish */
    /* squeeze-excite: channel means -> fc1 -> ReLU -> fc2 -> hardsigmoid */
    float *mean = t, *se = t + C, *sc = t + 2 * C;
    for (int c = 0; c < C; c++) mean[c] = 0.0f;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) mean[c] += a[(int64_t)i * C + c];
    for (int c = 0; c < C; c++) mean[c] /= (float)n;
    loupe_status st;
    if ((st = lp_dense_forward(&B->fc1, ws, mean, se, 1, LP_DENSE_ROUND_NONE, NULL, pool, err))) return st;
    for (int64_t i = 0; i < B->fc1.out; i++) se[i] = se[i] > 0.0f ? se[i] : 0.0f;
    if ((st = lp_dense_forward(&B->fc2, ws, se, sc, 1, LP_DENSE_ROUND_NONE, NULL, pool, err))) return st;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) a[(int64_t)i * C + c] *= hardsigmoid(sc[c]);
    if ((st = lp_dense_forward(&B->pw, ws, a, b, n, LP_DENSE_ROUND_NONE, NULL, pool, err))) return st;
    for (int i = 0; i < n; i++) lp_layernorm(out + (int64_t)i * C, b + (int64_t)i * C, B->ln2_w, B->ln2_b, C, p->ln_eps);
    return LOUPE_OK;
}

loupe_status lp_projector_ldp(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int side,
                              lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err) {
    if (p->type != LP_PROJECTOR_LDP) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not ldp");
    if (side < 2 || side % 2) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "ldp: grid side %d is not even", side);
    const int n = side * side, C = (int)p->out_dim;
    float *hid = malloc((size_t)n * (size_t)p->hidden_dim * sizeof *hid); // (n, hidden)
    float *g0 = malloc((size_t)n * C * sizeof *g0);        // (n, C) the mlp output, block 1's input
    float *g1 = malloc((size_t)n * C * sizeof *g1);        // (n, C) block 1's output
    float *a = malloc((size_t)n * C * sizeof *a), *b = malloc((size_t)n * C * sizeof *b);
    float *t = malloc(((size_t)n * C + 3 * (size_t)C + 64) * sizeof *t);
    loupe_status st = LOUPE_OK;
    const bool r16 = round == LP_DENSE_ROUND_LIKE_GGML;
    if (!hid || !g0 || !g1 || !a || !b || !t) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "ldp projector: out of memory");
        goto done;
    }
    for (int bl = 0; bl < 2; bl++)
        if (p->ldp[bl].fc1.out > C) {
            st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "ldp: squeeze-excite wider than the channels");
            goto done;
        }
    if ((st = mlp_stage(p, ws, x, g0, n, act, round, hid, pool, err))) goto done;
    if ((st = ldp_block(p, &p->ldp[0], ws, g0, side, 1, r16, g1, a, b, t, pool, err))) goto done;
    lp_add(g1, g0, (int64_t)n * C); /* block 1 is residual */
    st = ldp_block(p, &p->ldp[1], ws, g1, side, 2, r16, out, a, b, t, pool, err);
done:
    free(hid);
    free(g0);
    free(g1);
    free(a);
    free(b);
    free(t);
    return st;
}

loupe_status lp_projector_ldpv2(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int side,
                                lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err) {
    if (p->type != LP_PROJECTOR_LDPV2) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not ldpv2");
    if (side < 2 || side % 2) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "ldpv2: grid side %d is not even", side);
    const int n = side * side, h = side / 2, C = (int)p->out_dim;
    float *hid = malloc((size_t)n * (size_t)p->hidden_dim * sizeof *hid); // (n, hidden)
    float *grid = malloc((size_t)n * C * sizeof *grid);                     // (n, C) mlp output, row-major grid
    float *pool_r = malloc((size_t)h * h * C * sizeof *pool_r);             // (h·h, C) the conv's (f16-rounded) input
    loupe_status st = LOUPE_OK;
    if (!hid || !grid || !pool_r) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "ldpv2 projector: out of memory");
        goto done;
    }
    if ((st = mlp_stage(p, ws, x, grid, n, act, round, hid, pool, err))) goto done;
    /* 2×2 average pooling, stride 2: out[i][j] = mean of grid[2i..2i+1][2j..2j+1] */
    for (int i = 0; i < h; i++)
        for (int j = 0; j < h; j++)
            for (int c = 0; c < C; c++) {
                const float *g0 = grid + ((int64_t)(2 * i) * side + 2 * j) * C + c;
                const float s = g0[0] + g0[C] + g0[(int64_t)side * C] + g0[(int64_t)side * C + C];
                out[((int64_t)i * h + j) * C + c] = s * 0.25f;
            }
    /* PEG: out += depthwise 3×3 (zero padding 1) over the pooled grid + bias */
    dw_conv3(out, h, C, p->peg_w, 1, round == LP_DENSE_ROUND_LIKE_GGML, grid, pool_r); /* grid: (h·h, C) conv */
    for (int i = 0; i < h * h; i++)
        for (int c = 0; c < C; c++) out[(int64_t)i * C + c] += grid[(int64_t)i * C + c] + p->peg_b[c];
done:
    free(hid);
    free(grid);
    free(pool_r);
    return st;
}

loupe_status lp_projector_forward(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                  lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err) {
    switch (p->type) {
    case LP_PROJECTOR_LINEAR: return lp_projector_linear(p, ws, x, out, n, round, pool, err);
    case LP_PROJECTOR_MLP:
    case LP_PROJECTOR_INTERNVL: return lp_projector_mlp(p, ws, x, out, n, act, round, NULL, pool, err);
    case LP_PROJECTOR_LDP:
    case LP_PROJECTOR_LDPV2: {
        int side = (int)lround(sqrt((double)n));
        if (side * side != n) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "ldp projector: %d rows are not a square grid", n);
        return p->type == LP_PROJECTOR_LDP ? lp_projector_ldp(p, ws, x, out, side, act, round, pool, err)
                                           : lp_projector_ldpv2(p, ws, x, out, side, act, round, pool, err);
    }
    }
    return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector: unknown type %d", (int)p->type);
}
