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
    /* names llama.cpp knows (clip-impl.h PROJECTOR_TYPE_NAMES) but loupe does not run */
    static const char *const known[] = {
        "ldp", "resampler", "adapter", "qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger",
        "gemma3", "gemma3nv", "idefics3", "pixtral", "llama4", "lfm2", "kimivl", "cogvlm",
        "janus_pro", "glm4v", "phi4", "ultravox", "qwen2a", "qwen2.5o", "voxtral", "lightonocr",
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(s, known[i]) == 0) {
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key %s: projector type \"%s\" is not supported (mlp, linear, internvl, ldpv2)",
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
    p->norm_w = p->norm_b = p->peg_w = p->peg_b = NULL;
}

loupe_status lp_projector_mlp(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                              lp_act act, lp_dense_round round, float *scratch_hidden, lp_pool *pool,
                              lp_error *err) {
    // x (n, in_dim), hidden (n, hidden_dim), out (n, out_dim)
    if (p->type != LP_PROJECTOR_MLP && p->type != LP_PROJECTOR_INTERNVL)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not an mlp");
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

loupe_status lp_projector_linear(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                 lp_dense_round round, lp_pool *pool, lp_error *err) {
    // x (n, in_dim), out (n, out_dim)
    if (p->type != LP_PROJECTOR_LINEAR) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not linear");
    return lp_dense_forward(&p->mm0, ws, x, out, n, round, NULL, pool, err);
}

loupe_status lp_projector_ldpv2(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int side,
                                lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err) {
    if (p->type != LP_PROJECTOR_LDPV2) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "projector is not ldpv2");
    if (side < 2 || side % 2) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "ldpv2: grid side %d is not even", side);
    const int n = side * side, h = side / 2, C = (int)p->out_dim;
    float *hid = malloc((size_t)n * (size_t)p->hidden_dim * sizeof *hid); // (n, hidden)
    float *grid = malloc((size_t)n * C * sizeof *grid);                     // (n, C) mlp output, row-major grid
    float *pool_r = malloc((size_t)h * h * C * sizeof *pool_r);             // (h·h, C) pooled, f16-rounded for the conv
    loupe_status st = LOUPE_OK;
    if (!hid || !grid || !pool_r) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "ldpv2 projector: out of memory");
        goto done;
    }
    if ((st = lp_dense_forward(&p->mm0, ws, x, hid, n, round, NULL, pool, err))) goto done;
    lp_act_apply(act, hid, (int64_t)n * p->hidden_dim);
    if ((st = lp_dense_forward(&p->mm2, ws, hid, grid, n, round, NULL, pool, err))) goto done;
    /* 2×2 average pooling, stride 2: out[i][j] = mean of grid[2i..2i+1][2j..2j+1] */
    for (int i = 0; i < h; i++)
        for (int j = 0; j < h; j++)
            for (int c = 0; c < C; c++) {
                const float *g0 = grid + ((int64_t)(2 * i) * side + 2 * j) * C + c;
                const float s = g0[0] + g0[C] + g0[(int64_t)side * C] + g0[(int64_t)side * C + C];
                out[((int64_t)i * h + j) * C + c] = s * 0.25f;
            }
    /* PEG: out += bias + depthwise 3×3 (zero padding 1) over the pooled grid */
    for (int64_t k = 0; k < (int64_t)h * h * C; k++)
        pool_r[k] = round == LP_DENSE_ROUND_LIKE_GGML ? lp_f16_to_f32(lp_f32_to_f16(out[k])) : out[k];
    for (int i = 0; i < h; i++)
        for (int j = 0; j < h; j++)
            for (int c = 0; c < C; c++) {
                const float *kw = p->peg_w + (int64_t)c * 9; // (3, 3): kw[ky·3 + kx]
                float acc = 0.0f;
                for (int ky = 0; ky < 3; ky++) {
                    const int y = i + ky - 1;
                    if (y < 0 || y >= h) continue;
                    for (int kx = 0; kx < 3; kx++) {
                        const int xx = j + kx - 1;
                        if (xx < 0 || xx >= h) continue;
                        acc += kw[ky * 3 + kx] * pool_r[((int64_t)y * h + xx) * C + c];
                    }
                }
                out[((int64_t)i * h + j) * C + c] += acc + p->peg_b[c];
            }
done:
    free(hid);
    free(grid);
    free(pool_r);
    return st;
}

loupe_status lp_projector_forward(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                  lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err) {
    if (p->type == LP_PROJECTOR_LINEAR) return lp_projector_linear(p, ws, x, out, n, round, pool, err);
    return lp_projector_mlp(p, ws, x, out, n, act, round, NULL, pool, err);
}
