/* core/kernels.c — dense algebra, norms, activations, RoPE and attention.
 *
 * Mostly plain C, written so that GCC/Clang auto-vectorize the hot loops at
 * -O2 -march=native: the dot product keeps 64 independent partial sums (see
 * dot_f32), and the element-wise loops have no loop-carried dependence.
 * The matvec row dots (f16/bf16/q8_0/q4_0/q4_K/q6_K against f32 x, and
 * q4_0/q8_0 against q8_0-quantized x with VNNI) and the softmax exp use
 * intrinsics under the LP_AVX512 / LP_VNNI / LP_AVX2 guards below, each with
 * a scalar fallback (PORTABLE=1 builds take those).
 *
 * Semantics follow ggml's CPU backend (ggml-cpu/ops.cpp, vec.h): the same
 * constants, reductions of norms and softmax in double, RoPE's theta built
 * by repeated multiplication in float like ggml_rope_cache_init. */
#include "kernels.h"

#include <cblas.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* SIMD tiers, chosen at compile time (-march=native, or PORTABLE=1 for the
 * scalar code). LP_AVX512: AVX-512 F/BW/VL/DQ with F16C and FMA (Skylake-X
 * and later); LP_VNNI adds AVX512-VNNI (Ice Lake, Sapphire Rapids);
 * LP_AVX2: AVX2 + FMA + F16C (Haswell and later, and Zen). */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__F16C__) && defined(__FMA__)
#define LP_AVX512 1
#if defined(__AVX512VNNI__)
#define LP_VNNI 1
#endif
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LP_AVX2 1
#endif

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

// C (M, N) [+]= A (M, K) · op(B): op(B) = B^T for B stored (N, K), or B
// stored (K, N). One place for the empty-K rule and the sgemm call.
static void sgemm_rm(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate, bool b_transposed) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) memset(C, 0, (size_t)M * (size_t)N * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_transposed ? CblasTrans : CblasNoTrans, M, N, K,
                1.0f, A, K, B, b_transposed ? K : N, accumulate ? 1.0f : 0.0f, C, N);
}

void lp_matmul(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate) {
    sgemm_rm(A, B, C, M, N, K, accumulate, true); // A (M, K), B (N, K): C = A B^T
}

void lp_matmul_nn(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate) {
    sgemm_rm(A, B, C, M, N, K, accumulate, false); // A (M, K), B (K, N): C = A B
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

#if !defined(LP_AVX512) // (the AVX-512 versions are further down)
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
#endif

// ----------------------------------------------------------------------------
// f16 / bf16 rows against f32 x: 64 lanes in four accumulators (as dot_f32),
// reduced by the same fixed tree.

#if defined(LP_AVX512)
static float reduce_zmm4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    // the 64-lane layout of dot_f32: lane j of acc0..3, then (0+1)+(2+3), then a tree
    __m512 v = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static float dot_f16_f32(const uint16_t *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i))), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16))), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 32))), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 48))), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) {
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i))), _mm512_loadu_ps(x + i), a0);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i)), _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return reduce_zmm4(a0, a1, a2, a3);
}

static inline __m512 bf16x16(const uint16_t *w) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)w)), 16));
}

static float dot_bf16_f32(const uint16_t *w, const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(bf16x16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(bf16x16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + i)), 16));
        a1 = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), a1);
    }
    return reduce_zmm4(a0, a1, a2, a3);
}
#define LP_HAVE_DOT_F16 1
#endif

// ----------------------------------------------------------------------------
// quantized activations: ggml's vec_dot_type Q8_0 for Q4_0 and Q8_0 weights
//
// x is quantized once per matvec into
//   qs   (n)    int8, block b = qs[32b .. 32b+31]
//   d    (nb)   the block scales, already rounded through f16 (ggml stores
//               them as f16 and converts back in vec_dot)
//   bias (n/4)  -off * (sum of qs[4k .. 4k+3]), off = 8 (q4_0) or 128
//               (q8_0); only the VNNI path reads it (see below)
//
// The row sum has one canonical float layout that every path (scalar, AVX2,
// AVX-512) follows exactly, so they agree bit for bit:
//   - block b's dot splits into 8 exact int32 "lanes", lane l summing the
//     products of weights 4l .. 4l+3 (what vpdpbusd / pmaddubsw+pmaddwd give);
//   - d_b = f16(dw_b) * dx_b (one f32 multiply, as ggml), and
//     acc[8 (b mod 4) + l] = fma(d_b, (float)lane_l, acc[...]) (32 floats);
//   - the 32 accumulators reduce by a fixed tree (16, 8, 4, 2, 1).
// ggml's AVX2 vec_dot uses the same lanes and fma but 8 accumulators.

typedef struct q8_act {
    const int8_t *qs;    // (n)
    const float *d;      // (n/32)
    const int32_t *bias; // (n/4) VNNI only
} q8_act;

bool lp_matvec_quantizes_x(lp_type t) { return t == LP_TYPE_Q4_0 || t == LP_TYPE_Q8_0; }

