/* vision/image.c — RGB8 image lifetime, decoding (stb_image), PNG writing
 * (libpng) and normalization. Resizing is in resize.c, drawing in draw.c.
 *
 * Decoding policy
 *   - Files are read whole with fopen/fread; stb only ever sees memory.
 *   - Dimensions come from stbi_info_from_memory first and are checked
 *     against LP_IMAGE_MAX_DIM / LP_IMAGE_MAX_PIXELS, so a 20-byte PNG header
 *     claiming 100000x100000 costs nothing.
 *   - Output is always 3-channel RGB. Alpha is dropped, not composited: that
 *     is what PIL's Image.convert("RGB") does, and the models were trained
 *     on PIL-converted pixels. 16-bit PNGs are reduced by stb to their high
 *     byte. */
#include "image.h"
#include "../core/fileio.h"

#define STBI_NO_STDIO
#include <stb/stb_image.h>

#include <png.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static loupe_status check_dims(long long w, long long h, const char *name, lp_error *err) {
    if (w <= 0 || h <= 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: invalid image size %lldx%lld", name, w, h);
    if (w > LP_IMAGE_MAX_DIM || h > LP_IMAGE_MAX_DIM || w * h > LP_IMAGE_MAX_PIXELS)
        return lp_fail(err, LOUPE_ERR_LIMIT,
                       "%s: image is %lldx%lld, over the limit (%d per side, %lld pixels)",
                       name, w, h, LP_IMAGE_MAX_DIM, (long long)LP_IMAGE_MAX_PIXELS);
    return LOUPE_OK;
}

loupe_status lp_image_alloc(lp_image *img, int w, int h, lp_error *err) {
    if (!img) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_alloc: NULL image");
    img->w = img->h = 0;
    img->rgb = NULL;
    loupe_status st = check_dims(w, h, "lp_image_alloc", err);
    if (st) return st;
    img->rgb = calloc((size_t)w * (size_t)h, 3);
    if (!img->rgb) return lp_fail(err, LOUPE_ERR_NOMEM, "lp_image_alloc: out of memory for %dx%d", w, h);
    img->w = w;
    img->h = h;
    return LOUPE_OK;
}

void lp_image_free(lp_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

loupe_status lp_image_from_rgb(const uint8_t *rgb, int w, int h, size_t stride, lp_image *out, lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_from_rgb: NULL output");
    out->w = out->h = 0;
    out->rgb = NULL;
    if (!rgb) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_from_rgb: NULL pixels");
    loupe_status st = check_dims(w, h, "lp_image_from_rgb", err);
    if (st) return st;
    size_t row = (size_t)w * 3;
    if (stride < row)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_from_rgb: stride %zu < width*3 = %zu", stride, row);
    st = lp_image_alloc(out, w, h, err);
    if (st) return st;
    for (int y = 0; y < h; y++) memcpy(out->rgb + (size_t)y * row, rgb + (size_t)y * stride, row);
    return LOUPE_OK;
}

/* Map stb's short failure strings to a status and a readable reason. */
static loupe_status stb_fail(lp_error *err, const char *name, const char *what) {
    const char *why = stbi_failure_reason();
    if (!why || !*why) why = "no reason given";
    if (!strcmp(why, "outofmem"))
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory while %s (stb: %s)", name, what, why);
    if (!strcmp(why, "too large"))
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: image dimensions over the limit of %d per side (stb: %s)",
                       name, LP_IMAGE_MAX_DIM, why);
    if (!strcmp(why, "unknown image type"))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a recognized image format (stb: %s)", name, why);
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: corrupt or truncated image (stb: %s)", name, why);
}

