/* fusion/region_sampler.c — Ferret's spatial-aware visual sampler.
 * See region_sampler.h for the forward pass and the GGUF layout. */
#include "region_sampler.h"

#include "../core/kernels.h"
#include "projector.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest S·K (rows through the stage layers) and C accepted at load. */
#define LP_REGION_MAX_ROWS (1 << 24)
#define LP_REGION_MAX_DIM (1 << 16)
#define LP_REGION_MAX_MASK ((int64_t)1 << 26)

typedef struct lp_region_stage {
    int n_sub;      /* S anchors                         */
    int n_nb;       /* K neighbours per anchor           */
    lp_dense diff;  /* (C+2) -> (C+2)                    */
    lp_dense agg;   /* 2(C+2) -> C                       */
    float *ln_w;    /* (C)                               */
    float *ln_b;    /* (C)                               */
} lp_region_stage;

struct lp_region_sampler {
    const lp_gguf *g;
    lp_weight_store *ws;
    int n_points;
    int n_stages;
    int in_dim;   /* C */
    int out_dim;
    lp_region_pool pool_mode;
    bool transpose;
    float eps;
    lp_region_stage st[LP_REGION_MAX_STAGES];
    lp_dense flatten; /* S_last·C -> C   */
    lp_dense proj;    /* C -> out_dim    */
    lp_region_dump_fn dump;
    void *dump_user;
};

static const char *gpath(const lp_gguf *g) { return g && g->path ? g->path : "mmproj"; }

/* ------------------------------------------------------------------------ */
/* loading                                                                   */

bool lp_region_sampler_present(const lp_gguf *g) {
    if (!g) return false;
    const size_t kl = strlen(LP_REGION_KEY), tl = strlen(LP_REGION_PREFIX ".");
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (strncmp(g->kv[i].key, LP_REGION_KEY, kl) == 0) return true;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strncmp(g->tensors[i].name, LP_REGION_PREFIX ".", tl) == 0) return true;
    return false;
}

/* An array of small non-negative integers (i32/u32/i64/u64) into out[]. */
static loupe_status get_int_arr(const lp_gguf *g, const char *key, int *out, int max, int *n, lp_error *err) {
    const lp_gguf_value *v = lp_gguf_get(g, key);
    if (!v) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s not found", gpath(g), key);
    if (v->type != LP_GGUF_ARRAY)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: expected an array of integers, got %s", gpath(g), key,
                       lp_gguf_vtype_name(v->type));
    const lp_gguf_vtype e = v->v.arr.elem;
    if (e != LP_GGUF_INT32 && e != LP_GGUF_UINT32 && e != LP_GGUF_INT64 && e != LP_GGUF_UINT64)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: expected an array of i32, got an array of %s", gpath(g),
                       key, lp_gguf_vtype_name(e));
    if (v->v.arr.n < 1 || v->v.arr.n > (uint64_t)max)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: %llu stages, expected 1..%d", gpath(g), key,
                       (unsigned long long)v->v.arr.n, max);
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
        int64_t x = -1;
        if (!lp_gguf_arr_int(v, i, &x)) x = -1;
        if (x < 1 || x > LP_REGION_MAX_POINTS)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key %s: element %llu is %lld, expected 1..%d", gpath(g), key,
                           (unsigned long long)i, (long long)x, LP_REGION_MAX_POINTS);
        out[i] = (int)x;
    }
    *n = (int)v->v.arr.n;
    return LOUPE_OK;
}

static loupe_status load_vec(const lp_gguf *g, lp_weight_store *ws, const char *prefix, const char *suffix, int n,
                             float **out, lp_error *err) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    if (lp_gguf_find_tensor(g, name) < 0) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s not found", gpath(g), name);
    return lp_load_f32(g, ws, name, n, out, err);
}

void lp_region_sampler_free(lp_region_sampler *rs) {
    if (!rs) return;
    for (int s = 0; s < LP_REGION_MAX_STAGES; s++) {
        lp_dense_free(&rs->st[s].diff);
        lp_dense_free(&rs->st[s].agg);
        free(rs->st[s].ln_w);
        free(rs->st[s].ln_b);
    }
    lp_dense_free(&rs->flatten);
    lp_dense_free(&rs->proj);
    free(rs);
}

