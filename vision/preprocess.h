/* vision/preprocess.h — image -> normalized (3, S, S) float tensor for the
 * CLIP ViT, three ways.
 *
 * LP_PREP_LLAMACPP reproduces llama.cpp's mtmd "fixed_size" preprocessor,
 * which is what llama.cpp runs for projector type "mlp" without
 * clip.vision.image_grid_pinpoints (LLaVA-1.5, Ferret, ...):
 *   1. If the image is already S×S: used as is.
 *   2. Otherwise scale = min(S/w, S/h) in f32, new size
 *      (min(ceil(w·scale), S), min(ceil(h·scale), S)) — "PAD_CEIL".
 *   3. Resize to the new size with llama.cpp's own bicubic (below).
 *   4. Paste it onto an S×S canvas filled with RGB (122, 116, 104) at offset
 *      ((S−new_w)/2, (S−new_h)/2), integer division.
 *   5. v = u8 / 255.0f, then (v − mean[c]) / std[c], in f32.
 * llama.cpp's bicubic (mtmd-image.cpp resize_bicubic) is NOT Pillow's:
 *   - it samples source position x = j·(src_w/dst_w) (f32): no half-pixel
 *     centre offset, so the output is shifted by up to half a source pixel
 *     against PIL, whose source centre is (j + 0.5)·scale − 0.5;
 *   - it interpolates with the cubic Lagrange polynomial through the four
 *     neighbours (weights from −d0/3 + d2 − d3/6, …), not Keys' cubic
 *     convolution with a = −0.5 as PIL's BICUBIC;
 *   - it never widens the kernel when shrinking (no antialiasing: a 4-tap
 *     point sample whatever the reduction), where PIL stretches the filter
 *     support by the reduction factor;
 *   - it works in f32 (coefficients in double, rounded to f32), rounds with
 *     roundf (half away from zero) and clamps to 0..255, where PIL uses
 *     22-bit fixed-point weights and a separable two-pass integer pipeline;
 *   - at the borders it clamps source coordinates (edge pixels repeated),
 *     where PIL drops the taps that fall outside and renormalises the rest.
 *   Rows are resampled in 2-D at once (4×4 taps), not as two 1-D passes with
 *   an intermediate rounding to u8 as in PIL.
 *   Exactness caveat: llama.cpp is C++ built with -march=native; if its
 *   compiler contracts a*b+c into FMA (GCC does in GNU mode), rare pixels
 *   whose value lies on a .5 boundary can differ by 1. loupe evaluates the
 *   same expressions without contraction.
 *   Also note the pad happens AFTER resizing (resize-then-pad), whereas
 *   LLaVA's PyTorch "pad" mode pads the original to a square first.
 *
 * LP_PREP_PAD_PIL is LLaVA's PyTorch image_aspect_ratio == "pad":
 *   expand2square (canvas max(w,h)², colour (int)(mean·255) per channel,
 *   image pasted at ((M−w)//2, (M−h)//2)), then PIL BICUBIC resize to S×S
 *   (lp_image_resize, bit-exact with Pillow), then CLIPImageProcessor's
 *   rescale/normalize: v = f32(f64(u8) · (1/255)), (v − mean) / std in f32.
 * LP_PREP_SQUASH_PIL stretches to S×S with PIL BICUBIC, no padding and no
 *   crop (Ferret's preprocessing: do_center_crop=False, size = S×S), then
 *   the same rescale/normalize as above.
 *
 * The geometry output maps original-image pixel coordinates to model-input
 * coordinates: in_x = orig_x · scale_x + off_x (likewise y), and gives the
 * rectangle of the S×S input that holds image content (the rest is pad). */
#ifndef LP_PREPROCESS_H
#define LP_PREPROCESS_H

#include "../core/error.h"
#include "image.h"

#include <stdint.h>

typedef enum lp_prep_mode {
    LP_PREP_LLAMACPP = 0,
    LP_PREP_PAD_PIL = 1,
    LP_PREP_SQUASH_PIL = 2
} lp_prep_mode;

typedef struct lp_prep_geom {
    double scale_x, scale_y; /* input pixels per original pixel            */
    double off_x, off_y;     /* input position of original (0, 0)          */
    int content_x, content_y, content_w, content_h; /* content rectangle   */
} lp_prep_geom;

/* Fill *g (no-op when g is NULL). */
void lp_prep_geom_set(lp_prep_geom *g, double scale_x, double scale_y, double off_x, double off_y, int content_x,
                      int content_y, int content_w, int content_h);

/* out: 3·S·S floats, planar (3, S, S). geom may be NULL. Errors: bad
 * arguments (INVALID_ARG), allocation (NOMEM). */
loupe_status lp_preprocess_image(const lp_image *img, int S, const float mean[3], const float std[3],
                                 lp_prep_mode mode, float *out, lp_prep_geom *geom, lp_error *err);

/* The intermediate S×S RGB8 image of each mode (before normalization), for
 * parity tests and debugging. *dst is allocated here. */
loupe_status lp_preprocess_rgb(const lp_image *img, int S, const float mean[3], lp_prep_mode mode, lp_image *dst,
                               lp_prep_geom *geom, lp_error *err);

/* llama.cpp's bicubic resize (see above) of src into a fresh w×h image. */
/* The size (*nw, *nh) of a w x h image scaled to fit inside S x S with its
 * aspect kept: llama.cpp's PAD_CEIL rule (f32 scale, sides rounded up,
 * clamped to 1..S). Box geometry (fusion/boxes.c) uses the same rule so
 * boxes map back exactly. */
void lp_fit_inside(int w, int h, int S, int *nw, int *nh);
/* The same rule into a W × H rectangle (llama.cpp's letterbox of InternVL
 * tiles, vision/tiles.h). */
void lp_fit_inside_rect(int w, int h, int W, int H, int *nw, int *nh);

loupe_status lp_resize_llamacpp_bicubic(const lp_image *src, lp_image *dst, int w, int h, lp_error *err);

/* llama.cpp's bilinear resize (mtmd-image.cpp resize_bilinear): corners
 * map to corners (source x = j·(src_w−1)/(dst_w−1) in f32), 2×2 taps, no
 * antialiasing, the result truncated (not rounded) to u8. Used by InternVL's
 * overview tile in llama.cpp mode. */
loupe_status lp_resize_llamacpp_bilinear(const lp_image *src, lp_image *dst, int w, int h, lp_error *err);

/* Fill every pixel with c; paste src into dst at (ox, oy), clipped. */
void lp_image_fill(lp_image *img, const uint8_t c[3]);
void lp_image_paste(lp_image *dst, const lp_image *src, int ox, int oy);

#endif
