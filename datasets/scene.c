/* datasets/scene.c — the world model of the synthetic scenes: room layout,
 * object placement with perspective and support (things stand on the floor,
 * hang on the wall or sit on a table), occlusion measured on the rendered
 * object-id buffer, and referring expressions that are unique in the scene.
 *
 * Uniqueness. Every expression is a predicate over the scene's objects,
 * evaluated three-valued: YES (clearly true), MAYBE (borderline), NO. An
 * expression is kept only if the target is YES and every other object is NO,
 * so borderline distractors (a second cup almost as far left, a bottle 1.2×
 * as big, a pink cup when we say "red") rule it out. The predicates, all on
 * the tight visible boxes (centre c = x + w/2; W, H the image size):
 *
 *   category  "the lamp"            same category
 *   colour    "the red cup"         same category and colour; MAYBE for a
 *                                   similar colour (red~pink~orange, ...)
 *   abspos    left / right          YES cx < .36W / cx > .64W, MAYBE < .46W / > .54W
 *             top / bottom          the same thresholds on cy and H
 *             middle                YES |cx - W/2| < .10W, MAYBE < .20W
 *             corners               YES both YES, MAYBE both at least MAYBE
 *   relpos    near / next to        YES box gap <= .03W, MAYBE <= .12W
 *             left of / right of    YES entirely beyond the anchor's edge,
 *                                   MAYBE centre beyond the anchor's centre
 *             above / below         YES entirely above (below) the anchor and
 *                                   cx inside its x range; MAYBE centre above
 *                                   (below) its centre and cx within half its
 *                                   width of it
 *             on                    YES the object stands on the anchor
 *                                   (support, from the world model)
 *             The anchor is a different category, >= 50% visible, and named
 *             uniquely itself ("the sofa" or "the red sofa").
 *   size      biggest / smallest    full (unoccluded) pixel area; YES when
 *                                   >= 1.3× (<= 1/1.3×) every other of the
 *                                   category, MAYBE within that margin.
 *                                   Needs >= 2 of the category.
 *   ordinal   "the second chair from the left": rank by cx among the
 *             category; YES when no other centre is within .05W, MAYBE when
 *             the rank could be k within that margin. Needs >= 2.
 *
 * Only objects >= 50% visible (and >= 24 pixels) are referred to; objects
 * below 30% visible are removed from the scene altogether, so nothing the
 * expressions count is invisible. */
#include "scene.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- PRNG: splitmix64 ---- */

typedef struct rng { uint64_t s; } rng;

static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static int rnd(rng *r, int lo, int hi) {
    if (hi <= lo) return lo;
    return lo + (int)((rng_next(r) >> 11) % (uint64_t)(hi - lo + 1));
}

static int chance(rng *r, int pct) { return rnd(r, 0, 99) < pct; }

/* ---- names ---- */

static const char *CAT_NAMES[LP_N_CATS] = {"sofa", "lamp", "cup", "chair", "table", "plant",
                                           "tv", "bed", "book", "clock", "bottle", "dog"};
static const char *COLOR_NAMES[LP_N_COLORS] = {"red", "blue", "green", "yellow", "white", "black",
                                               "brown", "gray", "orange", "purple", "pink"};
static const char *KIND_NAMES[LP_N_EXPR_KINDS] = {"category", "color", "abspos", "relpos", "size", "ordinal"};
static const char *STYLE_NAMES[LP_N_CATS][3] = {
    {"classic", "modern", "chesterfield"}, {"floor", "table", "desk"},     {"mug", "teacup", "paper"},
    {"wooden", "side", "office"},          {"rectangular", "round", "coffee"}, {"bushy", "spiky", "cactus"},
    {"wall", "stand", "crt"},              {"side", "quilt", "front"},    {"standing", "lying", "open"},
    {"round", "square", "alarm"},          {"wine", "water", "flask"},    {"standing", "sitting", "lying"},
};

const char *lp_scene_cat_name(int cat) { return cat >= 0 && cat < LP_N_CATS ? CAT_NAMES[cat] : "?"; }
const char *lp_scene_color_name(int c) { return c >= 0 && c < LP_N_COLORS ? COLOR_NAMES[c] : "?"; }
const char *lp_scene_kind_name(int k) { return k >= 0 && k < LP_N_EXPR_KINDS ? KIND_NAMES[k] : "?"; }
const char *lp_scene_style_name(int cat, int style) {
    return cat >= 0 && cat < LP_N_CATS && style >= 0 && style < 3 ? STYLE_NAMES[cat][style] : "?";
}

void lp_scene_answer(const lp_scene_object *o, char *buf, size_t n) {
    const char *c = lp_scene_color_name(o->color);
    snprintf(buf, n, "%s %s %s", c[0] == 'o' ? "an" : "a", c, lp_scene_cat_name(o->cat));
}

void lp_scene_params_default(lp_scene_params *p) {
    p->width = 256;
    p->height = 192;
    p->min_objects = 3;
    p->max_objects = 8;
    p->split = "train";
}