static loupe_status load_all(lp_region_sampler *rs, const lp_gguf *g, lp_weight_store *ws, lp_error *err) {
    loupe_status st;
    uint32_t u;
    if ((st = lp_gguf_get_u32(g, LP_REGION_KEY "num_points", &u, err))) return st;
    if (u < 1 || u > LP_REGION_MAX_POINTS)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " LP_REGION_KEY "num_points: %u, expected 1..%d", gpath(g), u,
                       LP_REGION_MAX_POINTS);
    rs->n_points = (int)u;

    int sub[LP_REGION_MAX_STAGES], nb[LP_REGION_MAX_STAGES], n_sub, n_nb;
    if ((st = get_int_arr(g, LP_REGION_KEY "sub_points", sub, LP_REGION_MAX_STAGES, &n_sub, err))) return st;
    if ((st = get_int_arr(g, LP_REGION_KEY "neighbors", nb, LP_REGION_MAX_STAGES, &n_nb, err))) return st;
    if (n_sub != n_nb)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: keys " LP_REGION_KEY "sub_points and neighbors: %d vs %d stages",
                       gpath(g), n_sub, n_nb);
    rs->n_stages = n_sub;
    int m = rs->n_points; /* points entering the stage */
    for (int s = 0; s < n_sub; s++) {
        if (sub[s] > m || nb[s] > m)
            return lp_fail(err, LOUPE_ERR_FORMAT,
                           "%s: keys " LP_REGION_KEY "sub_points/neighbors: stage %d takes %d anchors and %d "
                           "neighbours of %d points",
                           gpath(g), s, sub[s], nb[s], m);
        if ((int64_t)sub[s] * nb[s] > LP_REGION_MAX_ROWS)
            return lp_fail(err, LOUPE_ERR_LIMIT, "%s: stage %d: %d anchors x %d neighbours is too many", gpath(g), s,
                           sub[s], nb[s]);
        rs->st[s].n_sub = sub[s];
        rs->st[s].n_nb = nb[s];
        m = sub[s];
    }

    const char *pooler = "max";
    if ((st = lp_gguf_get_str_opt(g, LP_REGION_KEY "pooler", &pooler, err))) return st;
    if (strcmp(pooler, "max") == 0) rs->pool_mode = LP_REGION_POOL_MAX;
    else if (strcmp(pooler, "mean") == 0) rs->pool_mode = LP_REGION_POOL_MEAN;
    else
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: key " LP_REGION_KEY "pooler: \"%s\", expected \"max\" or \"mean\"",
                       gpath(g), pooler);
    rs->eps = 1e-5f;
    if ((st = lp_gguf_get_f32_opt(g, LP_REGION_KEY "layer_norm_epsilon", &rs->eps, err))) return st;
    if (!(rs->eps >= 0.0f) || !isfinite(rs->eps))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " LP_REGION_KEY "layer_norm_epsilon: %g", gpath(g), rs->eps);
    rs->transpose = false;
    if ((st = lp_gguf_get_bool_opt(g, LP_REGION_KEY "ferret_transpose", &rs->transpose, err))) return st;

    /* C from the first diff projector, which is square (C+2, C+2). */
    char pre[64];
    snprintf(pre, sizeof pre, LP_REGION_PREFIX ".0.diff");
    if ((st = lp_dense_load(&rs->st[0].diff, g, ws, pre, -1, -1, true, err))) return st;
    const int64_t d0 = rs->st[0].diff.in;
    if (rs->st[0].diff.out != d0 || d0 < 3 || d0 - 2 > LP_REGION_MAX_DIM)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s.weight: shape [%lld, %lld], expected [C+2, C+2] with 1 <= C <= %d",
                       gpath(g), pre, (long long)d0, (long long)rs->st[0].diff.out, LP_REGION_MAX_DIM);
    const int C = (int)(d0 - 2), D = C + 2;
    rs->in_dim = C;
    uint32_t key_dim = (uint32_t)C;
    if ((st = lp_gguf_get_u32_opt(g, LP_REGION_KEY "input_dim", &key_dim, err))) return st;
    if (key_dim != (uint32_t)C)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key " LP_REGION_KEY "input_dim is %u but tensor %s.weight gives %d",
                       gpath(g), key_dim, pre, C);

    for (int s = 0; s < rs->n_stages; s++) {
        lp_region_stage *S = &rs->st[s];
        if (s > 0) {
            snprintf(pre, sizeof pre, LP_REGION_PREFIX ".%d.diff", s);
            if ((st = lp_dense_load(&S->diff, g, ws, pre, D, D, true, err))) return st;
        }
        snprintf(pre, sizeof pre, LP_REGION_PREFIX ".%d.agg", s);
        if ((st = lp_dense_load(&S->agg, g, ws, pre, 2 * D, C, true, err))) return st;
        snprintf(pre, sizeof pre, LP_REGION_PREFIX ".%d.norm", s);
        if ((st = load_vec(g, ws, pre, "weight", C, &S->ln_w, err))) return st;
        if ((st = load_vec(g, ws, pre, "bias", C, &S->ln_b, err))) return st;
    }
    snprintf(pre, sizeof pre, LP_REGION_PREFIX ".%d.diff.weight", rs->n_stages);
    if (lp_gguf_find_tensor(g, pre) >= 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s present but " LP_REGION_KEY "sub_points has %d stages",
                       gpath(g), pre, rs->n_stages);

    const int S_last = rs->st[rs->n_stages - 1].n_sub;
    if ((int64_t)S_last * C > INT32_MAX)
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: flatten width %d x %d too large", gpath(g), S_last, C);
    if ((st = lp_dense_load(&rs->flatten, g, ws, LP_REGION_PREFIX ".flatten", (int64_t)S_last * C, C, true, err)))
        return st;
    if ((st = lp_dense_load(&rs->proj, g, ws, LP_REGION_PREFIX ".proj", C, -1, true, err))) return st;
    rs->out_dim = (int)rs->proj.out;
    key_dim = (uint32_t)rs->out_dim;
    if ((st = lp_gguf_get_u32_opt(g, LP_REGION_KEY "output_dim", &key_dim, err))) return st;
    if (key_dim != (uint32_t)rs->out_dim)
        return lp_fail(err, LOUPE_ERR_FORMAT,
                       "%s: key " LP_REGION_KEY "output_dim is %u but tensor " LP_REGION_PREFIX ".proj.weight gives %d",
                       gpath(g), key_dim, rs->out_dim);
    return LOUPE_OK;
}

