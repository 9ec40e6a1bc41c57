/* vision/clip.h — the CLIP ViT image encoder and LLaVA projector of an
 * mmproj GGUF, as llama.cpp's tools/mtmd defines them for the LLaVA/Ferret
 * family (clip_graph_llava in models/llava.cpp).
 *
 * Forward pass (n_side = S / P patches per side, floor; N = n_side²):
 *   patches   im2col of the (3,S,S) input into (N, 3·P·P), patch order
 *             row-major, column order (c, ky, kx) = ggml conv_2d's;
 *             × v.patch_embd.weight (n_embd, 3·P·P) [+ v.patch_embd.bias]
 *   tokens    with v.class_embd: N+1 tokens (see CLS order below);
 *             + v.position_embd.weight rows 0..n_pos−1 in token order
 *   v.pre_ln  LayerNorm (optional tensor)
 *   blocks    x += o(attn(ln1(x)));  x += down(act(up(ln2(x))))
 *             full (non-causal) attention, scale 1/√head_dim,
 *             LayerNorm eps = clip.vision.attention.layer_norm_epsilon,
 *             act = quick GELU unless clip.use_gelu / clip.use_silu
 *   features  the hidden state after the deepest feature layer (see layer
 *             count below), [+ v.post_ln]; with several
 *             clip.vision.feature_layer entries the hidden states before
 *             each listed layer (0 = the embeddings after pre_ln) are
 *             concatenated along the feature axis, ascending
 *   mm        rows 1..N (with a class token) or 0..N−1 (without) of the
 *             features go through the projector (fusion/projector.h)
 *
 * InternVL (clip.projector_type "internvl", llama.cpp's clip_graph_internvl;
 * OpenGVLab's InternViT + mlp1): the same blocks with, where the file has
 * them, layer scales (v.blk.N.ls1/ls2: x += ls1 ⊙ attn(..), x += ls2 ⊙
 * mlp(..)) and q/k norms (v.blk.N.attn_q_norm/attn_k_norm weights, over the whole
 * projection or per head, after the bias; a norm bias is ignored, as
 * llama.cpp does — InternViT-6B's have none); RMSNorm instead of LayerNorm
 * for the 6B ViT (n_embd 3200, 45 layers: llama.cpp's rule, the file has no
 * key). No pre/post norm. Every block runs (DROP_LAYER does not apply). The
 * patches (the class token dropped, wherever it is) are pixel-shuffled by
 * n_merge = clip.vision.projector.scale_factor (2: each output token is a
 * 2×2 patch group, 4·D wide) and go through the "internvl" projector
 * (fusion/projector.h). Its GELUs follow GELU_TANH/ACT_F16 like the others.
 * Tiling an image into S×S tiles is vision/tiles.h's job; this file encodes
 * one tile. CLS_LAST applies as for LLaVA: llama.cpp appends InternViT's
 * class token after the patches and adds the position rows in token order.
 *
 * Known llama.cpp defects and numeric shortcuts are reproduced by "quirk"
 * bits, all on by default (LP_CLIP_QUIRKS_LLAMACPP) so that output matches
 * llama.cpp's CPU backend; LP_CLIP_QUIRKS_NONE gives the PyTorch/HF
 * semantics the models were trained with:
 *
 *   CLS_LAST     llama.cpp (since the 2025 graph refactor) appends the class
 *                token AFTER the patches (ggml_concat(inp, class_embd)) but
 *                still adds position rows 0..N in token order and still
 *                feeds rows 1..N to the projector: patch p gets position
 *                embedding p instead of p+1, the class token gets N instead
 *                of 0, patch 0 is dropped and the class token is projected
 *                as the last image token (llama.cpp issue #25814, fix PR
 *                #25844 unmerged). Off: class token first, as CLIP.
 *   DROP_LAYER   with no clip.vision.feature_layer key llama.cpp runs
 *                block_count − 1 layers, although the legacy converter
 *                already removed the unused last layer and wrote
 *                block_count = num_hidden_layers − 1: LLaVA-1.5 therefore
 *                takes hidden_states[−3] instead of [−2] (issue #25817,
 *                PR #25845 unmerged). Off: run all block_count layers.
 *                With a feature_layer key both run max(feature_layer).
 *   POST_LN      apply v.post_ln to the deepest feature layer when the file
 *                has it (llama.cpp). Off: never (HF hidden_states carry no
 *                post-layernorm). The LLaVA converter drops post_ln, so this
 *                only matters for other files.
 *   GELU_TANH    GELU (projector; ViT when clip.use_gelu) is ggml_gelu, the
 *                tanh approximation. Off: exact erf GELU (torch nn.GELU(),
 *                HF "gelu").
 *   ACT_F16      GELU-tanh and quick GELU via ggml-cpu's f16 lookup tables:
 *                input rounded to f16, result rounded to f16, and for GELU
 *                |x| >= 10 bypassing the table. ~5e-4 relative error per
 *                activation. (GPU backends compute in f32.)
 *   MATMUL_F16   round the input of every product with an f16 (bf16) weight
 *                to f16 (bf16), as ggml-cpu converts activations to the
 *                weight's vec_dot_type; includes the im2col of the pixels,
 *                which ggml builds in the kernel's type (f16).
 * Not reproduced: llama.cpp's default flash attention on CPU casts K and V
 * to f16 and accumulates V·softmax in f16; q8 activation quantization for
 * quantized weights. Compare against llama.cpp with flash attention off.
 *
 * Weights: matrices are fetched from the weight store for each use and
 * released right after; biases, norms, class and position embeddings are
 * converted to f32 at load. The clip object keeps pointers to the gguf and
 * the store (both must outlive it). lp_clip_encode allocates its
 * activations per call and may run concurrently on one clip object (with
 * different pools) as long as the quirks/dump settings are not changed
 * meanwhile.
 */
