/* bench/bench_kernels.c — a small benchmark of the hot kernels (not a test).
 *
 * Prints
 *   - lp_matvec weight bandwidth (bytes of W read per second) for q4_0, q8_0
 *     and f16 at 4096x4096 and 11008x4096 on 1 and 2 pool threads, for the
 *     default path (q8 activations for quantized weights, like ggml) and the
 *     exact f32-activation path (lp_matvec_exact);
 *   - ViT-L attention (577 tokens, 16 heads, head_dim 64, no mask) time;
 *   - with argument "all": sgemm and lp_matmul_w GFLOP/s as well; "attn":
 *     attention only; a type name ("q4_0"): that type's matvec only.
 * Every number is the median of 5 trials of >= 0.25 s each.
 *
 * Build:
 *   make bench            (builds build/bench/bench_kernels against build/libloupe.a)
 * or by hand:
 *   cc -O2 -march=native -Iinclude -Icore bench/bench_kernels.c build/libloupe.a \
 *      $(pkg-config --cflags --libs openblas) -lm -pthread -o build/bench/bench_kernels
 *
 * Results (2 vCPUs reporting "AMD EPYC" with AVX-512 VNNI/BF16, 32 MB L3,
 * shared with other jobs, so noisy: medians of 3 runs of the medians above,
 * old and new binaries interleaved). "before" = the tree before the
 * ggml-style kernels: auto-vectorized f32-x dots (f16 through the software
 * converter), per-query attention. 4096x4096 q4_0 (9.4 MB) and q8_0 fit in
 * L3; f16 and the 11008-row matrices stream from DRAM.
 *
 *   GB/s of W                 before          after lp_matvec   after lp_matvec_exact
 *                             1 thr  2 thr    1 thr  2 thr      1 thr  2 thr
 *   q4_0   4096 x 4096         3.67   3.71    14.89  23.10       8.69  15.46
 *   q4_0  11008 x 4096         3.63   3.71    12.87  24.87       8.14  15.94
 *   q8_0   4096 x 4096         7.12  12.02    22.88  21.42      17.13  13.30
 *   q8_0  11008 x 4096         7.11  11.06    16.25  15.79      14.75  16.05
 *   f16    4096 x 4096         1.28   1.32    19.16  19.50      (same path)
 *   f16   11008 x 4096         1.33   1.35    19.05  20.46      (same path)
 *   q4_K   4096 x 4096         0.89   0.88     6.38  10.80      (same path: x stays f32)
 *   q6_K   4096 x 4096         0.75   1.38     6.17  11.61      (same path: x stays f32)
 *   (before, lp_matvec was the exact path; q8_0 / f16 at 2 threads sit at
 *   the memory bandwidth the VM gives, so they do not scale)
 *
 *   ViT-L attention, 577 tokens x 16 heads x 64:
 *                              before 353 ms (1 thr), 356 ms (2 thr)
 *                              after   28 ms (1 thr),  30 ms (2 thr)   (12.6x)
 *   (sgemm runs under OpenBLAS's own 2 threads either way; the pool only
 *   takes the softmax rows, hence 1 vs 2 pool threads hardly differ)
 *
 *   unchanged paths, for reference: matmul_w f16 M=577 4096x1024 ~75
 *   GFLOP/s, matmul_w q8_0 M=64 2048x2048 ~40-48 GFLOP/s, before and after.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "pool.h"
#include "types.h"

#define TRIALS 5
#define MIN_TRIAL_S 0.25

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *rand_vec(int64_t n) {
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) exit(1);
    uint32_t s = 12345;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = (float)(s >> 8) * 0x1p-24f * 2.0f - 1.0f;
    }
    return v;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median over TRIALS of the seconds per call of fn(arg). */
typedef void (*bench_fn)(void *arg);
static double time_median(bench_fn fn, void *arg) {
    double per[TRIALS];
    fn(arg); /* warm up: caches, page faults, OpenBLAS threads */
    for (int t = 0; t < TRIALS; t++) {
        int reps = 0;
        double t0 = now_s(), el;
        do {
            fn(arg);
            reps++;
        } while ((el = now_s() - t0) < MIN_TRIAL_S);
        per[t] = el / reps;
    }
    qsort(per, TRIALS, sizeof per[0], cmp_double);
    return per[TRIALS / 2];
}