lp_region_sampler *lp_region_sampler_load(const lp_gguf *g, lp_weight_store *ws, lp_error *err) {
    lp_error_clear(err);
    if (!g || !ws) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_sampler_load: no file or weight store");
        return NULL;
    }
    if (!lp_region_sampler_present(g)) return NULL;
    lp_region_sampler *rs = calloc(1, sizeof *rs);
    if (!rs) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: region sampler: out of memory", gpath(g));
        return NULL;
    }
    rs->g = g;
    rs->ws = ws;
    if (load_all(rs, g, ws, err) != LOUPE_OK) {
        lp_region_sampler_free(rs);
        return NULL;
    }
    return rs;
}

int lp_region_sampler_n_points(const lp_region_sampler *rs) { return rs->n_points; }
int lp_region_sampler_in_dim(const lp_region_sampler *rs) { return rs->in_dim; }
int lp_region_sampler_out_dim(const lp_region_sampler *rs) { return rs->out_dim; }
int lp_region_sampler_n_stages(const lp_region_sampler *rs) { return rs->n_stages; }
lp_region_pool lp_region_sampler_pooler(const lp_region_sampler *rs) { return rs->pool_mode; }
bool lp_region_sampler_ferret_transpose(const lp_region_sampler *rs) { return rs->transpose; }

void lp_region_sampler_set_dump(lp_region_sampler *rs, lp_region_dump_fn fn, void *user) {
    rs->dump = fn;
    rs->dump_user = user;
}

static void dump(const lp_region_sampler *rs, const char *name, int stage, lp_type type, const void *data, int64_t n) {
    if (!rs->dump) return;
    char buf[64];
    if (stage >= 0) snprintf(buf, sizeof buf, "%d.%s", stage, name);
    else snprintf(buf, sizeof buf, "%s", name);
    rs->dump(rs->dump_user, buf, type, data, n);
}

