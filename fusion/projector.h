/* fusion/projector.h — the LLaVA-family projectors that map vision features
 * into the language model's embedding space, plus the small building blocks
 * (dense layer, activations) the ViT in vision/clip.c shares with them.
 *
 * Projectors (tensor names as in llama.cpp's mmproj GGUF files):
 *
 *   "mlp"     mm.0 (hidden, in) + bias -> GELU -> mm.2 (out, hidden) + bias.
 *             llama.cpp's PROJECTOR_TYPE_MLP (LLaVA-1.5 "mlp2x_gelu",
 *             Ferret, ShareGPT4V, ...). llama.cpp also treats mm.2 as
 *             optional in its graph, but clip_n_mmproj_embd() dereferences
 *             mm.2.weight for this type, so a file without it never runs
 *             there; loupe therefore requires mm.2 and says so.
 *             The Yi-VL variant (mm.1/mm.3/mm.4 present, llama.cpp
 *             PROJECTOR_TYPE_MLP_NORM) is refused as unsupported.
 *   "linear"  mm.0 (out, in) + bias, no activation: LLaVA v1's
 *             mm_projector_type "linear". This is a loupe extension:
 *             llama.cpp has no "linear" projector type (its
 *             clip_projector_type_from_string() returns UNKNOWN and loading
 *             fails), and its legacy surgery script would name the weight
 *             "mm.weight", which llama.cpp never loads.
 *   "internvl" InternVL's mlp1 (llama.cpp PROJECTOR_TYPE_INTERNVL), over the
 *             pixel-shuffled ViT features (4·D wide, vision/clip.c):
 *             mm.model.mlp.0 LayerNorm (eps 1e-5, PyTorch's default, as
 *             InternVL's nn.LayerNorm) -> mm.model.mlp.1 (hidden, 4D) + bias
 *             -> GELU -> mm.model.mlp.3 (out, hidden) + bias.
 *   "ldpv2"   MobileVLM V2's lightweight downsample projector (llama.cpp
 *             PROJECTOR_TYPE_LDPV2) over the s×s patch grid:
 *             mm.model.mlp.0 + bias -> GELU -> mm.model.mlp.2 + bias,
 *             2×2 average pooling (stride 2) to (s/2)², then the PEG:
 *             a 3×3 depthwise convolution (mm.model.peg.0.weight
 *             [3, 3, C, 1], zero padding 1) + mm.model.peg.0.bias, added to
 *             the pooled grid; tokens row-major. ggml builds the
 *             convolution's im2col in f16, so with LP_DENSE_ROUND_LIKE_GGML
 *             its input is rounded to f16 (the kernel keeps its type).
 *             llama.cpp hard-codes a 24×24 grid (CLIP ViT-L/14 at 336).
 *   "ldp"     MobileVLM (v1): mm.model.mlp.1 + bias -> GELU -> mm.model.mlp.3
 *             + bias on the s×s grid, then block 1 (stride 1, added to its
 *             input) and block 2 (stride 2: (s/2)² tokens), each an
 *             lp_ldp_block; LayerNorm eps = the ViT's. Depthwise
 *             convolutions round their input to f16 like ldpv2's.
 *
 * GELU flavour: llama.cpp uses ggml_gelu(), the tanh approximation, which on
 * the CPU backend goes through a 64K-entry f16 lookup table (input rounded to
 * f16, output stored as f16: ~1e-3 relative error, exactly reproduced by
 * LP_ACT_GELU_TANH_F16). PyTorch LLaVA uses nn.GELU(), the exact erf form
 * (LP_ACT_GELU_ERF). The caller picks. */
#ifndef LP_PROJECTOR_H
#define LP_PROJECTOR_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/pool.h"
#include "../core/types.h"
#include "../language/weights.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- activations ---- */
typedef enum lp_act {
    LP_ACT_NONE = 0,
    LP_ACT_GELU_ERF,       /* 0.5 x (1 + erf(x/√2)): torch nn.GELU()            */
    LP_ACT_GELU_TANH,      /* tanh approximation, f32 (ggml_gelu_f32 formula)  */
    LP_ACT_GELU_TANH_F16,  /* ggml-cpu ggml_gelu: f16 table, |x| >= 10 bypass  */
    LP_ACT_QUICK_GELU,     /* x σ(1.702 x), f32                                */
    LP_ACT_QUICK_GELU_F16, /* ggml-cpu ggml_gelu_quick: f16 table, no bypass   */
    LP_ACT_SILU            /* x σ(x)                                           */
} lp_act;

const char *lp_act_name(lp_act a);
/* In place over n values. */
void lp_act_apply(lp_act a, float *x, int64_t n);

/* ---- dense layer: Y = X W^T + b ----
 * W comes from the weight store at call time and is released afterwards
 * (so the flash store can stream it). b is an f32 copy owned by the layer. */
typedef struct lp_dense {
    lp_tensor w;   /* ne = [in, out]: `out` rows of `in` elements          */
    float *b;      /* (out) or NULL                                       */
    int64_t in, out;
} lp_dense;

/* Rounding applied to X before the product, to reproduce ggml-cpu, which
 * converts the activations to the weight's "vec_dot_type" first: f16 for f16
 * weights, bf16 for bf16 weights (f32 weights: no rounding). Quantized
 * weights (ggml would quantize X to q8) are not emulated. */
typedef enum lp_dense_round {
    LP_DENSE_ROUND_NONE = 0,
    LP_DENSE_ROUND_LIKE_GGML = 1
} lp_dense_round;

