/* language/tokenizer.c — loading a vocabulary from GGUF metadata, special
 * token splitting, the public tokenize call, and decoding. The two models'
 * merge loops live in bpe.c and spm.c. */
#include "tokenizer_impl.h"
#include "unicode.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_MERGES "tokenizer.ggml.merges"

/* ---- small containers ---- */

loupe_status lp_ids_push(lp_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return LOUPE_ERR_NOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return LOUPE_OK;
}

static bool cand_less(const lp_cand *a, const lp_cand *b) {
    return a->pri < b->pri || (a->pri == b->pri && a->left < b->left);
}

loupe_status lp_heap_push(lp_heap *h, lp_cand c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        lp_cand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return LOUPE_ERR_NOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return LOUPE_OK;
}

lp_cand lp_heap_pop(lp_heap *h) {
    lp_cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && cand_less(&h->v[c + 1], &h->v[c])) c++;
        if (!cand_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* FNV-1a, then a final mix so that the low bits used as the slot index
 * depend on every input byte. */
static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    return h * 0xbf58476d1ce4e5b9ull;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static uint64_t table_size(uint64_t n) {
    uint64_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
}

int32_t lp_tok_lookup(const lp_tokenizer *t, const char *s, size_t n) {
    for (uint64_t i = hash_bytes(s, n) & t->ht_mask;; i = (i + 1) & t->ht_mask) {
        int32_t id = t->ht[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->blob + t->off[id], s, n) == 0) return id;
    }
}

bool lp_tok_merge(const lp_tokenizer *t, int32_t left, int32_t right, int32_t *rank, int32_t *result) {
    if (!t->mt) return false;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint64_t i = hash_u64(key) & t->mt_mask;; i = (i + 1) & t->mt_mask) {
        const lp_merge_slot *m = &t->mt[i];
        if (m->rank < 0) return false;
        if (m->key == key) {
            *rank = m->rank;
            *result = m->result;
            return true;
        }
    }
}

/* ---- loading ---- */

static const char *gname(const lp_gguf *g) { return g->path ? g->path : "(gguf)"; }


/* An optional token id key: absent -> *id unchanged; present -> must be a
 * valid id. */
static loupe_status opt_id(const lp_gguf *g, const char *key, int32_t n_vocab, int32_t *id, lp_error *err) {
    if (!lp_gguf_get(g, key)) return LOUPE_OK;
    int64_t v;
    loupe_status st = lp_gguf_get_i64(g, key, &v, err);
    if (st) return st;
    /* llama.cpp writes -1 (as u32 0xFFFFFFFF) for "none" in some converters */
    if (v == -1 || v == 0xFFFFFFFFll) {
        *id = -1;
        return LOUPE_OK;
    }
    if (v < 0 || v >= n_vocab)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: token id %lld out of range (vocabulary has %d tokens)",
                       gname(g), key, (long long)v, n_vocab);
    *id = (int32_t)v;
    return LOUPE_OK;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const lp_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint8_t fx = (uint8_t)t->blob[t->off[x]], fy = (uint8_t)t->blob[t->off[y]];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (t->len[x] != t->len[y]) return t->len[x] > t->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Parse "<0xXX>" -> XX, or -1. */
