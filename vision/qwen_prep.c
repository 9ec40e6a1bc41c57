/* vision/qwen_prep.c — Qwen2/2.5-VL image preprocessing: the smart-resize
 * rule and the resized, normalized input, in llama.cpp's and in HF's
 * variant. What each step does, with its llama.cpp / transformers source, is
 * documented in qwen_vit.h. */
#include "qwen_vit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The llama.cpp expressions below are evaluated as written (no FMA). */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static int imax(int a, int b) { return a > b ? a : b; }

/* llama.cpp: img_tool::calc_size_preserved_ratio (mtmd-image.cpp), align f,
 * no longest_edge, every step in f32 as the C++ evaluates it. */
static void smart_resize_llamacpp(int w, int h, int f, int min_px, int max_px, int *ow, int *oh) {
    const float ff = (float)f;
    int wb = imax(f, (int)roundf((float)w / ff) * f);
    int hb = imax(f, (int)roundf((float)h / ff) * f);
    if (max_px > 0 && (int64_t)hb * wb > max_px) {
        const float beta = sqrtf((float)h * (float)w / (float)max_px);
        hb = imax(f, (int)floorf((float)h / beta / ff) * f);
        wb = imax(f, (int)floorf((float)w / beta / ff) * f);
    } else if (min_px > 0 && (int64_t)hb * wb < min_px) {
        const float beta = sqrtf((float)min_px / ((float)h * (float)w));
        hb = (int)ceilf((float)h * beta / ff) * f;
        wb = (int)ceilf((float)w * beta / ff) * f;
    }
    *ow = wb;
    *oh = hb;
}

/* transformers' smart_resize (Python floats are doubles; round() is
 * round-half-even, which rint gives in the default rounding mode). */
static void smart_resize_hf(int w, int h, int f, int min_px, int max_px, int *ow, int *oh) {
    const double fd = (double)f;
    int64_t hb = (int64_t)rint((double)h / fd) * f;
    int64_t wb = (int64_t)rint((double)w / fd) * f;
    if (max_px > 0 && hb * wb > max_px) {
        const double beta = sqrt((double)((int64_t)h * w) / (double)max_px);
        hb = (int64_t)floor((double)h / beta / fd) * f;
        wb = (int64_t)floor((double)w / beta / fd) * f;
        if (hb < f) hb = f; /* newer transformers clamp; v4.52 could return 0 here */
        if (wb < f) wb = f;
    } else if (min_px > 0 && hb * wb < min_px) {
        const double beta = sqrt((double)min_px / (double)((int64_t)h * w));
        hb = (int64_t)ceil((double)h * beta / fd) * f;
        wb = (int64_t)ceil((double)w * beta / fd) * f;
    }
    *ow = (int)wb;
    *oh = (int)hb;
}

loupe_status lp_qwen_vit_smart_resize(int w, int h, int factor, int min_pixels, int max_pixels, lp_qwen_prep_mode mode,
                                  int *out_w, int *out_h, lp_error *err) {
    if (!out_w || !out_h || factor <= 0 || factor > 4096 || w <= 0 || h <= 0 || w > LP_IMAGE_MAX_DIM ||
        h > LP_IMAGE_MAX_DIM) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen smart resize: bad arguments (image %dx%d, factor %d)", w, h,
                       factor);
    }
    if (min_pixels > 0 && max_pixels > 0 && min_pixels > max_pixels) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen smart resize: min_pixels %d exceeds max_pixels %d", min_pixels,
                       max_pixels);
    }
    int ow = 0, oh = 0;
    if (mode == LP_QWEN_PREP_LLAMACPP) {
        smart_resize_llamacpp(w, h, factor, min_pixels, max_pixels, &ow, &oh);
    } else if (mode == LP_QWEN_PREP_HF) {
        if (w < factor || h < factor) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG,
                           "qwen smart resize: %dx%d image: HF requires both sides >= %d (its smart_resize raises)", w, h,
                           factor);
        }
        const int lo = w < h ? w : h, hi = w < h ? h : w;
        if ((double)hi / (double)lo > 200.0) {
            return lp_fail(err, LOUPE_ERR_INVALID_ARG,
                           "qwen smart resize: %dx%d image: aspect ratio above 200 (HF's smart_resize raises)", w, h);
        }
        smart_resize_hf(w, h, factor, min_pixels, max_pixels, &ow, &oh);
    } else {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen smart resize: unknown mode %d", (int)mode);
    }
    if (ow <= 0 || oh <= 0 || ow > LP_IMAGE_MAX_DIM || oh > LP_IMAGE_MAX_DIM ||
        (int64_t)ow * oh > LP_IMAGE_MAX_PIXELS) {
        return lp_fail(err, LOUPE_ERR_LIMIT, "qwen smart resize: %dx%d image would become %dx%d, too large", w, h, ow,
                       oh);
    }
    *out_w = ow;
    *out_h = oh;
    return LOUPE_OK;
}

