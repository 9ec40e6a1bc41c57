/* tools/gen_model.c — random-weight LLaVA-family model pairs in llama.cpp's
 * GGUF conventions, for parity tests and benchmarks.
 *
 *   gen_model --family llava --shape tiny|llava-7b|mobilevlm-1.7b|mobilevlm-3b --type f32|f16|q8_0|q4_0|q4_K
 *             --seed S --out PREFIX [--region-sampler]
 *
 * writes PREFIX.gguf (general.architecture "llama", with a synthetic
 * SentencePiece vocabulary) and PREFIX-mmproj.gguf (clip.projector_type
 * "mlp", as tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py writes
 * for LLaVA-1.5).
 *
 * --region-sampler makes a Ferret-style pair: the mmproj also gets a random
 * spatial-aware region sampler, with the tensor and key names of
 * fusion/region_sampler.h (= tools/reference/region_sampler.py's
 * export_gguf): clip.vision.region.{num_points, sub_points, neighbors,
 * input_dim, output_dim, pooler "max", layer_norm_epsilon 1e-5,
 * ferret_transpose false} written after the CLIP keys, and
 * mm.region.{s}.{diff,agg,norm}.{weight,bias}, mm.region.{flatten,proj}.
 * {weight,bias} written after the CLIP tensors, from the same random stream
 * continued (so every CLIP tensor is unchanged). C = the ViT width (the
 * feature width without clip.vision.feature_layer), out_dim = the LM's
 * n_embd. Geometry: tiny 128 points, sub_points [32, 8], neighbors [8, 8];
 * llava-7b Ferret's 512, [128, 32], [24, 24]. Matrices in --type (with the
 * row-length fallback below), norms and biases f32. The vocabulary's last
 * entry becomes "<region_fea>" (CONTROL, as Ferret's added special token
 * converts), so the vocabulary size and every weight of the LM stay the
 * same. Without the option both files are byte-identical to before it
 * existed.
 *
 * Conventions reproduced from llama.cpp (see tests/fixtures/README.md):
 *   - mmproj: the CLIP ViT is generated with n_vit_gen layers and, like the
 *     legacy converter for a llava projector without feature-layer config,
 *     the last one is dropped: clip.vision.block_count = n_vit_gen - 1
 *     (LLaVA-1.5: 24 -> 23). llama.cpp then runs block_count - 1 of them.
 *   - CLIP's mlp.fc1 is stored as "ffn_down" and mlp.fc2 as "ffn_up" (the
 *     converter's legacy naming; llama.cpp and loupe swap them back).
 *   - no v.post_ln (dropped by the converter), v.pre_ln present, v.class_embd,
 *     no patch bias; clip.use_gelu false (CLIP's quick_gelu).
 *   - the patch embedding (4-D) is always f16, as the converter writes it
 *     (ggml_conv_2d builds its im2col in f16 whatever the kernel type, so an
 *     f32 kernel would be rounded to f16 anyway); 1-D tensors (norms,
 *     biases, class embedding) are always f32; v.position_embd is f32 with
 *     --type f32 and f16 otherwise (the converter's ftype-1 rule).
 *   - decoder: token_embd / output / blk.* matrices in --type, norms f32.
 *     With a quantized type, a matrix whose row length is not a multiple of
 *     the type's block falls back to q4_0 (q4_K) or to f16 — llama.cpp's
 *     quantizer has a similar fallback (it uses q5_0/q5_1, which loupe does
 *     not quantize). tools/gen_model prints every fallback.
 *
 *   gen_model --family openelm --shape tiny|openelm-270m|openelm-450m|openelm-1.1b|openelm-3b
 *             --type ... --seed S --out PREFIX [--ldp|--ldpv2]
 *
 * writes PREFIX.gguf, an OpenELM decoder as llama.cpp's converter writes one
 * (see gen_openelm_llm), and PREFIX-mmproj.gguf, a LLaVA-style (or MobileVLM
 * ldp/ldpv2) mmproj whose projector ends at the OpenELM width, so the pair
 * runs as a VLM (tiny: a 32-wide one-layer tower; real shapes: CLIP ViT-L/14
 * at 336 px).
 *
 *   gen_model --family internvl --shape tiny|internvl3-1b [--qk-norm]
 *             --type f32|f16|q8_0|q4_0|q4_K --seed S --out PREFIX
 *   gen_model --family qwen25vl --shape tiny|qwen2.5-vl-3b
 *             --type f32|f16|q8_0|q4_0|q4_K --seed S --out PREFIX
 *
 * write the two newer families as llama.cpp's convert_hf_to_gguf.py
 * (conversion/internvl.py, qwenvl.py) does; --set does not apply to them.
 * Both decoders: general.architecture "qwen2" (InternVL) or "qwen2vl"
 * (Qwen2.5-VL, plus qwen2vl.rope.dimension_sections, 4 × i32), q/k/v
 * biases, RMS eps 1e-6, rope theta 1e6 (NEOX rope is implied by the arch),
 * output.weight absent on the real shapes (tied to token_embd, as both real
 * models are). Vocabulary: a synthetic GPT-2 byte-level BPE
 * (tokenizer.ggml.model "gpt2", pre "qwen2"): the 256 byte tokens in GPT-2's
 * bytes_to_unicode order, the merges that spell BPE_WORDS below left to
 * right (plus every prefix as a token), "<|filler_K|>" pieces up to the
 * vocabulary size (no merge makes them), then the CONTROL tokens
 * <|endoftext|> <|im_start|> <|im_end|> and the family's seven
 * (<img> </img> <IMG_CONTEXT> <ref> </ref> <box> </box>, or
 * <|vision_start|> <|vision_end|> <|image_pad|> <|object_ref_start|>
 * <|object_ref_end|> <|box_start|> <|box_end|>) as the last ten ids;
 * eos = <|im_end|>, bos = pad = <|endoftext|>, add_bos_token false, a
 * chatml tokenizer.chat_template. llama.cpp and loupe tokenize it alike.
 *
 *   - internvl mmproj: clip.projector_type "internvl", InternViT: patch
 *     kernel + v.patch_embd.bias, v.class_embd, v.position_embd.weight with
 *     (S/P)² + 1 rows (always f32: the converter forces it), per block
 *     attn_q/k/v/out + biases, ln1/ln2 LayerNorms with biases, ffn_up (fc1,
 *     D -> F) and ffn_down (fc2, F -> D) with biases — the converter's
 *     InternViT names are NOT swapped like CLIP's legacy ones — layer
 *     scales v.blk.N.ls1/ls2.weight; --qk-norm adds
 *     v.blk.N.attn_q_norm/attn_k_norm.weight (InternViT-6B; no bias: llama.cpp
 *     applies none). Projector mm.model.mlp.0 (LayerNorm over 4D, weight +
 *     bias), .1 (4D -> E), .3 (E -> E, gain 0.3). Keys: clip.use_gelu true,
 *     eps 1e-6, clip.vision.projector.scale_factor 2, preproc_min_tiles 1 /
 *     preproc_max_tiles 12, ImageNet mean/std.
 *   - qwen25vl mmproj: clip.projector_type "qwen2.5vl_merger": the two
 *     temporal halves of the Conv3D patch kernel as v.patch_embd.weight and
 *     v.patch_embd.weight.1 (no bias, no position table: 2-D RoPE), per block
 *     q/k/v/out + biases, ln1/ln2 RMSNorm weights, SwiGLU ffn_gate/up/down
 *     with biases, v.post_ln.weight (the merger's ln_q RMSNorm), mm.0
 *     (4D -> 4D) and mm.2 (4D -> E) with biases. Keys: clip.use_silu true,
 *     eps 1e-6, clip.vision.n_wa_pattern (what the converter writes: full
 *     attention in layers il with (il + 1) % n == 0; the converter rejects
 *     irregular fullatt_block_indexes; clip.vision.wa_layer_indexes is
 *     another family's key), Qwen's (CLIP) mean/std. Window size (112 px),
 *     spatial merge 2 and the 8..4096 image-token limits are llama.cpp
 *     defaults the converter writes no key for, so neither does this.
 *   - patch kernels are f16 in an f16 file and f32 otherwise; other
 *     matrices in --type with the row-length fallback above (q4_K rows of
 *     896 become q4_0, of 3420 f16), 1-D tensors f32.
 *   Shapes (ViT width/layers/heads/ffn, LM width/layers/heads/kv/ffn/vocab):
 *     internvl tiny: 448/14, 32/2/2/64, mlp 128 -> 64 -> 64; LM 64/2/4/2/128, 600
 *     internvl3-1b:  448/14, 1024/24/16/4096, 4096 -> 896 -> 896;
 *                    LM 896/24/14/2/4864, 151674 (filler-padded), tied
 *     qwen25vl tiny: patch 14, 32/4/2/48, n_wa_pattern 2 (full attention in
 *                    layers 1 and 3, 8×8-patch windows elsewhere: a photo
 *                    has many windows), merger 128 -> 128 -> 64;
 *                    LM 64/2/4/2/128, 600, sections [2, 3, 3, 0]
 *     qwen2.5-vl-3b: patch 14, 1280/32/16/3420, n_wa_pattern 8 (7, 15, 23,
 *                    31), merger 5120 -> 5120 -> 2048;
 *                    LM 2048/36/16/2/11008, 151936, sections [16, 24, 24, 0], tied
 *   Streams: the decoder from seed * 0x100000001B3 + 1, the mmproj from + 2
 *   (so --qk-norm leaves the decoder file byte-identical).
 *
 * Weights: N(0, σ²) from a splitmix64 + Box–Muller generator seeded by
 * --seed, in the order the tensors are written; σ = gain / sqrt(fan_in) for
 * matrices so activations stay O(1), norms 1 + 0.1·N(0,1), biases 0.1·N.
 * The output head has gain 4 so that logits spread over several units and
 * greedy decoding is robust to rounding differences.
 *
 * Memory: lp_gguf_writer borrows tensor data until it writes, so the whole
 * model is held in RAM once, at its stored size (llava-7b q4_K ~4 GB,
 * q8_0 ~7.5 GB, f16 ~14 GB; f32 ~28 GB — do not). */
