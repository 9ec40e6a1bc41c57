/* language/tokenizer.h — text <-> token ids, with the vocabularies and
 * semantics llama.cpp reads from GGUF metadata.
 *
 * Two models, chosen by the string key tokenizer.ggml.model:
 *   "gpt2"   byte-level BPE (GPT-2, Qwen2/3, LLaMA 3 ...). Every input byte is
 *            first mapped to a printable code point (the GPT-2 byte-to-unicode
 *            table, so 0x20 ' ' becomes U+0120 'Ġ'); the text is split into
 *            words by a pre-tokenizer (tokenizer.ggml.pre), and within each
 *            word adjacent symbols are merged by rank, lowest rank first, as
 *            listed in tokenizer.ggml.merges.
 *   "llama"  SentencePiece (LLaMA 1/2, Mistral ...). Spaces become U+2581
 *            '▁', a space is prepended (add_space_prefix), and adjacent
 *            symbols are merged while their concatenation is a token, highest
 *            tokenizer.ggml.scores first. A character that no token covers is
 *            emitted as byte tokens "<0xXX>" (byte fallback).
 *
 * GGUF keys read (llama.cpp names; arrays are indexed by token id):
 *   tokenizer.ggml.model            str, required: "gpt2" or "llama"
 *   tokenizer.ggml.tokens           [str], required: token texts
 *   tokenizer.ggml.token_type       [int], optional: 1 normal, 2 unknown,
 *                                   3 control, 4 user-defined, 5 unused, 6 byte
 *   tokenizer.ggml.scores           [f32], optional (SentencePiece merge order)
 *   tokenizer.ggml.merges           [str], required for "gpt2": "left right"
 *   tokenizer.ggml.pre              str, optional ("gpt2" only): "default" /
 *                                   "gpt-2" (GPT-2 regex), "qwen2", "llama-bpe";
 *                                   others are refused (LOUPE_ERR_UNSUPPORTED).
 *                                   Note: for "default" llama.cpp runs three
 *                                   extra splits (punctuation runs, digit runs,
 *                                   3-digit groups) before the GPT-2 regex;
 *                                   here "default" is the GPT-2 regex alone.
 *   tokenizer.ggml.bos_token_id, .eos_token_id, .unknown_token_id,
 *   .padding_token_id               u32, optional
 *   tokenizer.ggml.add_bos_token, .add_eos_token, .add_space_prefix
 *                                   bool, optional (defaults as llama.cpp)
 *
 * Special tokens: tokens of type control, user-defined or unknown are
 * matched in the text before normal tokenization (longest match at each
 * position, scanning left to right), so "<|im_start|>" becomes one id.
 * With parse_special off, control and unknown tokens are ordinary text;
 * user-defined tokens are still matched, as in llama.cpp and HF tokenizers
 * (they are added words such as "<think>", not markup).
 *
 * A loaded tokenizer is immutable: every call below may run concurrently on
 * the same object. Nothing here prints or exits. */
#ifndef LP_TOKENIZER_H
#define LP_TOKENIZER_H

#include "../core/error.h"
#include "../core/gguf.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lp_tokenizer lp_tokenizer;

/* Token types, the numbers stored in tokenizer.ggml.token_type. */
typedef enum lp_token_type {
    LP_TOKEN_UNDEFINED = 0,
    LP_TOKEN_NORMAL = 1,
    LP_TOKEN_UNKNOWN = 2,
    LP_TOKEN_CONTROL = 3,
    LP_TOKEN_USER_DEFINED = 4,
    LP_TOKEN_UNUSED = 5,
    LP_TOKEN_BYTE = 6
} lp_token_type;

typedef enum lp_tokenizer_kind {
    LP_TOKENIZER_BPE = 1, /* "gpt2"  */
    LP_TOKENIZER_SPM = 2  /* "llama" */
} lp_tokenizer_kind;

/* Build a tokenizer from the metadata of g (which may be closed afterwards:
 * everything is copied). NULL on error; err names the file and the key. */
lp_tokenizer *lp_tokenizer_load(const lp_gguf *g, lp_error *err);
void lp_tokenizer_free(lp_tokenizer *t);

/* Tokenize text[0..len) (any bytes; need not be NUL-terminated or valid
 * UTF-8). add_bos prepends the BOS token (an error if the vocabulary has
 * none); lp_tokenizer_add_bos() says whether the model expects it.
 *
 * Returns the number of tokens the text needs, like snprintf: when it is
 * larger than max, only the first max ids were stored and the caller should
 * retry with a larger buffer. out may be NULL when max is 0. Returns a
 * negative value (-status) on error, with err filled. */
