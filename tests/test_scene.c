/* tests/test_scene.c — the synthetic scene generator: determinism, an
 * independent re-check of every referring expression, coverage of kinds and
 * categories, tight visible boxes, the dataset JSON, error paths.
 *
 * The expression checker here does not call the generator's predicates: it
 * parses each sentence's words and evaluates the documented semantics
 * (datasets/scene.c's header comment) against every object, in floating
 * point, from the object records alone. */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../datasets/scene.h"

#define N_SCENES 200

static const char *CATS[] = {"sofa", "lamp", "cup", "chair", "table", "plant", "tv", "bed", "book", "clock", "bottle", "dog"};
static const char *COLS[] = {"red", "blue", "green", "yellow", "white", "black", "brown", "gray", "orange", "purple", "pink"};

static int word_index(const char *w, const char **list, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(w, list[i])) return i;
    return -1;
}

static int confusable(const char *a, const char *b) {
    static const char *pairs[][2] = {{"red", "pink"},   {"red", "orange"}, {"orange", "yellow"}, {"orange", "brown"}, {"white", "gray"},
                                     {"gray", "black"}, {"blue", "purple"}, {"purple", "pink"},  {"red", "purple"}};
    if (!strcmp(a, b)) return 1;
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++)
        if ((!strcmp(pairs[i][0], a) && !strcmp(pairs[i][1], b)) || (!strcmp(pairs[i][0], b) && !strcmp(pairs[i][1], a))) return 1;
    return 0;
}

/* Visible-box geometry in doubles (all values are small integers or halves,
 * so every comparison below is exact). */
typedef struct box { double x0, y0, x1, y1, cx, cy, w, h; } box;
static box box_of(const lp_scene_object *o) {
    box b = {o->bbox[0], o->bbox[1], o->bbox[0] + o->bbox[2], o->bbox[1] + o->bbox[3], 0, 0, o->bbox[2], o->bbox[3]};
    b.cx = b.x0 + b.w / 2;
    b.cy = b.y0 + b.h / 2;
    return b;
}

static int split_words(char *s, char **w, int max) {
    int n = 0;
    for (char *t = strtok(s, " "); t && n < max; t = strtok(NULL, " ")) w[n++] = t;
    return n;
}

/* Resolve "the [colour] cat" to exactly one object; -1 otherwise. */
static int resolve_np(const lp_scene *s, char **w, int n) {
    if (n < 2 || strcmp(w[0], "the")) return -1;
    int cat = word_index(w[n - 1], CATS, 12);
    const char *col = n == 3 ? w[1] : NULL;
    if (cat < 0 || n > 3) return -1;
    int found = -1, count = 0;
    for (int i = 0; i < s->n_obj; i++) {
        if (s->obj[i].cat != cat) continue;
        const char *oc = lp_scene_color_name(s->obj[i].color);
        if (!col) { found = i; count++; continue; }
        if (!strcmp(oc, col)) { found = i; count++; }
        else if (confusable(oc, col)) count += 2; /* a near colour makes it ambiguous */
    }
    return count == 1 ? found : -1;
}

/* Abs-position zones: 2 clearly inside, 1 borderline, 0 outside. */
static int zone(const char *z, double c, double D) {
    if (!strcmp(z, "left") || !strcmp(z, "top")) return c * 100 < 36 * D ? 2 : c * 100 < 46 * D ? 1 : 0;
    if (!strcmp(z, "right") || !strcmp(z, "bottom")) return c * 100 > 64 * D ? 2 : c * 100 > 54 * D ? 1 : 0;
    double d = c - D / 2;
    if (d < 0) d = -d;
    return d * 100 < 10 * D ? 2 : d * 100 < 20 * D ? 1 : 0;
}

typedef struct parsed {
    int kind, cat;
    char color[16], z1[16], z2[16], rel[16];
    int anchor, ord, from_right, big;
} parsed;

