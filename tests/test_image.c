/* tests/test_image.c — loading, PNG writing, PIL-exact resize, normalization
 * and drawing. Run from the repository root (fixtures are found by relative
 * path); the fixtures come from tools/make_image_fixtures.py. */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../vision/font.h"
#include "../vision/image.h"

#define FIX "tests/fixtures/images/"


/* A scratch directory per run, removed by the test that made it. */
static char *scratch_dir(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/loupe_test_image.XXXXXX");
    return mkdtemp(buf);
}

static void expect_rgb_file(const lp_image *img, const char *ref_path) {
    size_t n = 0;
    uint8_t *ref = (uint8_t *)tu_read_file(ref_path, &n);
    assert_non_null(ref);
    assert_int_equal(n, (size_t)img->w * img->h * 3);
    assert_memory_equal(img->rgb, ref, n);
    free(ref);
}

/* ---- loading ---- */

static void test_load_lossless_formats(void **state) {
    (void)state;
    const char *names[] = {"tiny.png", "tiny.bmp", "tiny.tga", "tiny.gif", "tiny_palette.png"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[256];
        snprintf(path, sizeof path, FIX "%s", names[i]);
        lp_image img;
        lp_error err = {0};
        loupe_status st = lp_image_load(path, &img, &err);
        if (st) fail_msg("%s: %s", path, err.msg);
        assert_int_equal(img.w, 12);
        assert_int_equal(img.h, 9);
        expect_rgb_file(&img, FIX "tiny.rgb");
        lp_image_free(&img);
    }
}

/* PNM (and PSD, PIC, HDR) are compiled out of stb_image: a valid PPM is
 * refused as a format error naming the file, not decoded. */
static void test_load_pnm_refused(void **state) {
    (void)state;
    lp_image img = {0};
    lp_error err = {0};
    assert_int_equal(lp_image_load(FIX "tiny.ppm", &img, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tiny.ppm"));
    assert_null(img.rgb);
}

/* A PNG whose first IDAT chunk is empty (legal, and it made stb 2.27 do
 * NULL + 0) decodes to the same pixels as the file without it. */
static void test_load_png_empty_idat(void **state) {
    (void)state;
    size_t n = 0;
    uint8_t *png = (uint8_t *)tu_read_file(FIX "tiny.png", &n);
    assert_non_null(png);
    size_t at = 8; /* find the first IDAT */
    while (at + 8 <= n && memcmp(png + at + 4, "IDAT", 4) != 0)
        at += 12 + ((size_t)png[at] << 24 | (size_t)png[at + 1] << 16 | (size_t)png[at + 2] << 8 | png[at + 3]);
    assert_true(at + 8 <= n);
    uint8_t *bad = malloc(n + 12);
    assert_non_null(bad);
    memcpy(bad, png, at);
    static const uint8_t empty_idat[12] = {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0x35, 0xaf, 0x06, 0x1e};
    memcpy(bad + at, empty_idat, 12);
    memcpy(bad + at + 12, png + at, n - at);
    lp_image a = {0}, b = {0};
    lp_error err = {0};
    assert_int_equal(lp_image_load_mem(png, n, "tiny.png", &a, &err), LOUPE_OK);
    assert_int_equal(lp_image_load_mem(bad, n + 12, "empty_idat.png", &b, &err), LOUPE_OK);
    assert_int_equal(a.w, b.w);
    assert_int_equal(a.h, b.h);
    assert_memory_equal(a.rgb, b.rgb, (size_t)a.w * a.h * 3);
    lp_image_free(&a);
    lp_image_free(&b);
    free(bad);
    free(png);
}

static void test_load_jpeg(void **state) {
    (void)state;
    lp_image img;
    lp_error err = {0};
    assert_int_equal(lp_image_load(FIX "tiny.jpg", &img, &err), LOUPE_OK);
    assert_int_equal(img.w, 12);
    assert_int_equal(img.h, 9);
    size_t n = 0;
    uint8_t *ref = (uint8_t *)tu_read_file(FIX "tiny_jpg_pil.rgb", &n); /* what PIL (libjpeg) decodes */
    assert_int_equal(n, (size_t)12 * 9 * 3);
    /* stb's IDCT and chroma upsampler are not libjpeg's: close, not equal. */
    long diff = 0;
    int worst = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)img.rgb[i] - (int)ref[i]);
        diff += d;
        if (d > worst) worst = d;
    }
    if (diff > 4 * (long)n || worst > 64) fail_msg("JPEG decode too far from PIL: mean %ld/%zu, worst %d", diff, n, worst);
    free(ref);
    lp_image_free(&img);
}

