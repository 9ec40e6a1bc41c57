/* language/unicode.h — the little Unicode the tokenizers need: UTF-8
 * decoding that never fails, and letter / number / whitespace classes for
 * the hand-written pre-tokenizers.
 *
 * Invalid UTF-8 is not rejected: tokenizers must accept any bytes (byte-level
 * BPE and SentencePiece byte fallback both represent arbitrary bytes), so an
 * invalid byte decodes as a one-byte unit of its own with class OTHER. */
#ifndef LP_UNICODE_H
#define LP_UNICODE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

enum {
    LP_UCLASS_OTHER = 0,
    LP_UCLASS_LETTER = 1, /* general category L* */
    LP_UCLASS_NUMBER = 2, /* general category N* */
};

/* Marks a unit that is not a valid UTF-8 sequence (one raw byte). */
#define LP_UCP_INVALID 0xFFFFFFFFu

/* Decode one unit at s[0..n) (n > 0). Returns its length in bytes (1..4) and
 * stores the code point, or LP_UCP_INVALID for a byte that does not start a
 * well-formed sequence (overlong forms, surrogates and values above
 * U+10FFFF are invalid, as in the Unicode standard's table 3-7). */
size_t lp_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Length of the well-formed sequence a lead byte announces (1..4), or 0 if
 * the byte cannot start one. */
int lp_utf8_lead_len(uint8_t b);

/* True if s[0..n) is a proper prefix of some well-formed sequence (used by
 * the streaming decoder to decide whether to wait for more bytes). */
bool lp_utf8_is_partial(const uint8_t *s, size_t n);

/* Encode cp (must be <= 0x10FFFF) into out[0..4); returns the length. */
size_t lp_utf8_encode(uint32_t cp, uint8_t out[4]);

int lp_ucp_class(uint32_t cp);           /* LP_UCLASS_*; OTHER for INVALID */
bool lp_ucp_is_space(uint32_t cp);       /* Unicode White_Space property   */

#endif
