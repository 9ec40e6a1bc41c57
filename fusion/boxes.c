/* fusion/boxes.c — box codecs per model family and the geometry that maps
 * their frames back to original-image pixels. See boxes.h for the API.
 *
 * Conventions, and where each was checked:
 *
 * Ferret (apple/ml-ferret, ferret/eval/model_lvis.py and eval_refexp.py):
 *   VOCAB_IMAGE_W = VOCAB_IMAGE_H = 1000; a region is written
 *   int(x / w * 1000) (truncation) and read back as int(v * w / 1000).
 *   Clipped to 999 so a box touching the right edge stays on the 0..999 grid.
 *   The image is squeezed to S×S (do_center_crop=False, size=[336, 336]), so
 *   the frame is the squeezed image and n = x / w.
 * Shikra (shikras/shikra mllm/dataset/utils: expand2square, box_xyxy_expand2square,
 *   norm_box_xyxy, PlainBoxFormatter): the image is padded to a square
 *   (original pasted at ((M-w)//2, (M-h)//2)), the box shifted by the same
 *   offset and normalised by M, each value round(v, 3) printed with 3
 *   decimals, boxes of one bracket joined by ';'. Use lp_box_geom_pad_square.
 * InternVL (OpenGVLab/InternVL eval/refcoco/evaluate_grounding.py):
 *   "<ref>p</ref><box>[[x1, y1, x2, y2]]</box>"; read back as
 *   v / 1000 * (w, h) of the ORIGINAL image. Dynamic tiling cuts the resized
 *   image into 448² tiles but the coordinates are relative to the whole
 *   image, so tiling needs no undo (lp_box_geom_internvl's frame is the
 *   whole image). Writing: round(n * 1000) — the training-side rounding is
 *   not in the public code we could read, nearest is our choice.
 * Qwen2-VL (QwenLM/Qwen2-VL README, grounding; the processor's special
 *   tokens): "<|object_ref_start|>p<|object_ref_end|><|box_start|>(x1,y1),
 *   (x2,y2)<|box_end|>", 0..1000 relative to the image. Written with
 *   round(n * 1000) (our choice, as for InternVL).
 * Qwen2.5-VL (QwenLM/Qwen2.5-VL cookbooks/spatial_understanding; qwen-vl-utils
 *   vision_process.py smart_resize; transformers Qwen2VLImageProcessor):
 *   JSON [{"bbox_2d": [x1, y1, x2, y2], "label": "p"}], often in a ```json
 *   fence, in ABSOLUTE pixels of the smart-resized input. smart_resize:
 *     h' = max(f, round(h / f) * f), w' likewise (Python round: half to even)
 *     if h'·w' > max_pixels: beta = sqrt(h·w / max_pixels),
 *        h' = max(f, floor(h / beta / f) * f), w' likewise
 *     elif h'·w' < min_pixels: beta = sqrt(min_pixels / (h·w)),
 *        h' = ceil(h * beta / f) * f, w' likewise
 *   with f = 28, min 4·28·28, max 16384·28·28 and aspect ratio <= 200
 *   (qwen-vl-utils). transformers' copy refuses h or w < f, otherwise agrees.
 *   Back: x = v · w / w' and y = v · h / h', x and y separately.
 * Kosmos-2 (transformers processing_kosmos2.py, copied from unilm
 *   kosmos-2/demo/decode_string.py): a 32×32 grid, index = row * 32 + col.
 *   Writing (coordinate_to_patch_index): ul = floor(x1 * 32),
 *   lr = ceil(x2 * 32 - 1), requires x2 > x1 and y2 > y1. Reading
 *   (patch_index_to_coordinate): when ul == lr or the two patches share a
 *   row or a column, the box is the outer EDGES of the patches
 *   (ul/32, (lr+1)/32); otherwise it runs between the patch CENTRES
 *   ((ul+0.5)/32, (lr+0.5)/32). Several boxes of one phrase are separated
 *   by </delimiter_of_multi_objects/>.
 * Florence-2 (transformers processing_florence2.py, Florence2PostProcessor):
 *   1000 bins per axis of the original image size; quantize
 *   floor(x / (w / 1000)) clamped to 0..999, dequantize (N + 0.5) * w / 1000
 *   (bin centre; the post-processor then truncates to int, we keep the
 *   float). The phrase is the text before the <loc_> run ("<s>", "</s>",
 *   "<pad>" dropped); one phrase may own several 4-token boxes.
 * PaliGemma (big-vision paligemma-hf Space app.py, _SEGMENT_DETECT_RE and
 *   extract_objs): four <locNNNN> (4 digits, 0..1023) in the order
 *   y1, x1, y2, x2, optionally 16 <segNNN>, then the label up to ';'.
 *   Read back as N / 1024 * size. Writing: floor(n * 1024) clamped to 1023
 *   (the inverse of that read; the training-side encoder is not in the
 *   public code we read).
 *
 * Quantisation cannot be undone: a round trip moves an edge by up to one
 * grid step in original pixels (lp_box_quantum), and a box thinner than a
 * step may vanish into the padding. Grid values are re-derived from floats
 * with a 1e-3-step guard so that parse -> format gives back the same grid
 * values (no x.9999 -> x-1 drift through float pixels). */
#include "boxes.h"
#include "../vision/preprocess.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- names ---- */

static const char *const family_names[LP_BOX_FAMILY_COUNT] = {
    "ferret", "shikra", "internvl", "qwen2-vl", "qwen2.5-vl", "kosmos-2", "florence-2", "paligemma",
};

/* Lower-case, drop '-', '_', '.', ' ' into out (at most n-1 chars). */
static void squash_name(const char *s, char *out, size_t n) {
    size_t k = 0;
    for (; *s && k + 1 < n; s++) {
        if (*s == '-' || *s == '_' || *s == '.' || *s == ' ') continue;
        out[k++] = (char)tolower((unsigned char)*s);
    }
    out[k] = 0;
}

lp_box_family lp_box_family_from_name(const char *name) {
    if (!name) return LP_BOX_UNKNOWN;
    char want[32], have[32];
    if (strlen(name) >= sizeof want) return LP_BOX_UNKNOWN;
    squash_name(name, want, sizeof want);
    for (int f = 0; f < LP_BOX_FAMILY_COUNT; f++) {
        squash_name(family_names[f], have, sizeof have);
        if (strcmp(want, have) == 0) return (lp_box_family)f;
    }
    return LP_BOX_UNKNOWN;
}

const char *lp_box_family_name(lp_box_family f) {
    return (f >= 0 && f < LP_BOX_FAMILY_COUNT) ? family_names[f] : "?";
}

/* ---- geometry ---- */

#define MAX_FRAME 65536

