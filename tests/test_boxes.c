/* tests/test_boxes.c — box codecs (fusion/boxes.h): geometry constructors
 * against the reference processors, round trips original pixels -> text ->
 * original pixels for every family and geometry, real-looking answers,
 * a table of malformed answers, and 10k random / mutated strings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fusion/boxes.h"
#include "../vision/preprocess.h"

#define NFAM LP_BOX_FAMILY_COUNT

static const int sizes[][2] = {{1, 1}, {3, 7}, {641, 479}, {1280, 853}, {4000, 50}, {50, 4000}};
#define NSIZES ((int)(sizeof sizes / sizeof *sizes))

enum { G_IDENTITY, G_SQUEEZE, G_PAD, G_LETTERBOX, G_QWEN, G_INTERNVL, G_COUNT };

static void make_geom(int kind, int w, int h, lp_box_geom *g) {
    lp_error err = {0};
    loupe_status st = LOUPE_OK;
    switch (kind) {
    case G_IDENTITY: st = lp_box_geom_identity(g, w, h, &err); break;
    case G_SQUEEZE: st = lp_box_geom_squeeze(g, w, h, 336, &err); break;
    case G_PAD: st = lp_box_geom_pad_square(g, w, h, 336, &err); break;
    case G_LETTERBOX: st = lp_box_geom_letterbox(g, w, h, 336, &err); break;
    case G_QWEN: st = lp_box_geom_qwen(g, w, h, 0, 0, 0, &err); break;
    case G_INTERNVL: st = lp_box_geom_internvl(g, w, h, 0, 0, 0, &err); break;
    }
    if (st) fail_msg("geometry %d for %dx%d: %s", kind, w, h, err.msg);
}

/* Deterministic generator (xorshift64*) so failures reproduce. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static double rndu(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static int parse1(lp_box_family f, const char *text, const lp_box_geom *g, lp_box *out, int max, int *n_issues) {
    lp_box_issue iss[16];
    int n = lp_boxes_parse(f, text, g, out, max, iss, 16);
    if (n_issues) *n_issues = lp_box_issue_count(iss, 16);
    return n;
}

/* ---- names ---- */

static void test_family_names(void **state) {
    (void)state;
    for (int f = 0; f < NFAM; f++) assert_int_equal(lp_box_family_from_name(lp_box_family_name((lp_box_family)f)), f);
    assert_int_equal(lp_box_family_from_name("Qwen2_5_VL"), LP_BOX_QWEN25VL);
    assert_int_equal(lp_box_family_from_name("qwen2vl"), LP_BOX_QWEN2VL);
    assert_int_equal(lp_box_family_from_name("KOSMOS2"), LP_BOX_KOSMOS2);
    assert_int_equal(lp_box_family_from_name("Florence-2"), LP_BOX_FLORENCE2);
    assert_int_equal(lp_box_family_from_name("llava"), LP_BOX_UNKNOWN);
    assert_int_equal(lp_box_family_from_name(""), LP_BOX_UNKNOWN);
    assert_int_equal(lp_box_family_from_name(NULL), LP_BOX_UNKNOWN);
    assert_string_equal(lp_box_family_name((lp_box_family)99), "?");
}

/* ---- geometry ---- */

/* Expected values from qwen-vl-utils' smart_resize run in Python (defaults
 * 28, 4·28·28, 16384·28·28; and min 256·28·28, max 1280·28·28). 70 and 42
 * exercise round-half-to-even (2.5 -> 2, 1.5 -> 2). */
static void test_qwen_smart_resize(void **state) {
    (void)state;
    static const int cases[][6] = {
        {1, 1, 56, 56, 448, 448},         {3, 7, 56, 112, 308, 700},        {641, 479, 644, 476, 644, 476},
        {1280, 853, 1288, 840, 1204, 812}, {4000, 50, 4004, 56, 4004, 56},   {50, 4000, 56, 4004, 56, 4004},
        {42, 42, 56, 56, 448, 448},       {70, 70, 56, 56, 448, 448},       {14, 14, 56, 56, 448, 448},
        {6000, 4000, 4368, 2912, 1204, 812}, {16384, 16384, 3584, 3584, 980, 980},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int w = 0, h = 0;
        lp_error err = {0};
        assert_int_equal(lp_qwen_smart_resize(cases[i][0], cases[i][1], 0, 0, 0, &w, &h, &err), LOUPE_OK);
        if (w != cases[i][2] || h != cases[i][3])
            fail_msg("%dx%d: got %dx%d want %dx%d", cases[i][0], cases[i][1], w, h, cases[i][2], cases[i][3]);
        assert_int_equal(lp_qwen_smart_resize(cases[i][0], cases[i][1], 28, 256 * 28 * 28, 1280 * 28 * 28, &w, &h, &err),
                         LOUPE_OK);
        if (w != cases[i][4] || h != cases[i][5])
            fail_msg("%dx%d (1280 max): got %dx%d want %dx%d", cases[i][0], cases[i][1], w, h, cases[i][4], cases[i][5]);
    }
    int w, h;
    lp_error err = {0};
    assert_int_equal(lp_qwen_smart_resize(4020, 20, 0, 0, 0, &w, &h, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "200"));
    assert_int_equal(lp_qwen_smart_resize(0, 20, 0, 0, 0, &w, &h, &err), LOUPE_ERR_INVALID_ARG);
    lp_box_geom g;
    assert_int_equal(lp_box_geom_qwen(&g, 1280, 853, 0, 0, 0, &err), LOUPE_OK);
    assert_int_equal(g.in_w, 1288);
    assert_int_equal(g.in_h, 840);
    assert_true(fabs(g.scale_x - 1288.0 / 1280) < 1e-12 && fabs(g.scale_y - 840.0 / 853) < 1e-12);
}

