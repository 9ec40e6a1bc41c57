/* language/hf_tokenizer.c — Hugging Face tokenizer files to GGUF tokenizer
 * metadata (see hf_tokenizer.h). */
#include "hf_tokenizer.h"
#include "../core/fileio.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { T_NORMAL = 1, T_UNKNOWN = 2, T_CONTROL = 3, T_USER = 4, T_UNUSED = 5, T_BYTE = 6 };

struct lp_hf_vocab {
    char model[8];        /* "llama" / "gpt2" */
    int n, cap;
    char **tok;           /* (n) UTF-8, NUL-terminated */
    float *score;         /* (n) */
    int *type;            /* (n) */
    char **merges;        /* gpt2: (n_merges) "a b" */
    int n_merges;
    int bos, eos, unk, pad;
    int add_bos, add_eos; /* -1: not stated */
};

void lp_hf_vocab_free(lp_hf_vocab *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) free(v->tok[i]);
    for (int i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tok);
    free(v->score);
    free(v->type);
    free(v->merges);
    free(v);
}

int lp_hf_vocab_size(const lp_hf_vocab *v) { return v ? v->n : 0; }
const char *lp_hf_vocab_model(const lp_hf_vocab *v) { return v ? v->model : ""; }
const char *lp_hf_vocab_token(const lp_hf_vocab *v, int id) { return v && id >= 0 && id < v->n ? v->tok[id] : NULL; }
float lp_hf_vocab_score(const lp_hf_vocab *v, int id) { return v && id >= 0 && id < v->n ? v->score[id] : 0.0f; }
int lp_hf_vocab_type(const lp_hf_vocab *v, int id) { return v && id >= 0 && id < v->n ? v->type[id] : 0; }
int lp_hf_vocab_special(const lp_hf_vocab *v, const char *which) {
    if (!v || !which) return -1;
    if (!strcmp(which, "bos")) return v->bos;
    if (!strcmp(which, "eos")) return v->eos;
    if (!strcmp(which, "unk")) return v->unk;
    if (!strcmp(which, "pad")) return v->pad;
    return -1;
}

static lp_hf_vocab *vocab_new(void) {
    lp_hf_vocab *v = calloc(1, sizeof *v);
    if (v) {
        v->bos = v->eos = v->unk = v->pad = -1;
        v->add_bos = v->add_eos = -1;
    }
    return v;
}

/* Make room for ids 0..n-1; new slots are empty. */
static bool vocab_resize(lp_hf_vocab *v, int n) {
    if (n <= v->cap) {
        if (n > v->n) v->n = n;
        return true;
    }
    char **t = realloc(v->tok, (size_t)n * sizeof *t);
    if (!t) return false;
    v->tok = t;
    float *s = realloc(v->score, (size_t)n * sizeof *s);
    if (!s) return false;
    v->score = s;
    int *y = realloc(v->type, (size_t)n * sizeof *y);
    if (!y) return false;
    v->type = y;
    for (int i = v->cap; i < n; i++) {
        v->tok[i] = NULL;
        v->score[i] = 0;
        v->type[i] = 0;
    }
    v->cap = n;
    if (n > v->n) v->n = n;
    return true;
}

static bool set_token(lp_hf_vocab *v, int id, const char *s, size_t len, float score, int type) {
    char *c = malloc(len + 1);
    if (!c) return false;
    memcpy(c, s, len);
    c[len] = 0;
    free(v->tok[id]);
    v->tok[id] = c;
    v->score[id] = score;
    v->type[id] = type;
    return true;
}

/* ---- protobuf ---- */

typedef struct pb {
    const uint8_t *p, *end;
} pb;

static bool pb_varint(pb *b, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end) return false;
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false; /* more than 10 bytes */
}

/* Next field: its number, wire type, and for wire type 2 the bytes; for 0
 * the value; for 1/5 the raw bytes. false at the end or on malformed input
 * (*bad set). */