// ggml's x86 quantize_row_q8_0: d = amax/127 (stored f16), q = x * (127/amax)
// rounded to nearest even and saturated to int8 (NaN gives -128, as
// cvtps2dq + packs do).
static void quantize_act(const float *x, int64_t n, int8_t *qs, float *d) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, qs += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(x[j]);
            amax = a > amax ? a : amax;
        }
        const float db = amax / 127.f;
        d[b] = lp_f16_to_f32(lp_f32_to_f16(db));
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        for (int j = 0; j < 32; j++) {
            float r = rintf(x[j] * id);
            qs[j] = (int8_t)(r >= 127.f ? 127 : r > -128.f ? (int)r : -128); // NaN fails both tests: -128
        }
    }
}

static void act_bias(const int8_t *qs, int64_t n, int32_t off, int32_t *bias) {
    for (int64_t k = 0; k < n / 4; k++) {
        bias[k] = -off * ((int32_t)qs[4 * k] + qs[4 * k + 1] + qs[4 * k + 2] + qs[4 * k + 3]);
    }
}

void lp_quantize_row_q8_0_act(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, o += 34) {
        float d;
        quantize_act(x + 32 * b, 32, (int8_t *)(o + 2), &d);
        uint16_t h = lp_f32_to_f16(d); // exact: d is already f16-representable
        memcpy(o, &h, 2);
    }
}

static float reduce32(float *acc) {
    for (int w = 16; w >= 1; w /= 2) {
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    }
    return acc[0];
}

static inline int q4_0_weight(const uint8_t *qs, int j) { // j in 0..31, signed -8..7
    return j < 16 ? (qs[j] & 15) - 8 : (qs[j - 16] >> 4) - 8;
}

// the scalar reference: block sizes 18 (q4_0) and 34 (q8_0)
static float dot_q8act_scalar(lp_type t, const uint8_t *w, const q8_act *a, int64_t nb) {
    float acc[32] = {0};
    const size_t bb = t == LP_TYPE_Q4_0 ? 18 : 34;
    for (int64_t b = 0; b < nb; b++, w += bb) {
        uint16_t h;
        memcpy(&h, w, 2);
        const float d = f16_to_f32(h) * a->d[b];
        const int8_t *y = a->qs + 32 * b;
        float *g = acc + 8 * (b & 3);
        for (int l = 0; l < 8; l++) {
            int32_t s = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++) {
                int wq = t == LP_TYPE_Q4_0 ? q4_0_weight(w + 2, j) : ((const int8_t *)(w + 2))[j];
                s += wq * y[j];
            }
            g[l] = LP_MADD(d, (float)s, g[l]);
        }
    }
    return reduce32(acc);
}

#if defined(LP_AVX512) && defined(LP_VNNI)
static float reduce_acc2(__m512 acc0, __m512 acc1) {
    __m512 v = _mm512_add_ps(acc0, acc1); // w = 16
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)); // w = 4
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));                                          // w = 2
    x = _mm_add_ss(x, _mm_movehdup_ps(x));                                           // w = 1
    return _mm_cvtss_f32(x);
}

// acc half (lanes 0..7) of block b += d * lanes
static inline __m512 acc_single(__m512 acc, float d, __m256i lanes) {
    __m256 lo = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), _mm512_castps512_ps256(acc));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(acc), _mm256_castps_pd(lo), 0));
}

// f16(dw_b) * dx_b and f16(dw_b+1) * dx_b+1, spread to [d_b x 8, d_b+1 x 8]:
// the two scales are read with scalar loads (a gather over the row would
// defeat the hardware prefetcher) and converted together.
static inline __m512 pair_scales(const uint8_t *wb, size_t bb, const float *dx) {
    uint16_t h0, h1;
    memcpy(&h0, wb, 2);
    memcpy(&h1, wb + bb, 2);
    __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | (uint32_t)h1 << 16)));
    __m128 d = _mm_mul_ps(dw, _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)dx)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castps128_ps512(d));
}

static float dot_q4_0_q8act(const uint8_t *w, const q8_act *a, int64_t nb) {
    const __m512i perm = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i m4 = _mm512_set1_epi8(15);
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *wb = w + (size_t)b * 18;
        __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(wb + 2))),
                                            _mm_loadu_si128((const __m128i *)(wb + 20)), 1);
        __m256i hi = _mm256_srli_epi16(t, 4);
        // [lo_b, hi_b, lo_b+1, hi_b+1]: weights of both blocks in order
        __m512i q = _mm512_and_si512(_mm512_permutex2var_epi64(_mm512_castsi256_si512(t), perm, _mm512_castsi256_si512(hi)), m4);
        __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(a->bias + 8 * b), q, _mm512_loadu_si512(a->qs + 32 * b));
        const int k = (int)((b >> 1) & 1);
        acc[k] = _mm512_fmadd_ps(pair_scales(wb, 18, a->d + b), _mm512_cvtepi32_ps(s), acc[k]);
    }
    if (b < nb) { // odd last block: even index, group 0 or 2
        const uint8_t *wb = w + (size_t)b * 18;
        uint16_t h;
        memcpy(&h, wb, 2);
        __m128i t = _mm_loadu_si128((const __m128i *)(wb + 2));
        __m256i q = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), _mm256_set1_epi8(15));
        __m256i s = _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)(a->bias + 8 * b)), q,
                                        _mm256_loadu_si256((const __m256i *)(a->qs + 32 * b)));
        const int k = (int)((b >> 1) & 1);
        acc[k] = acc_single(acc[k], f16_to_f32(h) * a->d[b], s);
    }
    return reduce_acc2(acc[0], acc[1]);
}

