/* vision/tiles.h — InternVL's dynamic tiling: one image -> several S×S tiles
 * (S = clip.vision.image_size, 448 for every InternVL2.5/3 model), each
 * encoded on its own by the ViT, their tokens concatenated in tile order.
 *
 * Two rules, because llama.cpp does not follow the reference:
 *
 * Reference (OpenGVLab InternVL, load_image / dynamic_preprocess, what the
 * models were trained with; LP_PREP_PAD_PIL and LP_PREP_SQUASH_PIL):
 *   ratios    every (i, j) with min_tiles <= i·j <= max_tiles, ordered by
 *             i·j (ties: i·j equal, by i then j; the reference sorts a
 *             Python set, whose order for ties is the set's, see below)
 *   choice    the ratio whose i/j is closest to w/h (double); on an exact
 *             tie the later ratio wins when w·h > 0.5·S²·i·j
 *   tiles     the image stretched (PIL BICUBIC, bit-exact Pillow) to
 *             (i·S) × (j·S), cut into i·j tiles row by row; then, when
 *             that gives more than one tile, a thumbnail: the whole image
 *             stretched to S×S. A small image is tiled too (a 300×200
 *             photo becomes 2×1 tiles + thumbnail).
 *   Ties between two ratios of equal area and equal distance can only
 *   happen when w/h lies exactly midway between them, and then the ratio
 *   of equal area closest in w/h is always nearer; loupe's order matches
 *   CPython's for every (i, j) up to 12 tiles we checked, not proven.
 *
 * llama.cpp (mtmd_image_preprocessor_internvl, LP_PREP_LLAMACPP):
 *   small     w <= S and h <= S: one tile, the image stretched to S×S with
 *             llama.cpp's bilinear (lp_resize_llamacpp_bilinear), no grid
 *   grid      otherwise the candidates (a·S, b·S) for a = min..max (outer),
 *             b = max(min, ceil(min/a))..max/a (inner) and LLaVA-NeXT's
 *             select_best_resolution: most effective pixels
 *             min(⌊w·s⌋·⌊h·s⌋, w·h) with s = min(cw/w, ch/h) in f32, then
 *             least waste; the image is letterboxed into that canvas
 *             (PAD_CEIL size, llama.cpp bicubic, black pad, centred with
 *             integer halves) and cut into a·b tiles row by row, followed by
 *             the overview: the whole image stretched to S×S (bilinear).
 *   So llama.cpp gives one tile where the reference gives three for a small
 *   non-square photo, and letterboxes where the reference stretches.
 *
 * Pixels: v = u8 / 255 in f32, then (v − mean) / std in f32 — both
 * torchvision's ToTensor + Normalize and llama.cpp's normalize. */
#ifndef LP_TILES_H
#define LP_TILES_H

#include "../core/error.h"
#include "image.h"
#include "preprocess.h"

#include <stdbool.h>

#define LP_TILES_MAX 64 /* a sane bound for max_tiles (InternVL uses 12) */

typedef struct lp_tile_plan {
    int n_tiles;          /* tiles to encode, thumbnail/overview included */
    int grid_x, grid_y;   /* tile columns and rows of the grid part (0, 0: none) */
    bool thumbnail;       /* the last tile is the whole image at S×S */
    int canvas_w, canvas_h; /* grid_x·S × grid_y·S, the image's resized size */
    /* Where the image lies inside the canvas (llama.cpp letterboxes; the
     * reference fills it): x_canvas = x · content_w / w + off_x. */
    int content_w, content_h, off_x, off_y;
} lp_tile_plan;

/* The plan for a w × h image. Errors: bad sizes or tile limits
 * (INVALID_ARG). */
loupe_status lp_tiles_plan(int w, int h, int S, int min_tiles, int max_tiles, lp_prep_mode mode, lp_tile_plan *plan,
                           lp_error *err);

/* The tiles as RGB8 S×S images, in encode order: tiles[0..n_tiles) are
 * allocated here (free each with lp_image_free). */
loupe_status lp_tiles_rgb(const lp_image *img, int S, int min_tiles, int max_tiles, lp_prep_mode mode,
                          lp_image *tiles, lp_tile_plan *plan, lp_error *err);

/* The normalized tiles: out (n_tiles, 3, S, S), sized by the plan
 * (lp_tiles_plan first). */
loupe_status lp_tiles_pixels(const lp_image *img, int S, int min_tiles, int max_tiles, lp_prep_mode mode,
                             const float mean[3], const float std[3], float *out, lp_tile_plan *plan, lp_error *err);

#endif
