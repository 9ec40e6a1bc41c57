/* tools/llamacpp/ggml_fixtures.c — writes tests/fixtures/quant_ggml.gguf,
 * the reference data for tests/test_types.c, using ggml itself.
 *
 * For each type T in f16 bf16 q8_0 q4_0 q4_1 q5_0 q4_K q5_K q6_K it stores
 *   src.T    f32 [512 x 8]  the input (fixed-seed random rows, see make_rows)
 *   quant.T  T   [512 x 8]  ggml_quantize_chunk(T, src.T) (no imatrix)
 *   deq.T    f32 [512 x 8]  ggml's type_traits(T)->to_float(quant.T)
 * with ggml's own GGUF writer, so the file doubles as a check of our reader.
 *
 * This is loupe's code but it links a hand-built ggml (llama.cpp), so the
 * Makefile never builds it (tools/llamacpp/ is skipped). Build and run from
 * the repository root against an existing llama.cpp build (no build recipe
 * for llama.cpp is kept here):
 *
 *   LLAMA=/path/to/llama.cpp
 *   cc -std=c11 -O2 -I$LLAMA/ggml/include tools/llamacpp/ggml_fixtures.c \
 *      $LLAMA/build/ggml/src/libggml-base.a -lstdc++ -lm -fopenmp -o /tmp/ggml_fixtures
 *   /tmp/ggml_fixtures tests/fixtures/quant_ggml.gguf
 *
 * With -DLOUPE_CHECK and loupe's core/types.c on the same command line
 * (add -DLOUPE_CHECK core/types.c), `--check` instead
 * compares loupe against ggml on ~4M random weights per type (many more
 * than the fixture can hold) and prints the mismatching blocks:
 *   /tmp/ggml_fixtures --check
 *
 * llama.cpp's CMake gives -march flags only to ggml-cpu; ggml-base (where
 * the reference quantizers and to_float live) stays at the baseline ISA, so
 * its scalar code rounds every float op separately (no FMA), which is what
 * loupe reproduces. Only libggml-base.a is linked. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "gguf.h"

#define NE0 512 /* row length: two K-quant super-blocks, 16 blocks of 32 */
#define NROW 8

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t xorshift64(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* uniform in [-1, 1) with 24 random bits */
static float uni(void) {
    return (float)(xorshift64() >> 40) / 8388608.0f - 1.0f;
}

/* roughly gaussian: sum of 4 uniforms */
static float gauss(void) {
    return (uni() + uni() + uni() + uni()) * 0.8660254f;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Eight rows meant to reach every branch of the quantizers:
 *   0 uniform [-1, 1)
 *   1 weight-like gaussian * 0.02
 *   2 gaussian with a few large outliers (one per block of 32, either sign)
 *   3 zero blocks, constant blocks, single-nonzero blocks, then random
 *   4 tiny magnitudes: 1e-30, 1e-36, and f32 subnormals (1e-39), where
 *     q4_0/q8_0 scales underflow and 1/d overflows to inf
 *   5 large magnitudes: 3e4, 1e3 .. 1e4, and a 64-weight stretch at 1e30
 *     whose scales overflow f16 (inf/NaN after dequantization)
 *   6 all positive first half, all negative second half
 *   7 exact grid values and half-way points (rounding ties) */
static void make_rows(float *x) {
    for (int i = 0; i < NE0; i++) x[0 * NE0 + i] = uni();
    for (int i = 0; i < NE0; i++) x[1 * NE0 + i] = 0.02f * gauss();
    for (int i = 0; i < NE0; i++) {
        float v = gauss();
        if (i % 32 == (i / 32) % 32) v = (i & 64 ? -1.0f : 1.0f) * (20.0f + 30.0f * fabsf(uni()));
        x[2 * NE0 + i] = v;
    }
    for (int i = 0; i < NE0; i++) {
        float v;
        if (i < 64) v = 0.0f;                          /* two zero blocks (one K group pair) */
        else if (i < 96) v = 0.375f;                   /* constant positive */
        else if (i < 128) v = -1.25f;                  /* constant negative */
        else if (i < 160) v = (i == 140) ? -0.5f : 0;  /* one nonzero */
        else if (i < 192) v = (i == 170) ? 2.0f : 0;
        else v = uni() * (i < 256 ? 1e-3f : 1.0f);
        x[3 * NE0 + i] = v;
    }
    for (int i = 0; i < NE0; i++) x[4 * NE0 + i] = uni() * (i < 256 ? 1e-30f : i < 384 ? 1e-36f : 1e-39f);
    for (int i = 0; i < NE0; i++) x[5 * NE0 + i] = uni() * (i < 256 ? 3e4f : i < 320 ? 1e30f : (i % 2 ? 1e3f : 1e4f));
    for (int i = 0; i < NE0; i++) {
        float v = fabsf(uni()) + 0.01f;
        x[6 * NE0 + i] = i < 256 ? v : -v;
    }
    for (int i = 0; i < NE0; i++) {
        /* multiples of 1/8 and odd multiples of 1/16 in [-1, 1], and for
         * the last blocks n + 0.5 grids on a scale where q8_0 lands on ties */
        int k = (int)(xorshift64() % 33) - 16;
        float v = (float)k / 16.0f;
        if (i >= 384) v = ((float)((int)(xorshift64() % 255) - 127) + 0.5f) / 127.0f;
        if (i % 32 == 0) v = 1.0f; /* pin the block max so grid values are exact */
        x[7 * NE0 + i] = v;
    }
}

/* For f16/bf16 the last row is replaced by special values: zeros, infs,
 * NaNs (quiet, signalling, payloads, negative), f16 and bf16 boundaries,
 * subnormals, and exact round-to-even ties. */
static void special_row(float *x) {
    static const uint32_t bits[] = {
        0x00000000, 0x80000000, 0x7f800000, 0xff800000, /* +-0, +-inf */
        0x7fc00000, 0xffc00000, 0x7f800001, 0x7fa00000, 0x7fffffff, 0xff812345, /* NaNs */
        0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x47800000, 0x7f7fffff, /* 65504, ..., 65520, 65536, FLT_MAX */
        0x38800000, 0x387fffff, 0x387fe000, 0x387ff000, /* 2^-14 and just below (f16 subnormal edge) */
        0x33800000, 0x33000000, 0x33000001, 0x32ffffff, 0x33c00000, 0x34200000, /* 2^-24, 2^-25 tie, around it, 1.5*2^-24, 2.5*2^-24 */
        0x00000001, 0x807fffff, 0x00400000, /* f32 subnormals */
        0x3f801000, 0x3f803000, 0x3f801001, 0x3f802fff, /* 1 + 2^-11 tie (down), 1 + 3*2^-11 tie (up), near ties */
        0x3f808000, 0x3f818000, 0x3f808001, 0x3f817fff, /* bf16 ties around 1 */
        0xbf808000, 0xbf818000, 0x7f7f8000, 0x7f7fffff, /* negative ties, bf16 overflow to inf */
        0x3eaaaaab, 0xbe4ccccd, 0x40490fdb, 0x42f6e979, /* 1/3, -0.2, pi, 123.456 */
    };
    int n = (int)(sizeof bits / sizeof bits[0]);
    for (int i = 0; i < NE0; i++) {
        if (i < n) x[i] = from_bits(bits[i]);
        else if (i < 256) x[i] = from_bits((uint32_t)xorshift64()); /* any bit pattern, NaNs included */
        else x[i] = ldexpf(uni(), (int)(xorshift64() % 60) - 40); /* wide exponent range */
    }
}

#ifdef LOUPE_CHECK
#include "../../core/types.h" /* by path: core/ also has a gguf.h */

/* Quantize with both, dequantize ggml's bytes with both; count differing
 * blocks. Data: gaussian rows at varied scales, some with outliers. */
static int check(void) {
    static const enum ggml_type types[] = {
        GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
    };
    const int64_t n = (int64_t)1 << 22;
    float *x = malloc((size_t)n * 4), *ya = malloc((size_t)n * 4), *yb = malloc((size_t)n * 4);
    uint8_t *qa = malloc((size_t)n * 4), *qb = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        int64_t row = i / 512;
        float scale = ldexpf(1.0f, (int)(row % 24) - 16);
        float v = gauss() * scale;
        if (row % 5 == 0 && xorshift64() % 97 == 0) v *= 40.0f;
        if (row % 7 == 3) v = fabsf(v);
        x[i] = v;
    }
    int bad_total = 0;
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        enum ggml_type T = types[k];
        size_t nb = ggml_row_size(T, n), bb = ggml_type_size(T);
        long bad_q = -1, bad_d = 0;
        ggml_quantize_chunk(T, x, qa, 0, 1, n, NULL);
        if (lp_type_can_quantize((lp_type)T)) {
            bad_q = 0;
            if (lp_quantize_row((lp_type)T, x, qb, n) != nb) bad_q = (long)(nb / bb);
            else for (size_t b = 0; b < nb / bb; b++) bad_q += memcmp(qa + b * bb, qb + b * bb, bb) != 0;
        }
        ggml_get_type_traits(T)->to_float(qa, ya, n);
        if (!lp_dequantize_row((lp_type)T, qa, yb, n)) bad_d = (long)(nb / bb);
        else {
            int64_t bs = ggml_blck_size(T);
            for (int64_t b = 0; b < n / bs; b++) bad_d += memcmp(ya + b * bs, yb + b * bs, (size_t)bs * 4) != 0;
        }
        printf("%-5s %zu blocks: quantize %ld differ%s, dequantize %ld differ\n", ggml_type_name(T), nb / bb,
               bad_q < 0 ? 0 : bad_q, bad_q < 0 ? " (not implemented in loupe)" : "", bad_d);
        bad_total += bad_q > 0 || bad_d > 0;
    }
    free(x), free(ya), free(yb), free(qa), free(qb);
    return bad_total ? 1 : 0;
}
#endif