static loupe_status check_image(int w, int h, lp_error *err) {
    if (w < 1 || h < 1 || w > LP_IMAGE_MAX_DIM || h > LP_IMAGE_MAX_DIM)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "box geometry: image size %dx%d outside 1..%d", w, h,
                       LP_IMAGE_MAX_DIM);
    return LOUPE_OK;
}

static loupe_status check_side(int S, lp_error *err) {
    if (S < 1 || S > MAX_FRAME)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "box geometry: model input side %d outside 1..%d", S, MAX_FRAME);
    return LOUPE_OK;
}

static void geom_set(lp_box_geom *g, lp_box_geom_kind kind, int w, int h, int in_w, int in_h, double sx, double sy,
                     double ox, double oy) {
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->orig_w = w;
    g->orig_h = h;
    g->in_w = in_w;
    g->in_h = in_h;
    g->scale_x = sx;
    g->scale_y = sy;
    g->off_x = ox;
    g->off_y = oy;
    g->content_x = ox;
    g->content_y = oy;
    g->content_w = w * sx;
    g->content_h = h * sy;
    g->tiles_x = g->tiles_y = 1;
}

loupe_status lp_box_geom_identity(lp_box_geom *g, int w, int h, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (st) return st;
    geom_set(g, LP_GEOM_IDENTITY, w, h, w, h, 1.0, 1.0, 0.0, 0.0);
    return LOUPE_OK;
}

loupe_status lp_box_geom_squeeze(lp_box_geom *g, int w, int h, int S, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (!st) st = check_side(S, err);
    if (st) return st;
    geom_set(g, LP_GEOM_SQUEEZE, w, h, S, S, (double)S / w, (double)S / h, 0.0, 0.0);
    return LOUPE_OK;
}

/* LLaVA's expand2square: canvas M = max(w, h), image pasted at
 * ((M - w) // 2, (M - h) // 2), then the square resized to S×S. Models
 * trained this way (LLaVA "pad", Shikra) give coordinates relative to the
 * padded square; vision/preprocess.c LP_PREP_PAD_PIL is the same geometry. */
loupe_status lp_box_geom_pad_square(lp_box_geom *g, int w, int h, int S, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (!st) st = check_side(S, err);
    if (st) return st;
    const int M = w > h ? w : h;
    const double s = (double)S / M;
    geom_set(g, LP_GEOM_PAD_SQUARE, w, h, S, S, s, s, ((M - w) / 2) * s, ((M - h) / 2) * s);
    return LOUPE_OK;
}

/* llama.cpp's PAD_CEIL fit (vision/preprocess.c LP_PREP_LLAMACPP, in f32
 * like llama.cpp): scale = min(S/w, S/h), new size min(ceil(side·scale), S),
 * centred at ((S - nw) / 2, (S - nh) / 2). */
loupe_status lp_box_geom_letterbox(lp_box_geom *g, int w, int h, int S, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (!st) st = check_side(S, err);
    if (st) return st;
    if (w == S && h == S) {
        geom_set(g, LP_GEOM_LETTERBOX, w, h, S, S, 1.0, 1.0, 0.0, 0.0);
        return LOUPE_OK;
    }
    int nw, nh;
    lp_fit_inside(w, h, S, &nw, &nh); /* the same sizing as the preprocessing */
    geom_set(g, LP_GEOM_LETTERBOX, w, h, S, S, (double)nw / w, (double)nh / h, (S - nw) / 2, (S - nh) / 2);
    return LOUPE_OK;
}

loupe_status lp_qwen_smart_resize(int w, int h, int factor, long long min_pixels, long long max_pixels, int *out_w,
                                  int *out_h, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (st) return st;
    if (factor <= 0) factor = 28;
    if (min_pixels <= 0) min_pixels = 4LL * 28 * 28;
    if (max_pixels <= 0) max_pixels = 16384LL * 28 * 28;
    if (factor > 4096 || min_pixels > max_pixels)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "smart_resize: factor %d, min_pixels %lld > max_pixels %lld", factor,
                       min_pixels, max_pixels);
    const int mx = w > h ? w : h, mn = w > h ? h : w;
    if ((double)mx / mn > 200.0)
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "smart_resize: aspect ratio %dx%d above 200, refused by Qwen's processor",
                       w, h);
    const double f = factor;
    /* rint: round half to even in the default rounding mode, like Python's round(). */
    double hb = rint(h / f) * f, wb = rint(w / f) * f;
    if (hb < f) hb = f;
    if (wb < f) wb = f;
    const double hw = (double)h * (double)w;
    if (hb * wb > (double)max_pixels) {
        const double beta = sqrt(hw / (double)max_pixels);
        hb = floor(h / beta / f) * f;
        wb = floor(w / beta / f) * f;
        if (hb < f) hb = f;
        if (wb < f) wb = f;
    } else if (hb * wb < (double)min_pixels) {
        const double beta = sqrt((double)min_pixels / hw);
        hb = ceil(h * beta / f) * f;
        wb = ceil(w * beta / f) * f;
    }
    if (hb > MAX_FRAME || wb > MAX_FRAME)
        return lp_fail(err, LOUPE_ERR_LIMIT, "smart_resize: %dx%d resizes to %.0fx%.0f, above %d", w, h, wb, hb,
                       MAX_FRAME);
    *out_w = (int)wb;
    *out_h = (int)hb;
    return LOUPE_OK;
}

loupe_status lp_box_geom_qwen(lp_box_geom *g, int w, int h, int factor, long long min_pixels, long long max_pixels,
                              lp_error *err) {
    int rw = 0, rh = 0;
    loupe_status st = lp_qwen_smart_resize(w, h, factor, min_pixels, max_pixels, &rw, &rh, err);
    if (st) return st;
    geom_set(g, LP_GEOM_QWEN, w, h, rw, rh, (double)rw / w, (double)rh / h, 0.0, 0.0);
    return LOUPE_OK;
}

/* InternVL's dynamic_preprocess / find_closest_aspect_ratio: among the grids
 * (i, j) with min_num <= i·j <= max_num, sorted by i·j, the one whose i/j is
 * closest to w/h; on a tie the later one wins when w·h > 0.5·tile²·i·j. The
 * image is resized to (tile·i, tile·j) and cut into tiles (plus a thumbnail).
 * Python sorts a set, so grids with equal i·j come in hash order; we take i
 * ascending, which only matters on an exact tie of two equal-area grids.
 * Boxes do not depend on any of this (see the header comment). */