#include "error.h"
#include "gguf.h"
#include "types.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- RNG */

static uint64_t g_rng;

static uint64_t splitmix64(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform01(void) { /* (0, 1) */
    return ((double)(splitmix64() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static int g_have_spare;
static double g_spare;

static double gauss(void) {
    if (g_have_spare) {
        g_have_spare = 0;
        return g_spare;
    }
    double u = uniform01(), v = uniform01();
    double r = sqrt(-2.0 * log(u));
    g_spare = r * sin(6.283185307179586 * v);
    g_have_spare = 1;
    return r * cos(6.283185307179586 * v);
}

/* ---------------------------------------------------------------- shapes */

typedef struct shape {
    const char *name;
    /* vision */
    int image_size, patch_size, v_embd, v_ff, v_head, n_vit_gen;
    /* language */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
} shape;

static const shape SHAPES[] = {
    {"tiny", 32, 8, 64, 128, 4, 4, 64, 2, 4, 2, 128, 512, 512},
    {"llava-7b", 336, 14, 1024, 4096, 16, 24, 4096, 32, 32, 32, 11008, 4096, 32000},
    /* MobileVLM (use with --ldp) / MobileVLM V2 (--ldpv2): CLIP ViT-L/14-336 and
     * MobileLLaMA-1.4B / -2.7B (mtgv/MobileLLaMA-*-Chat config.json) */
    {"mobilevlm-1.7b", 336, 14, 1024, 4096, 16, 24, 2048, 24, 16, 16, 5632, 2048, 32000},
    {"mobilevlm-3b", 336, 14, 1024, 4096, 16, 24, 2560, 32, 32, 32, 6912, 2048, 32000},
};

/* ---------------------------------------------------------------- tensors */

/* Everything allocated stays alive until the writer has written. */
typedef struct arena {
    void **p;
    size_t n, cap;
    size_t bytes;
} arena;

static void *arena_alloc(arena *a, size_t size) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->p = realloc(a->p, a->cap * sizeof *a->p);
        if (!a->p) {
            fprintf(stderr, "gen_model: out of memory\n");
            exit(1);
        }
    }
    void *m = malloc(size ? size : 1);
    if (!m) {
        fprintf(stderr, "gen_model: out of memory (%zu bytes)\n", size);
        exit(1);
    }
    a->p[a->n++] = m;
    a->bytes += size;
    return m;
}

static void arena_free(arena *a) {
    for (size_t i = 0; i < a->n; i++) free(a->p[i]);
    free(a->p);
    memset(a, 0, sizeof *a);
}

typedef struct gen {
    lp_gguf_writer *w;
    arena mem;
    const char *file;
} gen;

static void check(loupe_status st, const char *what) {
    if (st != LOUPE_OK) {
        fprintf(stderr, "gen_model: %s: %s\n", what, loupe_status_str(st));
        exit(1);
    }
}

/* Pick the stored type for a matrix of row length ne0. */
static lp_type pick_type(lp_type want, int64_t ne0, const char *file, const char *name) {
    if (ne0 % lp_type_block_size(want) == 0) return want;
    lp_type fb = (want == LP_TYPE_Q4_K && ne0 % 32 == 0) ? LP_TYPE_Q4_0 : LP_TYPE_F16;
    fprintf(stderr, "gen_model: %s: %s: row length %lld is not a multiple of %s's block of %lld: stored as %s\n", file,
            name, (long long)ne0, lp_type_name(want), (long long)lp_type_block_size(want), lp_type_name(fb));
    return fb;
}

enum init { INIT_NORMAL, INIT_NORM, INIT_BIAS };

/* Generate a tensor of ne (ggml order) with values from `init` and std `sd`,
 * stored as type t, and add it to the writer. Rows are generated and
 * quantized one at a time. */
static void add(gen *g, const char *name, lp_type t, int n_dims, const int64_t *ne, enum init init, double sd) {
    int64_t ne0 = ne[0], rows = 1;
    for (int i = 1; i < n_dims; i++) rows *= ne[i];
    size_t rb = lp_row_size(t, ne0);
    if (rb == 0) {
        fprintf(stderr, "gen_model: %s: bad row size for %s %s\n", g->file, name, lp_type_name(t));
        exit(1);
    }
    uint8_t *data = arena_alloc(&g->mem, rb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)ne0);
    if (!row) exit(1);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < ne0; i++) {
            double x = gauss();
            switch (init) {
            case INIT_NORMAL: x *= sd; break;
            case INIT_NORM: x = 1.0 + 0.1 * x; break;
            case INIT_BIAS: x *= 0.1; break;
            }
            row[i] = (float)x;
        }
        if (lp_quantize_row(t, row, data + rb * (size_t)r, ne0) != rb) {
            fprintf(stderr, "gen_model: %s: cannot store %s as %s\n", g->file, name, lp_type_name(t));
            exit(1);
        }
    }
    free(row);
    check(lp_gguf_writer_add_tensor(g->w, name, t, (uint32_t)n_dims, ne, data), name);
}

static void add_mat(gen *g, const char *name, lp_type want, int64_t in, int64_t out, double gain) {
    int64_t ne[2] = {in, out};
    add(g, name, pick_type(want, in, g->file, name), 2, ne, INIT_NORMAL, gain / sqrt((double)in));
}

static void add_vec(gen *g, const char *name, int64_t n, enum init init) {
    int64_t ne[1] = {n};
    add(g, name, LP_TYPE_F32, 1, ne, init, 0.0);
}

static void write_file(gen *g, const char *path) {
    lp_error err;
    lp_error_clear(&err);
    if (lp_gguf_writer_write(g->w, path, &err) != LOUPE_OK) {
        fprintf(stderr, "gen_model: %s\n", err.msg);
        exit(1);
    }
    fprintf(stderr, "gen_model: wrote %s (%.1f MB of tensor data)\n", path, (double)g->mem.bytes / 1e6);
    lp_gguf_writer_free(g->w);
    arena_free(&g->mem);
    g->w = NULL;
}

/* llama.cpp's general.file_type (enum llama_ftype) */
static uint32_t ftype_of(lp_type t) {
    switch (t) {
    case LP_TYPE_F32: return 0;
    case LP_TYPE_F16: return 1;
    case LP_TYPE_Q4_0: return 2;
    case LP_TYPE_Q8_0: return 7;
    case LP_TYPE_Q4_K: return 15; /* Q4_K_M */
    default: return 0;
    }
}

/* ---------------------------------------------------------------- vocab */

/* Synthetic SentencePiece vocabulary: <unk> <s> </s>, <0x00>..<0xFF>, then
 * pieces. The first pieces are the words of the parity prompt; the rest are
 * single characters and generated syllables, all distinct. Scores decrease
 * with the id (SentencePiece's merge priority). */
#define SP "\xe2\x96\x81" /* U+2581, SentencePiece's space */
static const char *WORDS[] = {
    SP "USER", ":", SP "What", SP "is", SP "in", SP "the",
    SP "image", "?", SP "ASS", "IST", "ANT", SP "a", SP "cat",
    SP "dog", SP "on", SP "of", SP "and", SP "box",
    SP "red", SP "blue", SP "green", SP "left", SP "right",
    SP "top", SP "bottom", SP "there", SP "This", SP "It",
    SP "shows", SP "picture", SP "table", SP "with", SP "at",
    SP "[", "]", ",", ".", SP, SP "I", SP "A",
};

