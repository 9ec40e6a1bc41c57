/* vision/tiles.c — InternVL's dynamic tiling, the reference rule and
 * llama.cpp's (both described in tiles.h). */
#include "tiles.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's f32 expressions are evaluated as written (no FMA). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* InternVL's find_closest_aspect_ratio over ratios ordered by area. */
static void plan_reference(int w, int h, int S, int lo, int hi, int *gx, int *gy) {
    const double aspect = (double)w / (double)h, area = (double)w * (double)h;
    double best = INFINITY;
    int bx = 1, by = 1;
    for (int n = lo; n <= hi; n++) {        /* ascending area i·j = n ...       */
        for (int i = 1; i <= n; i++) {      /* ... every (i, j) with that area  */
            if (n % i) continue;
            const int j = n / i;
            const double diff = fabs(aspect - (double)i / (double)j);
            if (diff < best) {
                best = diff;
                bx = i;
                by = j;
            } else if (diff == best && area > 0.5 * (double)S * (double)S * (double)i * (double)j) {
                bx = i;
                by = j;
            }
        }
    }
    *gx = bx;
    *gy = by;
}

/* llama.cpp's select_best_resolution over its InternVL candidates. */
static void plan_llamacpp(int w, int h, int S, int lo, int hi, int *gx, int *gy) {
    long long best_eff = 0, best_waste = 0;
    int bx = 0, by = 0;
    for (int a = lo; a <= hi; a++) {
        int b_lo = (lo + a - 1) / a, b_hi = hi / a;
        if (b_lo < lo) b_lo = lo;
        for (int b = b_lo; b <= b_hi; b++) {
            const int cw = a * S, ch = b * S;
            const float sw = (float)cw / (float)w, sh = (float)ch / (float)h;
            const float s = sw < sh ? sw : sh;
            const long long tw = (long long)((float)w * s), th = (long long)((float)h * s);
            long long eff = tw * th;
            if (eff > (long long)w * h) eff = (long long)w * h;
            const long long waste = (long long)cw * ch - eff;
            if (eff > best_eff || (eff == best_eff && waste < best_waste)) {
                best_eff = eff;
                best_waste = waste;
                bx = a;
                by = b;
            }
        }
    }
    *gx = bx;
    *gy = by;
}

loupe_status lp_tiles_plan(int w, int h, int S, int lo, int hi, lp_prep_mode mode, lp_tile_plan *p, lp_error *err) {
    memset(p, 0, sizeof *p);
    if (w <= 0 || h <= 0 || w > LP_IMAGE_MAX_DIM || h > LP_IMAGE_MAX_DIM || S <= 0 || S > LP_IMAGE_MAX_DIM)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "tiles: bad size %dx%d (tile %d)", w, h, S);
    if (lo < 1 || hi < lo || hi > LP_TILES_MAX)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "tiles: bad tile limits %d..%d (1 <= min <= max <= %d)", lo, hi,
                       LP_TILES_MAX);
    int gx = 0, gy = 0;
    if (mode == LP_PREP_LLAMACPP) {
        if (w <= S && h <= S) { /* overview only */
            p->n_tiles = 1;
            p->thumbnail = true;
            p->content_w = p->canvas_w = S;
            p->content_h = p->canvas_h = S;
            return LOUPE_OK;
        }
        plan_llamacpp(w, h, S, lo, hi, &gx, &gy);
        if (gx == 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "tiles: no candidate grid for %dx%d", w, h);
        p->canvas_w = gx * S;
        p->canvas_h = gy * S;
        lp_fit_inside_rect(w, h, p->canvas_w, p->canvas_h, &p->content_w, &p->content_h);
        p->off_x = (p->canvas_w - p->content_w) / 2;
        p->off_y = (p->canvas_h - p->content_h) / 2;
        p->grid_x = gx;
        p->grid_y = gy;
        p->thumbnail = true;
        p->n_tiles = gx * gy + 1;
        return LOUPE_OK;
    }
    plan_reference(w, h, S, lo, hi, &gx, &gy);
    p->grid_x = gx;
    p->grid_y = gy;
    p->content_w = p->canvas_w = gx * S;
    p->content_h = p->canvas_h = gy * S;
    p->thumbnail = gx * gy != 1;
    p->n_tiles = gx * gy + (p->thumbnail ? 1 : 0);
    return LOUPE_OK;
}