loupe_status lp_box_geom_internvl(lp_box_geom *g, int w, int h, int tile, int min_num, int max_num, lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (st) return st;
    if (tile <= 0) tile = 448;
    if (min_num <= 0) min_num = 1;
    if (max_num <= 0) max_num = 12;
    if (tile > 4096 || max_num > 64 || min_num > max_num)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "internvl tiles: tile %d, min_num %d, max_num %d", tile, min_num,
                       max_num);
    const double ar = (double)w / h, area = (double)w * h;
    double best_diff = INFINITY;
    int bi = 1, bj = 1;
    for (int prod = min_num; prod <= max_num; prod++) {
        for (int i = 1; i <= prod; i++) {
            if (prod % i) continue;
            const int j = prod / i;
            const double diff = fabs(ar - (double)i / j);
            if (diff < best_diff) {
                best_diff = diff;
                bi = i;
                bj = j;
            } else if (diff == best_diff && area > 0.5 * tile * tile * i * j) {
                bi = i;
                bj = j;
            }
        }
    }
    const int tw = tile * bi, th = tile * bj;
    if (tw > MAX_FRAME || th > MAX_FRAME)
        return lp_fail(err, LOUPE_ERR_LIMIT, "internvl tiles: %dx%d above %d", tw, th, MAX_FRAME);
    geom_set(g, LP_GEOM_INTERNVL, w, h, tw, th, (double)tw / w, (double)th / h, 0.0, 0.0);
    g->tiles_x = bi;
    g->tiles_y = bj;
    return LOUPE_OK;
}

loupe_status lp_box_geom_from_prep(lp_box_geom *g, const lp_prep_geom *p, int w, int h, int S, lp_error *err) {
    return lp_box_geom_from_prep_wh(g, p, w, h, S, S, err);
}

loupe_status lp_box_geom_from_prep_wh(lp_box_geom *g, const lp_prep_geom *p, int w, int h, int in_w, int in_h,
                                      lp_error *err) {
    loupe_status st = check_image(w, h, err);
    if (!st) st = check_side(in_w, err);
    if (!st) st = check_side(in_h, err);
    if (st) return st;
    if (!p || !(p->scale_x > 0) || !(p->scale_y > 0) || !isfinite(p->scale_x) || !isfinite(p->scale_y) ||
        !isfinite(p->off_x) || !isfinite(p->off_y))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "box geometry: preprocess geometry missing or not finite");
    geom_set(g, LP_GEOM_PREP, w, h, in_w, in_h, p->scale_x, p->scale_y, p->off_x, p->off_y);
    g->content_x = p->content_x;
    g->content_y = p->content_y;
    g->content_w = p->content_w;
    g->content_h = p->content_h;
    return LOUPE_OK;
}

static int geom_ok(const lp_box_geom *g) {
    return g && g->orig_w >= 1 && g->orig_h >= 1 && g->orig_w <= LP_IMAGE_MAX_DIM && g->orig_h <= LP_IMAGE_MAX_DIM &&
           g->in_w >= 1 && g->in_h >= 1 && g->in_w <= MAX_FRAME && g->in_h <= MAX_FRAME && g->scale_x > 0 &&
           g->scale_y > 0 && isfinite(g->scale_x) && isfinite(g->scale_y) && isfinite(g->off_x) && isfinite(g->off_y);
}

int lp_box_from_frame(const lp_box_geom *g, double x1, double y1, double x2, double y2, lp_box *out) {
    if (!geom_ok(g) || !out) return -1;
    if (!isfinite(x1) || !isfinite(y1) || !isfinite(x2) || !isfinite(y2)) return -1;
    if (x2 < x1 || y2 < y1) return -1;
    const double W = g->orig_w, H = g->orig_h, eps = 1e-6;
    double a = (x1 - g->off_x) / g->scale_x, b = (y1 - g->off_y) / g->scale_y;
    double c = (x2 - g->off_x) / g->scale_x, d = (y2 - g->off_y) / g->scale_y;
    if (c < -eps || a > W + eps || d < -eps || b > H + eps) return -1; /* wholly outside: in the padding */
    const double ca = a < 0 ? 0 : (a > W ? W : a), cb = b < 0 ? 0 : (b > H ? H : b);
    const double cc = c < 0 ? 0 : (c > W ? W : c), cd = d < 0 ? 0 : (d > H ? H : d);
    /* A box with extent that clips to nothing only touched the image edge from the padding. */
    if ((c - a > eps && cc - ca <= 0) || (d - b > eps && cd - cb <= 0)) return -1;
    out->x1 = (float)ca;
    out->y1 = (float)cb;
    out->x2 = (float)cc;
    out->y2 = (float)cd;
    return 0;
}

void lp_box_to_frame(const lp_box_geom *g, const lp_box *b, double f[4]) {
    f[0] = b->x1 * g->scale_x + g->off_x;
    f[1] = b->y1 * g->scale_y + g->off_y;
    f[2] = b->x2 * g->scale_x + g->off_x;
    f[3] = b->y2 * g->scale_y + g->off_y;
}

/* ---- parsing helpers ---- */

typedef struct pctx {
    const char *s; /* start of the answer: offsets are relative to it */
    const lp_box_geom *g;
    lp_box *out;
    int max, n;
    lp_box_issue *iss;
    int max_iss, n_iss;
} pctx;

