/* fusion/region_sampler.h — Ferret's spatial-aware visual sampler
 * (GeoRegionSampler): one embedding for a free-form image region, which
 * replaces the `<region_fea>` token's embedding in the prompt.
 *
 * Input: the ViT patch features (n_side, n_side, C), row-major patch grid as
 * lp_clip_encode_ex returns them (C = lp_clip_feature_dim), and P points
 * (x, y) normalized to [0, 1] over the area the feature map covers, drawn
 * from the region by lp_region_sample_points. Forward pass:
 *
 *   point_fea  (P, C)     bilinear sample at grid coordinate p·(n_side − 1)
 *                         (torch grid_sample, align_corners=True, f32);
 *                         with ferret_transpose the sample is taken at
 *                         (y, x) instead — Ferret's masks are (w, h) arrays
 *                         and its flip before grid_sample swaps the axes, so
 *                         its checkpoints were trained on transposed reads
 *   per stage s, M points in (xy (M,2), fea (M,C)), S = sub_points[s],
 *   K = neighbors[s]:
 *     fps      (S)        farthest-point sampling on xy: start at index 0,
 *                         squared distance dx·dx + dy·dy in f32, running
 *                         minimum, next = the largest, ties to the lowest
 *                         index
 *     knn      (S, K)     the K points nearest each anchor (itself included),
 *                         nearest first, equal distances in index order
 *     diff     (S·K, C+2) mm.region.{s}.diff on [fea_nb − fea_a, xy_nb − xy_a]
 *     gather   (S·K, 2(C+2)) [diff, fea_a, xy_a]
 *     agg      (S·K, C)   mm.region.{s}.agg (Ferret's 1×1 conv), ReLU, then
 *                         LayerNorm mm.region.{s}.norm (eps below)
 *     out      (S, C)     max (or mean) over the K neighbours; with the
 *                         anchors' xy it is the next stage's input
 *   flatten    (C)        mm.region.flatten on the last stage's (S, C)
 *                         features flattened row-major (S·C)
 *   out        (out_dim)  mm.region.proj; no activation anywhere after agg
 *
 * Ferret itself starts FPS at a random index and picks kNN with an unsorted
 * topk over |a|²+|b|²−2a·b distances; loupe fixes both choices as above so a
 * region always gives the same embedding (tools/reference/region_sampler.py
 * is the PyTorch twin, equal to Ferret's module when there are no ties).
 *
 * mmproj GGUF (all optional as a group: a file with none of them has no
 * sampler). Matrices are ne [in, out] (ggml order), any computable type;
 * vectors f32/f16:
 *   mm.region.{s}.diff.weight     [C+2, C+2]      .bias [C+2]
 *   mm.region.{s}.agg.weight      [2(C+2), C]     .bias [C]
 *   mm.region.{s}.norm.weight     [C]             .bias [C]
 *   mm.region.flatten.weight      [S_last·C, C]   .bias [C]
 *   mm.region.proj.weight         [C, out_dim]    .bias [out_dim]
 * Metadata:
 *   clip.vision.region.num_points          u32   points per region (Ferret 512)
 *   clip.vision.region.sub_points          [i32] anchors per stage (128, 32)
 *   clip.vision.region.neighbors           [i32] neighbours per stage (24, 24)
 *   clip.vision.region.input_dim           u32   C (optional; checked)
 *   clip.vision.region.output_dim          u32   out_dim (optional; checked)
 *   clip.vision.region.pooler              str   "max" (default) or "mean"
 *   clip.vision.region.layer_norm_epsilon  f32   default 1e-5
 *   clip.vision.region.ferret_transpose    bool  default false
 *
 * Region text is Ferret's: "[x1, y1, x2, y2] <region_fea>", each coordinate
 * int(v · 1000 / size) clipped to 0..999 (lp_region_format). */
#ifndef LP_REGION_SAMPLER_H
#define LP_REGION_SAMPLER_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/pool.h"
#include "../core/types.h"
#include "../language/weights.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LP_REGION_TOKEN "<region_fea>"
#define LP_REGION_PREFIX "mm.region"
#define LP_REGION_KEY "clip.vision.region."
#define LP_REGION_MAX_STAGES 8
#define LP_REGION_MAX_POINTS 65536

typedef struct lp_region_sampler lp_region_sampler;

typedef enum lp_region_pool {
    LP_REGION_POOL_MAX = 0,
    LP_REGION_POOL_MEAN = 1
} lp_region_pool;

/* true if the file carries any sampler key or tensor. */
bool lp_region_sampler_present(const lp_gguf *mmproj);

/* Load from an mmproj whose tensors `ws` serves. A file without a sampler
 * gives NULL with err cleared (status LOUPE_OK); any error gives NULL with
 * err set, naming the file and the key or tensor. Both gguf and ws must
 * outlive the sampler. */
