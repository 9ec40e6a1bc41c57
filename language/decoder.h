/* language/decoder.h — the llama-architecture text decoder (llama, qwen2,
 * qwen2vl, openelm).
 *
 * Computes what llama.cpp computes for general.architecture "llama",
 * "qwen2" and "qwen2vl" (no MoE, no RoPE scaling):
 *
 *   x = embd_in                                    (n, n_embd)
 *   for each block l:
 *     h  = rmsnorm(x) * attn_norm
 *     q,k,v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)
 *     rope(q), rope(k) at positions n_past..n_past+n-1 (or explicit ones,
 *        lp_llama_forward_pos)
 *        llama: NORMAL pairs (2i, 2i+1) — the GGUF converter permuted Wq/Wk
 *        qwen2: NEOX pairs (i, i + n_rot/2)
 *        qwen2vl: M-RoPE (below): NEOX pairs, each pair's angle from one of
 *                 four position ids
 *     append k, v to the cache; causal GQA attention, scale 1/sqrt(head_dim)
 *     x = x + attn Wo^T (+bo)
 *     h  = rmsnorm(x) * ffn_norm
 *     x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T
 *   logits = (rmsnorm(x) * output_norm) Wout^T (+bout)   Wout = token_embd if tied
 *
 * OpenELM (general.architecture "openelm", llama.cpp's src/models/openelm.cpp):
 * layer-wise scaling gives every layer its own head count, kv head count and
 * FFN width ({arch}.attention.head_count, .head_count_kv and
 * .feed_forward_length are arrays of block_count integers); q, k and v come
 * from one blk.L.attn_qkv matrix whose output rows are the n_head q heads,
 * then the n_head_kv k heads, then the v heads (head_dim each); every q and
 * k head is RMS-normalised over head_dim with blk.L.attn_q_norm /
 * attn_k_norm before NEOX RoPE; the output head is token_embd (tied).
 *
 * Weights come only through the lp_weight_store (language/weights.h); each
 * layer piece gets its tensors and releases them before the next piece.
 *
 * Flash layout (language/flash_format.h): the FFN is computed neuron by
 * neuron from bundles, y = sum over active i of silu(g_i) u_i down[:, i],
 * g_i = gate row i . x, u_i = up row i . x. Decode: the active set comes from
 * the predictor (or is every neuron), rows are dotted with lp_matvec_gather
 * and the down columns added in ascending neuron order (lp_axpy_gather).
 * Prefill: dense, in panels of LP_FLASH_PANEL neurons through sgemm.
 *
 * Threading: a model is read-only after load and may be shared by several
 * states; a state (KV cache + scratch) belongs to one thread at a time.
 *
 * M-RoPE (general.architecture "qwen2vl": Qwen2-VL and Qwen2.5-VL).
 * llama.cpp loads it like qwen2 plus the required key
 * "qwen2vl.rope.dimension_sections" (src/models/qwen2vl.cpp:4,
 * get_key_or_arr: an array of exactly 4 integers, or one integer used 4
 * times; Qwen2.5-VL has [16, 24, 24, 0]), and ropes q and k with
 * ggml_rope_multi in mode GGML_ROPE_TYPE_MROPE (= 8; llama-model.cpp:2803
 * llama_model_rope_type; not the interleaved IMROPE of qwen3vl). Each token
 * has 4 position ids (t, h, w, e). ggml-cpu (ops.cpp:5858
 * ggml_mrope_cache_init, non-vision, sections not independent;
 * ops.cpp:6077-6080 rotate_pairs(n_rot, n_rot/2)) rotates the NEOX pair
 * (i, i + n_rot/2), i = 0 .. n_rot/2 − 1, by the angle
 *   θ_i = p_sel · s^i,   s = powf(freq_base, −2/n_rot),
 *   sector = i mod (s0+s1+s2+s3):  sector < s0 -> p_t;  < s0+s1 -> p_h;
 *                                  < s0+s1+s2 -> p_w;  else p_e,
 * each of the four chains built as ggml does (start at (float)p, multiply by
 * s after every pair), so equal ids give exactly the NEOX rope of qwen2.
 *
 * Position ids llama.cpp gives (rules reproduced by lp_mrope_pos_text /
 * lp_mrope_pos_image below):
 *   text token at position p:  (p, p, p, 0). A token batch carries one
 *     position per token; llama-batch.cpp:781-787 (ubatch_add) copies it to
 *     all 4 and llama-graph.cpp:131-141 (llm_graph_input_pos::set_input)
 *     sets the 4th to 0. Positions count on from the previous token + 1.
 *   image of nx × ny merged tokens starting at p0 (the position after the
 *     preceding text), token i in raster order (row i / nx, column i % nx):
 *     (t, h, w, e) = (p0, p0 + i / nx, p0 + i % nx, 0)
 *     (mtmd.cpp:2403-2409 mtmd_image_tokens_get_decoder_pos, MROPE case:
 *     t = pos_0, y = pos_0 + i / nx, x = pos_0 + i % nx, z = 0; written as
 *     (t, y, x, z) by mtmd-helper-common.h:113-124 set_position_mrope_2d).
 *   after the image the position advances by max(nx, ny), not nx·ny
 *     (mtmd.cpp:2461-2462 mtmd_image_tokens_get_n_pos; mtmd-helper.cpp:191
 *     n_past += mtmd_input_chunk_get_n_pos): the next text token is at
 *     p0 + max(nx, ny). mtmd wraps the image in the text tokens
 *     <|vision_start|> ... <|vision_end|> (mtmd.cpp:697-698); they are
 *     ordinary text tokens here.
 * Attention stays causal in cache order (slot j visible to query slot i iff
 * j <= i). llama.cpp masks M-RoPE batches by t, and on equal t by (y, x)
 * raster order (llama-kv-cache.cpp:1648-1663); for sequences laid out as
 * above that is the same mask.
 * The KV cache counts slots (n_past), not positions: after an image the two
 * differ, so a caller that has fed an image must keep feeding explicit
 * positions (lp_llama_forward_pos / _tokens_pos). Without explicit positions
 * token i of a call is at n_past + i, i.e. (n_past + i, n_past + i,
 * n_past + i, 0) for qwen2vl. */