typedef struct vocab {
    char **tok;
    float *score;
    int32_t *type;
    int n;
} vocab;

static void vocab_add(vocab *v, const char *s, float score, int32_t type) {
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->tok[i], s) == 0) return; /* keep pieces distinct */
    v->tok[v->n] = strdup(s);
    v->score[v->n] = score;
    v->type[v->n] = type;
    v->n++;
}

#define REGION_TOKEN "<region_fea>"

/* region: the last id is "<region_fea>" (CONTROL) instead of a syllable. */
static void make_vocab(vocab *v, int n_vocab, int region) {
    v->tok = calloc((size_t)n_vocab, sizeof *v->tok);
    v->score = calloc((size_t)n_vocab, sizeof *v->score);
    v->type = calloc((size_t)n_vocab, sizeof *v->type);
    v->n = 0;
    const int n_fill = region ? n_vocab - 1 : n_vocab;
    vocab_add(v, "<unk>", 0.0f, 2); /* UNKNOWN */
    vocab_add(v, "<s>", 0.0f, 3);   /* CONTROL */
    vocab_add(v, "</s>", 0.0f, 3);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        vocab_add(v, s, 0.0f, 6); /* BYTE */
    }
    int k = 0;
    for (size_t i = 0; i < sizeof WORDS / sizeof WORDS[0] && v->n < n_fill; i++)
        vocab_add(v, WORDS[i], -(float)(k++), 1);
    /* single characters, bare and with the ▁ prefix */
    for (int c = 'a'; c <= 'z' && v->n < n_fill; c++) {
        char s[8];
        snprintf(s, sizeof s, "%c", c);
        vocab_add(v, s, -(float)(k++), 1);
        snprintf(s, sizeof s, SP "%c", c);
        if (v->n < n_fill) vocab_add(v, s, -(float)(k++), 1);
    }
    for (int c = 'A'; c <= 'Z' && v->n < n_fill; c++) {
        char s[8];
        snprintf(s, sizeof s, "%c", c);
        vocab_add(v, s, -(float)(k++), 1);
    }
    for (int c = '0'; c <= '9' && v->n < n_fill; c++) {
        char s[8];
        snprintf(s, sizeof s, "%c", c);
        vocab_add(v, s, -(float)(k++), 1);
    }
    /* syllables: a mixed-radix spelling of a counter (consonant, vowel, ...),
     * with and without the ▁ prefix; distinct counters give distinct pieces */
    static const char *C = "bcdfghjklmnprstvwz", *V = "aeiou";
    for (uint64_t ctr = 0; v->n < n_fill; ctr++) {
        char s[64];
        int len = (ctr & 1) ? snprintf(s, sizeof s, SP) : 0;
        uint64_t q = ctr >> 1;
        do {
            s[len++] = C[q % 18];
            q /= 18;
            s[len++] = V[q % 5];
            q /= 5;
        } while (q && len < 60);
        s[len] = 0;
        int before = v->n;
        vocab_add(v, s, -(float)k, 1);
        if (v->n > before) k++;
    }
    if (region) vocab_add(v, REGION_TOKEN, 0.0f, 3); /* CONTROL */
}

static void free_vocab(vocab *v) {
    for (int i = 0; i < v->n; i++) free(v->tok[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
}

/* The synthetic SentencePiece vocabulary as llama.cpp's converter writes a
 * LLaMA tokenizer (model "llama", BOS 1, EOS 2, UNK 0). */
static void write_spm_vocab(lp_gguf_writer *w, int n_vocab, int region) {
    vocab v;
    make_vocab(&v, n_vocab, region);
    check(lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), "kv");
    check(lp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "default"), "kv");
    check(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, (uint64_t)v.n), "kv");
    check(lp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LP_GGUF_FLOAT32, v.score, (uint64_t)v.n), "kv");
    check(lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, v.type, (uint64_t)v.n), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 0), "kv");
    check(lp_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true), "kv");
    check(lp_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false), "kv");
    free_vocab(&v);
}

/* ---------------------------------------------------------------- models */

/* A block's SwiGLU FFN with its norm: ffn_norm, ffn_gate, ffn_up (F rows of
 * E), ffn_down (E rows of F). */
static void add_ffn_block(gen *g, int l, int64_t E, int64_t F, lp_type t) {
    char nm[96];
    snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
    add_vec(g, nm, E, INIT_NORM);
    snprintf(nm, sizeof nm, "blk.%d.ffn_gate.weight", l);
    add_mat(g, nm, t, E, F, 1.0);
    snprintf(nm, sizeof nm, "blk.%d.ffn_up.weight", l);
    add_mat(g, nm, t, E, F, 1.0);
    snprintf(nm, sizeof nm, "blk.%d.ffn_down.weight", l);
    add_mat(g, nm, t, F, E, 1.0);
}

/* The decoder blocks, in the order llama.cpp's converters write them:
 * RMSNorm weights, q/k/v (+ biases for qwen2), output, the SwiGLU FFN. */
static void add_llm_blocks(gen *g, int n_layer, int64_t E, int64_t kv, int64_t F, lp_type t, bool qkv_bias) {
    char nm[96];
    static const char *qkv[3] = {"attn_q", "attn_k", "attn_v"};
    for (int l = 0; l < n_layer; l++) {
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        add_vec(g, nm, E, INIT_NORM);
        for (int i = 0; i < 3; i++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, qkv[i]);
            add_mat(g, nm, t, E, i == 0 ? E : kv, 1.0);
            if (!qkv_bias) continue;
            snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, qkv[i]);
            add_vec(g, nm, i == 0 ? E : kv, INIT_BIAS);
        }
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", l);
        add_mat(g, nm, t, E, E, 0.5);
        add_ffn_block(g, l, E, F, t);
    }
}

static void gen_llm(const shape *sh, lp_type t, const char *path, const char *name, int region) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    check(lp_gguf_writer_set_str(w, "general.architecture", "llama"), "kv");
    check(lp_gguf_writer_set_str(w, "general.name", name), "kv");
    check(lp_gguf_writer_set_u32(w, "general.file_type", ftype_of(t)), "kv");
    lp_gguf_writer_set_alignment(w, 32);
    check(lp_gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)sh->n_vocab), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)sh->n_ctx), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)sh->n_embd), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)sh->n_layer), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)sh->n_ff), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(sh->n_embd / sh->n_head)), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)sh->n_head), "kv");
    check(lp_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)sh->n_head_kv), "kv");
    check(lp_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f), "kv");
    check(lp_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f), "kv");

    write_spm_vocab(w, sh->n_vocab, region);

    const int64_t E = sh->n_embd, hd = sh->n_embd / sh->n_head, kv = hd * sh->n_head_kv, F = sh->n_ff;
    /* token embeddings: unit-variance rows (rmsnorm follows) */
    {
        int64_t ne[2] = {E, sh->n_vocab};
        add(&g, "token_embd.weight", pick_type(t, E, path, "token_embd.weight"), 2, ne, INIT_NORMAL, 1.0);
    }
    add_llm_blocks(&g, sh->n_layer, E, kv, F, t, false);
    add_vec(&g, "output_norm.weight", E, INIT_NORM);
    add_mat(&g, "output.weight", t, E, sh->n_vocab, 4.0);
    write_file(&g, path);
}

/* Region-sampler geometry per shape (see the top of the file). */
typedef struct region_geom {
    int num_points, n_stages, sub[2], nb[2];
} region_geom;

static region_geom region_geom_of(const shape *sh) {
    if (!strcmp(sh->name, "tiny")) return (region_geom){128, 2, {32, 8}, {8, 8}};
    return (region_geom){512, 2, {128, 32}, {24, 24}}; /* Ferret */
}

static void region_keys(gen *g, const shape *sh) {
    const region_geom rg = region_geom_of(sh);
    lp_gguf_writer *w = g->w;
    check(lp_gguf_writer_set_u32(w, "clip.vision.region.num_points", (uint32_t)rg.num_points), "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.region.sub_points", LP_GGUF_INT32, rg.sub, (uint64_t)rg.n_stages),
          "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.region.neighbors", LP_GGUF_INT32, rg.nb, (uint64_t)rg.n_stages), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.region.input_dim", (uint32_t)sh->v_embd), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.region.output_dim", (uint32_t)sh->n_embd), "kv");
    check(lp_gguf_writer_set_str(w, "clip.vision.region.pooler", "max"), "kv");
    check(lp_gguf_writer_set_f32(w, "clip.vision.region.layer_norm_epsilon", 1e-5f), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.vision.region.ferret_transpose", false), "kv");
}

