/* datasets/render.c — drawing the synthetic rooms: textured wall and floor,
 * window, rug, floor shadows, 12 object categories from shaded primitives,
 * vignetting and sensor noise.
 *
 * Everything here is integer arithmetic (hash noise, fixed-point shading,
 * 1/16-pixel polygon edges), so pixels are identical on every machine and
 * compiler: no libm, no float contraction to worry about.
 *
 * Objects are designed in a local frame of 0..1000 on each axis of their
 * layout box (mirrored in u when obj->mirror), which keeps each category a
 * short list of rectangles, ellipses, polygons and thick lines. Each
 * primitive writes the object's id into the id buffer as well as colour, so
 * the generator gets exact visible masks from the same code that paints. */
#include "scene.h"

#include <string.h>

typedef long long ll;

/* ---- integer helpers ---- */

static uint32_t hash3(uint32_t x, uint32_t y, uint32_t z) {
    uint32_t h = x * 0x8da6b343u ^ y * 0xd8163841u ^ z * 0xcb1ab31fu;
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    h *= 0x297a2d39u;
    h ^= h >> 15;
    return h;
}

static int floordiv(int a, int b) { /* b > 0 */
    int q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Value noise in [0, 255] on a grid of `cell` pixels, bilinear. */
static int vnoise(int x, int y, int cell, uint32_t seed) {
    int gx = floordiv(x, cell), gy = floordiv(y, cell);
    int fx = x - gx * cell, fy = y - gy * cell;
    int a = hash3((uint32_t)gx, (uint32_t)gy, seed) & 255;
    int b = hash3((uint32_t)gx + 1, (uint32_t)gy, seed) & 255;
    int c = hash3((uint32_t)gx, (uint32_t)gy + 1, seed) & 255;
    int d = hash3((uint32_t)gx + 1, (uint32_t)gy + 1, seed) & 255;
    int top = a * (cell - fx) + b * fx, bot = c * (cell - fx) + d * fx;
    return (top * (cell - fy) + bot * fy) / (cell * cell);
}

static ll isqrt64(ll v) {
    if (v <= 0) return 0;
    ll r = 0, bit = 1ll << 62;
    while (bit > v) bit >>= 2;
    while (bit) {
        if (v >= r + bit) {
            v -= r + bit;
            r = (r >> 1) + bit;
        } else
            r >>= 1;
        bit >>= 2;
    }
    return r;
}

static lp_rgb RGB(int r, int g, int b) { return (lp_rgb){(uint8_t)clampi(r, 0, 255), (uint8_t)clampi(g, 0, 255), (uint8_t)clampi(b, 0, 255)}; }

/* lum/256 brightness; above 256 the colour moves toward white (highlights
 * show on dark paint too). */
static lp_rgb lit(lp_rgb c, int lum) {
    if (lum <= 256) return RGB(c.r * lum / 256, c.g * lum / 256, c.b * lum / 256);
    int t = lum - 256;
    if (t > 200) t = 200;
    return RGB(c.r + (255 - c.r) * t / 256, c.g + (255 - c.g) * t / 256, c.b + (255 - c.b) * t / 256);
}

static lp_rgb mix(lp_rgb a, lp_rgb b, int t) { /* t/256 of b */
    return RGB(a.r + (b.r - a.r) * t / 256, a.g + (b.g - a.g) * t / 256, a.b + (b.b - a.b) * t / 256);
}

lp_rgb lp_scene_color_rgb(int color) {
    static const lp_rgb T[LP_N_COLORS] = {
        {196, 38, 36},   /* red */
        {38, 78, 196},   /* blue */
        {46, 146, 60},   /* green */
        {232, 196, 40},  /* yellow */
        {236, 236, 230}, /* white */
        {38, 38, 42},    /* black */
        {118, 72, 38},   /* brown */
        {132, 132, 132}, /* gray */
        {236, 124, 28},  /* orange */
        {118, 56, 164},  /* purple */
        {238, 136, 180}, /* pink */
    };
    return (color >= 0 && color < LP_N_COLORS) ? T[color] : T[LP_COL_GRAY];
}

/* ---- raster context ---- */

enum { SH_NONE, SH_FLAT, SH_CYL, SH_ROUND, SH_GLOW };

typedef struct rc {
    const lp_scene *s;
    uint8_t *rgb, *ids;
    int w, h;
    uint8_t id;
    int light;
    int ox, oy, ow, oh, mirror; /* current object frame */
} rc;

static lp_rgb shade(const rc *c, lp_rgb base, int mode, int px, int py, int bx0, int by0, int bx1, int by1) {
    if (mode == SH_NONE || !c->rgb) return base;
    int bw = bx1 - bx0 + 1, bh = by1 - by0 + 1;
    int tx = (2 * (px - bx0) + 1 - bw) * 256 / bw; /* -256..256 across */
    int ty = (2 * (py - by0) + 1 - bh) * 256 / bh;
    int L = c->light, lum = 256;
    switch (mode) {
    case SH_FLAT: lum = 262 + L * tx * 30 / 256 - ty * 26 / 256; break;
    case SH_CYL: {
        int d = tx - L * 110;
        lum = 300 - d * d * 120 / 65536;
        break;
    }
    case SH_ROUND: {
        int dx = tx - L * 90, dy = ty + 100, d2 = dx * dx + dy * dy;
        lum = 300 - d2 * 150 / 131072;
        if (d2 < 3600) lum += (3600 - d2) / 40;
        break;
    }
    case SH_GLOW: lum = 330 - (tx * tx + ty * ty) * 60 / 131072; break;
    }
    if (lum < 70) lum = 70;
    return lit(base, lum);
}

static void put(rc *c, int x, int y, lp_rgb col) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    size_t i = (size_t)y * c->w + x;
    if (c->ids) c->ids[i] = c->id;
    if (c->rgb) {
        c->rgb[3 * i] = col.r;
        c->rgb[3 * i + 1] = col.g;
        c->rgb[3 * i + 2] = col.b;
    }
}