/* ---- the catalogue ---- */

/* Base size (w, h) in per-mille of the image height, per category and style. */
static const int BASE[LP_N_CATS][3][2] = {
    {{620, 300}, {660, 260}, {620, 300}}, /* sofa */
    {{170, 560}, {140, 260}, {170, 220}}, /* lamp */
    {{110, 100}, {125, 85}, {85, 120}},   /* cup */
    {{190, 340}, {200, 330}, {200, 340}}, /* chair */
    {{420, 230}, {300, 240}, {460, 150}}, /* table */
    {{220, 320}, {200, 360}, {170, 340}}, /* plant */
    {{330, 200}, {300, 230}, {250, 230}}, /* tv */
    {{760, 320}, {760, 300}, {600, 420}}, /* bed */
    {{110, 150}, {160, 75}, {200, 85}},   /* book */
    {{160, 160}, {150, 150}, {120, 135}}, /* clock */
    {{70, 220}, {75, 200}, {110, 150}},   /* bottle */
    {{340, 230}, {200, 280}, {340, 170}}, /* dog */
};

#define M(c) (1u << LP_COL_##c)
static const unsigned COLORS_OK[LP_N_CATS] = {
    0x7ff, 0x7ff, 0x7ff, 0x7ff,
    M(BROWN) | M(WHITE) | M(BLACK) | M(GRAY) | M(RED) | M(BLUE) | M(GREEN), /* table */
    0x7ff,
    M(BLACK) | M(GRAY) | M(WHITE) | M(RED) | M(BLUE), /* tv */
    0x7ff, 0x7ff, 0x7ff,
    M(GREEN) | M(BROWN) | M(BLUE) | M(WHITE) | M(RED) | M(ORANGE) | M(YELLOW) | M(PURPLE), /* bottle */
    M(BROWN) | M(BLACK) | M(WHITE) | M(GRAY) | M(YELLOW) | M(ORANGE),                    /* dog */
};

/* Colours a viewer could confuse: "the red cup" is not said next to a pink one. */
static int similar_color(int a, int b) {
    static const int P[][2] = {{LP_COL_RED, LP_COL_PINK},      {LP_COL_RED, LP_COL_ORANGE},   {LP_COL_ORANGE, LP_COL_YELLOW},
                               {LP_COL_ORANGE, LP_COL_BROWN},  {LP_COL_WHITE, LP_COL_GRAY},   {LP_COL_GRAY, LP_COL_BLACK},
                               {LP_COL_BLUE, LP_COL_PURPLE},   {LP_COL_PURPLE, LP_COL_PINK},  {LP_COL_RED, LP_COL_PURPLE}};
    for (size_t i = 0; i < sizeof P / sizeof *P; i++)
        if ((P[i][0] == a && P[i][1] == b) || (P[i][0] == b && P[i][1] == a)) return 1;
    return 0;
}

static int pick_color(rng *r, int cat) {
    int ok[LP_N_COLORS], n = 0;
    for (int c = 0; c < LP_N_COLORS; c++)
        if (COLORS_OK[cat] >> c & 1) ok[n++] = c;
    return ok[rnd(r, 0, n - 1)];
}

enum { PLACE_FLOOR, PLACE_WALL, PLACE_TOP };

static int placement(int cat, int style) {
    switch (cat) {
    case LP_CAT_CLOCK: return style == 2 ? PLACE_TOP : PLACE_WALL;
    case LP_CAT_TV: return style == 0 ? PLACE_WALL : PLACE_TOP;
    case LP_CAT_LAMP: return style == 0 ? PLACE_FLOOR : PLACE_TOP;
    case LP_CAT_CUP:
    case LP_CAT_BOOK:
    case LP_CAT_BOTTLE: return PLACE_TOP;
    default: return PLACE_FLOOR;
    }
}

/* Table surface band in the table's local 0..1000 frame. */
static void table_top(int style, int *v0, int *v1, int *u0, int *u1) {
    if (style == 1) { *v0 = 40; *v1 = 150; *u0 = 200; *u1 = 800; }
    else { *v0 = 20; *v1 = 105; *u0 = 110; *u1 = 890; }
}

/* ---- layout ---- */

static const lp_rgb WALLS[] = {{232, 222, 200}, {196, 212, 226}, {198, 212, 186}, {222, 204, 176},
                               {212, 212, 208}, {226, 202, 198}, {236, 226, 182}, {206, 168, 140}};
static const lp_rgb WOODS[] = {{156, 104, 62}, {184, 134, 84}, {112, 72, 42}, {202, 162, 112}};
static const lp_rgb TILES[][2] = {{{222, 222, 216}, {70, 70, 74}}, {{206, 186, 156}, {172, 150, 120}},
                                  {{200, 206, 210}, {150, 160, 170}}};