static void issue(pctx *c, const char *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void issue(pctx *c, const char *at, const char *fmt, ...) {
    if (!c->iss || c->n_iss >= c->max_iss) return;
    lp_box_issue *e = &c->iss[c->n_iss++];
    e->offset = (int)(at - c->s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->reason, sizeof e->reason, fmt, ap);
    va_end(ap);
    if (!e->reason[0]) snprintf(e->reason, sizeof e->reason, "rejected");
    if (c->n_iss < c->max_iss) c->iss[c->n_iss].reason[0] = 0;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }
static const char *skip_ws(const char *p) {
    while (is_ws(*p)) p++;
    return p;
}
static int starts(const char *p, const char *lit) { return strncmp(p, lit, strlen(lit)) == 0; }

/* Last occurrence of lit starting in [from, to). */
static const char *rfind(const char *from, const char *to, const char *lit) {
    const size_t n = strlen(lit);
    if (to < from || (size_t)(to - from) < n) return NULL;
    for (const char *p = to - n; p >= from; p--) {
        if (memcmp(p, lit, n) == 0) return p;
        if (p == from) break;
    }
    return NULL;
}
/* First occurrence of lit inside [from, to); bounded so that repeated
 * searches stay linear in the answer. */
static const char *find(const char *from, const char *to, const char *lit) {
    if (to <= from) return NULL;
    return memmem(from, (size_t)(to - from), lit, strlen(lit));
}

/* Copy [b, e) into a label: trimmed, control bytes as spaces, cut at a UTF-8
 * character boundary to fit. */
static void set_label(char dst[LP_BOX_LABEL_MAX], const char *b, const char *e) {
    dst[0] = 0;
    if (!b || !e || e <= b) return;
    while (b < e && (is_ws(*b))) b++;
    while (e > b && (is_ws(e[-1]))) e--;
    size_t n = (size_t)(e - b);
    if (n > LP_BOX_LABEL_MAX - 1) {
        n = LP_BOX_LABEL_MAX - 1;
        while (n > 0 && ((unsigned char)b[n] & 0xC0) == 0x80) n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)b[i];
        dst[i] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    dst[n] = 0;
}

/* One decimal number: [-]digits[.digits]. Values beyond 9 integer digits are
 * refused ("too large"), so nothing ever overflows. Returns 1 and moves *pp
 * past it, or 0 with a reason (and *pp at the failure). */
static int parse_number(const char **pp, double *v, int *is_int, char *why, size_t nwhy) {
    const char *p = skip_ws(*pp);
    int neg = 0, nd = 0, nf = 0, big = 0;
    double x = 0.0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    while (*p >= '0' && *p <= '9') {
        if (nd < 9) x = x * 10 + (*p - '0');
        else big = 1;
        nd++;
        p++;
    }
    *is_int = 1;
    if (*p == '.' && nd > 0) {
        *is_int = 0;
        p++;
        double scale = 0.1;
        while (*p >= '0' && *p <= '9') {
            if (nf < 15) x += (*p - '0') * scale;
            scale *= 0.1;
            nf++;
            p++;
        }
    }
    if (nd == 0) {
        *pp = p;
        if (!*p) snprintf(why, nwhy, "truncated: the answer ends where a number should be");
        else snprintf(why, nwhy, "not a number at '%.12s'", p);
        return 0;
    }
    if (isalpha((unsigned char)*p) || *p == '_' || *p == '.') {
        *pp = p;
        snprintf(why, nwhy, "not a number: '%c' inside it", *p);
        return 0;
    }
    if (big) {
        *pp = p;
        snprintf(why, nwhy, "number too large (%d digits)", nd);
        return 0;
    }
    *pp = p;
    *v = neg ? -x : x;
    return 1;
}

/* Numbers separated by ',' up to one of `closers` (consumed; which one in
 * *closed). Returns the count, or -1 with a reason. */
static int read_numbers(const char **pp, double *v, int maxv, int *all_int, const char *closers, char *closed,
                        char *why, size_t nwhy) {
    const char *p = *pp;
    int n = 0;
    *all_int = 1;
    for (;;) {
        double x;
        int isint;
        if (!parse_number(&p, &x, &isint, why, nwhy)) {
            *pp = p;
            return -1;
        }
        if (n >= maxv) {
            *pp = p;
            snprintf(why, nwhy, "more than %d numbers in one box", maxv);
            return -1;
        }
        v[n++] = x;
        if (!isint) *all_int = 0;
        p = skip_ws(p);
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p && strchr(closers, *p)) {
            *closed = *p;
            *pp = p + 1;
            return n;
        }
        *pp = p;
        if (!*p) snprintf(why, nwhy, "unterminated: the answer ends inside the box");
        else snprintf(why, nwhy, "unexpected '%c' in the box", *p);
        return -1;
    }
}

/* Range of grid values: 0..hi inclusive. */
static int in_range(pctx *c, const char *at, const double *v, int n, double hi_x, double hi_y) {
    for (int i = 0; i < n; i++) {
        const double hi = (i & 1) ? hi_y : hi_x;
        if (v[i] < 0) {
            issue(c, at, "negative coordinate %g", v[i]);
            return 0;
        }
        if (v[i] > hi) {
            issue(c, at, "coordinate %g above the grid maximum %g", v[i], hi);
            return 0;
        }
    }
    return 1;
}

/* v: the four grid values as written (x1, y1, x2, y2) for the messages and
 * the order check; f: the same box in frame pixels. */
static void emit(pctx *c, const char *at, const double v[4], const double f[4], const char *lb, const char *le) {
    if (v[2] < v[0]) {
        issue(c, at, "x2 < x1 (%g < %g)", v[2], v[0]);
        return;
    }
    if (v[3] < v[1]) {
        issue(c, at, "y2 < y1 (%g < %g)", v[3], v[1]);
        return;
    }
    lp_box b;
    if (lp_box_from_frame(c->g, f[0], f[1], f[2], f[3], &b) != 0) {
        issue(c, at, "box [%g, %g, %g, %g] lies outside the image (in the padding)", v[0], v[1], v[2], v[3]);
        return;
    }
    if (c->n >= c->max) {
        issue(c, at, "box dropped: output holds only %d boxes", c->max);
        return;
    }
    set_label(b.label, lb, le);
    c->out[c->n++] = b;
}

/* Normalised (0..1 of the frame) box -> emit. */
static void emit_norm(pctx *c, const char *at, const double v[4], const double n[4], const char *lb, const char *le) {
    const double f[4] = {n[0] * c->g->in_w, n[1] * c->g->in_h, n[2] * c->g->in_w, n[3] * c->g->in_h};
    emit(c, at, v, f, lb, le);
}

#define TAG_BOXES 32 /* boxes one tag or bracket may hold */

/* ---- Ferret / Shikra: phrase [a, b, c, d] ---- */

/* The phrase before a '[': back to the previous box or a sentence/clause mark. */
static const char *phrase_start(const char *seg, const char *at) {
    const char *p = at;
    while (p > seg && !strchr(".;!?:,\n", p[-1])) p--;
    return p;
}

static void parse_bracket(pctx *c, int shikra) {
    const char *p = c->s, *seg = c->s;
    char why[LP_BOX_REASON_MAX];
    while ((p = strchr(p, '['))) {
        const char *at = p, *q = skip_ws(p + 1);
        const int nested = (*q == '[');
        if (nested) q++;
        const char *lb = phrase_start(seg, at), *le = at;
        double bx[TAG_BOXES][4];
        int nb = 0, ok = 1;
        for (;;) { /* Shikra: several boxes in one bracket, ';'-separated */
            double v[8];
            int all_int;
            char closed = 0;
            const int k = read_numbers(&q, v, 8, &all_int, shikra ? "];" : "]", &closed, why, sizeof why);
            if (k < 0) {
                issue(c, at, "%s", why);
                ok = 0; /* malformed or cut off: nothing from this bracket */
                break;
            }
            if (k != 4) {
                issue(c, at, "expected 4 numbers, got %d", k);
            } else if (!shikra && !all_int) {
                issue(c, at, "Ferret coordinates are integers 0..999, got a fraction");
            } else if (in_range(c, at, v, 4, shikra ? 1.0 : 999.0, shikra ? 1.0 : 999.0)) {
                if (nb < TAG_BOXES) memcpy(bx[nb++], v, sizeof v[0] * 4);
                else issue(c, at, "more than %d boxes in one bracket", TAG_BOXES);
            }
            if (closed == ';') continue;
            if (nested) { /* [[...]] : the outer bracket closes too */
                q = skip_ws(q);
                if (*q == ']') q++;
            }
            break;
        }
        const double d = shikra ? 1.0 : 1000.0;
        for (int i = 0; ok && i < nb; i++) {
            const double n[4] = {bx[i][0] / d, bx[i][1] / d, bx[i][2] / d, bx[i][3] / d};
            emit_norm(c, at, bx[i], n, lb, le);
        }
        p = q > at ? q : at + 1;
        seg = p;
    }
}