void lp_qwen_prep_map(int w, int h, int W, int H, lp_qwen_prep_mode mode, lp_prep_geom *map) {
    if (w == W && h == H) {
        lp_prep_geom_set(map, 1.0, 1.0, 0.0, 0.0, 0, 0, W, H);
    } else if (mode == LP_QWEN_PREP_HF) {
        lp_prep_geom_set(map, (double)W / w, (double)H / h, 0.0, 0.0, 0, 0, W, H);
    } else { /* llama.cpp: fitted inside, centred */
        int nw, nh;
        lp_fit_inside_rect(w, h, W, H, &nw, &nh);
        const int ox = (W - nw) / 2, oy = (H - nh) / 2;
        lp_prep_geom_set(map, (double)nw / w, (double)nh / h, ox, oy, ox, oy, nw, nh);
    }
}

loupe_status lp_qwen_prep_rgb(const lp_image *img, int W, int H, lp_qwen_prep_mode mode, lp_image *dst,
                              lp_prep_geom *map, lp_error *err) {
    memset(dst, 0, sizeof *dst);
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen preprocess: empty image");
    }
    if (W <= 0 || H <= 0 || W > LP_IMAGE_MAX_DIM || H > LP_IMAGE_MAX_DIM) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen preprocess: bad target size %dx%d", W, H);
    }
    const int w = img->w, h = img->h;
    if (mode != LP_QWEN_PREP_LLAMACPP && mode != LP_QWEN_PREP_HF) {
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "qwen preprocess: unknown mode %d", (int)mode);
    }
    lp_qwen_prep_map(w, h, W, H, mode, map);
    if (w == W && h == H) return lp_image_from_rgb(img->rgb, w, h, (size_t)w * 3, dst, err); /* both: a plain copy */
    if (mode == LP_QWEN_PREP_HF) return lp_image_resize(img, dst, W, H, LP_RESAMPLE_BICUBIC, err);
    /* img_tool::resize, PAD_CEIL, RESIZE_ALGO_BILINEAR, pad colour black */
    int nw, nh;
    lp_fit_inside_rect(w, h, W, H, &nw, &nh);
    lp_image resized;
    loupe_status st = lp_resize_llamacpp_bilinear(img, &resized, nw, nh, err);
    if (st != LOUPE_OK) return st;
    if ((st = lp_image_alloc(dst, W, H, err)) != LOUPE_OK) { /* zero-filled: the black pad */
        lp_image_free(&resized);
        return st;
    }
    static const uint8_t black[3] = {0, 0, 0};
    lp_image_fill(dst, black);
    lp_image_paste(dst, &resized, (W - nw) / 2, (H - nh) / 2);
    lp_image_free(&resized);
    return LOUPE_OK;
}

void lp_qwen_prep_normalize(const lp_image *img, const float mean[3], const float std[3], lp_qwen_prep_mode mode,
                            float *out) {
    const size_t n = (size_t)img->w * (size_t)img->h;
    for (int c = 0; c < 3; c++) {
        float *plane = out + (size_t)c * n; // (H, W)
        for (size_t i = 0; i < n; i++) {
            const uint8_t u = img->rgb[i * 3 + (size_t)c];
            const float v = mode == LP_QWEN_PREP_LLAMACPP ? (float)u / 255.0f                 /* clip_image_f32::from_u8 */
                                                          : (float)((double)u * (1.0 / 255.0)); /* transformers rescale() */
            plane[i] = (v - mean[c]) / std[c];
        }
    }
}