/* Local 0..1000 → 1/16 pixel. */
static int LX(const rc *c, int u) {
    if (c->mirror) u = 1000 - u;
    return c->ox * 16 + (int)((ll)u * c->ow * 16 / 1000);
}
static int LY(const rc *c, int v) { return c->oy * 16 + (int)((ll)v * c->oh * 16 / 1000); }

/* Pixels whose centres lie in [a, b) (1/16 px); at least the pixel holding
 * the midpoint, so thin legs and poles never vanish. */
static void span(int a, int b, int *p0, int *p1) {
    if (a > b) { int t = a; a = b; b = t; }
    *p0 = floordiv(a - 8 + 15, 16);
    *p1 = floordiv(b - 9, 16);
    if (*p1 < *p0) *p0 = *p1 = floordiv((a + b) / 2, 16);
}

static void fill_rect16(rc *c, int xa, int ya, int xb, int yb, lp_rgb col, int mode) {
    int x0, x1, y0, y1;
    span(xa, xb, &x0, &x1);
    span(ya, yb, &y0, &y1);
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) put(c, x, y, shade(c, col, mode, x, y, x0, y0, x1, y1));
}

static void R(rc *c, int u0, int v0, int u1, int v1, lp_rgb col, int mode) {
    fill_rect16(c, LX(c, u0), LY(c, v0), LX(c, u1), LY(c, v1), col, mode);
}

static void fill_ellipse16(rc *c, int cx, int cy, int rx, int ry, lp_rgb col, int mode) {
    if (rx < 8) rx = 8;
    if (ry < 8) ry = 8;
    int x0 = floordiv(cx - rx, 16), x1 = floordiv(cx + rx, 16);
    int y0 = floordiv(cy - ry, 16), y1 = floordiv(cy + ry, 16);
    ll rx2 = (ll)rx * rx, ry2 = (ll)ry * ry, lim = rx2 * ry2;
    for (int y = y0; y <= y1; y++) {
        ll dy = (ll)y * 16 + 8 - cy;
        for (int x = x0; x <= x1; x++) {
            ll dx = (ll)x * 16 + 8 - cx;
            if (dx * dx * ry2 + dy * dy * rx2 <= lim) put(c, x, y, shade(c, col, mode, x, y, x0, y0, x1, y1));
        }
    }
}

static void E(rc *c, int cu, int cv, int ru, int rv, lp_rgb col, int mode) {
    int cx = LX(c, cu), cy = LY(c, cv);
    int rx = (int)((ll)ru * c->ow * 16 / 1000), ry = (int)((ll)rv * c->oh * 16 / 1000);
    fill_ellipse16(c, cx, cy, rx, ry, col, mode);
}

#define MAXV 16
/* Even-odd scanline fill of a polygon in 1/16 pixels. */
static void fill_poly16(rc *c, int n, const int *xs, const int *ys, lp_rgb col, int mode) {
    if (n < 3 || n > MAXV) return;
    int minx = xs[0], maxx = xs[0], miny = ys[0], maxy = ys[0];
    for (int i = 1; i < n; i++) {
        if (xs[i] < minx) minx = xs[i];
        if (xs[i] > maxx) maxx = xs[i];
        if (ys[i] < miny) miny = ys[i];
        if (ys[i] > maxy) maxy = ys[i];
    }
    int bx0, bx1, by0, by1;
    span(minx, maxx, &bx0, &bx1);
    span(miny, maxy, &by0, &by1);
    for (int y = by0; y <= by1; y++) {
        int yc = y * 16 + 8, xc[MAXV], nc = 0;
        for (int i = 0; i < n; i++) {
            int j = (i + 1) % n;
            int ya = ys[i], yb = ys[j];
            if ((ya <= yc && yc < yb) || (yb <= yc && yc < ya))
                xc[nc++] = xs[i] + (int)((ll)(yc - ya) * (xs[j] - xs[i]) / (yb - ya));
        }
        for (int i = 1; i < nc; i++) /* insertion sort, n is tiny */
            for (int k = i; k > 0 && xc[k - 1] > xc[k]; k--) { int t = xc[k]; xc[k] = xc[k - 1]; xc[k - 1] = t; }
        for (int k = 0; k + 1 < nc; k += 2) {
            int p0 = floordiv(xc[k] - 8 + 15, 16), p1 = floordiv(xc[k + 1] - 9, 16);
            for (int x = p0; x <= p1; x++) put(c, x, y, shade(c, col, mode, x, y, bx0, by0, bx1, by1));
        }
    }
}

/* Polygon from local (u, v) pairs. */
static void P(rc *c, int n, const int *uv, lp_rgb col, int mode) {
    int xs[MAXV], ys[MAXV];
    if (n > MAXV) return;
    for (int i = 0; i < n; i++) {
        xs[i] = LX(c, uv[2 * i]);
        ys[i] = LY(c, uv[2 * i + 1]);
    }
    fill_poly16(c, n, xs, ys, col, mode);
}

/* Thick segment between local points; thickness t in per-mille of the
 * box width (at least one pixel). */
static void Lseg(rc *c, int u0, int v0, int u1, int v1, int t, lp_rgb col, int mode) {
    int x0 = LX(c, u0), y0 = LY(c, v0), x1 = LX(c, u1), y1 = LY(c, v1);
    ll th = (ll)t * c->ow * 16 / 1000;
    if (th < 16) th = 16;
    ll dx = x1 - x0, dy = y1 - y0, len = isqrt64(dx * dx + dy * dy);
    if (len == 0) {
        fill_ellipse16(c, x0, y0, (int)th / 2, (int)th / 2, col, mode);
        return;
    }
    int nx = (int)(-dy * th / (2 * len)), ny = (int)(dx * th / (2 * len));
    int xs[4] = {x0 + nx, x1 + nx, x1 - nx, x0 - nx}, ys[4] = {y0 + ny, y1 + ny, y1 - ny, y0 - ny};
    fill_poly16(c, 4, xs, ys, col, mode);
}