/* Grids from InternVL's find_closest_aspect_ratio run in Python. */
static void test_internvl_tiles(void **state) {
    (void)state;
    static const int cases[][4] = {{1, 1, 1, 1},     {3, 7, 2, 5},   {641, 479, 4, 3}, {1280, 853, 3, 2},
                                   {4000, 50, 12, 1}, {50, 4000, 1, 12}, {800, 600, 4, 3}, {1000, 1000, 3, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lp_box_geom g;
        lp_error err = {0};
        assert_int_equal(lp_box_geom_internvl(&g, cases[i][0], cases[i][1], 0, 0, 0, &err), LOUPE_OK);
        if (g.tiles_x != cases[i][2] || g.tiles_y != cases[i][3])
            fail_msg("%dx%d: tiles %dx%d want %dx%d", cases[i][0], cases[i][1], g.tiles_x, g.tiles_y, cases[i][2],
                     cases[i][3]);
        assert_int_equal(g.in_w, 448 * g.tiles_x);
        assert_int_equal(g.in_h, 448 * g.tiles_y);
        /* the frame is the whole image: no padding */
        assert_true(g.off_x == 0 && g.off_y == 0);
    }
}

/* The geometry constructors agree with what vision/preprocess.c reports
 * for the images it actually builds. */
static void test_geom_matches_preprocess(void **state) {
    (void)state;
    static const int dims[][2] = {{30, 20}, {20, 30}, {7, 3}, {16, 16}, {1, 40}};
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++) {
        lp_image img, out;
        lp_error err = {0};
        assert_int_equal(lp_image_alloc(&img, dims[i][0], dims[i][1], &err), LOUPE_OK);
        const int S = 16;
        lp_prep_geom pg;
        lp_box_geom a, b;
        assert_int_equal(lp_preprocess_rgb(&img, S, mean, LP_PREP_PAD_PIL, &out, &pg, &err), LOUPE_OK);
        lp_image_free(&out);
        assert_int_equal(lp_box_geom_pad_square(&a, img.w, img.h, S, &err), LOUPE_OK);
        assert_int_equal(lp_box_geom_from_prep(&b, &pg, img.w, img.h, S, &err), LOUPE_OK);
        assert_true(fabs(a.scale_x - b.scale_x) < 1e-12 && fabs(a.scale_y - b.scale_y) < 1e-12);
        assert_true(fabs(a.off_x - b.off_x) < 1e-12 && fabs(a.off_y - b.off_y) < 1e-12);

        assert_int_equal(lp_preprocess_rgb(&img, S, mean, LP_PREP_LLAMACPP, &out, &pg, &err), LOUPE_OK);
        lp_image_free(&out);
        assert_int_equal(lp_box_geom_letterbox(&a, img.w, img.h, S, &err), LOUPE_OK);
        assert_true(fabs(a.scale_x - pg.scale_x) < 1e-12 && fabs(a.scale_y - pg.scale_y) < 1e-12);
        assert_true(fabs(a.off_x - pg.off_x) < 1e-12 && fabs(a.off_y - pg.off_y) < 1e-12);

        assert_int_equal(lp_preprocess_rgb(&img, S, mean, LP_PREP_SQUASH_PIL, &out, &pg, &err), LOUPE_OK);
        lp_image_free(&out);
        assert_int_equal(lp_box_geom_squeeze(&a, img.w, img.h, S, &err), LOUPE_OK);
        assert_true(fabs(a.scale_x - pg.scale_x) < 1e-12 && fabs(a.scale_y - pg.scale_y) < 1e-12);
        lp_image_free(&img);
    }
}

