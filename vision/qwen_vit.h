/* vision/qwen_vit.h — the Qwen2.5-VL vision tower and patch merger of an
 * mmproj GGUF (clip.projector_type "qwen2.5vl_merger"), as llama.cpp's
 * tools/mtmd computes it on the CPU: clip_graph_qwen2vl::build()
 * (tools/mtmd/models/qwen2vl.cpp) with its inputs from clip_image_batch_encode
 * (tools/mtmd/clip.cpp, case PROJECTOR_TYPE_QWEN25VL, ~line 4834), hyper-
 * parameters from clip_model_loader::load_hparams (clip.cpp ~line 1623) and
 * the image preprocessing of mtmd_image_preprocessor_dyn_size
 * (tools/mtmd/mtmd-image.cpp ~line 928).
 *
 * Geometry. P = clip.vision.patch_size (14), m = clip.vision.spatial_merge_size
 * (default 2; only 2 is accepted: llama.cpp's graph hard-codes 2×2 groups).
 * An input is (3, H, W) with H and W multiples of the factor f = P·m = 28:
 * pw = W/P, ph = H/P patches (N = pw·ph), nx = pw/2, ny = ph/2 merged tokens,
 * n_tokens = nx·ny.
 *
 * Forward pass (E = clip.vision.embedding_length, d = head_dim):
 *   patches   HF's Conv3d over the image repeated twice in time is the sum of
 *             its two temporal kernels: conv(v.patch_embd.weight) +
 *             conv(v.patch_embd.weight.1) (each [P, P, 3, E], no bias),
 *             computed as two products then added, as llama.cpp's ggml_add of
 *             two ggml_conv_2d. Im2col columns in (c, ky, kx) order.
 *   order     tokens in merge order: 2×2 groups row-major over the ny × nx
 *             grid, inside a group the patches (0,0) (0,1) (1,0) (1,1) (the
 *             permute/reshape block of qwen2vl.cpp:51-63); with window
 *             attention the groups are then regrouped window by window
 *             (get_rows with inv_window_idx, qwen2vl.cpp:96-98). Every
 *             per-token tensor below is in this window order.
 *   pre_ln    v.pre_ln (optional; Qwen2.5-VL has none)
 *   blocks    x += o(attn(n1(x)));  x += down(act(gate(n2(x))) ⊙ up(n2(x)))
 *             n1/n2 = RMSNorm (v.blk.N.ln1/ln2, optional bias),
 *             eps = clip.vision.attention.layer_norm_epsilon; q/k/v with
 *             biases (required), o/up/gate/down biases optional; act = SiLU
 *             (clip.use_silu, what the converter writes), GELU (clip.use_gelu)
 *             or quick GELU; no ffn_gate: down(act(up(x))). 2D RoPE on q and k
 *             (below). Scale 1/√d. Full attention in the layers il with
 *             (il + 1) % n_wa_pattern == 0 (clip.vision.n_wa_pattern, required;
 *             0: every layer full; the converter derives it from HF's
 *             fullatt_block_indexes, e.g. 8 -> layers 7, 15, 23, 31), window
 *             attention in the others.
 *   merger    v.post_ln RMSNorm (HF merger.ln_q) per token; 4 consecutive
 *             tokens (one 2×2 group) concatenated to 4E; mm.0 (4E -> 4E) + b,
 *             GELU, mm.2 (4E -> n_embd_lm) + b.
 *   out       merged tokens back in raster order (get_rows with window_idx,
 *             qwen2vl.cpp:189-199): output row i is grid cell
 *             (y, x) = (i / nx, i % nx). This is the order llama.cpp feeds
 *             the language model (and mtmd's M-RoPE positions assume).
 *
 * Windows (clip.cpp:4852-4885). The window side is w = 112 / P / 2 = 4 merged
 * tokens: llama.cpp takes attn_window_size = 112 for this projector (the key
 * clip.vision.window_size is not read for it, and the converter does not
 * write it). Windows tile the ny × nx grid from the top left in w × w blocks
 * (cut short at the right and bottom edges), visited row-major; inside a
 * window its groups row-major. window_idx[g] is the window-order position of
 * raster group g, inv_window_idx its inverse. The masked softmax over the
 * whole sequence that llama.cpp runs (mask 0 inside the window, -FLT_MAX
 * elsewhere) equals attention within each window, which is what runs here.
 * The same partition as HF's get_window_index (which pads to whole windows
 * and drops the padding).
 *
 * RoPE (ggml_rope_multi, GGML_ROPE_TYPE_VISION, n_dims = d/2, sections
 * {d/4, d/4, d/4, d/4}, base 10000, qwen2vl.cpp:130-135; evaluated as
 * ggml-cpu's ggml_mrope_cache_init with independent sections and
 * rotate_pairs(ne0, n_dims), ggml/src/ggml-cpu/ops.cpp). The position input
 * per token is (py, px, py, px) of its patch; only the first two are used.
 * Pair i = 0 .. d/2 − 1 rotates (x[i], x[i + d/2]) by
 *   θ_i = py · s^i             for i <  d/4
 *   θ_i = px · s^(i − d/4)     for i >= d/4,     s = powf(10000, −2/(d/2)),
 * the powers built as ggml does: start from (float)pos and multiply by s
 * after every pair (the px chain restarts at i = d/4). HF's
 * VisionRotaryEmbedding(d/2) + rotate_half gives the same angles. d must be
 * a multiple of 4.
 *
 * Numerics. Like lp_clip, three bits of clip.h's quirk set apply, all on by
 * default (LP_QWEN_VIT_QUIRKS_LLAMACPP) so that the output follows llama.cpp's
 * CPU backend:
 *   LP_CLIP_QUIRK_GELU_TANH   the merger GELU is ggml_gelu (tanh form);
 *                             off: exact erf GELU = HF's nn.GELU().
 *                             This is the one place the llama.cpp graph
 *                             departs from HF's model.
 *   LP_CLIP_QUIRK_ACT_F16     GELU / quick GELU through ggml-cpu's f16 tables.
 *   LP_CLIP_QUIRK_MATMUL_F16  activations rounded to f16 before products with
 *                             f16 weights; and the patch convolution in f16
 *                             whatever the kernel type but BF16: ggml_conv_2d
 *                             builds its im2col in F16 and ggml-cpu converts
 *                             the (f32 or f16) kernel to f16 for the product,
 *                             so pixels and kernel are both rounded.
 * Not reproduced: SiLU in f32 with expf (ggml uses its own SIMD expf, ~1 ulp
 * apart); flash attention (compare against llama.cpp with it off); q8
 * activations for quantized weights.
 * Ignored like llama.cpp ignores them: v.position_embd.weight and
 * clip.vision.feature_layer. Refused like llama.cpp asserts: a patch bias, a
 * class embedding, a fused attn_qkv. The legacy up/down naming swap
 * applies as in clip.cpp's is_ffn_swapped: when ffn_down.weight's input width
 * is E, up and down (and their biases) trade places — also when n_ff == E,
 * where the shapes cannot tell (llama.cpp swaps then too; keep n_ff != E in
 * test models).
 *
 * "qwen2.5o" (Qwen2.5-Omni's vision side, which llama.cpp maps to QWEN25VL)
 * loads as "qwen2.5vl_merger". "qwen2vl_merger" (Qwen2-VL) loads too: the same
 * graph with LayerNorm instead of RMSNorm and n_wa_pattern optional (0); it
 * has not been compared with llama.cpp.
 *
 * Preprocessing (lp_qwen_vit_preprocess), two modes:
 *   LP_QWEN_PREP_LLAMACPP  mtmd_image_preprocessor_dyn_size:
 *     1. target (W, H) = img_tool::calc_size_preserved_ratio (mtmd-image.cpp
 *        ~line 152) with align f, in f32 like llama.cpp:
 *          W = max(f, roundf(w/f)·f),  H = max(f, roundf(h/f)·f)   (half away from 0)
 *          if W·H > max_pixels: β = sqrtf(h·w / max_pixels),
 *             H = max(f, floorf(h/β / f)·f), W = max(f, floorf(w/β / f)·f)
 *          else if W·H < min_pixels: β = sqrtf(min_pixels / (h·w)),
 *             H = ceilf(h·β / f)·f, W = ceilf(w·β / f)·f
 *        with min/max_pixels = (8, 4096) tokens · f² (set_limit_image_tokens
 *        in clip.cpp's QWEN25VL case; custom token limits replace either
 *        bound). llama.cpp does not read clip.vision.image_min/max_pixels for
 *        this projector, and neither does this mode.
 *     2. img_tool::resize with the projector's defaults RESIZE_ALGO_BILINEAR
 *        and PAD_CEIL: if the image is already W × H it is copied; otherwise
 *        it is scaled to fit inside (lp_fit_inside_rect: f32 scale, sides
 *        rounded up) with llama.cpp's bilinear (lp_resize_llamacpp_bilinear)
 *        and pasted centred ((W − nw)/2, (H − nh)/2) on black. So llama.cpp
 *        letterboxes by a few pixels where HF stretches.
 *     3. v = u8 / 255.0f, (v − mean) / std in f32.
 *   LP_QWEN_PREP_HF  transformers' Qwen2VLImageProcessor (the PIL one):
 *     1. smart_resize (transformers v4.52 image_processing_qwen2_vl.py) in
 *        double with Python's round-half-even; w or h < f, or an aspect
 *        ratio above 200, is refused (HF raises); the floor branch is kept
 *        at >= f. min/max_pixels: the file's clip.vision.image_min_pixels /
 *        image_max_pixels, else Qwen2.5-VL's preprocessor_config.json
 *        (3136 and 12845056); custom token limits replace either bound.
 *     2. PIL BICUBIC resize to exactly W × H (lp_image_resize), no padding.
 *     3. v = f32(f64(u8) · (1/255)), (v − mean) / std in f32.
 * The geometry (lp_qwen_geom) maps original pixels to model-input pixels
 * (in = orig · scale + off): boxes the model gives in input pixels map back
 * with orig = (in − off) / scale.
 *
 * Checked against llama.cpp itself (the tree at /work/llama.cpp, CPU, flash
 * attention off) on random-weight models (E 64, 4 layers, windows + full
 * layers) and six images (30×20 up to 640×480, token limits 64 and 1024):
 * the f32 pixel tensor bit-identical every time; block outputs within ~4e-6;
 * image embeddings within 1e-4 (f32 weights; the f16 GELU table) and 1.2e-3
 * (f16 weights: f16-rounding boundary flips); tests/test_qwen_vit.c keeps
 * one such case with llama.cpp's numbers embedded. The HF mode is written
 * from transformers' source and not run against it.
 *
 * Weights: matrices are fetched from the weight store per use and released
 * right after; vectors are f32 copies made at load. The object keeps pointers
 * to the gguf and the store (both must outlive it). lp_qwen_vit_encode
 * allocates its activations per call and may run concurrently on one object
 * (different pools) while quirks, limits and the dump are not changed. */