static float dot_q8_0_q8act(const uint8_t *w, const q8_act *a, int64_t nb) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *wb = w + (size_t)b * 34;
        __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(wb + 2))),
                                       _mm256_loadu_si256((const __m256i *)(wb + 36)), 1);
        q = _mm512_xor_si512(q, flip); // w + 128 as unsigned; bias holds -128 * sum(y)
        __m512i s = _mm512_dpbusd_epi32(_mm512_loadu_si512(a->bias + 8 * b), q, _mm512_loadu_si512(a->qs + 32 * b));
        const int k = (int)((b >> 1) & 1);
        acc[k] = _mm512_fmadd_ps(pair_scales(wb, 34, a->d + b), _mm512_cvtepi32_ps(s), acc[k]);
    }
    if (b < nb) {
        const uint8_t *wb = w + (size_t)b * 34;
        uint16_t h;
        memcpy(&h, wb, 2);
        __m256i q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wb + 2)), _mm256_set1_epi8((char)0x80));
        __m256i s = _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)(a->bias + 8 * b)), q,
                                        _mm256_loadu_si256((const __m256i *)(a->qs + 32 * b)));
        const int k = (int)((b >> 1) & 1);
        acc[k] = acc_single(acc[k], f16_to_f32(h) * a->d[b], s);
    }
    return reduce_acc2(acc[0], acc[1]);
}
#define LP_Q8_SIMD 1
#elif defined(LP_AVX2)
// AVX2: one block per register, signed weights, pmaddubsw on (|w|, sign(y, w))
// then pmaddwd with ones: the same 8 exact lanes. Accumulator g = b mod 4.
static inline __m256i lanes_i8(__m256i w, __m256i y) {
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static float reduce_acc4(const __m256 *acc) {
    __m256 h = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])); // w = 16, 8
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static float dot_q4_0_q8act(const uint8_t *w, const q8_act *a, int64_t nb) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m256i m4 = _mm256_set1_epi8(15), off = _mm256_set1_epi8(8);
    for (int64_t b = 0; b < nb; b++, w += 18) {
        uint16_t h;
        memcpy(&h, w, 2);
        const float d = f16_to_f32(h) * a->d[b];
        __m128i t = _mm_loadu_si128((const __m128i *)(w + 2));
        __m256i q = _mm256_sub_epi8(_mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), m4), off);
        __m256i s = lanes_i8(q, _mm256_loadu_si256((const __m256i *)(a->qs + 32 * b)));
        acc[b & 3] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc[b & 3]);
    }
    return reduce_acc4(acc);
}

static float dot_q8_0_q8act(const uint8_t *w, const q8_act *a, int64_t nb) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++, w += 34) {
        uint16_t h;
        memcpy(&h, w, 2);
        const float d = f16_to_f32(h) * a->d[b];
        __m256i s = lanes_i8(_mm256_loadu_si256((const __m256i *)(w + 2)), _mm256_loadu_si256((const __m256i *)(a->qs + 32 * b)));
        acc[b & 3] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc[b & 3]);
    }
    return reduce_acc4(acc);
}
#define LP_Q8_SIMD 1
#endif

static float dot_q8act(lp_type t, const uint8_t *w, const q8_act *a, int64_t nb) {
#ifdef LP_Q8_SIMD
    return t == LP_TYPE_Q4_0 ? dot_q4_0_q8act(w, a, nb) : dot_q8_0_q8act(w, a, nb);
#else
    return dot_q8act_scalar(t, w, a, nb);
#endif
}

// ----------------------------------------------------------------------------
// matvec driver

