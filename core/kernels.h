/* core/kernels.h — the numeric kernels: dense algebra, norms, activations,
 * RoPE and attention. All row-major, f32 activations.
 *
 * Weights follow ggml/GGUF: a matrix W of shape (rows=out, cols=in) is stored
 * row by row, each row in the tensor's type. `y = W x` therefore dots x with
 * each stored row. */
#ifndef LP_KERNELS_H
#define LP_KERNELS_H

#include "pool.h"
#include "types.h"
#include <stdbool.h>
#include <stdint.h>

/* C (M, N) = A (M, K) · B (N, K)^T  [+ C if accumulate]. Through cblas_sgemm.
 * This is "x W^T" with x as M tokens and W as an (N, K) weight matrix. */
void lp_matmul(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate);
/* C (M, N) = A (M, K) · B (K, N)  [+ C if accumulate]. Through cblas_sgemm. */
void lp_matmul_nn(const float *A, const float *B, float *C, int M, int N, int K, bool accumulate);

/* y (rows) = W (rows, cols) · x (cols), W of any lp_type_can_dequantize type.
 * cols must be a multiple of the type's block size. Rows are split over the
 * pool. Returns false for an unsupported type, bad cols, or (only when cols
 * exceeds LP_MATVEC_STACK_COLS) failure to allocate the quantized activations.
 *
 * Arithmetic, like ggml-cpu's mul_mat for one token:
 *   - Q4_0 and Q8_0 weights: x is first quantized to Q8_0 (ggml's vec_dot_type
 *     for both; the x86 quantize_row_q8_0: d = amax/127 stored as f16,
 *     q = round-to-nearest-even(x * 127/amax)), then each block's integer dot
 *     is exact and the row sum is  sum_b  f16(dw_b) * f16(dx_b) * isum_b  in
 *     f32. The result therefore carries x's quantization error: per element
 *     at most 0.5 * dx_b (relative ~1/254 of the block's absmax), i.e.
 *       |y - W·x| <= sum_b 0.5 * dx_b * sum_j |w_bj|   (+ f32 rounding),
 *     the same kind of error llama.cpp has (~1e-3 relative on a row sum; on
 *     a 2-layer toy decoder ~1e-2 on O(1) logits). SIMD (AVX-512 VNNI, or
 *     AVX2) and the scalar code (PORTABLE=1) give bit-identical results:
 *     lanes are accumulated in one fixed layout (see kernels.c).
 *     ggml's own AVX2 vec_dot sums the same exact lane values in another
 *     order, so llama.cpp and loupe agree to f32 reassociation.
 *   - F32, F16, BF16 and every other quantized type (Q4_1, Q5_0, Q4_K, Q5_K,
 *     Q6_K): x stays f32; the weights are dequantized exactly (as
 *     lp_dequantize_row) and dotted in f32. F16 uses F16C + FMA when built
 *     with them. (ggml would round x to f16 for f16 weights; callers that
 *     want that round x themselves, see fusion/projector.c.)
 * Results never depend on the number of pool threads. */
bool lp_matvec(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool);

/* As lp_matvec but x is never quantized: every type is dequantized exactly
 * and dotted with f32 x (error <= (cols + 2) * 2^-24 * sum|w x|). For
 * callers that must match an f32 reference: language/decoder.c uses it (its
 * contract, tested at 1e-4 against a double reference with dequantized
 * weights, would not hold with q8 activations). AVX-512 kernels for F16,
 * BF16, Q8_0, Q4_0, Q4_K and Q6_K; other types dequantize 2048-element
 * chunks into L1 and dot them. Identical to lp_matvec for types it does not
 * quantize x for. */
bool lp_matvec_exact(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool);
#define LP_HAVE_MATVEC_EXACT 1

/* y[i] = rows[i] · x for n gathered rows of type t (cols elements each):
 * per row exactly the arithmetic of lp_matvec (exact: lp_matvec_exact),
 * so a row gives the same float alone, gathered, or inside its matrix. The
 * flash FFN computes its active neurons' gate and up rows with it. */
bool lp_matvec_gather(lp_type t, const void *const *rows, const float *x, float *y, int64_t n, int64_t cols, bool exact,
                      lp_pool *pool);

/* y (cols) += sum_i c[i] * rows[i] for n gathered rows of type t; terms
 * with c[i] == 0 are skipped. Every y element adds its terms in the order
 * i = 0..n-1, one fused multiply-add each (for block types the block scale
 * is folded into c: y += (c d) q), so the result does not depend on the
 * pool size or on SIMD. The
 * flash FFN's down projection: y = sum over active neurons of h_i * down[:, i]. */
bool lp_axpy_gather(lp_type t, const void *const *rows, const float *c, float *y, int64_t n, int64_t cols, lp_pool *pool);

/* out (n, cols) = the n gathered rows of type t, dequantized (rows split
 * over the pool). false for a type that cannot be dequantized. */
bool lp_dequantize_gather(lp_type t, const void *const *rows, float *out, int64_t n, int64_t cols, lp_pool *pool);

