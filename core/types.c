/* core/types.c — the ggml type table, f16/bf16 conversion, and the
 * (de)quantizers loupe computes with.
 *
 * Every routine here must give the same bits as ggml's scalar reference code
 * (ggml-quants.c: dequantize_row_*, quantize_row_*_ref), because a model
 * quantized by llama.cpp and dequantized by loupe has to mean the same
 * numbers. That pins down more than the formulas:
 *   - float expressions are evaluated in the same order, one IEEE single op
 *     at a time (x*d + m is two roundings, never an FMA);
 *   - float -> small int conversions use the same rounding trick or the same
 *     truncating cast;
 *   - f16/bf16 rounding is round-to-nearest-even with ggml's NaN encoding.
 * tests/test_types.c checks all of it against data produced by ggml itself
 * (tests/fixtures/quant_ggml.gguf). */
#include "types.h"

#include <assert.h>
#include <ctype.h>
#include <math.h>
#include <string.h>

/* Fused multiply-add would change results in the last bit (q4_K's fit
 * picks other levels in ~7% of blocks). GCC fuses across statements in GNU
 * mode (-std=gnu11 with -march=native), clang within an expression; both are
 * turned off here (only an explicit -ffp-contract=fast on clang still wins). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- block layouts (little-endian, packed, no padding) ----
 * d, m, dmin are f16 stored as raw uint16_t bits. */

/* q4_0: 32 weights = d * (q - 8); q is 4 bits, qs[j] holds weight j (low
 * nibble) and weight j+16 (high nibble). */
typedef struct { uint16_t d; uint8_t qs[16]; } blk_q4_0;
/* q4_1: 32 weights = d * q + m; nibbles packed as in q4_0. */
typedef struct { uint16_t d, m; uint8_t qs[16]; } blk_q4_1;
/* q5_0: 32 weights = d * (q - 16); low 4 bits packed as in q4_0, bit 4 of
 * weight j is bit j of the little-endian u32 qh. */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
/* q8_0: 32 weights = d * q, q signed 8 bits. */
typedef struct { uint16_t d; int8_t qs[32]; } blk_q8_0;
/* q4_K: 256 weights in 8 groups of 32; group g = d*sc[g]*q - dmin*mn[g].
 * sc/mn are 6-bit, packed in 12 bytes (see k4_scale_min). qs: for each
 * 64-weight half-pair, 32 bytes with group 2k in the low nibbles and group
 * 2k+1 in the high nibbles. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_K;
/* q5_K: as q4_K plus a 5th bit: bit (2k) of qh[l] is bit 4 of weight l of
 * group 2k, bit (2k+1) that of group 2k+1. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_K;
/* q6_K: 256 weights in 16 groups of 16; w = d * scales[g] * (q - 32), q is
 * 6 bits: 4 low bits in ql, 2 high bits in qh (layout in dequant_q6_K). */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } blk_q6_K;

static_assert(sizeof(blk_q4_0) == 18, "q4_0 block");
static_assert(sizeof(blk_q4_1) == 20, "q4_1 block");
static_assert(sizeof(blk_q5_0) == 22, "q5_0 block");
static_assert(sizeof(blk_q8_0) == 34, "q8_0 block");
static_assert(sizeof(blk_q4_K) == 144, "q4_K block");
static_assert(sizeof(blk_q5_K) == 176, "q5_K block");
static_assert(sizeof(blk_q6_K) == 210, "q6_K block");
static_assert(sizeof(float) == 4 && sizeof(uint32_t) == 4, "IEEE single expected");

/* ---- the type table ----
 * Byte counts of the types loupe does not compute on, from ggml-common.h:
 *   q5_1  d,m + qh[4] + qs[16]                      = 24
 *   q8_1  d,s + qs[32]                              = 36
 *   q2_K  scales[16] + qs[64] + d,dmin              = 84
 *   q3_K  hmask[32] + qs[64] + scales[12] + d       = 110
 *   q8_K  f32 d + qs[256] + i16 bsums[16]           = 292
 *   iq2_xxs d + u16 qs[32]                          = 66
 *   iq2_xs  d + u16 qs[32] + scales[8]              = 74
 *   iq3_xxs d + qs[96]                              = 98
 *   iq1_s   d + qs[32] + u16 qh[8]                  = 50
 *   iq4_nl  d + qs[16] (32 weights)                 = 18
 *   iq3_s   d + qs[64] + qh[8] + signs[32] + sc[4]  = 110
 *   iq2_s   d + qs[64] + qh[8] + scales[8]          = 82
 *   iq4_xs  d + u16 scales_h + scales_l[4] + qs[128]= 136
 *   iq1_m   qs[32] + qh[16] + scales[8]             = 56
 *   tq1_0   qs[48] + qh[4] + d                      = 54
 *   tq2_0   qs[64] + d                              = 66
 *   mxfp4   u8 e8m0 scale + qs[16] (32 weights)     = 17 */
