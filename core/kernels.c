/* core/kernels.c — dense algebra, norms, activations, RoPE and attention.
 *
 * Plain C, written so that GCC/Clang auto-vectorize the hot loops at -O2
 * -march=native: the dot product keeps 64 independent partial sums (see
 * dot_f32), and the element-wise loops have no loop-carried dependence.
 *
 * Semantics follow ggml's CPU backend (ggml-cpu/ops.cpp, vec.h): the same
 * constants, reductions of norms and softmax in double, RoPE's theta built
 * by repeated multiplication in float like ggml_rope_cache_init. */
#include "kernels.h"

#include <cblas.h>
#ifdef __F16C__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// helpers

// a*b + c, fused when the target has FMA (ISO C mode disables contraction,
// and fmaf without hardware FMA would be a libm call).
#ifdef __FMA__
#define LP_MADD(a, b, c) fmaf((a), (b), (c))
#else
#define LP_MADD(a, b, c) ((a) * (b) + (c))
#endif

// dot of a (n) and b (n) in f32. 64 independent partial sums in four arrays:
// each fixed 16-wide loop becomes one AVX-512 or two AVX2 FMA chains,
// enough to hide the add latency. The final reduction is a fixed tree, so the
// result depends only on n and the data, never on threading.
static float dot_f32(const float *a, const float *b, int64_t n) {
    float acc0[16] = {0}, acc1[16] = {0}, acc2[16] = {0}, acc3[16] = {0};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int j = 0; j < 16; j++) acc0[j] = LP_MADD(a[i + j], b[i + j], acc0[j]);
        for (int j = 0; j < 16; j++) acc1[j] = LP_MADD(a[i + 16 + j], b[i + 16 + j], acc1[j]);
        for (int j = 0; j < 16; j++) acc2[j] = LP_MADD(a[i + 32 + j], b[i + 32 + j], acc2[j]);
        for (int j = 0; j < 16; j++) acc3[j] = LP_MADD(a[i + 48 + j], b[i + 48 + j], acc3[j]);
    }
    for (; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) acc0[j] = LP_MADD(a[i + j], b[i + j], acc0[j]);
    }
    for (int j = 0; i + j < n; j++) acc1[j] = LP_MADD(a[i + j], b[i + j], acc1[j]);
    for (int j = 0; j < 16; j++) acc0[j] = (acc0[j] + acc1[j]) + (acc2[j] + acc3[j]);
    for (int w = 8; w >= 1; w /= 2) {
        for (int j = 0; j < w; j++) acc0[j] += acc0[j + w];
    }
    return acc0[0];
}

// y (n) += s * x (n)
static void axpy_f32(float *y, float s, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = LP_MADD(s, x[i], y[i]);
}

// ----------------------------------------------------------------------------
// matmul

void lp_matmul(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate) {
    // A (M, K), B (N, K), C (M, N): C = A B^T
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) memset(C, 0, (size_t)M * (size_t)N * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K,
                1.0f, A, K, B, K, accumulate ? 1.0f : 0.0f, C, N);
}

// ----------------------------------------------------------------------------
// matvec

// Elements dequantized per step: a multiple of every block size (1, 32, 256),
// small enough to stay in L1 next to the matching slice of x.
#define LP_MATVEC_CHUNK 2048