static void region_tensors(gen *g, const shape *sh, lp_type t) {
    const region_geom rg = region_geom_of(sh);
    const int64_t C = sh->v_embd, D = C + 2;
    char nm[96];
    for (int s = 0; s < rg.n_stages; s++) {
        snprintf(nm, sizeof nm, "mm.region.%d.diff.weight", s);
        add_mat(g, nm, t, D, D, 1.0);
        snprintf(nm, sizeof nm, "mm.region.%d.diff.bias", s);
        add_vec(g, nm, D, INIT_BIAS);
        snprintf(nm, sizeof nm, "mm.region.%d.agg.weight", s);
        add_mat(g, nm, t, 2 * D, C, 1.0);
        snprintf(nm, sizeof nm, "mm.region.%d.agg.bias", s);
        add_vec(g, nm, C, INIT_BIAS);
        snprintf(nm, sizeof nm, "mm.region.%d.norm.weight", s);
        add_vec(g, nm, C, INIT_NORM);
        snprintf(nm, sizeof nm, "mm.region.%d.norm.bias", s);
        add_vec(g, nm, C, INIT_BIAS);
    }
    add_mat(g, "mm.region.flatten.weight", t, (int64_t)rg.sub[rg.n_stages - 1] * C, C, 1.0);
    add_vec(g, "mm.region.flatten.bias", C, INIT_BIAS);
    add_mat(g, "mm.region.proj.weight", t, C, sh->n_embd, 1.0);
    add_vec(g, "mm.region.proj.bias", sh->n_embd, INIT_BIAS);
}

static void gen_mmproj(const shape *sh, lp_type t, const char *path, const char *name, int region, int ldpv2,
                       int ldp) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    const int64_t D = sh->v_embd, F = sh->v_ff, P = sh->patch_size, S = sh->image_size;
    const int64_t n_side = S / P, n_pos = n_side * n_side + 1, E = sh->n_embd;
    const int n_layer = sh->n_vit_gen - 1; /* the converter drops the last layer */
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};

    check(lp_gguf_writer_set_str(w, "general.architecture", "clip"), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.has_text_encoder", false), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.has_vision_encoder", true), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.has_llava_projector", true), "kv");
    check(lp_gguf_writer_set_u32(w, "general.file_type", t == LP_TYPE_F32 ? 0 : ftype_of(t)), "kv");
    check(lp_gguf_writer_set_str(w, "general.name", name), "kv");
    check(lp_gguf_writer_set_str(w, "general.description", "image encoder for LLaVA"), "kv");
    check(lp_gguf_writer_set_str(w, "clip.projector_type", ldp ? "ldp" : ldpv2 ? "ldpv2" : "mlp"), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.image_size", (uint32_t)S), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.patch_size", (uint32_t)P), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.embedding_length", (uint32_t)D), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.feed_forward_length", (uint32_t)F), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.projection_dim", (uint32_t)(sh->v_embd * 3 / 4)), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.attention.head_count", (uint32_t)sh->v_head), "kv");
    check(lp_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-5f), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.block_count", (uint32_t)n_layer), "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.image_mean", LP_GGUF_FLOAT32, mean, 3), "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.image_std", LP_GGUF_FLOAT32, stdv, 3), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.use_gelu", false), "kv");
    if (region) region_keys(&g, sh);

    /* projector first, as the converter writes it */
    if (ldp) { /* MobileVLM: mlp, then two MobileNetV3 blocks (the second with stride 2) */
        add_mat(&g, "mm.model.mlp.1.weight", t, D, E, 1.0);
        add_vec(&g, "mm.model.mlp.1.bias", E, INIT_BIAS);
        add_mat(&g, "mm.model.mlp.3.weight", t, E, E, 1.0);
        add_vec(&g, "mm.model.mlp.3.bias", E, INIT_BIAS);
        char nm2[96];
        for (int b = 1; b <= 2; b++) {
            int64_t ne[4] = {3, 3, E, 1};
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.0.0.weight", b);
            add(&g, nm2, LP_TYPE_F16, 4, ne, INIT_NORMAL, 1.0 / 3.0); /* f16: see the ldpv2 PEG */
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.0.1.weight", b);
            add_vec(&g, nm2, E, INIT_NORM);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.0.1.bias", b);
            add_vec(&g, nm2, E, INIT_BIAS);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.1.fc1.weight", b);
            add_mat(&g, nm2, t, E, E / 4, 1.0);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.1.fc1.bias", b);
            add_vec(&g, nm2, E / 4, INIT_BIAS);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.1.fc2.weight", b);
            add_mat(&g, nm2, t, E / 4, E, 1.0);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.1.fc2.bias", b);
            add_vec(&g, nm2, E, INIT_BIAS);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.2.0.weight", b);
            add_mat(&g, nm2, t, E, E, 1.0);
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.2.1.weight", b);
            { /* sd 0.1: image rows below 1, as a real projector's (see mlp.3 of InternVL) */
                int64_t ne1[1] = {E};
                add(&g, nm2, LP_TYPE_F32, 1, ne1, INIT_NORMAL, 0.1);
            }
            snprintf(nm2, sizeof nm2, "mm.model.mb_block.%d.block.2.1.bias", b);
            add_vec(&g, nm2, E, INIT_BIAS);
        }
    } else if (ldpv2) { /* MobileVLM V2: mlp, 2×2 pooling, PEG (3×3 depthwise conv + bias, residual) */
        add_mat(&g, "mm.model.mlp.0.weight", t, D, E, 1.0);
        add_vec(&g, "mm.model.mlp.0.bias", E, INIT_BIAS);
        add_mat(&g, "mm.model.mlp.2.weight", t, E, E, 0.3);
        add_vec(&g, "mm.model.mlp.2.bias", E, INIT_BIAS);
        int64_t ne[4] = {3, 3, E, 1};
        add(&g, "mm.model.peg.0.weight", LP_TYPE_F16, 4, ne, INIT_NORMAL, 1.0 / 3.0);
        add_vec(&g, "mm.model.peg.0.bias", E, INIT_BIAS);
    } else {
        add_mat(&g, "mm.0.weight", t, D, E, 1.0);
        add_vec(&g, "mm.0.bias", E, INIT_BIAS);
        add_mat(&g, "mm.2.weight", t, E, E, 1.0);
        add_vec(&g, "mm.2.bias", E, INIT_BIAS);
    }

    {
        int64_t ne[1] = {D};
        add(&g, "v.class_embd", LP_TYPE_F32, 1, ne, INIT_NORMAL, 1.0);
    }
    {
        int64_t ne[4] = {P, P, 3, D}; /* conv kernel (D, 3, P, P) */
        add(&g, "v.patch_embd.weight", LP_TYPE_F16, 4, ne, INIT_NORMAL, 1.0 / sqrt((double)(3 * P * P)));
    }
    {
        int64_t ne[2] = {D, n_pos};
        add(&g, "v.position_embd.weight", t == LP_TYPE_F32 ? LP_TYPE_F32 : LP_TYPE_F16, 2, ne, INIT_NORMAL, 0.5);
    }
    add_vec(&g, "v.pre_ln.weight", D, INIT_NORM);
    add_vec(&g, "v.pre_ln.bias", D, INIT_BIAS);
    char nm[96];
    for (int l = 0; l < n_layer; l++) {
        static const char *qkv[3] = {"attn_q", "attn_k", "attn_v"};
        for (int i = 0; i < 3; i++) {
            snprintf(nm, sizeof nm, "v.blk.%d.%s.weight", l, qkv[i]);
            add_mat(&g, nm, t, D, D, 1.0);
            snprintf(nm, sizeof nm, "v.blk.%d.%s.bias", l, qkv[i]);
            add_vec(&g, nm, D, INIT_BIAS);
        }
        snprintf(nm, sizeof nm, "v.blk.%d.attn_out.weight", l);
        add_mat(&g, nm, t, D, D, 0.5);
        snprintf(nm, sizeof nm, "v.blk.%d.attn_out.bias", l);
        add_vec(&g, nm, D, INIT_BIAS);
        snprintf(nm, sizeof nm, "v.blk.%d.ln1.weight", l);
        add_vec(&g, nm, D, INIT_NORM);
        snprintf(nm, sizeof nm, "v.blk.%d.ln1.bias", l);
        add_vec(&g, nm, D, INIT_BIAS);
        /* fc1 (D -> F) is "ffn_down", fc2 (F -> D) is "ffn_up" */
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.weight", l);
        add_mat(&g, nm, t, D, F, 1.0);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.bias", l);
        add_vec(&g, nm, F, INIT_BIAS);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.weight", l);
        add_mat(&g, nm, t, F, D, 0.5);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.bias", l);
        add_vec(&g, nm, D, INIT_BIAS);
        snprintf(nm, sizeof nm, "v.blk.%d.ln2.weight", l);
        add_vec(&g, nm, D, INIT_NORM);
        snprintf(nm, sizeof nm, "v.blk.%d.ln2.bias", l);
        add_vec(&g, nm, D, INIT_BIAS);
    }
    if (region) region_tensors(&g, sh, t);
    write_file(&g, path);
}