/* ------------------------------------------------------------------------ */
/* seeded point sampling                                                     */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *s, uint64_t n) { return rng_next(s) % n; }

static float rng_unit(uint64_t *s) { return (float)(rng_next(s) >> 40) * 0x1p-24f; }

static float clamp01(float v) { return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; }

static loupe_status sample_box(const float box[4], int n, uint64_t seed, float *xy, lp_error *err) {
    // xy (n, 2)
    for (int i = 0; i < 4; i++)
        if (!isfinite(box[i])) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box: coordinate %d is not finite", i);
    if (box[2] < box[0] || box[3] < box[1])
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box [%g, %g, %g, %g]: x2 < x1 or y2 < y1", box[0], box[1],
                       box[2], box[3]);
    if (box[0] > 1.0f || box[2] < 0.0f || box[1] > 1.0f || box[3] < 0.0f)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region box [%g, %g, %g, %g] lies outside the image", box[0], box[1],
                       box[2], box[3]);
    const float x1 = clamp01(box[0]), y1 = clamp01(box[1]), x2 = clamp01(box[2]), y2 = clamp01(box[3]);
    const float wx = x2 - x1, wy = y2 - y1;
    uint64_t s = seed;
    for (int i = 0; i < n; i++) {
        const float ux = rng_unit(&s);
        const float uy = rng_unit(&s);
        const float tx = ux * wx; /* separate statements: no fused multiply-add */
        const float ty = uy * wy;
        xy[2 * i + 0] = x1 + tx;
        xy[2 * i + 1] = y1 + ty;
    }
    return LOUPE_OK;
}

static loupe_status sample_mask(const lp_region *r, int n, uint64_t seed, float *xy, lp_error *err) {
    // xy (n, 2)
    if (!r->mask || r->mask_w <= 0 || r->mask_h <= 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region mask: no data or bad size %dx%d", r->mask_w, r->mask_h);
    const int64_t W = r->mask_w, H = r->mask_h;
    if (W * H > LP_REGION_MAX_MASK)
        return lp_fail(err, LOUPE_ERR_LIMIT, "region mask %lldx%lld is larger than %lld pixels", (long long)W,
                       (long long)H, (long long)LP_REGION_MAX_MASK);
    int64_t c = 0;
    for (int64_t i = 0; i < W * H; i++) c += r->mask[i] != 0;
    if (c == 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region mask %lldx%lld is empty", (long long)W, (long long)H);
    const float fw = (float)W, fh = (float)H;
    uint64_t s = seed;
    int picked = 0;
    int64_t j = 0; /* inside pixels seen */
    for (int64_t i = 0; i < W * H && picked < n; i++) {
        if (!r->mask[i]) continue;
        /* selection sampling: keep this pixel with chance (n − picked)/(c − j) */
        const bool take = c >= n ? rng_below(&s, (uint64_t)(c - j)) < (uint64_t)(n - picked) : true;
        j++;
        if (!take) continue;
        xy[2 * picked + 0] = (float)(i % W) / fw;
        xy[2 * picked + 1] = (float)(i / W) / fh;
        picked++;
    }
    for (int i = picked; i < n; i++) { /* fewer pixels than points: uniform repeats */
        const uint64_t k = rng_below(&s, (uint64_t)c);
        xy[2 * i + 0] = xy[2 * k + 0];
        xy[2 * i + 1] = xy[2 * k + 1];
    }
    for (int i = n - 1; i > 0; i--) { /* Fisher–Yates */
        const uint64_t k = rng_below(&s, (uint64_t)i + 1);
        const float tx = xy[2 * i], ty = xy[2 * i + 1];
        xy[2 * i] = xy[2 * k];
        xy[2 * i + 1] = xy[2 * k + 1];
        xy[2 * k] = tx;
        xy[2 * k + 1] = ty;
    }
    return LOUPE_OK;
}

loupe_status lp_region_sample_points(const lp_region *region, int n, uint64_t seed, float *xy, lp_error *err) {
    if (!region || !xy) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_sample_points: no region or output");
    if (n < 1 || n > LP_REGION_MAX_POINTS)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_sample_points: %d points, expected 1..%d", n,
                       LP_REGION_MAX_POINTS);
    switch (region->kind) {
    case LP_REGION_BOX: return sample_box(region->box, n, seed, xy, err);
    case LP_REGION_MASK: return sample_mask(region, n, seed, xy, err);
    }
    return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_sample_points: unknown region kind %d", (int)region->kind);
}

/* ------------------------------------------------------------------------ */
/* forward pieces                                                            */

/* out (P, C) = bilinear samples of fmap (n, n, C) at xy (P, 2); torch
 * grid_sample(align_corners=True, padding zeros) with grid = 2·xy − 1. */
static void sample_forward(float *out, const float *fmap, const float *xy, int P, int n, int C, bool transpose) {
    const float half = (float)(n - 1) / 2.0f;
    for (int p = 0; p < P; p++) {
        float gx = 2.0f * xy[2 * p + 0] - 1.0f;
        float gy = 2.0f * xy[2 * p + 1] - 1.0f;
        if (transpose) {
            const float t = gx;
            gx = gy;
            gy = t;
        }
        const float ix = (gx + 1.0f) * half, iy = (gy + 1.0f) * half; /* column, row */
        const float fx = floorf(ix), fy = floorf(iy);
        const float tx = ix - fx, ty = iy - fy;
        const int x0 = (int)fx, y0 = (int)fy;
        const float w[4] = {(1.0f - tx) * (1.0f - ty), tx * (1.0f - ty), (1.0f - tx) * ty, tx * ty};
        const int cx[4] = {x0, x0 + 1, x0, x0 + 1}, cy[4] = {y0, y0, y0 + 1, y0 + 1};
        float *o = out + (size_t)p * C;
        for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int k = 0; k < 4; k++) {
            if (cx[k] < 0 || cx[k] >= n || cy[k] < 0 || cy[k] >= n) continue;
            const float *v = fmap + ((size_t)cy[k] * n + cx[k]) * C;
            for (int c = 0; c < C; c++) o[c] += w[k] * v[c];
        }
    }
}