static int parse_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Precompute each token's decoded piece (see lp_token_to_piece). */
static loupe_status build_pieces(lp_tokenizer *t) {
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) total += t->len[i];
    /* decoding never grows a piece: BPE maps 1-2 byte characters to 1 byte,
     * SPM maps 3-byte '▁' to 1 byte, raw copies keep the length */
    t->pblob = malloc(total ? total : 1);
    t->poff = malloc((size_t)t->n_vocab * sizeof *t->poff);
    t->plen = malloc((size_t)t->n_vocab * sizeof *t->plen);
    if (!t->pblob || !t->poff || !t->plen) return LOUPE_ERR_NOMEM;
    uint64_t o = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const uint8_t *s = (const uint8_t *)t->blob + t->off[i];
        size_t n = t->len[i];
        uint8_t *d = (uint8_t *)t->pblob + o;
        size_t m = 0;
        int ty = t->type[i];
        int byte = parse_byte_token((const char *)s, n);
        if (ty == LP_TOKEN_BYTE && byte >= 0) {
            d[m++] = (uint8_t)byte;
        } else if (ty == LP_TOKEN_NORMAL && t->kind == LP_TOKENIZER_BPE) {
            for (size_t k = 0; k < n;) {
                uint32_t cp;
                size_t q = lp_utf8_decode(s + k, n - k, &cp);
                int b = cp == LP_UCP_INVALID ? -1 : lp_bpe_cp_to_byte(cp);
                if (b >= 0) {
                    d[m++] = (uint8_t)b;
                } else { /* not a byte stand-in: keep the character as is */
                    memcpy(d + m, s + k, q);
                    m += q;
                }
                k += q;
            }
        } else if (ty == LP_TOKEN_NORMAL) { /* SPM: '▁' -> ' ' */
            for (size_t k = 0; k < n;) {
                if (k + 3 <= n && s[k] == 0xE2 && s[k + 1] == 0x96 && s[k + 2] == 0x81) {
                    d[m++] = ' ';
                    k += 3;
                } else {
                    d[m++] = s[k++];
                }
            }
        } else { /* control, user-defined, unknown ...: the text itself */
            memcpy(d, s, n);
            m = n;
        }
        t->poff[i] = o;
        t->plen[i] = (uint32_t)m;
        o += m;
    }
    return LOUPE_OK;
}

static loupe_status load_merges(lp_tokenizer *t, const lp_gguf *g, lp_error *err) {
    const lp_gguf_value *v;
    loupe_status st = lp_gguf_get_arr(g, KEY_MERGES, LP_GGUF_STRING, &v, err);
    if (st) return st;
    uint64_t n = v->v.arr.n;
    if (n > INT32_MAX)
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: %s: %llu merges is too many", gname(g), KEY_MERGES,
                       (unsigned long long)n);
    t->mt_mask = table_size(n) - 1;
    t->mt = malloc((t->mt_mask + 1) * sizeof *t->mt);
    if (!t->mt) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: %s: out of memory", gname(g), KEY_MERGES);
    for (uint64_t i = 0; i <= t->mt_mask; i++) t->mt[i].rank = -1;
    for (uint64_t r = 0; r < n; r++) {
        const char *s = v->v.arr.strs[r].s;
        size_t len = v->v.arr.strs[r].len;
        /* "left right": split at the first space after the first byte (a
         * byte-level token never contains a space, but a left side could in
         * principle be the space character itself) */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s[%llu]: \"%.*s\" is not \"left right\"", gname(g),
                           KEY_MERGES, (unsigned long long)r, (int)(len > 64 ? 64 : len), s);
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        int32_t a = lp_tok_lookup(t, s, nl), b = lp_tok_lookup(t, sp + 1, nr);
        char *cat = malloc(len ? len : 1);
        if (!cat) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: %s: out of memory", gname(g), KEY_MERGES);
        memcpy(cat, s, nl);
        memcpy(cat + nl, sp + 1, nr);
        int32_t c = lp_tok_lookup(t, cat, nl + nr);
        free(cat);
        if (a < 0 || b < 0 || c < 0) {
            const char *what = a < 0 ? "left side" : b < 0 ? "right side" : "merged result";
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s[%llu]: \"%.*s\": %s is not a token in %s", gname(g),
                           KEY_MERGES, (unsigned long long)r, (int)(len > 64 ? 64 : len), s, what, KEY_TOKENS);
        }
        uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        for (uint64_t i = hash_u64(key) & t->mt_mask;; i = (i + 1) & t->mt_mask) {
            if (t->mt[i].rank < 0) {
                t->mt[i].key = key;
                t->mt[i].rank = (int32_t)r;
                t->mt[i].result = c;
                break;
            }
            if (t->mt[i].key == key) break; /* duplicate pair: the first (lowest) rank wins */
        }
    }
    return LOUPE_OK;
}