#ifndef LP_DECODER_H
#define LP_DECODER_H

#include "../core/error.h"
#include "../core/kernels.h"
#include "../core/pool.h"
#include "flash_format.h"
#include "weights.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum lp_llama_arch {
    LP_ARCH_LLAMA = 0,
    LP_ARCH_QWEN2 = 1,
    LP_ARCH_QWEN2VL = 2, /* qwen2 + M-RoPE */
    LP_ARCH_OPENELM = 3  /* per-layer heads and FFN widths, fused QKV, per-head q/k RMSNorm, NEOX */
} lp_llama_arch;

/* Hyperparameters, read from "{arch}.*" keys and checked against the tensors. */
typedef struct lp_llama_config {
    lp_llama_arch arch;
    char arch_name[16];  /* "llama" / "qwen2" / "qwen2vl" / "openelm" */
    int n_vocab;         /* token_embd rows */
    int n_embd;          /* {arch}.embedding_length */
    int n_layer;         /* {arch}.block_count */
    int n_ff;            /* {arch}.feed_forward_length (openelm: the largest layer's) */
    int n_head;          /* {arch}.attention.head_count (openelm: the largest layer's) */
    int n_head_kv;       /* {arch}.attention.head_count_kv (default n_head; openelm: largest) */
    int *layer_dims;     /* (n_layer, 3): each layer's heads, kv heads and FFN width
                            (openelm: from the per-layer arrays; else the scalars) */
    int head_dim;        /* {arch}.attention.key_length (default n_embd / n_head) */
    int n_rot;           /* {arch}.rope.dimension_count (default head_dim; must equal it) */
    int n_ctx_train;     /* {arch}.context_length */
    float rms_eps;       /* {arch}.attention.layer_norm_rms_epsilon */
    float rope_base;     /* {arch}.rope.freq_base (default 10000) */
    lp_rope_mode rope_mode; /* NORMAL for llama, NEOX for qwen2 and qwen2vl */
    bool tied_output;    /* no output.weight: the head reuses token_embd */
    bool mrope;          /* qwen2vl: M-RoPE with rope_sections, 4 position ids per token */
    int rope_sections[4]; /* {arch}.rope.dimension_sections (qwen2vl), else zeros */
} lp_llama_config;