#if defined(LP_AVX512)
// The exact (f32 x) q8_0 / q4_0 dots with AVX-512: per block, the 32
// weights as two 16-float vectors, p = w0*x0 + w1*x1, acc += d * p; blocks
// alternate between two accumulators. Any summation order is within the
// f32 dot bound; this one depends only on n, never on threading.
static float dot_q8_0(const uint8_t *w, const float *x, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++, w += 34, x += 32) {
        uint16_t h;
        memcpy(&h, w, 2);
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 2))));
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 18))));
        __m512 p = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(x)));
        if (b & 1) acc1 = _mm512_fmadd_ps(_mm512_set1_ps(f16_to_f32(h)), p, acc1);
        else acc0 = _mm512_fmadd_ps(_mm512_set1_ps(f16_to_f32(h)), p, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static float dot_q4_0(const uint8_t *w, const float *x, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(15);
    const __m512i eight = _mm512_set1_epi32(8);
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; b++, w += 18, x += 32) {
        uint16_t h;
        memcpy(&h, w, 2);
        __m128i t = _mm_loadu_si128((const __m128i *)(w + 2));
        __m512 q0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(t, m4)), eight));
        __m512 q1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(t, 4), m4)), eight));
        __m512 p = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(x)));
        if (b & 1) acc1 = _mm512_fmadd_ps(_mm512_set1_ps(f16_to_f32(h)), p, acc1);
        else acc0 = _mm512_fmadd_ps(_mm512_set1_ps(f16_to_f32(h)), p, acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// q4_K and q6_K rows against f32 x. Each weight is formed with exactly the
// operations of lp_dequantize_row (q4_K: (d*sc)*q - dmin*mn, two roundings,
// no fma; q6_K: (d*sc)*q), so the result is a dot of the dequantized row in
// another summation order, within the f32 dot bound.
static inline void k4_sc_mn(int j, const uint8_t *s, float d, float dmin, float *dj, float *mj) {
    uint8_t sc, mn;
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (uint8_t)((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
        mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
    *dj = d * sc;
    *mj = dmin * mn;
}

static inline __m512 u8x16_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }

static float dot_q4_K(const uint8_t *w, const float *x, int64_t n) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const __m128i m4 = _mm_set1_epi8(15);
    for (int64_t i = 0; i < n / 256; i++, w += 144, x += 256) {
        uint16_t hd, hm;
        memcpy(&hd, w, 2);
        memcpy(&hm, w + 2, 2);
        const float d = f16_to_f32(hd), dmin = f16_to_f32(hm);
        const uint8_t *sc = w + 4, *qs = w + 16;
        for (int j = 0; j < 4; j++) {
            float d1, m1, d2, m2;
            k4_sc_mn(2 * j, sc, d, dmin, &d1, &m1);
            k4_sc_mn(2 * j + 1, sc, d, dmin, &d2, &m2);
            const __m512 vd1 = _mm512_set1_ps(d1), vm1 = _mm512_set1_ps(m1);
            const __m512 vd2 = _mm512_set1_ps(d2), vm2 = _mm512_set1_ps(m2);
            const float *xj = x + 64 * j;
            for (int h = 0; h < 2; h++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(qs + 32 * j + 16 * h));
                __m512 w1 = _mm512_sub_ps(_mm512_mul_ps(vd1, u8x16_ps(_mm_and_si128(b, m4))), vm1);
                __m512 w2 = _mm512_sub_ps(_mm512_mul_ps(vd2, u8x16_ps(_mm_and_si128(_mm_srli_epi16(b, 4), m4))), vm2);
                acc[2 * h] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xj + 16 * h), acc[2 * h]);
                acc[2 * h + 1] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xj + 32 + 16 * h), acc[2 * h + 1]);
            }
        }
    }
    return reduce_zmm4(acc[0], acc[1], acc[2], acc[3]);
}

static float dot_q6_K(const uint8_t *w, const float *x, int64_t n) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    const __m128i m4 = _mm_set1_epi8(15), m2 = _mm_set1_epi8(3);
    const __m512i off = _mm512_set1_epi32(32);
    for (int64_t i = 0; i < n / 256; i++, w += 210) {
        uint16_t hd;
        memcpy(&hd, w + 208, 2);
        const float d = f16_to_f32(hd);
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int half = 0; half < 2; half++, x += 128, ql += 64, qh += 32, sc += 8) {
            for (int l0 = 0; l0 < 32; l0 += 16) {
                const int s = l0 / 16;
                __m128i a = _mm_loadu_si128((const __m128i *)(ql + l0));
                __m128i b = _mm_loadu_si128((const __m128i *)(ql + 32 + l0));
                __m128i hb = _mm_loadu_si128((const __m128i *)(qh + l0));
                __m128i q[4] = {
                    _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(hb, m2), 4)),
                    _mm_or_si128(_mm_and_si128(b, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 2), m2), 4)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 4), m2), 4)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 6), m2), 4)),
                };
                for (int k = 0; k < 4; k++) {
                    __m512 qf = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q[k]), off));
                    __m512 wv = _mm512_mul_ps(_mm512_set1_ps(d * (float)sc[s + 2 * k]), qf);
                    acc[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + 32 * k + l0), acc[k]);
                }
            }
        }
    }
    return reduce_zmm4(acc[0], acc[1], acc[2], acc[3]);
}
#define LP_HAVE_DOT_K 1
#endif

typedef struct matvec_args {
    lp_type t;
    const uint8_t *W;   // (rows, row_bytes)
    const float *x;     // (cols)
    float *y;           // (rows)
    int64_t rows, cols;
    size_t row_bytes;
    size_t chunk_bytes; // bytes of LP_MATVEC_CHUNK elements of type t
    const q8_act *act;  // quantized x, or NULL: f32 x
    const uint8_t *const *rowp; // (rows) row addresses (lp_matvec_gather), or NULL: W's rows
} matvec_args;

// Address of row r: W's r-th row, or the r-th gathered row.
static inline const uint8_t *mv_row(const matvec_args *a, int64_t r) {
    return a->rowp ? a->rowp[r] : a->W + (size_t)r * a->row_bytes;
}