static const lp_rgb CARPETS[] = {{124, 114, 104}, {92, 102, 132}, {150, 70, 66}, {162, 152, 132}};
static const lp_rgb PLAIN[] = {{172, 172, 170}, {126, 104, 92}, {190, 180, 160}};
static const lp_rgb RUGS[] = {{150, 40, 40}, {40, 70, 130}, {200, 180, 140}, {90, 110, 70}, {120, 60, 110}};
#define NA(a) ((int)(sizeof a / sizeof *a))

static void layout_room(lp_scene *s, rng *r) {
    int W = s->w, H = s->h;
    s->horizon = H * rnd(r, 40, 52) / 100;
    s->light = chance(r, 50) ? 1 : -1;
    s->wall_style = rnd(r, 0, 3);
    s->floor_style = rnd(r, 0, 3);
    s->wall_rgb = WALLS[rnd(r, 0, NA(WALLS) - 1)];
    s->trim_rgb = chance(r, 70) ? (lp_rgb){236, 232, 224} : (lp_rgb){124, 84, 52};
    switch (s->floor_style) {
    case 0: s->floor_rgb = WOODS[rnd(r, 0, NA(WOODS) - 1)]; break;
    case 1: { int k = rnd(r, 0, NA(TILES) - 1); s->floor_rgb = TILES[k][0]; s->floor_rgb2 = TILES[k][1]; break; }
    case 2: s->floor_rgb = CARPETS[rnd(r, 0, NA(CARPETS) - 1)]; break;
    default: s->floor_rgb = PLAIN[rnd(r, 0, NA(PLAIN) - 1)]; break;
    }
    s->window = chance(r, 55);
    if (s->window) {
        s->win_w = W * rnd(r, 14, 22) / 100;
        s->win_h = s->horizon * rnd(r, 38, 52) / 100;
        s->win_y = s->horizon * rnd(r, 10, 22) / 100;
        int half = W / 2 - s->win_w;
        s->win_x = s->light > 0 ? W / 2 + rnd(r, 0, half > 0 ? half : 0) : rnd(r, 0, half > 0 ? half : 0);
    }
    s->rug = chance(r, 40);
    if (s->rug) {
        int fh = H - s->horizon;
        s->rug_w = W * rnd(r, 35, 60) / 100;
        s->rug_h = fh * rnd(r, 25, 45) / 100;
        s->rug_x = rnd(r, 0, W - s->rug_w);
        s->rug_y = s->horizon + fh * rnd(r, 20, 50) / 100;
        s->rug_rgb = RUGS[rnd(r, 0, NA(RUGS) - 1)];
    }
    s->tex_seed = rng_next(r);
}

static int overlap_area(int ax, int ay, int aw, int ah, int bx, int by, int bw, int bh) {
    int x0 = ax > bx ? ax : bx, y0 = ay > by ? ay : by;
    int x1 = ax + aw < bx + bw ? ax + aw : bx + bw, y1 = ay + ah < by + bh ? ay + ah : by + bh;
    return (x1 > x0 && y1 > y0) ? (x1 - x0) * (y1 - y0) : 0;
}

/* Size in pixels from the base size, a perspective scale (/256) and the
 * size variant (percent). */
static void obj_size(const lp_scene *s, lp_scene_object *o, int scale) {
    const int *b = BASE[o->cat][o->style];
    o->w = (int)((long long)b[0] * s->h * scale * o->size_pct / (1000ll * 256 * 100));
    o->h = (int)((long long)b[1] * s->h * scale * o->size_pct / (1000ll * 256 * 100));
    if (o->w < 4) o->w = 4;
    if (o->h < 4) o->h = 4;
}