static void test_geom_errors(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    assert_int_equal(lp_box_geom_squeeze(&g, 0, 10, 336, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_box_geom_squeeze(&g, 10, 10, 0, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_box_geom_pad_square(&g, LP_IMAGE_MAX_DIM + 1, 10, 336, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_box_geom_from_prep(&g, NULL, 10, 10, 336, &err), LOUPE_ERR_INVALID_ARG);
    /* a zeroed geometry parses nothing and says why */
    lp_box_geom zero = {0};
    lp_box b[2];
    lp_box_issue iss[2];
    assert_int_equal(lp_boxes_parse(LP_BOX_FERRET, "[1, 2, 3, 4]", &zero, b, 2, iss, 2), 0);
    assert_int_equal(lp_box_issue_count(iss, 2), 1);
    assert_int_equal(lp_boxes_parse(LP_BOX_FERRET, "[1, 2, 3, 4]", NULL, b, 2, iss, 2), 0);
    char buf[64];
    assert_int_equal(lp_box_format(LP_BOX_FERRET, &b[0], NULL, buf, sizeof buf), -1);
}

/* Pad geometry: the mapping undoes the pad, and a box wholly in the
 * padding is refused rather than clipped onto the edge. */
static void test_pad_mapping(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    assert_int_equal(lp_box_geom_pad_square(&g, 200, 100, 224, &err), LOUPE_OK);
    lp_box b;
    /* frame y 56..168 holds the image (pad 50 px of 200 -> 56 of 224) */
    assert_int_equal(lp_box_from_frame(&g, 0, 56, 224, 168, &b), 0);
    assert_true(fabsf(b.x1) < 1e-4f && fabsf(b.y1) < 1e-4f && fabsf(b.x2 - 200) < 1e-3f && fabsf(b.y2 - 100) < 1e-3f);
    assert_int_equal(lp_box_from_frame(&g, 0, 0, 224, 40, &b), -1);   /* top padding */
    assert_int_equal(lp_box_from_frame(&g, 0, 0, 224, 56, &b), -1);   /* touches the edge from the pad */
    assert_int_equal(lp_box_from_frame(&g, 0, 40, 224, 80, &b), 0);   /* straddles: clipped */
    assert_true(b.y1 == 0.0f && b.y2 > 0.0f);
    assert_int_equal(lp_box_from_frame(&g, 10, 60, 5, 80, &b), -1);   /* inverted */
    assert_int_equal(lp_box_from_frame(&g, NAN, 60, 5, 80, &b), -1);

    lp_box out[4];
    int ni = 0;
    assert_int_equal(parse1(LP_BOX_FERRET, "[0, 0, 999, 100]", &g, out, 4, &ni), 0);
    assert_int_equal(ni, 1);
}

/* ---- round trips ---- */

static const char *const labels[] = {"red cup", "the dog on the left", "café", "x"};

static int family_has_label(lp_box_family f) { return f != LP_BOX_FERRET && f != LP_BOX_SHIKRA; }

static void check_close(const lp_box *a, const lp_box *b, double qx, double qy, const char *what, const char *text) {
    const double tx = qx * 1.002 + 2e-3, ty = qy * 1.002 + 2e-3;
    if (fabs(a->x1 - b->x1) > tx || fabs(a->x2 - b->x2) > tx || fabs(a->y1 - b->y1) > ty || fabs(a->y2 - b->y2) > ty)
        fail_msg("%s: [%g %g %g %g] vs [%g %g %g %g] (quantum %g x %g) text '%s'", what, a->x1, a->y1, a->x2, a->y2,
                 b->x1, b->y1, b->x2, b->y2, qx, qy, text);
}

static int round_trips;

static void round_trip_one(lp_box_family f, const lp_box_geom *g, const lp_box *b) {
    char t1[512], t2[512], t3[512];
    lp_box p1, p2, p3;
    int ni = 0;
    double qx, qy;
    lp_box_quantum(f, g, &qx, &qy);
    int len = lp_box_format(f, b, g, t1, sizeof t1);
    if (len <= 0) fail_msg("%s: format refused [%g %g %g %g] on %dx%d", lp_box_family_name(f), b->x1, b->y1, b->x2,
                           b->y2, g->orig_w, g->orig_h);
    assert_int_equal((int)strlen(t1), len);
    if (parse1(f, t1, g, &p1, 1, &ni) != 1 || ni != 0)
        fail_msg("%s: '%s' did not parse back (%d issues) on %dx%d kind %d", lp_box_family_name(f), t1, ni, g->orig_w,
                 g->orig_h, g->kind);
    check_close(&p1, b, qx, qy, lp_box_family_name(f), t1);
    /* within one pixel whenever the grid is at least that fine */
    if (qx <= 1.0 && qy <= 1.0) check_close(&p1, b, 1.0, 1.0, "1 px", t1);
    if (family_has_label(f)) assert_string_equal(p1.label, b->label);
    assert_true(p1.x1 >= 0 && p1.y1 >= 0 && p1.x2 <= g->orig_w && p1.y2 <= g->orig_h);
    /* a second trip is a fixed point: same text, same box */
    assert_true(lp_box_format(f, &p1, g, t2, sizeof t2) > 0);
    assert_int_equal(parse1(f, t2, g, &p2, 1, &ni), 1);
    check_close(&p2, &p1, qx, qy, "second trip", t2);
    assert_true(lp_box_format(f, &p2, g, t3, sizeof t3) > 0);
    if (strcmp(t2, t3) != 0) fail_msg("%s: not a fixed point: '%s' -> '%s'", lp_box_family_name(f), t2, t3);
    assert_int_equal(parse1(f, t3, g, &p3, 1, &ni), 1);
    assert_true(p3.x1 == p2.x1 && p3.y1 == p2.y1 && p3.x2 == p2.x2 && p3.y2 == p2.y2);
    round_trips++;
}

static void test_round_trips(void **state) {
    (void)state;
    round_trips = 0;
    for (int f = 0; f < NFAM; f++)
        for (int k = 0; k < G_COUNT; k++)
            for (int s = 0; s < NSIZES; s++) {
                const int W = sizes[s][0], H = sizes[s][1];
                lp_box_geom g;
                make_geom(k, W, H, &g);
                double qx, qy;
                lp_box_quantum((lp_box_family)f, &g, &qx, &qy);
                /* boxes at least two grid steps wide: a thinner one may
                 * quantise into the padding (documented) */
                const double mw = fmin(W, 2.5 * qx), mh = fmin(H, 2.5 * qy);
                for (int i = 0; i < 40; i++) {
                    lp_box b;
                    memset(&b, 0, sizeof b);
                    double x1 = rndu() * (W - mw), y1 = rndu() * (H - mh);
                    double x2 = x1 + mw + rndu() * (W - x1 - mw), y2 = y1 + mh + rndu() * (H - y1 - mh);
                    if (i == 0) { x1 = 0; y1 = 0; x2 = W; y2 = H; }              /* whole image */
                    if (i == 1) { x1 = W - mw; y1 = H - mh; x2 = W; y2 = H; }    /* corner */
                    if (i == 2) { x1 = 0; y1 = 0; x2 = mw; y2 = mh; }
                    if (i == 3 && W >= 2 && H >= 2) { x1 = floor(W / 3.0); y1 = floor(H / 3.0); x2 = x1 + ceil(mw); y2 = y1 + ceil(mh); }
                    b.x1 = (float)x1;
                    b.y1 = (float)y1;
                    b.x2 = (float)fmin(x2, W);
                    b.y2 = (float)fmin(y2, H);
                    snprintf(b.label, sizeof b.label, "%s", labels[i % 4]);
                    round_trip_one((lp_box_family)f, &g, &b);
                }
            }
    print_message("round trips: %d (8 families x %d geometries x %d sizes x 40 boxes)\n", round_trips, G_COUNT, NSIZES);
}

/* Grid values survive text -> pixels -> text exactly, for every grid value
 * on the axis (the worst case for float drift). */
static void test_grid_values_exact(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    assert_int_equal(lp_box_geom_squeeze(&g, 1280, 853, 336, &err), LOUPE_OK);
    char in[128], out[128];
    lp_box b;
    int ni;
    for (int v = 0; v < 999; v++) {
        snprintf(in, sizeof in, "[%d, %d, %d, %d]", v, v, v + 1, 999);
        assert_int_equal(parse1(LP_BOX_FERRET, in, &g, &b, 1, &ni), 1);
        assert_true(lp_box_format(LP_BOX_FERRET, &b, &g, out, sizeof out) > 0);
        assert_string_equal(in, out);
        snprintf(in, sizeof in, "<loc_%d><loc_%d><loc_%d><loc_%d>", v, v, v + 1, 999);
        assert_int_equal(parse1(LP_BOX_FLORENCE2, in, &g, &b, 1, &ni), 1);
        assert_true(lp_box_format(LP_BOX_FLORENCE2, &b, &g, out, sizeof out) > 0);
        assert_string_equal(in, out);
    }
    for (int v = 0; v < 1023; v++) {
        snprintf(in, sizeof in, "<loc%04d><loc%04d><loc%04d><loc%04d>", v, v, 1023, v + 1);
        assert_int_equal(parse1(LP_BOX_PALIGEMMA, in, &g, &b, 1, &ni), 1);
        assert_true(lp_box_format(LP_BOX_PALIGEMMA, &b, &g, out, sizeof out) > 0);
        assert_string_equal(in, out);
    }
    for (int v = 0; v < 1000; v++) {
        snprintf(in, sizeof in, "<box>[[%d, %d, %d, %d]]</box>", v, v, v + 1, 1000);
        assert_int_equal(parse1(LP_BOX_INTERNVL, in, &g, &b, 1, &ni), 1);
        assert_true(lp_box_format(LP_BOX_INTERNVL, &b, &g, out, sizeof out) > 0);
        assert_string_equal(in, out);
    }
    /* every Kosmos-2 patch pair that the processor can produce */
    for (int ul = 0; ul < 1024; ul += 7)
        for (int lr = ul; lr < 1024; lr += 13) {
            if (lr % 32 < ul % 32) continue;
            snprintf(in, sizeof in, "<object><patch_index_%04d><patch_index_%04d></object>", ul, lr);
            assert_int_equal(parse1(LP_BOX_KOSMOS2, in, &g, &b, 1, &ni), 1);
            assert_true(lp_box_format(LP_BOX_KOSMOS2, &b, &g, out, sizeof out) > 0);
            assert_string_equal(in, out);
        }
}

/* ---- real-looking answers ---- */

static void expect_box(const lp_box *b, double x1, double y1, double x2, double y2, const char *label) {
    if (fabs(b->x1 - x1) > 1e-3 || fabs(b->y1 - y1) > 1e-3 || fabs(b->x2 - x2) > 1e-3 || fabs(b->y2 - y2) > 1e-3)
        fail_msg("got [%g %g %g %g] want [%g %g %g %g]", b->x1, b->y1, b->x2, b->y2, x1, y1, x2, y2);
    if (label) assert_string_equal(b->label, label);
}

static void test_answers_ferret_shikra(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    lp_box b[8];
    int ni;
    assert_int_equal(lp_box_geom_squeeze(&g, 1000, 500, 336, &err), LOUPE_OK);
    const char *a = "There is a cup [100, 200, 300, 400] and a plate [500, 600, 999, 999]. Nothing else.";
    assert_int_equal(parse1(LP_BOX_FERRET, a, &g, b, 8, &ni), 2);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 100, 100, 300, 200, "There is a cup");
    expect_box(&b[1], 500, 300, 999, 499.5, "and a plate");

    /* Shikra: relative to the padded square (200x100 -> 200x200, image at y 50) */
    assert_int_equal(lp_box_geom_pad_square(&g, 200, 100, 224, &err), LOUPE_OK);
    a = "Answer: the dog [0.100,0.250,0.500,0.750]. Two cats [0.1,0.3,0.5,0.5;0.6,0.25,0.9,0.75].";
    assert_int_equal(parse1(LP_BOX_SHIKRA, a, &g, b, 8, &ni), 3);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 20, 0, 100, 100, "the dog");
    expect_box(&b[1], 20, 10, 100, 50, "Two cats");
    expect_box(&b[2], 120, 0, 180, 100, "Two cats");
}

static void test_answers_internvl_qwen(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    lp_box b[8];
    int ni;
    assert_int_equal(lp_box_geom_internvl(&g, 640, 480, 0, 0, 0, &err), LOUPE_OK);
    const char *a = "Sure! <ref>the cat</ref><box>[[100, 200, 500, 1000]]</box> and "
                    "<ref>dogs</ref><box>[[0, 0, 100, 100], [900, 900, 1000, 1000]]</box>.";
    assert_int_equal(parse1(LP_BOX_INTERNVL, a, &g, b, 8, &ni), 3);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 64, 96, 320, 480, "the cat");
    expect_box(&b[1], 0, 0, 64, 48, "dogs");
    expect_box(&b[2], 576, 432, 640, 480, "dogs");

    assert_int_equal(lp_box_geom_qwen(&g, 640, 480, 0, 0, 0, &err), LOUPE_OK);
    a = "The <|object_ref_start|>a cup<|object_ref_end|><|box_start|>(250,500),(750,1000)<|box_end|> is here, "
        "and <|box_start|>( 0 , 0 ), ( 10 , 20 )<|box_end|>";
    assert_int_equal(parse1(LP_BOX_QWEN2VL, a, &g, b, 8, &ni), 2);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 160, 240, 480, 480, "a cup");
    expect_box(&b[1], 0, 0, 6.4, 9.6, "");

    /* Qwen2.5-VL: absolute pixels of the 1288x840 input for a 1280x853 photo */
    assert_int_equal(lp_box_geom_qwen(&g, 1280, 853, 0, 0, 0, &err), LOUPE_OK);
    a = "Here you go:\n```json\n[\n  {\"bbox_2d\": [644, 420, 1288, 840], \"label\": \"cup\"},\n"
        "  {\"label\": \"plate \\\"big\\\" \\u00e9\", \"bbox_2d\": [0, 0, 322, 210]}\n]\n```";
    assert_int_equal(parse1(LP_BOX_QWEN25VL, a, &g, b, 8, &ni), 2);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 640, 426.5, 1280, 853, "cup");
    expect_box(&b[1], 0, 0, 320, 213.25, "plate \"big\" \xc3\xa9");
}