#ifndef LP_CLIP_H
#define LP_CLIP_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/pool.h"
#include "../fusion/projector.h"
#include "../language/weights.h"
#include "image.h"
#include "preprocess.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct lp_clip lp_clip;

/* ---- what this ViT and Qwen2.5-VL's (vision/qwen_vit.h) read and compute alike ---- */
typedef enum lp_vit_ffn {
    LP_VIT_FFN_QUICK_GELU = 0, /* neither clip.use_gelu nor clip.use_silu */
    LP_VIT_FFN_GELU,
    LP_VIT_FFN_SILU
} lp_vit_ffn;

typedef struct lp_vit_common {
    float eps;              /* clip.vision.attention.layer_norm_epsilon */
    float mean[3], std[3];  /* clip.vision.image_mean / image_std       */
    lp_vit_ffn ffn;         /* clip.use_gelu / clip.use_silu             */
} lp_vit_common;

/* Read and validate those keys; errors name the file and the key. */
loupe_status lp_vit_common_load(const lp_gguf *g, lp_vit_common *out, lp_error *err);
/* The FFN activation and the projector's GELU under these quirk bits
 * (GELU_TANH, ACT_F16), and the matmul rounding (MATMUL_F16). */
lp_act lp_vit_ffn_act(lp_vit_ffn ffn, unsigned quirks);
lp_act lp_vit_gelu_act(unsigned quirks);
lp_dense_round lp_vit_dense_round(unsigned quirks);

#define LP_CLIP_QUIRK_CLS_LAST    (1u << 0)
#define LP_CLIP_QUIRK_DROP_LAYER  (1u << 1)
#define LP_CLIP_QUIRK_POST_LN     (1u << 2)
#define LP_CLIP_QUIRK_GELU_TANH   (1u << 3)
#define LP_CLIP_QUIRK_ACT_F16     (1u << 4)
#define LP_CLIP_QUIRK_MATMUL_F16  (1u << 5)
#define LP_CLIP_QUIRKS_LLAMACPP   0x3fu
#define LP_CLIP_QUIRKS_NONE       0u

/* Activation dump: called synchronously from lp_clip_encode with a name and
 * a row-major f32 array of n values. Names and shapes (n_pos = N + has_cls):
 *   "v.patch_embd"  (n_pos, n_embd)    patch embedding + class + positions
 *   "v.pre_ln"      (n_pos, n_embd)    only if the file has v.pre_ln
 *   "v.blk.%d"      (n_pos, n_embd)    output of each block that runs
 *   "v.post_ln"     (n_pos, n_embd)    only if applied
 *   "v.features"    (N, feature_dim)   the projector input (class token
 *                                      removed; under CLS_LAST these are
 *                                      tokens 1..N, exactly as llama.cpp)
 *   "mm.hidden"     (N, hidden_dim)    mlp only: after mm.0 and the GELU
 *   "mm.out"        (N, out_dim)       projector output
 * Token order in the "v.*" dumps is the order the encoder uses (class token
 * last under CLS_LAST, first otherwise). */