/* ---- guards for known stb_image 2.27 defects ----
 *
 * Debian ships stb_image 2.27 (git snapshot 2022-09). Fuzzing found inputs
 * that make it misbehave; each is screened here, before any stb call, in a
 * way that never rejects a valid file.
 *
 * JPEG DHT: stb sums a Huffman table's 16 code counts without checking that
 * the total is at most 256 and writes that many entries into 257- and
 * 256-byte arrays (fixed upstream in 2.28). The walk below follows stb's own
 * marker parsing, so it sees every DHT segment stb will process:
 *   - before the frame header, stb skips junk between segments; so do we;
 *   - segments it knows are skipped by their length, as stb consumes them;
 *   - inside entropy-coded data, FF 00 and FF D0..D7 are data, and the first
 *     other FF xx is the next marker. stb may stop decoding a scan earlier
 *     and then take the byte after the next FF as a marker, but any FF
 *     before ours is followed by 00, D0..D7 or FF, all of which stb rejects.
 * Wherever stb would give up (unknown marker, missing marker, end of data)
 * the walk stops and leaves the verdict to stb. */
typedef struct jwalk {
    const uint8_t *b;
    size_t n, i;
} jwalk;

/* stbi__get_marker: FF, any number of fill FFs, then the marker byte; 0xff
 * when the next byte is not FF (stb's "no marker"); -1 at end of data. */
static int jw_marker(jwalk *w) {
    if (w->i >= w->n) return -1;
    if (w->b[w->i++] != 0xff) return 0xff;
    while (w->i < w->n && w->b[w->i] == 0xff) w->i++;
    return w->i < w->n ? w->b[w->i++] : -1;
}

static int jw_len(jwalk *w) {
    if (w->i + 2 > w->n) return -1;
    return w->b[w->i] << 8 | w->b[w->i + 1];
}

/* One marker segment. Returns 1 to go on, 0 when stb would stop here, -1 for
 * a table stb would overrun on. */
static int jw_segment(jwalk *w, int m) {
    int len = jw_len(w);
    if (len < 2) return 0;
    size_t end = w->i + (size_t)len;
    if (m == 0xc4) { /* DHT: tables of 1 + 16 + n bytes, as stb reads them */
        size_t p = w->i + 2;
        long left = len - 2;
        while (left > 0) {
            /* stb's reads past the end return 0, so missing bytes count 0 */
            int q = p < w->n ? w->b[p] : 0;
            if ((q >> 4) > 1 || (q & 15) > 3) return 0;
            int count = 0;
            for (size_t k = 1; k <= 16; k++) count += p + k < w->n ? w->b[p + k] : 0;
            if (count > 256) return -1;
            p += 17 + (size_t)count;
            left -= 17 + count;
        }
    } else if (!(m == 0xdb || m == 0xdd || (m >= 0xe0 && m <= 0xef) || m == 0xfe || m == 0xda ||
                 m == 0xc0 || m == 0xc1 || m == 0xc2)) {
        return 0; /* stb: "unknown marker" */
    }
    if (end > w->n) return 0;
    w->i = end;
    return 1;
}

/* Skip entropy-coded data; returns the marker that ends it, or -1. */
static int jw_entropy(jwalk *w) {
    while (w->i < w->n) {
        if (w->b[w->i++] != 0xff) continue;
        while (w->i < w->n && w->b[w->i] == 0xff) w->i++;
        if (w->i >= w->n) return -1;
        int c = w->b[w->i++];
        if (c != 0 && !(c >= 0xd0 && c <= 0xd7)) return c;
    }
    return -1;
}

/* 0: fine as far as stb is concerned (or not a JPEG); -1: would overrun. */
static int jpeg_screen(const uint8_t *b, size_t n) {
    jwalk w = {b, n, 0};
    if (jw_marker(&w) != 0xd8) return 0;
    int m = jw_marker(&w), r;
    /* header: segments up to the frame header, junk in between skipped */
    while (!(m == 0xc0 || m == 0xc1 || m == 0xc2)) {
        if (m < 0 || m == 0xff) return 0;
        if ((r = jw_segment(&w, m)) <= 0) return r;
        do m = jw_marker(&w); while (m == 0xff);
    }
    if ((r = jw_segment(&w, m)) <= 0) return r;
    /* frame: scans and tables, each strictly followed by a marker */
    m = jw_marker(&w);
    for (;;) {
        if (m < 0 || m == 0xff || m == 0xd9) return 0;
        if (m == 0xdc) { /* DNL: fixed 4 bytes */
            if (w.i + 4 > w.n) return 0;
            w.i += 4;
            m = jw_marker(&w);
            continue;
        }
        if ((r = jw_segment(&w, m)) <= 0) return r;
        m = m == 0xda ? jw_entropy(&w) : jw_marker(&w);
    }
}

