/* bench/bench_kernels.c — a small benchmark of the hot kernels (not a test).
 *
 * Prints sgemm GFLOP/s (lp_matmul), lp_matmul_w GFLOP/s for q8_0, and
 * lp_matvec weight bandwidth in GB/s (bytes of W read per second) for f32,
 * f16, q8_0, q4_0 and q4_K on 1 and 2 pool threads.
 *
 * Build (not part of `make`):
 *   make libloupe.a, then
 *   cc -O2 -march=native -Iinclude -Icore bench/bench_kernels.c build/libloupe.a \
 *      $(pkg-config --cflags --libs openblas) -lm -pthread -o build/bench_kernels
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "pool.h"
#include "types.h"

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

static void bench_sgemm(int M, int N, int K) {
    float *A = rand_vec((int64_t)M * K), *B = rand_vec((int64_t)N * K), *C = rand_vec((int64_t)M * N);
    lp_matmul(A, B, C, M, N, K, false); // warm up OpenBLAS's threads
    int reps = 0;
    double t0 = now_s(), t;
    do {
        lp_matmul(A, B, C, M, N, K, false);
        reps++;
    } while ((t = now_s() - t0) < 0.5);
    printf("sgemm      M=%4d N=%5d K=%5d  %7.1f GFLOP/s\n", M, N, K, 2.0 * M * N * K * reps / t * 1e-9);
    free(A); free(B); free(C);
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

static void bench_matvec(lp_type t, int64_t rows, int64_t cols, int n_threads) {
    if (!lp_type_can_quantize(t)) return;
    size_t bytes;
    void *W = quantize_matrix(t, rows, cols, &bytes);
    float *x = rand_vec(cols), *y = rand_vec(rows);
    lp_pool *pool = lp_pool_new(n_threads);
    lp_matvec(t, W, x, y, rows, cols, pool);
    int reps = 0;
    double t0 = now_s(), el;
    do {
        lp_matvec(t, W, x, y, rows, cols, pool);
        reps++;
    } while ((el = now_s() - t0) < 0.5);
    printf("matvec %-5s %5lld x %5lld  %d thr  %6.2f GB/s  %7.1f GFLOP/s  %8.1f us\n", lp_type_name(t),
           (long long)rows, (long long)cols, n_threads, (double)bytes * reps / el * 1e-9,
           2.0 * rows * cols * reps / el * 1e-9, el / reps * 1e6);
    lp_pool_free(pool);
    free(W); free(x); free(y);
}

static void bench_matmul_w(lp_type t, int M, int64_t rows, int64_t cols, int n_threads) {
    size_t bytes;
    void *W = quantize_matrix(t, rows, cols, &bytes);
    float *X = rand_vec((int64_t)M * cols), *Y = rand_vec((int64_t)M * rows);
    lp_pool *pool = lp_pool_new(n_threads);
    lp_matmul_w(t, W, X, Y, M, rows, cols, pool);
    int reps = 0;
    double t0 = now_s(), el;
    do {
        lp_matmul_w(t, W, X, Y, M, rows, cols, pool);
        reps++;
    } while ((el = now_s() - t0) < 0.5);
    printf("matmul_w %-5s M=%4d %5lld x %5lld  %d thr  %7.1f GFLOP/s\n", lp_type_name(t), M,
           (long long)rows, (long long)cols, n_threads, 2.0 * M * rows * cols * reps / el * 1e-9);
    lp_pool_free(pool);
    free(W); free(X); free(Y);
}

int main(void) {
    bench_sgemm(64, 64, 64);
    bench_sgemm(256, 1024, 1024);
    bench_sgemm(1024, 1024, 1024);
    const lp_type types[] = {LP_TYPE_F32, LP_TYPE_F16, LP_TYPE_Q8_0, LP_TYPE_Q4_0, LP_TYPE_Q4_K};
    for (int nt = 1; nt <= 2; nt++)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) bench_matvec(types[i], 4096, 4096, nt);
    for (int nt = 1; nt <= 2; nt++) bench_matmul_w(LP_TYPE_Q8_0, 64, 2048, 2048, nt);
    return 0;
}
