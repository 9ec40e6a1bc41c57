/* tests/test_tiles.c — InternVL's dynamic tiling (vision/tiles.h), both the
 * reference rule and llama.cpp's, llama.cpp's bilinear resize, and the box
 * geometry InternVL answers are mapped back with. The llama.cpp plans were
 * also checked against llama.cpp itself by tests/test_internvl.c's
 * fixtures; the reference rule against InternVL's Python
 * find_closest_aspect_ratio on 6,700 sizes (all agreed). */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../fusion/boxes.h"
#include "../vision/tiles.h"

typedef struct plan_case {
    int w, h;
    int gx, gy, n_tiles; /* expected */
} plan_case;

static void check_plans(const plan_case *cases, size_t n, lp_prep_mode mode) {
    for (size_t i = 0; i < n; i++) {
        lp_tile_plan p;
        lp_error e = {0};
        assert_int_equal(lp_tiles_plan(cases[i].w, cases[i].h, 448, 1, 12, mode, &p, &e), LOUPE_OK);
        if (p.grid_x != cases[i].gx || p.grid_y != cases[i].gy || p.n_tiles != cases[i].n_tiles)
            fail_msg("%dx%d: got %dx%d grid, %d tiles; want %dx%d, %d", cases[i].w, cases[i].h, p.grid_x, p.grid_y,
                     p.n_tiles, cases[i].gx, cases[i].gy, cases[i].n_tiles);
    }
}

/* InternVL's own rule: closest aspect ratio, small images tiled too. */
static void test_plan_reference(void **state) {
    (void)state;
    static const plan_case cases[] = {
        {448, 448, 1, 1, 1},   /* one tile, no thumbnail                       */
        {300, 200, 3, 2, 7},   /* 1.5 exactly: 3×2 + thumbnail, though small  */
        {1280, 853, 3, 2, 7},  /* photo                                        */
        {2000, 300, 7, 1, 8},  /* 6.67: 7×1 is nearest                         */
        {300, 1500, 1, 5, 6},  /* 0.2 exactly                                  */
        {900, 900, 2, 2, 5},   /* square tie: 2×2 wins (area > half of 2×2)    */
        {500, 500, 1, 1, 1},   /* square tie: 2×2 needs area > 401,408         */
        {16000, 10, 12, 1, 13}, /* extreme: the widest ratio                   */
    };
    check_plans(cases, sizeof cases / sizeof cases[0], LP_PREP_PAD_PIL);
}

/* llama.cpp: no tiling up to S×S, else LLaVA-NeXT's best resolution. */
static void test_plan_llamacpp(void **state) {
    (void)state;
    static const plan_case cases[] = {
        {448, 448, 0, 0, 1}, {300, 200, 0, 0, 1}, {1280, 853, 3, 2, 7}, {2000, 300, 5, 1, 6},
        {300, 1500, 1, 4, 5}, {900, 900, 3, 3, 10}, {449, 10, 2, 1, 3},
    };
    check_plans(cases, sizeof cases / sizeof cases[0], LP_PREP_LLAMACPP);
    lp_tile_plan p;
    lp_error e = {0};
    assert_int_equal(lp_tiles_plan(2000, 300, 448, 1, 12, LP_PREP_LLAMACPP, &p, &e), LOUPE_OK);
    /* letterbox of 2000×300 into 2240×448: scale 1.12 -> 2240×336, 56 px bars */
    assert_int_equal(p.canvas_w, 2240);
    assert_int_equal(p.content_w, 2240);
    assert_int_equal(p.content_h, 336);
    assert_int_equal(p.off_y, 56);
    assert_true(p.thumbnail);
}

static void test_plan_errors(void **state) {
    (void)state;
    lp_tile_plan p;
    lp_error e = {0};
    assert_int_equal(lp_tiles_plan(0, 10, 448, 1, 12, LP_PREP_PAD_PIL, &p, &e), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(e.msg, "bad size"));
    assert_int_equal(lp_tiles_plan(10, 10, 448, 3, 2, LP_PREP_PAD_PIL, &p, &e), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(e.msg, "tile limits"));
    assert_int_equal(lp_tiles_plan(10, 10, 448, 1, LP_TILES_MAX + 1, LP_PREP_LLAMACPP, &p, &e), LOUPE_ERR_INVALID_ARG);
    /* min_tiles > 1 forces a grid even for a square */
    assert_int_equal(lp_tiles_plan(448, 448, 448, 4, 12, LP_PREP_PAD_PIL, &p, &e), LOUPE_OK);
    assert_int_equal(p.grid_x * p.grid_y, 4);
}

static lp_image pattern(int w, int h) {
    lp_image img;
    lp_error e = {0};
    assert_int_equal(lp_image_alloc(&img, w, h, &e), LOUPE_OK);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) img.rgb[((size_t)y * w + x) * 3 + c] = (uint8_t)(x * 7 + y * 13 + c * 50);
    return img;
}