/* ---------------------------------------------------------------- InternVL and Qwen2.5-VL */

/* Shapes of the two newer families (not the llava `shape`: their ViTs and
 * decoders differ). tiny is for fixtures; the others are the real models'
 * geometry, for benchmarks. */
typedef struct vl_shape {
    const char *family, *name;
    int image_size, patch_size, v_embd, v_ff, v_head, v_layer;
    int n_wa_pattern;         /* qwen25vl: full attention at layers il with (il + 1) % n == 0 */
    int n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, n_vocab;
    int tied;                 /* no output.weight: the head is token_embd (as the real models) */
    int sections[4];          /* qwen2vl.rope.dimension_sections */
} vl_shape;

static const vl_shape VL_SHAPES[] = {
    {"internvl", "tiny", 448, 14, 32, 64, 2, 2, 0, 64, 2, 4, 2, 128, 8192, 600, 0, {0, 0, 0, 0}},
    /* InternVL3-1B: InternViT-300M-448px-V2_5 + Qwen2.5-0.5B */
    {"internvl", "internvl3-1b", 448, 14, 1024, 4096, 16, 24, 0, 896, 24, 14, 2, 4864, 32768, 151674, 1, {0, 0, 0, 0}},
    {"qwen25vl", "tiny", 560, 14, 32, 48, 2, 4, 2, 64, 2, 4, 2, 128, 8192, 600, 0, {2, 3, 3, 0}},
    /* Qwen2.5-VL-3B-Instruct */
    {"qwen25vl", "qwen2.5-vl-3b", 560, 14, 1280, 3420, 16, 32, 8, 2048, 36, 16, 2, 11008, 32768, 151936, 1,
     {16, 24, 24, 0}},
};

/* GPT-2's byte -> printable code point map (bytes_to_unicode), as UTF-8. */
static void byte_token(int b, char out[4]) {
    int cp = b, n = 0;
    const int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (!printable) { /* the k-th non-printable byte becomes U+0100 + k */
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* Words the BPE merges build whole (Ġ = the space byte 0x20 in GPT-2's map). */
#define GS "\xc4\xa0" /* GPT-2's byte 0x20, the space */
static const char *BPE_WORDS[] = {
    GS "the", GS "a", GS "of", GS "in", GS "is", GS "cup", GS "box", GS "region",
    GS "this", GS "image", GS "provide", GS "bounding", GS "coordinate", GS "sentence",
    GS "describes", GS "You", GS "are", GS "helpful", GS "assistant", "Please", "system",
    "user", "assistant", GS "Locate", GS "output", GS "its", GS "bbox", GS "coordinates",
    GS "using", GS "JSON", GS "format", GS "left", GS "right", GS "red", GS "dog",
    GS "cat", GS "table", "\xc4\x8a" "\xc4\x8a", "\":", GS "[", "],", GS "\"",
};

/* Specials of each family, CONTROL tokens after the pieces. */
static const char *SPECIAL_COMMON[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char *SPECIAL_INTERNVL[] = {"<img>", "</img>", "<IMG_CONTEXT>", "<ref>", "</ref>", "<box>", "</box>"};
static const char *SPECIAL_QWEN[] = {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|object_ref_start|>",
                                     "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"};

#define CHATML_TEMPLATE                                                                                              \
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + " \
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

/* A byte-level BPE vocabulary: 256 byte tokens, the merges that spell
 * BPE_WORDS left to right, filler pieces up to n_vocab minus the specials,
 * then the specials. Writes the tokenizer keys; returns the id of <|im_end|>
 * through *eos. */
static void write_bpe_vocab(lp_gguf_writer *w, const vl_shape *sh, int *eos) {
    const int n_vocab = sh->n_vocab;
    const bool qwen = !strcmp(sh->family, "qwen25vl");
    const char **spec2 = qwen ? SPECIAL_QWEN : SPECIAL_INTERNVL;
    const int n_spec = 3 + 7;
    vocab v = {calloc((size_t)n_vocab, sizeof(char *)), calloc((size_t)n_vocab, sizeof(float)),
               calloc((size_t)n_vocab, sizeof(int32_t)), 0};
    char **merges = calloc(4096, sizeof *merges);
    int n_merges = 0;
    for (int b = 0; b < 256; b++) {
        char t[4];
        byte_token(b, t);
        vocab_add(&v, t, 0.0f, 1);
    }
    /* each word: merge its first two symbols, then the result with the next */
    for (size_t i = 0; i < sizeof BPE_WORDS / sizeof BPE_WORDS[0]; i++) {
        const char *wd = BPE_WORDS[i];
        char pre[128] = "";
        size_t at = 0;
        while (wd[at]) {
            size_t len = 1;
            while (((unsigned char)wd[at + len] & 0xC0) == 0x80) len++; /* one UTF-8 character */
            char sym[8];
            memcpy(sym, wd + at, len);
            sym[len] = 0;
            if (pre[0]) {
                char m[160], merged[128];
                snprintf(m, sizeof m, "%s %s", pre, sym);
                snprintf(merged, sizeof merged, "%s%s", pre, sym);
                int dup = 0;
                for (int k = 0; k < n_merges; k++) dup |= !strcmp(merges[k], m);
                if (!dup && n_merges < 4096) merges[n_merges++] = strdup(m);
                vocab_add(&v, merged, 0.0f, 1);
                snprintf(pre, sizeof pre, "%s", merged);
            } else {
                snprintf(pre, sizeof pre, "%s", sym);
            }
            at += len;
        }
    }
    for (int k = 0; v.n < n_vocab - n_spec; k++) { /* never produced by a merge */
        char t[32];
        snprintf(t, sizeof t, "<|filler_%d|>", k);
        vocab_add(&v, t, 0.0f, 1);
    }
    for (int i = 0; i < 3; i++) vocab_add(&v, SPECIAL_COMMON[i], 0.0f, 3);
    for (int i = 0; i < 7; i++) vocab_add(&v, spec2[i], 0.0f, 3);
    if (v.n != n_vocab) {
        fprintf(stderr, "gen_model: vocabulary has %d tokens, wanted %d\n", v.n, n_vocab);
        exit(1);
    }
    const int endoftext = n_vocab - n_spec, im_end = endoftext + 2;
    check(lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), "kv");
    check(lp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2"), "kv");
    check(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, (uint64_t)v.n), "kv");
    check(lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, v.type, (uint64_t)v.n), "kv");
    check(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)n_merges),
          "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)im_end), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)endoftext), "kv");
    check(lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)endoftext), "kv");
    check(lp_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false), "kv");
    check(lp_gguf_writer_set_str(w, "tokenizer.chat_template", CHATML_TEMPLATE), "kv");
    for (int i = 0; i < n_merges; i++) free(merges[i]);
    free(merges);
    free_vocab(&v);
    *eos = im_end;
}

/* The decoder: "qwen2" (InternVL) or "qwen2vl" (Qwen2.5-VL, M-RoPE). */
static void gen_qwen_llm(const vl_shape *sh, lp_type t, const char *path, const char *name) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    const bool vl = !strcmp(sh->family, "qwen25vl");
    const char *arch = vl ? "qwen2vl" : "qwen2";
    char key[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    check(lp_gguf_writer_set_str(w, "general.architecture", arch), "kv");
    check(lp_gguf_writer_set_str(w, "general.name", name), "kv");
    check(lp_gguf_writer_set_u32(w, "general.file_type", ftype_of(t)), "kv");
    lp_gguf_writer_set_alignment(w, 32);
    check(lp_gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)sh->n_ctx), "kv");
    check(lp_gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)sh->n_embd), "kv");
    check(lp_gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)sh->n_layer), "kv");
    check(lp_gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)sh->n_ff), "kv");
    check(lp_gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)sh->n_head), "kv");
    check(lp_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)sh->n_head_kv), "kv");
    check(lp_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f), "kv");
    check(lp_gguf_writer_set_f32(w, KEY("rope.freq_base"), 1000000.0f), "kv");
    if (vl) check(lp_gguf_writer_set_arr(w, KEY("rope.dimension_sections"), LP_GGUF_INT32, sh->sections, 4), "kv");
#undef KEY
    int eos;
    write_bpe_vocab(w, sh, &eos);

    const int64_t E = sh->n_embd, hd = sh->n_embd / sh->n_head, kv = hd * sh->n_head_kv, F = sh->n_ff;
    {
        int64_t ne[2] = {E, sh->n_vocab};
        add(&g, "token_embd.weight", pick_type(t, E, path, "token_embd.weight"), 2, ne, INIT_NORMAL, 1.0);
    }
    add_llm_blocks(&g, sh->n_layer, E, kv, F, t, true);
    add_vec(&g, "output_norm.weight", E, INIT_NORM);
    if (!sh->tied) add_mat(&g, "output.weight", t, E, sh->n_vocab, 4.0);
    write_file(&g, path);
}

