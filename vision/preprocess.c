/* vision/preprocess.c — CLIP input preprocessing: llama.cpp's fixed-size
 * path and the PyTorch/PIL paths. What each mode does, and where llama.cpp's
 * resize departs from Pillow's, is documented in preprocess.h. */
#include "preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The llama.cpp expressions below must be evaluated as written (no FMA). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static loupe_status check_img(const lp_image *img, lp_error *err) {
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: empty image");
    }
    return LOUPE_OK;
}

loupe_status lp_resize_llamacpp_bicubic(const lp_image *src, lp_image *dst, int tw, int th, lp_error *err) {
    memset(dst, 0, sizeof *dst);
    loupe_status st = check_img(src, err);
    if (st != LOUPE_OK) return st;
    if (tw <= 0 || th <= 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: bad target size %dx%d", tw, th);
    st = lp_image_alloc(dst, tw, th, err);
    if (st != LOUPE_OK) return st;

    const int nx = src->w, ny = src->h;
    const float tx = (float)nx / (float)tw; /* source step per output pixel */
    const float ty = (float)ny / (float)th;
    for (int i = 0; i < th; i++) {
        const int y = (int)(ty * (float)i);
        const float dy = ty * (float)i - (float)y;
        for (int j = 0; j < tw; j++) {
            const int x = (int)(tx * (float)j);
            const float dx = tx * (float)j - (float)x;
            const int xm1 = clampi(x - 1, 0, nx - 1), x0 = clampi(x, 0, nx - 1);
            const int xp1 = clampi(x + 1, 0, nx - 1), xp2 = clampi(x + 2, 0, nx - 1);
            uint8_t *o = dst->rgb + ((size_t)i * (size_t)tw + (size_t)j) * 3;
            for (int k = 0; k < 3; k++) {
                float C[4];
                /* horizontal cubic through the 4 taps of each of 4 rows */
                for (int r = 0; r < 4; r++) {
                    const uint8_t *row = src->rgb + (size_t)clampi(y - 1 + r, 0, ny - 1) * (size_t)nx * 3;
                    const int p0 = row[x0 * 3 + k];
                    const float d0 = (float)(row[xm1 * 3 + k] - p0);
                    const float d2 = (float)(row[xp1 * 3 + k] - p0);
                    const float d3 = (float)(row[xp2 * 3 + k] - p0);
                    const float a0 = (float)p0;
                    /* coefficients evaluated in double, stored in f32, like llama.cpp */
                    const float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
                    const float a2 = (float)(1.0 / 2 * d0 + 1.0 / 2 * d2);
                    const float a3 = (float)(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3);
                    C[r] = a0 + a1 * dx + a2 * dx * dx + a3 * dx * dx * dx;
                }
                /* vertical cubic through the 4 row results */
                const float d0 = C[0] - C[1];
                const float d2 = C[2] - C[1];
                const float d3 = C[3] - C[1];
                const float a0 = C[1];
                const float a1 = (float)(-1.0 / 3 * d0 + d2 - 1.0 / 6 * d3);
                const float a2 = (float)(1.0 / 2 * d0 + 1.0 / 2 * d2);
                const float a3 = (float)(-1.0 / 6 * d0 - 1.0 / 2 * d2 + 1.0 / 6 * d3);
                const float c = a0 + a1 * dy + a2 * dy * dy + a3 * dy * dy * dy;
                o[k] = (uint8_t)fminf(fmaxf(roundf(c), 0.0f), 255.0f);
            }
        }
    }
    return LOUPE_OK;
}

loupe_status lp_resize_llamacpp_bilinear(const lp_image *src, lp_image *dst, int tw, int th, lp_error *err) {
    memset(dst, 0, sizeof *dst);
    loupe_status st = check_img(src, err);
    if (st != LOUPE_OK) return st;
    if (tw <= 0 || th <= 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: bad target size %dx%d", tw, th);
    if ((st = lp_image_alloc(dst, tw, th, err))) return st;
    const int sw = src->w, sh = src->h;
    /* corners map to corners: source step (n - 1) / (t - 1), in f32 */
    const float xr = tw > 1 ? (float)(sw - 1) / (float)(tw - 1) : 0.0f;
    const float yr = th > 1 ? (float)(sh - 1) / (float)(th - 1) : 0.0f;
    for (int y = 0; y < th; y++) {
        const float py = (float)y * yr;
        const int y0 = (int)py < sh - 1 ? (int)py : sh - 1, y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
        const float yf = py - (float)y0;
        for (int x = 0; x < tw; x++) {
            const float px = (float)x * xr;
            const int x0 = (int)px < sw - 1 ? (int)px : sw - 1, x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
            const float xf = px - (float)x0;
            const uint8_t *p00 = src->rgb + ((size_t)y0 * sw + x0) * 3, *p10 = src->rgb + ((size_t)y0 * sw + x1) * 3;
            const uint8_t *p01 = src->rgb + ((size_t)y1 * sw + x0) * 3, *p11 = src->rgb + ((size_t)y1 * sw + x1) * 3;
            uint8_t *o = dst->rgb + ((size_t)y * tw + x) * 3;
            for (int c = 0; c < 3; c++) {
                const float top = (float)p00[c] + ((float)p10[c] - (float)p00[c]) * xf;
                const float bot = (float)p01[c] + ((float)p11[c] - (float)p01[c]) * xf;
                o[c] = (uint8_t)(top + (bot - top) * yf); /* truncation, as llama.cpp's cast */
            }
        }
    }
    return LOUPE_OK;
}

void lp_image_fill(lp_image *img, const uint8_t c[3]) {
    size_t n = (size_t)img->w * (size_t)img->h;
    for (size_t i = 0; i < n; i++) memcpy(img->rgb + i * 3, c, 3);
}

void lp_image_paste(lp_image *dst, const lp_image *src, int ox, int oy) {
    for (int y = 0; y < src->h; y++) {
        int dy = y + oy;
        if (dy < 0 || dy >= dst->h) continue;
        for (int x = 0; x < src->w; x++) {
            int dx = x + ox;
            if (dx < 0 || dx >= dst->w) continue;
            memcpy(dst->rgb + ((size_t)dy * dst->w + dx) * 3, src->rgb + ((size_t)y * src->w + x) * 3, 3);
        }
    }
}

void lp_prep_geom_set(lp_prep_geom *g, double sx, double sy, double ox, double oy, int cx, int cy, int cw, int ch) {
    if (!g) return;
    g->scale_x = sx;
    g->scale_y = sy;
    g->off_x = ox;
    g->off_y = oy;
    g->content_x = cx;
    g->content_y = cy;
    g->content_w = cw;
    g->content_h = ch;
}

void lp_fit_inside_rect(int w, int h, int W, int H, int *nw, int *nh) {
    /* PAD_CEIL sizing, in f32 like llama.cpp */
    const float sw = (float)W / (float)w, sh = (float)H / (float)h;
    const float scale = sw < sh ? sw : sh;
    int x = (int)ceilf((float)w * scale), y = (int)ceilf((float)h * scale);
    *nw = x > W ? W : x < 1 ? 1 : x;
    *nh = y > H ? H : y < 1 ? 1 : y;
}

void lp_fit_inside(int w, int h, int S, int *nw, int *nh) { lp_fit_inside_rect(w, h, S, S, nw, nh); }

static loupe_status prep_llamacpp(const lp_image *img, int S, lp_image *dst, lp_prep_geom *geom, lp_error *err) {
    const int w = img->w, h = img->h;
    if (w == S && h == S) {
        lp_prep_geom_set(geom, 1.0, 1.0, 0.0, 0.0, 0, 0, S, S);
        return lp_image_from_rgb(img->rgb, w, h, (size_t)w * 3, dst, err);
    }
    int nw, nh;
    lp_fit_inside(w, h, S, &nw, &nh);
    lp_image resized;
    loupe_status st = lp_resize_llamacpp_bicubic(img, &resized, nw, nh, err);
    if (st != LOUPE_OK) return st;
    st = lp_image_alloc(dst, S, S, err);
    if (st != LOUPE_OK) {
        lp_image_free(&resized);
        return st;
    }
    static const uint8_t pad[3] = {122, 116, 104}; /* llama.cpp's image_pad_color for llava */
    lp_image_fill(dst, pad);
    const int ox = (S - nw) / 2, oy = (S - nh) / 2;
    lp_image_paste(dst, &resized, ox, oy);
    lp_image_free(&resized);
    lp_prep_geom_set(geom, (double)nw / w, (double)nh / h, ox, oy, ox, oy, nw, nh);
    return LOUPE_OK;
}

static loupe_status prep_pad_pil(const lp_image *img, int S, const float mean[3], lp_image *dst, lp_prep_geom *geom,
                                 lp_error *err) {
    const int w = img->w, h = img->h;
    const int M = w > h ? w : h;
    lp_image sq;
    loupe_status st = lp_image_alloc(&sq, M, M, err);
    if (st != LOUPE_OK) return st;
    uint8_t bg[3];
    for (int c = 0; c < 3; c++) {
        double v = (double)mean[c] * 255.0; /* Python int(x*255): truncation */
        bg[c] = (uint8_t)(v < 0.0 ? 0 : (v > 255.0 ? 255 : (int)v));
    }
    lp_image_fill(&sq, bg);
    const int px = (M - w) / 2, py = (M - h) / 2;
    lp_image_paste(&sq, img, px, py);
    st = lp_image_resize(&sq, dst, S, S, LP_RESAMPLE_BICUBIC, err);
    lp_image_free(&sq);
    if (st != LOUPE_OK) return st;
    const double s = (double)S / M;
    lp_prep_geom_set(geom, s, s, px * s, py * s, (int)floor(px * s), (int)floor(py * s), (int)ceil(w * s), (int)ceil(h * s));
    return LOUPE_OK;
}

loupe_status lp_preprocess_rgb(const lp_image *img, int S, const float mean[3], lp_prep_mode mode, lp_image *dst,
                               lp_prep_geom *geom, lp_error *err) {
    memset(dst, 0, sizeof *dst);
    loupe_status st = check_img(img, err);
    if (st != LOUPE_OK) return st;
    if (S <= 0 || S > LP_IMAGE_MAX_DIM) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: bad size %d", S);
    switch (mode) {
    case LP_PREP_LLAMACPP:
        return prep_llamacpp(img, S, dst, geom, err);
    case LP_PREP_PAD_PIL:
        if (!mean) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: pad mode needs the mean colour");
        return prep_pad_pil(img, S, mean, dst, geom, err);
    case LP_PREP_SQUASH_PIL:
        st = lp_image_resize(img, dst, S, S, LP_RESAMPLE_BICUBIC, err);
        if (st == LOUPE_OK) lp_prep_geom_set(geom, (double)S / img->w, (double)S / img->h, 0.0, 0.0, 0, 0, S, S);
        return st;
    }
    return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: unknown mode %d", (int)mode);
}

loupe_status lp_preprocess_image(const lp_image *img, int S, const float mean[3], const float std[3],
                                 lp_prep_mode mode, float *out, lp_prep_geom *geom, lp_error *err) {
    if (!mean || !std || !out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: NULL argument");
    for (int c = 0; c < 3; c++) {
        if (!(std[c] != 0.0f) || !isfinite(std[c]) || !isfinite(mean[c])) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "preprocess: bad mean/std for channel %d", c);
        }
    }
    lp_image sq;
    loupe_status st = lp_preprocess_rgb(img, S, mean, mode, &sq, geom, err);
    if (st != LOUPE_OK) return st;
    const size_t n = (size_t)S * (size_t)S;
    for (int c = 0; c < 3; c++) {
        float *plane = out + (size_t)c * n; // (S, S)
        for (size_t i = 0; i < n; i++) {
            const uint8_t u = sq.rgb[i * 3 + (size_t)c];
            float v;
            if (mode == LP_PREP_LLAMACPP) {
                v = (float)u / 255.0f;                      /* clip_image_f32::from_u8 */
            } else {
                v = (float)((double)u * (1.0 / 255.0));     /* transformers rescale()   */
            }
            plane[i] = (v - mean[c]) / std[c];
        }
    }
    lp_image_free(&sq);
    return LOUPE_OK;
}