typedef struct type_info {
    const char *name;
    int64_t block;  /* elements per block */
    size_t bytes;   /* bytes per block    */
} type_info;

static const type_info TYPES[LP_TYPE_COUNT] = {
    [LP_TYPE_F32] = {"f32", 1, 4},
    [LP_TYPE_F16] = {"f16", 1, 2},
    [LP_TYPE_Q4_0] = {"q4_0", 32, 18},
    [LP_TYPE_Q4_1] = {"q4_1", 32, 20},
    [LP_TYPE_Q5_0] = {"q5_0", 32, 22},
    [LP_TYPE_Q5_1] = {"q5_1", 32, 24},
    [LP_TYPE_Q8_0] = {"q8_0", 32, 34},
    [LP_TYPE_Q8_1] = {"q8_1", 32, 36},
    [LP_TYPE_Q2_K] = {"q2_K", LP_QK_K, 84},
    [LP_TYPE_Q3_K] = {"q3_K", LP_QK_K, 110},
    [LP_TYPE_Q4_K] = {"q4_K", LP_QK_K, 144},
    [LP_TYPE_Q5_K] = {"q5_K", LP_QK_K, 176},
    [LP_TYPE_Q6_K] = {"q6_K", LP_QK_K, 210},
    [LP_TYPE_Q8_K] = {"q8_K", LP_QK_K, 292},
    [LP_TYPE_IQ2_XXS] = {"iq2_xxs", LP_QK_K, 66},
    [LP_TYPE_IQ2_XS] = {"iq2_xs", LP_QK_K, 74},
    [LP_TYPE_IQ3_XXS] = {"iq3_xxs", LP_QK_K, 98},
    [LP_TYPE_IQ1_S] = {"iq1_s", LP_QK_K, 50},
    [LP_TYPE_IQ4_NL] = {"iq4_nl", 32, 18},
    [LP_TYPE_IQ3_S] = {"iq3_s", LP_QK_K, 110},
    [LP_TYPE_IQ2_S] = {"iq2_s", LP_QK_K, 82},
    [LP_TYPE_IQ4_XS] = {"iq4_xs", LP_QK_K, 136},
    [LP_TYPE_I8] = {"i8", 1, 1},
    [LP_TYPE_I16] = {"i16", 1, 2},
    [LP_TYPE_I32] = {"i32", 1, 4},
    [LP_TYPE_I64] = {"i64", 1, 8},
    [LP_TYPE_F64] = {"f64", 1, 8},
    [LP_TYPE_IQ1_M] = {"iq1_m", LP_QK_K, 56},
    [LP_TYPE_BF16] = {"bf16", 1, 2},
    [LP_TYPE_TQ1_0] = {"tq1_0", LP_QK_K, 54},
    [LP_TYPE_TQ2_0] = {"tq2_0", LP_QK_K, 66},
    [LP_TYPE_MXFP4] = {"mxfp4", 32, 17},
};

const char *lp_type_name(uint32_t t) {
    return t < LP_TYPE_COUNT ? TYPES[t].name : NULL;
}

bool lp_type_valid(uint32_t t) {
    return lp_type_name(t) != NULL;
}

int lp_type_from_name(const char *name) {
    if (!name) return -1;
    for (int t = 0; t < LP_TYPE_COUNT; t++) {
        const char *a = TYPES[t].name, *b = name;
        if (!a) continue;
        while (*a && *b && tolower((unsigned char)*a) == tolower((unsigned char)*b)) a++, b++;
        if (!*a && !*b) return t;
    }
    return -1;
}

int64_t lp_type_block_size(lp_type t) {
    return lp_type_valid((uint32_t)t) ? TYPES[t].block : 0;
}

size_t lp_type_block_bytes(lp_type t) {
    return lp_type_valid((uint32_t)t) ? TYPES[t].bytes : 0;
}

size_t lp_row_size(lp_type t, int64_t n) {
    if (!lp_type_valid((uint32_t)t) || n < 0) return 0;
    int64_t bs = TYPES[t].block;
    if (n % bs) return 0;
    uint64_t blocks = (uint64_t)(n / bs);
    if (blocks > SIZE_MAX / TYPES[t].bytes) return 0; /* would not fit in memory anyway */
    return (size_t)blocks * TYPES[t].bytes;
}

