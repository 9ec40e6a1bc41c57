/* vision/image.h — RGB8 images: load (stb_image), write PNG (libpng),
 * PIL-exact resize, normalization, and drawing boxes and labels.
 *
 * Pixels are interleaved RGB, row-major, stride w*3, top-left origin. */
#ifndef LP_IMAGE_H
#define LP_IMAGE_H

#include "../core/error.h"
#include <stddef.h>
#include <stdint.h>

/* Inputs larger than these are refused with LOUPE_ERR_LIMIT before decoding. */
#define LP_IMAGE_MAX_DIM 16384
#define LP_IMAGE_MAX_PIXELS (64ll * 1024 * 1024)

typedef struct lp_image {
    int w, h;
    uint8_t *rgb; /* (h, w, 3) */
} lp_image;

/* Allocate a w×h image filled with zeros. */
loupe_status lp_image_alloc(lp_image *img, int w, int h, lp_error *err);
void lp_image_free(lp_image *img);

/* Decode JPEG/PNG/BMP/GIF(first frame)/TGA (PNM, PSD, PIC and HDR are
 * compiled out of stb_image and refused as unknown formats)
 * into RGB8. Errors name the file and stb's reason ("truncated", ...). */
loupe_status lp_image_load(const char *path, lp_image *out, lp_error *err);
loupe_status lp_image_load_mem(const void *buf, size_t size, const char *name, lp_image *out, lp_error *err);
/* Copy from a caller buffer: RGB8 rows of `stride` bytes (>= w*3). */
loupe_status lp_image_from_rgb(const uint8_t *rgb, int w, int h, size_t stride, lp_image *out, lp_error *err);

loupe_status lp_image_write_png(const char *path, const lp_image *img, lp_error *err);

typedef enum lp_resample {
    LP_RESAMPLE_BILINEAR = 2, /* PIL.Image.BILINEAR */
    LP_RESAMPLE_BICUBIC = 3   /* PIL.Image.BICUBIC */
} lp_resample;

/* Resize src to (w, h) into *dst (allocated here), bit-exact with
 * PIL.Image.resize((w, h), resample) on an RGB image (PIL's separable
 * convolution with antialiasing support scaled by the reduction factor and
 * 22-bit fixed-point coefficients). */
loupe_status lp_image_resize(const lp_image *src, lp_image *dst, int w, int h, lp_resample filter, lp_error *err);

/* out (3, h, w) planar = (px/255 - mean[c]) / std[c]. */
void lp_image_normalize(const lp_image *img, const float mean[3], const float std[3], float *out);

/* Drawing, clipped to the image. Coordinates are pixels, inclusive corners. */
typedef struct lp_rgb { uint8_t r, g, b; } lp_rgb;
void lp_draw_rect(lp_image *img, int x0, int y0, int x1, int y1, lp_rgb color, int thickness);
void lp_draw_fill(lp_image *img, int x0, int y0, int x1, int y1, lp_rgb color);
/* Text with the built-in 8×8 bitmap font (printable ASCII; others drawn as
 * '?'), each font pixel scaled to scale×scale. Returns the drawn width. */
int lp_draw_text(lp_image *img, int x, int y, const char *text, lp_rgb color, int scale);
/* A label: text on a filled box, text colour chosen (black or white) for
 * contrast with bg. Placed with its bottom-left at (x, y), moved inside. */
void lp_draw_label(lp_image *img, int x, int y, const char *text, lp_rgb bg, int scale);
/* The label text colour for a background: black or white, whichever has
 * the higher WCAG contrast ratio against bg. */
lp_rgb lp_label_text_color(lp_rgb bg);
/* Width/height in pixels that lp_draw_text would use. */
int lp_text_width(const char *text, int scale);
int lp_text_height(int scale);

#endif