/* ---- InternVL: <ref>p</ref><box>[[a, b, c, d], ...]</box> ---- */

/* The phrase of a tag pair ending right before `at` (whitespace allowed). */
static int tagged_phrase(const char *seg, const char *at, const char *open, const char *close, const char **lb,
                         const char **le) {
    const char *p = at;
    while (p > seg && is_ws(p[-1])) p--;
    const size_t nc = strlen(close);
    if ((size_t)(p - seg) < nc || memcmp(p - nc, close, nc) != 0) return 0;
    const char *o = rfind(seg, p - nc, open);
    if (!o) return 0;
    *lb = o + strlen(open);
    *le = p - nc;
    return 1;
}

static void parse_internvl(pctx *c) {
    const char *p = c->s, *seg = c->s;
    char why[LP_BOX_REASON_MAX];
    while ((p = strstr(p, "<box>"))) {
        const char *at = p, *lb = NULL, *le = NULL;
        tagged_phrase(seg, at, "<ref>", "</ref>", &lb, &le);
        const char *q = skip_ws(p + 5);
        double bx[TAG_BOXES][4];
        int nb = 0, bad = 0;
        if (*q != '[') {
            issue(c, at, *q ? "<box> not followed by '['" : "unterminated <box>: the answer ends after it");
            p = at + 5;
            seg = p;
            continue;
        }
        q = skip_ws(q + 1);
        const int nested = (*q == '[');
        for (;;) {
            if (nested) {
                q = skip_ws(q);
                if (*q != '[') {
                    issue(c, at, *q ? "expected '[' for the next box" : "unterminated <box>: the answer ends inside it");
                    bad = 1;
                    break;
                }
                q++;
            }
            double v[8];
            int all_int;
            char closed = 0;
            const int k = read_numbers(&q, v, 8, &all_int, "]", &closed, why, sizeof why);
            if (k < 0) {
                issue(c, at, "%s", why);
                bad = 1;
                break;
            }
            if (k != 4) issue(c, at, "expected 4 numbers, got %d", k);
            else if (in_range(c, at, v, 4, 1000.0, 1000.0)) {
                if (nb < TAG_BOXES) memcpy(bx[nb++], v, sizeof v[0] * 4);
                else issue(c, at, "more than %d boxes in one <box>", TAG_BOXES);
            }
            if (!nested) break;
            q = skip_ws(q);
            if (*q == ',') {
                q++;
                continue;
            }
            if (*q == ']') {
                q++;
                break;
            }
            issue(c, at, *q ? "unexpected '%c' between boxes" : "unterminated <box>: the answer ends inside it", *q);
            bad = 1;
            break;
        }
        if (!bad) {
            q = skip_ws(q);
            if (!starts(q, "</box>")) {
                issue(c, at, "unterminated <box>: no </box> after the coordinates");
                bad = 1;
            } else {
                q += 6;
            }
        }
        if (!bad) {
            for (int i = 0; i < nb; i++) {
                const double n[4] = {bx[i][0] / 1000, bx[i][1] / 1000, bx[i][2] / 1000, bx[i][3] / 1000};
                emit_norm(c, at, bx[i], n, lb, le);
            }
        }
        p = q > at + 5 ? q : at + 5;
        seg = p;
    }
}

/* ---- Qwen2-VL: <|box_start|>(a,b),(c,d)<|box_end|> ---- */

static void parse_qwen2vl(pctx *c) {
    static const char open[] = "<|box_start|>", close[] = "<|box_end|>";
    const char *p = c->s, *seg = c->s;
    char why[LP_BOX_REASON_MAX];
    while ((p = strstr(p, open))) {
        const char *at = p, *lb = NULL, *le = NULL;
        tagged_phrase(seg, at, "<|object_ref_start|>", "<|object_ref_end|>", &lb, &le);
        const char *q = p + sizeof open - 1;
        double v[4];
        int ok = 1;
        for (int pt = 0; pt < 2 && ok; pt++) {
            q = skip_ws(q);
            if (pt == 1) {
                if (*q != ',') {
                    issue(c, at, *q ? "expected ',' between the two corners" : "unterminated <|box_start|>");
                    ok = 0;
                    break;
                }
                q = skip_ws(q + 1);
            }
            if (*q != '(') {
                issue(c, at, *q ? "expected '(' for a corner" : "unterminated <|box_start|>");
                ok = 0;
                break;
            }
            q++;
            double xy[4];
            int all_int;
            char closed = 0;
            const int k = read_numbers(&q, xy, 4, &all_int, ")", &closed, why, sizeof why);
            if (k < 0) {
                issue(c, at, "%s", why);
                ok = 0;
            } else if (k != 2) {
                issue(c, at, "a corner needs 2 numbers, got %d", k);
                ok = 0;
            } else {
                v[pt * 2] = xy[0];
                v[pt * 2 + 1] = xy[1];
            }
        }
        if (ok) {
            q = skip_ws(q);
            if (!starts(q, close)) {
                issue(c, at, "unterminated <|box_start|>: no <|box_end|> after the corners");
                ok = 0;
            } else {
                q += sizeof close - 1;
            }
        }
        if (ok && in_range(c, at, v, 4, 1000.0, 1000.0)) {
            const double n[4] = {v[0] / 1000, v[1] / 1000, v[2] / 1000, v[3] / 1000};
            emit_norm(c, at, v, n, lb, le);
        }
        p = q > at ? q : at + 1;
        seg = p;
    }
}

/* ---- Qwen2.5-VL: JSON objects with "bbox_2d" and "label" ---- */

/* End of the JSON string whose opening quote is at p (returns the closing
 * quote, or NULL when the answer ends first). */
static const char *json_string_end(const char *p) {
    for (p++; *p; p++) {
        if (*p == '\\') {
            if (!p[1]) return NULL;
            p++;
        } else if (*p == '"') {
            return p;
        }
    }
    return NULL;
}

/* The '}' closing the object that contains `from`, skipping strings and
 * nested objects; NULL when the answer ends first. */
static const char *json_object_end(const char *from) {
    int depth = 0;
    for (const char *p = from; *p; p++) {
        if (*p == '"') {
            p = json_string_end(p);
            if (!p) return NULL;
        } else if (*p == '{' || *p == '[') {
            depth++;
        } else if (*p == '}' || *p == ']') {
            if (depth == 0) return *p == '}' ? p : NULL;
            depth--;
        }
    }
    return NULL;
}

/* The '{' opening the object that contains `at`, or NULL (a bare key);
 * looks back no further than s (the end of the previous box). */
static const char *json_object_start(const char *s, const char *at) {
    int depth = 0;
    for (const char *p = at; p > s;) {
        p--;
        if (*p == '}' || *p == ']') depth++;
        else if (*p == '{' || *p == '[') {
            if (depth == 0) return *p == '{' ? p : NULL;
            depth--;
        }
    }
    return NULL;
}