#ifndef LP_QWEN_VIT_H
#define LP_QWEN_VIT_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/pool.h"
#include "../language/weights.h"
#include "clip.h"
#include "image.h"
#include "preprocess.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct lp_qwen_vit lp_qwen_vit;

#define LP_QWEN_VIT_QUIRKS_LLAMACPP (LP_CLIP_QUIRK_GELU_TANH | LP_CLIP_QUIRK_ACT_F16 | LP_CLIP_QUIRK_MATMUL_F16)

/* llama.cpp's defaults for Qwen2/2.5-VL (clip.cpp: set_limit_image_tokens(8, 4096)) */
#define LP_QWEN_LLAMACPP_MIN_TOKENS 8
#define LP_QWEN_LLAMACPP_MAX_TOKENS 4096
/* Qwen2.5-VL's preprocessor_config.json */
#define LP_QWEN_HF_MIN_PIXELS 3136
#define LP_QWEN_HF_MAX_PIXELS 12845056
/* llama.cpp's attn_window_size default for qwen2.5vl, in pixels */
#define LP_QWEN_WINDOW_PIXELS 112

typedef enum lp_qwen_prep_mode {
    LP_QWEN_PREP_LLAMACPP = 0,
    LP_QWEN_PREP_HF = 1
} lp_qwen_prep_mode;