static void *quantize_matrix(lp_type t, int64_t rows, int64_t cols, size_t *bytes) {
    float *src = rand_vec(rows * cols);
    size_t rb = lp_row_size(t, cols);
    uint8_t *W = malloc(rb * (size_t)rows);
    if (!W || rb == 0) exit(1);
    for (int64_t r = 0; r < rows; r++) {
        if (lp_quantize_row(t, src + r * cols, W + (size_t)r * rb, cols) != rb) {
            fprintf(stderr, "cannot quantize to %s\n", lp_type_name(t));
            exit(1);
        }
    }
    free(src);
    *bytes = rb * (size_t)rows;
    return W;
}

// ---- matvec

typedef struct mv_arg {
    lp_type t;
    const void *W;
    const float *x;
    float *y;
    int64_t rows, cols;
    lp_pool *pool;
    int exact;
} mv_arg;

static void run_matvec(void *p) {
    mv_arg *a = p;
#ifdef LP_HAVE_MATVEC_EXACT
    if (a->exact) {
        lp_matvec_exact(a->t, a->W, a->x, a->y, a->rows, a->cols, a->pool);
        return;
    }
#endif
    lp_matvec(a->t, a->W, a->x, a->y, a->rows, a->cols, a->pool);
}

static void bench_matvec(lp_type t, int64_t rows, int64_t cols) {
    size_t bytes;
    void *W = quantize_matrix(t, rows, cols, &bytes);
    float *x = rand_vec(cols), *y = rand_vec(rows);
    for (int nt = 1; nt <= 2; nt++) {
        lp_pool *pool = lp_pool_new(nt);
        for (int exact = 0; exact <= 1; exact++) {
#ifndef LP_HAVE_MATVEC_EXACT
            if (exact) continue;
#endif
            mv_arg a = {t, W, x, y, rows, cols, pool, exact};
            double s = time_median(run_matvec, &a);
            printf("matvec %-5s %5lld x %5lld  %d thr  %-7s %6.2f GB/s  %8.1f us\n", lp_type_name(t),
                   (long long)rows, (long long)cols, nt, exact ? "exact" : "default", (double)bytes / s * 1e-9,
                   s * 1e6);
        }
        lp_pool_free(pool);
    }
    free(W); free(x); free(y);
}

/* one line, exact path when the library has it (K-quants: both paths are exact) */
static void bench_matvec_one(lp_type t, int64_t rows, int64_t cols, int nt) {
    size_t bytes;
    void *W;
    if (lp_type_can_quantize(t)) {
        W = quantize_matrix(t, rows, cols, &bytes);
    } else if (t == LP_TYPE_Q6_K) { /* random blocks with a small f16 d (no quantizer in loupe) */
        bytes = lp_row_size(t, cols) * (size_t)rows;
        uint8_t *b = malloc(bytes);
        if (!b) exit(1);
        uint32_t st = 777;
        for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)((st = st * 1664525u + 1013904223u) >> 24);
        for (size_t i = 0; i < bytes / 210; i++) { b[i * 210 + 208] = 0x00; b[i * 210 + 209] = 0x1c; } /* d = 2^-8 */
        W = b;
    } else {
        return;
    }
    float *x = rand_vec(cols), *y = rand_vec(rows);
    lp_pool *pool = lp_pool_new(nt);
    mv_arg a = {t, W, x, y, rows, cols, pool, 1};
    double s = time_median(run_matvec, &a);
    printf("matvec %-5s %5lld x %5lld  %d thr  %6.2f GB/s  %8.1f us\n", lp_type_name(t), (long long)rows,
           (long long)cols, nt, (double)bytes / s * 1e-9, s * 1e6);
    lp_pool_free(pool);
    free(W); free(x); free(y);
}

// ---- attention

typedef struct attn_arg {
    float *out;
    const float *q, *k, *v;
    int T, n_head, hd;
    lp_pool *pool;
#ifdef LP_HAVE_ATTENTION_EX
    void *scratch;
    size_t scratch_bytes;
#endif
} attn_arg;

static void run_attention(void *p) {
    attn_arg *a = p;
    const float scale = 0.125f;
#ifdef LP_HAVE_ATTENTION_EX
    lp_attention_ex(a->out, a->q, a->k, a->v, a->T, a->T, a->n_head, a->n_head, a->hd, 0, false, scale,
                    a->scratch, a->scratch_bytes, a->pool);
#else
    lp_attention(a->out, a->q, a->k, a->v, a->T, a->T, a->n_head, a->n_head, a->hd, 0, false, scale, a->pool);
#endif
}