// f16 -> f32, exact for every input (inline here: the block loops below
// call it once per 32 weights). F16C when the target has it, otherwise the
// exponent-rebias trick: normals and infinities/NaNs scale by 2^-112 from a
// rebiased exponent, subnormals come out of a magic-number subtraction.
static inline float f16_to_f32(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    uint32_t bits;
    float f;
    if (two_w < (1u << 27)) { // zero or subnormal
        bits = (two_w >> 17) | (126u << 23);
        memcpy(&f, &bits, 4);
        f -= 0.5f;
    } else {
        bits = (two_w >> 4) + (0xE0u << 23);
        memcpy(&f, &bits, 4);
        f *= 0x1.0p-112f;
    }
    memcpy(&bits, &f, 4);
    bits |= sign;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

// Fused row dots for the two most common decode weight types: the block
// scale is folded into x's product so the 16-lane accumulators run across
// blocks with no per-block horizontal sum. Layouts are ggml's:
//   q8_0: { f16 d; int8 qs[32]; }            w = d * qs[j]
//   q4_0: { f16 d; uint8 qs[16]; }           w[j] = d * ((qs[j] & 15) - 8),
//                                            w[j+16] = d * ((qs[j] >> 4) - 8)
static float dot_q8_0(const uint8_t *w, const float *x, int64_t n) {
    float acc[16] = {0};
    for (int64_t b = 0; b < n / 32; b++, w += 34, x += 32) {
        uint16_t h;
        memcpy(&h, w, 2);
        const float d = f16_to_f32(h);
        const int8_t *q = (const int8_t *)(w + 2); // (32)
        for (int j = 0; j < 16; j++) {
            acc[j] = LP_MADD(d * (float)q[j], x[j], acc[j]);
            acc[j] = LP_MADD(d * (float)q[j + 16], x[j + 16], acc[j]);
        }
    }
    for (int wd = 8; wd >= 1; wd /= 2) {
        for (int j = 0; j < wd; j++) acc[j] += acc[j + wd];
    }
    return acc[0];
}

static float dot_q4_0(const uint8_t *w, const float *x, int64_t n) {
    float acc[16] = {0};
    for (int64_t b = 0; b < n / 32; b++, w += 18, x += 32) {
        uint16_t h;
        memcpy(&h, w, 2);
        const float d = f16_to_f32(h);
        const uint8_t *q = w + 2; // (16)
        for (int j = 0; j < 16; j++) {
            acc[j] = LP_MADD(d * (float)((q[j] & 15) - 8), x[j], acc[j]);
            acc[j] = LP_MADD(d * (float)((q[j] >> 4) - 8), x[j + 16], acc[j]);
        }
    }
    for (int wd = 8; wd >= 1; wd /= 2) {
        for (int j = 0; j < wd; j++) acc[j] += acc[j + wd];
    }
    return acc[0];
}

typedef struct matvec_args {
    lp_type t;
    const uint8_t *W;   // (rows, row_bytes)
    const float *x;     // (cols)
    float *y;           // (rows)
    int64_t rows, cols;
    size_t row_bytes;
    size_t chunk_bytes; // bytes of LP_MATVEC_CHUNK elements of type t
} matvec_args;

static void matvec_worker(void *p, int ith, int nth) {
    const matvec_args *a = p;
    int64_t r0, r1;
    lp_split(a->rows, ith, nth, &r0, &r1);
    if (a->t == LP_TYPE_F32) {
        for (int64_t r = r0; r < r1; r++) {
            const float *w = (const float *)(a->W + (size_t)r * a->row_bytes); // (cols)
            a->y[r] = dot_f32(w, a->x, a->cols);
        }
        return;
    }
    if (a->t == LP_TYPE_Q8_0 || a->t == LP_TYPE_Q4_0) {
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = a->W + (size_t)r * a->row_bytes; // (cols/32 blocks)
            a->y[r] = a->t == LP_TYPE_Q8_0 ? dot_q8_0(w, a->x, a->cols) : dot_q4_0(w, a->x, a->cols);
        }
        return;
    }
    // any other type: dequantize a chunk of the row into L1, then dot
    float buf[LP_MATVEC_CHUNK]; // (chunk) dequantized slice of one row
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = a->W + (size_t)r * a->row_bytes;
        float sum = 0.0f;
        int64_t c = 0;
        for (; c < a->cols; c += LP_MATVEC_CHUNK, w += a->chunk_bytes) {
            int64_t n = a->cols - c < LP_MATVEC_CHUNK ? a->cols - c : LP_MATVEC_CHUNK;
            lp_dequantize_row(a->t, w, buf, n); // n is a multiple of the block size
            sum += dot_f32(buf, a->x + c, n);
        }
        a->y[r] = sum;
    }
}

bool lp_matvec(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool) {
    if (!lp_type_can_dequantize(t) || rows < 0 || cols <= 0) return false;
    size_t row_bytes = lp_row_size(t, cols);
    if (row_bytes == 0) return false; // cols not a multiple of the block size
    matvec_args a = {
        .t = t, .W = W, .x = x, .y = y, .rows = rows, .cols = cols,
        .row_bytes = row_bytes, .chunk_bytes = lp_row_size(t, LP_MATVEC_CHUNK),
    };
    if (rows == 0) return true;
    lp_pool_run(pool, matvec_worker, &a);
    return true;
}

// ----------------------------------------------------------------------------
// matmul with a typed weight
//
// Threading choice: OpenBLAS runs its own thread pool inside sgemm. Calling
// sgemm from several pool workers at once would oversubscribe the cores
// (n_pool x n_openblas threads) and relies on OpenBLAS's re-entrancy, so
// instead the pool only dequantizes each weight panel (rows split over the
// workers) and the caller then issues one sgemm per panel, which OpenBLAS
// threads as it likes. Pool workers sleep on their condition variable during
// the sgemm, so the two never compete for the cores.

