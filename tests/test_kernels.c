/* tests/test_kernels.c — every kernel against a naive double-precision
 * reference written here.
 *
 * Tolerances. For a length-n f32 dot product (or any f32 summation of n
 * products, in any order, with or without FMA) the classic bound is
 *     |computed - exact| <= gamma_n * sum_k |a_k b_k|,  gamma_n ~ n * 2^-24,
 * plus one rounding of the stored result. dot_tol() uses (n + 2) * 2^-24 *
 * sum|a b|: a worst-case bound, never a guess, so any real bug (wrong row,
 * wrong block, missed tail) lands far outside it. Element-wise ops get a few
 * ulp (relative 1e-6 ~ 8 ulp) or exact equality where the op is a single
 * IEEE operation. RoPE and attention state their own bounds below. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "types.h"

#define EPS32 0x1p-24

// ----------------------------------------------------------------------------
// helpers

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_u64(void) { // splitmix64
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_f(float lo, float hi) { // uniform in [lo, hi)
    return lo + (hi - lo) * (float)((rng_u64() >> 40) * 0x1p-24);
}

static float *rand_vec(int64_t n, float lo, float hi) {
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++) v[i] = rng_f(lo, hi);
    return v;
}

static double dot_tol(int64_t n, double abs_sum) {
    return (double)(n + 2) * EPS32 * abs_sum + 1e-30;
}

// |got - want| <= rel * |want| + abs
static void assert_close(double got, double want, double rel, double abs, const char *what, int64_t idx) {
    double err = fabs(got - want);
    double tol = rel * fabs(want) + abs;
    if (!(err <= tol)) {
        fail_msg("%s[%lld]: got %.9g want %.9g (err %.3g > tol %.3g)", what, (long long)idx, got, want, err, tol);
    }
}

// ----------------------------------------------------------------------------
// matmul

static void check_matmul(int M, int N, int K, bool accumulate) {
    float *A = rand_vec((int64_t)M * K, -1, 1);  // (M, K)
    float *B = rand_vec((int64_t)N * K, -1, 1);  // (N, K)
    float *C = rand_vec((int64_t)M * N, -1, 1);  // (M, N)
    float *C0 = malloc((size_t)M * N * sizeof(float));
    assert_non_null(C0);
    memcpy(C0, C, (size_t)M * N * sizeof(float));
    lp_matmul(A, B, C, M, N, K, accumulate);
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double ref = accumulate ? C0[i * N + j] : 0.0, abs_sum = accumulate ? fabs(C0[i * N + j]) : 0.0;
            for (int k = 0; k < K; k++) {
                ref += (double)A[i * K + k] * B[j * K + k];
                abs_sum += fabs((double)A[i * K + k] * B[j * K + k]);
            }
            assert_close(C[i * N + j], ref, 0, dot_tol(K + 1, abs_sum), "matmul", i * N + j);
        }
    }
    free(A); free(B); free(C); free(C0);
}

static void test_matmul_sizes(void **state) {
    (void)state;
    static const int sz[] = {1, 3, 17, 64, 65};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 5; b++)
            for (size_t c = 0; c < 5; c++) {
                check_matmul(sz[a], sz[b], sz[c], false);
                check_matmul(sz[a], sz[b], sz[c], true);
            }
    check_matmul(130, 257, 300, false);
    check_matmul(7, 129, 1000, true);
}

// ----------------------------------------------------------------------------
// matvec and matmul_w for every supported type

// The types lp_type_can_dequantize documents. The test fails if one is missing.
static const lp_type matvec_types[] = {
    LP_TYPE_F32, LP_TYPE_F16, LP_TYPE_BF16, LP_TYPE_Q8_0, LP_TYPE_Q4_0,
    LP_TYPE_Q4_1, LP_TYPE_Q5_0, LP_TYPE_Q4_K, LP_TYPE_Q5_K, LP_TYPE_Q6_K,
};

// Byte offsets of the f16 scale fields inside one block (ggml's layouts),
// -1 terminated. Used to build blocks by hand for types without a quantizer:
// random bytes everywhere, then sane scales so values stay finite and O(1).
static void block_f16_fields(lp_type t, int offs[3], size_t *bytes) {
    offs[0] = offs[1] = offs[2] = -1;
    switch (t) {
    case LP_TYPE_Q4_0: offs[0] = 0; *bytes = 18; break;                 // d, qs[16]
    case LP_TYPE_Q4_1: offs[0] = 0; offs[1] = 2; *bytes = 20; break;    // d, m, qs[16]
    case LP_TYPE_Q5_0: offs[0] = 0; *bytes = 22; break;                 // d, qh[4], qs[16]
    case LP_TYPE_Q8_0: offs[0] = 0; *bytes = 34; break;                 // d, qs[32]
    case LP_TYPE_Q4_K: offs[0] = 0; offs[1] = 2; *bytes = 144; break;   // d, dmin, scales[12], qs[128]
    case LP_TYPE_Q5_K: offs[0] = 0; offs[1] = 2; *bytes = 176; break;   // d, dmin, scales[12], qh[32], qs[128]
    case LP_TYPE_Q6_K: offs[0] = 208; *bytes = 210; break;              // ql[128], qh[64], scales[16], d
    default: *bytes = 0; break;
    }
}

// Fill W (rows, cols) of type t: quantized from random floats when loupe can
// quantize t, otherwise random blocks built by hand.
static void *make_weights(lp_type t, int64_t rows, int64_t cols, size_t *row_bytes) {
    *row_bytes = lp_row_size(t, cols);
    assert_true(*row_bytes > 0);
    uint8_t *W = malloc(*row_bytes * (size_t)rows);
    assert_non_null(W);
    if (lp_type_can_quantize(t)) {
        float *src = rand_vec(cols, -1, 1); // (cols)
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t c = 0; c < cols; c++) src[c] = rng_f(-1, 1);
            assert_int_equal(lp_quantize_row(t, src, W + (size_t)r * *row_bytes, cols), *row_bytes);
        }
        free(src);
        return W;
    }
    int offs[3];
    size_t bb;
    block_f16_fields(t, offs, &bb);
    assert_true(bb > 0);
    assert_int_equal(lp_type_block_bytes(t), bb);
    size_t n_blocks = *row_bytes * (size_t)rows / bb;
    for (size_t i = 0; i < *row_bytes * (size_t)rows; i++) W[i] = (uint8_t)rng_u64();
    for (size_t b = 0; b < n_blocks; b++) {
        for (int f = 0; f < 3 && offs[f] >= 0; f++) {
            uint16_t h = lp_f32_to_f16(rng_f(0.001f, 0.03f) * (f == 1 && t == LP_TYPE_Q4_1 ? -1.0f : 1.0f));
            memcpy(W + b * bb + (size_t)offs[f], &h, 2);
        }
    }
    return W;
}

// lp_matvec for a type whose x it quantizes to q8_0 (ggml's vec_dot_type):
//   - x's blocks are quantized as ggml's x86 quantize_row_q8_0 does
//     (checked here value by value: d = f16(amax/127), q = rint(x*127/amax));
//   - the SIMD result equals the scalar reference lp_matvec_q8_ref bit for
//     bit, for every thread count (one fixed accumulation layout);
//   - against a double dot with the *quantized* x, the error is f32 rounding
//     only: dot_tol (every lane sum is an exact integer; d_w*d_x, the fma and
//     the reduction tree round at most cols/32 + 6 times per term);
//   - against the f32-x reference, the extra error is x's quantization: each
//     x_j moves by at most d_x/2, so |err| <= sum_b d_x_b/2 * sum_j |w_bj|.
static void check_matvec_q8(lp_type t, const uint8_t *W, size_t rb, const float *x, int64_t rows, int64_t cols,
                            const double *ref, const double *tol) {
    const int64_t nb = cols / 32;
    uint8_t *xq = malloc((size_t)nb * 34);   // (nb) q8_0 blocks of x
    float *xd = malloc((size_t)cols * sizeof(float));
    float *wf = malloc((size_t)cols * sizeof(float));
    float *y = malloc((size_t)rows * sizeof(float)), *yr = malloc((size_t)rows * sizeof(float));
    assert_true(xq && xd && wf && y && yr);
    lp_quantize_row_q8_0_act(x, xq, cols);
    assert_true(lp_dequantize_row(LP_TYPE_Q8_0, xq, xd, cols));
    for (int64_t b = 0; b < nb; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        uint16_t h;
        memcpy(&h, xq + b * 34, 2);
        assert_true(lp_f16_to_f32(h) == lp_f16_to_f32(lp_f32_to_f16(amax / 127.f)));
        for (int j = 0; j < 32; j++) {
            float v = rintf(x[b * 32 + j] * (amax != 0 ? 127.f / amax : 0.f));
            assert_int_equal(((const int8_t *)(xq + b * 34 + 2))[j], (int)v);
        }
    }
    char what[64];
    snprintf(what, sizeof what, "matvec q8 %s", lp_type_name(t));
    assert_true(lp_matvec_q8_ref(t, W, x, yr, rows, cols));
    assert_true(lp_matvec(t, W, x, y, rows, cols, NULL));
    assert_memory_equal(y, yr, (size_t)rows * sizeof(float));
    for (int nt = 1; nt <= 3; nt++) {
        lp_pool *pool = lp_pool_new(nt);
        assert_non_null(pool);
        memset(y, 0xff, (size_t)rows * sizeof(float));
        assert_true(lp_matvec(t, W, x, y, rows, cols, pool));
        assert_memory_equal(y, yr, (size_t)rows * sizeof(float));
        lp_pool_free(pool);
    }
    for (int64_t r = 0; r < rows; r++) {
        assert_true(lp_dequantize_row(t, W + (size_t)r * rb, wf, cols));
        double s = 0, a = 0, qerr = 0;
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h;
            memcpy(&h, xq + b * 34, 2);
            double wsum = 0;
            for (int j = 0; j < 32; j++) {
                int64_t c = b * 32 + j;
                s += (double)wf[c] * xd[c];
                a += fabs((double)wf[c] * xd[c]);
                wsum += fabs((double)wf[c]);
            }
            qerr += 0.5 * lp_f16_to_f32(h) * wsum * (1 + 1e-6); // (1 + 1e-6): rint(x*id) vs x/d rounding
        }
        assert_close(y[r], s, 0, dot_tol(cols, a), what, r);
        assert_close(y[r], ref[r], 0, qerr + tol[r] + dot_tol(cols, a), what, r);
    }
    free(xq); free(xd); free(wf); free(y); free(yr);
}

static void check_matvec_type(lp_type t, int64_t rows, int64_t cols) {
    size_t rb;
    uint8_t *W = make_weights(t, rows, cols, &rb);  // (rows, rb)
    float *x = rand_vec(cols, -1, 1);               // (cols)
    float *wf = malloc((size_t)cols * sizeof(float)); // (cols) one dequantized row
    double *ref = malloc((size_t)rows * sizeof(double));
    double *tol = malloc((size_t)rows * sizeof(double));
    assert_true(wf && ref && tol);
    for (int64_t r = 0; r < rows; r++) {
        assert_true(lp_dequantize_row(t, W + (size_t)r * rb, wf, cols));
        double s = 0, a = 0;
        for (int64_t c = 0; c < cols; c++) {
            assert_true(isfinite(wf[c]));
            s += (double)wf[c] * x[c];
            a += fabs((double)wf[c] * x[c]);
        }
        ref[r] = s;
        tol[r] = dot_tol(cols, a);
    }

    // matvec (exact path) with no pool, 1, 2 and 3 threads: within tolerance, bitwise equal
    float *y0 = malloc((size_t)rows * sizeof(float));  // (rows)
    float *y1 = malloc((size_t)rows * sizeof(float));  // (rows)
    assert_true(y0 && y1);
    assert_true(lp_matvec_exact(t, W, x, y0, rows, cols, NULL));
    char what[64];
    snprintf(what, sizeof what, "matvec_exact %s", lp_type_name(t));
    for (int64_t r = 0; r < rows; r++) assert_close(y0[r], ref[r], 0, tol[r], what, r);
    for (int nt = 1; nt <= 3; nt++) {
        lp_pool *pool = lp_pool_new(nt);
        assert_non_null(pool);
        memset(y1, 0xff, (size_t)rows * sizeof(float));
        assert_true(lp_matvec_exact(t, W, x, y1, rows, cols, pool));
        assert_memory_equal(y0, y1, (size_t)rows * sizeof(float));
        lp_pool_free(pool);
    }

    // the default path: f32 x for the types it does not quantize (then it
    // must equal the exact path bit for bit), q8_0 x for q4_0 / q8_0
    assert_true(lp_matvec(t, W, x, y1, rows, cols, NULL));
    if (!lp_matvec_quantizes_x(t)) {
        assert_memory_equal(y0, y1, (size_t)rows * sizeof(float));
    } else {
        check_matvec_q8(t, W, rb, x, rows, cols, ref, tol);
    }
    assert_false(lp_matvec_q8_ref(t == LP_TYPE_Q4_0 || t == LP_TYPE_Q8_0 ? LP_TYPE_Q4_1 : t, W, x, y1, rows, cols));

    // matmul_w: M = 1 (exact matvec path) and M = 5 (panels + sgemm), 2 threads
    const int M = 5;
    float *X = rand_vec((int64_t)M * cols, -1, 1);      // (M, cols)
    float *Y = malloc((size_t)M * rows * sizeof(float)); // (M, rows)
    assert_non_null(Y);
    memcpy(X, x, (size_t)cols * sizeof(float)); // token 0 is x
    lp_pool *pool = lp_pool_new(2);
    assert_non_null(pool);
    snprintf(what, sizeof what, "matmul_w %s", lp_type_name(t));
    assert_true(lp_matmul_w(t, W, X, Y, 1, rows, cols, pool));
    for (int64_t r = 0; r < rows; r++) assert_close(Y[r], ref[r], 0, tol[r], what, r);
    assert_true(lp_matmul_w(t, W, X, Y, M, rows, cols, pool));
    for (int m = 0; m < M; m++) {
        for (int64_t r = 0; r < rows; r++) {
            assert_true(lp_dequantize_row(t, W + (size_t)r * rb, wf, cols));
            double s = 0, a = 0;
            for (int64_t c = 0; c < cols; c++) {
                s += (double)wf[c] * X[m * cols + c];
                a += fabs((double)wf[c] * X[m * cols + c]);
            }
            assert_close(Y[m * rows + r], s, 0, dot_tol(cols, a), what, m * rows + r);
        }
    }
    lp_pool_free(pool);

    free(W); free(x); free(wf); free(ref); free(tol); free(y0); free(y1); free(X); free(Y);
}

static void test_matvec_all_types(void **state) {
    (void)state;
    int missing = 0;
    for (size_t i = 0; i < sizeof matvec_types / sizeof matvec_types[0]; i++) {
        lp_type t = matvec_types[i];
        if (!lp_type_can_dequantize(t)) {
            print_error("type %d (%s) should be dequantizable\n", (int)t, lp_type_name(t));
            missing++;
            continue;
        }
        check_matvec_type(t, 37, 512);   // odd rows, one chunk
        check_matvec_type(t, 3, 4608);   // several chunks with a partial tail (18 super-blocks)
    }
    assert_int_equal(missing, 0);
    // every dequantizable type is covered by the list above
    for (int t = 0; t < LP_TYPE_COUNT; t++) {
        if (!lp_type_can_dequantize((lp_type)t)) continue;
        bool listed = false;
        for (size_t i = 0; i < sizeof matvec_types / sizeof matvec_types[0]; i++) listed |= matvec_types[i] == (lp_type)t;
        if (!listed) fail_msg("type %d is dequantizable but not tested", t);
    }
}

static void test_matmul_w_panels(void **state) {
    (void)state;
    // more rows than one panel (256) with a partial last panel, f32 and q8_0
    check_matvec_type(LP_TYPE_F32, 300, 64);
    check_matvec_type(LP_TYPE_Q8_0, 531, 96);
}

// The quantized-x path at its edges: an odd number of blocks (SIMD pair
// tail), more than 256 blocks (scale passes) and more than
// LP_MATVEC_STACK_COLS columns (heap activations), q8_0 weights over the
// whole int8 range (-128 included), x with all-zero blocks and blocks of
// wildly different magnitude.
static void test_matvec_q8_edges(void **state) {
    (void)state;
    static const int64_t colss[] = {32, 96, 8224};
    for (size_t ci = 0; ci < 3; ci++) {
        const int64_t cols = colss[ci], rows = 9;
        for (int ti = 0; ti < 2; ti++) {
            lp_type t = ti ? LP_TYPE_Q8_0 : LP_TYPE_Q4_0;
            size_t rb = lp_row_size(t, cols), bb = lp_type_block_bytes(t);
            uint8_t *W = malloc(rb * (size_t)rows);
            assert_non_null(W);
            for (size_t i = 0; i < rb * (size_t)rows; i++) W[i] = (uint8_t)rng_u64();
            for (size_t b = 0; b < rb * (size_t)rows / bb; b++) {
                uint16_t h = lp_f32_to_f16(rng_f(0.001f, 0.03f));
                memcpy(W + b * bb, &h, 2);
            }
            float *x = rand_vec(cols, -1, 1);
            for (int64_t b = 0; b < cols / 32; b++) {
                float m = (b % 3 == 1) ? 0.0f : (b % 3 == 2) ? 1e3f : 1e-3f;
                for (int j = 0; j < 32; j++) x[b * 32 + j] *= m;
            }
            double *ref = malloc((size_t)rows * sizeof(double)), *tol = malloc((size_t)rows * sizeof(double));
            float *wf = malloc((size_t)cols * sizeof(float));
            assert_true(ref && tol && wf);
            for (int64_t r = 0; r < rows; r++) {
                assert_true(lp_dequantize_row(t, W + (size_t)r * rb, wf, cols));
                double sm = 0, a = 0;
                for (int64_t c = 0; c < cols; c++) {
                    sm += (double)wf[c] * x[c];
                    a += fabs((double)wf[c] * x[c]);
                }
                ref[r] = sm;
                tol[r] = dot_tol(cols, a);
            }
            check_matvec_q8(t, W, rb, x, rows, cols, ref, tol);
            free(W); free(x); free(ref); free(tol); free(wf);
        }
    }
}

static void test_matvec_rejects(void **state) {
    (void)state;
    float x[64] = {0}, y[4];
    uint8_t W[4 * 64 * 4] = {0};
    assert_false(lp_matvec(LP_TYPE_Q4_0, W, x, y, 2, 33, NULL));   // not a whole block
    assert_false(lp_matvec(LP_TYPE_Q2_K, W, x, y, 2, 256, NULL));  // not computable
    assert_false(lp_matvec(LP_TYPE_I32, W, x, y, 2, 16, NULL));
    assert_false(lp_matmul_w(LP_TYPE_Q4_0, W, x, y, 2, 2, 33, NULL));
    assert_false(lp_matmul_w(LP_TYPE_Q2_K, W, x, y, 2, 2, 256, NULL));
    assert_true(lp_matvec(LP_TYPE_F32, W, x, y, 0, 16, NULL));       // no rows: nothing to do
}

// ----------------------------------------------------------------------------
// softmax, norms, activations, element-wise

static void test_softmax(void **state) {
    (void)state;
    static const int64_t ns[] = {1, 2, 7, 64, 1000};
    // offsets up to 1000 test max subtraction: exp(1000) overflows otherwise.
    // Tolerance: relative 1e-6 (~17 ulp): x - max is exact here (Sterbenz) or
    // off by half an ulp, expf is within ~1 ulp, the sum is in double.
    static const float offs[] = {0.0f, 1000.0f, -1000.0f};
    for (size_t k = 0; k < 5; k++) {
        for (size_t o = 0; o < 3; o++) {
            int64_t n = ns[k];
            float *x = rand_vec(n, -8, 8); // (n)
            double *ref = malloc((size_t)n * sizeof(double));
            assert_non_null(ref);
            for (int64_t i = 0; i < n; i++) x[i] += offs[o];
            double max = x[0], sum = 0;
            for (int64_t i = 1; i < n; i++) max = fmax(max, x[i]);
            for (int64_t i = 0; i < n; i++) sum += ref[i] = exp((double)x[i] - max);
            lp_softmax(x, n);
            double total = 0;
            for (int64_t i = 0; i < n; i++) {
                assert_close(x[i], ref[i] / sum, 1e-6, 1e-30, "softmax", i);
                total += x[i];
            }
            assert_close(total, 1.0, 0, 1e-5, "softmax sum", 0);
            free(x); free(ref);
        }
    }
}

static void test_rmsnorm(void **state) {
    (void)state;
    // Tolerance: relative 1e-6 plus 1e-7 absolute: sum of squares in double,
    // then ~4 roundings (mean, sqrtf, divide, 2 multiplies).
    static const int64_t ns[] = {1, 5, 64, 1000};
    for (size_t k = 0; k < 4; k++) {
        int64_t n = ns[k];
        float *x = rand_vec(n, -3, 3), *w = rand_vec(n, -2, 2), *out = rand_vec(n, 0, 1);
        const float eps = 1e-6f;
        for (int with_w = 0; with_w < 2; with_w++) {
            double ss = 0;
            for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
            double sc = 1.0 / sqrt(ss / n + (double)eps);
            lp_rmsnorm(out, x, with_w ? w : NULL, n, eps);
            for (int64_t i = 0; i < n; i++)
                assert_close(out[i], x[i] * sc * (with_w ? w[i] : 1.0), 1e-6, 1e-7, "rmsnorm", i);
        }
        // in place
        float *y = malloc((size_t)n * sizeof(float));
        assert_non_null(y);
        lp_rmsnorm(out, x, w, n, eps);
        memcpy(y, x, (size_t)n * sizeof(float));
        lp_rmsnorm(y, y, w, n, eps);
        assert_memory_equal(y, out, (size_t)n * sizeof(float));
        free(x); free(w); free(out); free(y);
    }
}

static void test_layernorm(void **state) {
    (void)state;
    // Tolerance: 1e-6 relative + 1e-6 absolute. Outputs are O(1) (unit
    // variance); x - mean cancels for values near the mean, which costs one
    // ulp of |mean| (~1e-7 after scaling), hence the absolute part.
    static const int64_t ns[] = {2, 5, 64, 1000};
    for (size_t k = 0; k < 4; k++) {
        int64_t n = ns[k];
        float *x = rand_vec(n, -3, 5), *w = rand_vec(n, -2, 2), *b = rand_vec(n, -1, 1), *out = rand_vec(n, 0, 1);
        const float eps = 1e-5f;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; i++) mean += x[i];
        mean /= n;
        for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
        var /= n;
        double sc = 1.0 / sqrt(var + (double)eps);
        for (int mode = 0; mode < 4; mode++) {
            const float *wp = (mode & 1) ? w : NULL, *bp = (mode & 2) ? b : NULL;
            lp_layernorm(out, x, wp, bp, n, eps);
            for (int64_t i = 0; i < n; i++) {
                double ref = (x[i] - mean) * sc * (wp ? wp[i] : 1.0) + (bp ? bp[i] : 0.0);
                assert_close(out[i], ref, 1e-6, 1e-6, "layernorm", i);
            }
        }
        free(x); free(w); free(b); free(out);
    }
}

static void test_activations(void **state) {
    (void)state;
    // Inputs over [-8, 8] plus 0 and both ends. Tolerance: relative 1e-6 and
    // absolute 1e-6: the libm calls are within a couple of ulp; for large
    // negative x, gelu is 1 + tanh/erf of ~ -1, whose float cancellation
    // leaves an absolute error below 1e-6 on an output that is ~0 anyway.
    const int64_t n = 2001;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    assert_true(x && y);
    for (int64_t i = 0; i < n; i++) x[i] = -8.0f + 16.0f * (float)i / (float)(n - 1);
    const double sqrt_2_over_pi = sqrt(2.0 / M_PI);
    for (int op = 0; op < 4; op++) {
        memcpy(y, x, (size_t)n * sizeof(float));
        const char *name = "";
        switch (op) {
        case 0: lp_gelu_erf(y, n); name = "gelu_erf"; break;
        case 1: lp_gelu_tanh(y, n); name = "gelu_tanh"; break;
        case 2: lp_quick_gelu(y, n); name = "quick_gelu"; break;
        case 3: lp_silu(y, n); name = "silu"; break;
        }
        for (int64_t i = 0; i < n; i++) {
            double v = x[i], ref = 0;
            switch (op) {
            case 0: ref = 0.5 * v * (1.0 + erf(v / sqrt(2.0))); break;
            case 1: ref = 0.5 * v * (1.0 + tanh(sqrt_2_over_pi * (v + 0.044715 * v * v * v))); break;
            case 2: ref = v / (1.0 + exp(-1.702 * v)); break;
            case 3: ref = v / (1.0 + exp(-v)); break;
            }
            assert_close(y[i], ref, 1e-6, 1e-6, name, i);
        }
    }
    free(x); free(y);
}

static void test_elementwise(void **state) {
    (void)state;
    // One IEEE operation per element: the f32 result must equal the double
    // result rounded to f32, exactly (the double of two floats' sum/product
    // is exact, so rounding it once gives the correctly rounded f32).
    const int64_t n = 1027;
    float *a = rand_vec(n, -10, 10), *b = rand_vec(n, -10, 10), *y = malloc((size_t)n * sizeof(float));
    assert_non_null(y);
    memcpy(y, a, (size_t)n * sizeof(float));
    lp_add(y, b, n);
    for (int64_t i = 0; i < n; i++) assert_true(y[i] == (float)((double)a[i] + b[i]));
    memcpy(y, a, (size_t)n * sizeof(float));
    lp_mul(y, b, n);
    for (int64_t i = 0; i < n; i++) assert_true(y[i] == (float)((double)a[i] * b[i]));
    memcpy(y, a, (size_t)n * sizeof(float));
    lp_scale(y, 0.37f, n);
    for (int64_t i = 0; i < n; i++) assert_true(y[i] == (float)((double)a[i] * 0.37f));
    free(a); free(b); free(y);
}

// ----------------------------------------------------------------------------
// RoPE
//
// Reference: the explicit formula in double, theta_i = pos * base^(-2i/n_rot).
// The kernel follows ggml and builds theta_i by i float multiplications of
// base^(-2/n_rot) (itself one powf), so theta_i carries a relative error of at
// most ~(i + 2) * 2^-24 <= (n_rot/2 + 2) * 2^-24, i.e. an absolute error up to
// pos * (n_rot/2 + 2) * 2^-24 rad. A rotation error of d rad moves an output
// by at most d * (|x0| + |x1|); add 1e-6 relative for cosf/sinf and the two
// products. The dims past n_rot must be untouched (exact).

static void check_rope(int n_head, int head_dim, int n_rot, int64_t pos, float base, lp_rope_mode mode) {
    const int64_t n = (int64_t)n_head * head_dim;
    float *x = rand_vec(n, -2, 2);        // (n_head, head_dim)
    float *y = malloc((size_t)n * sizeof(float));
    assert_non_null(y);
    memcpy(y, x, (size_t)n * sizeof(float));
    lp_rope(y, n_head, head_dim, n_rot, pos, base, mode);
    const double dtheta = (double)pos * (n_rot / 2 + 2) * EPS32;
    for (int h = 0; h < n_head; h++) {
        const float *xh = x + (int64_t)h * head_dim, *yh = y + (int64_t)h * head_dim;
        for (int i = 0; i < n_rot / 2; i++) {
            int i0 = mode == LP_ROPE_NEOX ? i : 2 * i;
            int i1 = mode == LP_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
            double theta = (double)pos * pow((double)base, -2.0 * i / n_rot);
            double c = cos(theta), s = sin(theta);
            double r0 = xh[i0] * c - xh[i1] * s, r1 = xh[i0] * s + xh[i1] * c;
            double tol = (dtheta + 1e-6) * (fabs(xh[i0]) + fabs(xh[i1]));
            assert_close(yh[i0], r0, 0, tol, "rope x0", h * head_dim + i0);
            assert_close(yh[i1], r1, 0, tol, "rope x1", h * head_dim + i1);
        }
        for (int d = n_rot; d < head_dim; d++) assert_true(yh[d] == xh[d]);
    }
    free(x); free(y);
}

static void test_rope(void **state) {
    (void)state;
    static const int64_t poss[] = {0, 1, 7, 100, 513, 4097};
    for (int m = 0; m < 2; m++) {
        lp_rope_mode mode = m ? LP_ROPE_NEOX : LP_ROPE_NORMAL;
        for (size_t p = 0; p < 6; p++) {
            check_rope(3, 64, 64, poss[p], 10000.0f, mode);     // full rotation
            check_rope(2, 64, 32, poss[p], 10000.0f, mode);     // partial rotation
            check_rope(4, 10, 6, poss[p], 1000000.0f, mode);    // tiny head, big base
            check_rope(1, 128, 128, poss[p], 1000000.0f, mode);
        }
    }
    // pos 0 is the identity, exactly
    float x[16], y[16];
    for (int i = 0; i < 16; i++) x[i] = y[i] = rng_f(-1, 1);
    lp_rope(y, 2, 8, 8, 0, 10000.0f, LP_ROPE_NEOX);
    assert_memory_equal(x, y, sizeof x);
    // normal and neox differ (different pairs rotate)
    float a[8], b[8];
    for (int i = 0; i < 8; i++) a[i] = b[i] = (float)(i + 1);
    lp_rope(a, 1, 8, 8, 3, 10000.0f, LP_ROPE_NORMAL);
    lp_rope(b, 1, 8, 8, 3, 10000.0f, LP_ROPE_NEOX);
    assert_true(memcmp(a, b, sizeof a) != 0);
}

// ----------------------------------------------------------------------------
// attention
//
// Reference: per query token i and head h, kv head h / (n_head / n_head_kv),
// keys j visible iff !causal or j <= q_pos0 + i, softmax in double.
// Tolerance: each score is an f32 dot of head_dim terms with |q|,|k| <= 1,
// so its error is <= (head_dim + 2) 2^-24 * head_dim * scale =: e. Softmax
// weights then carry relative error <= ~2e (plus a few ulp for expf), and the
// output, a weighted mean of |v| <= 1, errs by <= 4e + 1e-6 absolute.

static void ref_attention(double *out, const float *q, const float *k, const float *v,
                          int n_q, int n_kv, int n_head, int n_head_kv, int hd,
                          int64_t q_pos0, bool causal, float scale) {
    double *att = malloc((size_t)(n_kv > 0 ? n_kv : 1) * sizeof(double));
    assert_non_null(att);
    for (int i = 0; i < n_q; i++) {
        for (int h = 0; h < n_head; h++) {
            int kvh = h / (n_head / n_head_kv);
            const float *qi = q + ((int64_t)i * n_head + h) * hd;
            double *o = out + ((int64_t)i * n_head + h) * hd;
            double max = -INFINITY, sum = 0;
            int n_vis = 0;
            for (int j = 0; j < n_kv; j++) {
                if (causal && j > q_pos0 + i) break;
                const float *kj = k + ((int64_t)j * n_head_kv + kvh) * hd;
                double s = 0;
                for (int d = 0; d < hd; d++) s += (double)qi[d] * kj[d];
                att[j] = s * scale;
                max = fmax(max, att[j]);
                n_vis = j + 1;
            }
            for (int d = 0; d < hd; d++) o[d] = 0;
            for (int j = 0; j < n_vis; j++) sum += att[j] = exp(att[j] - max);
            for (int j = 0; j < n_vis; j++) {
                const float *vj = v + ((int64_t)j * n_head_kv + kvh) * hd;
                for (int d = 0; d < hd; d++) o[d] += att[j] / sum * vj[d];
            }
        }
    }
    free(att);
}

static void check_attention(int n_q, int n_kv, int n_head, int n_head_kv, int hd, int64_t q_pos0, bool causal) {
    const int64_t nq = (int64_t)n_q * n_head * hd, nk = (int64_t)n_kv * n_head_kv * hd;
    float *q = rand_vec(nq, -1, 1);   // (n_q, n_head, hd)
    float *k = rand_vec(nk, -1, 1);   // (n_kv, n_head_kv, hd)
    float *v = rand_vec(nk, -1, 1);   // (n_kv, n_head_kv, hd)
    float *out0 = malloc((size_t)nq * sizeof(float)), *out1 = malloc((size_t)nq * sizeof(float));
    double *ref = malloc((size_t)nq * sizeof(double));
    assert_true(out0 && out1 && ref);
    const float scale = 1.0f / sqrtf((float)hd);
    // scores up to hd * scale = sqrt(hd): sharpen them so the softmax is not flat
    for (int64_t i = 0; i < nq; i++) q[i] *= 2.0f;
    const double e = (hd + 2) * EPS32 * 2.0 * hd * scale;
    ref_attention(ref, q, k, v, n_q, n_kv, n_head, n_head_kv, hd, q_pos0, causal, scale);
    assert_true(lp_attention(out0, q, k, v, n_q, n_kv, n_head, n_head_kv, hd, q_pos0, causal, scale, NULL));
    for (int64_t i = 0; i < nq; i++) assert_close(out0[i], ref[i], 0, 4 * e + 1e-6, causal ? "attn causal" : "attn full", i);
    for (int nt = 1; nt <= 3; nt++) {
        lp_pool *pool = lp_pool_new(nt);
        assert_non_null(pool);
        assert_true(lp_attention(out1, q, k, v, n_q, n_kv, n_head, n_head_kv, hd, q_pos0, causal, scale, pool));
        assert_memory_equal(out0, out1, (size_t)nq * sizeof(float));
        lp_pool_free(pool);
    }
    free(q); free(k); free(v); free(out0); free(out1); free(ref);
}

static void test_attention_causal_full(void **state) {
    (void)state;
    for (int c = 0; c < 2; c++) {
        check_attention(7, 7, 4, 4, 16, 0, c);     // prefill, MHA
        check_attention(1, 1, 2, 2, 8, 0, c);      // a single token
        check_attention(33, 33, 3, 3, 64, 0, c);
    }
    // causal and full differ on prefill (the first token sees only itself)
    const int n = 5, nh = 2, hd = 8;
    float *q = rand_vec(n * nh * hd, -1, 1), *k = rand_vec(n * nh * hd, -1, 1), *v = rand_vec(n * nh * hd, -1, 1);
    float o1[5 * 2 * 8], o2[5 * 2 * 8];
    assert_true(lp_attention(o1, q, k, v, n, n, nh, nh, hd, 0, true, 0.3f, NULL));
    assert_true(lp_attention(o2, q, k, v, n, n, nh, nh, hd, 0, false, 0.3f, NULL));
    assert_memory_equal(o1, v, hd * sizeof(float)); // token 0 head 0: exactly v[0]
    assert_true(memcmp(o1, o2, sizeof o1) != 0);
    // the last token sees every key in both modes
    for (int i = (n - 1) * nh * hd; i < n * nh * hd; i++) assert_close(o1[i], o2[i], 0, 1e-6, "last token", i);
    free(q); free(k); free(v);
}

static void test_attention_gqa(void **state) {
    (void)state;
    for (int c = 0; c < 2; c++) {
        check_attention(6, 6, 4, 2, 16, 0, c);   // 2 query heads per kv head
        check_attention(6, 6, 4, 1, 16, 0, c);   // multi-query
        check_attention(5, 9, 8, 2, 32, 4, c);   // with a cache
    }
    assert_false(lp_attention(NULL, NULL, NULL, NULL, 1, 1, 4, 3, 8, 0, true, 1.0f, NULL)); // 4 % 3
}

static void test_attention_decode(void **state) {
    (void)state;
    // q_pos0 > 0: a chunk of 3 new tokens after 9 cached, then single-token steps
    check_attention(3, 12, 4, 2, 16, 9, true);
    check_attention(3, 12, 4, 2, 16, 9, false);
    for (int n_kv = 1; n_kv <= 40; n_kv += 13) {
        check_attention(1, n_kv, 4, 2, 32, n_kv - 1, true);  // decode: n_q = 1
        check_attention(1, n_kv, 4, 1, 32, n_kv - 1, false);
    }
    // a causal decode whose position lies before the end of the cache sees a prefix
    check_attention(2, 10, 2, 1, 8, 3, true);
}

// The gemm schedule (n_q >= LP_ATTN_GEMM_MIN_Q): several score blocks per
// head (n_kv large enough that a block holds fewer rows than n_q), causal
// with a cache offset, GQA; and caller scratch: reused across calls, too
// small refused.
static void test_attention_gemm(void **state) {
    (void)state;
    for (int c = 0; c < 2; c++) {
        check_attention(LP_ATTN_GEMM_MIN_Q, 20, 2, 1, 16, 4, c);
        check_attention(70, 75, 4, 2, 64, 5, c);
        check_attention(40, 16400, 2, 1, 8, 16360, c); // 2 blocks of 20 rows
    }
    const int n_q = 24, n_kv = 30, nh = 4, hd = 16;
    float *q = rand_vec(n_q * nh * hd, -1, 1), *k = rand_vec(n_kv * nh * hd, -1, 1), *v = rand_vec(n_kv * nh * hd, -1, 1);
    float *o1 = malloc(sizeof(float) * n_q * nh * hd), *o2 = malloc(sizeof(float) * n_q * nh * hd);
    lp_pool *pool = lp_pool_new(2);
    assert_true(o1 && o2 && pool);
    size_t bytes = lp_attention_scratch_size(n_q, n_kv, nh, hd, pool);
    size_t bytes1 = lp_attention_scratch_size(1, n_kv, nh, hd, pool); // decode schedule
    assert_true(bytes >= (size_t)n_q * n_kv * sizeof(float) && bytes1 >= 2 * (size_t)n_kv * sizeof(float));
    unsigned char *scratch = malloc(bytes + 1);
    assert_non_null(scratch);
    assert_true(lp_attention(o1, q, k, v, n_q, n_kv, nh, nh, hd, n_kv - n_q, true, 0.25f, pool));
    for (int rep = 0; rep < 2; rep++) {
        memset(o2, 0, sizeof(float) * n_q * nh * hd);
        // rep 1: an odd address, which the kernel aligns inside the size's slack
        assert_true(lp_attention_ex(o2, q, k, v, n_q, n_kv, nh, nh, hd, n_kv - n_q, true, 0.25f, scratch + rep, bytes, pool));
        assert_memory_equal(o1, o2, sizeof(float) * n_q * nh * hd);
    }
    assert_false(lp_attention_ex(o2, q, k, v, n_q, n_kv, nh, nh, hd, 0, true, 0.25f, scratch, bytes - 1, pool));
    assert_false(lp_attention_ex(o2, q, k, v, n_q, n_kv, nh, nh, hd, 0, true, 0.25f, NULL, bytes, pool));
    lp_pool_free(pool);
    free(q); free(k); free(v); free(o1); free(o2); free(scratch);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_sizes),
        cmocka_unit_test(test_matvec_all_types),
        cmocka_unit_test(test_matmul_w_panels),
        cmocka_unit_test(test_matvec_q8_edges),
        cmocka_unit_test(test_matvec_rejects),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention_causal_full),
        cmocka_unit_test(test_attention_gqa),
        cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_attention_gemm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