static void test_answers_kosmos_florence_paligemma(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    lp_box b[8];
    int ni;
    /* the transformers Kosmos-2 docs example: snowman (0.390625, 0.046875,
     * 0.984375, 0.828125), fire (0.171875, 0.015625, 0.484375, 0.890625) */
    assert_int_equal(lp_box_geom_squeeze(&g, 640, 480, 224, &err), LOUPE_OK);
    const char *a = "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863>"
                    "</object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911>"
                    "</object>. <phrase>a row</phrase><object><patch_index_0000><patch_index_0031>"
                    "</delimiter_of_multi_objects/><patch_index_0033><patch_index_0033></object>";
    assert_int_equal(parse1(LP_BOX_KOSMOS2, a, &g, b, 8, &ni), 4);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 0.390625 * 640, 0.046875 * 480, 0.984375 * 640, 0.828125 * 480, "a snowman");
    expect_box(&b[1], 0.171875 * 640, 0.015625 * 480, 0.484375 * 640, 0.890625 * 480, "a fire");
    expect_box(&b[2], 0, 0, 640, 15, "a row");           /* same row: patch edges */
    expect_box(&b[3], 20, 15, 40, 30, "a row");          /* one patch: its edges */

    assert_int_equal(lp_box_geom_squeeze(&g, 1000, 1000, 768, &err), LOUPE_OK);
    a = "</s><s>car<loc_52><loc_332><loc_932><loc_774>door<loc_100><loc_200><loc_150><loc_250>"
        "<loc_160><loc_200><loc_210><loc_250></s>";
    assert_int_equal(parse1(LP_BOX_FLORENCE2, a, &g, b, 8, &ni), 3);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 52.5, 332.5, 932.5, 774.5, "car");
    expect_box(&b[1], 100.5, 200.5, 150.5, 250.5, "door");
    expect_box(&b[2], 160.5, 200.5, 210.5, 250.5, "door");

    assert_int_equal(lp_box_geom_squeeze(&g, 1024, 512, 224, &err), LOUPE_OK);
    a = "detect cat ; dog\n<loc0256><loc0128><loc0768><loc0896> cat ; <loc0000><loc0000><loc1023><loc1023> dog";
    assert_int_equal(parse1(LP_BOX_PALIGEMMA, a, &g, b, 8, &ni), 2);
    assert_int_equal(ni, 0);
    expect_box(&b[0], 128, 128, 896, 384, "cat");
    expect_box(&b[1], 0, 0, 1023, 511.5, "dog");
    a = "<loc0010><loc0020><loc0030><loc0040><seg001><seg002><seg003><seg004><seg005><seg006><seg007><seg008>"
        "<seg009><seg010><seg011><seg012><seg013><seg014><seg015><seg016> wheel";
    assert_int_equal(parse1(LP_BOX_PALIGEMMA, a, &g, b, 8, &ni), 1);
    expect_box(&b[0], 20, 5, 40, 15, "wheel");
}

