/* tests/test_types.c — the type table, f16/bf16 conversion and the
 * (de)quantizers, checked bit for bit against ggml.
 *
 * tests/fixtures/quant_ggml.gguf was written by ggml itself
 * (tools/llamacpp/ggml_fixtures.c; see tests/fixtures/README.md): for each
 * type T, src.T (f32 input), quant.T (ggml_quantize_chunk) and deq.T (ggml's
 * to_float of quant.T). Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "types.h"

#define FIXTURE "tests/fixtures/quant_ggml.gguf"

static lp_gguf *fx;

static int open_fixture(void **state) {
    (void)state;
    lp_error err = {0};
    fx = lp_gguf_open(FIXTURE, &err);
    if (!fx) fprintf(stderr, "%s\n", err.msg);
    return fx ? 0 : -1;
}

static int close_fixture(void **state) {
    (void)state;
    lp_gguf_close(fx);
    fx = NULL;
    return 0;
}

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static const lp_gguf_tensor *get(const char *prefix, lp_type t) {
    char name[64];
    snprintf(name, sizeof name, "%s.%s", prefix, lp_type_name(t));
    int64_t i = lp_gguf_find_tensor(fx, name);
    if (i < 0) fail_msg("fixture has no tensor %s", name);
    return &fx->tensors[i];
}

/* First differing float, for a readable failure. */
static void assert_same_floats(const float *got, const float *want, int64_t n, const char *what) {
    if (memcmp(got, want, (size_t)n * sizeof(float)) == 0) return;
    for (int64_t i = 0; i < n; i++) {
        if (f2u(got[i]) != f2u(want[i]))
            fail_msg("%s: element %lld: got %.9g (0x%08x), ggml %.9g (0x%08x)", what, (long long)i,
                     (double)got[i], f2u(got[i]), (double)want[i], f2u(want[i]));
    }
}

static void assert_same_bytes(const uint8_t *got, const uint8_t *want, size_t n, size_t block_bytes,
                              const char *what) {
    if (memcmp(got, want, n) == 0) return;
    for (size_t i = 0; i < n; i++) {
        if (got[i] != want[i])
            fail_msg("%s: byte %zu (block %zu, offset %zu): got 0x%02x, ggml 0x%02x", what, i,
                     i / block_bytes, i % block_bytes, got[i], want[i]);
    }
}

static const lp_type FIXTURE_TYPES[] = {
    LP_TYPE_F16, LP_TYPE_BF16, LP_TYPE_Q8_0, LP_TYPE_Q4_0, LP_TYPE_Q4_1,
    LP_TYPE_Q5_0, LP_TYPE_Q4_K, LP_TYPE_Q5_K, LP_TYPE_Q6_K,
};
#define N_FIXTURE_TYPES (sizeof FIXTURE_TYPES / sizeof FIXTURE_TYPES[0])

/* ---- against ggml ---- */

static void test_dequantize_matches_ggml(void **state) {
    (void)state;
    for (size_t k = 0; k < N_FIXTURE_TYPES; k++) {
        lp_type t = FIXTURE_TYPES[k];
        const lp_gguf_tensor *q = get("quant", t), *d = get("deq", t);
        assert_int_equal(q->type, t);
        assert_int_equal(d->type, LP_TYPE_F32);
        int64_t n = lp_gguf_tensor_nelements(q), ne0 = q->ne[0];
        assert_int_equal(lp_gguf_tensor_nelements(d), n);
        assert_int_equal(q->nbytes, lp_row_size(t, ne0) * (uint64_t)(n / ne0));
        float *out = malloc((size_t)n * sizeof(float));
        assert_non_null(out);
        /* whole tensor in one call, then row by row */
        assert_true(lp_dequantize_row(t, q->data, out, n));
        assert_same_floats(out, d->data, n, lp_type_name(t));
        memset(out, 0, (size_t)n * sizeof(float));
        size_t rs = lp_row_size(t, ne0);
        for (int64_t r = 0; r < n / ne0; r++)
            assert_true(lp_dequantize_row(t, (const uint8_t *)q->data + r * rs, out + r * ne0, ne0));
        assert_same_floats(out, d->data, n, lp_type_name(t));
        free(out);
    }
}