static void matvec_worker(void *p, int ith, int nth) {
    const matvec_args *a = p;
    int64_t r0, r1;
    lp_split(a->rows, ith, nth, &r0, &r1);
    if (a->act) {
        for (int64_t r = r0; r < r1; r++) a->y[r] = dot_q8act(a->t, mv_row(a, r), a->act, a->cols / 32);
        return;
    }
    if (a->t == LP_TYPE_F32) {
        for (int64_t r = r0; r < r1; r++) {
            const float *w = (const float *)(mv_row(a, r)); // (cols)
            a->y[r] = dot_f32(w, a->x, a->cols);
        }
        return;
    }
#ifdef LP_HAVE_DOT_F16
    if (a->t == LP_TYPE_F16 || a->t == LP_TYPE_BF16) {
        for (int64_t r = r0; r < r1; r++) {
            const uint16_t *w = (const uint16_t *)(mv_row(a, r)); // (cols)
            a->y[r] = a->t == LP_TYPE_F16 ? dot_f16_f32(w, a->x, a->cols) : dot_bf16_f32(w, a->x, a->cols);
        }
        return;
    }
#endif
#ifdef LP_HAVE_DOT_K
    if (a->t == LP_TYPE_Q4_K || a->t == LP_TYPE_Q6_K) {
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = mv_row(a, r); // (cols/256 super-blocks)
            a->y[r] = a->t == LP_TYPE_Q4_K ? dot_q4_K(w, a->x, a->cols) : dot_q6_K(w, a->x, a->cols);
        }
        return;
    }
#endif
    if (a->t == LP_TYPE_Q8_0 || a->t == LP_TYPE_Q4_0) {
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = mv_row(a, r); // (cols/32 blocks)
            a->y[r] = a->t == LP_TYPE_Q8_0 ? dot_q8_0(w, a->x, a->cols) : dot_q4_0(w, a->x, a->cols);
        }
        return;
    }
    // any other type: dequantize a chunk of the row into L1, then dot
    float buf[LP_MATVEC_CHUNK]; // (chunk) dequantized slice of one row
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = mv_row(a, r);
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

// Bytes of the quantized x of n columns: d (n/32 floats), bias (n/4
// int32), qs (n bytes), in that order so each part stays aligned.
static size_t act_bytes(int64_t n) { return (size_t)(n / 32) * 4 + (size_t)(n / 4) * 4 + (size_t)n; }

static void act_make(q8_act *act, lp_type t, const float *x, int64_t n, void *buf) {
    float *d = buf;
    int32_t *bias = (int32_t *)(d + n / 32);
    int8_t *qs = (int8_t *)(bias + n / 4);
    quantize_act(x, n, qs, d);
#ifdef LP_VNNI
    act_bias(qs, n, t == LP_TYPE_Q4_0 ? 8 : 128, bias);
#else
    (void)t;
    (void)act_bias;
#endif
    act->qs = qs;
    act->d = d;
    act->bias = bias;
}

static bool matvec_run(lp_type t, const void *W, const uint8_t *const *rowp, const float *x, float *y, int64_t rows,
                       int64_t cols, lp_pool *pool, bool quantize) {
    if (!lp_type_can_dequantize(t) || rows < 0 || cols <= 0) return false;
    size_t row_bytes = lp_row_size(t, cols);
    if (row_bytes == 0) return false; // cols not a multiple of the block size
    matvec_args a = {
        .t = t, .W = W, .x = x, .y = y, .rows = rows, .cols = cols,
        .row_bytes = row_bytes, .chunk_bytes = lp_row_size(t, LP_MATVEC_CHUNK), .act = NULL, .rowp = rowp,
    };
    if (rows == 0) return true;
    if (!quantize || !lp_matvec_quantizes_x(t)) {
        lp_pool_run(pool, matvec_worker, &a);
        return true;
    }
    _Alignas(64) unsigned char stack_buf[LP_MATVEC_STACK_COLS / 32 * 4 + LP_MATVEC_STACK_COLS / 4 * 4 + LP_MATVEC_STACK_COLS];
    void *buf = cols <= LP_MATVEC_STACK_COLS ? (void *)stack_buf : malloc(act_bytes(cols));
    if (!buf) return false;
    q8_act act;
    act_make(&act, t, x, cols, buf);
    a.act = &act;
    lp_pool_run(pool, matvec_worker, &a);
    if (buf != (void *)stack_buf) free(buf);
    return true;
}

bool lp_matvec(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool) {
    return matvec_run(t, W, NULL, x, y, rows, cols, pool, true);
}

bool lp_matvec_exact(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool) {
    return matvec_run(t, W, NULL, x, y, rows, cols, pool, false);
}

bool lp_matvec_gather(lp_type t, const void *const *rows, const float *x, float *y, int64_t n, int64_t cols, bool exact,
                      lp_pool *pool) {
    if (n > 0 && !rows) return false;
    return matvec_run(t, NULL, (const uint8_t *const *)rows, x, y, n, cols, pool, !exact);
}

// ----------------------------------------------------------------------------
// y += sum_i c_i * row_i over gathered typed rows (the flash FFN's down columns)

typedef struct axpy_args {
    lp_type t;
    const uint8_t *const *rows; // (n) row addresses, cols elements of type t each
    const float *c;             // (n)
    float *y;                   // (cols)
    int64_t n, cols, blk;       // blk: the type's block size (columns are split on it)
} axpy_args;