/* ---- the room ---- */

static lp_rgb wall_px(const lp_scene *s, int x, int y) {
    int W = s->w, hz = s->horizon;
    uint32_t sd = (uint32_t)s->tex_seed;
    lp_rgb b = s->wall_rgb;
    int lum = 256;
    switch (s->wall_style) {
    case 1: { /* wallpaper stripes */
        int sw = W / 22 + 3;
        if (floordiv(x, sw) & 1) lum -= 18;
        break;
    }
    case 2: { /* wallpaper with a diamond pattern */
        int g = 12, dx = x % g - g / 2, dy = (y + (floordiv(x, g) & 1) * g / 2) % g - g / 2;
        if (dx < 0) dx = -dx;
        if (dy < 0) dy = -dy;
        if (dx + dy < 3) lum += 22;
        break;
    }
    case 3: { /* wainscot: panelled lower wall under a rail */
        int rail = hz - hz * 30 / 100;
        if (y >= rail - 1 && y <= rail + 1) return lit(s->trim_rgb, 250 + s->light * (2 * x - W) * 20 / W);
        if (y > rail) {
            b = mix(s->trim_rgb, s->wall_rgb, 70);
            int pw = W / 6;
            int px = x % pw;
            if (px < 2) lum -= 40;
            else if (px < 4) lum += 20;
        }
        break;
    }
    default: lum += (vnoise(x, y, 24, sd) - 128) / 12; break;
    }
    lum += s->light * (2 * x - W) * 34 / W;   /* brighter toward the light */
    lum -= (hz - y) * 18 / (hz > 0 ? hz : 1); /* darker toward the ceiling */
    lum += (int)(hash3((uint32_t)x, (uint32_t)y, sd ^ 0x77) & 7) - 3;
    return lit(b, lum);
}

static lp_rgb floor_px(const lp_scene *s, int x, int y) {
    int W = s->w, H = s->h, hz = s->horizon;
    uint32_t sd = (uint32_t)(s->tex_seed >> 32);
    int vpx = W / 2 - s->light * W / 8, vpy = hz - (H - hz); /* vanishing point */
    int dy = y - vpy;
    int span_y = H - vpy;
    int u = (int)((ll)(x - vpx) * span_y / dy); /* x on the bottom row */
    int z = (int)((ll)span_y * H * 2 / dy);     /* depth, grows toward the back */
    lp_rgb b = s->floor_rgb;
    int lum = 256;
    switch (s->floor_style) {
    case 0: { /* wood planks running into the room */
        int bw = W / 9 + 2;
        int board = floordiv(u, bw), in = u - board * bw;
        uint32_t bh = hash3((uint32_t)board, 17, sd);
        int L = H + (int)(bh % (unsigned)H);
        int zz = z + (int)(bh >> 8) % L;
        int seg = floordiv(zz, L);
        uint32_t th = hash3((uint32_t)board, (uint32_t)seg, sd);
        lum += (int)(th % 40) - 20;
        lum += (int)(hash3((uint32_t)board, (uint32_t)(z / 3), sd ^ 0x55) % 14) - 7; /* grain */
        if (in < 2 || zz - seg * L < 2) lum -= 70;                                  /* seams */
        break;
    }
    case 1: { /* two-tone tiles with grout */
        int ts = W / 7 + 4;
        int tu = floordiv(u, ts), tz = floordiv(z, ts);
        int iu = u - tu * ts, iz = z - tz * ts;
        if (iu < 2 || iz < 2) return lit(RGB(200, 198, 190), 200 + (y - hz) * 56 / (H - hz));
        if ((tu + tz) & 1) b = s->floor_rgb2;
        lum += (int)(hash3((uint32_t)tu, (uint32_t)tz, sd) % 16) - 8;
        break;
    }
    case 2: /* carpet: fibre noise on a blotchy base */
        lum += (int)(hash3((uint32_t)x, (uint32_t)y, sd) % 36) - 18 + (vnoise(x, y, 10, sd) - 128) / 6;
        break;
    default: /* polished floor with a soft reflection of the light */
        lum += (vnoise(u, z, 32, sd) - 128) / 10 + (int)(hash3((uint32_t)x, (uint32_t)y, sd) % 8) - 4;
        break;
    }
    lum += -36 + (y - hz) * 48 / (H - hz);    /* darker toward the back wall */
    lum += s->light * (2 * x - W) * 28 / W;   /* brighter toward the light */
    return lit(b, lum);
}