/* 0 if the sentence does not parse. */
static int parse(const lp_scene *s, const char *sent, parsed *p) {
    char buf[LP_SCENE_SENT_MAX];
    char *w[16];
    snprintf(buf, sizeof buf, "%s", sent);
    int n = split_words(buf, w, 16);
    memset(p, 0, sizeof *p);
    p->anchor = -1;
    if (n < 2 || strcmp(w[0], "the")) return 0;
    int c1 = word_index(w[1], CATS, 12);
    if (n == 2) {
        p->kind = LP_EXPR_CATEGORY;
        p->cat = c1;
        return c1 >= 0;
    }
    if (c1 < 0) { /* "the red cup", "the left cup", "the biggest cup", "the second cup from the left" */
        int c2 = word_index(w[2], CATS, 12);
        if (c2 < 0) return 0;
        p->cat = c2;
        if (n == 3 && word_index(w[1], COLS, 11) >= 0) { p->kind = LP_EXPR_COLOR; snprintf(p->color, 16, "%s", w[1]); return 1; }
        if (n == 3 && (!strcmp(w[1], "left") || !strcmp(w[1], "right"))) { p->kind = LP_EXPR_ABSPOS; snprintf(p->z1, 16, "%s", w[1]); return 1; }
        if (n == 3 && (!strcmp(w[1], "biggest") || !strcmp(w[1], "largest") || !strcmp(w[1], "smallest"))) {
            p->kind = LP_EXPR_SIZE;
            p->big = strcmp(w[1], "smallest") != 0;
            return 1;
        }
        static const char *ORD[] = {"first", "second", "third", "fourth", "fifth"};
        int k = word_index(w[1], ORD, 5);
        if (n == 6 && k >= 0 && !strcmp(w[3], "from") && !strcmp(w[4], "the") && (!strcmp(w[5], "left") || !strcmp(w[5], "right"))) {
            p->kind = LP_EXPR_ORDINAL;
            p->ord = k + 1;
            p->from_right = !strcmp(w[5], "right");
            return 1;
        }
        return 0;
    }
    p->cat = c1;
    /* "the cup on the left", "the clock in the top-right corner", "the cup in the middle" */
    if (n == 5 && ((!strcmp(w[2], "on") && (!strcmp(w[4], "left") || !strcmp(w[4], "right"))) ||
                   (!strcmp(w[2], "at") && (!strcmp(w[4], "top") || !strcmp(w[4], "bottom"))) ||
                   (!strcmp(w[2], "in") && !strcmp(w[4], "middle"))) && !strcmp(w[3], "the")) {
        p->kind = LP_EXPR_ABSPOS;
        snprintf(p->z1, 16, "%s", w[4]);
        return 1;
    }
    if (n == 6 && !strcmp(w[2], "in") && !strcmp(w[3], "the") && !strcmp(w[5], "corner")) {
        char *dash = strchr(w[4], '-');
        if (!dash) return 0;
        *dash = 0;
        p->kind = LP_EXPR_ABSPOS;
        snprintf(p->z1, 16, "%s", w[4]);
        snprintf(p->z2, 16, "%s", dash + 1);
        return 1;
    }
    /* relations: the X <rel words> the [colour] Y */
    int k = 2;
    if (!strcmp(w[k], "to") && k + 2 < n && !strcmp(w[k + 1], "the")) k += 2; /* "to the left of" */
    if (!strcmp(w[k], "next") && k + 1 < n && !strcmp(w[k + 1], "to")) { snprintf(p->rel, 16, "near"); k += 2; }
    else if ((!strcmp(w[k], "left") || !strcmp(w[k], "right")) && k + 1 < n && !strcmp(w[k + 1], "of")) { snprintf(p->rel, 16, "%s", w[k]); k += 2; }
    else if (!strcmp(w[k], "near") || !strcmp(w[k], "above") || !strcmp(w[k], "below") || !strcmp(w[k], "on")) { snprintf(p->rel, 16, "%s", w[k]); k += 1; }
    else return 0;
    p->kind = LP_EXPR_RELPOS;
    p->anchor = resolve_np(s, w + k, n - k);
    return p->anchor >= 0;
}