static void test_load_alpha_dropped(void **state) {
    (void)state;
    lp_image img;
    assert_int_equal(lp_image_load(FIX "tiny_rgba.png", &img, NULL), LOUPE_OK);
    expect_rgb_file(&img, FIX "tiny.rgb"); /* same RGB whatever the alpha, like PIL convert("RGB") */
    lp_image_free(&img);
}

static void test_load_gray(void **state) {
    (void)state;
    lp_image img;
    assert_int_equal(lp_image_load(FIX "tiny_gray.png", &img, NULL), LOUPE_OK);
    size_t n = 0;
    uint8_t *g = (uint8_t *)tu_read_file(FIX "tiny_gray.raw", &n);
    assert_int_equal(n, (size_t)img.w * img.h);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(img.rgb[i * 3 + 0], g[i]);
        assert_int_equal(img.rgb[i * 3 + 1], g[i]);
        assert_int_equal(img.rgb[i * 3 + 2], g[i]);
    }
    free(g);
    lp_image_free(&img);
}

static void expect_load_error(const char *path, loupe_status want, const char *needle) {
    lp_image img = {7, 7, (uint8_t *)&img};
    lp_error err = {0};
    loupe_status st = lp_image_load(path, &img, &err);
    if (st != want) fail_msg("%s: got %d (%s), want %d", path, st, err.msg, want);
    assert_int_equal(err.status, want);
    assert_null(img.rgb);
    assert_int_equal(img.w, 0);
    assert_int_equal(img.h, 0);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strstr(err.msg, base)) fail_msg("message does not name the file: %s", err.msg);
    if (needle && !strstr(err.msg, needle)) fail_msg("message lacks \"%s\": %s", needle, err.msg);
}

static void test_load_truncated(void **state) {
    (void)state;
    expect_load_error(FIX "truncated.png", LOUPE_ERR_FORMAT, "corrupt or truncated image (stb: ");
}

static void test_load_truncated_jpeg(void **state) {
    (void)state;
    /* stb pads a truncated JPEG scan with zeros and returns the image; if it
     * ever refuses instead, the error must still name the file. */
    lp_image img;
    lp_error err = {0};
    loupe_status st = lp_image_load(FIX "truncated.jpg", &img, &err);
    if (st == LOUPE_OK) {
        assert_int_equal(img.w, 32);
        lp_image_free(&img);
    } else {
        assert_int_equal(st, LOUPE_ERR_FORMAT);
        assert_non_null(strstr(err.msg, "truncated.jpg"));
    }
}

