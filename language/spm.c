/* language/spm.c — SentencePiece-style tokenization as llama.cpp does it for
 * tokenizer.ggml.model = "llama": merge adjacent symbols while their
 * concatenation is a vocabulary token, best score first. */
#include "tokenizer_impl.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* A symbol is a byte range of the escaped text; merged symbols stay
 * contiguous, so the text of a candidate pair is simply s[l.start ..
 * r.start + r.n). A merged-away symbol has n == 0. */
typedef struct sym {
    size_t start, n;
    int32_t prev, next;
} sym;

static loupe_status add_cand(const lp_tokenizer *t, const uint8_t *s, const sym *sy, int32_t l, int32_t r,
                             lp_heap *h) {
    if (l < 0 || r < 0) return LOUPE_OK;
    size_t len = sy[l].n + sy[r].n;
    int32_t id = lp_tok_lookup(t, (const char *)s + sy[l].start, len);
    if (id < 0) return LOUPE_OK;
    /* higher score first; the heap pops the smallest pri */
    lp_cand c = {.pri = -(double)t->score[id], .left = l, .right = r, .a = (int32_t)len, .b = id};
    return lp_heap_push(h, c);
}

/* Emit the ids of one final symbol: the token it spells, or, for a
 * character no token covers, one byte-fallback token per byte. */
static loupe_status emit(const lp_tokenizer *t, const uint8_t *s, const sym *y, lp_ids *out, lp_error *err) {
    loupe_status st;
    int32_t id = lp_tok_lookup(t, (const char *)s + y->start, y->n);
    if (id >= 0) return lp_ids_push(out, id);
    for (size_t k = 0; k < y->n; k++) {
        uint8_t b = s[y->start + k];
        id = t->byte_tok[b] >= 0 ? t->byte_tok[b] : t->unk;
        if (id < 0)
            return lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                           "tokenizer: byte 0x%02X has no token (no <0x%02X>, no unknown token)", b, b);
        if ((st = lp_ids_push(out, id))) return st;
    }
    return LOUPE_OK;
}

loupe_status lp_spm_encode(const lp_tokenizer *t, const uint8_t *text, size_t len, lp_ids *out, lp_error *err) {
    /* The fragment as SentencePiece sees it: optional leading space (the
     * caller decides), and every ' ' replaced by U+2581 (3 bytes). */
    loupe_status st = LOUPE_OK;
    size_t nsp = 0;
    for (size_t i = 0; i < len; i++) nsp += text[i] == ' ';
    size_t n = len + 2 * nsp;
    if (n == 0) return LOUPE_OK;
    uint8_t *s = malloc(n);
    sym *sy = malloc(n * sizeof *sy);
    lp_heap h = {0};
    if (!s || !sy) {
        st = LOUPE_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0, o = 0; i < len; i++) {
        if (text[i] == ' ') {
            s[o++] = 0xE2; s[o++] = 0x96; s[o++] = 0x81;
        } else {
            s[o++] = text[i];
        }
    }
    /* one symbol per UTF-8 character (an invalid byte is a symbol alone) */
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = lp_utf8_decode(s + i, n - i, &cp);
        sy[ns].start = i;
        sy[ns].n = k;
        sy[ns].prev = ns - 1;
        sy[ns].next = i + k < n ? ns + 1 : -1;
        ns++;
        i += k;
    }
    for (int32_t i = 1; i < ns; i++)
        if ((st = add_cand(t, s, sy, i - 1, i, &h))) goto done;
    while (h.n) {
        lp_cand c = lp_heap_pop(&h);
        sym *l = &sy[c.left], *r = &sy[c.right];
        /* stale when either side changed since the candidate was queued */
        if (l->n == 0 || r->n == 0 || l->n + r->n != (size_t)c.a) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sy[r->next].prev = c.left;
        if ((st = add_cand(t, s, sy, l->prev, c.left, &h))) goto done;
        if ((st = add_cand(t, s, sy, c.left, l->next, &h))) goto done;
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next)
        if ((st = emit(t, s, &sy[i], out, err))) goto done;
done:
    if (st == LOUPE_ERR_NOMEM) lp_fail(err, st, "tokenizer: out of memory for %zu bytes of text", len);
    free(s);
    free(sy);
    free(h.v);
    return st;
}