static void test_quantize_matches_ggml(void **state) {
    (void)state;
    for (size_t k = 0; k < N_FIXTURE_TYPES; k++) {
        lp_type t = FIXTURE_TYPES[k];
        const lp_gguf_tensor *s = get("src", t), *q = get("quant", t);
        int64_t n = lp_gguf_tensor_nelements(s), ne0 = s->ne[0];
        uint8_t *out = malloc(q->nbytes);
        assert_non_null(out);
        memset(out, 0xAA, q->nbytes);
        if (!lp_type_can_quantize(t)) {
            assert_int_equal(lp_quantize_row(t, s->data, out, n), 0);
            free(out);
            continue;
        }
        assert_int_equal(lp_quantize_row(t, s->data, out, n), q->nbytes);
        assert_same_bytes(out, q->data, q->nbytes, lp_type_block_bytes(t), lp_type_name(t));
        /* row by row gives the same bytes */
        memset(out, 0xAA, q->nbytes);
        size_t rs = lp_row_size(t, ne0);
        for (int64_t r = 0; r < n / ne0; r++)
            assert_int_equal(lp_quantize_row(t, (const float *)s->data + r * ne0, out + r * rs, ne0), rs);
        assert_same_bytes(out, q->data, q->nbytes, lp_type_block_bytes(t), lp_type_name(t));
        free(out);
    }
}

/* Everything lp_type_can_quantize claims is covered by the fixture (plus f32). */
static void test_fixture_covers_quantizers(void **state) {
    (void)state;
    for (uint32_t t = 0; t < LP_TYPE_COUNT; t++) {
        if (!lp_type_valid(t) || t == LP_TYPE_F32) continue;
        bool in = false;
        for (size_t k = 0; k < N_FIXTURE_TYPES; k++) in |= FIXTURE_TYPES[k] == (lp_type)t;
        if (lp_type_can_dequantize((lp_type)t) || lp_type_can_quantize((lp_type)t)) assert_true(in);
    }
}

static void test_f32_passthrough(void **state) {
    (void)state;
    float x[5] = {1.0f, -0.0f, INFINITY, u2f(0x7fa00001), 1e-45f}, y[5], z[5];
    assert_int_equal(lp_quantize_row(LP_TYPE_F32, x, y, 5), sizeof x);
    assert_memory_equal(x, y, sizeof x);
    assert_true(lp_dequantize_row(LP_TYPE_F32, y, z, 5));
    assert_memory_equal(x, z, sizeof x);
}

/* ---- f16 ---- */