/* Per-layer tensor handles (lp_tensor.id < 0 marks an absent optional one). */
typedef struct lp_llama_layer {
    int n_head, n_head_kv, n_ff;      /* this layer's (openelm varies them per layer) */
    lp_tensor attn_norm;              /* (n_embd) */
    lp_tensor wq, wk, wv;             /* (n_head*hd, n_embd), (n_head_kv*hd, n_embd) x2 */
    lp_tensor wqkv;                   /* openelm instead: ((n_head + 2 n_head_kv)*hd, n_embd),
                                         rows q heads | k heads | v heads */
    lp_tensor q_norm, k_norm;         /* openelm: (hd) RMSNorm of each q / k head, before RoPE */
    lp_tensor bq, bk, bv;             /* optional biases (qwen2 has them) */
    lp_tensor wo;                     /* (n_embd, n_head*hd) */
    lp_tensor bo;                     /* optional (n_embd) */
    lp_tensor ffn_norm;               /* (n_embd) */
    lp_tensor ffn_gate, ffn_up;       /* (n_ff, n_embd) */
    lp_tensor ffn_down;               /* (n_embd, n_ff) */
    lp_tensor ffn_gate_b, ffn_up_b, ffn_down_b; /* optional biases */
    /* flash layout (language/flash_format.h): ffn_gate/up/down are absent and
     * each neuron's gate row, up row and down column form one bundle */
    lp_tensor ffn_bundle;             /* I8 (n_ff, stride) */
    lp_tensor ffn_pred_a, ffn_pred_b; /* optional predictor: (rank, n_embd), (n_ff, rank) */
} lp_llama_layer;

typedef struct lp_llama_weights {
    lp_tensor token_embd;   /* (n_vocab, n_embd) rows */
    lp_tensor output_norm;  /* (n_embd) */
    lp_tensor output;       /* (n_vocab, n_embd); == token_embd when tied */
    lp_tensor output_b;     /* optional (n_vocab) */
    lp_llama_layer *layers; /* (n_layer) */
} lp_llama_weights;

typedef struct lp_llama {
    lp_llama_config cfg;
    lp_llama_weights w;
    lp_weight_store *ws;    /* not owned */
    bool flash;             /* the file has the flash layout */
    lp_flash_layout fl;     /* its description, when flash */
    int pred_rank;          /* largest predictor rank, 0 without predictor */
    bool pred_svd;          /* fl.predictor is "svd": scores are gate estimates, ranked by |silu| */
} lp_llama;

/* Activation dump: called synchronously with each named activation, row-major
 * over the tokens of the call (a prefill longer than n_batch is dumped chunk
 * by chunk). Names, and their llama.cpp (GGML_SCHED debug / eval-callback)
 * counterparts:
 *   "embd_in"          (n, n_embd)     inp_embd
 *   "blk.%d.attn_out"  (n, n_embd)     attn_out-%d   (after Wo, before residual)
 *   "blk.%d.ffn_inp"   (n, n_embd)     ffn_inp-%d    (attention residual sum)
 *   "blk.%d.ffn_out"   (n, n_embd)     ffn_out-%d    (after Wdown, before residual)
 *   "blk.%d"           (n, n_embd)     l_out-%d      (block output)
 *   "output_norm"      (m, n_embd)     result_norm   (m = rows that produce logits)
 *   "logits"           (m, n_vocab)    result_output */
typedef void (*lp_llama_dump_fn)(void *user, const char *name, const float *data, int64_t n);