static loupe_status crop(const lp_image *src, int x, int y, int S, lp_image *dst, lp_error *err) {
    loupe_status st = lp_image_alloc(dst, S, S, err);
    if (st) return st;
    for (int r = 0; r < S; r++)
        memcpy(dst->rgb + (size_t)r * S * 3, src->rgb + ((size_t)(y + r) * src->w + x) * 3, (size_t)S * 3);
    return LOUPE_OK;
}

/* The canvas_w × canvas_h image the grid tiles are cut from. */
static loupe_status make_canvas(const lp_image *img, const lp_tile_plan *p, lp_prep_mode mode, lp_image *canvas,
                                lp_error *err) {
    if (p->canvas_w == img->w && p->canvas_h == img->h)
        return lp_image_from_rgb(img->rgb, img->w, img->h, (size_t)img->w * 3, canvas, err);
    if (mode != LP_PREP_LLAMACPP)
        return lp_image_resize(img, canvas, p->canvas_w, p->canvas_h, LP_RESAMPLE_BICUBIC, err);
    lp_image fit;
    loupe_status st = lp_resize_llamacpp_bicubic(img, &fit, p->content_w, p->content_h, err);
    if (st) return st;
    if (!(st = lp_image_alloc(canvas, p->canvas_w, p->canvas_h, err))) {
        static const uint8_t black[3] = {0, 0, 0}; /* llama.cpp's image_pad_color_rf default */
        lp_image_fill(canvas, black);
        lp_image_paste(canvas, &fit, p->off_x, p->off_y);
    }
    lp_image_free(&fit);
    return st;
}

loupe_status lp_tiles_rgb(const lp_image *img, int S, int lo, int hi, lp_prep_mode mode, lp_image *tiles,
                          lp_tile_plan *plan, lp_error *err) {
    if (!img || !img->rgb || !tiles || !plan) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "tiles: NULL argument");
    loupe_status st = lp_tiles_plan(img->w, img->h, S, lo, hi, mode, plan, err);
    if (st) return st;
    const int n_grid = plan->grid_x * plan->grid_y;
    memset(tiles, 0, (size_t)plan->n_tiles * sizeof *tiles);
    if (n_grid > 0) {
        lp_image canvas;
        if ((st = make_canvas(img, plan, mode, &canvas, err))) return st;
        for (int t = 0; t < n_grid && !st; t++)
            st = crop(&canvas, (t % plan->grid_x) * S, (t / plan->grid_x) * S, S, &tiles[t], err);
        lp_image_free(&canvas);
    }
    if (!st && plan->thumbnail) {
        lp_image *th = &tiles[plan->n_tiles - 1];
        if (img->w == S && img->h == S) st = lp_image_from_rgb(img->rgb, S, S, (size_t)S * 3, th, err);
        else if (mode == LP_PREP_LLAMACPP) st = lp_resize_llamacpp_bilinear(img, th, S, S, err);
        else st = lp_image_resize(img, th, S, S, LP_RESAMPLE_BICUBIC, err);
    }
    if (st)
        for (int t = 0; t < plan->n_tiles; t++) lp_image_free(&tiles[t]);
    return st;
}

loupe_status lp_tiles_pixels(const lp_image *img, int S, int lo, int hi, lp_prep_mode mode, const float mean[3],
                             const float std[3], float *out, lp_tile_plan *plan, lp_error *err) {
    if (!mean || !std || !out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "tiles: NULL argument");
    lp_image tiles[LP_TILES_MAX + 1];
    loupe_status st = lp_tiles_rgb(img, S, lo, hi, mode, tiles, plan, err);
    if (st) return st;
    const size_t n = (size_t)S * S;
    for (int t = 0; t < plan->n_tiles; t++) {
        float *o = out + (size_t)t * 3 * n; // (3, S, S)
        for (int c = 0; c < 3; c++)
            for (size_t i = 0; i < n; i++)
                o[(size_t)c * n + i] = ((float)tiles[t].rgb[i * 3 + (size_t)c] / 255.0f - mean[c]) / std[c];
        lp_image_free(&tiles[t]);
    }
    return LOUPE_OK;
}
