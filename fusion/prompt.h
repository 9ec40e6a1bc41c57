/* fusion/prompt.h — from rendered chat text to the decoder's input embeddings.
 *
 * The rendered text (fusion/template.h) holds one image marker at a known
 * offset. It is cut there; each text piece is tokenized on its own, with
 * special tokens parsed ("<|im_start|>" is one id) and BOS only before the
 * first piece when the tokenizer asks for it. This is what LLaVA's
 * tokenizer_image_token and llama.cpp's mtmd do, so a SentencePiece
 * tokenizer puts its "▁" space prefix at the start of every piece, the one
 * after the image included. The image marker becomes n_image positions whose
 * embeddings are the projector's output rows, copied in as they are.
 *
 *   segments: [tokens: BOS + "A chat ... USER: "] [image: n_image rows]
 *             [tokens: "\nWhat is it? ASSISTANT:"]
 *   positions = text tokens + image rows; each segment takes its rows in
 *   order, at consecutive positions. */
#ifndef LP_PROMPT_H
#define LP_PROMPT_H

#include "../core/error.h"
#include "../language/decoder.h"
#include "../language/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

typedef enum lp_segment_kind {
    LP_SEGMENT_TOKENS = 0,
    LP_SEGMENT_IMAGE = 1
} lp_segment_kind;

typedef struct lp_segment {
    lp_segment_kind kind;
    int n_pos;        /* positions: tokens, or image rows */
    int32_t *tokens;  /* LP_SEGMENT_TOKENS: n_pos ids (owned) */
} lp_segment;

#define LP_PROMPT_MAX_SEGMENTS 3 /* text, image, text */

typedef struct lp_prompt {
    lp_segment seg[LP_PROMPT_MAX_SEGMENTS];
    int n_seg;
    int n_text;   /* positions taken by tokens */
    int n_image;  /* positions taken by image rows */
    int n_pos;    /* n_text + n_image */
} lp_prompt;

/* Cut text[0..len) at image_at (the marker is marker_len bytes there and is
 * dropped), tokenize both sides and put n_image image positions between
 * them. A text piece that is empty is left out (except that BOS, when the
 * tokenizer adds it, always comes first). *p is zeroed first; free with
 * lp_prompt_free also on error. */
loupe_status lp_prompt_build(lp_prompt *p, const lp_tokenizer *tok, const char *text, size_t len, size_t image_at,
                             size_t marker_len, int n_image, lp_error *err);
void lp_prompt_free(lp_prompt *p);

/* LOUPE_ERR_LIMIT "prompt needs N positions (text T + image I) but the
 * context holds C" when p->n_pos > n_ctx. */
loupe_status lp_prompt_check_ctx(const lp_prompt *p, int n_ctx, lp_error *err);

/* The decoder input: out (n_pos, n_embd) — token rows from the embedding
 * table (lp_llama_embed), image rows copied from image_embd (n_image,
 * n_embd). */
loupe_status lp_prompt_embed(const lp_prompt *p, const lp_llama *m, const float *image_embd, float *out,
                             lp_error *err);

/* How many times token `id` occurs in the prompt's token segments (e.g. the
 * `<region_fea>` marker; see fusion/region_sampler.h). */
int lp_prompt_count_token(const lp_prompt *p, int32_t id);

/* Ferret's region splice: after lp_prompt_embed, overwrite the rows of out
 * (n_pos, n_embd) that hold token `marker_id` with the rows of extra
 * (n_extra, n_embd), the i-th marker (in prompt order) getting row i.
 * LOUPE_ERR_MISMATCH "prompt has M <marker> tokens but N embeddings were
 * given" when the counts differ; nothing is written then. */
loupe_status lp_prompt_splice_marker(const lp_prompt *p, int32_t marker_id, const float *extra, int n_extra, int n_embd,
                                     float *out, lp_error *err);

#endif