static void test_load_empty_file(void **state) {
    (void)state;
    char dir[64], path[128];
    assert_non_null(scratch_dir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/empty.png", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fclose(f);
    expect_load_error(path, LOUPE_ERR_FORMAT, "empty file");
    unlink(path);
    rmdir(dir);
}

static void test_load_missing(void **state) {
    (void)state;
    expect_load_error(FIX "does_not_exist.png", LOUPE_ERR_IO, "No such file");
}

static void test_load_directory(void **state) {
    (void)state;
    expect_load_error("tests/fixtures/images", LOUPE_ERR_IO, "is a directory");
}

static void test_load_not_image(void **state) {
    (void)state;
    expect_load_error(FIX "not_an_image.png", LOUPE_ERR_FORMAT, "not a recognized image format");
}

static void test_load_over_limit(void **state) {
    (void)state;
    /* 100000 per side: refused from the header, before any decode. */
    expect_load_error(FIX "huge_100000x100000.png", LOUPE_ERR_LIMIT, "100000x100000");
    /* past stb's 2^24 cap, where stbi_info gives no size: IHDR is read directly */
    expect_load_error(FIX "huge_33554432x1.png", LOUPE_ERR_LIMIT, "33554432x1");
    /* 16384x16384 passes the per-side check, fails the pixel count; the
     * header is all there is, so reaching the decoder would be a FORMAT
     * error: LIMIT proves the check came first. */
    expect_load_error(FIX "huge_16384x16384.png", LOUPE_ERR_LIMIT, "16384x16384");
}

static void test_load_stb_guards(void **state) {
    (void)state;
    /* Oversized Huffman tables: stb 2.27 would write past its arrays. */
    expect_load_error(FIX "bad_dht_header.jpg", LOUPE_ERR_FORMAT, "Huffman");
    expect_load_error(FIX "bad_dht_after_scan.jpg", LOUPE_ERR_FORMAT, "Huffman");
    /* ...and the screen passes every valid file in the fuzz seed corpus
     * (baseline, progressive and grey JPEGs among them). */
    DIR *d = opendir("tests/fuzz/seeds/image");
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof path, "tests/fuzz/seeds/image/%s", e->d_name);
        lp_image img;
        lp_error err = {0};
        if (lp_image_load(path, &img, &err) != LOUPE_OK) fail_msg("%s", err.msg);
        assert_int_equal(img.w, 4);
        assert_int_equal(img.h, 3);
        lp_image_free(&img);
        n++;
    }
    closedir(d);
    assert_true(n >= 5);
}

