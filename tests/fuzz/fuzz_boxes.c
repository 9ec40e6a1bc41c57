/* fuzz_boxes — libFuzzer target for the box codecs (fusion/boxes.h).
 *
 * Byte 0 picks the family, byte 1 the geometry (6 kinds), bytes 2..5 the
 * image size (1..4096 each side); the rest, NUL-terminated, is the answer.
 * Checks, beyond "no crash": the count is within bounds, every box lies
 * inside the image with x1 <= x2 and y1 <= y2 and a terminated label, every
 * issue offset lies inside the answer, and each parsed box formats back to
 * text (Kosmos-2 may refuse a zero-width box) that parses again under the
 * same invariants.
 *
 *   make fuzz && build/fuzz/fuzz_boxes -max_total_time=60 tests/fuzz/seeds/boxes
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../fusion/boxes.h"

static void check(const lp_box *b, int n, int max, const lp_box_geom *g, const lp_box_issue *iss, int max_iss,
                  size_t len) {
    if (n < 0 || n > max) __builtin_trap();
    for (int i = 0; i < n; i++) {
        if (!(b[i].x1 >= 0 && b[i].y1 >= 0 && b[i].x2 <= g->orig_w && b[i].y2 <= g->orig_h)) __builtin_trap();
        if (!(b[i].x1 <= b[i].x2 && b[i].y1 <= b[i].y2)) __builtin_trap();
        if (!memchr(b[i].label, 0, sizeof b[i].label)) __builtin_trap();
    }
    const int ni = lp_box_issue_count(iss, max_iss);
    for (int i = 0; i < ni; i++)
        if (iss[i].offset < 0 || (size_t)iss[i].offset > len) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 6 || size > 4096) return 0;
    const lp_box_family f = (lp_box_family)(data[0] % LP_BOX_FAMILY_COUNT);
    const int kind = data[1] % 6;
    const int w = 1 + ((data[2] | data[3] << 8) % 4096), h = 1 + ((data[4] | data[5] << 8) % 4096);
    lp_box_geom g;
    lp_error err;
    loupe_status st;
    switch (kind) {
    case 0: st = lp_box_geom_identity(&g, w, h, &err); break;
    case 1: st = lp_box_geom_squeeze(&g, w, h, 336, &err); break;
    case 2: st = lp_box_geom_pad_square(&g, w, h, 336, &err); break;
    case 3: st = lp_box_geom_letterbox(&g, w, h, 336, &err); break;
    case 4: st = lp_box_geom_qwen(&g, w, h, 0, 0, 0, &err); break;
    default: st = lp_box_geom_internvl(&g, w, h, 0, 0, 0, &err); break;
    }
    if (st != LOUPE_OK) return 0; /* e.g. Qwen's aspect-ratio limit */
    const size_t len = size - 6;
    char *text = malloc(len + 1);
    if (!text) return 0;
    memcpy(text, data + 6, len);
    text[len] = 0;
    const size_t slen = strlen(text);

    lp_box b[16];
    lp_box_issue iss[8];
    const int n = lp_boxes_parse(f, text, &g, b, 16, iss, 8);
    check(b, n, 16, &g, iss, 8, slen);
    for (int i = 0; i < n; i++) {
        char buf[512];
        const int k = lp_box_format(f, &b[i], &g, buf, sizeof buf);
        if (k < 0) {
            if (f != LP_BOX_KOSMOS2) __builtin_trap();
            continue;
        }
        if ((size_t)k != strlen(buf)) __builtin_trap();
        lp_box b2[2];
        lp_box_issue iss2[2];
        const int n2 = lp_boxes_parse(f, buf, &g, b2, 2, iss2, 2);
        check(b2, n2, 2, &g, iss2, 2, (size_t)k);
        if (n2 > 1) __builtin_trap(); /* one box formats to one box's text */
    }
    free(text);
    return 0;
}
