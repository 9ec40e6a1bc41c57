/* language/bpe.c — byte-level BPE: the GPT-2 byte mapping, the
 * pre-tokenizers (hand-written equivalents of the split regexes) and
 * rank-ordered merging within a word. */
#include "tokenizer_impl.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2's bytes_to_unicode(): the 188 bytes that are printable Latin-1
 * ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) map to themselves; the other 68
 * (controls, space, DEL, NBSP, soft hyphen ...) map in increasing order to
 * U+0100, U+0101, ... so that every byte has a visible, non-space stand-in
 * and a token text never contains a real space. */
static bool byte_is_self(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t lp_bpe_byte_to_cp(uint8_t b) {
    if (byte_is_self(b)) return b;
    uint32_t k = 0; /* rank of b among the non-printable bytes */
    for (unsigned i = 0; i < b; i++) k += !byte_is_self(i);
    return 256 + k;
}

int lp_bpe_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_self(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t k = cp - 256;
    for (unsigned i = 0; i < 256; i++) {
        if (!byte_is_self(i)) {
            if (k == 0) return (int)i;
            k--;
        }
    }
    return -1;
}

/* ---- pre-tokenizer ----
 * The text is decoded into units (one code point, or one invalid byte), and
 * the split regex is evaluated by hand at each unit: the alternatives are
 * tried in order and the first that matches gives the word, exactly as a
 * backtracking regex engine would. Invalid bytes count as "other" (neither
 * letter, number nor space), so arbitrary bytes still form words. */
typedef struct unit {
    uint32_t cp;
    uint32_t off;  /* byte offset in the fragment */
    uint8_t cls;   /* LP_UCLASS_* */
    uint8_t space; /* White_Space */
} unit;

static bool is_l(const unit *u, size_t n, size_t i) { return i < n && u[i].cls == LP_UCLASS_LETTER; }
static bool is_n(const unit *u, size_t n, size_t i) { return i < n && u[i].cls == LP_UCLASS_NUMBER; }
static bool is_s(const unit *u, size_t n, size_t i) { return i < n && u[i].space; }
static bool is_nl(const unit *u, size_t n, size_t i) { return i < n && (u[i].cp == '\r' || u[i].cp == '\n'); }
static bool is_other(const unit *u, size_t n, size_t i) {
    return i < n && !u[i].space && u[i].cls == LP_UCLASS_OTHER;
}

static uint32_t fold(uint32_t c, bool ci) {
    return (ci && c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d, optionally ASCII case-insensitive. Returns the
 * match length in units or 0. */
static size_t match_contraction(const unit *u, size_t n, size_t i, bool ci) {
    if (u[i].cp != '\'' || i + 1 >= n) return 0;
    uint32_t a = fold(u[i + 1].cp, ci);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= n) return 0;
    uint32_t b = fold(u[i + 2].cp, ci);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* End (exclusive) of the word starting at unit i. */
static size_t gpt2_match(const unit *u, size_t n, size_t i) {
    size_t j, k = match_contraction(u, n, i, false);
    if (k) return i + k;
    /* ' ?\p{L}+' */
    j = i + (u[i].cp == ' ');
    if (is_l(u, n, j)) {
        while (is_l(u, n, j)) j++;
        return j;
    }
    /* ' ?\p{N}+' */
    j = i + (u[i].cp == ' ');
    if (is_n(u, n, j)) {
        while (is_n(u, n, j)) j++;
        return j;
    }
    /* ' ?[^\s\p{L}\p{N}]+' */
    j = i + (u[i].cp == ' ');
    if (is_other(u, n, j)) {
        while (is_other(u, n, j)) j++;
        return j;
    }
    /* '\s+(?!\S)' then '\s+': a run of spaces keeps its last space for the
     * next word unless the run ends the text */
    j = i;
    while (is_s(u, n, j)) j++;
    if (j == n || j - i < 2) return j > i ? j : i + 1;
    return j - 1;
}

static size_t qwen2_match(const unit *u, size_t n, size_t i, int max_digits) {
    size_t j, k = match_contraction(u, n, i, true);
    if (k) return i + k;
    /* '[^\r\n\p{L}\p{N}]?\p{L}+': any one non-newline, non-letter,
     * non-number character may lead a letter run */
    j = i;
    if (!is_l(u, n, j) && !is_nl(u, n, j) && !is_n(u, n, j)) j++;
    if (is_l(u, n, j)) {
        while (is_l(u, n, j)) j++;
        return j;
    }
    /* '\p{N}' (qwen2) or '\p{N}{1,3}' (llama3) */
    if (is_n(u, n, i)) {
        j = i + 1;
        while ((int)(j - i) < max_digits && is_n(u, n, j)) j++;
        return j;
    }
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    j = i + (u[i].cp == ' ');
    if (is_other(u, n, j)) {
        while (is_other(u, n, j)) j++;
        while (is_nl(u, n, j)) j++;
        return j;
    }
    /* '\s*[\r\n]+': greedy \s* backs off to the last newline of the run */
    if (is_s(u, n, i)) {
        size_t last = n;
        for (j = i; is_s(u, n, j); j++)
            if (is_nl(u, n, j)) last = j;
        if (last != n) return last + 1;
        /* '\s+(?!\S)' then '\s+' */
        if (j == n || j - i < 2) return j;
        return j - 1;
    }
    return i + 1; /* not reached: every unit is letter, number, space or other */
}

/* ---- merging within one word ----
 * Symbols start as one per byte (each byte's stand-in character is a token
 * in any byte-level vocabulary); the candidate pair of lowest rank, leftmost
 * on ties, is merged until no adjacent pair is a listed merge. A candidate
 * is stale when either side has since been merged into something else,
 * which the stored ids detect. */
typedef struct sym {
    int32_t id;        /* token id, or -1 for a byte without a token */
    int32_t prev, next;
    bool dead;
} sym;

static loupe_status add_cand(const lp_tokenizer *t, const sym *sy, int32_t l, int32_t r, lp_heap *h) {
    int32_t rank, res;
    if (l < 0 || r < 0 || sy[l].id < 0 || sy[r].id < 0) return LOUPE_OK;
    if (!lp_tok_merge(t, sy[l].id, sy[r].id, &rank, &res)) return LOUPE_OK;
    (void)res;
    lp_cand c = {.pri = rank, .left = l, .right = r, .a = sy[l].id, .b = sy[r].id};
    return lp_heap_push(h, c);
}

static loupe_status encode_word(const lp_tokenizer *t, const uint8_t *s, size_t n, sym *sy, lp_heap *h,
                                lp_ids *out) {
    loupe_status st;
    h->n = 0;
    for (size_t i = 0; i < n; i++) {
        sy[i].id = t->byte_tok[s[i]];
        sy[i].prev = (int32_t)i - 1;
        sy[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
        sy[i].dead = false;
    }
    for (size_t i = 1; i < n; i++)
        if ((st = add_cand(t, sy, (int32_t)i - 1, (int32_t)i, h))) return st;
    while (h->n) {
        lp_cand c = lp_heap_pop(h);
        sym *l = &sy[c.left], *r = &sy[c.right];
        if (l->dead || r->dead || l->next != c.right || l->id != c.a || r->id != c.b) continue;
        int32_t rank, res;
        lp_tok_merge(t, c.a, c.b, &rank, &res);
        l->id = res;
        r->dead = true;
        l->next = r->next;
        if (r->next >= 0) sy[r->next].prev = c.left;
        if ((st = add_cand(t, sy, l->prev, c.left, h))) return st;
        if ((st = add_cand(t, sy, c.left, l->next, h))) return st;
    }
    for (int32_t i = 0; i >= 0; i = sy[i].next) {
        if (sy[i].id >= 0) {
            if ((st = lp_ids_push(out, sy[i].id))) return st;
        } else if (t->unk >= 0) {
            /* a byte whose stand-in is not in the vocabulary (only in
             * incomplete vocabularies): llama.cpp drops it; we keep a trace */
            if ((st = lp_ids_push(out, t->unk))) return st;
        }
    }
    return LOUPE_OK;
}

/* Decode s into units; NULL when out of memory. */
static unit *decode_units(const uint8_t *s, size_t n, size_t *nu_out) {
    unit *u = malloc((n ? n : 1) * sizeof *u);
    if (!u) return NULL;
    size_t nu = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = lp_utf8_decode(s + i, n - i, &cp);
        u[nu].cp = cp;
        u[nu].off = (uint32_t)i;
        u[nu].cls = (uint8_t)lp_ucp_class(cp);
        u[nu].space = cp != LP_UCP_INVALID && lp_ucp_is_space(cp);
        nu++;
        i += k;
    }
    *nu_out = nu;
    return u;
}

static size_t next_word(lp_pretok pre, const unit *u, size_t nu, size_t i) {
    return pre == LP_PRETOK_GPT2 ? gpt2_match(u, nu, i) : qwen2_match(u, nu, i, pre == LP_PRETOK_LLAMA3 ? 3 : 1);
}

size_t lp_bpe_split(lp_pretok pre, const uint8_t *s, size_t n, size_t *ends, size_t max) {
    size_t nu, count = 0;
    unit *u = decode_units(s, n, &nu);
    if (!u) return (size_t)-1;
    for (size_t i = 0; i < nu;) {
        size_t j = next_word(pre, u, nu, i);
        if (count < max) ends[count] = j < nu ? u[j].off : n;
        count++;
        i = j;
    }
    free(u);
    return count;
}

loupe_status lp_bpe_encode(const lp_tokenizer *t, const uint8_t *s, size_t n, lp_ids *out, lp_error *err) {
    if (n == 0) return LOUPE_OK;
    loupe_status st = LOUPE_OK;
    size_t nu = 0;
    unit *u = decode_units(s, n, &nu);
    sym *sy = malloc(n * sizeof *sy);
    lp_heap h = {0};
    if (!u || !sy) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "tokenizer: out of memory for %zu bytes of text", n);
        goto done;
    }
    for (size_t i = 0; i < nu;) {
        size_t j = next_word(t->pre, u, nu, i);
        size_t b0 = u[i].off, b1 = j < nu ? u[j].off : n;
        if ((st = encode_word(t, s + b0, b1 - b0, sy, &h, out))) {
            if (st == LOUPE_ERR_NOMEM) lp_fail(err, st, "tokenizer: out of memory");
            goto done;
        }
        i = j;
    }
done:
    free(u);
    free(sy);
    free(h.v);
    return st;
}