typedef struct lp_qwen_geom {
    int width, height; /* model input W × H (multiples of the factor)       */
    int nx, ny;        /* merged tokens per row / per column: W/f, H/f        */
    lp_prep_geom map;  /* original -> input pixels, and the content rectangle */
} lp_qwen_geom;

/* Load from an open mmproj GGUF whose tensors `ws` serves (usually
 * lp_weights_resident(mmproj)). Every key and tensor used is validated;
 * errors name the file and the key or tensor. NULL on error. */
lp_qwen_vit *lp_qwen_vit_load(const lp_gguf *mmproj, lp_weight_store *ws, lp_error *err);
void lp_qwen_vit_free(lp_qwen_vit *v);

int lp_qwen_vit_patch_size(const lp_qwen_vit *v); /* P                                 */
int lp_qwen_vit_merge(const lp_qwen_vit *v);      /* 2                                 */
int lp_qwen_vit_factor(const lp_qwen_vit *v);     /* f = P · 2                         */
int lp_qwen_vit_n_embd(const lp_qwen_vit *v);     /* E                                 */
int lp_qwen_vit_n_head(const lp_qwen_vit *v);
int lp_qwen_vit_n_layer(const lp_qwen_vit *v);
int lp_qwen_vit_out_dim(const lp_qwen_vit *v);    /* n_embd_lm (mm.2 rows)             */
int lp_qwen_vit_n_wa_pattern(const lp_qwen_vit *v);
int lp_qwen_vit_window(const lp_qwen_vit *v);     /* window side in merged tokens (4)  */
bool lp_qwen_vit_layer_full(const lp_qwen_vit *v, int il); /* full attention in layer il */
bool lp_qwen_vit_is_qwen2(const lp_qwen_vit *v);  /* "qwen2vl_merger" (LayerNorm)      */
const float *lp_qwen_vit_mean(const lp_qwen_vit *v); /* [3] */
const float *lp_qwen_vit_std(const lp_qwen_vit *v);  /* [3] */