static void test_load_mem_args(void **state) {
    (void)state;
    lp_image img;
    lp_error err = {0};
    assert_int_equal(lp_image_load_mem(NULL, 10, "x", &img, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_load_mem("", 0, "blob", &img, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "blob: empty"));
    assert_int_equal(lp_image_load_mem("abc", 3, NULL, &img, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "<memory>"));
    assert_int_equal(lp_image_load_mem("abc", 3, "x", NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_load(NULL, &img, &err), LOUPE_ERR_INVALID_ARG);

    size_t n = 0;
    uint8_t *png = (uint8_t *)tu_read_file(FIX "tiny.png", &n);
    assert_int_equal(lp_image_load_mem(png, n, "mem.png", &img, NULL), LOUPE_OK);
    expect_rgb_file(&img, FIX "tiny.rgb");
    lp_image_free(&img);
    lp_image_free(&img); /* idempotent */
    /* Every prefix of a valid PNG fails cleanly, up to the IEND chunk's
     * type (stb does not read IEND's CRC, nor does it need to). */
    for (size_t k = 1; k + 4 < n; k++) {
        loupe_status st = lp_image_load_mem(png, k, "prefix.png", &img, &err);
        assert_int_not_equal(st, LOUPE_OK);
        assert_null(img.rgb);
    }
    free(png);
}

/* ---- construction and PNG writing ---- */

static void test_alloc_and_from_rgb(void **state) {
    (void)state;
    lp_image img;
    lp_error err = {0};
    assert_int_equal(lp_image_alloc(&img, 0, 5, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_alloc(&img, LP_IMAGE_MAX_DIM + 1, 1, &err), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_image_alloc(&img, 16384, 16384, &err), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_image_alloc(&img, 3, 2, &err), LOUPE_OK);
    for (int i = 0; i < 18; i++) assert_int_equal(img.rgb[i], 0);
    lp_image_free(&img);

    uint8_t buf[2 * 8] = {1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99};
    assert_int_equal(lp_image_from_rgb(buf, 2, 2, 8, &img, &err), LOUPE_OK);
    uint8_t want[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    assert_memory_equal(img.rgb, want, 12);
    lp_image_free(&img);
    assert_int_equal(lp_image_from_rgb(buf, 2, 2, 5, &img, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_from_rgb(NULL, 2, 2, 6, &img, &err), LOUPE_ERR_INVALID_ARG);
}

static void test_png_roundtrip(void **state) {
    (void)state;
    char dir[64], path[128];
    assert_non_null(scratch_dir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/out.png", dir);
    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 31, 17, NULL), LOUPE_OK);
    uint32_t x = 12345;
    for (int i = 0; i < 31 * 17 * 3; i++) {
        x = x * 1664525u + 1013904223u;
        img.rgb[i] = (uint8_t)(x >> 24);
    }
    lp_error err = {0};
    assert_int_equal(lp_image_write_png(path, &img, &err), LOUPE_OK);
    /* overwrite in place works too (rename over an existing file) */
    assert_int_equal(lp_image_write_png(path, &img, &err), LOUPE_OK);
    lp_image back;
    assert_int_equal(lp_image_load(path, &back, &err), LOUPE_OK);
    assert_int_equal(back.w, 31);
    assert_int_equal(back.h, 17);
    assert_memory_equal(back.rgb, img.rgb, 31 * 17 * 3);
    lp_image_free(&back);

    /* no temporary files left behind */
    DIR *d = opendir(dir);
    assert_non_null(d);
    int entries = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            entries++;
            assert_string_equal(e->d_name, "out.png");
        }
    closedir(d);
    assert_int_equal(entries, 1);

    assert_int_equal(lp_image_write_png("/nonexistent_dir_loupe/x.png", &img, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent_dir_loupe/x.png"));
    lp_image empty = {0};
    assert_int_equal(lp_image_write_png(path, &empty, &err), LOUPE_ERR_INVALID_ARG);
    lp_image_free(&img);
    unlink(path);
    rmdir(dir);
}

/* ---- resize ---- */

static void test_resize_matches_pil(void **state) {
    (void)state;
    FILE *f = fopen(FIX "resize_cases.txt", "r");
    assert_non_null(f);
    char line[512];
    int cases = 0, filters_seen = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char src_name[128], filt[32], exp_name[160];
        int w, h;
        assert_int_equal(sscanf(line, "%127s %d %d %31s %159s", src_name, &w, &h, filt, exp_name), 5);
        lp_resample r = !strcmp(filt, "bicubic") ? LP_RESAMPLE_BICUBIC : LP_RESAMPLE_BILINEAR;
        filters_seen |= r == LP_RESAMPLE_BICUBIC ? 2 : 1;
        char path[300];
        lp_image src, want, got;
        snprintf(path, sizeof path, FIX "%s", src_name);
        assert_int_equal(lp_image_load(path, &src, NULL), LOUPE_OK);
        snprintf(path, sizeof path, FIX "%s", exp_name);
        assert_int_equal(lp_image_load(path, &want, NULL), LOUPE_OK);
        assert_int_equal(want.w, w);
        assert_int_equal(want.h, h);
        lp_error err = {0};
        assert_int_equal(lp_image_resize(&src, &got, w, h, r, &err), LOUPE_OK);
        assert_int_equal(got.w, w);
        assert_int_equal(got.h, h);
        size_t n = (size_t)w * h * 3, bad = 0, first = 0;
        for (size_t i = n; i-- > 0;)
            if (got.rgb[i] != want.rgb[i]) bad++, first = i;
        if (bad)
            fail_msg("%s -> %dx%d %s: %zu of %zu bytes differ from PIL, first at pixel (%zu,%zu) ch %zu: %d vs %d",
                     src_name, w, h, filt, bad, n, first / 3 % w, first / 3 / w, first % 3, got.rgb[first],
                     want.rgb[first]);
        lp_image_free(&src);
        lp_image_free(&want);
        lp_image_free(&got);
        cases++;
    }
    fclose(f);
    assert_true(cases >= 18);
    assert_int_equal(filters_seen, 3);
}

static void test_resize_args(void **state) {
    (void)state;
    lp_image src, dst;
    lp_error err = {0};
    assert_int_equal(lp_image_alloc(&src, 4, 3, NULL), LOUPE_OK);
    for (int i = 0; i < 36; i++) src.rgb[i] = (uint8_t)(i * 7);
    /* same size: a copy */
    assert_int_equal(lp_image_resize(&src, &dst, 4, 3, LP_RESAMPLE_BICUBIC, &err), LOUPE_OK);
    assert_memory_equal(dst.rgb, src.rgb, 36);
    assert_ptr_not_equal(dst.rgb, src.rgb);
    lp_image_free(&dst);
    assert_int_equal(lp_image_resize(&src, &dst, 0, 3, LP_RESAMPLE_BILINEAR, &err), LOUPE_ERR_INVALID_ARG);
    assert_null(dst.rgb);
    assert_int_equal(lp_image_resize(&src, &dst, 4, -1, LP_RESAMPLE_BILINEAR, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_resize(&src, &dst, 4, 3, (lp_resample)7, &err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_image_resize(&src, &dst, INT_MAX, 3, LP_RESAMPLE_BILINEAR, &err), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_image_resize(&src, &dst, 16384, 16384, LP_RESAMPLE_BILINEAR, &err), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_image_resize(NULL, &dst, 4, 3, LP_RESAMPLE_BILINEAR, &err), LOUPE_ERR_INVALID_ARG);
    /* constant images stay constant under both filters, any size */
    memset(src.rgb, 200, 36);
    for (lp_resample r = LP_RESAMPLE_BILINEAR; r <= LP_RESAMPLE_BICUBIC; r++) {
        assert_int_equal(lp_image_resize(&src, &dst, 13, 1, r, &err), LOUPE_OK);
        for (int i = 0; i < 13 * 3; i++) assert_int_equal(dst.rgb[i], 200);
        lp_image_free(&dst);
    }
    lp_image_free(&src);
}

/* ---- normalize ---- */

static void test_normalize(void **state) {
    (void)state;
    uint8_t px[6] = {0, 128, 255, 255, 0, 51};
    lp_image img;
    assert_int_equal(lp_image_from_rgb(px, 2, 1, 6, &img, NULL), LOUPE_OK);
    const float mean[3] = {0.5f, 0.25f, 0.0f}, std[3] = {0.5f, 2.0f, 1.0f};
    float out[6];
    lp_image_normalize(&img, mean, std, out);
    /* planar: R of both pixels, then G, then B */
    const float want[6] = {(0.0f - 0.5f) / 0.5f,  (1.0f - 0.5f) / 0.5f,  (128 / 255.0f - 0.25f) / 2.0f,
                           (0.0f - 0.25f) / 2.0f, 1.0f,                  0.2f};
    for (int i = 0; i < 6; i++) assert_float_equal(out[i], want[i], 1e-6);
    lp_image_free(&img);
}

/* ---- drawing ---- */

static lp_rgb px_at(const lp_image *img, int x, int y) {
    const uint8_t *p = img->rgb + ((size_t)y * img->w + x) * 3;
    return (lp_rgb){p[0], p[1], p[2]};
}

static int is_rgb(lp_rgb a, lp_rgb b) {
    return a.r == b.r && a.g == b.g && a.b == b.b;
}

static const lp_rgb RED = {255, 0, 0}, BLACK = {0, 0, 0}, WHITE = {255, 255, 255};

static void test_draw_rect(void **state) {
    (void)state;
    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 20, 20, NULL), LOUPE_OK);
    lp_draw_rect(&img, 14, 14, 5, 5, RED, 2); /* corners in either order */
    for (int y = 0; y < 20; y++)
        for (int x = 0; x < 20; x++) {
            int in_box = x >= 5 && x <= 14 && y >= 5 && y <= 14;
            int in_hole = x >= 7 && x <= 12 && y >= 7 && y <= 12;
            int want_red = in_box && !in_hole;
            if (is_rgb(px_at(&img, x, y), RED) != want_red) fail_msg("pixel (%d,%d) wrong", x, y);
        }
    /* thickness larger than half the box: solid */
    memset(img.rgb, 0, 20 * 20 * 3);
    lp_draw_rect(&img, 2, 2, 5, 5, RED, 3);
    assert_true(is_rgb(px_at(&img, 3, 3), RED));
    assert_true(is_rgb(px_at(&img, 6, 6), BLACK));
    /* thickness < 1 means 1 */
    memset(img.rgb, 0, 20 * 20 * 3);
    lp_draw_rect(&img, 2, 2, 9, 9, RED, 0);
    assert_true(is_rgb(px_at(&img, 2, 5), RED));
    assert_true(is_rgb(px_at(&img, 3, 5), BLACK));
    /* fill */
    memset(img.rgb, 0, 20 * 20 * 3);
    lp_draw_fill(&img, 3, 4, 5, 6, RED);
    int reds = 0;
    for (int y = 0; y < 20; y++)
        for (int x = 0; x < 20; x++) reds += is_rgb(px_at(&img, x, y), RED);
    assert_int_equal(reds, 9);
    assert_true(is_rgb(px_at(&img, 5, 6), RED));
    lp_image_free(&img);
}

/* An image with guard bytes either side of its pixels. */
typedef struct guarded {
    uint8_t *block;
    lp_image img;
} guarded;
#define GUARD 64

static guarded guarded_new(int w, int h) {
    guarded g;
    size_t n = (size_t)w * h * 3;
    g.block = malloc(n + 2 * GUARD);
    memset(g.block, 0xA5, n + 2 * GUARD);
    memset(g.block + GUARD, 0, n);
    g.img = (lp_image){w, h, g.block + GUARD};
    return g;
}

static void guarded_check_free(guarded *g) {
    size_t n = (size_t)g->img.w * g->img.h * 3;
    for (size_t i = 0; i < GUARD; i++) {
        assert_int_equal(g->block[i], 0xA5);
        assert_int_equal(g->block[GUARD + n + i], 0xA5);
    }
    free(g->block);
}

static void test_draw_clipping_wild(void **state) {
    (void)state;
    guarded g = guarded_new(16, 9);
    lp_image *img = &g.img;
    const int v[] = {INT_MIN, INT_MIN + 1, -100000, -9, -1, 0, 1, 8, 9, 15, 16, 17, 100000, INT_MAX - 1, INT_MAX};
    const int nv = sizeof v / sizeof *v;
    for (int a = 0; a < nv; a++)
        for (int b = 0; b < nv; b++) {
            lp_draw_rect(img, v[a], v[b], v[(a + 3) % nv], v[(b + 5) % nv], RED, v[(a + b) % nv]);
            lp_draw_fill(img, v[b], v[a], v[(b + 7) % nv], v[(a + 2) % nv], WHITE);
            lp_draw_text(img, v[a], v[b], "Ag?", RED, v[(a * 3 + b) % nv]);
            lp_draw_label(img, v[a], v[b], "label", RED, v[(b * 5 + a) % nv] % 5);
        }
    lp_draw_label(img, INT_MAX, INT_MAX, "x", WHITE, INT_MAX);
    lp_draw_text(img, INT_MIN, INT_MIN, "hello", WHITE, INT_MAX);
    lp_draw_rect(img, INT_MIN, INT_MIN, INT_MAX, INT_MAX, RED, INT_MAX);
    /* a fill over everything covers exactly the image */
    lp_draw_fill(img, INT_MIN, INT_MIN, INT_MAX, INT_MAX, WHITE);
    for (int i = 0; i < 16 * 9 * 3; i++) assert_int_equal(img->rgb[i], 255);
    /* NULL and empty images are ignored */
    lp_draw_rect(NULL, 0, 0, 1, 1, RED, 1);
    lp_image empty = {0};
    lp_draw_fill(&empty, 0, 0, 1, 1, RED);
    assert_int_equal(lp_draw_text(NULL, 0, 0, "ab", RED, 1), 16);
    lp_draw_label(&empty, 0, 0, "ab", RED, 1);
    guarded_check_free(&g);
}

static void test_text_extent(void **state) {
    (void)state;
    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 64, 32, NULL), LOUPE_OK);
    const int x0 = 2, y0 = 3, s = 2;
    int w = lp_draw_text(&img, x0, y0, "Hi!", WHITE, s);
    assert_int_equal(w, lp_text_width("Hi!", s));
    assert_int_equal(w, 3 * 8 * s);
    int h = lp_text_height(s);
    assert_int_equal(h, 16);
    int lit = 0;
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 64; x++)
            if (is_rgb(px_at(&img, x, y), WHITE)) {
                lit++;
                if (x < x0 || x >= x0 + w || y < y0 || y >= y0 + h) fail_msg("ink outside extent at (%d,%d)", x, y);
            }
    assert_true(lit > 20);
    /* scaled pixels come in s x s blocks: ink count divisible by s*s */
    assert_int_equal(lit % (s * s), 0);
    lp_image_free(&img);

    /* widths: UTF-8 sequence = one glyph; scale < 1 = 1; NULL = 0 */
    assert_int_equal(lp_text_width("\xc3\xa9t\xc3\xa9", 1), 24);
    assert_int_equal(lp_text_width("ab", 0), 16);
    assert_int_equal(lp_text_width(NULL, 3), 0);
    assert_int_equal(lp_text_width("ab", INT_MAX), INT_MAX); /* saturates */
    assert_int_equal(lp_text_height(INT_MAX), INT_MAX);

    /* non-printable bytes draw as '?' */
    lp_image a, b;
    assert_int_equal(lp_image_alloc(&a, 24, 8, NULL), LOUPE_OK);
    assert_int_equal(lp_image_alloc(&b, 24, 8, NULL), LOUPE_OK);
    lp_draw_text(&a, 0, 0, "\x01\x7f\xc3\xa9", WHITE, 1);
    lp_draw_text(&b, 0, 0, "???", WHITE, 1);
    assert_memory_equal(a.rgb, b.rgb, 24 * 8 * 3);
    lp_image_free(&a);
    lp_image_free(&b);
}

static void test_font_table(void **state) {
    (void)state;
    for (int c = 0x20; c <= 0x7e; c++) {
        int ink = 0;
        for (int r = 0; r < 8; r++) {
            uint8_t bits = lp_font_row((unsigned char)c, r);
            if (bits & 0x83) fail_msg("glyph 0x%02x row %d leaves its 5 columns", c, r);
            ink += __builtin_popcount(bits);
        }
        if (c == ' ') assert_int_equal(ink, 0);
        else if (ink == 0) fail_msg("glyph 0x%02x is blank", c);
    }
    /* distinct glyphs for the characters labels use most */
    const char *s = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (const char *p = s; *p; p++)
        for (const char *q = p + 1; *q; q++) {
            int same = 1;
            for (int r = 0; r < 8; r++) same &= lp_font_row((unsigned char)*p, r) == lp_font_row((unsigned char)*q, r);
            if (same) fail_msg("'%c' and '%c' look identical", *p, *q);
        }
    assert_int_equal(lp_font_row('A', -1), 0);
    assert_int_equal(lp_font_row('A', 8), 0);
}

static void test_label(void **state) {
    (void)state;
    assert_true(is_rgb(lp_label_text_color((lp_rgb){255, 255, 0}), BLACK));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){255, 255, 255}), BLACK));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){0, 160, 0}), BLACK)); /* green: 6.0:1 vs 3.5:1 */
    assert_true(is_rgb(lp_label_text_color((lp_rgb){255, 0, 0}), BLACK)); /* red: 5.3:1 vs 4.0:1 */
    assert_true(is_rgb(lp_label_text_color((lp_rgb){128, 128, 128}), BLACK));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){110, 110, 110}), WHITE));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){0, 0, 160}), WHITE));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){128, 0, 128}), WHITE));
    assert_true(is_rgb(lp_label_text_color((lp_rgb){0, 0, 0}), WHITE));

    lp_image img;
    assert_int_equal(lp_image_alloc(&img, 100, 40, NULL), LOUPE_OK);
    const lp_rgb yellow = {255, 255, 0}, navy = {0, 0, 128};
    /* bottom-left at (10, 30): box = text (16x8) + 1px padding = 18x10 */
    lp_draw_label(&img, 10, 30, "ok", yellow, 1);
    int box = 0, ink = 0;
    for (int y = 0; y < 40; y++)
        for (int x = 0; x < 100; x++) {
            lp_rgb p = px_at(&img, x, y);
            int inside = x >= 10 && x < 28 && y >= 21 && y <= 30;
            if (!inside) {
                if (!is_rgb(p, BLACK)) fail_msg("label paint outside its box at (%d,%d)", x, y);
                continue;
            }
            if (is_rgb(p, yellow)) box++;
            else if (is_rgb(p, BLACK)) ink++; /* black text on yellow */
            else fail_msg("unexpected colour in label at (%d,%d)", x, y);
        }
    assert_true(ink > 0);
    assert_int_equal(box + ink, 18 * 10);

    /* off the top-left: moved inside to (0,0); white text on navy */
    memset(img.rgb, 0, 100 * 40 * 3);
    lp_draw_label(&img, -50, -50, "ok", navy, 1);
    assert_true(is_rgb(px_at(&img, 0, 0), navy));
    assert_true(is_rgb(px_at(&img, 17, 9), navy));
    assert_true(is_rgb(px_at(&img, 18, 0), BLACK));
    assert_true(is_rgb(px_at(&img, 0, 10), BLACK));
    int white = 0;
    for (int i = 0; i < 100 * 40; i++) white += is_rgb(px_at(&img, i % 100, i / 100), WHITE);
    assert_true(white > 0);

    /* off the bottom-right: flush with the corner */
    memset(img.rgb, 0, 100 * 40 * 3);
    lp_draw_label(&img, INT_MAX, INT_MAX, "ok", navy, 1);
    assert_true(is_rgb(px_at(&img, 99, 39), navy));
    assert_true(is_rgb(px_at(&img, 82, 30), navy));
    assert_true(is_rgb(px_at(&img, 81, 39), BLACK));
    assert_true(is_rgb(px_at(&img, 99, 29), BLACK));
    lp_image_free(&img);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_lossless_formats),
        cmocka_unit_test(test_load_pnm_refused),
        cmocka_unit_test(test_load_png_empty_idat),
        cmocka_unit_test(test_load_jpeg),
        cmocka_unit_test(test_load_alpha_dropped),
        cmocka_unit_test(test_load_gray),
        cmocka_unit_test(test_load_truncated),
        cmocka_unit_test(test_load_truncated_jpeg),
        cmocka_unit_test(test_load_empty_file),
        cmocka_unit_test(test_load_missing),
        cmocka_unit_test(test_load_directory),
        cmocka_unit_test(test_load_not_image),
        cmocka_unit_test(test_load_over_limit),
        cmocka_unit_test(test_load_stb_guards),
        cmocka_unit_test(test_load_mem_args),
        cmocka_unit_test(test_alloc_and_from_rgb),
        cmocka_unit_test(test_png_roundtrip),
        cmocka_unit_test(test_resize_matches_pil),
        cmocka_unit_test(test_resize_args),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_draw_rect),
        cmocka_unit_test(test_draw_clipping_wild),
        cmocka_unit_test(test_text_extent),
        cmocka_unit_test(test_font_table),
        cmocka_unit_test(test_label),
    };
    return cmocka_run_group_tests_name("image", tests, NULL, NULL);
}