static void draw_room(rc *c) {
    const lp_scene *s = c->s;
    int W = s->w, H = s->h, hz = s->horizon, bb = H / 36 + 2;
    for (int y = 0; y < H; y++) {
        uint8_t *row = c->rgb + (size_t)y * W * 3;
        for (int x = 0; x < W; x++) {
            lp_rgb p;
            if (y < hz - bb) p = wall_px(s, x, y);
            else if (y < hz) p = lit(s->trim_rgb, (y == hz - bb ? 300 : 240) + s->light * (2 * x - W) * 24 / W);
            else p = floor_px(s, x, y);
            if (s->window && x >= s->win_x && x < s->win_x + s->win_w && y >= s->win_y && y < s->win_y + s->win_h) {
                int fx = x - s->win_x, fy = y - s->win_y, fw = s->win_w, fh = s->win_h, f = 3;
                if (fx < f || fy < f || fx >= fw - f || fy >= fh - f || (fx >= fw / 2 - 1 && fx <= fw / 2) ||
                    (fy >= fh / 2 - 1 && fy <= fh / 2))
                    p = lit(RGB(240, 238, 230), 250 - fy * 20 / fh);
                else
                    p = mix(RGB(150, 196, 236), RGB(245, 250, 255), fy * 200 / fh + fx * 30 / fw); /* sky */
            }
            if (s->rug && y >= hz) { /* an oval rug on the floor */
                ll dx = 2 * (x - s->rug_x) + 1 - s->rug_w, dy = 2 * (y - s->rug_y) + 1 - s->rug_h;
                ll rx = s->rug_w, ry = s->rug_h;
                ll q = dx * dx * ry * ry + dy * dy * rx * rx, lim = rx * rx * ry * ry;
                if (q <= lim) {
                    int border = q > lim * 70 / 100 && q < lim * 82 / 100;
                    lp_rgb rr = border ? mix(s->rug_rgb, RGB(240, 230, 200), 150) : s->rug_rgb;
                    p = lit(rr, 236 + (y - hz) * 30 / (H - hz) + s->light * (2 * x - W) * 20 / W +
                                    (int)(hash3((uint32_t)x, (uint32_t)y, 99) % 24) - 12);
                }
            }
            row[3 * x] = p.r;
            row[3 * x + 1] = p.g;
            row[3 * x + 2] = p.b;
        }
    }
}

/* Soft contact shadow on the floor, cast away from the light. */
static void draw_shadow(rc *c, const lp_scene_object *o) {
    int W = c->w, H = c->h;
    int cx = o->x + o->w / 2 - c->light * o->w / 8, cy = o->foot - 1;
    int rx = o->w * 55 / 100 + 2, ry = o->h / 14 + 3;
    for (int y = cy - ry; y <= cy + ry; y++) {
        if (y < c->s->horizon || y >= H) continue;
        for (int x = cx - rx; x <= cx + rx; x++) {
            if (x < 0 || x >= W) continue;
            ll dx = x - cx, dy = y - cy;
            ll q = (dx * dx * 256) / ((ll)rx * rx) + (dy * dy * 256) / ((ll)ry * ry); /* 0..256 inside */
            if (q >= 256) continue;
            int k = 256 - (int)(256 - q) * 110 / 256; /* centre darkened to 57% */
            uint8_t *p = c->rgb + ((size_t)y * W + x) * 3;
            for (int ch = 0; ch < 3; ch++) p[ch] = (uint8_t)(p[ch] * k / 256);
        }
    }
}

/* ---- the objects ---- */

static const int SIN12[12] = {0, 500, 866, 1000, 866, 500, 0, -500, -866, -1000, -866, -500};
#define COS12(k) SIN12[((k) + 3) % 12]

static void clock_face(rc *c, int cu, int cv, int r, uint32_t hsh) {
    lp_rgb ink = RGB(30, 30, 34);
    for (int k = 0; k < 12; k++) {
        int tr = k % 3 ? 8 : 14;
        E(c, cu + COS12(k) * r * 80 / 100 / 1000, cv + SIN12[k] * r * 80 / 100 / 1000, tr * r / 300, tr * r / 300, ink, SH_NONE);
    }
    int hk = (int)(hsh % 12), mk = (int)((hsh >> 8) % 12);
    Lseg(c, cu, cv, cu + COS12(hk) * r * 45 / 100 / 1000, cv + SIN12[hk] * r * 45 / 100 / 1000, 60 * r / 1000 + 20, ink, SH_NONE);
    Lseg(c, cu, cv, cu + COS12(mk) * r * 70 / 100 / 1000, cv + SIN12[mk] * r * 70 / 100 / 1000, 35 * r / 1000 + 15, ink, SH_NONE);
    E(c, cu, cv, 40 * r / 500, 40 * r / 500, RGB(180, 40, 30), SH_NONE);
}