/* Squared xy distance, exactly dx·dx + dy·dy in f32 (the reference's). */
static inline float dist2(const float *a, const float *b) {
    const float dx = a[0] - b[0], dy = a[1] - b[1];
    const float ax = dx * dx;
    const float ay = dy * dy;
    return ax + ay;
}

/* idx (S) = farthest-point sampling of xy (M, 2), start 0, ties to the
 * lowest index. best (M) is scratch. */
static void fps_forward(int32_t *idx, float *best, const float *xy, int M, int S) {
    for (int j = 0; j < M; j++) best[j] = 1e10f;
    int cur = 0;
    for (int i = 0; i < S; i++) {
        idx[i] = cur;
        const float *c = xy + 2 * (size_t)cur;
        int arg = 0;
        float top = -1.0f;
        for (int j = 0; j < M; j++) {
            const float d = dist2(xy + 2 * (size_t)j, c);
            if (d < best[j]) best[j] = d;
            if (best[j] > top) {
                top = best[j];
                arg = j;
            }
        }
        cur = arg;
    }
}

/* nb (S, K) = the K points of xy (M, 2) nearest each anchor xy[fps[s]],
 * nearest first, equal distances in index order. dk (K) is scratch. */
static void knn_forward(int32_t *nb, float *dk, const float *xy, int M, const int32_t *fps, int S, int K) {
    for (int s = 0; s < S; s++) {
        const float *a = xy + 2 * (size_t)fps[s];
        int32_t *row = nb + (size_t)s * K;
        int n = 0;
        for (int j = 0; j < M; j++) {
            const float d = dist2(xy + 2 * (size_t)j, a);
            if (n == K && !(d < dk[K - 1])) continue;
            int pos = n < K ? n++ : K - 1;
            while (pos > 0 && dk[pos - 1] > d) {
                dk[pos] = dk[pos - 1];
                row[pos] = row[pos - 1];
                pos--;
            }
            dk[pos] = d;
            row[pos] = j;
        }
    }
}

/* local (S·K, C+2) = [fea_nb − fea_a, xy_nb − xy_a] for every anchor a and
 * neighbour nb. */