typedef struct pb_field {
    uint32_t num, wire;
    uint64_t v;
    const uint8_t *data;
    size_t len;
} pb_field;

static bool pb_next(pb *b, pb_field *f, const char **bad) {
    *bad = NULL;
    if (b->p >= b->end) return false;
    uint64_t key;
    if (!pb_varint(b, &key)) {
        *bad = "truncated field key";
        return false;
    }
    f->num = (uint32_t)(key >> 3);
    f->wire = (uint32_t)(key & 7);
    if (f->num == 0) {
        *bad = "field number 0";
        return false;
    }
    switch (f->wire) {
    case 0:
        if (!pb_varint(b, &f->v)) {
            *bad = "truncated varint";
            return false;
        }
        return true;
    case 1:
    case 5: {
        size_t n = f->wire == 1 ? 8 : 4;
        if ((size_t)(b->end - b->p) < n) {
            *bad = "truncated fixed-width value";
            return false;
        }
        f->data = b->p;
        f->len = n;
        b->p += n;
        return true;
    }
    case 2: {
        uint64_t n;
        if (!pb_varint(b, &n)) {
            *bad = "truncated length";
            return false;
        }
        if (n > (uint64_t)(b->end - b->p)) {
            *bad = "a length past the end of the data";
            return false;
        }
        f->data = b->p;
        f->len = (size_t)n;
        b->p += n;
        return true;
    }
    default:
        *bad = "unsupported wire type (groups or an unknown type)";
        return false;
    }
}

#define PB_FAIL(...) lp_fail(err, LOUPE_ERR_FORMAT, __VA_ARGS__)

typedef struct spm_spec {
    int model_type, byte_fallback;
    int unk, bos, eos, pad;
    int add_dummy_prefix;
} spm_spec;

static loupe_status parse_trainer(const uint8_t *d, size_t n, const char *name, spm_spec *s, lp_error *err) {
    pb b = {d, d + n};
    pb_field f;
    const char *bad;
    while (pb_next(&b, &f, &bad)) {
        if (f.wire != 0) continue;
        switch (f.num) {
        case 3: s->model_type = (int)f.v; break;
        case 35: s->byte_fallback = f.v != 0; break;
        case 40: s->unk = (int)(int32_t)f.v; break;
        case 41: s->bos = (int)(int32_t)f.v; break;
        case 42: s->eos = (int)(int32_t)f.v; break;
        case 43: s->pad = (int)(int32_t)f.v; break;
        default: break;
        }
    }
    if (bad) return PB_FAIL("%s: trainer_spec: %s", name, bad);
    return LOUPE_OK;
}

static loupe_status parse_normalizer(const uint8_t *d, size_t n, const char *name, spm_spec *s, lp_error *err) {
    pb b = {d, d + n};
    pb_field f;
    const char *bad;
    while (pb_next(&b, &f, &bad))
        if (f.num == 3 && f.wire == 0) s->add_dummy_prefix = f.v != 0;
    if (bad) return PB_FAIL("%s: normalizer_spec: %s", name, bad);
    return LOUPE_OK;
}

static loupe_status parse_piece(const uint8_t *d, size_t n, const char *name, int id, lp_hf_vocab *v, lp_error *err) {
    pb b = {d, d + n};
    pb_field f;
    const char *bad;
    const uint8_t *s = NULL;
    size_t len = 0;
    float score = 0;
    int type = T_NORMAL;
    bool have = false;
    while (pb_next(&b, &f, &bad)) {
        if (f.num == 1 && f.wire == 2) {
            s = f.data;
            len = f.len;
            have = true;
        } else if (f.num == 2 && f.wire == 5) {
            memcpy(&score, f.data, 4);
        } else if (f.num == 3 && f.wire == 0) {
            if (f.v < 1 || f.v > 6) return PB_FAIL("%s: piece %d: unknown type %llu", name, id, (unsigned long long)f.v);
            type = (int)f.v;
        }
    }
    if (bad) return PB_FAIL("%s: piece %d: %s", name, id, bad);
    if (!have) return PB_FAIL("%s: piece %d has no text", name, id);
    if (memchr(s, 0, len)) return PB_FAIL("%s: piece %d holds a NUL byte", name, id);
    if (!vocab_resize(v, id + 1) || !set_token(v, id, (const char *)s, len, score, type))
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", name);
    return LOUPE_OK;
}