static void draw_object(rc *c, const lp_scene_object *o) {
    lp_rgb col = lp_scene_color_rgb(o->color);
    lp_rgb dk = lit(col, 180), lt = lit(col, 300);
    lp_rgb wood = RGB(92, 58, 30), metal = RGB(150, 150, 155), black = RGB(28, 28, 30), cream = RGB(240, 234, 214);
    lp_rgb white = RGB(238, 238, 234);
    uint32_t hsh = hash3((uint32_t)o->x, (uint32_t)o->y, (uint32_t)(o->w * 131 + o->h));
    int st = o->style;
    switch (o->cat) {
    case LP_CAT_SOFA:
        if (st == 0) { /* classic: high back, square arms */
            R(c, 90, 920, 140, 1000, wood, SH_FLAT);
            R(c, 860, 920, 910, 1000, wood, SH_FLAT);
            int back[] = {70, 90, 130, 0, 870, 0, 930, 90, 930, 560, 70, 560};
            P(c, 6, back, col, SH_FLAT);
            R(c, 100, 540, 900, 930, dk, SH_FLAT);
            R(c, 120, 470, 880, 560, lt, SH_FLAT);
            R(c, 497, 470, 503, 930, lit(col, 150), SH_NONE);
            R(c, 0, 330, 150, 930, col, SH_CYL);
            E(c, 75, 330, 75, 60, lt, SH_ROUND);
            R(c, 850, 330, 1000, 930, col, SH_CYL);
            E(c, 925, 330, 75, 60, lt, SH_ROUND);
        } else if (st == 1) { /* modern: low, three cushions, thin legs */
            R(c, 70, 860, 90, 1000, metal, SH_NONE);
            R(c, 910, 860, 930, 1000, metal, SH_NONE);
            R(c, 40, 180, 960, 540, dk, SH_FLAT);
            for (int k = 0; k < 3; k++) R(c, 70 + k * 290, 130, 340 + k * 290, 560, col, SH_ROUND);
            R(c, 20, 520, 980, 860, dk, SH_FLAT);
            for (int k = 0; k < 3; k++) R(c, 50 + k * 305, 480, 345 + k * 305, 600, lt, SH_FLAT);
            R(c, 0, 300, 70, 860, col, SH_CYL);
            R(c, 930, 300, 1000, 860, col, SH_CYL);
        } else { /* chesterfield: rolled arms, tufted back */
            E(c, 130, 960, 30, 40, wood, SH_ROUND);
            E(c, 870, 960, 30, 40, wood, SH_ROUND);
            R(c, 80, 60, 920, 540, col, SH_FLAT);
            for (int r = 0; r < 2; r++)
                for (int k = 0; k < 6; k++) E(c, 180 + k * 128, 200 + r * 170, 14, 20, dk, SH_NONE);
            R(c, 60, 500, 940, 920, dk, SH_FLAT);
            R(c, 100, 480, 900, 580, lt, SH_FLAT);
            R(c, 0, 420, 160, 920, col, SH_CYL);
            E(c, 90, 420, 110, 150, col, SH_ROUND);
            R(c, 840, 420, 1000, 920, col, SH_CYL);
            E(c, 910, 420, 110, 150, col, SH_ROUND);
        }
        break;
    case LP_CAT_LAMP:
        if (st == 0) { /* floor lamp */
            E(c, 500, 972, 230, 28, black, SH_ROUND);
            R(c, 482, 280, 518, 975, metal, SH_CYL);
            int shade_[] = {270, 0, 730, 0, 880, 300, 120, 300};
            P(c, 4, shade_, col, SH_CYL);
            E(c, 500, 300, 380, 22, RGB(255, 240, 190), SH_GLOW);
        } else if (st == 1) { /* table lamp with a ceramic body */
            R(c, 330, 945, 670, 1000, black, SH_FLAT);
            E(c, 500, 720, 250, 240, mix(col, white, 150), SH_ROUND);
            R(c, 470, 430, 530, 500, metal, SH_CYL);
            int shade_[] = {190, 0, 810, 0, 960, 450, 40, 450};
            P(c, 4, shade_, col, SH_CYL);
            E(c, 500, 450, 420, 26, RGB(255, 240, 190), SH_GLOW);
        } else { /* desk lamp with an angled arm */
            E(c, 300, 955, 260, 45, col, SH_ROUND);
            Lseg(c, 300, 950, 470, 430, 70, dk, SH_CYL);
            Lseg(c, 470, 430, 680, 180, 70, dk, SH_CYL);
            E(c, 470, 430, 60, 45, metal, SH_ROUND);
            int shade_[] = {560, 120, 760, 0, 1000, 330, 760, 420};
            P(c, 4, shade_, col, SH_FLAT);
            E(c, 880, 380, 90, 50, RGB(255, 244, 200), SH_GLOW);
        }
        break;
    case LP_CAT_CUP:
        if (st == 0) { /* mug */
            Lseg(c, 720, 330, 940, 380, 110, col, SH_FLAT);
            Lseg(c, 940, 380, 940, 680, 110, col, SH_FLAT);
            Lseg(c, 940, 680, 720, 760, 110, col, SH_FLAT);
            R(c, 80, 150, 760, 1000, col, SH_CYL);
            E(c, 420, 150, 340, 90, lt, SH_NONE);
            E(c, 420, 160, 290, 65, RGB(70, 40, 25), SH_NONE);
        } else if (st == 1) { /* teacup on a saucer */
            E(c, 500, 920, 500, 80, mix(col, white, 120), SH_ROUND);
            Lseg(c, 800, 450, 960, 520, 90, col, SH_FLAT);
            Lseg(c, 960, 520, 760, 720, 90, col, SH_FLAT);
            int body[] = {120, 350, 880, 350, 740, 900, 260, 900};
            P(c, 4, body, col, SH_CYL);
            E(c, 500, 350, 380, 80, lt, SH_NONE);
            E(c, 500, 355, 330, 55, RGB(150, 90, 40), SH_NONE);
        } else { /* paper cup with a lid */
            int body[] = {150, 80, 850, 80, 720, 1000, 280, 1000};
            P(c, 4, body, col, SH_CYL);
            R(c, 190, 420, 810, 600, mix(col, white, 170), SH_CYL);
            R(c, 110, 0, 890, 100, white, SH_CYL);
        }
        break;
    case LP_CAT_CHAIR:
        if (st == 0) { /* wooden chair, slatted back, seen from the front */
            R(c, 200, 680, 250, 880, dk, SH_FLAT);
            R(c, 750, 680, 800, 880, dk, SH_FLAT);
            R(c, 150, 0, 230, 560, col, SH_CYL);
            R(c, 770, 0, 850, 560, col, SH_CYL);
            R(c, 150, 0, 850, 120, col, SH_FLAT);
            for (int k = 0; k < 3; k++) R(c, 330 + k * 140, 120, 390 + k * 140, 490, col, SH_CYL);
            int seat[] = {110, 480, 890, 480, 960, 620, 40, 620};
            P(c, 4, seat, lt, SH_FLAT);
            R(c, 40, 620, 960, 690, dk, SH_FLAT);
            R(c, 60, 690, 140, 1000, col, SH_CYL);
            R(c, 860, 690, 940, 1000, col, SH_CYL);
        } else if (st == 1) { /* side view with a cushion */
            int back[] = {90, 0, 220, 0, 260, 560, 130, 560};
            P(c, 4, back, col, SH_FLAT);
            R(c, 120, 580, 190, 1000, col, SH_CYL);
            R(c, 820, 580, 890, 1000, col, SH_CYL);
            R(c, 100, 500, 920, 590, dk, SH_FLAT);
            R(c, 160, 440, 900, 520, lt, SH_ROUND);
        } else { /* office chair */
            lp_rgb pl = RGB(50, 50, 54);
            Lseg(c, 500, 870, 80, 950, 50, pl, SH_NONE);
            Lseg(c, 500, 870, 920, 950, 50, pl, SH_NONE);
            Lseg(c, 500, 870, 500, 960, 50, pl, SH_NONE);
            E(c, 80, 960, 50, 40, black, SH_ROUND);
            E(c, 920, 960, 50, 40, black, SH_ROUND);
            E(c, 500, 965, 50, 35, black, SH_ROUND);
            R(c, 470, 620, 530, 880, metal, SH_CYL);
            E(c, 500, 260, 330, 260, col, SH_ROUND);
            E(c, 500, 610, 430, 90, dk, SH_FLAT);
            E(c, 500, 590, 410, 70, col, SH_ROUND);
        }
        break;
    case LP_CAT_TABLE:
        if (st == 1) { /* round table on a pedestal */
            E(c, 500, 955, 260, 45, dk, SH_ROUND);
            R(c, 445, 150, 555, 950, col, SH_CYL);
            E(c, 500, 125, 500, 110, dk, SH_FLAT);
            E(c, 500, 95, 500, 95, lt, SH_FLAT);
        } else { /* rectangular dining (0) or low coffee table with a shelf (2) */
            R(c, 150, 150, 200, 860, dk, SH_FLAT);
            R(c, 800, 150, 850, 860, dk, SH_FLAT);
            if (st == 2) R(c, 60, 620, 940, 690, dk, SH_FLAT);
            int top[] = {80, 0, 920, 0, 1000, 120, 0, 120};
            P(c, 4, top, lt, SH_FLAT);
            R(c, 0, 120, 1000, st == 2 ? 220 : 180, col, SH_FLAT);
            R(c, 30, 150, 100, 1000, col, SH_CYL);
            R(c, 900, 150, 970, 1000, col, SH_CYL);
        }
        break;
    case LP_CAT_PLANT: {
        lp_rgb g1 = RGB(46, 120, 44), g2 = RGB(74, 156, 58), g3 = RGB(34, 92, 38);
        if (st == 0) { /* bushy */
            static const int L[][4] = {{500, 380, 300, 260}, {300, 470, 220, 180}, {700, 470, 220, 180}, {380, 230, 200, 190},
                                       {640, 240, 200, 190}, {500, 110, 170, 130}, {230, 330, 160, 150}, {780, 330, 160, 150},
                                       {500, 520, 250, 150}};
            for (int k = 0; k < 9; k++) E(c, L[k][0], L[k][1], L[k][2], L[k][3], k % 3 == 0 ? g1 : k % 3 == 1 ? g2 : g3, SH_ROUND);
        } else if (st == 1) { /* tall spiky leaves */
            static const int T[][2] = {{180, 80}, {330, 0}, {500, 30}, {660, 0}, {820, 90}, {90, 300}, {910, 290}, {420, 150}, {590, 140}};
            for (int k = 0; k < 9; k++) {
                int leaf[] = {460, 660, 540, 660, T[k][0] + 25, T[k][1], T[k][0] - 25, T[k][1]};
                P(c, 4, leaf, k & 1 ? g1 : g2, SH_FLAT);
            }
        } else { /* cactus */
            E(c, 500, 360, 170, 320, g1, SH_CYL);
            E(c, 290, 330, 70, 150, g2, SH_CYL);
            E(c, 710, 260, 70, 150, g2, SH_CYL);
            R(c, 300, 420, 420, 470, g1, SH_FLAT);
            R(c, 580, 350, 700, 400, g1, SH_FLAT);
            for (int k = 0; k < 6; k++) E(c, 420 + (k % 2) * 160, 150 + k * 80, 10, 10, RGB(230, 230, 200), SH_NONE);
        }
        int pot[] = {250, 650, 750, 650, 680, 1000, 320, 1000};
        P(c, 4, pot, col, SH_CYL);
        R(c, 220, 620, 780, 700, lt, SH_CYL);
        break;
    }
    case LP_CAT_TV: {
        lp_rgb scr0 = RGB(22, 30, 52), scr1 = RGB(8, 10, 16);
        int sx0, sy0, sx1, sy1;
        if (st == 0) { /* wall-mounted flat screen */
            R(c, 0, 0, 1000, 1000, col, SH_FLAT);
            sx0 = 40; sy0 = 55; sx1 = 960; sy1 = 945;
        } else if (st == 1) { /* flat screen on a pedestal stand */
            E(c, 500, 955, 260, 45, col, SH_ROUND);
            R(c, 470, 760, 530, 950, col, SH_CYL);
            R(c, 0, 0, 1000, 780, col, SH_FLAT);
            sx0 = 35; sy0 = 45; sx1 = 965; sy1 = 735;
        } else { /* old CRT set with antennas */
            Lseg(c, 450, 160, 250, 0, 20, metal, SH_NONE);
            Lseg(c, 550, 160, 760, 0, 20, metal, SH_NONE);
            R(c, 0, 150, 1000, 1000, col, SH_FLAT);
            E(c, 860, 420, 55, 45, dk, SH_ROUND);
            E(c, 860, 620, 55, 45, dk, SH_ROUND);
            sx0 = 70; sy0 = 240; sx1 = 740; sy1 = 910;
        }
        /* screen: dark glass with a diagonal reflection */
        int x0 = LX(c, sx0), x1 = LX(c, sx1), y0 = LY(c, sy0), y1 = LY(c, sy1);
        if (x0 > x1) { int t = x0; x0 = x1; x1 = t; }
        int px0, px1, py0, py1;
        span(x0, x1, &px0, &px1);
        span(y0, y1, &py0, &py1);
        int sw = px1 - px0 + 1, shh = py1 - py0 + 1;
        for (int y = py0; y <= py1; y++)
            for (int x = px0; x <= px1; x++) {
                int fx = (x - px0) * 256 / sw, fy = (y - py0) * 256 / shh;
                lp_rgb p = mix(scr0, scr1, fy);
                int d = fx + fy - 200 + c->light * 40;
                if (d > 0 && d < 60) p = mix(p, RGB(120, 130, 150), 70);
                put(c, x, y, p);
            }
        break;
    }
    case LP_CAT_BED:
        if (st == 2) { /* seen from the foot end */
            R(c, 100, 0, 900, 460, wood, SH_FLAT);
            int matt[] = {110, 380, 890, 380, 1000, 800, 0, 800};
            P(c, 4, matt, white, SH_FLAT);
            E(c, 320, 410, 160, 70, white, SH_ROUND);
            E(c, 680, 410, 160, 70, white, SH_ROUND);
            int blanket[] = {90, 500, 910, 500, 1000, 830, 0, 830};
            P(c, 4, blanket, col, SH_FLAT);
            R(c, 90, 500, 910, 540, lt, SH_FLAT);
            R(c, 0, 830, 1000, 1000, lit(wood, 200), SH_FLAT);
        } else { /* side view; style 1 has a low footboard and a quilt */
            R(c, 110, 880, 160, 1000, wood, SH_FLAT);
            R(c, 880, 880, 930, 1000, wood, SH_FLAT);
            R(c, 0, 0, 120, 1000, wood, SH_FLAT);
            if (st == 0) R(c, 900, 300, 960, 1000, wood, SH_FLAT);
            R(c, 100, 620, 940, 880, lit(wood, 220), SH_FLAT);
            R(c, 100, 400, 930, 640, white, SH_FLAT);
            E(c, 240, 380, 120, 80, white, SH_ROUND);
            R(c, 330, 340, 940, 720, col, SH_FLAT);
            R(c, 330, 340, 400, 720, lt, SH_FLAT);
            if (st == 1)
                for (int k = 0; k < 4; k++) R(c, 480 + k * 120, 360, 490 + k * 120, 720, dk, SH_NONE);
        }
        break;
    case LP_CAT_BOOK:
        if (st == 0) { /* standing upright, cover facing us, pages showing on one side */
            R(c, 860, 30, 1000, 990, cream, SH_FLAT);
            for (int k = 0; k < 4; k++) R(c, 880, 150 + k * 220, 1000, 165 + k * 220, RGB(200, 192, 170), SH_NONE);
            R(c, 0, 0, 880, 1000, col, SH_FLAT);
            R(c, 0, 0, 130, 1000, dk, SH_CYL);
            R(c, 250, 200, 760, 380, lt, SH_NONE);
            R(c, 300, 440, 710, 470, lt, SH_NONE);
        } else if (st == 1) { /* lying closed */
            int top[] = {60, 0, 1000, 0, 940, 420, 0, 420};
            P(c, 4, top, col, SH_FLAT);
            R(c, 0, 420, 940, 780, cream, SH_FLAT);
            for (int k = 0; k < 3; k++) R(c, 0, 500 + k * 90, 940, 515 + k * 90, RGB(200, 192, 170), SH_NONE);
            R(c, 0, 780, 960, 1000, dk, SH_FLAT);
        } else { /* open */
            int cover[] = {0, 180, 500, 330, 1000, 180, 1000, 900, 500, 1000, 0, 900};
            P(c, 6, cover, col, SH_FLAT);
            int lp[] = {30, 120, 500, 270, 500, 920, 30, 780};
            P(c, 4, lp, cream, SH_FLAT);
            int rp[] = {500, 270, 970, 120, 970, 780, 500, 920};
            P(c, 4, rp, lit(cream, 235), SH_FLAT);
            for (int k = 0; k < 4; k++) {
                Lseg(c, 100, 300 + k * 120, 420, 400 + k * 120, 12, RGB(150, 150, 150), SH_NONE);
                Lseg(c, 580, 400 + k * 120, 900, 300 + k * 120, 12, RGB(150, 150, 150), SH_NONE);
            }
        }
        break;
    case LP_CAT_CLOCK:
        if (st == 0) { /* round wall clock */
            E(c, 500, 500, 500, 500, col, SH_ROUND);
            E(c, 500, 500, 400, 400, white, SH_FLAT);
            clock_face(c, 500, 500, 400, hsh);
        } else if (st == 1) { /* square wall clock */
            R(c, 0, 0, 1000, 1000, col, SH_FLAT);
            R(c, 100, 100, 900, 900, white, SH_FLAT);
            clock_face(c, 500, 500, 400, hsh);
        } else { /* alarm clock with bells */
            Lseg(c, 300, 800, 180, 1000, 60, dk, SH_NONE);
            Lseg(c, 700, 800, 820, 1000, 60, dk, SH_NONE);
            E(c, 230, 160, 170, 150, col, SH_ROUND);
            E(c, 770, 160, 170, 150, col, SH_ROUND);
            E(c, 500, 570, 450, 420, col, SH_ROUND);
            E(c, 500, 570, 340, 320, white, SH_FLAT);
            clock_face(c, 500, 570, 330, hsh);
        }
        break;
    case LP_CAT_BOTTLE: {
        lp_rgb glass = col;
        if (st == 0) { /* wine bottle */
            R(c, 150, 420, 850, 1000, glass, SH_CYL);
            E(c, 500, 420, 350, 180, glass, SH_CYL);
            R(c, 380, 60, 620, 300, glass, SH_CYL);
            R(c, 360, 0, 640, 110, dk, SH_CYL);
            R(c, 150, 600, 850, 820, cream, SH_CYL);
        } else if (st == 1) { /* water bottle */
            int sh_[] = {350, 110, 650, 110, 880, 280, 120, 280};
            P(c, 4, sh_, glass, SH_CYL);
            R(c, 120, 270, 880, 1000, glass, SH_CYL);
            for (int k = 0; k < 4; k++) R(c, 120, 420 + k * 150, 880, 445 + k * 150, lt, SH_CYL);
            R(c, 330, 0, 670, 120, white, SH_CYL);
        } else { /* round flask */
            R(c, 400, 130, 600, 420, glass, SH_CYL);
            E(c, 500, 680, 480, 320, glass, SH_ROUND);
            R(c, 390, 30, 610, 160, RGB(150, 110, 70), SH_CYL);
        }
        break;
    }
    case LP_CAT_DOG: {
        lp_rgb nose = RGB(20, 16, 16);
        if (st == 0) { /* standing, side view, facing right */
            Lseg(c, 150, 420, 30, 220, 60, col, SH_CYL);
            R(c, 200, 600, 270, 1000, dk, SH_CYL);
            R(c, 660, 600, 730, 1000, dk, SH_CYL);
            E(c, 480, 480, 360, 190, col, SH_ROUND);
            R(c, 290, 600, 360, 1000, col, SH_CYL);
            R(c, 750, 600, 820, 1000, col, SH_CYL);
            E(c, 810, 270, 150, 150, col, SH_ROUND);
            E(c, 930, 320, 80, 70, lt, SH_ROUND);
            E(c, 990, 300, 25, 25, nose, SH_NONE);
            E(c, 760, 260, 60, 130, dk, SH_FLAT);
            E(c, 850, 230, 20, 22, nose, SH_NONE);
        } else if (st == 1) { /* sitting */
            E(c, 170, 950, 160, 40, col, SH_ROUND);
            E(c, 400, 620, 260, 330, col, SH_ROUND);
            E(c, 330, 800, 230, 190, dk, SH_ROUND);
            R(c, 540, 600, 620, 1000, col, SH_CYL);
            R(c, 420, 750, 500, 1000, dk, SH_CYL);
            E(c, 600, 230, 210, 190, col, SH_ROUND);
            E(c, 780, 300, 130, 90, lt, SH_ROUND);
            E(c, 890, 270, 35, 30, nose, SH_NONE);
            E(c, 500, 230, 70, 160, dk, SH_FLAT);
            E(c, 660, 180, 26, 26, nose, SH_NONE);
        } else { /* lying down */
            E(c, 80, 860, 90, 40, col, SH_ROUND);
            E(c, 440, 720, 400, 230, col, SH_ROUND);
            R(c, 640, 860, 980, 960, col, SH_CYL);
            E(c, 790, 460, 170, 160, col, SH_ROUND);
            E(c, 920, 520, 90, 80, lt, SH_ROUND);
            E(c, 985, 500, 28, 28, nose, SH_NONE);
            E(c, 730, 450, 60, 150, dk, SH_FLAT);
            E(c, 820, 410, 22, 24, nose, SH_NONE);
        }
        break;
    }
    }
}