bool lp_type_can_dequantize(lp_type t) {
    switch (t) {
    case LP_TYPE_F32: case LP_TYPE_F16: case LP_TYPE_BF16:
    case LP_TYPE_Q8_0: case LP_TYPE_Q4_0: case LP_TYPE_Q4_1: case LP_TYPE_Q5_0:
    case LP_TYPE_Q4_K: case LP_TYPE_Q5_K: case LP_TYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

bool lp_type_can_quantize(lp_type t) {
    switch (t) {
    case LP_TYPE_F32: case LP_TYPE_F16: case LP_TYPE_BF16:
    case LP_TYPE_Q8_0: case LP_TYPE_Q4_0: case LP_TYPE_Q4_K:
        return true;
    default:
        return false;
    }
}

/* ---- scalar conversions ---- */

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float lp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) {
        /* inf, or NaN with its payload moved up. ggml widens with a float
         * multiply, which sets the quiet bit of a signalling NaN; so do we. */
        return u2f(sign | 0x7f800000 | (man << 13) | (man ? 0x00400000u : 0));
    }
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        return u2f(sign | f2u((float)man * 0x1p-24f));
    }
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t lp_f32_to_f16(float f) {
    uint32_t x = f2u(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00;     /* NaN: ggml keeps only the sign */
    if (a >= 0x477ff000) return sign | 0x7c00;    /* >= 65520 rounds to inf (65504 is odd) */
    uint32_t e = a >> 23;
    uint32_t m = a & 0x7fffff;
    if (e < 113) {
        /* below 2^-14: an f16 subnormal in units of 2^-24, or zero.
         * 2^-25 itself is a tie and goes to even (zero). */
        if (a <= 0x33000000) return sign;
        m |= 0x800000;
        uint32_t shift = 126 - e;  /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;  /* may carry into the smallest normal: fine */
        return sign | (uint16_t)q;
    }
    uint32_t q = ((e - 112) << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;  /* carry may bump the exponent: fine */
    return sign | (uint16_t)q;
}

/* bf16 is the top half of an f32. */
float lp_bf16_to_f32(uint16_t h) {
    return u2f((uint32_t)h << 16);
}

uint16_t lp_f32_to_bf16(float f) {
    uint32_t x = f2u(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* NaN: truncate, force quiet */
    /* round to nearest even: add 0x7fff, plus one more if the kept lsb is odd */
    uint32_t lsb = (x >> 16) & 1;
    return (uint16_t)((x + 0x7fffu + lsb) >> 16);
}

/* ---- helpers shared with ggml's arithmetic ---- */

/* Round to nearest (ties to even) for |v| < 2^22 by adding 1.5*2^23 and
 * reading the mantissa. Outside that range (or for inf/NaN) the result is
 * whatever the bits say, exactly as in ggml, so we keep the same trick
 * rather than a cleaner lrintf. */
static inline int nearest_int(float v) {
    float t = v + 12582912.f;
    return (int)(f2u(t) & 0x007fffff) - 0x00400000;
}

/* C cast float -> int32 as x86 does it (cvttss2si): truncate toward zero,
 * and INT32_MIN for NaN or out of range. ggml's q4_0/q8_0 reference code
 * casts straight to int8_t; that only leaves the range when a block's scale
 * overflowed (all-subnormal input), and this keeps us defined there. */
static inline int32_t trunc_i32(float v) {
    if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
    return (int32_t)v;
}

/* Low 8 bits of an int, as a signed byte (what a cast to int8_t keeps). */
static inline int low_i8(int32_t v) {
    int b = (int)((uint32_t)v & 0xff);
    return b > 127 ? b - 256 : b;
}

/* q4_K/q5_K scales: 8 (scale, min) pairs of 6 bits in 12 bytes.
 *   j < 4: sc = s[j] & 63,                       mn = s[j+4] & 63
 *   j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4,  mn = (s[j+4] >> 4) | (s[j] >> 6) << 4 */
static inline void k4_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* ---- dequantization ---- */

static void dequant_q4_0(const blk_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        float d = lp_f16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0xf) - 8, hi = (b[i].qs[j] >> 4) - 8;
            y[j] = (float)lo * d;
            y[j + 16] = (float)hi * d;
        }
    }
}