lp_region_sampler *lp_region_sampler_load(const lp_gguf *mmproj, lp_weight_store *ws, lp_error *err);
void lp_region_sampler_free(lp_region_sampler *rs);

int lp_region_sampler_n_points(const lp_region_sampler *rs); /* num_points   */
int lp_region_sampler_in_dim(const lp_region_sampler *rs);   /* C            */
int lp_region_sampler_out_dim(const lp_region_sampler *rs);  /* out_dim      */
int lp_region_sampler_n_stages(const lp_region_sampler *rs);
lp_region_pool lp_region_sampler_pooler(const lp_region_sampler *rs);
bool lp_region_sampler_ferret_transpose(const lp_region_sampler *rs);

/* Intermediate results, called synchronously from the forward pass with a
 * row-major array of n values, type LP_TYPE_F32 (float) or LP_TYPE_I32
 * (int32_t indices). Names, as the reference dumps them:
 *   "point_fea" (P, C) | "{s}.fps" (S) i32 | "{s}.knn" (S, K) i32 |
 *   "{s}.diff" (S, K, C+2) | "{s}.agg" (S, K, C) | "{s}.out" (S, C) |
 *   "flatten" (C) | "out" (out_dim) */
typedef void (*lp_region_dump_fn)(void *user, const char *name, lp_type type, const void *data, int64_t n);
void lp_region_sampler_set_dump(lp_region_sampler *rs, lp_region_dump_fn fn, void *user);

/* ---- regions and points ---- */
typedef enum lp_region_kind {
    LP_REGION_BOX = 0,
    LP_REGION_MASK = 1
} lp_region_kind;

typedef struct lp_region {
    lp_region_kind kind;
    /* BOX: x1, y1, x2, y2 normalized to [0, 1] over the feature map's area
     * (for Ferret's pixel box [X1..X2] on a W-wide image: X1/W, X2/W).
     * Parts outside [0, 1] are clipped; a box that misses the unit square,
     * has x2 < x1 or y2 < y1, or is not finite is an error. A zero-size box
     * (one pixel) is valid: all points coincide. */
    float box[4];
    /* MASK: mask_w × mask_h bytes, row-major (y·mask_w + x), nonzero =
     * inside; an empty mask is an error. */
    const uint8_t *mask;
    int mask_w, mask_h;
} lp_region;

/* n points (x, y) into xy (n, 2), deterministic for a seed (splitmix64).
 *   BOX:  x = x1 + u·(x2 − x1), y likewise, u = 24 random bits / 2^24, f32;
 *         per point u_x then u_y.
 *   MASK: the inside pixels in row-major order; n of them without
 *         replacement by selection sampling (all of them, then uniform
 *         repeats, when there are fewer than n); then a Fisher–Yates
 *         shuffle. Pixel (x, y) -> (x / mask_w, y / mask_h) in f32, Ferret's
 *         nonzero()/(w, h).
 * Bit-identical to sample_points_box / sample_points_mask in
 * tools/reference/region_sampler.py. */
loupe_status lp_region_sample_points(const lp_region *region, int n, uint64_t seed, float *xy, lp_error *err);

/* features (n_side·n_side, C) row-major patch grid, xy (n_points, 2) in
 * [0, 1] -> out (out_dim). n_points must be at least sub_points[0] and
 * neighbors[0] (the model was trained with num_points). Allocates its
 * buffers per call; may run concurrently on one sampler with different
 * pools as long as the dump setting is not changed meanwhile. */
loupe_status lp_region_sampler_forward(const lp_region_sampler *rs, const float *features, int n_side,
                                       const float *xy, int n_points, float *out, lp_pool *pool, lp_error *err);

/* Sample points (num_points, seed) and run the forward pass. */
loupe_status lp_region_embed(const lp_region_sampler *rs, const float *features, int n_side, const lp_region *region,
                             uint64_t seed, float *out, lp_pool *pool, lp_error *err);

/* ---- region text ---- */
/* "[x1, y1, x2, y2]" for a box in original pixels of an img_w × img_h image:
 * int(v · 1000 / size) (truncation, as Ferret's int()) clipped to 0..999.
 * Writes at most cap bytes with a NUL; LOUPE_ERR_INVALID_ARG for a bad size
 * or a non-finite coordinate, LOUPE_ERR_LIMIT if cap is too small. */
loupe_status lp_region_format(const double box[4], int img_w, int img_h, char *buf, size_t cap, lp_error *err);
/* "[x, y]" for a point, same quantization. */
loupe_status lp_region_format_point(const double pt[2], int img_w, int img_h, char *buf, size_t cap, lp_error *err);
/* One coordinate: int(v · 1000 / size) clipped to 0..999 (v finite, size > 0). */
int lp_region_quantize(double v, int size);

#endif
