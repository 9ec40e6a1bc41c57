/* tests/fuzz/fuzz_image.c — libFuzzer target: decode arbitrary bytes with
 * lp_image_load_mem, then resize whatever decoded to a small size with both
 * filters and draw a label on it, so stb's decoders, the limit checks and the
 * resampler's edge handling all see hostile shapes (1xN, Nx1, huge ratios).
 *
 *   make fuzz && build/fuzz/fuzz_image -max_total_time=30 tests/fuzz/seeds/image
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../vision/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lp_image img;
    lp_error err;
    loupe_status st = lp_image_load_mem(data, size, "fuzz", &img, &err);
    if (st != LOUPE_OK) {
        /* a failure leaves the output empty and a message that names it */
        if (img.rgb || img.w || img.h || strncmp(err.msg, "fuzz", 4) != 0) __builtin_trap();
        return 0;
    }
    if (img.w <= 0 || img.h <= 0 || img.w > LP_IMAGE_MAX_DIM || img.h > LP_IMAGE_MAX_DIM) __builtin_trap();
    /* Keep each input cheap: the resampler is linear in the source size. */
    if ((long long)img.w * img.h <= 1 << 22) {
        int tw = 1 + (size ? data[size - 1] % 23 : 0), th = 1 + (size > 1 ? data[size - 2] % 17 : 0);
        for (int f = LP_RESAMPLE_BILINEAR; f <= LP_RESAMPLE_BICUBIC; f++) {
            lp_image small;
            if (lp_image_resize(&img, &small, tw, th, (lp_resample)f, &err) != LOUPE_OK) __builtin_trap();
            lp_draw_label(&small, tw / 2, th / 2, "fz", (lp_rgb){small.rgb[0], 0, 0}, 1);
            lp_image_free(&small);
        }
    }
    lp_image_free(&img);
    return 0;
}
