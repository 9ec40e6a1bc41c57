/* language/tokenizer_impl.h — what tokenizer.c, bpe.c and spm.c share.
 * Not part of the interface; include language/tokenizer.h instead. */
#ifndef LP_TOKENIZER_IMPL_H
#define LP_TOKENIZER_IMPL_H

#include "tokenizer.h"

/* Pre-tokenizers of byte-level BPE (the regex llama.cpp uses for each
 * tokenizer.ggml.pre value, implemented by hand in bpe.c). */
typedef enum lp_pretok {
    LP_PRETOK_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    LP_PRETOK_QWEN2,  /* (?i:'s|..)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    LP_PRETOK_LLAMA3  /* as QWEN2 with \p{N}{1,3} */
} lp_pretok;

/* One slot of the merge table: the pair (left id, right id) packed as
 * left << 32 | right, its rank (position in tokenizer.ggml.merges) and the
 * id of the merged token. */
typedef struct lp_merge_slot {
    uint64_t key;
    int32_t rank;  /* -1: empty slot */
    int32_t result;
} lp_merge_slot;

struct lp_tokenizer {
    lp_tokenizer_kind kind;
    lp_pretok pre;
    int32_t n_vocab;

    /* token texts, concatenated; text of id i is blob[off[i] .. off[i]+len[i]) */
    char *blob;
    uint64_t *off;
    uint32_t *len;
    uint8_t *type;   /* lp_token_type */
    float *score;

    /* decoded pieces (see lp_token_to_piece), same layout */
    char *pblob;
    uint64_t *poff;
    uint32_t *plen;

    /* text -> id: open addressing, capacity ht_mask + 1, -1 = empty */
    int32_t *ht;
    uint64_t ht_mask;

    /* (left, right) -> rank, result: open addressing */
    lp_merge_slot *mt;
    uint64_t mt_mask;

    /* special tokens matched before tokenization, sorted by first byte, then
     * by length (longest first); sp_start[b] .. sp_start[b+1] is the run
     * whose text starts with byte b */
    int32_t *sp;
    uint32_t sp_start[257];

    /* BPE: the token of the byte-level character of each byte.
     * SPM: the byte-fallback token of each byte. -1 if none. */
    int32_t byte_tok[256];

    int32_t bos, eos, unk, pad;
    bool add_bos, add_eos, add_space_prefix;
};

/* A growable id list. */
typedef struct lp_ids {
    int32_t *v;
    size_t n, cap;
} lp_ids;

loupe_status lp_ids_push(lp_ids *ids, int32_t id);

/* Look up a text in the vocabulary; -1 if absent. */
int32_t lp_tok_lookup(const lp_tokenizer *t, const char *s, size_t n);
/* Rank and result of merging (left, right); false if not a merge. */
bool lp_tok_merge(const lp_tokenizer *t, int32_t left, int32_t right, int32_t *rank, int32_t *result);

/* A binary min-heap of candidate merges, ordered by (pri, left). */
typedef struct lp_cand {
    double pri;       /* BPE: rank; SPM: -score */
    int32_t left, right;
    int32_t a, b;     /* BPE: the two ids; SPM: a = byte size of the merge */
} lp_cand;

typedef struct lp_heap {
    lp_cand *v;
    size_t n, cap;
} lp_heap;

loupe_status lp_heap_push(lp_heap *h, lp_cand c);
lp_cand lp_heap_pop(lp_heap *h); /* h->n must be > 0 */

/* Tokenize one text fragment (no special tokens in it), appending to out. */
loupe_status lp_bpe_encode(const lp_tokenizer *t, const uint8_t *s, size_t n, lp_ids *out, lp_error *err);
loupe_status lp_spm_encode(const lp_tokenizer *t, const uint8_t *s, size_t n, lp_ids *out, lp_error *err);

/* The pre-tokenizer alone (for tests): stores the end offset of each word
 * of s[0..n) in ends[0..max) and returns the word count ((size_t)-1 when
 * out of memory). */
size_t lp_bpe_split(lp_pretok pre, const uint8_t *s, size_t n, size_t *ends, size_t max);

/* GPT-2 byte <-> code point mapping. */
uint32_t lp_bpe_byte_to_cp(uint8_t b);
int lp_bpe_cp_to_byte(uint32_t cp); /* -1 if cp is not in the mapping */

#endif