static void dequant_q4_1(const blk_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        float d = lp_f16_to_f32(b[i].d), m = lp_f16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(b[i].qs[j] & 0xf) * d + m;
            y[j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

static void dequant_q5_0(const blk_q5_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        float d = lp_f16_to_f32(b[i].d);
        uint32_t qh = (uint32_t)b[i].qh[0] | (uint32_t)b[i].qh[1] << 8 |
                      (uint32_t)b[i].qh[2] << 16 | (uint32_t)b[i].qh[3] << 24;
        for (int j = 0; j < 16; j++) {
            int lo = ((b[i].qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4)) - 16;
            int hi = ((b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
            y[j] = (float)lo * d;
            y[j + 16] = (float)hi * d;
        }
    }
}

static void dequant_q8_0(const blk_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += 32) {
        float d = lp_f16_to_f32(b[i].d);
        for (int j = 0; j < 32; j++) y[j] = (float)b[i].qs[j] * d;
    }
}

static void dequant_q4_K(const blk_q4_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = lp_f16_to_f32(b[i].d), dmin = lp_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int g = 0; g < 8; g += 2, q += 32) {
            uint8_t sc, mn;
            k4_scale_min(g, b[i].scales, &sc, &mn);
            float d1 = d * sc, m1 = dmin * mn;
            k4_scale_min(g + 1, b[i].scales, &sc, &mn);
            float d2 = d * sc, m2 = dmin * mn;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xf) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void dequant_q5_K(const blk_q5_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = lp_f16_to_f32(b[i].d), dmin = lp_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs, *qh = b[i].qh;
        for (int g = 0; g < 8; g += 2, q += 32) {
            uint8_t sc, mn;
            k4_scale_min(g, b[i].scales, &sc, &mn);
            float d1 = d * sc, m1 = dmin * mn;
            k4_scale_min(g + 1, b[i].scales, &sc, &mn);
            float d2 = d * sc, m2 = dmin * mn;
            uint8_t bit1 = (uint8_t)(1u << g), bit2 = (uint8_t)(2u << g);
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 0xf) + (qh[l] & bit1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (qh[l] & bit2 ? 16 : 0)) - m2;
        }
    }
}

/* q6_K, per 128-weight half (ql advances 64, qh 32, scales 8): for l < 32,
 *   w[l]    = ql[l]    low nibble | qh[l] bits 0-1 << 4
 *   w[l+32] = ql[l+32] low nibble | qh[l] bits 2-3 << 4
 *   w[l+64] = ql[l]    high nibble| qh[l] bits 4-5 << 4
 *   w[l+96] = ql[l+32] high nibble| qh[l] bits 6-7 << 4
 * each minus 32, scaled by d * scales[l/16 + 0, 2, 4, 6]. */
static void dequant_q6_K(const blk_q6_K *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        float d = lp_f16_to_f32(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int s = l / 16;
                int q1 = ((ql[l] & 0xf) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * (float)sc[s] * (float)q1;
                y[l + 32] = d * (float)sc[s + 2] * (float)q2;
                y[l + 64] = d * (float)sc[s + 4] * (float)q3;
                y[l + 96] = d * (float)sc[s + 6] * (float)q4;
            }
        }
    }
}

bool lp_dequantize_row(lp_type t, const void *src, float *dst, int64_t n) {
    if (!lp_type_can_dequantize(t) || n < 0 || n % TYPES[t].block) return false;
    if (n == 0) return true;
    if (!src || !dst) return false;
    int64_t nb = n / TYPES[t].block;
    switch (t) {
    case LP_TYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case LP_TYPE_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = lp_f16_to_f32(h[i]);
    } break;
    case LP_TYPE_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = lp_bf16_to_f32(h[i]);
    } break;
    case LP_TYPE_Q4_0: dequant_q4_0(src, dst, nb); break;
    case LP_TYPE_Q4_1: dequant_q4_1(src, dst, nb); break;
    case LP_TYPE_Q5_0: dequant_q5_0(src, dst, nb); break;
    case LP_TYPE_Q8_0: dequant_q8_0(src, dst, nb); break;
    case LP_TYPE_Q4_K: dequant_q4_K(src, dst, nb); break;
    case LP_TYPE_Q5_K: dequant_q5_K(src, dst, nb); break;
    case LP_TYPE_Q6_K: dequant_q6_K(src, dst, nb); break;
    default: return false;
    }
    return true;
}

/* ---- quantization (ggml's reference quantizers, same arithmetic) ---- */

/* q8_0: d = absmax/127, q = round(x/d) (ties away from zero). */
static void quant_q8_0(const float *x, blk_q8_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(x[j]);
            amax = amax > a ? amax : a; /* not fmaxf: a NaN must win, as in ggml's MAX() */
        }
        float d = amax / 127;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lp_f32_to_f16(d);
        for (int j = 0; j < 32; j++) b[i].qs[j] = (int8_t)low_i8(trunc_i32(roundf(x[j] * id)));
    }
}