static void test_f16_specials(void **state) {
    (void)state;
    struct { uint32_t f; uint16_t h; } cases[] = {
        {0x00000000, 0x0000}, {0x80000000, 0x8000},                 /* +-0 */
        {0x7f800000, 0x7c00}, {0xff800000, 0xfc00},                 /* +-inf */
        {0x7fc00000, 0x7e00}, {0xffc00000, 0xfe00},                 /* NaN: sign kept, payload dropped */
        {0x7f800001, 0x7e00}, {0xffa12345, 0xfe00},
        {0x3f800000, 0x3c00}, {0xc0000000, 0xc000},                 /* 1, -2 */
        {0x477fe000, 0x7bff},                                       /* 65504 = max */
        {0x477fefff, 0x7bff}, {0x477ff000, 0x7c00},                 /* 65520 is a tie, goes to inf (even) */
        {0x47800000, 0x7c00}, {0x7f7fffff, 0x7c00},                 /* overflow */
        {0x38800000, 0x0400},                                       /* 2^-14, smallest normal */
        {0x387fc000, 0x03ff},                                       /* largest subnormal */
        {0x387fe000, 0x0400},                                       /* tie between them: up to even 0x400 */
        {0x33800000, 0x0001},                                       /* 2^-24, smallest subnormal */
        {0x33000000, 0x0000}, {0xb3000000, 0x8000},                 /* 2^-25: tie, to even (zero) */
        {0x33000001, 0x0001},                                       /* just above the tie */
        {0x33c00000, 0x0002},                                       /* 1.5 * 2^-24: tie, to even (2) */
        {0x34200000, 0x0002},                                       /* 2.5 * 2^-24: tie, to even (2) */
        {0x00000001, 0x0000}, {0x807fffff, 0x8000},                 /* f32 subnormals vanish */
        {0x3f801000, 0x3c00},                                       /* 1 + 2^-11: tie, down to even */
        {0x3f803000, 0x3c02},                                       /* 1 + 3*2^-11: tie, up to even */
        {0x3f801001, 0x3c01}, {0x3f802fff, 0x3c01},                 /* near ties */
        {0x3f7ff000, 0x3c00},                                       /* 1 - 2^-12: rounds up across the exponent */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = lp_f32_to_f16(u2f(cases[i].f));
        if (h != cases[i].h) fail_msg("f32 0x%08x -> f16 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    /* f16 -> f32 */
    assert_int_equal(f2u(lp_f16_to_f32(0x0000)), 0x00000000);
    assert_int_equal(f2u(lp_f16_to_f32(0x8000)), 0x80000000);
    assert_int_equal(f2u(lp_f16_to_f32(0x7c00)), 0x7f800000);
    assert_int_equal(f2u(lp_f16_to_f32(0xfc00)), 0xff800000);
    assert_int_equal(f2u(lp_f16_to_f32(0x7e00)), 0x7fc00000);
    assert_int_equal(f2u(lp_f16_to_f32(0x7c01)), 0x7fc02000); /* signalling NaN comes back quiet, payload kept */
    assert_int_equal(f2u(lp_f16_to_f32(0xfd55)), 0xffeaa000);
    assert_true(lp_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(lp_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
    assert_true(lp_f16_to_f32(0x8400) == -0x1p-14f);
    assert_true(lp_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(lp_f16_to_f32(0x3555) == 0x1.554p-2f);
}

/* Every f16 value survives f16 -> f32 -> f16; NaNs come back as ggml's NaN. */
static void test_f16_roundtrip_all(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lp_f16_to_f32((uint16_t)h);
        uint16_t back = lp_f32_to_f16(f);
        bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        uint16_t want = nan ? (uint16_t)((h & 0x8000) | 0x7e00) : (uint16_t)h;
        if (back != want) fail_msg("f16 0x%04x -> %g -> 0x%04x", h, (double)f, back);
        if (!nan && f2u(f) != f2u((float)(double)f)) fail_msg("f16 0x%04x", h);
    }
}

/* Compare against an independent rounding: for each f32 between two adjacent
 * f16 values a < b, the result is the nearer one, ties to the even one. We
 * check a strided sweep of the whole f32 space. */
static void test_f16_rounding_sweep(void **state) {
    (void)state;
    for (uint64_t u = 0; u < 0x80000000ull; u += 4099) {
        uint32_t bits = (uint32_t)u;
        float f = u2f(bits);
        if (isnan(f)) continue;
        uint16_t h = lp_f32_to_f16(f);
        double v = f;
        if (v >= 65520.0) { assert_int_equal(h, 0x7c00); continue; }
        /* the two candidates around v */
        uint16_t lo = h;
        double hv = lp_f16_to_f32(h);
        if (hv > v) lo = (uint16_t)(h - 1);
        uint16_t hi = (uint16_t)(lo + 1);
        double a = lp_f16_to_f32(lo), b = lp_f16_to_f32(hi);
        if (!(a <= v && v <= b)) fail_msg("0x%08x: %g not in [%g, %g]", bits, v, a, b);
        uint16_t want = (v - a < b - v) ? lo : (v - a > b - v) ? hi : ((lo & 1) ? hi : lo);
        if (h != want) fail_msg("f32 0x%08x (%.10g) -> 0x%04x, want 0x%04x", bits, v, h, want);
        /* the sign is symmetric */
        assert_int_equal(lp_f32_to_f16(-f), h | 0x8000);
    }
}

/* ---- bf16 ---- */

static void test_bf16(void **state) {
    (void)state;
    struct { uint32_t f; uint16_t h; } cases[] = {
        {0x00000000, 0x0000}, {0x80000000, 0x8000},
        {0x7f800000, 0x7f80}, {0xff800000, 0xff80},
        {0x7fc00000, 0x7fc0}, {0x7f800001, 0x7fc0},         /* NaN: truncated, quiet bit forced */
        {0x7fa12345, 0x7fe1}, {0xff812345, 0xffc1},
        {0x3f800000, 0x3f80},
        {0x3f808000, 0x3f80},                               /* 1 + 2^-8: tie, down to even */
        {0x3f818000, 0x3f82},                               /* 1 + 3*2^-8: tie, up to even */
        {0x3f808001, 0x3f81}, {0x3f817fff, 0x3f81},
        {0xbf818000, 0xbf82},
        {0x7f7fffff, 0x7f80}, {0x7f7f8000, 0x7f80},         /* rounds up to inf */
        {0x7f7f7fff, 0x7f7f},
        {0x00000001, 0x0000}, {0x00008000, 0x0000}, {0x00018000, 0x0002}, /* subnormals keep RNE */
        {0x3eaaaaab, 0x3eab},                               /* 1/3 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = lp_f32_to_bf16(u2f(cases[i].f));
        if (h != cases[i].h) fail_msg("f32 0x%08x -> bf16 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lp_bf16_to_f32((uint16_t)h);
        assert_int_equal(f2u(f), h << 16);
        bool nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        assert_int_equal(lp_f32_to_bf16(f), nan ? (h | 0x40) : h);
    }
}

/* ---- table, names, sizes ---- */

static void test_type_table(void **state) {
    (void)state;
    struct { lp_type t; int64_t bs; size_t bb; } want[] = {
        {LP_TYPE_F32, 1, 4}, {LP_TYPE_F16, 1, 2}, {LP_TYPE_BF16, 1, 2}, {LP_TYPE_F64, 1, 8},
        {LP_TYPE_I8, 1, 1}, {LP_TYPE_I16, 1, 2}, {LP_TYPE_I32, 1, 4}, {LP_TYPE_I64, 1, 8},
        {LP_TYPE_Q4_0, 32, 18}, {LP_TYPE_Q4_1, 32, 20}, {LP_TYPE_Q5_0, 32, 22}, {LP_TYPE_Q5_1, 32, 24},
        {LP_TYPE_Q8_0, 32, 34}, {LP_TYPE_Q8_1, 32, 36}, {LP_TYPE_Q2_K, 256, 84}, {LP_TYPE_Q3_K, 256, 110},
        {LP_TYPE_Q4_K, 256, 144}, {LP_TYPE_Q5_K, 256, 176}, {LP_TYPE_Q6_K, 256, 210}, {LP_TYPE_Q8_K, 256, 292},
        {LP_TYPE_IQ2_XXS, 256, 66}, {LP_TYPE_IQ2_XS, 256, 74}, {LP_TYPE_IQ3_XXS, 256, 98},
        {LP_TYPE_IQ1_S, 256, 50}, {LP_TYPE_IQ4_NL, 32, 18}, {LP_TYPE_IQ3_S, 256, 110},
        {LP_TYPE_IQ2_S, 256, 82}, {LP_TYPE_IQ4_XS, 256, 136}, {LP_TYPE_IQ1_M, 256, 56},
        {LP_TYPE_TQ1_0, 256, 54}, {LP_TYPE_TQ2_0, 256, 66}, {LP_TYPE_MXFP4, 32, 17},
    };
    size_t nvalid = 0;
    for (uint32_t t = 0; t < LP_TYPE_COUNT + 5; t++) nvalid += lp_type_valid(t);
    assert_int_equal(nvalid, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_true(lp_type_valid(want[i].t));
        assert_int_equal(lp_type_block_size(want[i].t), want[i].bs);
        assert_int_equal(lp_type_block_bytes(want[i].t), want[i].bb);
        assert_int_equal(lp_row_size(want[i].t, 0), 0);
        assert_int_equal(lp_row_size(want[i].t, want[i].bs * 3), want[i].bb * 3);
        assert_int_equal(lp_row_size(want[i].t, 4096), (size_t)(4096 / want[i].bs) * want[i].bb);
        if (want[i].bs > 1) {
            assert_int_equal(lp_row_size(want[i].t, want[i].bs + 1), 0);
            assert_int_equal(lp_row_size(want[i].t, want[i].bs / 2), 0);
        }
        assert_int_equal(lp_row_size(want[i].t, -want[i].bs), 0);
    }
    /* removed or unknown ids */
    uint32_t bad[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, 41, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(lp_type_valid(bad[i]));
        assert_null(lp_type_name(bad[i]));
        assert_int_equal(lp_type_block_size((lp_type)bad[i]), 0);
        assert_int_equal(lp_type_block_bytes((lp_type)bad[i]), 0);
        assert_int_equal(lp_row_size((lp_type)bad[i], 256), 0);
        assert_false(lp_type_can_dequantize((lp_type)bad[i]));
        assert_false(lp_type_can_quantize((lp_type)bad[i]));
    }
    /* no overflow on absurd lengths */
    assert_int_equal(lp_row_size(LP_TYPE_F32, INT64_MAX - 7), 0);
    /* capability lists */
    int nd = 0, nq = 0;
    for (uint32_t t = 0; t < LP_TYPE_COUNT; t++) {
        nd += lp_type_can_dequantize((lp_type)t);
        nq += lp_type_can_quantize((lp_type)t);
        if (lp_type_can_quantize((lp_type)t)) assert_true(lp_type_can_dequantize((lp_type)t));
    }
    assert_int_equal(nd, 10);
    assert_int_equal(nq, 6);
}

static void test_type_names(void **state) {
    (void)state;
    for (uint32_t t = 0; t < LP_TYPE_COUNT; t++) {
        const char *name = lp_type_name(t);
        if (!name) continue;
        assert_int_equal(lp_type_from_name(name), (int)t);
        char up[32];
        size_t n = strlen(name);
        assert_true(n < sizeof up);
        for (size_t i = 0; i <= n; i++) up[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
        assert_int_equal(lp_type_from_name(up), (int)t);
    }
    assert_string_equal(lp_type_name(LP_TYPE_Q4_K), "q4_K");
    assert_string_equal(lp_type_name(LP_TYPE_BF16), "bf16");
    assert_string_equal(lp_type_name(LP_TYPE_IQ2_XXS), "iq2_xxs");
    assert_int_equal(lp_type_from_name("q4_k"), LP_TYPE_Q4_K);
    assert_int_equal(lp_type_from_name("Q8_0"), LP_TYPE_Q8_0);
    assert_int_equal(lp_type_from_name(NULL), -1);
    assert_int_equal(lp_type_from_name(""), -1);
    assert_int_equal(lp_type_from_name("q4_2"), -1);
    assert_int_equal(lp_type_from_name("f3"), -1);
    assert_int_equal(lp_type_from_name("f322"), -1);
    assert_int_equal(lp_type_from_name("q4_K "), -1);
}

/* ---- argument checks ---- */

static void test_rejects_bad_lengths(void **state) {
    (void)state;
    float src[512] = {0};
    float dst[512];
    uint8_t q[1024];
    for (uint32_t t = 0; t < LP_TYPE_COUNT; t++) {
        if (!lp_type_valid(t)) continue;
        int64_t bs = lp_type_block_size((lp_type)t);
        memset(dst, 0x5A, sizeof dst);
        memset(q, 0x5A, sizeof q);
        if (bs > 1) {
            assert_false(lp_dequantize_row((lp_type)t, q, dst, bs - 1));
            assert_false(lp_dequantize_row((lp_type)t, q, dst, bs + 1));
            assert_int_equal(lp_quantize_row((lp_type)t, src, q, bs + 16), 0);
        }
        assert_false(lp_dequantize_row((lp_type)t, q, dst, -bs));
        assert_int_equal(lp_quantize_row((lp_type)t, src, q, -bs), 0);
        if (!lp_type_can_dequantize((lp_type)t)) assert_false(lp_dequantize_row((lp_type)t, q, dst, 256));
        if (!lp_type_can_quantize((lp_type)t)) assert_int_equal(lp_quantize_row((lp_type)t, src, q, 256), 0);
        /* nothing was written by any failed call */
        for (size_t i = 0; i < sizeof q; i++) assert_int_equal(q[i], 0x5A);
        for (size_t i = 0; i < 512; i++) assert_int_equal(f2u(dst[i]), 0x5A5A5A5A);
    }
    assert_false(lp_dequantize_row((lp_type)4, q, dst, 32));
    assert_false(lp_dequantize_row((lp_type)1000, q, dst, 32));
    assert_int_equal(lp_quantize_row((lp_type)1000, src, q, 32), 0);
    /* empty rows are fine and write nothing */
    assert_true(lp_dequantize_row(LP_TYPE_Q4_K, q, dst, 0));
    assert_int_equal(lp_quantize_row(LP_TYPE_Q4_K, src, q, 0), 0);
}

/* ---- quantizer sanity beyond the fixture ---- */

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)(rng >> 40) / 8388608.0f - 1.0f;
}

/* Error bounds: q8_0 within half a step (plus the f16 rounding of the
 * step, up to 127 * 2^-11 of it), q4_0 within one step (its cap at
 * 15 costs up to a full step on the side opposite the max), q4_K small
 * relative to the data. All-zero input gives all-zero output. */
static void test_quantize_error_bounds(void **state) {
    (void)state;
    enum { N = 4096 };
    static float x[N], y[N];
    static uint8_t q[N * 2];
    for (int i = 0; i < N; i++) x[i] = frand() * (i < N / 2 ? 1.0f : 0.01f);

    assert_int_equal(lp_quantize_row(LP_TYPE_Q8_0, x, q, N), lp_row_size(LP_TYPE_Q8_0, N));
    assert_true(lp_dequantize_row(LP_TYPE_Q8_0, q, y, N));
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        for (int j = 0; j < 32; j++) assert_true(fabsf(y[b * 32 + j] - x[b * 32 + j]) <= amax / 127 * 0.57f + 1e-7f);
    }

    assert_int_equal(lp_quantize_row(LP_TYPE_Q4_0, x, q, N), lp_row_size(LP_TYPE_Q4_0, N));
    assert_true(lp_dequantize_row(LP_TYPE_Q4_0, q, y, N));
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        for (int j = 0; j < 32; j++) assert_true(fabsf(y[b * 32 + j] - x[b * 32 + j]) <= amax / 8 * 1.01f);
    }

    assert_int_equal(lp_quantize_row(LP_TYPE_Q4_K, x, q, N), lp_row_size(LP_TYPE_Q4_K, N));
    assert_true(lp_dequantize_row(LP_TYPE_Q4_K, q, y, N));
    double se = 0, sx = 0;
    for (int i = 0; i < N / 2; i++) se += (double)(y[i] - x[i]) * (y[i] - x[i]), sx += (double)x[i] * x[i];
    assert_true(se / sx < 0.01); /* ~4.5 bits: relative rms error well under 10% */

    memset(x, 0, sizeof x);
    lp_type qt[] = {LP_TYPE_Q8_0, LP_TYPE_Q4_0, LP_TYPE_Q4_K, LP_TYPE_F16, LP_TYPE_BF16};
    for (size_t k = 0; k < sizeof qt / sizeof qt[0]; k++) {
        assert_true(lp_quantize_row(qt[k], x, q, 256) > 0);
        assert_true(lp_dequantize_row(qt[k], q, y, 256));
        for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f); /* q4_0 gives -0: d = 0 / -8 */
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequantize_matches_ggml),
        cmocka_unit_test(test_quantize_matches_ggml),
        cmocka_unit_test(test_fixture_covers_quantizers),
        cmocka_unit_test(test_f32_passthrough),
        cmocka_unit_test(test_f16_specials),
        cmocka_unit_test(test_f16_roundtrip_all),
        cmocka_unit_test(test_f16_rounding_sweep),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_rejects_bad_lengths),
        cmocka_unit_test(test_quantize_error_bounds),
    };
    return cmocka_run_group_tests(tests, open_fixture, close_fixture);
}