static void vit_common_keys(gen *g, const vl_shape *sh, const char *ptype, lp_type t, const char *name,
                            const float mean[3], const float stdv[3], float eps) {
    lp_gguf_writer *w = g->w;
    check(lp_gguf_writer_set_str(w, "general.architecture", "clip"), "kv");
    check(lp_gguf_writer_set_str(w, "general.name", name), "kv");
    check(lp_gguf_writer_set_u32(w, "general.file_type", t == LP_TYPE_F32 ? 0 : ftype_of(t)), "kv");
    check(lp_gguf_writer_set_bool(w, "clip.has_vision_encoder", true), "kv");
    check(lp_gguf_writer_set_str(w, "clip.projector_type", ptype), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.projection_dim", (uint32_t)sh->n_embd), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.image_size", (uint32_t)sh->image_size), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.patch_size", (uint32_t)sh->patch_size), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.embedding_length", (uint32_t)sh->v_embd), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.feed_forward_length", (uint32_t)sh->v_ff), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.block_count", (uint32_t)sh->v_layer), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.attention.head_count", (uint32_t)sh->v_head), "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.image_mean", LP_GGUF_FLOAT32, mean, 3), "kv");
    check(lp_gguf_writer_set_arr(w, "clip.vision.image_std", LP_GGUF_FLOAT32, stdv, 3), "kv");
    check(lp_gguf_writer_set_f32(w, "clip.vision.attention.layer_norm_epsilon", eps), "kv");
}

/* The patch kernel: F16 in an f16 file, else F32 (the converter's rule). */
static void add_patch_kernel(gen *g, const vl_shape *sh, lp_type t, const char *name) {
    const int64_t P = sh->patch_size, ne[4] = {P, P, 3, sh->v_embd};
    add(g, name, t == LP_TYPE_F16 ? LP_TYPE_F16 : LP_TYPE_F32, 4, ne, INIT_NORMAL, 1.0 / sqrt((double)(3 * P * P)));
}

/* One ViT block: q/k/v/out, ln1/ln2 (LayerNorm with bias for InternViT,
 * RMSNorm weights for Qwen), ffn up/down (+ gate for Qwen) with biases. */
static void add_vit_block(gen *g, const vl_shape *sh, lp_type t, int l, bool qwen) {
    const int64_t D = sh->v_embd, F = sh->v_ff;
    char nm[96];
    static const char *att[4] = {"attn_q", "attn_k", "attn_v", "attn_out"};
    for (int i = 0; i < 4; i++) {
        snprintf(nm, sizeof nm, "v.blk.%d.%s.weight", l, att[i]);
        add_mat(g, nm, t, D, D, i == 3 ? 0.5 : 1.0);
        snprintf(nm, sizeof nm, "v.blk.%d.%s.bias", l, att[i]);
        add_vec(g, nm, D, INIT_BIAS);
    }
    for (int n = 1; n <= 2; n++) {
        snprintf(nm, sizeof nm, "v.blk.%d.ln%d.weight", l, n);
        add_vec(g, nm, D, INIT_NORM);
        if (!qwen) {
            snprintf(nm, sizeof nm, "v.blk.%d.ln%d.bias", l, n);
            add_vec(g, nm, D, INIT_BIAS);
        }
    }
    snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.weight", l);
    add_mat(g, nm, t, D, F, 1.0);
    snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.bias", l);
    add_vec(g, nm, F, INIT_BIAS);
    if (qwen) {
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_gate.weight", l);
        add_mat(g, nm, t, D, F, 1.0);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_gate.bias", l);
        add_vec(g, nm, F, INIT_BIAS);
    }
    snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.weight", l);
    add_mat(g, nm, t, F, D, 0.5);
    snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.bias", l);
    add_vec(g, nm, D, INIT_BIAS);
}

/* InternVL: InternViT (class token, N+1 positions, patch bias, layer
 * scales; q/k norms with qk_norm) + pixel shuffle 2 + mlp1. */
static void gen_internvl_mmproj(const vl_shape *sh, lp_type t, const char *path, const char *name, int qk_norm) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
    vit_common_keys(&g, sh, "internvl", t, name, mean, stdv, 1e-6f);
    check(lp_gguf_writer_set_bool(w, "clip.use_gelu", true), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.projector.scale_factor", 2), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.preproc_min_tiles", 1), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.preproc_max_tiles", 12), "kv");
    const int64_t D = sh->v_embd, n_side = sh->image_size / sh->patch_size, E = sh->n_embd;
    add_patch_kernel(&g, sh, t, "v.patch_embd.weight");
    add_vec(&g, "v.patch_embd.bias", D, INIT_BIAS);
    {
        int64_t ne[1] = {D};
        add(&g, "v.class_embd", LP_TYPE_F32, 1, ne, INIT_NORMAL, 1.0);
        int64_t np[2] = {D, n_side * n_side + 1};
        add(&g, "v.position_embd.weight", LP_TYPE_F32, 2, np, INIT_NORMAL, 0.5);
    }
    char nm[96];
    for (int l = 0; l < sh->v_layer; l++) {
        add_vit_block(&g, sh, t, l, false);
        for (int n = 1; n <= 2; n++) { /* layer scales: InternViT initialises them at 0.1 */
            snprintf(nm, sizeof nm, "v.blk.%d.ls%d.weight", l, n);
            add_vec(&g, nm, D, INIT_NORM);
        }
        if (qk_norm) {
            static const char *qk[2] = {"attn_q_norm", "attn_k_norm"};
            for (int i = 0; i < 2; i++) { /* weights only, as InternViT-6B's RMSNorms */
                snprintf(nm, sizeof nm, "v.blk.%d.%s.weight", l, qk[i]);
                add_vec(&g, nm, D, INIT_NORM);
            }
        }
    }
    add_vec(&g, "mm.model.mlp.0.weight", 4 * D, INIT_NORM);
    add_vec(&g, "mm.model.mlp.0.bias", 4 * D, INIT_BIAS);
    add_mat(&g, "mm.model.mlp.1.weight", t, 4 * D, E, 1.0);
    add_vec(&g, "mm.model.mlp.1.bias", E, INIT_BIAS);
    /* gain 0.3: image rows of O(1), like a real projector's (whose outputs match the
     * LM's small token embeddings); gain 1 gives O(3) rows whose f16-GELU-table
     * rounding flips alone reach the 1e-3 parity bound */
    add_mat(&g, "mm.model.mlp.3.weight", t, E, E, 0.3);
    add_vec(&g, "mm.model.mlp.3.bias", E, INIT_BIAS);
    write_file(&g, path);
}

/* Qwen2.5-VL: the vision tower with two temporal patch kernels, RMSNorm,
 * SwiGLU, window attention (n_wa_pattern) and the 2×2 merger. */
static void gen_qwen_mmproj(const vl_shape *sh, lp_type t, const char *path, const char *name) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    vit_common_keys(&g, sh, "qwen2.5vl_merger", t, name, mean, stdv, 1e-6f);
    check(lp_gguf_writer_set_bool(w, "clip.use_silu", true), "kv");
    check(lp_gguf_writer_set_u32(w, "clip.vision.n_wa_pattern", (uint32_t)sh->n_wa_pattern), "kv");
    const int64_t D = sh->v_embd, E = sh->n_embd;
    add_patch_kernel(&g, sh, t, "v.patch_embd.weight");
    add_patch_kernel(&g, sh, t, "v.patch_embd.weight.1");
    for (int l = 0; l < sh->v_layer; l++) add_vit_block(&g, sh, t, l, true);
    add_vec(&g, "v.post_ln.weight", D, INIT_NORM);
    add_mat(&g, "mm.0.weight", t, 4 * D, 4 * D, 1.0);
    add_vec(&g, "mm.0.bias", 4 * D, INIT_BIAS);
    add_mat(&g, "mm.2.weight", t, 4 * D, E, 0.3); /* O(1) image rows, as for InternVL above */
    add_vec(&g, "mm.2.bias", E, INIT_BIAS);
    write_file(&g, path);
}

/* PREFIX.gguf and PREFIX-mmproj.gguf (malloc'd; 0 when out of memory). */
static int pair_paths(const char *out, char **p_llm, char **p_mm) {
    size_t n = strlen(out) + 16;
    *p_llm = malloc(n);
    *p_mm = malloc(n);
    if (!*p_llm || !*p_mm) return 0;
    snprintf(*p_llm, n, "%s.gguf", out);
    snprintf(*p_mm, n, "%s-mmproj.gguf", out);
    return 1;
}

/* Stream 1 (the language model) or 2 (the mmproj) of a seed: either file
 * can be regenerated alone. */