/* Try to place o; 1 on success. */
static int place(lp_scene *s, rng *r, lp_scene_object *o, int where) {
    int W = s->w, H = s->h, hz = s->horizon;
    for (int tries = 0; tries < 24; tries++) {
        if (where == PLACE_WALL) {
            obj_size(s, o, 256);
            int ylo = H / 20, yhi = hz - o->h - H / 30;
            if (yhi < ylo || o->w > W) { o->size_pct = o->size_pct * 8 / 10; continue; }
            o->x = rnd(r, 0, W - o->w);
            o->y = rnd(r, ylo, yhi);
            o->foot = -1;
            int bad = s->window && overlap_area(o->x, o->y, o->w, o->h, s->win_x - 3, s->win_y - 3, s->win_w + 6, s->win_h + 6);
            for (int i = 0; i < s->n_obj && !bad; i++)
                if (s->obj[i].on_wall && overlap_area(o->x - 4, o->y - 4, o->w + 8, o->h + 8, s->obj[i].x, s->obj[i].y, s->obj[i].w, s->obj[i].h))
                    bad = 1;
            if (bad) continue;
            o->on_wall = 1;
            return 1;
        }
        if (where == PLACE_TOP) {
            int tables[LP_SCENE_MAX_OBJ], nt = 0;
            for (int i = 0; i < s->n_obj; i++)
                if (s->obj[i].cat == LP_CAT_TABLE) tables[nt++] = i;
            if (!nt) return 0;
            int ti = tables[rnd(r, 0, nt - 1)];
            const lp_scene_object *t = &s->obj[ti];
            int v0, v1, u0, u1;
            table_top(t->style, &v0, &v1, &u0, &u1);
            int tscale = 150 + 106 * (t->foot - hz) / (H - hz);
            obj_size(s, o, tscale);
            int xlo = t->x + t->w * u0 / 1000, xhi = t->x + t->w * u1 / 1000 - o->w;
            if (xhi < xlo) { o->size_pct = o->size_pct * 8 / 10; continue; }
            o->x = rnd(r, xlo, xhi);
            o->foot = t->y + t->h * rnd(r, v0, v1) / 1000;
            o->y = o->foot - o->h;
            if (o->y < 0) continue;
            o->support = ti;
            return 1;
        }
        /* floor: perspective from the contact line */
        int fmin = hz + (H - hz) * 15 / 100;
        o->foot = rnd(r, fmin, H - 1);
        int scale = 150 + 106 * (o->foot - hz) / (H - hz);
        obj_size(s, o, scale);
        if (o->w > W - 2 || o->h > o->foot) { o->size_pct = o->size_pct * 85 / 100; continue; }
        o->x = rnd(r, 0, W - o->w);
        o->y = o->foot - o->h;
        int bad = 0;
        for (int i = 0; i < s->n_obj && !bad; i++) {
            const lp_scene_object *q = &s->obj[i];
            if (q->on_wall || q->support >= 0) continue;
            int ov = overlap_area(o->x, o->y, o->w, o->h, q->x, q->y, q->w, q->h);
            int amin = o->w * o->h < q->w * q->h ? o->w * o->h : q->w * q->h;
            if (ov * 100 > amin * 45) bad = 1;
        }
        if (bad) continue;
        return 1;
    }
    return 0;
}

/* Depth key: wall things first, then by floor contact line; things on a
 * table are drawn right after their table. */
static long long depth_key(const lp_scene *s, const lp_scene_object *o) {
    if (o->on_wall) return -1000000 + o->y;
    if (o->support >= 0) return (long long)s->obj[o->support].foot * 4096 + 2048 + o->foot;
    return (long long)o->foot * 4096;
}

static void sort_depth(lp_scene *s) {
    /* Remember supports by identity across the permutation. */
    int n = s->n_obj, order[LP_SCENE_MAX_OBJ], where[LP_SCENE_MAX_OBJ];
    long long key[LP_SCENE_MAX_OBJ];
    for (int i = 0; i < n; i++) { order[i] = i; key[i] = depth_key(s, &s->obj[i]); }
    for (int i = 1; i < n; i++) /* stable insertion sort */
        for (int k = i; k > 0 && key[order[k - 1]] > key[order[k]]; k--) { int t = order[k]; order[k] = order[k - 1]; order[k - 1] = t; }
    lp_scene_object tmp[LP_SCENE_MAX_OBJ];
    for (int i = 0; i < n; i++) { tmp[i] = s->obj[order[i]]; where[order[i]] = i; }
    for (int i = 0; i < n; i++) {
        if (tmp[i].support >= 0) tmp[i].support = where[tmp[i].support];
        s->obj[i] = tmp[i];
    }
}

static void remove_object(lp_scene *s, int k) {
    /* Things standing on it go too. */
    for (int i = s->n_obj - 1; i >= 0; i--)
        if (s->obj[i].support == k) {
            remove_object(s, i);
            if (i < k) k--;
        }
    for (int i = k; i + 1 < s->n_obj; i++) s->obj[i] = s->obj[i + 1];
    s->n_obj--;
    for (int i = 0; i < s->n_obj; i++)
        if (s->obj[i].support > k) s->obj[i].support--;
}

/* Visible pixels, full pixels and tight boxes from the id buffer. */
static void measure(lp_scene *s, uint8_t *scratch) {
    int W = s->w, H = s->h;
    lp_scene_raster(s, NULL, s->ids, -1);
    int x0[LP_SCENE_MAX_OBJ], y0[LP_SCENE_MAX_OBJ], x1[LP_SCENE_MAX_OBJ], y1[LP_SCENE_MAX_OBJ];
    for (int i = 0; i < s->n_obj; i++) {
        s->obj[i].area = 0;
        x0[i] = W; y0[i] = H; x1[i] = -1; y1[i] = -1;
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int id = s->ids[(size_t)y * W + x];
            if (!id) continue;
            int i = id - 1;
            s->obj[i].area++;
            if (x < x0[i]) x0[i] = x;
            if (x > x1[i]) x1[i] = x;
            if (y < y0[i]) y0[i] = y;
            if (y > y1[i]) y1[i] = y;
        }
    for (int i = 0; i < s->n_obj; i++) {
        lp_scene_object *o = &s->obj[i];
        if (o->area) {
            o->bbox[0] = x0[i]; o->bbox[1] = y0[i]; o->bbox[2] = x1[i] - x0[i] + 1; o->bbox[3] = y1[i] - y0[i] + 1;
        } else
            memset(o->bbox, 0, sizeof o->bbox);
        /* full area: the object alone (a few primitives poke out of the
         * layout box, so the whole buffer is counted) */
        lp_scene_raster(s, NULL, scratch, i);
        int full = 0;
        for (size_t k = 0, npx = (size_t)W * H; k < npx; k++) {
            full += scratch[k] != 0;
            scratch[k] = 0;
        }
        o->full_area = full;
        o->visible_fraction = full ? (double)o->area / full : 0.0;
    }
}