#define LP_PANEL_ROWS 256

typedef struct dequant_args {
    lp_type t;
    const uint8_t *W;  // (n, row_bytes) first row of the panel
    float *out;        // (n, cols)
    int64_t n, cols;
    size_t row_bytes;
} dequant_args;

static void dequant_worker(void *p, int ith, int nth) {
    const dequant_args *a = p;
    int64_t r0, r1;
    lp_split(a->n, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        lp_dequantize_row(a->t, a->W + (size_t)r * a->row_bytes, a->out + r * a->cols, a->cols);
    }
}

bool lp_matmul_w(lp_type t, const void *W, const float *X, float *Y, int M, int64_t rows, int64_t cols, lp_pool *pool) {
    // X (M, cols), W (rows, cols), Y (M, rows)
    if (!lp_type_can_dequantize(t) || M < 0 || rows < 0 || cols <= 0) return false;
    if (rows > INT32_MAX || cols > INT32_MAX) return false; // cblas takes int
    size_t row_bytes = lp_row_size(t, cols);
    if (row_bytes == 0) return false;
    if (M == 0 || rows == 0) return true;
    if (M == 1) return lp_matvec(t, W, X, Y, rows, cols, pool); // decode: no panel needed

    if (t == LP_TYPE_F32) {
        lp_matmul(X, W, Y, M, (int)rows, (int)cols, false);
        return true;
    }
    int64_t panel = rows < LP_PANEL_ROWS ? rows : LP_PANEL_ROWS;
    float *Wp = malloc((size_t)panel * (size_t)cols * sizeof(float)); // (panel, cols)
    if (!Wp) return false;
    for (int64_t r0 = 0; r0 < rows; r0 += panel) {
        int64_t n = rows - r0 < panel ? rows - r0 : panel;
        dequant_args a = {
            .t = t, .W = (const uint8_t *)W + (size_t)r0 * row_bytes, .out = Wp,
            .n = n, .cols = cols, .row_bytes = row_bytes,
        };
        lp_pool_run(pool, dequant_worker, &a);
        // Y[:, r0:r0+n] (M, n; ldc = rows) = X (M, cols) · Wp (n, cols)^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, (int)n, (int)cols,
                    1.0f, X, (int)cols, Wp, (int)cols, 0.0f, Y + r0, (int)rows);
    }
    free(Wp);
    return true;
}

// ----------------------------------------------------------------------------
// softmax and norms

void lp_softmax(float *x, int64_t n) {
    // x (n)
    if (n <= 0) return;
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void lp_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    // out (n), x (n), w (n) or NULL
    if (n <= 0) return;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
    if (w) for (int64_t i = 0; i < n; i++) out[i] *= w[i];
}

void lp_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n, float eps) {
    // out (n), x (n), w (n) or NULL, b (n) or NULL
    if (n <= 0) return;
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    float mean = (float)(s / (double)n);
    double s2 = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mean;
        out[i] = d;
        s2 += (double)d * d;
    }
    float var = (float)(s2 / (double)n);
    float scale = 1.0f / sqrtf(var + eps);
    for (int64_t i = 0; i < n; i++) out[i] *= scale;
    if (w) for (int64_t i = 0; i < n; i++) out[i] *= w[i];
    if (b) for (int64_t i = 0; i < n; i++) out[i] += b[i];
}

// ----------------------------------------------------------------------------
// activations (constants as in ggml-cpu/vec.h)

#define LP_GELU_COEF_A 0.044715f
#define LP_GELU_QUICK_COEF (-1.702f)
#define LP_SQRT_2_OVER_PI 0.79788456080286535587989211986876f
#define LP_SQRT_2_INV 0.70710678118654752440084436210484f

void lp_gelu_erf(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + erff(v * LP_SQRT_2_INV));
    }
}

void lp_gelu_tanh(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(LP_SQRT_2_OVER_PI * v * (1.0f + LP_GELU_COEF_A * v * v)));
    }
}

void lp_quick_gelu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = v * (1.0f / (1.0f + expf(LP_GELU_QUICK_COEF * v)));
    }
}

void lp_silu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = v / (1.0f + expf(-v));
    }
}

void lp_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void lp_mul(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= x[i];
}

void lp_scale(float *y, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] *= s;
}

// ----------------------------------------------------------------------------
// RoPE
//
// As ggml_rope_cache_init with no YaRN and no frequency factors: theta starts
// at pos and is multiplied by theta_scale = base^(-2/n_rot) once per pair, in
// float, so results match ggml's rounding.