static void reseed(unsigned long long seed, int stream) {
    g_rng = (uint64_t)seed * 0x100000001B3ull + (uint64_t)stream;
    g_have_spare = 0;
}

static int gen_vl(const char *family, const char *shape_name, lp_type t, unsigned long long seed, const char *out,
                  int qk_norm) {
    const vl_shape *sh = NULL;
    for (size_t i = 0; i < sizeof VL_SHAPES / sizeof VL_SHAPES[0]; i++)
        if (!strcmp(VL_SHAPES[i].family, family) && !strcmp(VL_SHAPES[i].name, shape_name)) sh = &VL_SHAPES[i];
    if (!sh) {
        fprintf(stderr, "gen_model: no shape '%s' for --family %s\n", shape_name, family);
        return 2;
    }
    char *p_llm, *p_mm, name[160];
    if (!pair_paths(out, &p_llm, &p_mm)) return 1;
    reseed(seed, 1);
    snprintf(name, sizeof name, "loupe-random-%s-%s-%s-seed%llu", family, sh->name, lp_type_name(t), seed);
    gen_qwen_llm(sh, t, p_llm, name);
    reseed(seed, 2);
    snprintf(name, sizeof name, "loupe-random-%s-%s-mmproj-%s-seed%llu%s", family, sh->name, lp_type_name(t), seed,
             qk_norm ? "-qknorm" : "");
    if (!strcmp(family, "internvl")) gen_internvl_mmproj(sh, t, p_mm, name, qk_norm);
    else gen_qwen_mmproj(sh, t, p_mm, name);
    free(p_llm);
    free(p_mm);
    return 0;
}

/* ---------------------------------------------------------------- main */


/* ---------------------------------------------------------------- OpenELM */

/* Apple's OpenELM configs (configuration_openelm.py): layer-wise scaling.
 * Layer l of L gets qkv multiplier q_l and FFN multiplier f_l, linearly
 * spaced and rounded to 2 decimals; query width = make_divisible(D * q_l,
 * head_dim * gqa), heads = width / head_dim, kv heads = heads / gqa, FFN
 * width = make_divisible(D * f_l, ffn_divisor). (270M: heads 12..20, kv
 * 3..5, FFN 768..5120, as its config.json lists.) */
typedef struct elm_shape {
    const char *name;
    int n_layer, n_embd, head_dim, gqa, ffn_div, n_vocab, n_ctx;
    double q_min, q_max, f_min, f_max;
    const char *vision; /* the llava shape whose tower the mmproj gets */
} elm_shape;

static const elm_shape ELM_SHAPES[] = {
    {"tiny", 3, 24, 8, 2, 16, 270, 512, 0.5, 1.0, 0.5, 2.0, "tiny"},
    {"openelm-270m", 16, 1280, 64, 4, 256, 32000, 2048, 0.5, 1.0, 0.5, 4.0, "llava-7b"},
    {"openelm-450m", 20, 1536, 64, 4, 256, 32000, 2048, 0.5, 1.0, 0.5, 4.0, "llava-7b"},
    {"openelm-1.1b", 28, 2048, 64, 4, 256, 32000, 2048, 0.5, 1.0, 0.5, 4.0, "llava-7b"},
    {"openelm-3b", 36, 3072, 128, 4, 256, 32000, 2048, 0.5, 1.0, 0.5, 4.0, "llava-7b"},
};

static int make_divisible(double v, int div) {
    int n = (int)(v + div / 2.0) / div * div;
    if (n < div) n = div;
    if (n < 0.9 * v) n += div;
    return n;
}

static double linspace_round2(double a, double b, int i, int n) {
    double x = n > 1 ? a + (b - a) * i / (n - 1) : a;
    return round(x * 100.0) / 100.0;
}

static void elm_layer_dims(const elm_shape *sh, int l, int *h, int *hkv, int *ff) {
    int qd = make_divisible(sh->n_embd * linspace_round2(sh->q_min, sh->q_max, l, sh->n_layer), sh->head_dim * sh->gqa);
    *h = qd / sh->head_dim;
    *hkv = *h / sh->gqa;
    *ff = make_divisible(sh->n_embd * linspace_round2(sh->f_min, sh->f_max, l, sh->n_layer), sh->ffn_div);
}

/* The decoder as llama.cpp's convert_hf_to_gguf.py (conversion/openelm.py)
 * writes it: per-layer arrays for heads, kv heads and FFN widths, fused
 * attn_qkv, per-head q/k norms, proj_1 split into ffn_gate/ffn_up, no
 * output.weight (tied), RMS eps 1e-6. */
static void gen_openelm_llm(const elm_shape *sh, lp_type t, const char *path, const char *name) {
    gen g = {lp_gguf_writer_new(), {0}, path};
    lp_gguf_writer *w = g.w;
    const int L = sh->n_layer;
    const int64_t E = sh->n_embd, hd = sh->head_dim;
    int32_t heads[64], kvh[64], ffs[64];
    for (int l = 0; l < L; l++) elm_layer_dims(sh, l, &heads[l], &kvh[l], &ffs[l]);
    check(lp_gguf_writer_set_str(w, "general.architecture", "openelm"), "kv");
    check(lp_gguf_writer_set_str(w, "general.name", name), "kv");
    check(lp_gguf_writer_set_u32(w, "general.file_type", ftype_of(t)), "kv");
    lp_gguf_writer_set_alignment(w, 32);
    check(lp_gguf_writer_set_u32(w, "openelm.block_count", (uint32_t)L), "kv");
    check(lp_gguf_writer_set_u32(w, "openelm.context_length", (uint32_t)sh->n_ctx), "kv");
    check(lp_gguf_writer_set_u32(w, "openelm.embedding_length", (uint32_t)E), "kv");
    check(lp_gguf_writer_set_arr(w, "openelm.feed_forward_length", LP_GGUF_INT32, ffs, (uint64_t)L), "kv");
    check(lp_gguf_writer_set_arr(w, "openelm.attention.head_count", LP_GGUF_INT32, heads, (uint64_t)L), "kv");
    check(lp_gguf_writer_set_arr(w, "openelm.attention.head_count_kv", LP_GGUF_INT32, kvh, (uint64_t)L), "kv");
    check(lp_gguf_writer_set_f32(w, "openelm.rope.freq_base", 10000.0f), "kv");
    check(lp_gguf_writer_set_f32(w, "openelm.attention.layer_norm_rms_epsilon", 1e-6f), "kv");
    check(lp_gguf_writer_set_u32(w, "openelm.rope.dimension_count", (uint32_t)hd), "kv");
    check(lp_gguf_writer_set_u32(w, "openelm.attention.key_length", (uint32_t)hd), "kv");
    check(lp_gguf_writer_set_u32(w, "openelm.attention.value_length", (uint32_t)hd), "kv");
    write_spm_vocab(w, sh->n_vocab, 0);
    {   /* small rows: with a tied head, unit-variance ones make every random
         * model predict its input token back (a greedy answer of one repeated
         * token tests little); the blocks' outputs dominate instead */
        int64_t ne[2] = {E, sh->n_vocab};
        add(&g, "token_embd.weight", pick_type(t, E, path, "token_embd.weight"), 2, ne, INIT_NORMAL, 0.2);
    }
    char nm[96];
    for (int l = 0; l < L; l++) {
        const int64_t qd = heads[l] * hd, kd = kvh[l] * hd, F = ffs[l];
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        add_vec(&g, nm, E, INIT_NORM);
        snprintf(nm, sizeof nm, "blk.%d.attn_qkv.weight", l);
        add_mat(&g, nm, t, E, qd + 2 * kd, 1.0);
        snprintf(nm, sizeof nm, "blk.%d.attn_q_norm.weight", l);
        add_vec(&g, nm, hd, INIT_NORM);
        snprintf(nm, sizeof nm, "blk.%d.attn_k_norm.weight", l);
        add_vec(&g, nm, hd, INIT_NORM);
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", l);
        add_mat(&g, nm, t, qd, E, 0.5);
        add_ffn_block(&g, l, E, F, t);
    }
    add_vec(&g, "output_norm.weight", E, INIT_NORM);
    for (int l = 0; l < L; l++) fprintf(stderr, "%s%d/%d/%d", l ? " " : "gen_model: layers (heads/kv/ffn) ", heads[l], kvh[l], ffs[l]);
    fprintf(stderr, "\n");
    write_file(&g, path);
}