typedef void (*lp_clip_dump_fn)(void *user, const char *name, const float *data, int64_t n);

/* Load from an open mmproj GGUF whose tensors `ws` serves (usually
 * lp_weights_resident(mmproj)). Validates every key used and every tensor
 * shape; errors name the file and the key or tensor. NULL on error. */
lp_clip *lp_clip_load(const lp_gguf *mmproj, lp_weight_store *ws, lp_error *err);
void lp_clip_free(lp_clip *clip);

/* Geometry and normalization. */
int lp_clip_image_size(const lp_clip *clip);   /* S                                 */
int lp_clip_patch_size(const lp_clip *clip);   /* P                                 */
int lp_clip_n_side(const lp_clip *clip);       /* S / P                             */
int lp_clip_n_patches(const lp_clip *clip);    /* N = n_side²                       */
int lp_clip_n_embd(const lp_clip *clip);       /* ViT width                         */
int lp_clip_n_layer(const lp_clip *clip);      /* clip.vision.block_count           */
int lp_clip_n_layer_run(const lp_clip *clip);  /* blocks that run (current quirks)  */
int lp_clip_feature_dim(const lp_clip *clip);  /* n_embd × number of stacked layers */
int lp_clip_n_out_tokens(const lp_clip *clip); /* tokens out of the projector per
                                                  S×S input: N, or N / n_merge² */
int lp_clip_n_merge(const lp_clip *clip);      /* InternVL pixel-shuffle factor; 1 otherwise */
/* InternVL's tile limits (clip.vision.preproc_min/max_tiles, default 1/12);
 * 1/1 for other projectors. */
void lp_clip_tile_limits(const lp_clip *clip, int *min_tiles, int *max_tiles);
int lp_clip_out_dim(const lp_clip *clip);      /* projector output width            */
bool lp_clip_has_class(const lp_clip *clip);
lp_projector_type lp_clip_projector_type(const lp_clip *clip);
const float *lp_clip_mean(const lp_clip *clip); /* [3] */
const float *lp_clip_std(const lp_clip *clip);  /* [3] */

/* Quirks (LP_CLIP_QUIRK_* bits); default LP_CLIP_QUIRKS_LLAMACPP. Fails
 * (INVALID_ARG) on unknown bits or if the layer count they imply is not
 * runnable (e.g. DROP_LAYER with block_count 1). */
loupe_status lp_clip_set_quirks(lp_clip *clip, unsigned quirks, lp_error *err);
unsigned lp_clip_quirks(const lp_clip *clip);

void lp_clip_set_dump(lp_clip *clip, lp_clip_dump_fn fn, void *user);

/* RGB8 image -> pixels (3, S, S) normalized with the file's mean/std.
 * LP_PREP_LLAMACPP reproduces llama.cpp (refused with UNSUPPORTED for files
 * with clip.vision.image_grid_pinpoints, where llama.cpp tiles instead);
 * the PIL modes follow PyTorch LLaVA ("pad") and Ferret ("squash"). See
 * vision/preprocess.h. geom may be NULL. */
loupe_status lp_clip_preprocess(const lp_clip *clip, const lp_image *img, lp_prep_mode mode, float *pixels,
                                lp_prep_geom *geom, lp_error *err);

/* pixels (3, S, S) -> out (n_out_tokens, out_dim). */
loupe_status lp_clip_encode(const lp_clip *clip, const float *pixels, float *out, lp_pool *pool, lp_error *err);

/* Same, with the patch features too. out may be NULL (the projector is then
 * skipped). features, if not NULL, receives (N, feature_dim): row p is the
 * feature of patch p (row-major on the n_side × n_side grid) whatever the
 * class-token position, i.e. grid-aligned even under CLS_LAST — unlike the
 * "v.features" dump, which is the projector input. */
loupe_status lp_clip_encode_ex(const lp_clip *clip, const float *pixels, float *out, float *features,
                               lp_pool *pool, lp_error *err);

#endif