/* Quirk bits (see above); INVALID_ARG for bits outside
 * LP_QWEN_VIT_QUIRKS_LLAMACPP. */
loupe_status lp_qwen_vit_set_quirks(lp_qwen_vit *v, unsigned quirks, lp_error *err);
unsigned lp_qwen_vit_quirks(const lp_qwen_vit *v);

/* Activation dump (clip.h's callback type). Names and shapes (N patches in
 * window order, G = N/4 merged tokens):
 *   "v.patch_embd"  (N, E)       the sum of the two patch convolutions
 *   "v.pre_ln"      (N, E)       only if the file has v.pre_ln
 *   "v.blk.%d"      (N, E)       block outputs = llama.cpp "layer_out-%d"
 *   "v.post_ln"     (N, E)       only if the file has v.post_ln
 *   "mm.hidden"     (G, 4E)      after mm.0 and the GELU (window order)
 *   "mm.out"        (G, out_dim) the output, raster order */
void lp_qwen_vit_set_dump(lp_qwen_vit *v, lp_clip_dump_fn fn, void *user);

/* Token limits, as llama.cpp's --image-min-tokens / --image-max-tokens
 * (custom_image_min/max_tokens): 0 keeps the mode's default. Applies to both
 * preprocessing modes. INVALID_ARG if negative or if the resulting min
 * exceeds the max. */
