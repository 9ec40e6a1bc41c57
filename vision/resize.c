/* vision/resize.c — separable resampling, bit-exact with Pillow's
 * Image.resize() for 8-bit RGB with BILINEAR and BICUBIC.
 *
 * Exactness depends on doing the same arithmetic in the same order as
 * Pillow (libImaging/Resample.c, unchanged in this respect from 4.x to 11.x):
 *   - per output pixel, the source window is centred at (i + 0.5) * scale,
 *     and when downscaling the filter is stretched by the scale factor
 *     (antialiasing), so its support grows to support * scale;
 *   - window ends are rounded with (int)(v + 0.5), i.e. truncation;
 *   - weights are evaluated in double, summed in order, divided by the sum,
 *     then rounded half away from zero to 22-bit fixed point
 *     (PRECISION_BITS = 32 - 8 - 2: 8 bits of pixel, 2 of headroom for
 *     bicubic's negative lobes);
 *   - accumulators start at 0.5 in fixed point and the result is the
 *     accumulator shifted down and clamped to 0..255;
 *   - the horizontal pass runs first, over only the source rows that the
 *     vertical pass will read, then the vertical pass; a pass whose size does
 *     not change is skipped (it would be the identity anyway).
 * Accumulators here are 64-bit where Pillow's are int: identical whenever
 * Pillow's do not overflow, and free of undefined behaviour when fuzzed.
 *
 * Floating-point contraction (a*b+c -> fma) would change the weights in the
 * last bit; gcc keeps it off under -std=c11, and the pragma covers clang. */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define PRECISION_BITS (32 - 8 - 2)

static double tri(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Keys' cubic convolution with a = -0.5, written term for term as Pillow
 * evaluates it so the doubles round identically. */
static double cubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Fixed-point weights for one axis: output i reads n[i] source samples
 * starting at first[i], with weights k[i*ksize ...]. */
typedef struct axis {
    int ksize;
    int *first, *n;
    int32_t *k;
} axis;

static void axis_free(axis *a) {
    free(a->first);
    free(a->n);
    free(a->k);
    a->first = a->n = NULL;
    a->k = NULL;
}

static int axis_init(axis *a, int in_size, int out_size, lp_resample filter) {
    double (*f)(double) = filter == LP_RESAMPLE_BICUBIC ? cubic : tri;
    double fsupport = filter == LP_RESAMPLE_BICUBIC ? 2.0 : 1.0;

    /* Pillow computes the scale from float box edges; for sizes below 2^24
     * (ours are below 2^15) the float subtraction is exact. */
    double scale = (double)in_size / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = fsupport * fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double ss = 1.0 / fscale;

    memset(a, 0, sizeof *a);
    a->ksize = ksize;
    a->first = malloc((size_t)out_size * sizeof *a->first);
    a->n = malloc((size_t)out_size * sizeof *a->n);
    a->k = calloc((size_t)out_size * (size_t)ksize, sizeof *a->k);
    double *w = malloc((size_t)ksize * sizeof *w);
    if (!a->first || !a->n || !a->k || !w) {
        free(w);
        axis_free(a);
        return -1;
    }
    for (int i = 0; i < out_size; i++) {
        double center = (i + 0.5) * scale;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        if (n < 0) n = 0;
        if (n > ksize) n = ksize; /* cannot happen: the window is 2*support+1 wide */
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            w[j] = f((j + lo - center + 0.5) * ss);
            sum += w[j];
        }
        int32_t *k = a->k + (size_t)i * ksize;
        for (int j = 0; j < n; j++) {
            double v = sum != 0.0 ? w[j] / sum : w[j];
            k[j] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        a->first[i] = lo;
        a->n[i] = n;
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int64_t v) {
    if (v < 0) return 0;
    v >>= PRECISION_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

/* src rows [row0, row0 + rows) of width sw -> dst (rows x dw). */
static void pass_horizontal(const uint8_t *src, int sw, int row0, int rows, uint8_t *dst, int dw, const axis *ax) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)(row0 + y) * sw * 3;
        uint8_t *d = dst + (size_t)y * dw * 3;
        for (int x = 0; x < dw; x++) {
            const int32_t *k = ax->k + (size_t)x * ax->ksize;
            const uint8_t *p = s + (size_t)ax->first[x] * 3;
            int64_t r = 1 << (PRECISION_BITS - 1), g = r, b = r;
            for (int j = 0; j < ax->n[x]; j++) {
                r += (int64_t)p[j * 3 + 0] * k[j];
                g += (int64_t)p[j * 3 + 1] * k[j];
                b += (int64_t)p[j * 3 + 2] * k[j];
            }
            d[x * 3 + 0] = clip8(r);
            d[x * 3 + 1] = clip8(g);
            d[x * 3 + 2] = clip8(b);
        }
    }
}