/* ---- expressions ---- */

enum { Z_LEFT, Z_RIGHT, Z_TOP, Z_BOTTOM, Z_MIDDLE, Z_TL, Z_TR, Z_BL, Z_BR, N_ZONES };
enum { R_NEAR, R_LEFT, R_RIGHT, R_ABOVE, R_BELOW, R_ON, N_RELS };
enum { NO = 0, MAYBE = 1, YES = 2 };

typedef struct cand {
    int kind, cat, color, zone, rel, anchor, big, ord, from_right;
} cand;

/* Doubled centres, so thresholds stay integral. */
static int cx2(const lp_scene_object *o) { return 2 * o->bbox[0] + o->bbox[2]; }
static int cy2(const lp_scene_object *o) { return 2 * o->bbox[1] + o->bbox[3]; }

static int zone1(int z, int c2, int D) { /* c2 doubled centre, D the extent */
    switch (z) {
    case Z_LEFT: case Z_TOP: return c2 * 100 < 72 * D ? YES : c2 * 100 < 92 * D ? MAYBE : NO;
    case Z_RIGHT: case Z_BOTTOM: return c2 * 100 > 128 * D ? YES : c2 * 100 > 108 * D ? MAYBE : NO;
    default: { int d = c2 - D < 0 ? D - c2 : c2 - D; return d * 100 < 20 * D ? YES : d * 100 < 40 * D ? MAYBE : NO; }
    }
}

static int min2(int a, int b) { return a < b ? a : b; }

static int zone_sat(const lp_scene *s, const lp_scene_object *o, int z) {
    int cx = cx2(o), cy = cy2(o);
    switch (z) {
    case Z_LEFT: case Z_RIGHT: case Z_MIDDLE: return zone1(z, cx, s->w);
    case Z_TOP: case Z_BOTTOM: return zone1(z, cy, s->h);
    case Z_TL: return min2(zone1(Z_TOP, cy, s->h), zone1(Z_LEFT, cx, s->w));
    case Z_TR: return min2(zone1(Z_TOP, cy, s->h), zone1(Z_RIGHT, cx, s->w));
    case Z_BL: return min2(zone1(Z_BOTTOM, cy, s->h), zone1(Z_LEFT, cx, s->w));
    default: return min2(zone1(Z_BOTTOM, cy, s->h), zone1(Z_RIGHT, cx, s->w));
    }
}

static int rel_sat(const lp_scene *s, int ti, int ai, int rel) {
    const lp_scene_object *t = &s->obj[ti], *a = &s->obj[ai];
    int tx0 = t->bbox[0], tx1 = t->bbox[0] + t->bbox[2], ty0 = t->bbox[1], ty1 = t->bbox[1] + t->bbox[3];
    int ax0 = a->bbox[0], ax1 = a->bbox[0] + a->bbox[2], ay0 = a->bbox[1], ay1 = a->bbox[1] + a->bbox[3];
    switch (rel) {
    case R_NEAR: {
        int gx = ax0 - tx1 > tx0 - ax1 ? ax0 - tx1 : tx0 - ax1;
        int gy = ay0 - ty1 > ty0 - ay1 ? ay0 - ty1 : ty0 - ay1;
        int g = gx > gy ? gx : gy;
        if (g < 0) g = 0;
        return g * 100 <= 3 * s->w ? YES : g * 100 <= 12 * s->w ? MAYBE : NO;
    }
    case R_LEFT: return tx1 <= ax0 ? YES : cx2(t) < cx2(a) ? MAYBE : NO;
    case R_RIGHT: return tx0 >= ax1 ? YES : cx2(t) > cx2(a) ? MAYBE : NO;
    case R_ABOVE:
    case R_BELOW: {
        int c = cx2(t);
        int inside = c >= 2 * ax0 && c <= 2 * ax1;
        int near = c >= 2 * ax0 - a->bbox[2] && c <= 2 * ax1 + a->bbox[2];
        int beyond = rel == R_ABOVE ? ty1 <= ay0 : ty0 >= ay1;
        int half = rel == R_ABOVE ? cy2(t) < cy2(a) : cy2(t) > cy2(a);
        return beyond && inside ? YES : half && near ? MAYBE : NO;
    }
    default: return t->support == ai ? YES : NO;
    }
}