/* PNG zero-length IDAT: when the first IDAT chunk is empty, stb computes
 * NULL + 0 (undefined behaviour, flagged by UBSan; found by our fuzzer).
 * Empty IDAT chunks carry no data, so a copy without them decodes to the
 * same pixels: *copy gets that copy (caller frees) when there is any empty
 * IDAT, else NULL. stb ignores CRCs, and every other byte is kept. Returns
 * false only when the copy cannot be allocated. */
static bool png_drop_empty_idat(const uint8_t *b, size_t n, uint8_t **copy, size_t *copy_n) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    *copy = NULL;
    if (n < 8 || memcmp(b, sig, 8) != 0) return true;
    for (int pass = 0; pass < 2; pass++) {
        size_t i = 8, o = 8, dropped = 0;
        if (pass == 1) memcpy(*copy, b, 8);
        while (i + 12 <= n) {
            size_t len = (size_t)b[i] << 24 | (size_t)b[i + 1] << 16 | (size_t)b[i + 2] << 8 | b[i + 3];
            if (len > n - i - 12) break; /* truncated: the rest is stb's to judge */
            bool empty_idat = len == 0 && memcmp(b + i + 4, "IDAT", 4) == 0;
            if (empty_idat) dropped++;
            else if (pass == 1) {
                memcpy(*copy + o, b + i, len + 12);
                o += len + 12;
            }
            i += len + 12;
        }
        if (pass == 0) {
            if (!dropped) return true;
            if (!(*copy = malloc(n))) return false;
        } else {
            memcpy(*copy + o, b + i, n - i); /* any trailing bytes, verbatim */
            *copy_n = o + (n - i);
        }
    }
    return true;
}

static loupe_status load_mem(const void *buf, size_t size, const char *name, lp_image *out, lp_error *err);

loupe_status lp_image_load_mem(const void *buf, size_t size, const char *name, lp_image *out, lp_error *err) {
    uint8_t *copy = NULL;
    size_t copy_n = 0;
    if (buf && size && !png_drop_empty_idat(buf, size, &copy, &copy_n))
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", name ? name : "<memory>");
    loupe_status st = copy ? load_mem(copy, copy_n, name, out, err) : load_mem(buf, size, name, out, err);
    free(copy);
    return st;
}

static loupe_status load_mem(const void *buf, size_t size, const char *name, lp_image *out, lp_error *err) {
    if (!name) name = "<memory>";
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: NULL output image", name);
    out->w = out->h = 0;
    out->rgb = NULL;
    if (!buf && size) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: NULL buffer", name);
    if (size == 0) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: empty file", name);
    /* stb takes an int length. */
    if (size > INT_MAX) return lp_fail(err, LOUPE_ERR_LIMIT, "%s: %zu bytes is over the 2 GiB file limit", name, size);

    if (jpeg_screen(buf, size) < 0)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: corrupt JPEG (Huffman table with more than 256 codes)", name);

    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(buf, (int)size, &w, &h, &comp)) {
        /* Past stb's 2^24 cap the reason is lost (see stb_image_impl.c); for
         * PNG, the common case, read the IHDR size to report LIMIT. */
        const uint8_t *b = buf;
        static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        if (size >= 24 && !memcmp(b, sig, 8) && !memcmp(b + 12, "IHDR", 4)) {
            long long pw = (long long)b[16] << 24 | b[17] << 16 | b[18] << 8 | b[19];
            long long ph = (long long)b[20] << 24 | b[21] << 16 | b[22] << 8 | b[23];
            if (pw > LP_IMAGE_MAX_DIM || ph > LP_IMAGE_MAX_DIM) return check_dims(pw, ph, name, err);
        }
        return stb_fail(err, name, "reading the header");
    }
    if (w <= 0 || h <= 0) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: image header declares %dx%d", name, w, h);
    loupe_status st = check_dims(w, h, name, err);
    if (st) return st;

    int lw = 0, lh = 0, lcomp = 0;
    uint8_t *px = stbi_load_from_memory(buf, (int)size, &lw, &lh, &lcomp, 3);
    if (!px) return stb_fail(err, name, "decoding");
    /* The header and the decoder agree for every format stb knows; if a
     * future one disagrees, the limit still holds on what was decoded. */
    st = check_dims(lw, lh, name, err);
    if (st) {
        stbi_image_free(px);
        return st;
    }
    out->w = lw;
    out->h = lh;
    out->rgb = px;
    return LOUPE_OK;
}