/* The relation for target t and anchor a: 2 clearly, 1 borderline, 0 not. */
static int relation(const lp_scene *s, const char *rel, int t, int a) {
    box T = box_of(&s->obj[t]), A = box_of(&s->obj[a]);
    double W = s->w;
    if (!strcmp(rel, "near")) {
        double gx = A.x0 - T.x1 > T.x0 - A.x1 ? A.x0 - T.x1 : T.x0 - A.x1;
        double gy = A.y0 - T.y1 > T.y0 - A.y1 ? A.y0 - T.y1 : T.y0 - A.y1;
        double g = gx > gy ? gx : gy;
        if (g < 0) g = 0;
        return g * 100 <= 3 * W ? 2 : g * 100 <= 12 * W ? 1 : 0;
    }
    if (!strcmp(rel, "left")) return T.x1 <= A.x0 ? 2 : T.cx < A.cx ? 1 : 0;
    if (!strcmp(rel, "right")) return T.x0 >= A.x1 ? 2 : T.cx > A.cx ? 1 : 0;
    if (!strcmp(rel, "above") || !strcmp(rel, "below")) {
        int up = !strcmp(rel, "above");
        int inside = T.cx >= A.x0 && T.cx <= A.x1;
        int near = T.cx >= A.x0 - A.w / 2 && T.cx <= A.x1 + A.w / 2;
        int clear = up ? T.y1 <= A.y0 : T.y0 >= A.y1;
        int half = up ? T.cy < A.cy : T.cy > A.cy;
        return clear && inside ? 2 : half && near ? 1 : 0;
    }
    return s->obj[t].support == a ? 2 : 0; /* "on" */
}

/* How well object i fits the parsed expression: 2, 1 or 0. */
static int fits(const lp_scene *s, const parsed *p, int i) {
    const lp_scene_object *o = &s->obj[i];
    if (o->cat != p->cat) return 0;
    box B = box_of(o);
    switch (p->kind) {
    case LP_EXPR_CATEGORY: return 2;
    case LP_EXPR_COLOR: {
        const char *c = lp_scene_color_name(o->color);
        return !strcmp(c, p->color) ? 2 : confusable(c, p->color) ? 1 : 0;
    }
    case LP_EXPR_ABSPOS: {
        int a = 2;
        const char *zs[2] = {p->z1, p->z2};
        for (int k = 0; k < 2; k++) {
            if (!zs[k][0]) continue;
            int horiz = !strcmp(zs[k], "left") || !strcmp(zs[k], "right") || !strcmp(zs[k], "middle");
            int v = horiz ? zone(zs[k], B.cx, s->w) : zone(zs[k], B.cy, s->h);
            if (v < a) a = v;
        }
        return a;
    }
    case LP_EXPR_RELPOS: return i == p->anchor ? 0 : relation(s, p->rel, i, p->anchor);
    case LP_EXPR_SIZE: {
        /* 2: 1.3x beyond every other; 0: 1.3x short of some other; else 1 */
        int clear = 1, beaten = 0, others = 0;
        for (int j = 0; j < s->n_obj; j++) {
            if (j == i || s->obj[j].cat != o->cat) continue;
            others++;
            double a = o->full_area, b = s->obj[j].full_area;
            double mine = p->big ? a : b, theirs = p->big ? b : a; /* smallest: the same test, turned round */
            if (!(mine * 10 >= theirs * 13)) clear = 0;
            if (theirs * 10 >= mine * 13) beaten = 1;
        }
        return !others ? 0 : clear ? 2 : beaten ? 0 : 1;
    }
    default: {
        /* rank by centre; within .05W of another centre the rank is uncertain */
        int lo = 1, hi = 1, others = 0;
        for (int j = 0; j < s->n_obj; j++) {
            if (j == i || s->obj[j].cat != o->cat) continue;
            others++;
            double d = box_of(&s->obj[j]).cx - B.cx;
            if (p->from_right) d = -d;
            if (-d * 100 > 5.0 * s->w) lo++;
            if (d * 100 < 5.0 * s->w) hi++;
        }
        if (!others) return 0;
        return lo == p->ord && hi == p->ord ? 2 : (lo <= p->ord && p->ord <= hi) ? 1 : 0;
    }
    }
}

/* Every sentence of every expression: parses to its recorded kind, the target
 * fits clearly, every other object does not fit at all. Returns the number
 * of sentences checked. */
static int check_expressions(const lp_scene *s) {
    int checked = 0;
    for (int e = 0; e < s->n_expr; e++) {
        const lp_scene_expr *x = &s->expr[e];
        assert_true(x->target >= 0 && x->target < s->n_obj);
        const lp_scene_object *t = &s->obj[x->target];
        assert_true(t->visible_fraction >= 0.5); /* never refer to a mostly hidden object */
        for (int k = 0; k < x->n_sent; k++) {
            parsed p;
            if (!parse(s, x->sent[k], &p)) fail_msg("scene %d: unparsed or unresolved: '%s'", s->index, x->sent[k]);
            if (p.kind != x->kind) fail_msg("scene %d: '%s' parsed as kind %d, recorded %d", s->index, x->sent[k], p.kind, x->kind);
            if (p.anchor >= 0) {
                assert_int_equal(p.anchor, x->anchor);
                assert_true(s->obj[p.anchor].visible_fraction >= 0.5);
            }
            for (int i = 0; i < s->n_obj; i++) {
                int f = fits(s, &p, i);
                if (i == x->target && f != 2) fail_msg("scene %d: '%s' does not clearly fit its target (%d)", s->index, x->sent[k], f);
                if (i != x->target && f != 0)
                    fail_msg("scene %d: '%s' also fits object %d (%s %s, fit %d)", s->index, x->sent[k], i,
                             lp_scene_color_name(s->obj[i].color), lp_scene_cat_name(s->obj[i].cat), f);
            }
            checked++;
        }
    }
    return checked;
}