lp_tokenizer *lp_tokenizer_load(const lp_gguf *g, lp_error *err) {
    if (!g) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "tokenizer: no GGUF given");
        return NULL;
    }
    const char *model = NULL, *pre = NULL;
    const lp_gguf_value *tokv = NULL, *typv = NULL, *scov = NULL;
    loupe_status st;
    lp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for the tokenizer", gname(g));
        return NULL;
    }
    if ((st = lp_gguf_get_str(g, KEY_MODEL, &model, err))) goto fail;
    if (strcmp(model, "gpt2") == 0) {
        t->kind = LP_TOKENIZER_BPE;
    } else if (strcmp(model, "llama") == 0) {
        t->kind = LP_TOKENIZER_SPM;
    } else {
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: %s: tokenizer \"%s\" is not supported (only \"gpt2\", \"llama\")",
                     gname(g), KEY_MODEL, model);
        goto fail;
    }

    if ((st = lp_gguf_get_arr(g, KEY_TOKENS, LP_GGUF_STRING, &tokv, err))) goto fail;
    uint64_t n = tokv->v.arr.n;
    if (n == 0 || n > INT32_MAX) {
        st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: %llu tokens (need 1 .. %d)", gname(g), KEY_TOKENS,
                     (unsigned long long)n, INT32_MAX);
        goto fail;
    }
    t->n_vocab = (int32_t)n;

    typv = lp_gguf_get(g, KEY_TYPES);
    if (typv) {
        bool ok = typv->type == LP_GGUF_ARRAY;
        int64_t probe;
        if (ok && typv->v.arr.n > 0) ok = lp_gguf_arr_int(typv, 0, &probe);
        if (!ok) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: expected an array of integers", gname(g), KEY_TYPES);
            goto fail;
        }
        if (typv->v.arr.n != n) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: %llu entries but %s has %llu", gname(g), KEY_TYPES,
                         (unsigned long long)typv->v.arr.n, KEY_TOKENS, (unsigned long long)n);
            goto fail;
        }
    }
    if (lp_gguf_get(g, KEY_SCORES)) {
        if ((st = lp_gguf_get_arr(g, KEY_SCORES, LP_GGUF_FLOAT32, &scov, err))) goto fail;
        if (scov->v.arr.n != n) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: %llu entries but %s has %llu", gname(g), KEY_SCORES,
                         (unsigned long long)scov->v.arr.n, KEY_TOKENS, (unsigned long long)n);
            goto fail;
        }
    }

    /* copy texts, types, scores */
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (tokv->v.arr.strs[i].len > UINT32_MAX / 2) {
            st = lp_fail(err, LOUPE_ERR_LIMIT, "%s: %s[%llu]: token text too long", gname(g), KEY_TOKENS,
                         (unsigned long long)i);
            goto fail;
        }
        total += tokv->v.arr.strs[i].len;
    }
    t->blob = malloc(total ? total : 1);
    t->off = malloc(n * sizeof *t->off);
    t->len = malloc(n * sizeof *t->len);
    t->type = malloc(n);
    t->score = calloc(n, sizeof *t->score);
    t->ht_mask = table_size(n) - 1;
    t->ht = malloc((t->ht_mask + 1) * sizeof *t->ht);
    if (!t->blob || !t->off || !t->len || !t->type || !t->score || !t->ht) goto nomem;
    memset(t->ht, 0xFF, (t->ht_mask + 1) * sizeof *t->ht);
    uint64_t o = 0;
    for (uint64_t i = 0; i < n; i++) {
        const lp_gguf_str *s = &tokv->v.arr.strs[i];
        memcpy(t->blob + o, s->s, s->len);
        t->off[i] = o;
        t->len[i] = (uint32_t)s->len;
        o += s->len;
        int64_t ty = LP_TOKEN_NORMAL;
        if (typv) lp_gguf_arr_int(typv, i, &ty);
        t->type[i] = (uint8_t)(ty >= 0 && ty <= LP_TOKEN_BYTE ? ty : LP_TOKEN_UNDEFINED);
        if (scov) t->score[i] = ((const float *)scov->v.arr.data)[i];
        /* text -> id; on duplicate texts the later id wins, as in llama.cpp */
        for (uint64_t h = hash_bytes(s->s, s->len) & t->ht_mask;; h = (h + 1) & t->ht_mask) {
            int32_t id = t->ht[h];
            if (id < 0 || (t->len[id] == s->len && memcmp(t->blob + t->off[id], s->s, s->len) == 0)) {
                t->ht[h] = (int32_t)i;
                break;
            }
        }
    }

    /* special ids and flags; defaults follow llama.cpp */
    t->bos = t->eos = t->unk = t->pad = -1;
    if (t->kind == LP_TOKENIZER_SPM) {
        t->bos = n > 1 ? 1 : -1;
        t->eos = n > 2 ? 2 : -1;
        t->unk = 0;
        t->add_bos = true;
        t->add_space_prefix = true;
    }
    if ((st = opt_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err))) goto fail;
    if ((st = opt_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err))) goto fail;
    if ((st = opt_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err))) goto fail;
    if ((st = opt_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err))) goto fail;
    if ((st = lp_gguf_get_bool_opt(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err))) goto fail;
    if ((st = lp_gguf_get_bool_opt(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err))) goto fail;
    if ((st = lp_gguf_get_bool_opt(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err))) goto fail;

    /* model specifics */
    for (int b = 0; b < 256; b++) t->byte_tok[b] = -1;
    if (t->kind == LP_TOKENIZER_BPE) {
        if ((st = lp_gguf_get_str_opt(g, KEY_PRE, &pre, err))) goto fail;
        if (!pre || !strcmp(pre, "default") || !strcmp(pre, "gpt-2") || !strcmp(pre, "gpt2")) {
            t->pre = LP_PRETOK_GPT2;
        } else if (!strcmp(pre, "qwen2")) {
            t->pre = LP_PRETOK_QWEN2;
        } else if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3")) {
            t->pre = LP_PRETOK_LLAMA3;
        } else {
            st = lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                         "%s: %s: pre-tokenizer \"%s\" is not supported (default, gpt-2, qwen2, llama-bpe)", gname(g),
                         KEY_PRE, pre);
            goto fail;
        }
        for (int b = 0; b < 256; b++) {
            uint8_t u[4];
            size_t k = lp_utf8_encode(lp_bpe_byte_to_cp((uint8_t)b), u);
            t->byte_tok[b] = lp_tok_lookup(t, (const char *)u, k);
        }
        if ((st = load_merges(t, g, err))) goto fail;
    } else {
        for (int32_t i = 0; i < t->n_vocab; i++) {
            int b = parse_byte_token(t->blob + t->off[i], t->len[i]);
            if (b >= 0 && (t->type[i] == LP_TOKEN_BYTE || t->byte_tok[b] < 0)) t->byte_tok[b] = i;
        }
        for (int b = 0; b < 256; b++) { /* no "<0xXX>": a one-byte token, as llama.cpp falls back to */
            char c = (char)b;
            if (t->byte_tok[b] < 0) t->byte_tok[b] = lp_tok_lookup(t, &c, 1);
        }
    }

    /* special tokens */
    size_t nsp = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int ty = t->type[i];
        nsp += t->len[i] > 0 && (ty == LP_TOKEN_CONTROL || ty == LP_TOKEN_USER_DEFINED || ty == LP_TOKEN_UNKNOWN);
    }
    t->sp = malloc((nsp ? nsp : 1) * sizeof *t->sp);
    if (!t->sp) goto nomem;
    nsp = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int ty = t->type[i];
        if (t->len[i] > 0 && (ty == LP_TOKEN_CONTROL || ty == LP_TOKEN_USER_DEFINED || ty == LP_TOKEN_UNKNOWN))
            t->sp[nsp++] = i;
    }
    qsort_r(t->sp, nsp, sizeof *t->sp, cmp_special, t);
    for (int b = 0, k = 0; b <= 256; b++) {
        while ((size_t)k < nsp && (uint8_t)t->blob[t->off[t->sp[k]]] < b) k++;
        t->sp_start[b] = (uint32_t)k;
    }
    t->sp_start[256] = (uint32_t)nsp;

    if (build_pieces(t)) goto nomem;
    return t;