loupe_status lp_hf_vocab_load_spm_mem(const uint8_t *buf, size_t n, const char *name, lp_hf_vocab **out,
                                      lp_error *err) {
    *out = NULL;
    lp_hf_vocab *v = vocab_new();
    if (!v) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", name);
    spm_spec s = {.model_type = 1, .unk = 0, .bos = 1, .eos = 2, .pad = -1, .add_dummy_prefix = 1};
    pb b = {buf, buf + n};
    pb_field f;
    const char *bad;
    loupe_status st = LOUPE_OK;
    int n_pieces = 0;
    while (!st && pb_next(&b, &f, &bad)) {
        if (f.wire != 2) continue;
        if (f.num == 1) {
            if (n_pieces >= (1 << 24)) st = lp_fail(err, LOUPE_ERR_LIMIT, "%s: more than 2^24 pieces", name);
            else st = parse_piece(f.data, f.len, name, n_pieces++, v, err);
        } else if (f.num == 2) {
            st = parse_trainer(f.data, f.len, name, &s, err);
        } else if (f.num == 3) {
            st = parse_normalizer(f.data, f.len, name, &s, err);
        }
    }
    if (!st && bad) st = PB_FAIL("%s: %s", name, bad);
    if (!st && n_pieces == 0) st = PB_FAIL("%s: no pieces (not a SentencePiece model?)", name);
    if (!st && s.model_type != 1 && s.model_type != 2)
        st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: SentencePiece model_type %d (unigram or BPE)", name, s.model_type);
    if (st) {
        lp_hf_vocab_free(v);
        return st;
    }
    snprintf(v->model, sizeof v->model, "llama");
    v->unk = s.unk >= 0 && s.unk < v->n ? s.unk : -1;
    v->bos = s.bos >= 0 && s.bos < v->n ? s.bos : -1;
    v->eos = s.eos >= 0 && s.eos < v->n ? s.eos : -1;
    v->pad = s.pad >= 0 && s.pad < v->n ? s.pad : -1;
    *out = v;
    return LOUPE_OK;
}

/* ---- JSON side files ---- */

/* DIR/name parsed, or NULL (absent: OK; malformed: error). */
static loupe_status read_json_opt(const char *dir, const char *name, cJSON **out, lp_error *err) {
    *out = NULL;
    char *p = lp_path_join(dir, name);
    if (!p) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    loupe_status st = LOUPE_OK;
    if (lp_path_exists(p)) {
        char *text = NULL;
        size_t len = 0;
        st = lp_read_file(p, 512u << 20, "512 MiB JSON file", &text, &len, err);
        if (!st) {
            *out = cJSON_ParseWithLength(text, len);
            if (!*out || !cJSON_IsObject(*out)) {
                cJSON_Delete(*out);
                *out = NULL;
                st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a JSON object", p);
            }
        }
        free(text);
    }
    free(p);
    return st;
}

static int find_token(const lp_hf_vocab *v, const char *s) {
    for (int i = 0; i < v->n; i++)
        if (v->tok[i] && !strcmp(v->tok[i], s)) return i;
    return -1;
}

/* "bos_token": "<s>" or {"content": "<s>", ...} */
static const char *token_text(const cJSON *o, const char *key) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsString(t)) return t->valuestring;
    const cJSON *c = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "content") : NULL;
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static void specials_from(lp_hf_vocab *v, const cJSON *o) {
    if (!o) return;
    static const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int *ids[4] = {&v->bos, &v->eos, &v->unk, &v->pad};
    for (int k = 0; k < 4; k++) {
        const char *s = token_text(o, keys[k]);
        int id = s ? find_token(v, s) : -1;
        if (id >= 0) *ids[k] = id;
    }
}