/* ---- tests ---- */

static void test_determinism(void **state) {
    (void)state;
    lp_scene_params p;
    lp_scene_params_default(&p);
    for (int idx = 0; idx < 5; idx++) {
        lp_scene a, b, c;
        lp_image ia, ib, ic;
        lp_error err = {0};
        assert_int_equal(lp_scene_generate(42, idx, &p, &a, &err), LOUPE_OK);
        assert_int_equal(lp_scene_generate(42, idx, &p, &b, &err), LOUPE_OK);
        assert_int_equal(lp_scene_generate(43, idx, &p, &c, &err), LOUPE_OK);
        assert_int_equal(a.n_obj, b.n_obj);
        assert_memory_equal(a.obj, b.obj, sizeof a.obj[0] * (size_t)a.n_obj);
        assert_int_equal(a.n_expr, b.n_expr);
        for (int e = 0; e < a.n_expr; e++) {
            assert_int_equal(a.expr[e].kind, b.expr[e].kind);
            assert_int_equal(a.expr[e].target, b.expr[e].target);
            for (int k = 0; k < a.expr[e].n_sent; k++) assert_string_equal(a.expr[e].sent[k], b.expr[e].sent[k]);
        }
        assert_int_equal(lp_scene_render(&a, &ia, &err), LOUPE_OK);
        assert_int_equal(lp_scene_render(&b, &ib, &err), LOUPE_OK);
        assert_int_equal(lp_scene_render(&c, &ic, &err), LOUPE_OK);
        size_t n = (size_t)ia.w * ia.h * 3;
        assert_memory_equal(ia.rgb, ib.rgb, n);
        assert_true(memcmp(ia.rgb, ic.rgb, n) != 0); /* another seed, another room */
        lp_image_free(&ia);
        lp_image_free(&ib);
        lp_image_free(&ic);
        lp_scene_free(&a);
        lp_scene_free(&b);
        lp_scene_free(&c);
    }
}

/* FNV-1a of scene 0 of seed 1234 (pixels and sentences). Everything is
 * integer arithmetic, so this must hold on every machine and compiler; it
 * changes only when the generator or renderer is changed on purpose (then
 * update it here, and know that datasets made before differ). */
#define GOLDEN_PIXELS 0xff39f244c4e69293ull
#define GOLDEN_TEXT 0x3b05450dabfd351aull
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static void test_golden(void **state) {
    (void)state;
    lp_scene s;
    lp_image im;
    lp_error err = {0};
    assert_int_equal(lp_scene_generate(1234, 0, NULL, &s, &err), LOUPE_OK);
    assert_int_equal(lp_scene_render(&s, &im, &err), LOUPE_OK);
    uint64_t hp = fnv(0xcbf29ce484222325ull, im.rgb, (size_t)im.w * im.h * 3), ht = 0xcbf29ce484222325ull;
    for (int e = 0; e < s.n_expr; e++)
        for (int k = 0; k < s.expr[e].n_sent; k++) ht = fnv(ht, s.expr[e].sent[k], strlen(s.expr[e].sent[k]) + 1);
    if (hp != GOLDEN_PIXELS || ht != GOLDEN_TEXT)
        fail_msg("scene 0 of seed 1234 changed: pixels 0x%016llxull text 0x%016llxull", (unsigned long long)hp, (unsigned long long)ht);
    lp_image_free(&im);
    lp_scene_free(&s);
}