static int count_cat(const lp_scene *s, int cat) {
    int n = 0;
    for (int i = 0; i < s->n_obj; i++) n += s->obj[i].cat == cat;
    return n;
}

static int sat(const lp_scene *s, const cand *e, int i) {
    const lp_scene_object *o = &s->obj[i];
    if (o->cat != e->cat) return NO;
    switch (e->kind) {
    case LP_EXPR_CATEGORY: return YES;
    case LP_EXPR_COLOR: return o->color == e->color ? YES : similar_color(o->color, e->color) ? MAYBE : NO;
    case LP_EXPR_ABSPOS: return zone_sat(s, o, e->zone);
    case LP_EXPR_RELPOS: return i == e->anchor ? NO : rel_sat(s, i, e->anchor, e->rel);
    case LP_EXPR_SIZE: {
        /* YES: >= 1.3x every other; NO: clearly smaller (bigger) than one. */
        int yes = 1, maybe = 1;
        for (int j = 0; j < s->n_obj; j++) {
            if (j == i || s->obj[j].cat != e->cat) continue;
            long long a = o->full_area, b = s->obj[j].full_area;
            if (e->big) {
                if (a * 10 < b * 13) yes = 0;
                if (a * 13 <= b * 10) maybe = 0;
            } else {
                if (a * 13 > b * 10) yes = 0;
                if (a * 10 >= b * 13) maybe = 0;
            }
        }
        return yes ? YES : maybe ? MAYBE : NO;
    }
    default: { /* ordinal */
        /* lo: 1 + those clearly before it; hi: 1 + those not clearly after
         * it (.05W apart, i.e. .10W in doubled centres) */
        int lo = 1, hi = 1;
        for (int j = 0; j < s->n_obj; j++) {
            if (j == i || s->obj[j].cat != e->cat) continue;
            int a = cx2(o), b = cx2(&s->obj[j]);
            if (e->from_right) { a = -a; b = -b; }
            lo += (a - b) * 100 > 10 * s->w;
            hi += (b - a) * 100 < 10 * s->w;
        }
        return lo == e->ord && hi == e->ord ? YES : (lo <= e->ord && e->ord <= hi) ? MAYBE : NO;
    }
    }
}

static int unique_for(const lp_scene *s, const cand *e, int target) {
    if (sat(s, e, target) != YES) return 0;
    for (int i = 0; i < s->n_obj; i++)
        if (i != target && sat(s, e, i) != NO) return 0;
    return 1;
}

static int referable(const lp_scene_object *o) { return o->visible_fraction >= 0.5 && o->area >= 24; }

/* "the sofa" or "the red sofa" naming obj[a] uniquely; 0 if neither does. */
static int anchor_np(const lp_scene *s, int a, char *buf, size_t n) {
    cand e = {.kind = LP_EXPR_CATEGORY, .cat = s->obj[a].cat};
    if (unique_for(s, &e, a)) { snprintf(buf, n, "the %s", CAT_NAMES[e.cat]); return 1; }
    e.kind = LP_EXPR_COLOR;
    e.color = s->obj[a].color;
    if (unique_for(s, &e, a)) { snprintf(buf, n, "the %s %s", COLOR_NAMES[e.color], CAT_NAMES[e.cat]); return 1; }
    return 0;
}

static const char *ORD_WORDS[] = {"", "first", "second", "third", "fourth", "fifth", "sixth"};

static void add_expr(lp_scene *s, const cand *e, int target) {
    if (s->n_expr >= LP_SCENE_MAX_EXPR) return;
    lp_scene_expr *x = &s->expr[s->n_expr++];
    memset(x, 0, sizeof *x);
    x->kind = e->kind;
    x->target = target;
    x->anchor = e->kind == LP_EXPR_RELPOS ? e->anchor : -1;
    const char *cat = CAT_NAMES[e->cat];
    char np[48];
    int n = 1;
    switch (e->kind) {
    case LP_EXPR_CATEGORY: snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s", cat); break;
    case LP_EXPR_COLOR: snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s %s", COLOR_NAMES[e->color], cat); break;
    case LP_EXPR_ABSPOS: {
        static const char *Z[] = {"on the left", "on the right", "at the top", "at the bottom", "in the middle",
                                  "in the top-left corner", "in the top-right corner", "in the bottom-left corner",
                                  "in the bottom-right corner"};
        snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s %s", cat, Z[e->zone]);
        if (e->zone == Z_LEFT || e->zone == Z_RIGHT) {
            snprintf(x->sent[1], LP_SCENE_SENT_MAX, "the %s %s", e->zone == Z_LEFT ? "left" : "right", cat);
            n = 2;
        }
        break;
    }
    case LP_EXPR_RELPOS: {
        static const char *RW[] = {"near", "left of", "right of", "above", "below", "on"};
        static const char *RW2[] = {"next to", "to the left of", "to the right of", NULL, NULL, NULL};
        anchor_np(s, e->anchor, np, sizeof np);
        snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s %s %s", cat, RW[e->rel], np);
        if (RW2[e->rel]) {
            snprintf(x->sent[1], LP_SCENE_SENT_MAX, "the %s %s %s", cat, RW2[e->rel], np);
            n = 2;
        }
        break;
    }
    case LP_EXPR_SIZE:
        snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s %s", e->big ? "biggest" : "smallest", cat);
        if (e->big) {
            snprintf(x->sent[1], LP_SCENE_SENT_MAX, "the largest %s", cat);
            n = 2;
        }
        break;
    default:
        snprintf(x->sent[0], LP_SCENE_SENT_MAX, "the %s %s from the %s", ORD_WORDS[e->ord], cat, e->from_right ? "right" : "left");
        break;
    }
    x->n_sent = n;
}