static void group_forward(float *local, const float *xy, const float *fea, const int32_t *fps, const int32_t *nb, int S,
                          int K, int C) {
    const int D = C + 2;
    for (int s = 0; s < S; s++) {
        const float *fa = fea + (size_t)fps[s] * C, *xa = xy + 2 * (size_t)fps[s];
        for (int k = 0; k < K; k++) {
            const int j = nb[(size_t)s * K + k];
            const float *fj = fea + (size_t)j * C, *xj = xy + 2 * (size_t)j;
            float *o = local + ((size_t)s * K + k) * D;
            for (int c = 0; c < C; c++) o[c] = fj[c] - fa[c];
            o[C] = xj[0] - xa[0];
            o[C + 1] = xj[1] - xa[1];
        }
    }
}

/* gather (S·K, 2(C+2)) = [diff row, fea_a, xy_a]. */
static void concat_forward(float *gather, const float *diff, const float *xy, const float *fea, const int32_t *fps,
                           int S, int K, int C) {
    const int D = C + 2;
    for (int s = 0; s < S; s++) {
        const float *fa = fea + (size_t)fps[s] * C, *xa = xy + 2 * (size_t)fps[s];
        for (int k = 0; k < K; k++) {
            const size_t r = (size_t)s * K + k;
            float *o = gather + r * 2 * D;
            memcpy(o, diff + r * D, (size_t)D * sizeof *o);
            memcpy(o + D, fa, (size_t)C * sizeof *o);
            o[D + C] = xa[0];
            o[D + C + 1] = xa[1];
        }
    }
}

/* x (n, C) in place: ReLU then LayerNorm(w, b, eps) per row. */
static void relu_layernorm_forward(float *x, const float *w, const float *b, int64_t n, int C, float eps) {
    for (int64_t r = 0; r < n; r++) {
        float *row = x + r * C;
        for (int c = 0; c < C; c++) row[c] = row[c] > 0.0f ? row[c] : 0.0f;
        lp_layernorm(row, row, w, b, C, eps);
    }
}

/* out (S, C) = max or mean over K of h (S, K, C). */
static void pool_forward(float *out, const float *h, int S, int K, int C, lp_region_pool mode) {
    for (int s = 0; s < S; s++) {
        float *o = out + (size_t)s * C;
        const float *hs = h + (size_t)s * K * C;
        memcpy(o, hs, (size_t)C * sizeof *o);
        for (int k = 1; k < K; k++) {
            const float *v = hs + (size_t)k * C;
            if (mode == LP_REGION_POOL_MAX) {
                for (int c = 0; c < C; c++) o[c] = v[c] > o[c] ? v[c] : o[c];
            } else {
                for (int c = 0; c < C; c++) o[c] += v[c];
            }
        }
        if (mode == LP_REGION_POOL_MEAN)
            for (int c = 0; c < C; c++) o[c] /= (float)K;
    }
}

typedef struct stage_bufs {
    int32_t *fps;  /* (S)            */
    int32_t *nb;   /* (S, K)         */
    float *best;   /* (M) FPS scratch */
    float *dk;     /* (K) kNN scratch */
    float *local;  /* (S·K, C+2)     */
    float *diff;   /* (S·K, C+2)     */
    float *gather; /* (S·K, 2(C+2))  */
    float *agg;    /* (S·K, C)       */
} stage_bufs;