static void test_expressions_unique_and_coverage(void **state) {
    (void)state;
    lp_scene_params p;
    lp_scene_params_default(&p);
    int kinds[LP_N_EXPR_KINDS] = {0}, cats[LP_N_CATS] = {0}, referred[LP_N_CATS] = {0}, colors[LP_N_COLORS] = {0};
    int styles[LP_N_CATS][3] = {{0}};
    int sentences = 0, on_table = 0, on_wall = 0, occluded = 0;
    for (int idx = 0; idx < N_SCENES; idx++) {
        lp_scene s;
        lp_error err = {0};
        if (lp_scene_generate(7, idx, &p, &s, &err)) fail_msg("%s", err.msg);
        assert_true(s.n_obj >= p.min_objects && s.n_obj <= LP_SCENE_MAX_OBJ);
        assert_true(s.n_expr > 0);
        sentences += check_expressions(&s);
        for (int e = 0; e < s.n_expr; e++) {
            kinds[s.expr[e].kind]++;
            referred[s.obj[s.expr[e].target].cat]++;
        }
        for (int i = 0; i < s.n_obj; i++) {
            const lp_scene_object *o = &s.obj[i];
            cats[o->cat]++;
            colors[o->color]++;
            styles[o->cat][o->style]++;
            on_table += o->support >= 0;
            on_wall += o->on_wall;
            occluded += o->visible_fraction < 0.95;
            assert_true(o->visible_fraction >= 0.3 && o->visible_fraction <= 1.0);
            if (o->support >= 0) assert_int_equal(s.obj[o->support].cat, LP_CAT_TABLE);
            if (o->on_wall) assert_true(o->y + o->h <= s.horizon); /* wall things hang above the floor */
            else if (o->support < 0) assert_true(o->foot >= s.horizon && o->foot < s.h);
        }
        lp_scene_free(&s);
    }
    for (int k = 0; k < LP_N_EXPR_KINDS; k++)
        if (kinds[k] == 0) fail_msg("no '%s' expression in %d scenes", lp_scene_kind_name(k), N_SCENES);
    for (int c = 0; c < LP_N_CATS; c++) {
        if (!cats[c] || !referred[c]) fail_msg("category %s never appears or is never referred to", lp_scene_cat_name(c));
        for (int st = 0; st < 3; st++)
            if (!styles[c][st]) fail_msg("%s style %d never appears", lp_scene_cat_name(c), st);
    }
    for (int c = 0; c < LP_N_COLORS; c++) assert_true(colors[c] > 0);
    assert_true(on_table > 0 && on_wall > 0 && occluded > 0);
    printf("  %d scenes, %d sentences re-checked; refs by kind:", N_SCENES, sentences);
    for (int k = 0; k < LP_N_EXPR_KINDS; k++) printf(" %s %d", lp_scene_kind_name(k), kinds[k]);
    printf("; on a table %d, on the wall %d, occluded %d\n", on_table, on_wall, occluded);
}

static void test_boxes_tight(void **state) {
    (void)state;
    lp_scene_params p;
    lp_scene_params_default(&p);
    p.width = 200; /* a non-default size on the way */
    p.height = 160;
    for (int idx = 0; idx < 60; idx++) {
        lp_scene s;
        lp_error err = {0};
        assert_int_equal(lp_scene_generate(99, idx, &p, &s, &err), LOUPE_OK);
        assert_int_equal(s.w, 200);
        /* the id buffer is what drawing the scene produces */
        uint8_t *ids = malloc((size_t)s.w * s.h);
        lp_scene_raster(&s, NULL, ids, -1);
        assert_memory_equal(ids, s.ids, (size_t)s.w * s.h);
        for (int i = 0; i < s.n_obj; i++) {
            const int *b = s.obj[i].bbox;
            assert_true(b[2] > 0 && b[3] > 0);
            assert_true(b[0] >= 0 && b[1] >= 0 && b[0] + b[2] <= s.w && b[1] + b[3] <= s.h);
            int count = 0, top = 0, bot = 0, left = 0, right = 0;
            for (int y = 0; y < s.h; y++)
                for (int x = 0; x < s.w; x++) {
                    if (ids[(size_t)y * s.w + x] != i + 1) continue;
                    count++;
                    assert_true(x >= b[0] && x < b[0] + b[2] && y >= b[1] && y < b[1] + b[3]);
                    top |= y == b[1];
                    bot |= y == b[1] + b[3] - 1;
                    left |= x == b[0];
                    right |= x == b[0] + b[2] - 1;
                }
            assert_int_equal(count, s.obj[i].area);
            assert_true(top && bot && left && right); /* every border line touches the object */
            assert_true(s.obj[i].full_area >= s.obj[i].area);
            /* the RLE mask decodes to the same pixels */
            int *rle = malloc(sizeof(int) * ((size_t)s.w * s.h + 1));
            int n = lp_scene_mask_rle(&s, i, rle, s.w * s.h + 1);
            assert_true(n > 1);
            long pos = 0, ones = 0;
            for (int r = 0; r < n; r++) {
                if (r & 1)
                    for (int k = 0; k < rle[r]; k++) {
                        long q = pos + k;
                        int x = (int)(q / s.h), y = (int)(q % s.h);
                        assert_int_equal(ids[(size_t)y * s.w + x], i + 1);
                        ones++;
                    }
                pos += rle[r];
            }
            assert_int_equal(pos, (long)s.w * s.h);
            assert_int_equal(ones, s.obj[i].area);
            free(rle);
        }
        free(ids);
        lp_scene_free(&s);
    }
}


