/* fusion/prompt.c — prompt segments and the image-embedding splice. */
#include "prompt.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Tokenize one piece into a fresh array (size known only after a first call,
 * as lp_tokenize works like snprintf). */
static loupe_status tokenize_piece(const lp_tokenizer *tok, const char *s, size_t n, bool add_bos, int32_t **out,
                                   int *n_out, lp_error *err) {
    *out = NULL;
    *n_out = 0;
    int need = lp_tokenize(tok, s, n, add_bos, true, NULL, 0, err);
    if (need < 0) return (loupe_status)-need;
    if (need == 0) return LOUPE_OK;
    int32_t *ids = malloc((size_t)need * sizeof *ids);
    if (!ids) return lp_fail(err, LOUPE_ERR_NOMEM, "tokenizing the prompt: out of memory");
    int got = lp_tokenize(tok, s, n, add_bos, true, ids, need, err);
    if (got < 0 || got != need) {
        free(ids);
        return got < 0 ? (loupe_status)-got : lp_fail(err, LOUPE_ERR_INTERNAL, "tokenizer gave %d then %d tokens", need, got);
    }
    *out = ids;
    *n_out = need;
    return LOUPE_OK;
}

static loupe_status add_tokens(lp_prompt *p, int32_t *ids, int n) {
    lp_segment *s = &p->seg[p->n_seg++];
    s->kind = LP_SEGMENT_TOKENS;
    s->tokens = ids;
    s->n_pos = n;
    p->n_text += n;
    return LOUPE_OK;
}

loupe_status lp_prompt_build(lp_prompt *p, const lp_tokenizer *tok, const char *text, size_t len, size_t image_at,
                             size_t marker_len, int n_image, lp_error *err) {
    memset(p, 0, sizeof *p);
    if (!tok || !text || image_at > len || marker_len > len - image_at || n_image < 0)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_prompt_build: bad arguments");
    const bool bos = lp_tokenizer_add_bos(tok);
    int32_t *ids;
    int n;
    loupe_status st;

    /* Before the image. Tokenized even when empty if BOS must lead. */
    if (image_at > 0 || bos) {
        if ((st = tokenize_piece(tok, text, image_at, bos, &ids, &n, err))) return st;
        if (n > 0) add_tokens(p, ids, n);
    }
    if (n_image > 0) {
        lp_segment *s = &p->seg[p->n_seg++];
        s->kind = LP_SEGMENT_IMAGE;
        s->n_pos = n_image;
        p->n_image = n_image;
    }
    /* After the image: never a second BOS. */
    const size_t rest = image_at + marker_len;
    if (rest < len) {
        if ((st = tokenize_piece(tok, text + rest, len - rest, false, &ids, &n, err))) return st;
        if (n > 0) add_tokens(p, ids, n);
    }
    if ((int64_t)p->n_text + p->n_image > INT_MAX)
        return lp_fail(err, LOUPE_ERR_LIMIT, "prompt too long (%d text tokens)", p->n_text);
    p->n_pos = p->n_text + p->n_image;
    return LOUPE_OK;
}

void lp_prompt_free(lp_prompt *p) {
    if (!p) return;
    for (int i = 0; i < p->n_seg; i++) free(p->seg[i].tokens);
    memset(p, 0, sizeof *p);
}

loupe_status lp_prompt_check_ctx(const lp_prompt *p, int n_ctx, lp_error *err) {
    if (p->n_pos > n_ctx)
        return lp_fail(err, LOUPE_ERR_LIMIT, "prompt needs %d positions (text %d + image %d) but the context holds %d",
                       p->n_pos, p->n_text, p->n_image, n_ctx);
    return LOUPE_OK;
}

loupe_status lp_prompt_embed(const lp_prompt *p, const lp_llama *m, const float *image_embd, float *out,
                             lp_error *err) {
    const size_t E = (size_t)lp_llama_n_embd(m);
    size_t row = 0;
    for (int i = 0; i < p->n_seg; i++) {
        const lp_segment *s = &p->seg[i];
        if (s->kind == LP_SEGMENT_TOKENS) {
            loupe_status st = lp_llama_embed(m, s->tokens, s->n_pos, out + row * E, err);
            if (st) return st;
        } else {
            if (!image_embd) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "prompt has an image but no image embeddings");
            memcpy(out + row * E, image_embd, (size_t)s->n_pos * E * sizeof *out);
        }
        row += (size_t)s->n_pos;
    }
    return LOUPE_OK;
}

int lp_prompt_count_token(const lp_prompt *p, int32_t id) {
    int n = 0;
    for (int i = 0; i < p->n_seg; i++) {
        const lp_segment *s = &p->seg[i];
        if (s->kind != LP_SEGMENT_TOKENS) continue;
        for (int j = 0; j < s->n_pos; j++) n += s->tokens[j] == id;
    }
    return n;
}

loupe_status lp_prompt_splice_marker(const lp_prompt *p, int32_t marker_id, const float *extra, int n_extra, int n_embd,
                                     float *out, lp_error *err) {
    // out (n_pos, n_embd), extra (n_extra, n_embd)
    if (!p || !out || n_embd <= 0 || n_extra < 0 || (n_extra > 0 && !extra))
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_prompt_splice_marker: bad arguments");
    const int have = lp_prompt_count_token(p, marker_id);
    if (have != n_extra)
        return lp_fail(err, LOUPE_ERR_MISMATCH, "prompt has %d marker tokens (id %d) but %d embeddings were given", have,
                       (int)marker_id, n_extra);
    const size_t E = (size_t)n_embd;
    size_t row = 0;
    int k = 0;
    for (int i = 0; i < p->n_seg; i++) {
        const lp_segment *s = &p->seg[i];
        for (int j = 0; j < s->n_pos; j++, row++)
            if (s->kind == LP_SEGMENT_TOKENS && s->tokens[j] == marker_id)
                memcpy(out + row * E, extra + (size_t)k++ * E, E * sizeof *out);
    }
    return LOUPE_OK;
}