static loupe_status pad_to(lp_hf_vocab *v, int vocab_size, const char *dir, lp_error *err) {
    if (vocab_size <= 0) return LOUPE_OK;
    if (v->n > vocab_size) { /* llama.cpp ignores pieces past vocab_size */
        for (int i = vocab_size; i < v->n; i++) {
            free(v->tok[i]);
            v->tok[i] = NULL;
        }
        v->n = vocab_size;
    }
    int n0 = v->n;
    if (!vocab_resize(v, vocab_size)) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", dir);
    for (int i = n0; i < vocab_size; i++) {
        char b[32];
        snprintf(b, sizeof b, "[PAD%d]", i);
        if (!set_token(v, i, b, strlen(b), -10000.0f, T_UNUSED))
            return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", dir);
    }
    return LOUPE_OK;
}

static loupe_status added_tokens(lp_hf_vocab *v, const char *dir, const cJSON *added, const cJSON *tcfg, lp_error *err) {
    const cJSON *e;
    if (added) cJSON_ArrayForEach(e, added) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble != (int)e->valuedouble)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s/added_tokens.json: id of \"%.64s\" is not a token id", dir,
                           e->string ? e->string : "?");
        int id = (int)e->valuedouble;
        if (id >= v->n) continue; /* past vocab_size: llama.cpp ignores it too */
        if (!set_token(v, id, e->string, strlen(e->string), -1000.0f, T_USER))
            return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    }
    const cJSON *dec = tcfg ? cJSON_GetObjectItemCaseSensitive(tcfg, "added_tokens_decoder") : NULL;
    if (cJSON_IsObject(dec)) cJSON_ArrayForEach(e, dec) {
        char *endp = NULL;
        long id = strtol(e->string ? e->string : "", &endp, 10);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!endp || *endp || id < 0 || !cJSON_IsString(c))
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer_config.json: added_tokens_decoder entry \"%.32s\"", dir,
                           e->string ? e->string : "?");
        if (id >= v->n) continue;
        const bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        if (!set_token(v, (int)id, c->valuestring, strlen(c->valuestring), v->score[id], special ? T_CONTROL : T_USER))
            return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    }
    return LOUPE_OK;
}

static int cmp_tok(const void *a, const void *b, void *ctx) {
    char *const *tok = ctx;
    return strcmp(tok[*(const int *)a], tok[*(const int *)b]);
}

/* A SentencePiece-style BPE tokenizer.json (byte_fallback: LLaMA-2,
 * Mistral, ...) as a "llama" vocabulary: <0xXX> tokens are BYTE, added
 * special ones CONTROL, and the piece each merge makes gets the score
 * -rank, so that llama.cpp's (and loupe's) SentencePiece merging — the
 * highest-scoring adjacent pair first — merges in the tokenizer.json's merge
 * order. Pieces no merge makes get -1e9 (merged last, if ever); the merge
 * list is not written. (llama.cpp's own LlamaHfVocab scores every piece
 * -1000, which loses the merge order.) */