loupe_status lp_qwen_vit_set_token_limits(lp_qwen_vit *v, int min_tokens, int max_tokens, lp_error *err);
/* The pixel limits a mode uses with the current settings. */
void lp_qwen_vit_pixel_limits(const lp_qwen_vit *v, lp_qwen_prep_mode mode, int *min_pixels, int *max_pixels);

/* The smart-resize rule of a mode (see above) for a w × h image: *out_w,
 * *out_h multiples of factor. min/max_pixels <= 0 disable that bound.
 * INVALID_ARG for bad arguments; HF mode also refuses what HF refuses. */
loupe_status lp_qwen_vit_smart_resize(int w, int h, int factor, int min_pixels, int max_pixels, lp_qwen_prep_mode mode,
                                  int *out_w, int *out_h, lp_error *err);

/* The geometry an image of w × h gets with this model's settings (the
 * same as lp_qwen_vit_preprocess reports; no pixels needed). */
loupe_status lp_qwen_vit_plan(const lp_qwen_vit *v, int w, int h, lp_qwen_prep_mode mode, lp_qwen_geom *geom,
                              lp_error *err);

/* RGB8 image -> pixels (3, H, W), planar, normalized. `pixels` must hold
 * 3 · W · H floats for the W × H that lp_qwen_vit_plan gives for this image
 * and mode; geom (may be NULL) receives that geometry. */
loupe_status lp_qwen_vit_preprocess(const lp_qwen_vit *v, const lp_image *img, lp_qwen_prep_mode mode, float *pixels,
                                    lp_qwen_geom *geom, lp_error *err);

/* Model-independent pieces of the same, for tests and tools:
 * the mapping of a w × h original into a W × H input in a mode ... */
void lp_qwen_prep_map(int w, int h, int W, int H, lp_qwen_prep_mode mode, lp_prep_geom *map);
/* ... the W × H RGB8 image of a mode (*dst allocated here) ... */
loupe_status lp_qwen_prep_rgb(const lp_image *img, int W, int H, lp_qwen_prep_mode mode, lp_image *dst,
                              lp_prep_geom *map, lp_error *err);
/* ... and RGB8 (W × H) -> (3, H, W) normalized as the mode does. */
void lp_qwen_prep_normalize(const lp_image *img, const float mean[3], const float std[3], lp_qwen_prep_mode mode,
                            float *out);

/* Window partition of an nx × ny merged grid into win × win windows (win >= 1;
 * win >= max(nx, ny) gives one window): win_idx[g] (nx·ny) = window-order
 * position of raster group g, inv_idx (nx·ny) its inverse; win_start, if not
 * NULL, receives n_windows + 1 offsets (in groups) so that window k holds
 * positions [win_start[k], win_start[k+1]); it needs room for
 * ceil(nx/win)·ceil(ny/win) + 1 entries. Returns the number of windows, or
 * -1 for bad arguments. */
int lp_qwen_window_partition(int nx, int ny, int win, int32_t *win_idx, int32_t *inv_idx, int32_t *win_start);

/* Vision RoPE in place on x (n_head, d) for a patch at (py, px), as above. */
void lp_qwen_vision_rope(float *x, int n_head, int head_dim, int py, int px);

/* pixels (3, H, W), H and W multiples of the factor -> out (nx·ny, out_dim),
 * raster order. INVALID_ARG for other sizes. */
loupe_status lp_qwen_vit_encode(const lp_qwen_vit *v, const float *pixels, int W, int H, float *out, lp_pool *pool,
                                lp_error *err);

#endif