/* q4_0: d = -(signed value of largest magnitude)/8, so that value maps to
 * q = 0 (i.e. -8) and the other side gets the extra step; q = x/d + 8.5
 * truncated, capped at 15. */
static void quant_q4_0(const float *x, blk_q4_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                vmax = x[j];
            }
        }
        float d = vmax / -8;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = lp_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            int lo = low_i8(trunc_i32(x[j] * id + 8.5f));
            int hi = low_i8(trunc_i32(x[j + 16] * id + 8.5f));
            if (lo > 15) lo = 15;
            if (hi > 15) hi = 15;
            b[i].qs[j] = (uint8_t)((unsigned)lo | (unsigned)hi << 4);
        }
    }
}

/* Fit x[0..n) ~ scale * L + min with L in [0, nmax] and min <= 0, by weighted
 * least squares over nstep+1 candidate scales around nmax/(max-min); keeps
 * the best. Returns scale, stores -min in *neg_min. This is ggml's
 * make_qkx2_quants (with use_mad false); every sum runs in the same order. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *neg_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        l = l < 0 ? 0 : l > nmax ? nmax : l;
        L[i] = (uint8_t)l;
        float diff = scale * (float)L[i] + min - x[i];
        best_err += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            float fl = (float)l;
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * (float)Laux[i] + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* q4_K: per 32-group, fit (scale, min) with weights |x| + rms(group); then
 * quantize the 8 scales and 8 mins to 6 bits against their maxima (d, dmin),
 * and requantize the weights with the rounded scales. */
static void quant_q4_K(const float *x, blk_q4_K *b, int64_t nb) {
    uint8_t L[LP_QK_K], Laux[32];
    float w[32], scales[8], mins[8];
    for (int64_t i = 0; i < nb; i++, x += LP_QK_K) {
        float max_scale = 0, max_min = 0;
        for (int g = 0; g < 8; g++) {
            const float *xg = x + 32 * g;
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++) sum_x2 += xg[l] * xg[l];
            float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(xg[l]);
            scales[g] = fit_scale_min(32, 15, xg, w, L + 32 * g, &mins[g], Laux, -1.f, 0.1f, 20);
            if (scales[g] > max_scale) max_scale = scales[g];
            if (mins[g] > max_min) max_min = mins[g];
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int g = 0; g < 8; g++) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[g]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[g]);
            if (ls > 63) ls = 63;
            if (lm > 63) lm = 63;
            if (g < 4) {
                b[i].scales[g] = ls;
                b[i].scales[g + 4] = lm;
            } else {
                b[i].scales[g + 4] = (uint8_t)((ls & 0xf) | (lm & 0xf) << 4);
                b[i].scales[g - 4] |= (uint8_t)((ls >> 4) << 6);
                b[i].scales[g] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        b[i].d = lp_f32_to_f16(max_scale / 63.f);
        b[i].dmin = lp_f32_to_f16(max_min / 63.f);
        for (int g = 0; g < 8; g++) {
            uint8_t sc, mn;
            k4_scale_min(g, b[i].scales, &sc, &mn);
            float d = lp_f16_to_f32(b[i].d) * sc;
            if (d == 0.0f) continue; /* keep the first-pass levels */
            float dm = lp_f16_to_f32(b[i].dmin) * mn;
            for (int l = 0; l < 32; l++) {
                int q = nearest_int((x[32 * g + l] + dm) / d);
                L[32 * g + l] = (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
            }
        }
        uint8_t *q = b[i].qs;
        for (int j = 0; j < LP_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | L[j + l + 32] << 4);
    }
}

size_t lp_quantize_row(lp_type t, const float *src, void *dst, int64_t n) {
    if (!lp_type_can_quantize(t) || n < 0 || n % TYPES[t].block) return 0;
    if (n == 0) return 0;
    if (!src || !dst) return 0;
    size_t bytes = lp_row_size(t, n);
    if (!bytes) return 0;
    int64_t nb = n / TYPES[t].block;
    switch (t) {
    case LP_TYPE_F32: memcpy(dst, src, bytes); break;
    case LP_TYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = lp_f32_to_f16(src[i]);
    } break;
    case LP_TYPE_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = lp_f32_to_bf16(src[i]);
    } break;
    case LP_TYPE_Q8_0: quant_q8_0(src, dst, nb); break;
    case LP_TYPE_Q4_0: quant_q4_0(src, dst, nb); break;
    case LP_TYPE_Q4_K: quant_q4_K(src, dst, nb); break;
    default: return 0;
    }
    return bytes;
}