/* Vertical pass, one output row at a time, summing whole source rows into a
 * row of accumulators: integer sums are order-independent, so this is exact
 * and walks memory linearly. ax->first is relative to src's first row. */
static void pass_vertical(const uint8_t *src, int w, uint8_t *dst, int dh, const axis *ax, int64_t *acc) {
    size_t rowlen = (size_t)w * 3;
    for (int y = 0; y < dh; y++) {
        const int32_t *k = ax->k + (size_t)y * ax->ksize;
        for (size_t i = 0; i < rowlen; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int j = 0; j < ax->n[y]; j++) {
            const uint8_t *s = src + (size_t)(ax->first[y] + j) * rowlen;
            int64_t kj = k[j];
            for (size_t i = 0; i < rowlen; i++) acc[i] += s[i] * kj;
        }
        uint8_t *d = dst + (size_t)y * rowlen;
        for (size_t i = 0; i < rowlen; i++) d[i] = clip8(acc[i]);
    }
}

loupe_status lp_image_resize(const lp_image *src, lp_image *dst, int w, int h, lp_resample filter, lp_error *err) {
    if (!dst) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "resize: NULL output image");
    dst->w = dst->h = 0;
    dst->rgb = NULL;
    if (!src || !src->rgb || src->w <= 0 || src->h <= 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "resize: empty source image");
    if (src->w > LP_IMAGE_MAX_DIM || src->h > LP_IMAGE_MAX_DIM)
        return lp_fail(err, LOUPE_ERR_LIMIT, "resize: source %dx%d over the limit", src->w, src->h);
    if (filter != LP_RESAMPLE_BILINEAR && filter != LP_RESAMPLE_BICUBIC)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "resize: unknown filter %d", (int)filter);
    if (w <= 0 || h <= 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "resize: invalid target size %dx%d", w, h);

    if (w > LP_IMAGE_MAX_DIM || h > LP_IMAGE_MAX_DIM || (long long)w * h > LP_IMAGE_MAX_PIXELS)
        return lp_fail(err, LOUPE_ERR_LIMIT, "resize: target %dx%d over the limit", w, h);
    if (lp_image_alloc(dst, w, h, NULL) != LOUPE_OK)
        return lp_fail(err, LOUPE_ERR_NOMEM, "resize: out of memory for a %dx%d image", w, h);

    int need_h = w != src->w, need_v = h != src->h;
    if (!need_h && !need_v) {
        memcpy(dst->rgb, src->rgb, (size_t)w * h * 3);
        return LOUPE_OK;
    }

    axis ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    int64_t *acc = NULL;
    if (axis_init(&ay, src->h, h, filter) != 0) goto nomem;

    /* Source rows the vertical pass reads: only those need horizontal work. */
    const uint8_t *vsrc = src->rgb;
    int vw = src->w;
    if (need_h) {
        int row0 = need_v ? ay.first[0] : 0;
        int row1 = need_v ? ay.first[h - 1] + ay.n[h - 1] : src->h;
        if (axis_init(&ax, src->w, w, filter) != 0) goto nomem;
        if (!need_v) {
            pass_horizontal(src->rgb, src->w, 0, src->h, dst->rgb, w, &ax);
            axis_free(&ax);
            axis_free(&ay);
            return LOUPE_OK;
        }
        tmp = malloc((size_t)w * (size_t)(row1 - row0) * 3);
        if (!tmp) goto nomem;
        pass_horizontal(src->rgb, src->w, row0, row1 - row0, tmp, w, &ax);
        for (int i = 0; i < h; i++) ay.first[i] -= row0;
        vsrc = tmp;
        vw = w;
    }
    acc = malloc((size_t)vw * 3 * sizeof *acc);
    if (!acc) goto nomem;
    pass_vertical(vsrc, vw, dst->rgb, h, &ay, acc);
    free(acc);
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
    return LOUPE_OK;

nomem:
    free(acc);
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
    lp_image_free(dst);
    return lp_fail(err, LOUPE_ERR_NOMEM, "resize: out of memory for %dx%d -> %dx%d", src->w, src->h, w, h);
}
