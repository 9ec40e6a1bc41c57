/* vision/draw.c — boxes, fills, text and labels on RGB8 images.
 *
 * Every primitive clips to the image. Coordinates arrive as int and are
 * widened to long long before any arithmetic, so corners at INT_MIN/INT_MAX,
 * huge thicknesses or scales cannot overflow and nothing is written outside
 * the pixel buffer. */
#include "image.h"
#include "font.h"

#include <limits.h>
#include <math.h>
#include <string.h>

typedef long long ll;

static int drawable(const lp_image *img) {
    return img && img->rgb && img->w > 0 && img->h > 0;
}

/* Inclusive rectangle in wide coordinates, clipped. */
static void fill_ll(lp_image *img, ll x0, ll y0, ll x1, ll y1, lp_rgb c) {
    if (x0 > x1) { ll t = x0; x0 = x1; x1 = t; }
    if (y0 > y1) { ll t = y0; y0 = y1; y1 = t; }
    if (x1 < 0 || y1 < 0 || x0 >= img->w || y0 >= img->h) return;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 >= img->w) x1 = img->w - 1;
    if (y1 >= img->h) y1 = img->h - 1;
    for (ll y = y0; y <= y1; y++) {
        uint8_t *p = img->rgb + ((size_t)y * img->w + (size_t)x0) * 3;
        for (ll x = x0; x <= x1; x++, p += 3) {
            p[0] = c.r;
            p[1] = c.g;
            p[2] = c.b;
        }
    }
}

void lp_draw_fill(lp_image *img, int x0, int y0, int x1, int y1, lp_rgb color) {
    if (drawable(img)) fill_ll(img, x0, y0, x1, y1, color);
}

/* The outline grows inward from the given corners, like PIL's
 * ImageDraw.rectangle(width=...): the box never extends past (x0,y0)-(x1,y1).
 * thickness < 1 draws a 1-pixel outline. */
void lp_draw_rect(lp_image *img, int x0, int y0, int x1, int y1, lp_rgb color, int thickness) {
    if (!drawable(img)) return;
    ll ax = x0 < x1 ? x0 : x1, bx = x0 < x1 ? x1 : x0;
    ll ay = y0 < y1 ? y0 : y1, by = y0 < y1 ? y1 : y0;
    ll t = thickness < 1 ? 1 : thickness;
    if (2 * t >= bx - ax + 1 || 2 * t >= by - ay + 1) {
        fill_ll(img, ax, ay, bx, by, color); /* no hole left */
        return;
    }
    fill_ll(img, ax, ay, bx, ay + t - 1, color);          /* top */
    fill_ll(img, ax, by - t + 1, bx, by, color);          /* bottom */
    fill_ll(img, ax, ay + t, ax + t - 1, by - t, color);  /* left */
    fill_ll(img, bx - t + 1, ay + t, bx, by - t, color);  /* right */
}

/* Bytes that begin a character: UTF-8 continuation bytes (10xxxxxx) do not,
 * so one non-ASCII code point draws as one '?', not two to four. */
static int starts_glyph(unsigned char c) {
    return (c & 0xc0) != 0x80;
}

static ll text_width_ll(const char *text, ll scale) {
    ll n = 0;
    if (text)
        for (const unsigned char *p = (const unsigned char *)text; *p; p++) n += starts_glyph(*p);
    /* n <= SIZE_MAX-ish and scale <= INT_MAX: saturate rather than overflow. */
    if (n > LLONG_MAX / (LP_FONT_CELL * scale)) return LLONG_MAX;
    return n * LP_FONT_CELL * scale;
}

static int sat_int(ll v) {
    return v > INT_MAX ? INT_MAX : (int)v;
}

int lp_text_width(const char *text, int scale) {
    return sat_int(text_width_ll(text, scale < 1 ? 1 : scale));
}

int lp_text_height(int scale) {
    return sat_int((ll)LP_FONT_CELL * (scale < 1 ? 1 : scale));
}

static void text_ll(lp_image *img, ll x, ll y, const char *text, lp_rgb color, ll s) {
    ll cell = LP_FONT_CELL * s;
    if (y >= img->h || y + cell <= 0) return; /* whole line above or below */
    ll gx = x;
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (!starts_glyph(*p)) continue;
        if (gx >= img->w) break; /* glyphs only move right from here */
        if (gx + cell > 0) {
            for (int r = 0; r < LP_FONT_CELL; r++) {
                uint8_t bits = lp_font_row(*p, r);
                for (int c = 0; bits; c++, bits = (uint8_t)(bits << 1))
                    if (bits & 0x80)
                        fill_ll(img, gx + c * s, y + r * s, gx + (c + 1) * s - 1, y + (r + 1) * s - 1, color);
            }
        }
        gx += cell;
    }
}

int lp_draw_text(lp_image *img, int x, int y, const char *text, lp_rgb color, int scale) {
    if (!text) return 0;
    ll s = scale < 1 ? 1 : scale;
    if (drawable(img)) text_ll(img, x, y, text, color, s);
    return lp_text_width(text, scale);
}

/* WCAG 2 contrast: pick whichever of black and white has the higher
 * contrast ratio (L1 + 0.05) / (L2 + 0.05) against bg's relative luminance.
 * The two ratios are equal at L = sqrt(1.05 * 0.05) - 0.05 ~= 0.179. A plain
 * luma threshold gets saturated colours wrong (white on pure green reads
 * worse than black). */
static double srgb_to_linear(uint8_t v) {
    double c = v / 255.0;
    return c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4);
}

lp_rgb lp_label_text_color(lp_rgb bg) {
    double l = 0.2126 * srgb_to_linear(bg.r) + 0.7152 * srgb_to_linear(bg.g) + 0.0722 * srgb_to_linear(bg.b);
    return l > 0.17912878474779200 ? (lp_rgb){0, 0, 0} : (lp_rgb){255, 255, 255};
}

/* The box is the text plus `scale` pixels of padding on every side. Its
 * bottom-left corner goes at (x, y) — the usual spot is just above a
 * detection's top-left corner — then it is shifted to lie inside the image
 * (left/top edges win when the label is larger than the image). */
void lp_draw_label(lp_image *img, int x, int y, const char *text, lp_rgb bg, int scale) {
    if (!drawable(img) || !text) return;
    ll s = scale < 1 ? 1 : scale;
    ll tw = text_width_ll(text, s), th = LP_FONT_CELL * s;
    if (tw > (ll)INT_MAX) tw = INT_MAX; /* still wider than any image */
    ll bw = tw + 2 * s, bh = th + 2 * s;
    ll left = x, top = (ll)y - bh + 1;
    if (left + bw > img->w) left = img->w - bw;
    if (left < 0) left = 0;
    if (top + bh > img->h) top = img->h - bh;
    if (top < 0) top = 0;
    fill_ll(img, left, top, left + bw - 1, top + bh - 1, bg);
    text_ll(img, left + s, top + s, text, lp_label_text_color(bg), s);
}