/* An image already (2S)×S: the reference cuts it without resampling. */
static void test_tiles_crop_exact(void **state) {
    (void)state;
    const int S = 32;
    lp_image img = pattern(2 * S, S), tiles[LP_TILES_MAX + 1];
    lp_tile_plan p;
    lp_error e = {0};
    assert_int_equal(lp_tiles_rgb(&img, S, 1, 12, LP_PREP_PAD_PIL, tiles, &p, &e), LOUPE_OK);
    assert_int_equal(p.n_tiles, 3);
    for (int t = 0; t < 2; t++)
        for (int y = 0; y < S; y++)
            assert_memory_equal(tiles[t].rgb + (size_t)y * S * 3, img.rgb + ((size_t)y * 2 * S + t * S) * 3,
                                (size_t)S * 3);
    assert_int_equal(tiles[2].w, S);
    assert_int_equal(tiles[2].h, S);
    for (int t = 0; t < p.n_tiles; t++) lp_image_free(&tiles[t]);

    /* normalized: tile-major (3, S, S) planes, (u/255 - mean) / std */
    const float mean[3] = {0.5f, 0.5f, 0.5f}, sd[3] = {0.5f, 0.25f, 1.0f};
    float *px = malloc((size_t)3 * 3 * S * S * sizeof *px);
    assert_int_equal(lp_tiles_pixels(&img, S, 1, 12, LP_PREP_PAD_PIL, mean, sd, px, &p, &e), LOUPE_OK);
    const uint8_t u = img.rgb[((size_t)5 * 2 * S + S + 3) * 3 + 1]; /* tile 1, (3, 5), green */
    assert_float_equal(px[(size_t)3 * S * S + (size_t)S * S + 5 * S + 3], ((float)u / 255.0f - 0.5f) / 0.25f, 0);
    free(px);
    lp_image_free(&img);
}

/* llama.cpp mode letterboxes the grid tiles with black. */
static void test_tiles_llamacpp_letterbox(void **state) {
    (void)state;
    const int S = 32;
    lp_image img = pattern(4 * S, S / 2), tiles[LP_TILES_MAX + 1]; /* 128×16 -> 4×1 grid, 128×16 content */
    lp_tile_plan p;
    lp_error e = {0};
    assert_int_equal(lp_tiles_rgb(&img, S, 1, 12, LP_PREP_LLAMACPP, tiles, &p, &e), LOUPE_OK);
    assert_int_equal(p.grid_x, 4);
    assert_int_equal(p.grid_y, 1);
    assert_int_equal(p.off_y, 8);
    for (int t = 0; t < 4; t++) {
        for (int x = 0; x < S * 3; x++) {
            assert_int_equal(tiles[t].rgb[x], 0);                           /* top bar    */
            assert_int_equal(tiles[t].rgb[(size_t)(S - 1) * S * 3 + x], 0); /* bottom bar */
        }
        /* the content rows are the image itself (no scaling needed) */
        assert_memory_equal(tiles[t].rgb + (size_t)8 * S * 3, img.rgb + (size_t)t * S * 3, (size_t)S * 3);
    }
    for (int t = 0; t < p.n_tiles; t++) lp_image_free(&tiles[t]);
    lp_image_free(&img);
}

static void test_bilinear(void **state) {
    (void)state;
    lp_image src, dst;
    lp_error e = {0};
    assert_int_equal(lp_image_alloc(&src, 2, 1, &e), LOUPE_OK);
    memset(src.rgb, 0, 3);
    memset(src.rgb + 3, 255, 3);
    assert_int_equal(lp_resize_llamacpp_bilinear(&src, &dst, 3, 1, &e), LOUPE_OK);
    assert_int_equal(dst.rgb[0], 0);
    assert_int_equal(dst.rgb[3], 127); /* 127.5 truncated */
    assert_int_equal(dst.rgb[6], 255); /* corners map to corners */
    lp_image_free(&dst);
    lp_image_free(&src);
    lp_image img = pattern(17, 9);
    assert_int_equal(lp_resize_llamacpp_bilinear(&img, &dst, 17, 9, &e), LOUPE_OK);
    assert_memory_equal(dst.rgb, img.rgb, (size_t)17 * 9 * 3); /* same size: identity */
    lp_image_free(&dst);
    lp_image_free(&img);
}

/* InternVL boxes are 0..1000 of the whole image, whatever the tiling: a box
 * in model coordinates maps back within a pixel, for extreme sizes too
 * (the geometry loupe reports for InternVL: an S×S squeeze). */
static void test_box_geometry(void **state) {
    (void)state;
    static const int sizes[][2] = {{1, 1}, {300, 200}, {1280, 853}, {16384, 3}, {5, 16384}, {448, 448}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        const int w = sizes[i][0], h = sizes[i][1], S = 448;
        const lp_prep_geom pg = {(double)S / w, (double)S / h, 0.0, 0.0, 0, 0, S, S};
        lp_box_geom g;
        lp_error e = {0};
        assert_int_equal(lp_box_geom_from_prep(&g, &pg, w, h, S, &e), LOUPE_OK);
        lp_box b[2];
        lp_box_issue why[4];
        const char *text = "<ref>x</ref><box>[[0, 0, 1000, 1000], [250, 500, 750, 1000]]</box>";
        assert_int_equal(lp_boxes_parse(LP_BOX_INTERNVL, text, &g, b, 2, why, 4), 2);
        assert_true(b[0].x1 <= 1.0f && b[0].y1 <= 1.0f);
        assert_true(b[0].x2 >= w - 1.0f && b[0].y2 >= h - 1.0f);
        assert_true(fabsf(b[1].x1 - 0.25f * w) <= 1.0f && fabsf(b[1].x2 - 0.75f * w) <= 1.0f);
        assert_true(fabsf(b[1].y1 - 0.5f * h) <= 1.0f && fabsf(b[1].y2 - (float)h) <= 1.0f);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_reference), cmocka_unit_test(test_plan_llamacpp),
        cmocka_unit_test(test_plan_errors),    cmocka_unit_test(test_tiles_crop_exact),
        cmocka_unit_test(test_tiles_llamacpp_letterbox), cmocka_unit_test(test_bilinear),
        cmocka_unit_test(test_box_geometry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