/* Run state: KV cache and scratch, allocated once in lp_llama_state_new. */
typedef struct lp_llama_state {
    const lp_llama *model; /* the model this state was made for */
    int n_ctx;        /* cache capacity in positions */
    int n_batch;      /* most tokens per internal pass; longer prefills are chunked */
    int n_past;       /* positions already in the cache */
    bool logits_all;  /* lp_llama_forward writes logits for every position */
    bool kv_f16;      /* round cached k/v (and q) through f16 like llama.cpp's default
                         f16 cache; the kernel keeps softmax weights in f32, so this
                         approximates llama.cpp (~1e-3 on O(1) logits), it does not
                         reproduce it. Off: f32 cache = llama.cpp with -ctk f32 -ctv f32 */
    bool exact_matvec; /* decode keeps activations in f32 for every weight type.
                          Off (default): for q4_0/q8_0 weights the activation is
                          quantized to q8_0 and dotted in integers, as llama.cpp
                          does on CPU (faster; error bound in core/kernels.h) */
    lp_llama_dump_fn dump;
    void *dump_user;
    /* cache */
    float *k_cache;   // (n_layer, n_ctx, n_head_kv*head_dim)
    float *v_cache;   // (n_layer, n_ctx, n_head_kv*head_dim)
    /* scratch, for up to n_batch tokens */
    float *x;         // (n_batch, n_embd) residual stream
    float *xb;        // (n_batch, n_embd) normed input of a piece
    float *xb2;       // (n_batch, n_embd) output of a piece before the residual add
    float *q;         // (n_batch, n_head*head_dim)
    float *att;       // (n_batch, n_head*head_dim) attention output before Wo
    float *qkv;       // (n_batch, (n_head + 2 n_head_kv)*head_dim) fused-QKV output (openelm only)
    float *hb;        // (n_batch, n_ff) gate, then silu(gate)*up
    float *hb2;       // (n_batch, n_ff) up
    float *vec;       // (max(n_embd, n_ff, n_head*head_dim, n_vocab)) a dequantized norm weight or bias
    /* lp_llama_forward_tokens */
    float *emb;       // (n_batch, n_embd) embeddings of the chunk
    void *emb_rows;   // (n_batch, token_embd.row_bytes) raw token_embd rows
    int64_t *emb_ids; // (n_batch) row indices
    /* flash layout: which FFN neurons a decode step computes (prefill is
     * always dense). ffn_keep >= 1 and ffn_threshold <= 0: all of them
     * (dense; bit-identical whichever store serves the bundles). Otherwise
     * the predictor scores each neuron and the top ffn_keep * n_ff are
     * taken, or with ffn_threshold > 0 those scoring at least that. */
    float ffn_keep;
    float ffn_threshold;
    int ffn_chunk;        /* bundles per store call: min(n_ff, the store's max_bundles) */
    int32_t *ffn_ids;     // (n_ff) active neurons, ascending
    float *ffn_score;     // (n_ff) predictor scores
    float *ffn_sel;       // (n_ff) scratch for the top-k selection
    float *ffn_low;       // (pred_rank) A x
    const uint8_t **ffn_bundles; // (ffn_chunk) bundle addresses
    const void **ffn_rows;       // (3, ffn_chunk) gate, up, down row addresses
    float *ffn_g, *ffn_u;        // (ffn_chunk) gate and up of the chunk's neurons
    float *ffn_tg, *ffn_tu;      // (ffn_chunk) gate and up of a subset, before scattering
    uint8_t *ffn_ready;          // (ffn_chunk) 1: the bundle was already in memory
    int32_t *ffn_sub;            // (ffn_chunk) positions of that subset in the chunk
    float *pnl_g, *pnl_u, *pnl_d; // (LP_FLASH_PANEL, n_embd) dequantized bundle panel (prefill)
    float *pnl_h, *pnl_h2;       // (n_batch, LP_FLASH_PANEL)
    /* attention scratch, sized on first use for (n_batch or 1) x n_ctx with the pool in use */
    void *att_scratch;
    size_t att_scratch_bytes;
    int att_scratch_threads;
} lp_llama_state;

#define LP_LLAMA_DEFAULT_BATCH 512
/* Prefill over a flash layout runs the FFN in panels of this many neurons
 * (fixed, so the arithmetic does not depend on the store or its budget). */
#define LP_FLASH_PANEL 256

/* Read the config, look up and shape-check every tensor. ws must outlive the
 * model. Errors name the file and the key or tensor. */
lp_llama *lp_llama_load(lp_weight_store *ws, lp_error *err);
void lp_llama_free(lp_llama *m);

const lp_llama_config *lp_llama_get_config(const lp_llama *m);
int lp_llama_n_vocab(const lp_llama *m);
int lp_llama_n_embd(const lp_llama *m);
int lp_llama_n_layer(const lp_llama *m);
int lp_llama_n_ctx_train(const lp_llama *m);

/* A state for up to n_ctx positions (n_ctx may exceed n_ctx_train, as in
 * llama.cpp). n_batch <= 0 means min(n_ctx, LP_LLAMA_DEFAULT_BATCH). */
lp_llama_state *lp_llama_state_new(const lp_llama *m, int n_ctx, lp_error *err);
lp_llama_state *lp_llama_state_new_ex(const lp_llama *m, int n_ctx, int n_batch, lp_error *err);
void lp_llama_state_free(lp_llama_state *s);
void lp_llama_state_reset(lp_llama_state *s);               /* n_past = 0 */
/* Forget positions >= n_past (0 <= n_past <= current); INVALID_ARG otherwise. */
loupe_status lp_llama_state_truncate(lp_llama_state *s, int n_past, lp_error *err);
void lp_llama_state_set_dump(lp_llama_state *s, lp_llama_dump_fn fn, void *user);
void lp_llama_state_set_logits_all(lp_llama_state *s, bool all);
void lp_llama_state_set_kv_f16(lp_llama_state *s, bool on);
void lp_llama_state_set_exact_matvec(lp_llama_state *s, bool on);
/* FFN sparsity for flash-layout models (see ffn_keep above); INVALID_ARG
 * for keep outside (0, 1] or a negative threshold. Ignored by other models. */
