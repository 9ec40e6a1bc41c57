/* language/flash_format.h — the flash layout of a decoder GGUF, written by
 * `loupe convert --flash IN.gguf OUT.gguf` and read by the flash weight store
 * (language/flash.h).
 *
 * A flash file is an ordinary GGUF (general.alignment = 4096, so every
 * tensor starts on a direct-I/O boundary) that holds every tensor of the
 * input decoder, with the same names, types and bytes, except the three FFN
 * matrices of each layer, blk.L.ffn_gate.weight, blk.L.ffn_up.weight and
 * blk.L.ffn_down.weight. Those are replaced by one tensor per layer:
 *
 *   blk.L.ffn_bundle   type I8, ne = [stride, n_ff]: the bundle of neuron i
 *                      starts at byte i * stride of the tensor and holds
 *        gate row i      (gate_type, n_embd elements)  = ffn_gate row i, bytes as in the input
 *        up row i        (up_type,   n_embd elements)  = ffn_up row i, bytes as in the input
 *        down column i   (down_type, n_embd elements)  = ffn_down[:, i] (LLM in a flash's
 *                        row-column bundling: everything neuron i needs is one read)
 *        zero padding to stride, a multiple of LP_FLASH_BUNDLE_ALIGN
 *
 * The down column is a row of the transposed matrix. For F32/F16/BF16 the
 * values are the input's exactly. A block-quantized ffn_down (its blocks run
 * along n_ff, across neurons) cannot be cut into columns without
 * requantizing: the column is dequantized and quantized again, to the input
 * type when loupe can quantize it (Q8_0, Q4_0, Q4_K) and to Q8_0 otherwise
 * (Q6_K, Q5_K, ...). So for quantized models the flash file is a slightly
 * different model from its input; dense flash mode is bit-identical to
 * running the *flash file* resident, not to the input file.
 *
 * and, per layer, the sparsity predictor (optional: loupe.flash.predictor
 * "none" writes none):
 *
 *   blk.L.ffn_pred_a   F16, ne = [n_embd, rank]   A (rank, n_embd)
 *   blk.L.ffn_pred_b   F16, ne = [rank, n_ff]     B (n_ff, rank)
 *        score s = B (A x), x = the FFN input after ffn_norm (n_embd)
 *        "svd" (training-free, SwiGLU): B A = a truncated SVD of ffn_gate, so
 *              s estimates the gate pre-activations; a neuron is taken when
 *              |silu(s_i)| is among the top k (or above a threshold), as in
 *              CATS/TEAL.
 *        "lowrank" (trained offline, as in the paper): s_i are logits of
 *              "neuron i is active"; a neuron is taken when s_i is among the
 *              top k (or above a threshold). Written from a predictor file
 *              (`loupe convert --predictor-file`, made by
 *              tools/flash/train_predictor.py, which labels a neuron active
 *              when its |silu(g_i) u_i| is in the top fraction of its layer).
 *
 * Optional FFN biases (blk.L.ffn_{gate,up,down}.bias) stay separate tensors.
 *
 * Metadata keys:
 *   loupe.flash.version           u32   LP_FLASH_VERSION
 *   loupe.flash.gate_type         u32   ggml type id of the gate rows
 *   loupe.flash.up_type           u32   ggml type id of the up rows
 *   loupe.flash.down_type         u32   ggml type id of the down columns
 *   loupe.flash.bundle_bytes      u32   gate + up + down row bytes (unpadded)
 *   loupe.flash.bundle_stride     u32   bytes from one bundle to the next
 *   loupe.flash.layer_offsets     u64[n_layer]  offset of blk.L.ffn_bundle's data
 *                                       from the start of the tensor data section
 *   loupe.flash.predictor         str   "svd", "lowrank" or "none"
 *   loupe.flash.predictor_rank    u32[n_layer]  (absent for "none")
 *   loupe.flash.predictor_energy  f32[n_layer]  svd: ||B A||_F^2 / ||W_gate||_F^2
 *                                       (required for "svd", absent for "lowrank";
 *                                       for an "svd" predictor read from a file,
 *                                       1 - ||W_gate - B A||_F^2 / ||W_gate||_F^2
 *                                       clamped to [0, 1]: the same number for a
 *                                       truncated SVD, and honest for any other B A)
 *   loupe.flash.source            str   the input file's name (no directory)
 * The input's own keys are copied unchanged (general.architecture stays
 * "llama"/"qwen2"; llama.cpp cannot run a flash file, loupe can, resident or
 * flash). */
#ifndef LP_FLASH_FORMAT_H
#define LP_FLASH_FORMAT_H

#include "../core/error.h"
#include "../core/gguf.h"
#include "../core/types.h"

#include <stdbool.h>
#include <stdint.h>

#define LP_FLASH_VERSION 1
#define LP_FLASH_FILE_ALIGN 4096   /* general.alignment of a flash file */
#define LP_FLASH_BUNDLE_ALIGN 512  /* bundle stride granularity (a sector) */