/* For each referable object and each kind, the unique candidates; one is
 * kept per (object, kind), chosen at random. */
static void make_expressions(lp_scene *s, rng *r) {
    s->n_expr = 0;
    enum { MAXC = 96 };
    cand cs[MAXC];
    for (int t = 0; t < s->n_obj; t++) {
        const lp_scene_object *o = &s->obj[t];
        if (!referable(o)) continue;
        int ncat = count_cat(s, o->cat);
        for (int kind = 0; kind < LP_N_EXPR_KINDS; kind++) {
            int nc = 0;
            cand base = {.kind = kind, .cat = o->cat, .color = o->color, .anchor = -1};
            switch (kind) {
            case LP_EXPR_CATEGORY:
            case LP_EXPR_COLOR: cs[nc++] = base; break;
            case LP_EXPR_ABSPOS:
                for (int z = 0; z < N_ZONES; z++) { cs[nc] = base; cs[nc++].zone = z; }
                break;
            case LP_EXPR_RELPOS:
                for (int a = 0; a < s->n_obj; a++) {
                    if (a == t || s->obj[a].cat == o->cat || !referable(&s->obj[a])) continue;
                    char np[48];
                    if (!anchor_np(s, a, np, sizeof np)) continue;
                    for (int rel = 0; rel < N_RELS && nc < MAXC; rel++) {
                        /* "above"/"below" only between the wall and what stands
                         * below it: in the picture a dog further back is
                         * higher than a plant, but nobody says it is above it */
                        if (rel == R_ABOVE && !(o->on_wall && !s->obj[a].on_wall)) continue;
                        if (rel == R_BELOW && !(!o->on_wall && s->obj[a].on_wall)) continue;
                        cs[nc] = base;
                        cs[nc].anchor = a;
                        cs[nc++].rel = rel;
                    }
                }
                break;
            case LP_EXPR_SIZE:
                if (ncat < 2) break;
                for (int b = 0; b < 2; b++) { cs[nc] = base; cs[nc++].big = b; }
                break;
            default:
                if (ncat < 2) break;
                for (int k = 1; k <= ncat && k <= 5; k++)
                    for (int fr = 0; fr < 2; fr++) { cs[nc] = base; cs[nc].ord = k; cs[nc++].from_right = fr; }
                break;
            }
            int ok[MAXC], nok = 0;
            for (int i = 0; i < nc; i++)
                if (unique_for(s, &cs[i], t)) ok[nok++] = i;
            if (nok) add_expr(s, &cs[ok[rnd(r, 0, nok - 1)]], t);
        }
    }
}

/* ---- the generator ---- */

static int choose_style(rng *r, int cat, int has_table) {
    int st = rnd(r, 0, 2);
    if (placement(cat, st) == PLACE_TOP && !has_table) {
        if (cat == LP_CAT_LAMP) st = 0;
        if (cat == LP_CAT_CLOCK) st = rnd(r, 0, 1);
    }
    return st;
}