/* One stage: (xy (M,2), fea (M,C)) -> (xy_out (S,2), fea_out (S,C)). */
static loupe_status stage_forward(const lp_region_sampler *rs, int s, const float *xy, const float *fea, int M,
                                  float *xy_out, float *fea_out, stage_bufs *b, lp_pool *pool, lp_error *err) {
    const lp_region_stage *st = &rs->st[s];
    const int S = st->n_sub, K = st->n_nb, C = rs->in_dim, D = C + 2;
    const int rows = S * K;
    loupe_status e;
    fps_forward(b->fps, b->best, xy, M, S);
    dump(rs, "fps", s, LP_TYPE_I32, b->fps, S);
    knn_forward(b->nb, b->dk, xy, M, b->fps, S, K);
    dump(rs, "knn", s, LP_TYPE_I32, b->nb, (int64_t)rows);
    group_forward(b->local, xy, fea, b->fps, b->nb, S, K, C);
    if ((e = lp_dense_forward(&st->diff, rs->ws, b->local, b->diff, rows, LP_DENSE_ROUND_NONE, NULL, pool, err)))
        return e;
    dump(rs, "diff", s, LP_TYPE_F32, b->diff, (int64_t)rows * D);
    concat_forward(b->gather, b->diff, xy, fea, b->fps, S, K, C);
    if ((e = lp_dense_forward(&st->agg, rs->ws, b->gather, b->agg, rows, LP_DENSE_ROUND_NONE, NULL, pool, err)))
        return e;
    relu_layernorm_forward(b->agg, st->ln_w, st->ln_b, rows, C, rs->eps);
    dump(rs, "agg", s, LP_TYPE_F32, b->agg, (int64_t)rows * C);
    pool_forward(fea_out, b->agg, S, K, C, rs->pool_mode);
    dump(rs, "out", s, LP_TYPE_F32, fea_out, (int64_t)S * C);
    for (int i = 0; i < S; i++) {
        xy_out[2 * i + 0] = xy[2 * (size_t)b->fps[i] + 0];
        xy_out[2 * i + 1] = xy[2 * (size_t)b->fps[i] + 1];
    }
    return LOUPE_OK;
}

loupe_status lp_region_sampler_forward(const lp_region_sampler *rs, const float *features, int n_side, const float *xy,
                                       int n_points, float *out, lp_pool *pool, lp_error *err) {
    if (!rs || !features || !xy || !out)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_sampler_forward: missing argument");
    if (n_side < 1 || (int64_t)n_side * n_side > (1 << 24))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region sampler: bad feature grid side %d", n_side);
    if (n_points < rs->st[0].n_sub || n_points < rs->st[0].n_nb || n_points > LP_REGION_MAX_POINTS)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region sampler: %d points, expected %d..%d", n_points,
                       rs->st[0].n_sub > rs->st[0].n_nb ? rs->st[0].n_sub : rs->st[0].n_nb, LP_REGION_MAX_POINTS);
    for (int i = 0; i < 2 * n_points; i++)
        if (!(xy[i] >= 0.0f && xy[i] <= 1.0f))
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "region sampler: point %d coordinate %g is outside [0, 1]", i / 2,
                           xy[i]);
    const int C = rs->in_dim, D = C + 2;
    size_t max_rows = 0, max_s = 0, max_k = 0;
    for (int s = 0; s < rs->n_stages; s++) {
        const size_t r = (size_t)rs->st[s].n_sub * rs->st[s].n_nb;
        if (r > max_rows) max_rows = r;
        if ((size_t)rs->st[s].n_sub > max_s) max_s = (size_t)rs->st[s].n_sub;
        if ((size_t)rs->st[s].n_nb > max_k) max_k = (size_t)rs->st[s].n_nb;
    }
    const size_t P = (size_t)n_points;
    /* float buffers, carved from one block */
    const size_t n_f = P * C            /* fea_a (P, C)            */
                       + max_s * C      /* fea_b (S0, C)           */
                       + P * 2          /* xy_a (P, 2)             */
                       + max_s * 2      /* xy_b (S0, 2)            */
                       + P              /* best (P)                */
                       + max_k          /* dk (K)                  */
                       + max_rows * D   /* local                   */
                       + max_rows * D   /* diff                    */
                       + max_rows * 2 * D /* gather                */
                       + max_rows * C   /* agg                     */
                       + (size_t)C;     /* flat projection (C)     */
    float *fb = malloc(n_f * sizeof(float));
    int32_t *ib = malloc((max_s + max_rows) * sizeof(int32_t));
    if (!fb || !ib) {
        free(fb);
        free(ib);
        return lp_fail(err, LOUPE_ERR_NOMEM, "region sampler: out of memory");
    }
    float *p = fb;
    float *fea_a = p;   p += P * C;
    float *fea_b = p;   p += max_s * C;
    float *xy_a = p;    p += P * 2;
    float *xy_b = p;    p += max_s * 2;
    stage_bufs b;
    b.best = p;         p += P;
    b.dk = p;           p += max_k;
    b.local = p;        p += max_rows * D;
    b.diff = p;         p += max_rows * D;
    b.gather = p;       p += max_rows * 2 * D;
    b.agg = p;          p += max_rows * C;
    float *flat = p;    /* (C) */
    b.fps = ib;
    b.nb = ib + max_s;

    loupe_status e = LOUPE_OK;
    memcpy(xy_a, xy, P * 2 * sizeof(float));
    sample_forward(fea_a, features, xy_a, n_points, n_side, C, rs->transpose);
    dump(rs, "point_fea", -1, LP_TYPE_F32, fea_a, (int64_t)P * C);

    /* stages ping-pong between the (a) and (b) buffers */
    const float *cxy = xy_a, *cfea = fea_a;
    int M = n_points;
    for (int s = 0; s < rs->n_stages && e == LOUPE_OK; s++) {
        float *nxy = cxy == xy_a ? xy_b : xy_a, *nfea = cfea == fea_a ? fea_b : fea_a;
        e = stage_forward(rs, s, cxy, cfea, M, nxy, nfea, &b, pool, err);
        cxy = nxy;
        cfea = nfea;
        M = rs->st[s].n_sub;
    }
    if (e == LOUPE_OK) e = lp_dense_forward(&rs->flatten, rs->ws, cfea, flat, 1, LP_DENSE_ROUND_NONE, NULL, pool, err);
    if (e == LOUPE_OK) {
        dump(rs, "flatten", -1, LP_TYPE_F32, flat, C);
        e = lp_dense_forward(&rs->proj, rs->ws, flat, out, 1, LP_DENSE_ROUND_NONE, NULL, pool, err);
    }
    if (e == LOUPE_OK) dump(rs, "out", -1, LP_TYPE_F32, out, rs->out_dim);
    free(fb);
    free(ib);
    return e;
}