static void rm_rf(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_dataset_json(void **state) {
    (void)state;
    char d1[] = "/tmp/loupe_test_scene.XXXXXX", d2[] = "/tmp/loupe_test_scene.XXXXXX";
    assert_non_null(mkdtemp(d1));
    assert_non_null(mkdtemp(d2));
    char out1[600], out2[600];
    snprintf(out1, sizeof out1, "%s/ds", d1); /* created by the writer */
    snprintf(out2, sizeof out2, "%s/ds", d2);
    lp_scene_params p;
    lp_scene_params_default(&p);
    p.split = "auto";
    lp_synth_stats st, st2;
    lp_error err = {0};
    const int N = 20;
    assert_int_equal(lp_synth_write(out1, 5, N, &p, &st, &err), LOUPE_OK);
    assert_int_equal(lp_synth_write(out2, 5, N, &p, &st2, &err), LOUPE_OK);

    char path[700];
    size_t n1, n2;
    snprintf(path, sizeof path, "%s/annotations.json", out1);
    char *j1 = tu_read_file(path, &n1);
    snprintf(path, sizeof path, "%s/annotations.json", out2);
    char *j2 = tu_read_file(path, &n2);
    assert_non_null(j1);
    assert_non_null(j2);
    assert_int_equal(n1, n2);
    assert_memory_equal(j1, j2, n1); /* byte-identical */
    for (int i = 1; i <= N; i++) {
        size_t a, b;
        snprintf(path, sizeof path, "%s/images/%06d.png", out1, i);
        char *p1 = tu_read_file(path, &a);
        snprintf(path, sizeof path, "%s/images/%06d.png", out2, i);
        char *p2 = tu_read_file(path, &b);
        assert_non_null(p1);
        assert_non_null(p2);
        assert_int_equal(a, b);
        assert_memory_equal(p1, p2, a);
        free(p1);
        free(p2);
    }

    cJSON *root = cJSON_Parse(j1);
    assert_non_null(root);
    cJSON *images = cJSON_GetObjectItem(root, "images"), *anns = cJSON_GetObjectItem(root, "annotations");
    cJSON *refs = cJSON_GetObjectItem(root, "refs"), *regions = cJSON_GetObjectItem(root, "regions");
    cJSON *cats = cJSON_GetObjectItem(root, "categories");
    assert_non_null(cJSON_GetObjectItem(root, "info"));
    assert_int_equal(cJSON_GetArraySize(images), N);
    assert_int_equal(st.images, N);
    assert_int_equal(cJSON_GetArraySize(anns), st.annotations);
    assert_int_equal(cJSON_GetArraySize(refs), st.refs);
    assert_int_equal(cJSON_GetArraySize(regions), st.regions);
    assert_int_equal(cJSON_GetArraySize(cats), LP_N_CATS);
    int by_kind = 0;
    for (int k = 0; k < LP_N_EXPR_KINDS; k++) by_kind += st.refs_by_kind[k];
    assert_int_equal(by_kind, st.refs);

    /* ids resolve, images are 256x192, splits follow the 'auto' rule */
    int n_ann = cJSON_GetArraySize(anns);
    int *ann_image = calloc((size_t)n_ann + 2, sizeof(int));
    cJSON *it;
    cJSON_ArrayForEach(it, anns) {
        int id = cJSON_GetObjectItem(it, "id")->valueint;
        assert_true(id >= 1 && id <= n_ann);
        ann_image[id] = cJSON_GetObjectItem(it, "image_id")->valueint;
        cJSON *bb = cJSON_GetObjectItem(it, "bbox");
        assert_int_equal(cJSON_GetArraySize(bb), 4);
        assert_true(cJSON_GetArrayItem(bb, 0)->valueint + cJSON_GetArrayItem(bb, 2)->valueint <= 256);
        assert_true(cJSON_GetArrayItem(bb, 1)->valueint + cJSON_GetArrayItem(bb, 3)->valueint <= 192);
        assert_true(cJSON_IsString(cJSON_GetObjectItem(it, "color")));
        double vf = cJSON_GetObjectItem(it, "visible_fraction")->valuedouble;
        assert_true(vf >= 0.3 && vf <= 1.0);
    }
    int sents = 0;
    cJSON_ArrayForEach(it, refs) {
        int ann = cJSON_GetObjectItem(it, "ann_id")->valueint, img = cJSON_GetObjectItem(it, "image_id")->valueint;
        assert_true(ann >= 1 && ann <= n_ann);
        assert_int_equal(ann_image[ann], img);
        const char *split = cJSON_GetObjectItem(it, "split")->valuestring;
        int k = (img - 1) % 10;
        assert_string_equal(split, k < 8 ? "train" : k == 8 ? "val" : "test");
        cJSON *ss = cJSON_GetObjectItem(it, "sentences");
        assert_true(cJSON_GetArraySize(ss) >= 1);
        sents += cJSON_GetArraySize(ss);
        assert_non_null(cJSON_GetObjectItem(cJSON_GetArrayItem(ss, 0), "tokens"));
    }
    assert_int_equal(sents, st.sentences);
    cJSON_ArrayForEach(it, regions) {
        int ann = cJSON_GetObjectItem(it, "ann_id")->valueint;
        assert_true(ann >= 1 && ann <= n_ann);
        cJSON *m = cJSON_GetObjectItem(it, "mask");
        cJSON *size = cJSON_GetObjectItem(m, "size"), *counts = cJSON_GetObjectItem(m, "counts");
        assert_int_equal(cJSON_GetArrayItem(size, 0)->valueint, 192);
        long total = 0;
        cJSON *c;
        cJSON_ArrayForEach(c, counts) total += c->valueint;
        assert_int_equal(total, 256 * 192);
        const char *ans = cJSON_GetObjectItem(it, "answer")->valuestring;
        assert_true(!strncmp(ans, "a ", 2) || !strncmp(ans, "an ", 3));
    }
    cJSON_Delete(root);
    free(ann_image);
    free(j1);
    free(j2);
    rm_rf(d1);
    rm_rf(d2);
}

static void test_bad_output_dir(void **state) {
    (void)state;
    char d[] = "/tmp/loupe_test_scene.XXXXXX";
    assert_non_null(mkdtemp(d));
    char file[600], bad[700];
    snprintf(file, sizeof file, "%s/plainfile", d);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(bad, sizeof bad, "%s/sub", file); /* a directory under a regular file */
    lp_error err = {0};
    assert_int_equal(lp_synth_write(bad, 1, 2, NULL, NULL, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, bad));
    /* the output path exists but is a file */
    err = (lp_error){0};
    assert_int_equal(lp_synth_write(file, 1, 2, NULL, NULL, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, file));
    /* bad parameters */
    lp_scene_params p;
    lp_scene_params_default(&p);
    p.width = 10;
    lp_scene s;
    assert_int_equal(lp_scene_generate(1, 0, &p, &s, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_synth_write(d, 1, 1, &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    rm_rf(d);
}

static void test_names(void **state) {
    (void)state;
    lp_scene_object o = {.cat = LP_CAT_DOG, .color = LP_COL_ORANGE};
    char buf[64];
    lp_scene_answer(&o, buf, sizeof buf);
    assert_string_equal(buf, "an orange dog");
    o.cat = LP_CAT_CUP;
    o.color = LP_COL_RED;
    lp_scene_answer(&o, buf, sizeof buf);
    assert_string_equal(buf, "a red cup");
    for (int c = 0; c < LP_N_CATS; c++) assert_string_equal(lp_scene_cat_name(c), CATS[c]);
    for (int c = 0; c < LP_N_COLORS; c++) assert_string_equal(lp_scene_color_name(c), COLS[c]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_expressions_unique_and_coverage),
        cmocka_unit_test(test_boxes_tight),
        cmocka_unit_test(test_dataset_json),
        cmocka_unit_test(test_bad_output_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