loupe_status lp_scene_generate(uint64_t seed, int index, const lp_scene_params *params, lp_scene *out, lp_error *err) {
    lp_scene_params def;
    lp_scene_params_default(&def);
    const lp_scene_params *p = params ? params : &def;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_scene_generate: NULL scene");
    memset(out, 0, sizeof *out);
    if (p->width < 64 || p->height < 64 || p->width > 2048 || p->height > 2048)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "scene size %dx%d out of range (64..2048 each)", p->width, p->height);
    int minn = p->min_objects > 0 ? p->min_objects : 1, maxn = p->max_objects;
    if (maxn > LP_SCENE_MAX_OBJ || maxn < minn)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "object count %d..%d out of range (1..%d)", minn, maxn, LP_SCENE_MAX_OBJ);
    if (index < 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "scene index %d is negative", index);

    lp_scene *s = out;
    s->w = p->width;
    s->h = p->height;
    s->seed = seed;
    s->index = index;
    size_t npx = (size_t)s->w * s->h;
    s->ids = malloc(npx);
    uint8_t *scratch = calloc(npx, 1);
    if (!s->ids || !scratch) {
        free(scratch);
        lp_scene_free(s);
        return lp_fail(err, LOUPE_ERR_NOMEM, "scene %d: out of memory", index);
    }
    /* One stream per (seed, index): any scene can be made alone. */
    rng r = {seed ^ (0xd1b54a32d192ed03ull * (uint64_t)(index + 1))};
    rng_next(&r);

    for (int attempt = 0; attempt < 64; attempt++) {
        s->n_obj = 0;
        layout_room(s, &r);
        int want = rnd(&r, minn, maxn);
        /* A few categories repeat, so colour, size and ordinal expressions have
         * something to tell apart. */
        int cats[LP_SCENE_MAX_OBJ], nc = 0;
        while (nc < want) {
            int c = rnd(&r, 0, LP_N_CATS - 1);
            int rep = chance(&r, 35) ? rnd(&r, 2, 4) : 1;
            for (int k = 0; k < rep && nc < want; k++) cats[nc++] = c;
        }
        int has_table = 0, has_small = 0, styles[LP_SCENE_MAX_OBJ];
        for (int i = 0; i < nc; i++) {
            has_table |= cats[i] == LP_CAT_TABLE;
            has_small |= cats[i] == LP_CAT_CUP || cats[i] == LP_CAT_BOOK || cats[i] == LP_CAT_BOTTLE;
        }
        if (has_small && !has_table && chance(&r, 60)) { /* give small things somewhere to sit */
            if (nc < maxn) nc++;
            for (int i = nc - 1; i > 0; i--) cats[i] = cats[i - 1];
            cats[0] = LP_CAT_TABLE;
            has_table = 1;
        }
        for (int i = 0; i < nc; i++) styles[i] = choose_style(&r, cats[i], has_table);
        /* floor and wall things first, table-top things once tables stand */
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < nc; i++) {
                lp_scene_object o = {.cat = cats[i], .style = styles[i], .support = -1};
                int where = placement(o.cat, o.style);
                if ((where == PLACE_TOP) != (pass == 1)) continue;
                if (where == PLACE_TOP && !has_table) where = PLACE_FLOOR;
                if (where == PLACE_TOP && o.cat == LP_CAT_BOOK && chance(&r, 20)) where = PLACE_FLOOR;
                o.color = pick_color(&r, o.cat);
                o.mirror = chance(&r, 50);
                o.size_pct = rnd(&r, 75, 130);
                if (place(s, &r, &o, where)) s->obj[s->n_obj++] = o;
            }
        rng_next(&r);
        if (s->n_obj < minn) continue;
        sort_depth(s);
        /* Cull what is mostly hidden, worst first, until everything is >= 30%. */
        for (;;) {
            measure(s, scratch);
            int worst = -1;
            double wv = 0.30;
            for (int i = 0; i < s->n_obj; i++)
                if (s->obj[i].visible_fraction < wv || s->obj[i].area < 12) {
                    if (worst < 0 || s->obj[i].visible_fraction < wv) wv = s->obj[i].visible_fraction;
                    worst = i;
                }
            if (worst < 0) break;
            remove_object(s, worst);
        }
        if (s->n_obj < minn) continue;
        make_expressions(s, &r);
        if (s->n_expr == 0) continue;
        free(scratch);
        return LOUPE_OK;
    }
    free(scratch);
    lp_scene_free(s);
    return lp_fail(err, LOUPE_ERR_INTERNAL, "scene %d of seed %llu: no valid layout in 64 attempts", index, (unsigned long long)seed);
}

void lp_scene_free(lp_scene *s) {
    if (!s) return;
    free(s->ids);
    s->ids = NULL;
}

loupe_status lp_scene_render(const lp_scene *s, lp_image *out, lp_error *err) {
    if (!s || !out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_scene_render: NULL argument");
    loupe_status st = lp_image_alloc(out, s->w, s->h, err);
    if (st) return st;
    uint8_t *ids = malloc((size_t)s->w * s->h);
    if (!ids) {
        lp_image_free(out);
        return lp_fail(err, LOUPE_ERR_NOMEM, "scene %d: out of memory", s->index);
    }
    lp_scene_raster(s, out->rgb, ids, -1);
    free(ids);
    return LOUPE_OK;
}

int lp_scene_mask_rle(const lp_scene *s, int i, int *counts, int cap) {
    /* COCO order: column-major, alternating runs of 0 and 1 starting with 0. */
    int n = 0, cur = 0, run = 0;
    uint8_t id = (uint8_t)(i + 1);
    for (int x = 0; x < s->w; x++)
        for (int y = 0; y < s->h; y++) {
            int v = s->ids[(size_t)y * s->w + x] == id;
            if (v != cur) {
                if (n >= cap) return -1;
                counts[n++] = run;
                run = 0;
                cur = v;
            }
            run++;
        }
    if (n >= cap) return -1;
    counts[n++] = run;
    return n;
}
