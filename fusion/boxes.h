/* fusion/boxes.h — bounding boxes in model answers and prompts, one codec per
 * model family, always in ORIGINAL-image pixels on the caller's side.
 *
 *   lp_box_geom g;
 *   lp_box_geom_squeeze(&g, img.w, img.h, 336, &err);          // Ferret
 *   lp_box boxes[16];
 *   lp_box_issue why[8];
 *   int n = lp_boxes_parse(LP_BOX_FERRET, answer, &g, boxes, 16, why, 8);
 *   char text[256];
 *   lp_box_format(LP_BOX_FERRET, &boxes[0], &g, text, sizeof text);   // "[12, 34, 560, 780]"
 *
 * Each family writes a box in its own frame (see the table in boxes.c, with
 * the source each rule was checked against):
 *
 *   family       text                                             grid / frame
 *   ferret       phrase [x1, y1, x2, y2]                          ints 0..999, int(n*1000)
 *   shikra       phrase [0.123,0.456,0.789,0.999;...]             floats 0..1, 3 decimals
 *   internvl     <ref>p</ref><box>[[x1, y1, x2, y2],[..]]</box>   0..1000
 *   qwen2-vl     <|object_ref_start|>p<|object_ref_end|>
 *                <|box_start|>(x1,y1),(x2,y2)<|box_end|>          0..1000
 *   qwen2.5-vl   [{"bbox_2d": [x1, y1, x2, y2], "label": "p"}]    absolute pixels of the resized input
 *   kosmos-2     <phrase>p</phrase><object><patch_index_0044>
 *                <patch_index_0863></object>                      32x32 patches
 *   florence-2   p<loc_x1><loc_y1><loc_x2><loc_y2>                1000 bins, bin centres
 *   paligemma    <loc_y1><loc_x1><loc_y2><loc_x2> p   (as <locNNNN>) 1024 bins, y first
 *
 * The normalised families are relative to the model-input frame described by
 * lp_box_geom (the S×S squeezed image for Ferret, the padded square for
 * LLaVA-style padding, the whole image for InternVL's tiles, ...); the
 * geometry undoes the resize and the padding exactly, x and y separately.
 *
 * Parsing never invents a box: anything malformed, partial (unterminated),
 * out of the grid, inverted (x2 < x1 or y2 < y1; equal is accepted as a
 * degenerate box) or wholly outside the image is skipped with a reason in the
 * issue list. Every returned box lies inside [0, orig_w] × [0, orig_h]. Any
 * byte string is safe input. No allocation, no printing. */
#ifndef LP_BOXES_H
#define LP_BOXES_H

#include "../core/error.h"
#include "../vision/preprocess.h"

#include <stddef.h>

#define LP_BOX_LABEL_MAX 128
#define LP_BOX_REASON_MAX 120

typedef struct lp_box {
    float x1, y1, x2, y2;          /* original-image pixels, x2 >= x1, y2 >= y1 */
    char label[LP_BOX_LABEL_MAX];  /* the phrase the answer attaches, "" if none */
} lp_box;

typedef enum lp_box_family {
    LP_BOX_UNKNOWN = -1,
    LP_BOX_FERRET = 0,
    LP_BOX_SHIKRA,
    LP_BOX_INTERNVL,
    LP_BOX_QWEN2VL,
    LP_BOX_QWEN25VL,
    LP_BOX_KOSMOS2,
    LP_BOX_FLORENCE2,
    LP_BOX_PALIGEMMA,
    LP_BOX_FAMILY_COUNT
} lp_box_family;

/* "ferret", "shikra", "internvl", "qwen2-vl", "qwen2.5-vl", "kosmos-2",
 * "florence-2", "paligemma"; case, '-', '_' and '.' are ignored ("Qwen2_5_VL",
 * "kosmos2"). LP_BOX_UNKNOWN for anything else (and NULL). */
lp_box_family lp_box_family_from_name(const char *name);
const char *lp_box_family_name(lp_box_family f); /* "?" when out of range */

/* ---- geometry: original image <-> model-input frame ---- */

typedef enum lp_box_geom_kind {
    LP_GEOM_IDENTITY = 0,  /* frame = the original image */
    LP_GEOM_SQUEEZE,       /* resized to S×S ignoring aspect */
    LP_GEOM_PAD_SQUARE,    /* LLaVA expand2square (pad to max(w,h)²), then S×S */
    LP_GEOM_LETTERBOX,     /* fit inside S×S, centred, pad around (llama.cpp) */
    LP_GEOM_QWEN,          /* Qwen2/2.5-VL smart_resize to multiples of factor */
    LP_GEOM_INTERNVL,      /* InternVL dynamic tiles: frame = the whole image */
    LP_GEOM_PREP           /* copied from a vision/preprocess.h lp_prep_geom */
} lp_box_geom_kind;