static void bench_attention(int T, int n_head, int hd) {
    const int64_t n = (int64_t)T * n_head * hd;
    float *q = rand_vec(n), *k = rand_vec(n), *v = rand_vec(n), *out = rand_vec(n);
    for (int nt = 1; nt <= 2; nt++) {
        lp_pool *pool = lp_pool_new(nt);
        attn_arg a = {out, q, k, v, T, n_head, hd, pool
#ifdef LP_HAVE_ATTENTION_EX
                      , NULL, 0
#endif
        };
#ifdef LP_HAVE_ATTENTION_EX
        a.scratch_bytes = lp_attention_scratch_size(T, T, n_head, hd, pool);
        a.scratch = malloc(a.scratch_bytes);
        if (!a.scratch) exit(1);
#endif
        double s = time_median(run_attention, &a);
        printf("attention T=%d heads=%d hd=%d  %d thr  %8.2f ms  %6.1f GFLOP/s\n", T, n_head, hd, nt, s * 1e3,
               4.0 * T * T * hd * n_head / s * 1e-9);
#ifdef LP_HAVE_ATTENTION_EX
        free(a.scratch);
#endif
        lp_pool_free(pool);
    }
    free(q); free(k); free(v); free(out);
}

// ---- sgemm and matmul_w ("all")

typedef struct mm_arg {
    const float *A, *B;
    float *C;
    int M, N, K;
} mm_arg;

static void run_sgemm(void *p) {
    mm_arg *a = p;
    lp_matmul(a->A, a->B, a->C, a->M, a->N, a->K, false);
}

static void bench_sgemm(int M, int N, int K) {
    float *A = rand_vec((int64_t)M * K), *B = rand_vec((int64_t)N * K), *C = rand_vec((int64_t)M * N);
    mm_arg a = {A, B, C, M, N, K};
    double s = time_median(run_sgemm, &a);
    printf("sgemm      M=%4d N=%5d K=%5d  %7.1f GFLOP/s\n", M, N, K, 2.0 * M * N * K / s * 1e-9);
    free(A); free(B); free(C);
}

typedef struct mw_arg {
    lp_type t;
    const void *W;
    const float *X;
    float *Y;
    int M;
    int64_t rows, cols;
    lp_pool *pool;
} mw_arg;

static void run_matmul_w(void *p) {
    mw_arg *a = p;
    lp_matmul_w(a->t, a->W, a->X, a->Y, a->M, a->rows, a->cols, a->pool);
}

static void bench_matmul_w(lp_type t, int M, int64_t rows, int64_t cols, int n_threads) {
    size_t bytes;
    void *W = quantize_matrix(t, rows, cols, &bytes);
    float *X = rand_vec((int64_t)M * cols), *Y = rand_vec((int64_t)M * rows);
    lp_pool *pool = lp_pool_new(n_threads);
    mw_arg a = {t, W, X, Y, M, rows, cols, pool};
    double s = time_median(run_matmul_w, &a);
    printf("matmul_w %-5s M=%4d %5lld x %5lld  %d thr  %7.1f GFLOP/s\n", lp_type_name(t), M, (long long)rows,
           (long long)cols, n_threads, 2.0 * M * rows * cols / s * 1e-9);
    lp_pool_free(pool);
    free(W); free(X); free(Y);
}

int main(int argc, char **argv) {
    const bool all = argc > 1 && strcmp(argv[1], "all") == 0;
    const bool attn_only = argc > 1 && strcmp(argv[1], "attn") == 0;
    const int only = argc > 1 ? lp_type_from_name(argv[1]) : -1; /* a type name: that type's matvec only */
    if (!attn_only) {
        const lp_type types[] = {LP_TYPE_Q4_0, LP_TYPE_Q8_0, LP_TYPE_F16};
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            if (only >= 0 && (int)types[i] != only) continue;
            bench_matvec(types[i], 4096, 4096);
            bench_matvec(types[i], 11008, 4096);
        }
    }
    if (only < 0) bench_attention(577, 16, 64);
    if (all) {
        bench_sgemm(256, 1024, 1024);
        bench_sgemm(1024, 1024, 1024);
        for (int nt = 1; nt <= 2; nt++) bench_matmul_w(LP_TYPE_Q8_0, 64, 2048, 2048, nt);
        for (int nt = 1; nt <= 2; nt++) bench_matmul_w(LP_TYPE_F16, 577, 4096, 1024, nt); // ViT-L fc1
        for (int nt = 1; nt <= 2; nt++) {
            bench_matvec_one(LP_TYPE_Q4_K, 4096, 4096, nt);
            bench_matvec_one(LP_TYPE_Q6_K, 4096, 4096, nt);
        }
    }
    return 0;
}