// y (32 * nb) += c * row (nb blocks): the block's scale folded into c, each
// element one fused multiply-add (vectorized and scalar give the same
// result: one rounding per element either way).
static void axpy_q4_0(float *y, float c, const uint8_t *w, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, w += 18, y += 32) {
        uint16_t hd;
        memcpy(&hd, w, 2);
        const float s = c * f16_to_f32(hd);
        const uint8_t *qs = w + 2;
#if defined(LP_AVX512)
        __m128i q = _mm_loadu_si128((const __m128i *)qs);
        __m512i lo = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(q, _mm_set1_epi8(0x0F))), _mm512_set1_epi32(8));
        __m512i hi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F))),
                                      _mm512_set1_epi32(8));
        const __m512 vs = _mm512_set1_ps(s);
        _mm512_storeu_ps(y, _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(lo), _mm512_loadu_ps(y)));
        _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(hi), _mm512_loadu_ps(y + 16)));
#else
        for (int j = 0; j < 16; j++) {
            y[j] = fmaf(s, (float)((qs[j] & 0x0F) - 8), y[j]);
            y[j + 16] = fmaf(s, (float)((qs[j] >> 4) - 8), y[j + 16]);
        }
#endif
    }
}

static void axpy_q8_0(float *y, float c, const uint8_t *w, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, w += 34, y += 32) {
        uint16_t hd;
        memcpy(&hd, w, 2);
        const float s = c * f16_to_f32(hd);
        const int8_t *qs = (const int8_t *)(w + 2);
#if defined(LP_AVX512)
        const __m512 vs = _mm512_set1_ps(s);
        __m512i a = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qs));
        __m512i b2 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16)));
        _mm512_storeu_ps(y, _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(a), _mm512_loadu_ps(y)));
        _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(b2), _mm512_loadu_ps(y + 16)));
#else
        for (int j = 0; j < 32; j++) y[j] = fmaf(s, (float)qs[j], y[j]);
#endif
    }
}

static void axpy_f16(float *y, float c, const uint16_t *w, int64_t n) {
    int64_t j = 0;
#if defined(LP_AVX512)
    const __m512 vc = _mm512_set1_ps(c);
    for (; j + 16 <= n; j += 16) {
        __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + j)));
        _mm512_storeu_ps(y + j, _mm512_fmadd_ps(vc, v, _mm512_loadu_ps(y + j)));
    }
#endif
    for (; j < n; j++) y[j] = fmaf(c, f16_to_f32(w[j]), y[j]);
}

// Each worker owns a column slice and adds every row's part of it in row
// order, so each y element sees the same sequence of additions whatever the
// number of workers.
static void axpy_worker(void *p, int ith, int nth) {
    const axpy_args *a = p;
    int64_t b0, b1;
    lp_split(a->cols / a->blk, ith, nth, &b0, &b1);
    const int64_t c0 = b0 * a->blk, c1 = b1 * a->blk;
    if (c1 <= c0) return;
    const size_t off = lp_row_size(a->t, c0); // byte offset of column c0 in a row
    float buf[LP_MATVEC_CHUNK];               // (chunk) dequantized slice of one row
    const int64_t chunk = LP_MATVEC_CHUNK - LP_MATVEC_CHUNK % a->blk;
    for (int64_t s = c0; s < c1; s += chunk) {
        const int64_t m = c1 - s < chunk ? c1 - s : chunk;
        const size_t soff = off + lp_row_size(a->t, s - c0);
        float *y = a->y + s;
        for (int64_t i = 0; i < a->n; i++) {
            if (a->c[i] == 0.0f) continue; // silu(g) * u == 0: adds nothing
            const uint8_t *w = a->rows[i] + soff;
            if (a->t == LP_TYPE_F32) {
                axpy_f32(y, a->c[i], (const float *)w, m);
            } else if (a->t == LP_TYPE_Q4_0) {
                axpy_q4_0(y, a->c[i], w, m / 32);
            } else if (a->t == LP_TYPE_Q8_0) {
                axpy_q8_0(y, a->c[i], w, m / 32);
            } else if (a->t == LP_TYPE_F16) {
                axpy_f16(y, a->c[i], (const uint16_t *)w, m);
            } else {
                lp_dequantize_row(a->t, w, buf, m);
                axpy_f32(y, a->c[i], buf, m);
            }
        }
    }
}

typedef struct deq_gather_args {
    lp_type t;
    const uint8_t *const *rows; // (n)
    float *out;                 // (n, cols)
    int64_t n, cols;
    bool ok;
} deq_gather_args;

static void deq_gather_worker(void *p, int ith, int nth) {
    deq_gather_args *a = p;
    int64_t r0, r1;
    lp_split(a->n, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        if (!lp_dequantize_row(a->t, a->rows[r], a->out + r * a->cols, a->cols)) a->ok = false;
    }
}

bool lp_dequantize_gather(lp_type t, const void *const *rows, float *out, int64_t n, int64_t cols, lp_pool *pool) {
    if (n < 0 || cols <= 0 || (n > 0 && (!rows || !out))) return false;
    deq_gather_args a = {.t = t, .rows = (const uint8_t *const *)rows, .out = out, .n = n, .cols = cols, .ok = true};
    if (n > 0) lp_pool_run(pool, deq_gather_worker, &a);
    return a.ok;
}