/* Activation vectors up to this many columns are quantized into a stack
 * buffer (about 2.2 bytes per column); longer ones are malloc'd per call. */
#define LP_MATVEC_STACK_COLS 8192

/* true if lp_matvec quantizes x for weights of type t (Q4_0, Q8_0). */
bool lp_matvec_quantizes_x(lp_type t);

/* The scalar reference of lp_matvec's quantized path, for tests: the same
 * quantization and the same accumulation layout, no SIMD, no threads.
 * Returns false if !lp_matvec_quantizes_x(t) or cols is bad. */
bool lp_matvec_q8_ref(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols);

/* x (n) -> Q8_0 blocks (n/32 of { f16 d; int8 qs[32]; }), exactly as
 * lp_matvec quantizes x (ggml's x86 quantize_row_q8_0). n % 32 == 0. */
void lp_quantize_row_q8_0_act(const float *x, void *dst, int64_t n);

/* Y (M, rows) = X (M, cols) · W^T for W of any supported type: dequantizes W
 * in row panels and uses lp_matmul. For prefill and the ViT. X stays f32 for
 * every M (M == 1 goes through lp_matvec_exact). */
bool lp_matmul_w(lp_type t, const void *W, const float *X, float *Y, int M, int64_t rows, int64_t cols, lp_pool *pool);

void lp_softmax(float *x, int64_t n);                 /* in place, max-subtracted */
void lp_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);   /* w may be NULL */
void lp_layernorm(float *out, const float *x, const float *w, const float *b, int64_t n, float eps); /* w,b may be NULL */
void lp_gelu_erf(float *x, int64_t n);   /* 0.5 x (1 + erf(x/√2)) */
void lp_gelu_tanh(float *x, int64_t n);  /* 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))) */
void lp_quick_gelu(float *x, int64_t n); /* x σ(1.702 x) */
void lp_silu(float *x, int64_t n);       /* x σ(x) */
void lp_add(float *y, const float *x, int64_t n);        /* y += x */
void lp_mul(float *y, const float *x, int64_t n);        /* y *= x */
void lp_scale(float *y, float s, int64_t n);             /* y *= s */

typedef enum lp_rope_mode {
    LP_ROPE_NORMAL = 0, /* rotate pairs (2i, 2i+1): llama */
    LP_ROPE_NEOX = 2    /* rotate pairs (i, i+d/2): neox, qwen2, ... (ggml's value) */
} lp_rope_mode;

/* Rotate x (n_head, head_dim) in place for position pos. Only the first
 * n_rot dims of each head rotate (n_rot <= head_dim, even); frequency of pair
 * i is base^(-2i/n_rot), as in ggml. */
void lp_rope(float *x, int n_head, int head_dim, int n_rot, int64_t pos, float base, lp_rope_mode mode);

/* Multi-head attention with grouped-query sharing.
 *   q   (n_q, n_head, head_dim)        tokens of this call
 *   k,v (n_kv, n_head_kv, head_dim)    all keys/values visible (cache)
 *   out (n_q, n_head, head_dim)
 * Query token i sits at absolute position q_pos0 + i and keys at 0..n_kv-1.
 * causal: key j is visible to query i iff j <= q_pos0 + i. scale is usually
 * 1/√head_dim. n_head must be a multiple of n_head_kv.
 *
 * Two schedules, same math (max-subtracted softmax, f32 scores, double sum):
 *   - n_q >= LP_ATTN_GEMM_MIN_Q (prefill, ViT): per head and block of query
 *     rows, S = scale·Q Kᵀ and O = P V with cblas_sgemm (OpenBLAS threads
 *     them; the pool runs the softmax rows);
 *   - otherwise (decode): heads split over the pool, one query at a time.
 * Results never depend on the number of pool threads.
 *
 * Scratch: lp_attention_ex takes it from the caller (scratch_bytes >=
 * lp_attention_scratch_size(...) with the same sizes and pool), so repeated
 * calls allocate nothing and concurrent calls on different threads share
 * nothing. Returns false on bad sizes or too small a scratch.
 * lp_attention allocates the scratch itself per call (false on failure). */
#define LP_ATTN_GEMM_MIN_Q 16
size_t lp_attention_scratch_size(int n_q, int n_kv, int n_head, int head_dim, const lp_pool *pool);
/* Enough scratch for every call with n_q <= n_q_max and n_kv <= n_kv_max on
 * this pool (lp_attention_scratch_size is for one shape: a smaller n_q can
 * need more, because query blocks are equalised). */
size_t lp_attention_scratch_bound(int n_q_max, int n_kv_max, const lp_pool *pool);
bool lp_attention_ex(float *out, const float *q, const float *k, const float *v,
                     int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                     int64_t q_pos0, bool causal, float scale, void *scratch, size_t scratch_bytes, lp_pool *pool);
#define LP_HAVE_ATTENTION_EX 1
bool lp_attention(float *out, const float *q, const float *k, const float *v,
                  int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                  int64_t q_pos0, bool causal, float scale, lp_pool *pool);

#endif