int lp_tokenize(const lp_tokenizer *t, const char *text, size_t len, bool add_bos,
                bool parse_special, int32_t *out, int max, lp_error *err);

/* The bytes a token stands for in decoded text: byte-level BPE tokens are
 * mapped back to raw bytes, '▁' becomes ' ', "<0xXX>" becomes the byte.
 * Control and unknown tokens give their text only when `special` is true
 * (nothing otherwise); unused tokens give nothing. A piece may be an
 * incomplete UTF-8 sequence — use the streaming decoder for text.
 * Returns the piece length and copies min(length, size) bytes to buf (no
 * NUL is added), or -1 for an id out of range. */
int32_t lp_token_to_piece(const lp_tokenizer *t, int32_t id, bool special, char *buf, int32_t size);

int32_t lp_tokenizer_n_vocab(const lp_tokenizer *t);
int32_t lp_tokenizer_bos(const lp_tokenizer *t);   /* -1 if none */
int32_t lp_tokenizer_eos(const lp_tokenizer *t);   /* -1 if none */
int32_t lp_tokenizer_unk(const lp_tokenizer *t);   /* -1 if none */
int32_t lp_tokenizer_pad(const lp_tokenizer *t);   /* -1 if none */
bool lp_tokenizer_add_bos(const lp_tokenizer *t);  /* tokenizer.ggml.add_bos_token */
bool lp_tokenizer_add_eos(const lp_tokenizer *t);  /* tokenizer.ggml.add_eos_token */
lp_tokenizer_kind lp_tokenizer_get_kind(const lp_tokenizer *t);
/* The id whose vocabulary text is exactly `text` (e.g. "<image>",
 * "<|im_start|>"), or -1. */
int32_t lp_tokenizer_find(const lp_tokenizer *t, const char *text);
/* A token's raw vocabulary text and type; NULL / UNDEFINED when out of range. */
const char *lp_tokenizer_token_text(const lp_tokenizer *t, int32_t id, size_t *len);
lp_token_type lp_tokenizer_token_type(const lp_tokenizer *t, int32_t id);
/* True for control tokens (and EOS) that end generation. */
bool lp_tokenizer_is_eog(const lp_tokenizer *t, int32_t id);

/* ---- streaming decoder ----
 * Turns ids, one at a time, into text that is always valid UTF-8: bytes of a
 * character split across tokens (byte fallback, or a byte-level token that
 * ends mid-character) are held back until the character is complete; a
 * sequence that can no longer become valid is replaced by U+FFFD, and so is a
 * partial one still held by lp_detok_finish. For SentencePiece vocabularies
 * with add_space_prefix, the leading space of the first piece is dropped
 * (the space tokenization prepended), as the HF Metaspace decoder does. A
 * leading BOS (or any token that renders as nothing) does not count as the
 * first piece. (llama.cpp's llama_detokenize strips only when the first id
 * is not a BOS it was asked to remove, which leaves " Hello" after
 * "<s>"; we follow HF so that decode(encode(s)) == s.)
 *
 *   lp_detok d;  lp_detok_init(&d, tok, false);
 *   for each id: lp_detok_push(&d, id, &s, &n, err) -> write s[0..n)
 *   lp_detok_finish(&d, &s, &n, err) -> write s[0..n);  lp_detok_free(&d);
 *
 * The text returned by a call stays valid until the next call. */
typedef struct lp_detok {
    const lp_tokenizer *tok;
    bool special;      /* render control tokens as their text */
    bool strip_space;  /* drop the leading ' ' of the next non-empty piece */
    uint8_t pend[4];   /* incomplete UTF-8 sequence carried over */
    size_t npend;
    char *buf;         /* output of the last call */
    size_t cap;
} lp_detok;

void lp_detok_init(lp_detok *d, const lp_tokenizer *t, bool special);
loupe_status lp_detok_push(lp_detok *d, int32_t id, const char **text, size_t *len, lp_error *err);
loupe_status lp_detok_finish(lp_detok *d, const char **text, size_t *len, lp_error *err);
void lp_detok_free(lp_detok *d);

/* Whole-sequence convenience on top of the streaming decoder: *out is a
 * malloc'd NUL-terminated string (free with free()), *out_len its length. */
loupe_status lp_detokenize(const lp_tokenizer *t, const int32_t *ids, size_t n, bool special,
                           char **out, size_t *out_len, lp_error *err);

#endif