static loupe_status spm_from_merges(lp_hf_vocab *v, const char *dir, lp_error *err) {
    int *order = malloc((size_t)v->n * sizeof *order);
    if (!order) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < v->n; i++) {
        order[i] = i;
        const char *t = v->tok[i];
        const bool byte = strlen(t) == 6 && !strncmp(t, "<0x", 3) && t[5] == '>';
        if (v->type[i] == T_NORMAL) v->type[i] = byte ? T_BYTE : T_NORMAL;
        v->score[i] = v->type[i] == T_NORMAL ? -1e9f : 0.0f;
    }
    qsort_r(order, (size_t)v->n, sizeof *order, cmp_tok, v->tok);
    loupe_status st = LOUPE_OK;
    char buf[1024];
    for (int r = 0; r < v->n_merges && !st; r++) {
        const char *m = v->merges[r], *sp = strchr(m, ' ');
        if (!sp || strlen(m) >= sizeof buf) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: merge %d (\"%.40s\") is not two pieces", dir, r, m);
            break;
        }
        size_t a = (size_t)(sp - m);
        memcpy(buf, m, a);
        strcpy(buf + a, sp + 1); /* the merged piece */
        int lo = 0, hi = v->n - 1, id = -1;
        while (lo <= hi) {
            int mid = lo + (hi - lo) / 2, c = strcmp(v->tok[order[mid]], buf);
            if (!c) {
                id = order[mid];
                break;
            }
            if (c < 0) lo = mid + 1;
            else hi = mid - 1;
        }
        if (id >= 0 && v->type[id] == T_NORMAL && v->score[id] == -1e9f) v->score[id] = -(float)r;
    }
    free(order);
    for (int i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->merges);
    v->merges = NULL;
    v->n_merges = 0;
    return st;
}

/* tokenizer.json: byte-level BPE ("gpt2") or SentencePiece-style BPE ("llama") */
static loupe_status load_tokenizer_json(const char *dir, const cJSON *tj, lp_hf_vocab **out, lp_error *err) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    const char *type = model ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(model, "type")) : NULL;
    if (!type || strcmp(type, "BPE"))
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s/tokenizer.json: model type \"%.32s\" (loupe converts BPE)", dir,
                       type ? type : "?");
    const bool spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: model needs \"vocab\" and \"merges\"", dir);
    lp_hf_vocab *v = vocab_new();
    if (!v) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    snprintf(v->model, sizeof v->model, "%s", spm ? "llama" : "gpt2");
    loupe_status st = LOUPE_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (1 << 24) ||
            e->valuedouble != (int)e->valuedouble) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: vocab id of \"%.64s\" out of range", dir, e->string);
            break;
        }
        int id = (int)e->valuedouble;
        if (!vocab_resize(v, id + 1) || !set_token(v, id, e->string, strlen(e->string), 0.0f, T_NORMAL)) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
            break;
        }
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
    if (!st && added) cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id"), *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) || !cJSON_IsString(c)) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: an added_tokens entry without id or content", dir);
            break;
        }
        const bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        if (!vocab_resize(v, (int)id->valuedouble + 1) ||
            !set_token(v, (int)id->valuedouble, c->valuestring, strlen(c->valuestring), 0.0f, special ? T_CONTROL : T_USER)) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
            break;
        }
    }
    for (int i = 0; !st && i < v->n; i++)
        if (!v->tok[i]) st = lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: no token has id %d", dir, i);
    int nm = cJSON_GetArraySize(merges);
    if (!st && nm > 0 && !(v->merges = calloc((size_t)nm, sizeof *v->merges))) st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    for (int i = 0; !st && i < nm; i++) {
        const cJSON *m = cJSON_GetArrayItem(merges, i);
        char *s = NULL;
        if (cJSON_IsString(m)) s = strdup(m->valuestring);
        else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                 cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            const char *a = cJSON_GetArrayItem(m, 0)->valuestring, *b = cJSON_GetArrayItem(m, 1)->valuestring;
            size_t n = strlen(a) + strlen(b) + 2;
            if ((s = malloc(n))) snprintf(s, n, "%s %s", a, b);
        } else {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s/tokenizer.json: merge %d is neither \"a b\" nor [a, b]", dir, i);
            break;
        }
        if (!s) st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
        else v->merges[v->n_merges++] = s;
    }
    if (!st && spm) st = spm_from_merges(v, dir, err);
    if (st) {
        lp_hf_vocab_free(v);
        return st;
    }
    *out = v;
    return LOUPE_OK;
}