void lp_rope(float *x, int n_head, int head_dim, int n_rot, int64_t pos, float base, lp_rope_mode mode) {
    // x (n_head, head_dim)
    if (n_rot > head_dim) n_rot = head_dim;
    n_rot &= ~1;
    if (n_rot <= 0 || n_head <= 0) return;
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    for (int h = 0; h < n_head; h++) {
        float *xh = x + (int64_t)h * head_dim; // (head_dim)
        float theta = (float)pos;
        for (int i = 0; i < half; i++) {
            const float c = cosf(theta), s = sinf(theta);
            // pair (2i, 2i+1) for normal, (i, i + n_rot/2) for neox
            const int i0 = mode == LP_ROPE_NEOX ? i : 2 * i;
            const int i1 = mode == LP_ROPE_NEOX ? i + half : 2 * i + 1;
            const float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * c - x1 * s;
            xh[i1] = x0 * s + x1 * c;
            theta *= theta_scale;
        }
        // dims n_rot..head_dim pass through
    }
}

// ----------------------------------------------------------------------------
// attention

typedef struct attn_args {
    float *out;            // (n_q, n_head, head_dim)
    const float *q;        // (n_q, n_head, head_dim)
    const float *k, *v;    // (n_kv, n_head_kv, head_dim)
    float *scratch;        // (nth, n_kv)
    int n_q, n_kv, n_head, n_head_kv, head_dim;
    int64_t q_pos0;
    bool causal;
    float scale;
} attn_args;

static void attn_worker(void *p, int ith, int nth) {
    const attn_args *a = p;
    const int group = a->n_head / a->n_head_kv; // query heads per kv head
    const int64_t q_stride = (int64_t)a->n_head * a->head_dim;
    const int64_t kv_stride = (int64_t)a->n_head_kv * a->head_dim;
    float *att = a->scratch + (int64_t)ith * a->n_kv; // (n_kv)
    // heads are split over the workers; each does all query tokens of its heads
    int64_t h0, h1;
    lp_split(a->n_head, ith, nth, &h0, &h1);
    for (int64_t h = h0; h < h1; h++) {
        const int64_t kvh = h / group;
        for (int i = 0; i < a->n_q; i++) {
            const float *qi = a->q + i * q_stride + h * a->head_dim; // (head_dim)
            float *oi = a->out + i * q_stride + h * a->head_dim;     // (head_dim)
            int64_t n_vis = a->n_kv;
            if (a->causal) {
                int64_t last = a->q_pos0 + i; // last visible key
                n_vis = last + 1 < n_vis ? last + 1 : n_vis;
            }
            memset(oi, 0, (size_t)a->head_dim * sizeof(float));
            if (n_vis <= 0) continue;
            // scores, max-subtracted softmax in f32 with a double sum
            float max = -INFINITY;
            for (int64_t j = 0; j < n_vis; j++) {
                const float *kj = a->k + j * kv_stride + kvh * a->head_dim; // (head_dim)
                float s = a->scale * dot_f32(qi, kj, a->head_dim);
                att[j] = s;
                max = s > max ? s : max;
            }
            double sum = 0.0;
            for (int64_t j = 0; j < n_vis; j++) {
                att[j] = expf(att[j] - max);
                sum += att[j];
            }
            const float inv = (float)(1.0 / sum);
            for (int64_t j = 0; j < n_vis; j++) {
                const float *vj = a->v + j * kv_stride + kvh * a->head_dim; // (head_dim)
                axpy_f32(oi, att[j] * inv, vj, a->head_dim);
            }
        }
    }
}

bool lp_attention(float *out, const float *q, const float *k, const float *v,
                  int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                  int64_t q_pos0, bool causal, float scale, lp_pool *pool) {
    if (n_q < 0 || n_kv < 0 || n_head <= 0 || n_head_kv <= 0 || head_dim <= 0) return false;
    if (n_head % n_head_kv != 0 || q_pos0 < 0) return false;
    if (n_q == 0) return true;
    int nth = lp_pool_size(pool);
    size_t per = n_kv > 0 ? (size_t)n_kv : 1;
    float *scratch = malloc((size_t)nth * per * sizeof(float)); // (nth, n_kv)
    if (!scratch) return false;
    attn_args a = {
        .out = out, .q = q, .k = k, .v = v, .scratch = scratch,
        .n_q = n_q, .n_kv = n_kv, .n_head = n_head, .n_head_kv = n_head_kv, .head_dim = head_dim,
        .q_pos0 = q_pos0, .causal = causal, .scale = scale,
    };
    lp_pool_run(pool, attn_worker, &a);
    free(scratch);
    return true;
}
