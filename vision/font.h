/* vision/font.h — the built-in bitmap font used by draw.c (internal).
 *
 * Cells are 8x8 pixels. Glyphs are 5x7 drawn in columns 1..5, rows 0..6 of
 * the cell, with row 7 for descenders (g j p q y , _) — leaving at least two
 * blank columns between letters and one blank row between lines. */
#ifndef LP_FONT_H
#define LP_FONT_H

#include <stdint.h>

#define LP_FONT_CELL 8

/* Bits of row `row` (0 = top) of the cell for byte c; bit (7 - col) is column
 * col, so 0x80 is the leftmost pixel. Bytes outside printable ASCII
 * (0x20..0x7e) get the '?' glyph; rows outside 0..7 are empty. */
uint8_t lp_font_row(unsigned char c, int row);

#endif