static void test_format_texts(void **state) {
    (void)state;
    lp_box_geom g;
    lp_error err = {0};
    char buf[256];
    lp_box b = {100, 50, 300, 250, "red <cup>"};
    assert_int_equal(lp_box_geom_squeeze(&g, 1000, 500, 336, &err), LOUPE_OK);
    assert_true(lp_box_format(LP_BOX_FERRET, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "[100, 100, 300, 500]");
    assert_true(lp_box_format(LP_BOX_SHIKRA, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "[0.100,0.100,0.300,0.500]");
    assert_true(lp_box_format(LP_BOX_INTERNVL, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "<ref>red  cup </ref><box>[[100, 100, 300, 500]]</box>");
    assert_true(lp_box_format(LP_BOX_QWEN2VL, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "<|object_ref_start|>red  cup <|object_ref_end|><|box_start|>(100,100),(300,500)<|box_end|>");
    assert_true(lp_box_format(LP_BOX_KOSMOS2, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "<phrase>red  cup </phrase><object><patch_index_0099><patch_index_0489></object>");
    assert_true(lp_box_format(LP_BOX_FLORENCE2, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "red  cup <loc_100><loc_100><loc_300><loc_500>");
    assert_true(lp_box_format(LP_BOX_PALIGEMMA, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "<loc0102><loc0102><loc0512><loc0307> red  cup ");
    snprintf(b.label, sizeof b.label, "say \"hi\"\\");
    assert_int_equal(lp_box_geom_identity(&g, 1000, 500, &err), LOUPE_OK);
    assert_true(lp_box_format(LP_BOX_QWEN25VL, &b, &g, buf, sizeof buf) > 0);
    assert_string_equal(buf, "{\"bbox_2d\": [100, 50, 300, 250], \"label\": \"say \\\"hi\\\"\\\\\"}");
    /* refusals */
    lp_box bad = {300, 50, 100, 250, ""};
    assert_int_equal(lp_box_format(LP_BOX_FERRET, &bad, &g, buf, sizeof buf), -1);
    assert_string_equal(buf, "");
    lp_box out = {0, 0, 1001, 10, ""};
    assert_int_equal(lp_box_format(LP_BOX_FERRET, &out, &g, buf, sizeof buf), -1);
    lp_box nan = {NAN, 0, 10, 10, ""};
    assert_int_equal(lp_box_format(LP_BOX_FERRET, &nan, &g, buf, sizeof buf), -1);
    lp_box thin = {10, 10, 10, 20, ""};
    assert_int_equal(lp_box_format(LP_BOX_KOSMOS2, &thin, &g, buf, sizeof buf), -1);
    assert_true(lp_box_format(LP_BOX_FERRET, &thin, &g, buf, sizeof buf) > 0); /* degenerate is fine elsewhere */
    assert_int_equal(lp_box_format(LP_BOX_FERRET, &b, &g, buf, 5), -1);        /* too small */
    assert_string_equal(buf, "");
}

/* ---- malformed answers: zero boxes and a reason ---- */

static void test_malformed(void **state) {
    (void)state;
    static const struct { lp_box_family f; const char *text; } cases[] = {
        {LP_BOX_FERRET, "a cup [12, 34,"},
        {LP_BOX_FERRET, "[a, b, c, d]"},
        {LP_BOX_FERRET, "[[1,2,3]]"},
        {LP_BOX_FERRET, "[1, 2, 3, 4, 5]"},
        {LP_BOX_FERRET, "[99999999999999999999, 1, 2, 3]"},
        {LP_BOX_FERRET, "[-5, 10, 20, 30]"},
        {LP_BOX_FERRET, "[nan, 1, 2, 3]"},
        {LP_BOX_FERRET, "[NaN, NaN, NaN, NaN]"},
        {LP_BOX_FERRET, "[500, 10, 100, 20]"},
        {LP_BOX_FERRET, "[10, 500, 100, 20]"},
        {LP_BOX_FERRET, "[1000, 0, 1000, 5]"},
        {LP_BOX_FERRET, "[1.5, 2, 3, 4]"},
        {LP_BOX_FERRET, "[1e3, 2, 3, 4]"},
        {LP_BOX_FERRET, "[1, 2, 3, 4"},
        {LP_BOX_FERRET, "\x01\xff[\x80\x90"},
        {LP_BOX_SHIKRA, "[0.1,0.2,1.5,0.9]"},
        {LP_BOX_SHIKRA, "[0.5,0.2,0.1,0.9]"},
        {LP_BOX_SHIKRA, "[0.1,0.2,0.3"},
        {LP_BOX_SHIKRA, "[0.1;0.2]"},
        {LP_BOX_SHIKRA, "[0.1,0.2,0.3,0.4;"},
        {LP_BOX_INTERNVL, "<box>[[1,2,3]]</box>"},
        {LP_BOX_INTERNVL, "<ref>cup</ref><box>[[1,2,3,4]]"},
        {LP_BOX_INTERNVL, "<box>[[1,2,3,4]"},
        {LP_BOX_INTERNVL, "<box>[[1001,0,5,5]]</box>"},
        {LP_BOX_INTERNVL, "<box>[[-1,0,5,5]]</box>"},
        {LP_BOX_INTERNVL, "<ref>x</ref><box>"},
        {LP_BOX_INTERNVL, "<box>cup</box>"},
        {LP_BOX_INTERNVL, "<box>[[1,2,3,4],[5,6,7,8]</box>"},
        {LP_BOX_QWEN2VL, "<|box_start|>(1,2),(3,4)"},
        {LP_BOX_QWEN2VL, "<|box_start|>(1,2)<|box_end|>"},
        {LP_BOX_QWEN2VL, "<|box_start|>(1,2),(3)<|box_end|>"},
        {LP_BOX_QWEN2VL, "<|box_start|>(a,2),(3,4)<|box_end|>"},
        {LP_BOX_QWEN2VL, "<|box_start|>(500,2),(30,4)<|box_end|>"},
        {LP_BOX_QWEN2VL, "<|box_start|>(1,2),(3,99999999999999999999)<|box_end|>"},
        {LP_BOX_QWEN25VL, "[{\"bbox_2d\": [1, 2, 3]}]"},
        {LP_BOX_QWEN25VL, "[{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"cu"},
        {LP_BOX_QWEN25VL, "[{\"bbox_2d\": [1, 2, 3, 4"},
        {LP_BOX_QWEN25VL, "{\"bbox_2d\": [5000, 2, 6000, 4]}"},
        {LP_BOX_QWEN25VL, "{\"bbox_2d\": \"none\"}"},
        {LP_BOX_QWEN25VL, "{\"bbox_2d\": [30, 2, 10, 4]}"},
        {LP_BOX_QWEN25VL, "{\"bbox_2d\": [-3, 2, 10, 4]}"},
        {LP_BOX_KOSMOS2, "<object><patch_index_0044>"},
        {LP_BOX_KOSMOS2, "<object><patch_index_0044><patch_index_0863>"},
        {LP_BOX_KOSMOS2, "<object><patch_index_2000><patch_index_0863></object>"},
        {LP_BOX_KOSMOS2, "<object><patch_index_0863><patch_index_0044></object>"},
        {LP_BOX_KOSMOS2, "<object><patch_index_0031><patch_index_0032></object>"},
        {LP_BOX_KOSMOS2, "<object>garbage</object>"},
        {LP_BOX_KOSMOS2, "<object><patch_index_00"},
        {LP_BOX_FLORENCE2, "car<loc_1><loc_2><loc_3>"},
        {LP_BOX_FLORENCE2, "<loc_1000><loc_0><loc_5><loc_5>"},
        {LP_BOX_FLORENCE2, "<loc_500><loc_0><loc_100><loc_5>"},
        {LP_BOX_FLORENCE2, "<loc_1><loc_2><loc_3><loc_"},
        {LP_BOX_FLORENCE2, "<loc_x><loc_2><loc_3><loc_4>"},
        {LP_BOX_PALIGEMMA, "<loc0001><loc0002><loc0003> x"},
        {LP_BOX_PALIGEMMA, "<loc1024><loc0000><loc0005><loc0005> x"},
        {LP_BOX_PALIGEMMA, "<loc0500><loc0000><loc0100><loc0005> x"},
        {LP_BOX_PALIGEMMA, "<loc12><loc0000><loc0005><loc0005>"},
        {LP_BOX_PALIGEMMA, "<loc0001><loc0002><loc0003><loc00"},
    };
    lp_box_geom g;
    lp_error err = {0};
    assert_int_equal(lp_box_geom_qwen(&g, 640, 480, 0, 0, 0, &err), LOUPE_OK);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lp_box b[4];
        lp_box_issue iss[4];
        int n = lp_boxes_parse(cases[i].f, cases[i].text, &g, b, 4, iss, 4);
        int ni = lp_box_issue_count(iss, 4);
        if (n != 0 || ni < 1)
            fail_msg("%s '%s': %d boxes, %d issues", lp_box_family_name(cases[i].f), cases[i].text, n, ni);
        assert_true(iss[0].offset >= 0 && (size_t)iss[0].offset <= strlen(cases[i].text));
    }
    /* empty, NULL and box-free text: nothing, and nothing to complain about */
    for (int f = 0; f < NFAM; f++) {
        lp_box b[2];
        lp_box_issue iss[2];
        assert_int_equal(lp_boxes_parse((lp_box_family)f, "", &g, b, 2, iss, 2), 0);
        assert_int_equal(lp_box_issue_count(iss, 2), 0);
        assert_int_equal(lp_boxes_parse((lp_box_family)f, NULL, &g, b, 2, iss, 2), 0);
        assert_int_equal(lp_boxes_parse((lp_box_family)f, "A cat sits on a mat.", &g, b, 2, iss, 2), 0);
        assert_int_equal(lp_box_issue_count(iss, 2), 0);
    }
    /* the reason says why */
    lp_box b[2];
    lp_box_issue iss[2];
    lp_boxes_parse(LP_BOX_FERRET, "[500, 10, 100, 20]", &g, b, 2, iss, 2);
    assert_non_null(strstr(iss[0].reason, "x2 < x1"));
    lp_boxes_parse(LP_BOX_FERRET, "[99999999999999999999, 1, 2, 3]", &g, b, 2, iss, 2);
    assert_non_null(strstr(iss[0].reason, "too large"));
    lp_boxes_parse(LP_BOX_INTERNVL, "<ref>cup</ref><box>[[1,2,3,4]]", &g, b, 2, iss, 2);
    assert_non_null(strstr(iss[0].reason, "unterminated"));
    /* a valid box next to a bad one is kept; the bad one is reported */
    assert_int_equal(lp_boxes_parse(LP_BOX_FERRET, "[1, 2, 3] then [1, 2, 3, 4]", &g, b, 2, iss, 2), 1);
    assert_int_equal(lp_box_issue_count(iss, 2), 1);
    /* more boxes than room: the rest is reported, not written */
    assert_int_equal(lp_boxes_parse(LP_BOX_FERRET, "[1, 2, 3, 4] [5, 6, 7, 8] [9, 9, 9, 9]", &g, b, 2, iss, 2), 2);
    assert_int_equal(lp_box_issue_count(iss, 2), 1);
    /* unknown family */
    assert_int_equal(lp_boxes_parse((lp_box_family)42, "[1, 2, 3, 4]", &g, b, 2, iss, 2), 0);
    assert_int_equal(lp_box_issue_count(iss, 2), 1);
}

/* Long answers parse in linear time (a quadratic scan would take minutes
 * here) and hold no more boxes than the caller asked for. */
static void test_large_answers(void **state) {
    (void)state;
    static const char *const unit[NFAM] = {
        "a [1, 2, 3, 4] ", "a [0.1,0.2,0.3,0.4] ", "<ref>a</ref><box>[[1, 2, 3, 4]]</box> ",
        "<|box_start|>(1,2),(3,4)<|box_end|> ", "{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"a\"}, ",
        "<phrase>a</phrase><object><patch_index_0000><patch_index_0033></object> ", "a<loc_1><loc_2><loc_3><loc_4>",
        "<loc0001><loc0002><loc0003><loc0004> a ; ",
    };
    const size_t N = 1 << 20;
    char *text = malloc(N + 64);
    assert_non_null(text);
    lp_box_geom g;
    lp_error err = {0};
    assert_int_equal(lp_box_geom_identity(&g, 640, 480, &err), LOUPE_OK);
    static lp_box b[64];
    lp_box_issue iss[4];
    for (int f = 0; f < NFAM; f++) {
        size_t len = 0;
        const size_t ul = strlen(unit[f]);
        while (len + ul < N) {
            memcpy(text + len, unit[f], ul);
            len += ul;
        }
        text[len] = 0;
        assert_int_equal(lp_boxes_parse((lp_box_family)f, text, &g, b, 64, iss, 4), 64);
        /* cut off inside a JSON object: the rest is inside it too */
        if (f == LP_BOX_QWEN25VL) {
            text[0] = '{';
            static const char head[] = "\"bbox_2d\": [1, 2, 3, 4], \"x\": ";
            memcpy(text + 1, head, sizeof head - 1);
            for (size_t i = sizeof head; i < len; i++) text[i] = ' ';
            assert_int_equal(strlen(text), len);
            assert_int_equal(lp_boxes_parse((lp_box_family)f, text, &g, b, 64, iss, 4), 0);
        }
    }
    free(text);
}

/* ---- fuzz-ish: random and mutated strings never yield a box outside the image ---- */

static const char *const pieces[] = {
    "[", "]", "[[", "]]", ",", ", ", ";", "(", ")", "0", "1", "999", "1000", "1023", "-", ".", "0.5", "99999999999",
    "<ref>", "</ref>", "<box>", "</box>", "<|box_start|>", "<|box_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "{", "}", "\"bbox_2d\"", ":", "\"label\"", "\"", "\\", "<phrase>", "</phrase>",
    "<object>", "</object>", "<patch_index_0044>", "<patch_index_1023>", "<patch_index_", "</delimiter_of_multi_objects/>",
    "<loc_", "<loc_5>", ">", "<loc0512>", "<loc", "<seg012>", " cup", "nan", "\n", "```json", "\xc3\xa9", "\xff",
};

static void check_boxes(const lp_box *b, int n, int max, const lp_box_geom *g, const lp_box_issue *iss, int max_iss,
                        size_t len, const char *text) {
    if (n < 0 || n > max) fail_msg("count %d", n);
    for (int i = 0; i < n; i++) {
        if (!(b[i].x1 >= 0 && b[i].y1 >= 0 && b[i].x2 <= g->orig_w && b[i].y2 <= g->orig_h && b[i].x1 <= b[i].x2 &&
              b[i].y1 <= b[i].y2))
            fail_msg("box [%g %g %g %g] outside %dx%d from '%s'", b[i].x1, b[i].y1, b[i].x2, b[i].y2, g->orig_w,
                     g->orig_h, text);
        assert_true(memchr(b[i].label, 0, sizeof b[i].label) != NULL);
    }
    const int ni = lp_box_issue_count(iss, max_iss);
    assert_true(ni <= max_iss);
    for (int i = 0; i < ni; i++) assert_true(iss[i].offset >= 0 && (size_t)iss[i].offset <= len);
}

static void test_fuzzish(void **state) {
    (void)state;
    char text[512];
    int total_boxes = 0;
    for (int it = 0; it < 10000; it++) {
        const lp_box_family f = (lp_box_family)(rnd() % NFAM);
        const int s = (int)(rnd() % NSIZES);
        lp_box_geom g;
        make_geom((int)(rnd() % G_COUNT), sizes[s][0], sizes[s][1], &g);
        size_t len = 0;
        const int mode = (int)(rnd() % 3);
        if (mode == 0) { /* random bytes */
            len = rnd() % 64;
            for (size_t i = 0; i < len; i++) text[i] = (char)(1 + rnd() % 255);
        } else if (mode == 1) { /* random pieces */
            const int np = (int)(rnd() % 24);
            for (int i = 0; i < np; i++) {
                const char *p = pieces[rnd() % (sizeof pieces / sizeof *pieces)];
                const size_t pl = strlen(p);
                if (len + pl >= sizeof text - 1) break;
                memcpy(text + len, p, pl);
                len += pl;
            }
        } else { /* a valid answer, mutated */
            lp_box b = {0};
            b.x1 = (float)(rndu() * sizes[s][0] * 0.5);
            b.y1 = (float)(rndu() * sizes[s][1] * 0.5);
            b.x2 = (float)fmin(sizes[s][0], b.x1 + 0.01 + rndu() * sizes[s][0]);
            b.y2 = (float)fmin(sizes[s][1], b.y1 + 0.01 + rndu() * sizes[s][1]);
            snprintf(b.label, sizeof b.label, "thing %d", it);
            int n = lp_box_format(f, &b, &g, text, 200);
            len = n > 0 ? (size_t)n : 0;
            const int nm = 1 + (int)(rnd() % 4);
            for (int m = 0; m < nm && len > 0; m++) {
                const size_t at = rnd() % len;
                switch (rnd() % 4) {
                case 0: text[at] = (char)(1 + rnd() % 255); break;                                 /* flip */
                case 1: len = at; break;                                                           /* truncate */
                case 2: memmove(text + at, text + at + 1, len - at - 1); len--; break;             /* delete */
                case 3: if (len + 1 < 300) { memmove(text + at + 1, text + at, len - at); text[at] = "0123456789,-[]<>"[rnd() % 16]; len++; } break;
                }
            }
        }
        text[len] = 0;
        lp_box b[8];
        lp_box_issue iss[4];
        const int n = lp_boxes_parse(f, text, &g, b, 8, iss, 4);
        check_boxes(b, n, 8, &g, iss, 4, len, text);
        total_boxes += n;
    }
    print_message("fuzz-ish: 10000 strings, %d boxes accepted, all inside their images\n", total_boxes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_names),
        cmocka_unit_test(test_qwen_smart_resize),
        cmocka_unit_test(test_internvl_tiles),
        cmocka_unit_test(test_geom_matches_preprocess),
        cmocka_unit_test(test_geom_errors),
        cmocka_unit_test(test_pad_mapping),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_grid_values_exact),
        cmocka_unit_test(test_answers_ferret_shikra),
        cmocka_unit_test(test_answers_internvl_qwen),
        cmocka_unit_test(test_answers_kosmos_florence_paligemma),
        cmocka_unit_test(test_format_texts),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_large_answers),
        cmocka_unit_test(test_fuzzish),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