typedef struct lp_box_geom {
    lp_box_geom_kind kind;
    int orig_w, orig_h;       /* original image                                  */
    int in_w, in_h;           /* model-input frame the codec's coordinates use   */
    double scale_x, scale_y;  /* frame pixels per original pixel                 */
    double off_x, off_y;      /* frame position of original (0, 0): the padding  */
    /* Rectangle of the frame that holds image content (the rest is padding). */
    double content_x, content_y, content_w, content_h;
    int tiles_x, tiles_y;     /* LP_GEOM_INTERNVL: the tile grid; 1×1 otherwise  */
} lp_box_geom;

/* Constructors. Sizes: 1..LP_IMAGE_MAX_DIM for the image, 1..65536 for S.
 * Errors: LOUPE_ERR_INVALID_ARG (sizes), LOUPE_ERR_UNSUPPORTED (Qwen aspect
 * ratio > 200, refused by its processor too). */
loupe_status lp_box_geom_identity(lp_box_geom *g, int w, int h, lp_error *err);
loupe_status lp_box_geom_squeeze(lp_box_geom *g, int w, int h, int S, lp_error *err);
loupe_status lp_box_geom_pad_square(lp_box_geom *g, int w, int h, int S, lp_error *err);
loupe_status lp_box_geom_letterbox(lp_box_geom *g, int w, int h, int S, lp_error *err);
/* factor/min_pixels/max_pixels <= 0: Qwen2.5-VL's defaults 28, 4·28·28, 16384·28·28. */
loupe_status lp_box_geom_qwen(lp_box_geom *g, int w, int h, int factor, long long min_pixels, long long max_pixels,
                              lp_error *err);
/* tile <= 0: 448; min_num/max_num <= 0: 1 and 12 (InternVL's dynamic_preprocess defaults). */
loupe_status lp_box_geom_internvl(lp_box_geom *g, int w, int h, int tile, int min_num, int max_num, lp_error *err);
/* From the geometry lp_preprocess_image reported for an S×S input. */
loupe_status lp_box_geom_from_prep(lp_box_geom *g, const lp_prep_geom *p, int w, int h, int S, lp_error *err);
/* The same for a W × H (not square) model input: Qwen2.5-VL's resized image. */
loupe_status lp_box_geom_from_prep_wh(lp_box_geom *g, const lp_prep_geom *p, int w, int h, int in_w, int in_h,
                                      lp_error *err);

/* Qwen's smart_resize alone: the (w, h) the processor resizes a w×h image to.
 * Same defaults and errors as lp_box_geom_qwen. */
loupe_status lp_qwen_smart_resize(int w, int h, int factor, long long min_pixels, long long max_pixels, int *out_w,
                                  int *out_h, lp_error *err);

/* Frame-pixel box -> original pixels, clipped to the image. Returns 0, or -1
 * (out untouched) when a value is not finite, the box is inverted, or it lies
 * wholly outside the image (e.g. inside the padding). */
int lp_box_from_frame(const lp_box_geom *g, double x1, double y1, double x2, double y2, lp_box *out);
/* Original pixels -> frame pixels (f[4] = x1, y1, x2, y2); no clipping. */
void lp_box_to_frame(const lp_box_geom *g, const lp_box *b, double f[4]);

/* ---- codecs ---- */

typedef struct lp_box_issue {
    int offset;                      /* byte offset in the answer where it was found */
    char reason[LP_BOX_REASON_MAX];  /* one line, e.g. "x2 < x1 (12 < 40)"          */
} lp_box_issue;

/* Parse every box of `family` out of answer (NUL-terminated; NULL is empty)
 * into out[0..max). Returns the number of boxes written. Rejected candidates
 * go to issues[0..max_issues) in order of appearance; when fewer than
 * max_issues are written, the entry after the last has an empty reason (see
 * lp_box_issue_count). issues may be NULL. g must describe the frame the
 * model saw; without it (NULL or invalid) nothing is parsed. */
int lp_boxes_parse(lp_box_family family, const char *answer, const lp_box_geom *g, lp_box *out, int max,
                   lp_box_issue *issues, int max_issues);
int lp_box_issue_count(const lp_box_issue *issues, int max_issues);

/* Write box (original pixels) as `family` text for a prompt, with its label
 * when the family names regions (ferret/shikra: the bare coordinates; the
 * caller places the phrase). Returns the length written (NUL excluded), or
 * -1 with buf = "" when the box is not finite, inverted, outside the image
 * (1e-3 px slack), Kosmos-2 gets a zero-width box (its processor refuses
 * x2 <= x1), or buf is too small. */
int lp_box_format(lp_box_family family, const lp_box *box, const lp_box_geom *g, char *buf, size_t size);

/* The size of one grid step of `family` in original pixels along x and y
 * for this geometry: how far a format -> parse round trip may move a box
 * edge (Qwen2.5-VL: one input pixel). For tests and error budgets. */
void lp_box_quantum(lp_box_family family, const lp_box_geom *g, double *qx, double *qy);

#endif