bool lp_axpy_gather(lp_type t, const void *const *rows, const float *c, float *y, int64_t n, int64_t cols, lp_pool *pool) {
    if (!lp_type_can_dequantize(t) || n < 0 || cols <= 0 || (n > 0 && (!rows || !c))) return false;
    int64_t blk = lp_type_block_size(t);
    if (blk <= 0 || cols % blk != 0) return false;
    if (n == 0) return true;
    axpy_args a = {.t = t, .rows = (const uint8_t *const *)rows, .c = c, .y = y, .n = n, .cols = cols, .blk = blk};
    lp_pool_run(pool, axpy_worker, &a);
    return true;
}

bool lp_matvec_q8_ref(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols) {
    if (!lp_matvec_quantizes_x(t) || rows < 0 || cols <= 0) return false;
    size_t row_bytes = lp_row_size(t, cols);
    if (row_bytes == 0) return false;
    void *buf = malloc(act_bytes(cols));
    if (!buf) return false;
    q8_act act;
    act_make(&act, t, x, cols, buf);
    for (int64_t r = 0; r < rows; r++) y[r] = dot_q8act_scalar(t, (const uint8_t *)W + (size_t)r * row_bytes, &act, cols / 32);
    free(buf);
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
    if (M == 1) return lp_matvec_exact(t, W, X, Y, rows, cols, pool); // one token: no panel needed, x stays f32

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

// s[0..n) = exp(s - max) in place; returns their sum, accumulated in double.
// AVX-512: a Cephes-style expf (range reduction by ln 2 in two parts, degree-5
// polynomial, scaling by vscalefps), within ~2 ulp of expf; the arguments are
// <= 0 here, clamped at -104 (exp < 2^-149: the result flushes to 0).
#if defined(LP_AVX512)
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static double exp_sub_sum(float *s, int64_t n, float max) {
    const __m512 vmax = _mm512_set1_ps(max);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmax));
        _mm512_storeu_ps(s + j, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    if (j < n) {
        const __mmask16 m = (__mmask16)((1u << (n - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax)));
        _mm512_mask_storeu_ps(s + j, m, e);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}
#else
static double exp_sub_sum(float *s, int64_t n, float max) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - max);
        sum += s[j];
    }
    return sum;
}
#endif

typedef struct attn_args {
    float *out;            // (n_q, n_head, head_dim)
    const float *q;        // (n_q, n_head, head_dim)
    const float *k, *v;    // (n_kv, n_head_kv, head_dim)
    float *scratch;        // per query: (nth, n_kv); gemm: (qb, n_kv) score block
    int n_q, n_kv, n_head, n_head_kv, head_dim;
    int64_t q_pos0;
    bool causal;
    float scale;
    // gemm schedule: the score block of query rows [i0, i0 + n_rows), kmax columns
    int i0, n_rows, kmax;
} attn_args;

// keys visible to query i
static inline int64_t attn_n_vis(const attn_args *a, int64_t i) {
    int64_t n_vis = a->n_kv;
    if (a->causal) {
        int64_t last = a->q_pos0 + i; // last visible key
        n_vis = last + 1 < n_vis ? last + 1 : n_vis;
    }
    return n_vis;
}

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
            const int64_t n_vis = attn_n_vis(a, i);
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
            const float inv = (float)(1.0 / exp_sub_sum(att, n_vis, max));
            for (int64_t j = 0; j < n_vis; j++) {
                const float *vj = a->v + j * kv_stride + kvh * a->head_dim; // (head_dim)
                axpy_f32(oi, att[j] * inv, vj, a->head_dim);
            }
        }
    }
}

// gemm schedule: softmax of the rows of one score block, rows split over the
// pool; masked columns (causal) become exact zeros.
static void attn_softmax_worker(void *p, int ith, int nth) {
    const attn_args *a = p;
    int64_t r0, r1;
    lp_split(a->n_rows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        float *s = a->scratch + r * a->kmax; // (kmax)
        const int64_t n_vis = attn_n_vis(a, a->i0 + r); // <= kmax, >= 1
        float max = -INFINITY;
        for (int64_t j = 0; j < n_vis; j++) max = s[j] > max ? s[j] : max;
        const float inv = (float)(1.0 / exp_sub_sum(s, n_vis, max));
        for (int64_t j = 0; j < n_vis; j++) s[j] *= inv;
        for (int64_t j = n_vis; j < a->kmax; j++) s[j] = 0.0f;
    }
}

// Query rows per score block: the block (rows, n_kv) stays within ~2 MB (L2).
#define LP_ATTN_BLOCK_FLOATS (512 * 1024)

static int attn_qblock(int n_q, int n_kv) {
    int64_t qb = LP_ATTN_BLOCK_FLOATS / (n_kv > 0 ? n_kv : 1);
    if (qb < LP_ATTN_GEMM_MIN_Q) qb = LP_ATTN_GEMM_MIN_Q;
    if (qb >= n_q) return n_q;
    int64_t nblk = (n_q + qb - 1) / qb; // equal blocks
    return (int)((n_q + nblk - 1) / nblk);
}

static bool attn_use_gemm(int n_q, int n_kv) { return n_q >= LP_ATTN_GEMM_MIN_Q && n_kv > 0; }