loupe_status lp_region_embed(const lp_region_sampler *rs, const float *features, int n_side, const lp_region *region,
                             uint64_t seed, float *out, lp_pool *pool, lp_error *err) {
    if (!rs) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_embed: no sampler");
    float *xy = malloc((size_t)rs->n_points * 2 * sizeof *xy); // (num_points, 2)
    if (!xy) return lp_fail(err, LOUPE_ERR_NOMEM, "region sampler: out of memory");
    loupe_status e = lp_region_sample_points(region, rs->n_points, seed, xy, err);
    if (e == LOUPE_OK) e = lp_region_sampler_forward(rs, features, n_side, xy, rs->n_points, out, pool, err);
    free(xy);
    return e;
}

/* ------------------------------------------------------------------------ */
/* region text                                                               */

int lp_region_quantize(double v, int size) {
    if (size <= 0 || !isfinite(v)) return 0;
    const double q = v * (1000.0 / (double)size);
    if (!(q > 0.0)) return 0;
    if (q >= 999.0) return 999;
    return (int)q; /* truncation, as Python's int() */
}

static loupe_status format_coords(const double *v, int n, int img_w, int img_h, char *buf, size_t cap, lp_error *err) {
    if (!buf || cap == 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_format: no output buffer");
    buf[0] = '\0';
    if (img_w <= 0 || img_h <= 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_format: bad image size %dx%d", img_w, img_h);
    int q[4];
    for (int i = 0; i < n; i++) {
        if (!isfinite(v[i])) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_format: coordinate %d is not finite", i);
        q[i] = lp_region_quantize(v[i], i % 2 == 0 ? img_w : img_h);
    }
    int len = n == 4 ? snprintf(buf, cap, "[%d, %d, %d, %d]", q[0], q[1], q[2], q[3])
                     : snprintf(buf, cap, "[%d, %d]", q[0], q[1]);
    if (len < 0 || (size_t)len >= cap) {
        buf[0] = '\0';
        return lp_fail(err, LOUPE_ERR_LIMIT, "lp_region_format: %zu bytes is too small a buffer", cap);
    }
    return LOUPE_OK;
}

loupe_status lp_region_format(const double box[4], int img_w, int img_h, char *buf, size_t cap, lp_error *err) {
    if (!box) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_format: no box");
    return format_coords(box, 4, img_w, img_h, buf, cap, err);
}

loupe_status lp_region_format_point(const double pt[2], int img_w, int img_h, char *buf, size_t cap, lp_error *err) {
    if (!pt) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_region_format_point: no point");
    return format_coords(pt, 2, img_w, img_h, buf, cap, err);
}