/* Files larger than this are refused before reading (stb's int length). */
#define LP_IMAGE_MAX_FILE ((long long)INT_MAX)

loupe_status lp_image_load(const char *path, lp_image *out, lp_error *err) {
    if (out) {
        out->w = out->h = 0;
        out->rgb = NULL;
    }
    if (!path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_load: NULL path");
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: NULL output image", path);
    char *buf;
    size_t size;
    loupe_status st = lp_read_file(path, LP_IMAGE_MAX_FILE, "2 GiB file", &buf, &size, err);
    if (st) return st;
    if (size == 0) {
        free(buf);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: empty file", path);
    }
    st = lp_image_load_mem(buf, size, path, out, err);
    free(buf);
    return st;
}

/* ---- PNG writing ---- */

/* libpng reports through these instead of printing. The error handler
 * must not return, so it stores the message and longjmps back. */
typedef struct pngw_ctx {
    char msg[256];
} pngw_ctx;

static void on_png_error(png_structp png, png_const_charp msg) {
    pngw_ctx *c = png_get_error_ptr(png);
    if (c) snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    LP_LOG_WARN("libpng: %s", msg ? msg : "");
}

/* Writes rows into an open FILE. Kept apart from the setjmp so that no local
 * of the caller changes between setjmp and a longjmp (C11 7.13.2.1). */
static int write_png_stream(FILE *f, const lp_image *img, pngw_ctx *ctx) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, ctx, on_png_error, on_png_warning);
    if (!png) {
        snprintf(ctx->msg, sizeof ctx->msg, "cannot create libpng writer");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(ctx->msg, sizeof ctx->msg, "cannot create libpng info");
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < img->h; y++) png_write_row(png, img->rgb + (size_t)y * img->w * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

loupe_status lp_image_write_png(const char *path, const lp_image *img, lp_error *err) {
    if (!path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_image_write_png: NULL path");
    if (!img || !img->rgb) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: no image to write", path);
    loupe_status st = check_dims(img->w, img->h, path, err);
    if (st) return st;

    /* Written next to the target and renamed, so readers never see half a PNG. */
    lp_outfile out;
    if ((st = lp_outfile_open(&out, path, err)) != LOUPE_OK) return st;
    pngw_ctx ctx = {{0}};
    if (write_png_stream(out.f, img, &ctx) != 0) {
        lp_outfile_abort(&out);
        return lp_fail(err, LOUPE_ERR_IO, "%s: PNG write failed: %s", path, ctx.msg);
    }
    return lp_outfile_commit(&out, err);
}

/* ---- normalization ---- */

void lp_image_normalize(const lp_image *img, const float mean[3], const float std[3], float *out) {
    if (!img || !img->rgb || !out || !mean || !std || img->w <= 0 || img->h <= 0) return;
    size_t n = (size_t)img->w * (size_t)img->h;
    /* A 256-entry table per channel: each value is computed once, in float,
     * exactly as the formula reads, then the pixel loop is a gather. */
    for (int c = 0; c < 3; c++) {
        float lut[256];
        for (int v = 0; v < 256; v++) lut[v] = ((float)v / 255.0f - mean[c]) / std[c];
        float *o = out + (size_t)c * n;
        const uint8_t *p = img->rgb + c;
        for (size_t i = 0; i < n; i++) o[i] = lut[p[i * 3]];
    }
}