loupe_status lp_hf_vocab_load(const char *dir, int vocab_size, lp_hf_vocab **out, lp_error *err) {
    *out = NULL;
    char *spm = lp_path_join(dir, "tokenizer.model"), *tjp = lp_path_join(dir, "tokenizer.json");
    cJSON *tj = NULL, *tcfg = NULL, *smap = NULL, *added = NULL;
    lp_hf_vocab *v = NULL;
    loupe_status st = LOUPE_OK;
    if (!spm || !tjp) {
        st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (lp_path_exists(spm)) {
        char *buf = NULL;
        size_t n = 0;
        if ((st = lp_read_file(spm, 256u << 20, "256 MiB tokenizer.model", &buf, &n, err))) goto out;
        st = lp_hf_vocab_load_spm_mem((const uint8_t *)buf, n, spm, &v, err);
        free(buf);
        if (st) goto out;
        if ((st = pad_to(v, vocab_size, dir, err))) goto out;
        if ((st = read_json_opt(dir, "added_tokens.json", &added, err))) goto out;
        if ((st = read_json_opt(dir, "tokenizer_config.json", &tcfg, err))) goto out;
        if ((st = added_tokens(v, dir, added, tcfg, err))) goto out;
    } else if (lp_path_exists(tjp)) {
        if ((st = read_json_opt(dir, "tokenizer.json", &tj, err))) goto out;
        if ((st = load_tokenizer_json(dir, tj, &v, err))) goto out;
        if ((st = pad_to(v, vocab_size, dir, err))) goto out;
        if ((st = read_json_opt(dir, "tokenizer_config.json", &tcfg, err))) goto out;
    } else {
        st = lp_fail(err, LOUPE_ERR_IO, "%s: no tokenizer.model or tokenizer.json", dir);
        goto out;
    }
    if ((st = read_json_opt(dir, "special_tokens_map.json", &smap, err))) goto out;
    specials_from(v, smap);
    specials_from(v, tcfg);
    if (tcfg) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(tcfg, "add_bos_token");
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(tcfg, "add_eos_token");
        if (cJSON_IsBool(b)) v->add_bos = cJSON_IsTrue(b);
        if (cJSON_IsBool(e)) v->add_eos = cJSON_IsTrue(e);
    }
out:
    if (st) {
        lp_hf_vocab_free(v);
        v = NULL;
    }
    *out = v;
    cJSON_Delete(tj);
    cJSON_Delete(tcfg);
    cJSON_Delete(smap);
    cJSON_Delete(added);
    free(spm);
    free(tjp);
    return st;
}

loupe_status lp_hf_vocab_write_gguf(const lp_hf_vocab *v, lp_gguf_writer *w, lp_error *err) {
    loupe_status st;
    const bool spm = !strcmp(v->model, "llama");
    int32_t *types = malloc((size_t)v->n * sizeof *types);
    if (!types) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory");
    for (int i = 0; i < v->n; i++) types[i] = v->type[i];
    if ((st = lp_gguf_writer_set_str(w, "tokenizer.ggml.model", v->model)) ||
        (st = lp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "default")) ||
        (st = lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tok, (uint64_t)v->n)) ||
        (spm && (st = lp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LP_GGUF_FLOAT32, v->score, (uint64_t)v->n))) ||
        (st = lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, types, (uint64_t)v->n)) ||
        (!spm && (st = lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges,
                                                  (uint64_t)v->n_merges))) ||
        (v->bos >= 0 && (st = lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos))) ||
        (v->eos >= 0 && (st = lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos))) ||
        (v->unk >= 0 && (st = lp_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk))) ||
        (v->pad >= 0 && (st = lp_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad))) ||
        (st = lp_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos >= 0 ? v->add_bos : spm)) ||
        (st = lp_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos > 0)))
        lp_fail(err, st, "cannot write the tokenizer metadata");
    free(types);
    return st;
}