nomem:
    lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory for the tokenizer", gname(g));
fail:
    lp_tokenizer_free(t);
    return NULL;
}

void lp_tokenizer_free(lp_tokenizer *t) {
    if (!t) return;
    free(t->blob);
    free(t->off);
    free(t->len);
    free(t->type);
    free(t->score);
    free(t->pblob);
    free(t->poff);
    free(t->plen);
    free(t->ht);
    free(t->mt);
    free(t->sp);
    free(t);
}

/* ---- tokenize ---- */

static loupe_status encode_fragment(const lp_tokenizer *t, const uint8_t *s, size_t n, bool prev_special,
                                    lp_ids *out, lp_error *err) {
    if (t->kind == LP_TOKENIZER_BPE) return lp_bpe_encode(t, s, n, out, err);
    /* SentencePiece: llama.cpp prepends the space to every text fragment
     * that starts the input or follows a special token */
    if (t->add_space_prefix && prev_special) {
        uint8_t *tmp = malloc(n + 1);
        if (!tmp) return lp_fail(err, LOUPE_ERR_NOMEM, "tokenizer: out of memory");
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        loupe_status st = lp_spm_encode(t, tmp, n + 1, out, err);
        free(tmp);
        return st;
    }
    return lp_spm_encode(t, s, n, out, err);
}