/* Decode the JSON string at [b, e) (no quotes) into dst; \uXXXX to UTF-8,
 * surrogates as '?'. */
static void json_label(char dst[LP_BOX_LABEL_MAX], const char *b, const char *e) {
    char tmp[LP_BOX_LABEL_MAX * 2];
    size_t n = 0;
    for (const char *p = b; p < e && n + 4 < sizeof tmp; p++) {
        if (*p != '\\') {
            tmp[n++] = *p;
            continue;
        }
        if (++p >= e) break;
        switch (*p) {
        case 'n': case 't': case 'r': case 'b': case 'f': tmp[n++] = ' '; break;
        case 'u': {
            unsigned cp = 0;
            int k = 0;
            for (; k < 4 && p + 1 < e && isxdigit((unsigned char)p[1]); k++, p++)
                cp = cp * 16 + (unsigned)(isdigit((unsigned char)p[1]) ? p[1] - '0' : (tolower((unsigned char)p[1]) - 'a' + 10));
            if (k < 4 || (cp >= 0xD800 && cp <= 0xDFFF)) tmp[n++] = '?';
            else if (cp < 0x80) tmp[n++] = (char)cp;
            else if (cp < 0x800) {
                tmp[n++] = (char)(0xC0 | (cp >> 6));
                tmp[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                tmp[n++] = (char)(0xE0 | (cp >> 12));
                tmp[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                tmp[n++] = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: tmp[n++] = *p; break; /* \" \\ \/ */
        }
    }
    set_label(dst, tmp, tmp + n);
}

static void parse_qwen25vl(pctx *c) {
    static const char key[] = "\"bbox_2d\"";
    const char *p = c->s, *seg = c->s;
    char why[LP_BOX_REASON_MAX];
    while ((p = strstr(p, key))) {
        const char *at = p, *q = skip_ws(p + sizeof key - 1);
        int stop = 0;
        double v[8];
        int k = -1, all_int;
        char closed = 0;
        if (*q != ':') {
            issue(c, at, *q ? "\"bbox_2d\" not followed by ':'" : "truncated after \"bbox_2d\"");
        } else {
            q = skip_ws(q + 1);
            if (*q != '[') {
                issue(c, at, *q ? "\"bbox_2d\" is not an array" : "truncated after \"bbox_2d\":");
            } else {
                q++;
                k = read_numbers(&q, v, 8, &all_int, "]", &closed, why, sizeof why);
                if (k < 0) issue(c, at, "%s", why);
                else if (k != 4) issue(c, at, "\"bbox_2d\" needs 4 numbers, got %d", k);
            }
        }
        if (k == 4) {
            const char *ob = json_object_start(seg, at), *oe = NULL;
            int ok = 1;
            if (ob) {
                oe = json_object_end(q);
                if (!oe) {
                    /* the answer was cut off inside this object: whatever
                     * follows is inside it too, so stop here */
                    issue(c, at, "unterminated JSON object: the answer ends before its '}'");
                    ok = 0;
                    stop = 1;
                }
            }
            char label[LP_BOX_LABEL_MAX] = {0};
            if (ok && ob) {
                /* "label": "..." anywhere in this object, before or after bbox_2d */
                for (const char *l = ob; (l = find(l, oe, "\"label\"")); l += 7) {
                    const char *t = skip_ws(l + 7);
                    if (*t != ':') continue;
                    t = skip_ws(t + 1);
                    if (*t != '"') continue;
                    const char *te = json_string_end(t);
                    if (te && te < oe) json_label(label, t + 1, te);
                    break;
                }
            }
            if (ok && in_range(c, at, v, 4, c->g->in_w, c->g->in_h)) {
                const int before = c->n;
                emit(c, at, v, v, NULL, NULL);
                if (c->n > before) memcpy(c->out[c->n - 1].label, label, sizeof label);
            }
        }
        if (stop) break;
        p = q > at ? q : at + 1;
        seg = p;
    }
}

/* ---- Kosmos-2: <phrase>p</phrase><object><patch_index_A><patch_index_B>...</object> ---- */

/* <patch_index_DDDD> at *pp: index, or -1 (malformed) / -2 (answer ended). */
static int patch_token(const char **pp) {
    static const char lit[] = "<patch_index_";
    const char *p = *pp;
    if (!*p) return -2;
    if (!starts(p, lit)) {
        if (strncmp(p, lit, strlen(p)) == 0) return -2; /* the answer ends inside the token */
        return -1;
    }
    p += sizeof lit - 1;
    int v = 0, nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (nd < 6) v = v * 10 + (*p - '0');
        nd++;
        p++;
    }
    if (!*p) return -2;
    if (nd == 0 || nd > 6 || *p != '>') return -1;
    *pp = p + 1;
    return v;
}

static void parse_kosmos2(pctx *c) {
    static const char delim[] = "</delimiter_of_multi_objects/>";
    const char *p = c->s, *seg = c->s;
    const int G = 32; /* patches per side: 1024 <patch_index> tokens */
    while ((p = strstr(p, "<object>"))) {
        const char *at = p, *lb = NULL, *le = NULL;
        tagged_phrase(seg, at, "<phrase>", "</phrase>", &lb, &le);
        const char *q = p + 8;
        int pairs[TAG_BOXES][2], np = 0, ok = 1;
        for (;;) {
            q = skip_ws(q);
            const int a = patch_token(&q);
            const int b = a >= 0 ? patch_token(&q) : a;
            if (a == -2 || b == -2) {
                issue(c, at, "unterminated <object>: the answer ends inside it");
                ok = 0;
                break;
            }
            if (a < 0 || b < 0) {
                issue(c, at, "<object> needs <patch_index_N><patch_index_M> pairs");
                ok = 0;
                break;
            }
            if (a >= G * G || b >= G * G) {
                issue(c, at, "patch index %d above the grid maximum %d", a > b ? a : b, G * G - 1);
            } else if (np < TAG_BOXES) {
                pairs[np][0] = a;
                pairs[np][1] = b;
                np++;
            } else {
                issue(c, at, "more than %d boxes in one <object>", TAG_BOXES);
            }
            q = skip_ws(q);
            if (starts(q, delim)) {
                q += sizeof delim - 1;
                continue;
            }
            if (starts(q, "</object>")) {
                q += 9;
                break;
            }
            issue(c, at, *q ? "expected </object> or a delimiter after the patch pair" : "unterminated <object>: no </object>");
            ok = 0;
            break;
        }
        for (int i = 0; ok && i < np; i++) {
            const int ul = pairs[i][0], lr = pairs[i][1];
            const int ux = ul % G, uy = ul / G, lx = lr % G, ly = lr / G;
            const double v[4] = {ux, uy, lx, ly};
            double n[4];
            /* transformers patch_index_to_coordinate: edges when the patches
             * coincide or share a row or column, otherwise patch centres */
            if (ul == lr || ux == lx || uy == ly) {
                n[0] = (double)ux / G;
                n[1] = (double)uy / G;
                n[2] = (double)(lx + 1) / G;
                n[3] = (double)(ly + 1) / G;
            } else {
                n[0] = (ux + 0.5) / G;
                n[1] = (uy + 0.5) / G;
                n[2] = (lx + 0.5) / G;
                n[3] = (ly + 0.5) / G;
            }
            emit_norm(c, at, v, n, lb, le);
        }
        p = q > at ? q : at + 1;
        seg = p;
    }
}

/* ---- Florence-2 <loc_N> and PaliGemma <locNNNN> runs ---- */

/* One location token at *pp. Florence: "<loc_" digits ">"; PaliGemma:
 * "<loc" 4 digits ">". Returns the value, -1 when p is not such a token,
 * -2 when it starts like one but is malformed or cut off. */
static int loc_token(const char **pp, int paligemma) {
    const char *p = *pp;
    if (!starts(p, "<loc")) return -1;
    p += 4;
    if (!paligemma) {
        if (*p != '_') return -1;
        p++;
    } else if (!(*p >= '0' && *p <= '9')) {
        return -1;
    }
    int v = 0, nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (nd < 6) v = v * 10 + (*p - '0');
        nd++;
        p++;
    }
    if (*p != '>' || nd == 0 || nd > 6 || (paligemma && nd != 4)) return -2;
    *pp = p + 1;
    return v;
}

static void parse_locs(pctx *c, int paligemma) {
    const char *p = c->s, *seg = c->s;
    const int grid = paligemma ? 1024 : 1000;
    while ((p = strstr(p, "<loc"))) {
        const char *at = p, *q = p;
        int vals[4 * TAG_BOXES], k = 0, bad = 0;
        for (;;) {
            const char *t = q;
            const int v = loc_token(&t, paligemma);
            if (v == -1) break;
            if (v == -2) {
                issue(c, q, *t && strchr(q, '>') ? "malformed location token" : "unterminated location token");
                bad = 1;
                q = q + 4;
                break;
            }
            if (k < 4 * TAG_BOXES) vals[k++] = v;
            q = t;
        }
        if (k == 0) { /* "<loc" that is no token of this family */
            p = q > at ? q : at + 1;
            continue;
        }
        if (k % 4) issue(c, at, "%d location tokens left over (a box takes 4)", k % 4);
        (void)bad;
        /* Florence: the phrase before the run, back to the previous tag.
         * PaliGemma: the label after the run (and its optional <segNNN>). */
        const char *lb = NULL, *le = NULL;
        const char *after = q;
        if (!paligemma) {
            lb = at;
            while (lb > seg && lb[-1] != '>') lb--;
            le = at;
        } else {
            const char *t = skip_ws(q);
            for (int s = 0; s < 16 && starts(t, "<seg"); s++) {
                const char *e = t + 4;
                while (*e >= '0' && *e <= '9') e++;
                if (*e != '>') break;
                t = e + 1;
            }
            lb = t;
            le = t;
            while (*le && *le != ';' && *le != '<' && *le != '\n') le++;
            after = le;
        }
        for (int i = 0; i + 3 < k; i += 4) {
            int bad_range = 0;
            for (int j = 0; j < 4; j++)
                if (vals[i + j] >= grid) {
                    issue(c, at, "location %d above the grid maximum %d", vals[i + j], grid - 1);
                    bad_range = 1;
                    break;
                }
            if (bad_range) continue;
            double v[4], n[4];
            if (paligemma) { /* y1 x1 y2 x2, N / 1024 */
                v[0] = vals[i + 1];
                v[1] = vals[i];
                v[2] = vals[i + 3];
                v[3] = vals[i + 2];
                for (int j = 0; j < 4; j++) n[j] = v[j] / 1024.0;
            } else { /* x1 y1 x2 y2, bin centres (N + 0.5) / 1000 */
                for (int j = 0; j < 4; j++) {
                    v[j] = vals[i + j];
                    n[j] = (v[j] + 0.5) / 1000.0;
                }
            }
            /* a PaliGemma label belongs to the last box of its run */
            const int last = i + 4 >= k - (k % 4);
            emit_norm(c, at, v, n, (!paligemma || last) ? lb : NULL, (!paligemma || last) ? le : NULL);
        }
        p = after > at ? after : at + 1;
        seg = p;
    }
}

/* ---- entry points ---- */

int lp_boxes_parse(lp_box_family family, const char *answer, const lp_box_geom *g, lp_box *out, int max,
                   lp_box_issue *issues, int max_issues) {
    pctx c = {answer ? answer : "", g, out, out ? (max > 0 ? max : 0) : 0, 0, issues, max_issues > 0 ? max_issues : 0,
              0};
    if (c.iss && c.max_iss > 0) c.iss[0].reason[0] = 0;
    if (!geom_ok(g)) {
        issue(&c, c.s, "no valid geometry: nothing parsed");
        return 0;
    }
    switch (family) {
    case LP_BOX_FERRET: parse_bracket(&c, 0); break;
    case LP_BOX_SHIKRA: parse_bracket(&c, 1); break;
    case LP_BOX_INTERNVL: parse_internvl(&c); break;
    case LP_BOX_QWEN2VL: parse_qwen2vl(&c); break;
    case LP_BOX_QWEN25VL: parse_qwen25vl(&c); break;
    case LP_BOX_KOSMOS2: parse_kosmos2(&c); break;
    case LP_BOX_FLORENCE2: parse_locs(&c, 0); break;
    case LP_BOX_PALIGEMMA: parse_locs(&c, 1); break;
    default: issue(&c, c.s, "unknown box family %d", (int)family); break;
    }
    return c.n;
}

int lp_box_issue_count(const lp_box_issue *issues, int max_issues) {
    int n = 0;
    while (issues && n < max_issues && issues[n].reason[0]) n++;
    return n;
}

/* ---- formatting ---- */

typedef struct wr {
    char *buf;
    size_t size, len;
    int overflow;
} wr;

static void wr_printf(wr *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void wr_printf(wr *w, const char *fmt, ...) {
    if (w->overflow) return;
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(w->buf + w->len, w->size - w->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= w->size - w->len) {
        w->overflow = 1;
        return;
    }
    w->len += (size_t)n;
}

/* A label inside tags: bytes that would end the tag or the JSON string are
 * replaced, so the text always parses back. */
static void wr_label(wr *w, const char *label, const char *bad, int json) {
    for (const char *p = label; *p && !w->overflow; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f || strchr(bad, ch)) ch = ' ';
        if (json && (ch == '"' || ch == '\\')) wr_printf(w, "\\%c", ch);
        else wr_printf(w, "%c", ch);
    }
}

/* floor / ceil with a guard of 1e-3 grid steps: a box parsed from grid
 * value v comes back as v ± ~1e-4 steps after the trip through float
 * original pixels, and must quantise to v again. The reference rules
 * differ from these only within 1e-3 of a step below an integer. */
static int qfloor(double x) { return (int)floor(x + 1e-3); }
static int qceil(double x) { return (int)ceil(x - 1e-3); }
static int qround(double x) { return (int)floor(x + 0.5); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
static double clampd(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

int lp_box_format(lp_box_family family, const lp_box *box, const lp_box_geom *g, char *buf, size_t size) {
    if (!buf || size == 0) return -1;
    buf[0] = 0;
    if (!box || !geom_ok(g)) return -1;
    const double W = g->orig_w, H = g->orig_h, slack = 1e-3;
    if (!isfinite(box->x1) || !isfinite(box->y1) || !isfinite(box->x2) || !isfinite(box->y2)) return -1;
    if (box->x2 < box->x1 || box->y2 < box->y1) return -1;
    if (box->x1 < -slack || box->y1 < -slack || box->x2 > W + slack || box->y2 > H + slack) return -1;
    lp_box b = *box;
    b.x1 = (float)clampd(b.x1, 0, W);
    b.x2 = (float)clampd(b.x2, 0, W);
    b.y1 = (float)clampd(b.y1, 0, H);
    b.y2 = (float)clampd(b.y2, 0, H);
    b.label[LP_BOX_LABEL_MAX - 1] = 0;
    double f[4];
    lp_box_to_frame(g, &b, f);
    const double n[4] = {clampd(f[0] / g->in_w, 0, 1), clampd(f[1] / g->in_h, 0, 1), clampd(f[2] / g->in_w, 0, 1),
                         clampd(f[3] / g->in_h, 0, 1)};
    const int has_label = b.label[0] != 0;
    wr w = {buf, size, 0, 0};
    switch (family) {
    case LP_BOX_FERRET: {
        int v[4];
        for (int i = 0; i < 4; i++) v[i] = clampi(qfloor(n[i] * 1000), 0, 999);
        wr_printf(&w, "[%d, %d, %d, %d]", v[0], v[1], v[2], v[3]);
        break;
    }
    case LP_BOX_SHIKRA:
        wr_printf(&w, "[%.3f,%.3f,%.3f,%.3f]", n[0], n[1], n[2], n[3]);
        break;
    case LP_BOX_INTERNVL: {
        int v[4];
        for (int i = 0; i < 4; i++) v[i] = clampi(qround(n[i] * 1000), 0, 1000);
        if (has_label) {
            wr_printf(&w, "<ref>");
            wr_label(&w, b.label, "<>", 0);
            wr_printf(&w, "</ref>");
        }
        wr_printf(&w, "<box>[[%d, %d, %d, %d]]</box>", v[0], v[1], v[2], v[3]);
        break;
    }
    case LP_BOX_QWEN2VL: {
        int v[4];
        for (int i = 0; i < 4; i++) v[i] = clampi(qround(n[i] * 1000), 0, 1000);
        if (has_label) {
            wr_printf(&w, "<|object_ref_start|>");
            wr_label(&w, b.label, "<>", 0);
            wr_printf(&w, "<|object_ref_end|>");
        }
        wr_printf(&w, "<|box_start|>(%d,%d),(%d,%d)<|box_end|>", v[0], v[1], v[2], v[3]);
        break;
    }
    case LP_BOX_QWEN25VL: {
        const int v[4] = {clampi(qround(f[0]), 0, g->in_w), clampi(qround(f[1]), 0, g->in_h),
                          clampi(qround(f[2]), 0, g->in_w), clampi(qround(f[3]), 0, g->in_h)};
        wr_printf(&w, "{\"bbox_2d\": [%d, %d, %d, %d]", v[0], v[1], v[2], v[3]);
        if (has_label) {
            wr_printf(&w, ", \"label\": \"");
            wr_label(&w, b.label, "", 1);
            wr_printf(&w, "\"");
        }
        wr_printf(&w, "}");
        break;
    }
    case LP_BOX_KOSMOS2: {
        /* transformers coordinate_to_patch_index: needs x2 > x1 and y2 > y1 */
        if (!(n[2] > n[0]) || !(n[3] > n[1])) return -1;
        const int G = 32;
        const int ux = clampi(qfloor(n[0] * G), 0, G - 1), uy = clampi(qfloor(n[1] * G), 0, G - 1);
        int lx = clampi(qceil(n[2] * G - 1), 0, G - 1), ly = clampi(qceil(n[3] * G - 1), 0, G - 1);
        if (lx < ux) lx = ux;
        if (ly < uy) ly = uy;
        if (has_label) {
            wr_printf(&w, "<phrase>");
            wr_label(&w, b.label, "<>", 0);
            wr_printf(&w, "</phrase>");
        }
        wr_printf(&w, "<object><patch_index_%04d><patch_index_%04d></object>", uy * G + ux, ly * G + lx);
        break;
    }
    case LP_BOX_FLORENCE2: {
        int v[4];
        for (int i = 0; i < 4; i++) v[i] = clampi(qfloor(n[i] * 1000), 0, 999);
        if (has_label) wr_label(&w, b.label, "<>", 0);
        wr_printf(&w, "<loc_%d><loc_%d><loc_%d><loc_%d>", v[0], v[1], v[2], v[3]);
        break;
    }
    case LP_BOX_PALIGEMMA: {
        int v[4];
        for (int i = 0; i < 4; i++) v[i] = clampi(qfloor(n[i] * 1024), 0, 1023);
        wr_printf(&w, "<loc%04d><loc%04d><loc%04d><loc%04d>", v[1], v[0], v[3], v[2]);
        if (has_label) {
            wr_printf(&w, " ");
            wr_label(&w, b.label, "<>;\n", 0);
        }
        break;
    }
    default: return -1;
    }
    if (w.overflow) {
        buf[0] = 0;
        return -1;
    }
    return (int)w.len;
}

void lp_box_quantum(lp_box_family family, const lp_box_geom *g, double *qx, double *qy) {
    double step = 1.0 / 1000; /* fraction of the frame per grid step */
    int absolute = 0;
    switch (family) {
    case LP_BOX_SHIKRA: step = 1.0 / 1000; break;
    case LP_BOX_KOSMOS2: step = 1.0 / 32; break;
    case LP_BOX_PALIGEMMA: step = 1.0 / 1024; break;
    case LP_BOX_QWEN25VL: absolute = 1; break;
    default: break;
    }
    if (!geom_ok(g)) {
        *qx = *qy = 0;
        return;
    }
    *qx = (absolute ? 1.0 : step * g->in_w) / g->scale_x;
    *qy = (absolute ? 1.0 : step * g->in_h) / g->scale_y;
}
