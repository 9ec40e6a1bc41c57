/* language/unicode.c — UTF-8 decoding and character classes. */
#include "unicode.h"
#include "unicode_tables.h"

int lp_utf8_lead_len(uint8_t b) {
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) return 3;
    if (b >= 0xF0 && b <= 0xF4) return 4;
    return 0; /* continuation byte, C0/C1 (always overlong), F5..FF */
}

/* Allowed range of the second byte of a sequence, which is where overlong
 * forms, surrogates and out-of-range values are excluded; later continuation
 * bytes are always 80..BF. */
static void second_range(uint8_t lead, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (lead == 0xE0) *lo = 0xA0;      /* below U+0800 would be overlong */
    else if (lead == 0xED) *hi = 0x9F; /* U+D800..DFFF are surrogates    */
    else if (lead == 0xF0) *lo = 0x90; /* below U+10000 would be overlong */
    else if (lead == 0xF4) *hi = 0x8F; /* above U+10FFFF                 */
}

/* Number of bytes of s[0..n) that continue a valid sequence starting at s[0]
 * (1 = just the lead), capped at the sequence length. */
static size_t valid_prefix(const uint8_t *s, size_t n, int len) {
    size_t k = 1;
    uint8_t lo, hi;
    second_range(s[0], &lo, &hi);
    while (k < (size_t)len && k < n) {
        if (k == 1 ? (s[1] < lo || s[1] > hi) : (s[k] < 0x80 || s[k] > 0xBF)) break;
        k++;
    }
    return k;
}

size_t lp_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    int len = lp_utf8_lead_len(s[0]);
    if (len == 1) {
        *cp = s[0];
        return 1;
    }
    if (len == 0 || valid_prefix(s, n, len) != (size_t)len) {
        *cp = LP_UCP_INVALID;
        return 1;
    }
    uint32_t v = s[0] & (0x7F >> len);
    for (int k = 1; k < len; k++) v = (v << 6) | (s[k] & 0x3F);
    *cp = v;
    return (size_t)len;
}

bool lp_utf8_is_partial(const uint8_t *s, size_t n) {
    if (n == 0) return false;
    int len = lp_utf8_lead_len(s[0]);
    if (len <= 1 || n >= (size_t)len) return false;
    return valid_prefix(s, n, len) == n;
}

size_t lp_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

int lp_ucp_class(uint32_t cp) {
    if (cp < 0x80) { /* fast path for ASCII */
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return LP_UCLASS_LETTER;
        if (cp >= '0' && cp <= '9') return LP_UCLASS_NUMBER;
        return LP_UCLASS_OTHER;
    }
    if (cp == LP_UCP_INVALID) return LP_UCLASS_OTHER;
    size_t lo = 0, hi = sizeof lp_uranges / sizeof lp_uranges[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < lp_uranges[mid].lo) hi = mid;
        else if (cp > lp_uranges[mid].hi) lo = mid + 1;
        else return lp_uranges[mid].cls;
    }
    return LP_UCLASS_OTHER;
}

/* The White_Space property (PropList.txt), which is what llama.cpp's
 * pre-tokenizers use for \s. It has been unchanged since Unicode 6.3. */
bool lp_ucp_is_space(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
    case 0x202F: case 0x205F: case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}