/* Look up `<prefix>.weight` (required) and `<prefix>.bias` (required if
 * need_bias, else optional), check the weight is a 2-D [in, out] matrix of a
 * computable type (in < 0 / out < 0: take from the file) and the bias has
 * `out` elements. Errors name the file and the tensor. */
loupe_status lp_dense_load(lp_dense *d, const lp_gguf *g, lp_weight_store *ws, const char *prefix,
                           int64_t in, int64_t out, bool need_bias, lp_error *err);
void lp_dense_free(lp_dense *d);

/* Y (n, out) = X (n, in) W^T + b. scratch: NULL, or n*in floats used when
 * rounding is requested (allocated internally when NULL). X is not modified. */
loupe_status lp_dense_forward(const lp_dense *d, lp_weight_store *ws, const float *X, float *Y, int n,
                              lp_dense_round round, float *scratch, lp_pool *pool, lp_error *err);

/* A tensor of any computable type, dequantized to a fresh f32 array of
 * exactly `n` elements (error naming the tensor if its element count is not
 * n). *out is malloc'd; free() it. */
loupe_status lp_load_f32(const lp_gguf *g, lp_weight_store *ws, const char *name, int64_t n, float **out,
                         lp_error *err);

/* ---- projectors ---- */
typedef enum lp_projector_type {
    LP_PROJECTOR_MLP = 0,
    LP_PROJECTOR_LINEAR = 1,
    LP_PROJECTOR_INTERNVL = 2,
    LP_PROJECTOR_LDPV2 = 3,
    LP_PROJECTOR_LDP = 4
} lp_projector_type;

/* One MobileNetV3-style block of MobileVLM's ldp projector
 * (mm.model.mb_block.B.block.*): depthwise 3×3 conv (block.0.0, no bias) ->
 * LayerNorm (block.0.1) -> hardswish -> squeeze-excite (global average,
 * block.1.fc1 + ReLU, block.1.fc2 + hardsigmoid, per-channel scale) ->
 * pointwise linear (block.2.0, no bias) -> LayerNorm (block.2.1). */
typedef struct lp_ldp_block {
    float *dw;               /* (C, 3, 3) */
    float *ln0_w, *ln0_b;    /* (C) */
    lp_dense fc1, fc2;       /* (se, C), (C, se) */
    lp_dense pw;             /* (C, C) */
    float *ln2_w, *ln2_b;    /* (C) */
} lp_ldp_block;

#define LP_INTERNVL_PROJ_EPS 1e-5f

typedef struct lp_projector {
    lp_projector_type type;
    int64_t in_dim;     /* vision feature width                         */
    int64_t hidden_dim; /* mm.0 output width (== out_dim for linear)    */
    int64_t out_dim;    /* language-model embedding width               */
    lp_dense mm0;       /* (hidden_dim, in_dim)    internvl: mm.model.mlp.1 */
    lp_dense mm2;       /* (out_dim, hidden_dim)   mlp: mm.2; internvl: mm.model.mlp.3 */
    float *norm_w, *norm_b; /* (in_dim) internvl only: mm.model.mlp.0   */
    float *peg_w, *peg_b;   /* ldpv2: (out_dim, 3, 3) depthwise kernel, (out_dim) bias */
    lp_ldp_block ldp[2];    /* ldp: block 1 (stride 1, residual), block 2 (stride 2) */
    float ln_eps;           /* ldp: its LayerNorms' eps (the ViT's, as llama.cpp) */
} lp_projector;

/* Parse a clip.projector_type string; LOUPE_ERR_UNSUPPORTED (names key and
 * value) for llama.cpp types loupe does not implement, LOUPE_ERR_FORMAT for
 * unknown strings. `key` and the file name are used in messages. */
loupe_status lp_projector_type_parse(const char *s, const char *path, const char *key, lp_projector_type *out,
                                     lp_error *err);

/* Load and validate the projector tensors; in_dim is the expected feature
 * width (mm.0.weight ne[0]). */
loupe_status lp_projector_load(lp_projector *p, lp_projector_type type, const lp_gguf *g, lp_weight_store *ws,
                               int64_t in_dim, lp_error *err);
void lp_projector_free(lp_projector *p);

/* mlp: out (n, out_dim) = act(x W0^T + b0) W2^T + b2; internvl: the same
 * after a LayerNorm of each row of x.
 * scratch_hidden: NULL or n*hidden_dim floats. */
loupe_status lp_projector_mlp(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                              lp_act act, lp_dense_round round, float *scratch_hidden, lp_pool *pool,
                              lp_error *err);
/* linear: out (n, out_dim) = x W0^T + b0. */
loupe_status lp_projector_linear(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                 lp_dense_round round, lp_pool *pool, lp_error *err);
/* ldpv2: x (n, in_dim) on a side × side grid (n = side², side even) ->
 * out (n / 4, out_dim). */
loupe_status lp_projector_ldpv2(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int side,
                                lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err);

/* ldp: x (n, in_dim) on a side × side grid -> out (n / 4, out_dim). */
loupe_status lp_projector_ldp(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int side,
                              lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err);

/* Dispatch on p->type (act is ignored for linear); ldp/ldpv2 take the n
 * rows as a square grid. */
loupe_status lp_projector_forward(const lp_projector *p, lp_weight_store *ws, const float *x, float *out, int n,
                                  lp_act act, lp_dense_round round, lp_pool *pool, lp_error *err);

#endif
