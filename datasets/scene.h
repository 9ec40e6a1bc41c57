/* datasets/scene.h — the synthetic indoor-scene world that loupe's own small
 * grounding model is trained on (no pretrained VLM weights can be fetched).
 *
 * A scene is a room (textured wall and floor, a light direction, an optional
 * window and rug) holding 3..9 objects of 12 categories, each with a colour,
 * a style and a size. From a (seed, index) pair the generator lays the room
 * out, rasterises an object-id buffer to find what is actually visible, and
 * writes referring expressions that are unique in the scene.
 *
 * Determinism: everything that touches layout or pixels is integer
 * arithmetic driven by our own PRNG (splitmix64), so the same seed, index and
 * params give the same scene and the same pixels on any machine and compiler.
 *
 * Geometry conventions: pixels, top-left origin; a box is {x, y, w, h} with
 * x1 = x + w exclusive. "Visible" boxes are tight around the object's pixels
 * that survive occlusion (every border row and column holds one of them). */
#ifndef LP_SCENE_H
#define LP_SCENE_H

#include "../core/error.h"
#include "../vision/image.h"
#include <stdint.h>

enum {
    LP_CAT_SOFA, LP_CAT_LAMP, LP_CAT_CUP, LP_CAT_CHAIR, LP_CAT_TABLE, LP_CAT_PLANT,
    LP_CAT_TV, LP_CAT_BED, LP_CAT_BOOK, LP_CAT_CLOCK, LP_CAT_BOTTLE, LP_CAT_DOG,
    LP_N_CATS
};

enum {
    LP_COL_RED, LP_COL_BLUE, LP_COL_GREEN, LP_COL_YELLOW, LP_COL_WHITE, LP_COL_BLACK,
    LP_COL_BROWN, LP_COL_GRAY, LP_COL_ORANGE, LP_COL_PURPLE, LP_COL_PINK,
    LP_N_COLORS
};

/* The six kinds of referring expression (see scene.c for each predicate). */
enum {
    LP_EXPR_CATEGORY, /* "the lamp" */
    LP_EXPR_COLOR,    /* "the red cup" */
    LP_EXPR_ABSPOS,   /* "the cup on the left", "the clock in the top-right corner" */
    LP_EXPR_RELPOS,   /* "the cup on the table", "the lamp left of the tv" */
    LP_EXPR_SIZE,     /* "the biggest cup" */
    LP_EXPR_ORDINAL,  /* "the second chair from the left" */
    LP_N_EXPR_KINDS
};

#define LP_SCENE_MAX_OBJ 12
#define LP_SCENE_MAX_EXPR 96
#define LP_SCENE_MAX_SENT 2
#define LP_SCENE_SENT_MAX 96

typedef struct lp_scene_params {
    int width, height; /* default 256×192; each 64..2048 */
    int min_objects;   /* default 3 (kept after occlusion culling) */
    int max_objects;   /* default 8 (placed before culling), at most LP_SCENE_MAX_OBJ */
    const char *split; /* lp_synth_write: "train" (default), any name, or "auto" */
} lp_scene_params;

void lp_scene_params_default(lp_scene_params *p);

typedef struct lp_scene_object {
    int cat, color, style;
    int mirror;          /* drawn flipped left-right */
    int x, y, w, h;      /* layout box: where the whole object is drawn */
    int foot;            /* y of the floor contact line (depth key); wall objects: -1 */
    int on_wall;         /* hangs on the wall */
    int support;         /* index of the object it stands on (a table), or -1 */
    int size_pct;        /* size variant, percent of the category's base size */
    /* Filled from the object-id buffer: */
    int bbox[4];         /* tight visible box {x, y, w, h}; w = h = 0 if unseen */
    int area;            /* visible pixels */
    int full_area;       /* pixels it would cover with nothing in front */
    double visible_fraction; /* area / full_area */
} lp_scene_object;

typedef struct lp_scene_expr {
    int kind;   /* LP_EXPR_* */
    int target; /* index into objects */
    int anchor; /* LP_EXPR_RELPOS: index of the anchor object; otherwise -1 */
    int n_sent;
    char sent[LP_SCENE_MAX_SENT][LP_SCENE_SENT_MAX]; /* paraphrases, same meaning */
} lp_scene_expr;

typedef struct lp_scene {
    int w, h;
    uint64_t seed;
    int index;
    /* room */
    int horizon;        /* first floor row */
    int light;          /* -1: light from the left, +1: from the right */
    int wall_style, floor_style;
    lp_rgb wall_rgb, floor_rgb, floor_rgb2, trim_rgb;
    int window, win_x, win_y, win_w, win_h;
    int rug, rug_x, rug_y, rug_w, rug_h;
    lp_rgb rug_rgb;
    uint64_t tex_seed;  /* texture noise */
    /* objects, in drawing order (back to front) */
    int n_obj;
    lp_scene_object obj[LP_SCENE_MAX_OBJ];
    int n_expr;
    lp_scene_expr expr[LP_SCENE_MAX_EXPR];
    uint8_t *ids;       /* (h, w): 0 background, i + 1 = obj[i] visible there */
} lp_scene;

/* Build scene number `index` of the stream `seed`. Scenes of one stream are
 * independent of each other (any index can be generated alone). Fills *out,
 * which must later go to lp_scene_free. */
loupe_status lp_scene_generate(uint64_t seed, int index, const lp_scene_params *params, lp_scene *out, lp_error *err);
void lp_scene_free(lp_scene *s);

/* Draw the scene into *out (allocated here, s->w × s->h). */
loupe_status lp_scene_render(const lp_scene *s, lp_image *out, lp_error *err);

/* Names, for text and JSON. */
const char *lp_scene_cat_name(int cat);
const char *lp_scene_color_name(int color);
const char *lp_scene_kind_name(int kind);
const char *lp_scene_style_name(int cat, int style);
/* "a red cup", "an orange dog": the answer to a region question. */
void lp_scene_answer(const lp_scene_object *o, char *buf, size_t n);

/* Dataset writer: DIR/images/<id>.png and DIR/annotations.json for scenes
 * 0..n-1 of `seed` (image id = index + 1). stats may be NULL. */
typedef struct lp_synth_stats {
    int images, annotations, refs, sentences, regions;
    int refs_by_kind[LP_N_EXPR_KINDS];
    int cats[LP_N_CATS];
} lp_synth_stats;

loupe_status lp_synth_write(const char *dir, uint64_t seed, int n, const lp_scene_params *params,
                            lp_synth_stats *stats, lp_error *err);

/* COCO uncompressed RLE of obj[i]'s visible pixels (column-major, runs
 * starting with background). Returns the number of runs written into
 * counts (capacity cap >= w*h + 1 always suffices), or -1 if cap is short. */
int lp_scene_mask_rle(const lp_scene *s, int i, int *counts, int cap);

/* ---- internal, shared by scene.c and render.c ---- */

/* Rasterise into rgb (may be NULL: ids only) and ids (may be NULL).
 * only < 0: the whole scene, background included when rgb is set.
 * only >= 0: object `only` alone (for full_area), ids only. */
void lp_scene_raster(const lp_scene *s, uint8_t *rgb, uint8_t *ids, int only);
/* The base RGB of a named colour. */
lp_rgb lp_scene_color_rgb(int color);

#endif