/* Darken an object's outline pixels a little: edges read as edges, like the
 * contact shading of a photo, and separate same-coloured neighbours. */
static void edge_pass(rc *c, const lp_scene_object *o) {
    int x0 = o->x - 2, y0 = o->y - 2, x1 = o->x + o->w + 2, y1 = o->y + o->h + 2;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > c->w) x1 = c->w;
    if (y1 > c->h) y1 = c->h;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            size_t i = (size_t)y * c->w + x;
            if (c->ids[i] != c->id) continue;
            int edge = (x == 0 || c->ids[i - 1] != c->id) || (x == c->w - 1 || c->ids[i + 1] != c->id) ||
                       (y == 0 || c->ids[i - c->w] != c->id) || (y == c->h - 1 || c->ids[i + c->w] != c->id);
            if (edge)
                for (int ch = 0; ch < 3; ch++) c->rgb[3 * i + ch] = (uint8_t)(c->rgb[3 * i + ch] * 190 / 256);
        }
}

static void set_frame(rc *c, const lp_scene_object *o) {
    c->ox = o->x;
    c->oy = o->y;
    c->ow = o->w;
    c->oh = o->h;
    c->mirror = o->mirror;
}

void lp_scene_raster(const lp_scene *s, uint8_t *rgb, uint8_t *ids, int only) {
    rc c = {.s = s, .rgb = rgb, .ids = ids, .w = s->w, .h = s->h, .light = s->light};
    if (only >= 0) {
        c.rgb = NULL;
        c.id = (uint8_t)(only + 1);
        set_frame(&c, &s->obj[only]);
        draw_object(&c, &s->obj[only]);
        return;
    }
    if (rgb) {
        draw_room(&c);
        for (int i = 0; i < s->n_obj; i++)
            if (!s->obj[i].on_wall && s->obj[i].support < 0) draw_shadow(&c, &s->obj[i]);
    }
    if (ids) memset(ids, 0, (size_t)s->w * s->h);
    for (int i = 0; i < s->n_obj; i++) {
        c.id = (uint8_t)(i + 1);
        set_frame(&c, &s->obj[i]);
        draw_object(&c, &s->obj[i]);
        if (rgb && ids) edge_pass(&c, &s->obj[i]);
    }
    if (!rgb) return;
    /* vignetting and a little sensor noise over everything */
    int W = s->w, H = s->h;
    ll maxd = (ll)W * W + (ll)H * H;
    uint32_t sd = (uint32_t)s->tex_seed ^ 0x5eed;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            ll dx = 2 * x + 1 - W, dy = 2 * y + 1 - H;
            int k = 256 - (int)((dx * dx + dy * dy) * 72 / maxd);
            uint8_t *p = rgb + ((size_t)y * W + x) * 3;
            uint32_t hn = hash3((uint32_t)x, (uint32_t)y, sd);
            for (int ch = 0; ch < 3; ch++) {
                int v = p[ch] * k / 256 + (int)((hn >> (ch * 4)) & 7) - 3;
                p[ch] = (uint8_t)clampi(v, 0, 255);
            }
        }
}