loupe_status lp_llama_state_set_ffn_sparsity(lp_llama_state *s, float keep, float threshold, lp_error *err);

/* Token embedding rows, dequantized: out (n, n_embd). Token ids outside
 * [0, n_vocab) give LOUPE_ERR_INVALID_ARG naming the id. */
loupe_status lp_llama_embed(const lp_llama *m, const int32_t *tokens, int n, float *out, lp_error *err);

/* Append n positions with input embeddings embd (n, n_embd) to the cache.
 * logits: (n_vocab) for the last position, or (n, n_vocab) when the state is
 * set to logits_all; NULL skips the output head. n > 1 runs as matrix-matrix
 * passes of at most n_batch tokens, n == 1 as matrix-vector. Positions past
 * n_ctx give LOUPE_ERR_LIMIT and change nothing; on any error the cache is
 * left as it was before the call (n_past unchanged). */
loupe_status lp_llama_forward(lp_llama *m, lp_llama_state *s, const float *embd, int n, float *logits,
                              lp_pool *pool, lp_error *err);

/* Convenience: embed tokens (n <= n_batch per internal chunk) and forward. */
loupe_status lp_llama_forward_tokens(lp_llama *m, lp_llama_state *s, const int32_t *tokens, int n, float *logits,
                                     lp_pool *pool, lp_error *err);

/* ---- explicit positions (M-RoPE) ----
 * Position ids per token: 4 for qwen2vl (M-RoPE), 1 otherwise. */
int lp_llama_n_pos_per_token(const lp_llama *m);

/* As lp_llama_forward / lp_llama_forward_tokens, with the RoPE positions
 * given: pos (n_pos_per_token, n), section-major like llama_batch.pos —
 * pos[k * n + i] is id k of token i (t, h, w, e for M-RoPE; the one
 * position otherwise). pos == NULL is the default (n_past + i). The cache
 * and n_past advance by n slots whatever the positions; attention is causal
 * in slot order. Negative positions give INVALID_ARG. */
loupe_status lp_llama_forward_pos(lp_llama *m, lp_llama_state *s, const float *embd, const int32_t *pos, int n,
                                  float *logits, lp_pool *pool, lp_error *err);
loupe_status lp_llama_forward_tokens_pos(lp_llama *m, lp_llama_state *s, const int32_t *tokens, const int32_t *pos,
                                         int n, float *logits, lp_pool *pool, lp_error *err);

/* ggml's rope "multi" in MROPE mode on x (n_head, head_dim) in place: NEOX
 * pairs over the first n_rot dims, pair i's angle from position id
 * pos[sector(i)] as described above (sections[4] >= 0, sum > 0). With
 * pos[0] == pos[1] == pos[2] (and sections[3] == 0, or pos[3] equal too)
 * it equals lp_rope(..., pos[0], base, LP_ROPE_NEOX) bit for bit. */
void lp_rope_mrope(float *x, int n_head, int head_dim, int n_rot, const int32_t pos[4], const int sections[4],
                   float base);

/* Fill M-RoPE position ids (section-major, stride = the batch's token
 * count) for tokens i0 .. of a batch; each returns the next text position.
 *   text:  n tokens at p, p+1, ...: (p+k, p+k, p+k, 0); returns p + n.
 *   image: nx × ny merged tokens (raster order) starting at p:
 *          (p, p + i/nx, p + i%nx, 0); returns p + max(nx, ny). */
int32_t lp_mrope_pos_text(int32_t *pos, int64_t stride, int64_t i0, int n, int32_t p);
int32_t lp_mrope_pos_image(int32_t *pos, int64_t stride, int64_t i0, int nx, int ny, int32_t p);
/* A whole prompt: n_pre text tokens, one nx × ny image, n_post text tokens,
 * starting at p0; pos must hold 4 · (n_pre + nx·ny + n_post) ids (stride =
 * that token count). Returns the position of the token after the prompt,
 * p0 + n_pre + max(nx, ny) + n_post. */
int32_t lp_mrope_pos_prompt(int32_t *pos, int n_pre, int nx, int ny, int n_post, int32_t p0);

#endif