size_t lp_attention_scratch_size(int n_q, int n_kv, int n_head, int head_dim, const lp_pool *pool) {
    (void)n_head;
    (void)head_dim;
    if (n_q <= 0) return 64;
    size_t per = n_kv > 0 ? (size_t)n_kv : 1;
    size_t floats = attn_use_gemm(n_q, n_kv) ? (size_t)attn_qblock(n_q, n_kv) * per
                                             : (size_t)lp_pool_size(pool) * per;
    return floats * sizeof(float) + 64; // + alignment slack
}

size_t lp_attention_scratch_bound(int n_q_max, int n_kv_max, const lp_pool *pool) {
    /* the gemm path uses qblock(n_q, n_kv)·n_kv <= min(n_q, max(BLOCK/n_kv, MIN_Q))·n_kv,
     * which is not largest at the largest n_q (blocks are equalised) */
    const size_t nk = n_kv_max > 0 ? (size_t)n_kv_max : 1, nq = n_q_max > 0 ? (size_t)n_q_max : 1;
    size_t gemm = (size_t)LP_ATTN_GEMM_MIN_Q * nk;
    if (gemm < (size_t)LP_ATTN_BLOCK_FLOATS) gemm = (size_t)LP_ATTN_BLOCK_FLOATS;
    if (gemm > nq * nk) gemm = nq * nk;
    const size_t rows = (size_t)lp_pool_size(pool) * nk;
    return (gemm > rows ? gemm : rows) * sizeof(float) + 64;
}

bool lp_attention_ex(float *out, const float *q, const float *k, const float *v,
                     int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                     int64_t q_pos0, bool causal, float scale, void *scratch, size_t scratch_bytes, lp_pool *pool) {
    if (n_q < 0 || n_kv < 0 || n_head <= 0 || n_head_kv <= 0 || head_dim <= 0) return false;
    if (n_head % n_head_kv != 0 || q_pos0 < 0) return false;
    if (n_q == 0) return true;
    if (!scratch || scratch_bytes < lp_attention_scratch_size(n_q, n_kv, n_head, head_dim, pool)) return false;
    float *s = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    attn_args a = {
        .out = out, .q = q, .k = k, .v = v, .scratch = s,
        .n_q = n_q, .n_kv = n_kv, .n_head = n_head, .n_head_kv = n_head_kv, .head_dim = head_dim,
        .q_pos0 = q_pos0, .causal = causal, .scale = scale,
    };
    if (!attn_use_gemm(n_q, n_kv)) {
        lp_pool_run(pool, attn_worker, &a);
        return true;
    }
    // Per head and block of query rows: S = scale Q Kᵀ, softmax rows, O = P V.
    // sgemm runs on this thread (OpenBLAS threads it; the pool sleeps), the
    // softmax on the pool. Q, K, V and out are read in place with their
    // row strides, so nothing is copied.
    const int group = n_head / n_head_kv;
    const int ldq = n_head * head_dim, ldkv = n_head_kv * head_dim;
    const int qb = attn_qblock(n_q, n_kv);
    for (int h = 0; h < n_head; h++) {
        const float *kh = k + (int64_t)(h / group) * head_dim; // (n_kv, head_dim), ld ldkv
        const float *vh = v + (int64_t)(h / group) * head_dim;
        for (int i0 = 0; i0 < n_q; i0 += qb) {
            const int rows = n_q - i0 < qb ? n_q - i0 : qb;
            int64_t kmax = n_kv;
            if (causal && q_pos0 + i0 + rows < kmax) kmax = q_pos0 + i0 + rows; // last row's view
            a.i0 = i0;
            a.n_rows = rows;
            a.kmax = (int)kmax;
            const float *qh = q + (int64_t)i0 * ldq + (int64_t)h * head_dim; // (rows, head_dim), ld ldq
            float *oh = out + (int64_t)i0 * ldq + (int64_t)h * head_dim;
            // S (rows, kmax) = scale · Qh Khᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, (int)kmax, head_dim,
                        scale, qh, ldq, kh, ldkv, 0.0f, s, (int)kmax);
            lp_pool_run(pool, attn_softmax_worker, &a);
            // Oh (rows, head_dim) = P (rows, kmax) · Vh (kmax, head_dim)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, (int)kmax,
                        1.0f, s, (int)kmax, vh, ldkv, 0.0f, oh, ldq);
        }
    }
    return true;
}

bool lp_attention(float *out, const float *q, const float *k, const float *v,
                  int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                  int64_t q_pos0, bool causal, float scale, lp_pool *pool) {
    if (n_q < 0 || n_kv < 0 || n_head <= 0 || n_head_kv <= 0 || head_dim <= 0) return false;
    if (n_head % n_head_kv != 0 || q_pos0 < 0) return false;
    if (n_q == 0) return true;
    size_t bytes = lp_attention_scratch_size(n_q, n_kv, n_head, head_dim, pool);
    void *scratch = malloc(bytes);
    if (!scratch) return false;
    bool ok = lp_attention_ex(out, q, k, v, n_q, n_kv, n_head, n_head_kv, head_dim, q_pos0, causal, scale,
                              scratch, bytes, pool);
    free(scratch);
    return ok;
}