/* What a flash file says about itself (lp_flash_layout_read). */
#define LP_FLASH_MAX_LAYER 1024
typedef struct lp_flash_layout {
    int n_layer, n_embd, n_ff;               /* n_ff: the widest layer's */
    int n_ff_layer[LP_FLASH_MAX_LAYER];      /* each layer's neurons (openelm varies them) */
    lp_type gate_type, up_type, down_type;
    size_t gate_bytes, up_bytes, down_bytes; /* row bytes of each part (n_embd elements) */
    size_t bundle_bytes, stride;
    char predictor[16];                      /* "svd", "lowrank", "none" */
} lp_flash_layout;

/* Neurons of layer l. */
static inline int lp_flash_layer_n_ff(const lp_flash_layout *fl, int l) { return fl->n_ff_layer[l]; }

/* Every layer's FFN width from {arch}.feed_forward_length: one integer for
 * all layers, or (openelm) an array of n_layer; widths[n_layer]; *max the
 * largest. Errors name the file and the key. */
loupe_status lp_flash_ffn_widths(const lp_gguf *g, const char *arch, int n_layer, int *widths, int *max, lp_error *err);

/* true if the GGUF carries loupe.flash.version. */
bool lp_flash_is_flash(const lp_gguf *g);

/* Read and check the loupe.flash.* keys against the tensors (types, sizes,
 * offsets, predictor shapes). n_layer/n_embd/n_ff(_layer) come from the decoder's
 * {arch}.* keys. Errors name the file and the key or tensor. */
loupe_status lp_flash_layout_read(const lp_gguf *g, lp_flash_layout *out, lp_error *err);

/* ---- conversion (language/flash_convert.c) ---- */

typedef enum lp_flash_predictor_kind {
    LP_FLASH_PRED_SVD = 0,  /* training-free truncated SVD of ffn_gate (default) */
    LP_FLASH_PRED_NONE = 1, /* no predictor tensors: dense flash mode only */
    LP_FLASH_PRED_FILE = 2, /* read from predictor_path (see below) */
} lp_flash_predictor_kind;

/* A predictor file (LP_FLASH_PRED_FILE) is a GGUF holding, for every layer L
 * of the decoder,
 *   blk.L.ffn_pred_a   F32 or F16, ne = [n_embd, rank_L]   A (rank_L, n_embd)
 *   blk.L.ffn_pred_b   F32 or F16, ne = [rank_L, n_ff]     B (n_ff, rank_L)
 * with 1 <= rank_L <= min(n_embd, n_ff), and optionally the string key
 * loupe.flash.predictor = "lowrank" (the default when absent) or "svd",
 * which becomes the output's predictor kind (it decides how the decoder
 * reads the scores). The factors are stored as F16 in the output (values
 * beyond the f16 range or not finite are refused); other tensors and keys
 * of the file are ignored. */

typedef struct lp_flash_convert_params {
    lp_flash_predictor_kind predictor;
    int rank;            /* > 0: this rank for every layer; 0: chosen per layer (see below) */
    float energy;        /* auto rank: smallest multiple of 16 capturing this fraction of
                            ||W_gate||_F^2 (default 0.9) ... */
    float max_pred_frac; /* ... but predictor bytes at most this fraction of the layer's
                            FFN bytes (default 0.05) */
    uint64_t seed;       /* randomized range finder (default 1) */
    const char *predictor_path; /* LP_FLASH_PRED_FILE: the predictor file (default NULL); rank
                                   must then be 0 (the file sets the ranks), energy,
                                   max_pred_frac and seed are unused */
} lp_flash_convert_params;

lp_flash_convert_params lp_flash_convert_default_params(void);

/* Per-layer result, for the CLI's summary. */
typedef struct lp_flash_convert_layer {
    int rank;     /* 0 for predictor "none" */
    float energy; /* as loupe.flash.predictor_energy; 0 for "none", NaN for "lowrank" (not written) */
} lp_flash_convert_layer;

typedef struct lp_flash_convert_report {
    int n_layer;
    lp_flash_convert_layer *layers; /* (n_layer), malloc'd; free with lp_flash_convert_report_free */
    size_t bundle_stride;
    uint64_t in_bytes, out_bytes;   /* file sizes */
} lp_flash_convert_report;

void lp_flash_convert_report_free(lp_flash_convert_report *r);

/* IN (a llama/qwen2 decoder GGUF) -> OUT (flash layout). The output is
 * written to a temporary file and renamed (never a half-written OUT). rep
 * may be NULL. Errors name the file and the tensor or key: not a decoder,
 * already a flash file, a missing or mis-shaped FFN tensor, an unsupported
 * type, I/O failure; and, with a predictor file, a missing, mis-shaped or
 * mis-typed blk.L.ffn_pred_a/_b there or a bad loupe.flash.predictor key. */
loupe_status lp_flash_convert(const char *in_path, const char *out_path, const lp_flash_convert_params *p,
                              lp_flash_convert_report *rep, lp_error *err);

#endif