static int gen_openelm(const char *shape_name, lp_type t, unsigned long long seed, const char *out, int ldpv2, int ldp) {
    const elm_shape *sh = NULL;
    for (size_t i = 0; i < sizeof ELM_SHAPES / sizeof ELM_SHAPES[0]; i++)
        if (!strcmp(ELM_SHAPES[i].name, shape_name)) sh = &ELM_SHAPES[i];
    if (!sh) {
        fprintf(stderr, "gen_model: no shape '%s' for --family openelm\n", shape_name);
        return 2;
    }
    char *p_llm, *p_mm, name[128];
    if (!pair_paths(out, &p_llm, &p_mm)) return 1;
    reseed(seed, 1);
    snprintf(name, sizeof name, "loupe-random-openelm-%s-%s-seed%llu", sh->name, lp_type_name(t), seed);
    gen_openelm_llm(sh, t, p_llm, name);
    /* a LLaVA-style (or MobileVLM ldp/ldpv2) mmproj whose projector ends at the OpenELM width */
    shape vs = SHAPES[0];
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!strcmp(SHAPES[i].name, sh->vision)) vs = SHAPES[i];
    vs.n_embd = sh->n_embd;
    if (!strcmp(sh->name, "tiny")) { /* a smaller tower than llava's tiny: the fixture stays small */
        vs.v_embd = 32, vs.v_ff = 32, vs.v_head = 2, vs.n_vit_gen = 2;
    }
    reseed(seed, 2);
    snprintf(name, sizeof name, "loupe-random-openelm-%s-mmproj-%s-seed%llu", sh->name, lp_type_name(t), seed);
    gen_mmproj(&vs, t, p_mm, name, 0, ldpv2, ldp);
    free(p_llm);
    free(p_mm);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: gen_model --family llava --shape tiny|llava-7b|mobilevlm-1.7b|mobilevlm-3b --type f32|f16|q8_0|q4_0|q4_K "
                    "--seed S --out PREFIX [--region-sampler]\n"
                    "       gen_model --family internvl --shape tiny|internvl3-1b [--qk-norm] ...\n"
                    "       gen_model --family qwen25vl --shape tiny|qwen2.5-vl-3b ...\n"
                    "       gen_model --family openelm --shape tiny|openelm-270m|openelm-450m|openelm-1.1b|openelm-3b"
                    " [--ldp|--ldpv2] ...\n"
                    "writes PREFIX.gguf (llama decoder) and PREFIX-mmproj.gguf (CLIP ViT + mlp projector)\n"
                    "--ldpv2 / --ldp: MobileVLM V2's / MobileVLM's projector instead of the mlp\n"
                    "--region-sampler: also a random Ferret region sampler (mm.region.*) in the mmproj and a\n"
                    "<region_fea> token (the vocabulary's last id) in the model\n"
                    "--set NAME=VALUE (repeatable) overrides one dimension of the shape, for any shape:\n"
                    "  image_size patch_size v_embd v_ff v_head v_layers n_embd n_layer n_head n_head_kv n_ff\n"
                    "  n_ctx n_vocab   (v_layers = CLIP layers generated; the file keeps v_layers - 1)\n");
}

/* --set NAME=VALUE: one field of the shape. Returns 0 on success. */
static int shape_set(shape *sh, const char *kv) {
    static const struct { const char *name; size_t off; } F[] = {
        {"image_size", offsetof(shape, image_size)}, {"patch_size", offsetof(shape, patch_size)},
        {"v_embd", offsetof(shape, v_embd)},         {"v_ff", offsetof(shape, v_ff)},
        {"v_head", offsetof(shape, v_head)},         {"v_layers", offsetof(shape, n_vit_gen)},
        {"n_embd", offsetof(shape, n_embd)},         {"n_layer", offsetof(shape, n_layer)},
        {"n_head", offsetof(shape, n_head)},         {"n_head_kv", offsetof(shape, n_head_kv)},
        {"n_ff", offsetof(shape, n_ff)},             {"n_ctx", offsetof(shape, n_ctx)},
        {"n_vocab", offsetof(shape, n_vocab)},
    };
    const char *eq = strchr(kv, '=');
    if (!eq) return -1;
    char *end;
    long v = strtol(eq + 1, &end, 10);
    if (*end || v <= 0 || v > (1L << 24)) return -1;
    for (size_t i = 0; i < sizeof F / sizeof F[0]; i++) {
        if (strlen(F[i].name) == (size_t)(eq - kv) && !strncmp(F[i].name, kv, (size_t)(eq - kv))) {
            *(int *)((char *)sh + F[i].off) = (int)v;
            return 0;
        }
    }
    return -1;
}

/* The constraints llama.cpp and loupe put on a shape. */
static const char *shape_check(const shape *sh) {
    if (sh->v_embd % sh->v_head) return "v_embd must be a multiple of v_head";
    if (sh->n_embd % sh->n_head) return "n_embd must be a multiple of n_head";
    if (sh->n_head % sh->n_head_kv) return "n_head must be a multiple of n_head_kv";
    if ((sh->n_embd / sh->n_head) % 2) return "n_embd / n_head must be even (RoPE)";
    if (sh->n_vit_gen < 2) return "v_layers must be at least 2 (the converter drops the last)";
    if (sh->patch_size > sh->image_size) return "patch_size must not exceed image_size";
    if (sh->n_vocab < 300) return "n_vocab must be at least 300 (control + 256 byte tokens + pieces)";
    return NULL;
}

int main(int argc, char **argv) {
    const char *family = "llava", *shape_name = "tiny", *type_name = "f32", *out = NULL;
    unsigned long long seed = 1;
    int region = 0, qk_norm = 0, ldpv2 = 0, ldp = 0;
    const char *sets[32];
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!strcmp(a, "--region-sampler")) {
            region = 1;
            continue;
        }
        if (!strcmp(a, "--qk-norm")) {
            qk_norm = 1;
            continue;
        }
        if (!strcmp(a, "--ldpv2")) {
            ldpv2 = 1;
            continue;
        }
        if (!strcmp(a, "--ldp")) {
            ldp = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--family")) family = v;
        else if (!strcmp(a, "--shape")) shape_name = v;
        else if (!strcmp(a, "--type")) type_name = v;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--set") && n_sets < 32) sets[n_sets++] = v;
        else {
            usage();
            return 2;
        }
    }
    if (!out) {
        usage();
        return 2;
    }
    if (!strcmp(family, "openelm")) {
        int ti = lp_type_from_name(type_name);
        if (ti != LP_TYPE_F32 && ti != LP_TYPE_F16 && ti != LP_TYPE_Q8_0 && ti != LP_TYPE_Q4_0 && ti != LP_TYPE_Q4_K) {
            usage();
            return 2;
        }
        return gen_openelm(shape_name, (lp_type)ti, seed, out, ldpv2, ldp);
    }
    if (!strcmp(family, "internvl") || !strcmp(family, "qwen25vl")) {
        int ti = lp_type_from_name(type_name);
        if (ti != LP_TYPE_F32 && ti != LP_TYPE_F16 && ti != LP_TYPE_Q8_0 && ti != LP_TYPE_Q4_0 && ti != LP_TYPE_Q4_K) {
            usage();
            return 2;
        }
        return gen_vl(family, shape_name, (lp_type)ti, seed, out, qk_norm);
    }
    if (strcmp(family, "llava") != 0) {
        usage();
        return 2;
    }
    const shape *base = NULL;
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!strcmp(SHAPES[i].name, shape_name)) base = &SHAPES[i];
    if (!base) {
        usage();
        return 2;
    }
    shape custom = *base;
    const shape *sh = &custom;
    for (int i = 0; i < n_sets; i++) {
        if (shape_set(&custom, sets[i])) {
            fprintf(stderr, "gen_model: bad --set '%s'\n", sets[i]);
            return 2;
        }
    }
    const char *why = shape_check(sh);
    if (why) {
        fprintf(stderr, "gen_model: bad shape: %s\n", why);
        return 2;
    }
    int ti = lp_type_from_name(type_name);
    if (!sh || ti < 0 ||
        (ti != LP_TYPE_F32 && ti != LP_TYPE_F16 && ti != LP_TYPE_Q8_0 && ti != LP_TYPE_Q4_0 && ti != LP_TYPE_Q4_K)) {
        usage();
        return 2;
    }
    lp_type t = (lp_type)ti;

    char *p_llm, *p_mm, name[128];
    if (!pair_paths(out, &p_llm, &p_mm)) return 1;

    /* two independent streams so either file can be regenerated alone */
    reseed(seed, 1);
    snprintf(name, sizeof name, "loupe-random-llava-%s-%s-seed%llu%s", sh->name, lp_type_name(t), seed,
             region ? "-region" : "");
    gen_llm(sh, t, p_llm, name, region);
    reseed(seed, 2);
    snprintf(name, sizeof name, "loupe-random-llava-%s-mmproj-%s-seed%llu%s", sh->name, lp_type_name(t), seed,
             region ? "-region" : "");
    gen_mmproj(sh, t, p_mm, name, region, ldpv2, ldp);
    free(p_llm);
    free(p_mm);
    return 0;
}