int lp_tokenize(const lp_tokenizer *t, const char *text, size_t len, bool add_bos, bool parse_special,
                int32_t *out, int max, lp_error *err) {
    if (!t || (!text && len) || max < 0 || (!out && max > 0))
        return -(int)lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_tokenize: invalid arguments");
    if (len > INT32_MAX)
        return -(int)lp_fail(err, LOUPE_ERR_LIMIT, "lp_tokenize: text of %zu bytes is too long", len);
    lp_ids ids = {0};
    loupe_status st = LOUPE_OK;
    const uint8_t *s = (const uint8_t *)text;
    if (add_bos) {
        if (t->bos < 0) {
            st = lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_tokenize: BOS requested but the vocabulary has none");
            goto done;
        }
        if ((st = lp_ids_push(&ids, t->bos))) goto nomem;
    }
    /* Partition on special tokens: at each byte, the longest special token
     * that starts there (control/unknown ones only with parse_special) ends
     * the current text fragment. */
    bool prev_special = true;
    size_t frag = 0;
    for (size_t i = 0; i < len;) {
        int32_t hit = -1;
        for (uint32_t k = t->sp_start[s[i]]; k < t->sp_start[s[i] + 1]; k++) {
            int32_t id = t->sp[k];
            if (!parse_special && t->type[id] != LP_TOKEN_USER_DEFINED) continue;
            if (t->len[id] <= len - i && memcmp(s + i, t->blob + t->off[id], t->len[id]) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        if (i > frag) {
            if ((st = encode_fragment(t, s + frag, i - frag, prev_special, &ids, err))) goto done;
        }
        if ((st = lp_ids_push(&ids, hit))) goto nomem;
        prev_special = true;
        i += t->len[hit];
        frag = i;
        continue;
    }
    if (len > frag) {
        if ((st = encode_fragment(t, s + frag, len - frag, prev_special, &ids, err))) goto done;
    }
    if (ids.n > INT_MAX) {
        st = lp_fail(err, LOUPE_ERR_LIMIT, "lp_tokenize: more than %d tokens", INT_MAX);
        goto done;
    }
    if (out && ids.n) memcpy(out, ids.v, ((size_t)max < ids.n ? (size_t)max : ids.n) * sizeof *out);
    int count = (int)ids.n;
    free(ids.v);
    return count;
nomem:
    st = lp_fail(err, LOUPE_ERR_NOMEM, "lp_tokenize: out of memory");
done:
    free(ids.v);
    return -(int)st;
}

/* ---- accessors ---- */

int32_t lp_tokenizer_n_vocab(const lp_tokenizer *t) { return t->n_vocab; }
int32_t lp_tokenizer_bos(const lp_tokenizer *t) { return t->bos; }
int32_t lp_tokenizer_eos(const lp_tokenizer *t) { return t->eos; }
int32_t lp_tokenizer_unk(const lp_tokenizer *t) { return t->unk; }
int32_t lp_tokenizer_pad(const lp_tokenizer *t) { return t->pad; }
bool lp_tokenizer_add_bos(const lp_tokenizer *t) { return t->add_bos; }
bool lp_tokenizer_add_eos(const lp_tokenizer *t) { return t->add_eos; }
lp_tokenizer_kind lp_tokenizer_get_kind(const lp_tokenizer *t) { return t->kind; }

int32_t lp_tokenizer_find(const lp_tokenizer *t, const char *text) {
    return text ? lp_tok_lookup(t, text, strlen(text)) : -1;
}

const char *lp_tokenizer_token_text(const lp_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->len[id];
    return t->blob + t->off[id];
}

lp_token_type lp_tokenizer_token_type(const lp_tokenizer *t, int32_t id) {
    return id < 0 || id >= t->n_vocab ? LP_TOKEN_UNDEFINED : (lp_token_type)t->type[id];
}

bool lp_tokenizer_is_eog(const lp_tokenizer *t, int32_t id) {
    static const char *const eog[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>",
                                      "<|end|>",    "<end_of_turn>", "</s>"};
    if (id < 0 || id >= t->n_vocab) return false;
    if (id == t->eos) return true;
    if (t->type[id] != LP_TOKEN_CONTROL) return false;
    for (size_t k = 0; k < sizeof eog / sizeof eog[0]; k++)
        if (t->len[id] == strlen(eog[k]) && memcmp(t->blob + t->off[id], eog[k], t->len[id]) == 0) return true;
    return false;
}

/* ---- decoding ---- */

/* The piece of id as rendered: NULL length 0 for tokens that render as
 * nothing (control/unknown without `special`, unused). */
static const char *piece(const lp_tokenizer *t, int32_t id, bool special, size_t *n) {
    int ty = t->type[id];
    bool hidden = ty == LP_TOKEN_UNUSED ||
                  (!special && (ty == LP_TOKEN_CONTROL || ty == LP_TOKEN_UNKNOWN || ty == LP_TOKEN_UNDEFINED));
    *n = hidden ? 0 : t->plen[id];
    return t->pblob + t->poff[id];
}

int32_t lp_token_to_piece(const lp_tokenizer *t, int32_t id, bool special, char *buf, int32_t size) {
    if (!t || id < 0 || id >= t->n_vocab) return -1;
    size_t n;
    const char *p = piece(t, id, special, &n);
    if (buf && size > 0) memcpy(buf, p, n < (size_t)size ? n : (size_t)size);
    return (int32_t)n;
}

void lp_detok_init(lp_detok *d, const lp_tokenizer *t, bool special) {
    memset(d, 0, sizeof *d);
    d->tok = t;
    d->special = special;
    d->strip_space = t->kind == LP_TOKENIZER_SPM && t->add_space_prefix;
}

void lp_detok_free(lp_detok *d) {
    free(d->buf);
    d->buf = NULL;
    d->cap = 0;
}

static bool reserve(lp_detok *d, size_t need) {
    if (need <= d->cap) return true;
    size_t cap = d->cap ? d->cap : 64;
    while (cap < need) cap *= 2;
    char *b = realloc(d->buf, cap);
    if (!b) return false;
    d->buf = b;
    d->cap = cap;
    return true;
}

static const uint8_t REPL[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

/* Validate pend[0..npend) ++ p[0..n) into d->buf: complete characters are
 * copied, bytes that cannot start or continue a character become U+FFFD,
 * and a valid but unfinished tail is kept in d->pend. Returns the output
 * length. d->buf must hold 3 * (npend + n) bytes. */
static size_t drain(lp_detok *d, const uint8_t *p, size_t n) {
    uint8_t *o = (uint8_t *)d->buf;
    size_t m = 0;
    uint8_t win[8];      /* pending bytes plus the head of p, to decode across the seam */
    size_t np = d->npend;
    size_t i = 0;        /* position in the virtual stream pend ++ p */
    size_t total = np + n;
#define AT(k) ((k) < np ? d->pend[(k)] : p[(k) - np])
    while (i < total) {
        size_t avail = total - i, w = avail < 4 ? avail : 4;
        for (size_t k = 0; k < w; k++) win[k] = AT(i + k);
        uint32_t cp;
        size_t k = lp_utf8_decode(win, w, &cp);
        if (cp != LP_UCP_INVALID) {
            memcpy(o + m, win, k);
            m += k;
            i += k;
        } else if (lp_utf8_is_partial(win, w)) {
            break; /* the rest is an unfinished character: wait for more */
        } else {
            memcpy(o + m, REPL, 3);
            m += 3;
            i += 1;
        }
    }
    size_t rest = total - i;
    for (size_t k = 0; k < rest; k++) win[k] = AT(i + k);
    memcpy(d->pend, win, rest);
    d->npend = rest;
#undef AT
    return m;
}

loupe_status lp_detok_push(lp_detok *d, int32_t id, const char **text, size_t *len, lp_error *err) {
    *text = "";
    *len = 0;
    if (id < 0 || id >= d->tok->n_vocab)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "detokenize: token id %d out of range (vocabulary has %d)", id,
                       d->tok->n_vocab);
    size_t n;
    const uint8_t *p = (const uint8_t *)piece(d->tok, id, d->special, &n);
    if (n == 0) return LOUPE_OK;
    if (d->strip_space) {
        if (d->tok->type[id] == LP_TOKEN_NORMAL && p[0] == ' ') {
            p++;
            n--;
        }
        d->strip_space = false;
    }
    if (!reserve(d, 3 * (n + d->npend) + 1)) return lp_fail(err, LOUPE_ERR_NOMEM, "detokenize: out of memory");
    *len = drain(d, p, n);
    d->buf[*len] = '\0';
    *text = d->buf;
    return LOUPE_OK;
}

loupe_status lp_detok_finish(lp_detok *d, const char **text, size_t *len, lp_error *err) {
    *text = "";
    *len = 0;
    if (!reserve(d, 4)) return lp_fail(err, LOUPE_ERR_NOMEM, "detokenize: out of memory");
    if (d->npend) { /* a character that never completed */
        memcpy(d->buf, REPL, 3);
        *len = 3;
        d->npend = 0;
    }
    d->buf[*len] = '\0';
    *text = d->buf;
    return LOUPE_OK;
}

loupe_status lp_detokenize(const lp_tokenizer *t, const int32_t *ids, size_t n, bool special, char **out,
                           size_t *out_len, lp_error *err) {
    lp_detok d;
    lp_detok_init(&d, t, special);
    char *acc = NULL;
    size_t m = 0, cap = 0;
    loupe_status st = LOUPE_OK;
    for (size_t i = 0; i <= n; i++) {
        const char *s;
        size_t k;
        st = i < n ? lp_detok_push(&d, ids[i], &s, &k, err) : lp_detok_finish(&d, &s, &k, err);
        if (st) break;
        if (m + k + 1 > cap) {
            size_t nc = cap ? cap : 64;
            while (nc < m + k + 1) nc *= 2;
            char *a = realloc(acc, nc);
            if (!a) {
                st = lp_fail(err, LOUPE_ERR_NOMEM, "detokenize: out of memory");
                break;
            }
            acc = a;
            cap = nc;
        }
        memcpy(acc + m, s, k);
        m += k;
    }
    lp_detok_free(&d);
    if (st) {
        free(acc);
        return st;
    }
    if (!acc && !(acc = malloc(1))) return lp_fail(err, LOUPE_ERR_NOMEM, "detokenize: out of memory");
    acc[m] = '\0';
    *out = acc;
    if (out_len) *out_len = m;
    return LOUPE_OK;
}
