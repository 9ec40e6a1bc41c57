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

/* y (rows) = W (rows, cols) · x (cols), W of any lp_type_can_dequantize type.
 * cols must be a multiple of the type's block size. Rows are split over the
 * pool. Returns false for an unsupported type or bad cols. */
bool lp_matvec(lp_type t, const void *W, const float *x, float *y, int64_t rows, int64_t cols, lp_pool *pool);

/* Y (M, rows) = X (M, cols) · W^T for W of any supported type: dequantizes W
 * in row panels and uses lp_matmul. For prefill and the ViT. */
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
 * 1/√head_dim. n_head must be a multiple of n_head_kv. Heads are split over
 * the pool. Scratch is allocated internally per call (n_kv floats per
 * thread); returns false on allocation failure. */
bool lp_attention(float *out, const float *q, const float *k, const float *v,
                  int n_q, int n_kv, int n_head, int n_head_kv, int head_dim,
                  int64_t q_pos0, bool causal, float scale, lp_pool *pool);

#endif