int main(int argc, char **argv) {
#ifdef LOUPE_CHECK
    if (argc > 1 && strcmp(argv[1], "--check") == 0) return check();
#endif
    const char *out = argc > 1 ? argv[1] : "tests/fixtures/quant_ggml.gguf";
    static const enum ggml_type types[] = {
        GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
    };
    const int ntypes = (int)(sizeof types / sizeof types[0]);

    struct ggml_init_params ip = {.mem_size = 16u << 20, .mem_buffer = NULL, .no_alloc = false};
    struct ggml_context *ctx = ggml_init(ip);
    struct gguf_context *gg = gguf_init_empty();
    gguf_set_val_str(gg, "general.description",
                     "loupe test fixture: ggml quantize/dequantize reference (tools/llamacpp/ggml_fixtures.c)");
    gguf_set_val_u32(gg, "loupe.fixture.rows", NROW);
    gguf_set_val_u32(gg, "loupe.fixture.row_length", NE0);

    static float base[NROW * NE0];
    make_rows(base);

    for (int t = 0; t < ntypes; t++) {
        enum ggml_type T = types[t];
        const char *name = ggml_type_name(T);
        char buf[64];

        struct ggml_tensor *src = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, NE0, NROW);
        struct ggml_tensor *q = ggml_new_tensor_2d(ctx, T, NE0, NROW);
        struct ggml_tensor *deq = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, NE0, NROW);
        float *xs = src->data;
        memcpy(xs, base, sizeof base);
        if (T == GGML_TYPE_F16 || T == GGML_TYPE_BF16) special_row(xs + (NROW - 1) * NE0);

        if (ggml_quantize_requires_imatrix(T)) {
            fprintf(stderr, "%s needs an imatrix\n", name);
            return 1;
        }
        size_t nb = ggml_quantize_chunk(T, xs, q->data, 0, NROW, NE0, NULL);
        if (nb != ggml_nbytes(q)) {
            fprintf(stderr, "%s: quantize wrote %zu bytes, want %zu\n", name, nb, ggml_nbytes(q));
            return 1;
        }
        /* The reference quantizer must agree with the chunk API (it is what
         * loupe reproduces). */
        const struct ggml_type_traits *tr = ggml_get_type_traits(T);
        void *chk = malloc(nb);
        tr->from_float_ref(xs, chk, (int64_t)NROW * NE0);
        if (memcmp(chk, q->data, nb) != 0) fprintf(stderr, "note: %s from_float_ref differs from ggml_quantize_chunk\n", name);
        free(chk);
        tr->to_float(q->data, deq->data, (int64_t)NROW * NE0);

        snprintf(buf, sizeof buf, "src.%s", name);
        ggml_set_name(src, buf);
        snprintf(buf, sizeof buf, "quant.%s", name);
        ggml_set_name(q, buf);
        snprintf(buf, sizeof buf, "deq.%s", name);
        ggml_set_name(deq, buf);
        gguf_add_tensor(gg, src);
        gguf_add_tensor(gg, q);
        gguf_add_tensor(gg, deq);
    }

    if (!gguf_write_to_file(gg, out, false)) {
        fprintf(stderr, "cannot write %s\n", out);
        return 1;
    }
    gguf_free(gg);
    ggml_free(ctx);
    printf("wrote %s\n", out);
    return 0;
}
