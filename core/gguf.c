/* core/gguf.c — GGUF v2/v3 reader (mmap, fully validated) and writer.
 *
 * Layout and rules: see gguf.h. v2 and v3 share one layout (v1 used 32-bit
 * counts and is refused). The reader trusts nothing in the file: every read is
 * bounds-checked, every product/sum is overflow-checked, and every count is
 * checked against the bytes still unclaimed before anything is allocated, so
 * memory use stays a small multiple of the file size whatever the header says. */
#include "gguf.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "gguf.c assumes a little-endian host");

#define GGUF_MAGIC "GGUF"
#define GGUF_NAME_MAX 63     /* ggml's GGML_MAX_NAME - 1: longest tensor name the writer emits */
#define KEY_ALIGNMENT "general.alignment"

/* Smallest encodings, used to bound counts before allocating:
 * kv     = u64 len + 1 key byte + u32 type + 1 value byte
 * tensor = u64 len + 1 name byte + u32 n_dims + 1 × u64 ne + u32 type + u64 offset
 * array element of type str = u64 len; of type arr = u32 type + u64 n */
#define MIN_KV_BYTES 14
#define MIN_TENSOR_BYTES 33

static const char *const VT_NAME[LP_GGUF_VTYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"};
static const uint8_t VT_SIZE[LP_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *lp_gguf_vtype_name(lp_gguf_vtype t) {
    return (unsigned)t < LP_GGUF_VTYPE_COUNT ? VT_NAME[t] : "?";
}

static bool vt_is_int(uint32_t t) {
    return t <= LP_GGUF_INT32 || t == LP_GGUF_UINT64 || t == LP_GGUF_INT64;
}
static bool vt_is_signed(uint32_t t) {
    return t == LP_GGUF_INT8 || t == LP_GGUF_INT16 || t == LP_GGUF_INT32 || t == LP_GGUF_INT64;
}
static bool vt_is_scalar(uint32_t t) { return t < LP_GGUF_VTYPE_COUNT && VT_SIZE[t] != 0; }

static uint64_t min_elem_bytes(uint32_t elem) {
    return elem == LP_GGUF_STRING ? 8 : elem == LP_GGUF_ARRAY ? 12 : VT_SIZE[elem];
}

static bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* Thread-safe strerror for both GNU and XSI strerror_r. */

/* ---- values ---- */

static void value_free(lp_gguf_value *v) {
    if (v->type == LP_GGUF_STRING) {
        free(v->v.str.s);
    } else if (v->type == LP_GGUF_ARRAY) {
        if (v->v.arr.strs)
            for (uint64_t i = 0; i < v->v.arr.n; i++) free(v->v.arr.strs[i].s);
        if (v->v.arr.items)
            for (uint64_t i = 0; i < v->v.arr.n; i++) value_free(&v->v.arr.items[i]);
        free(v->v.arr.data);
        free(v->v.arr.strs);
        free(v->v.arr.items);
    }
    memset(v, 0, sizeof *v);
}

/* ---- reader ---- */

typedef struct rd {
    const uint8_t *p;
    uint64_t size, pos;
    uint64_t reserved; /* bytes promised to items counted but not yet read */
    const char *file;
    char what[128];    /* "header", "key 'x'", "tensor 'y'": prefix of every message */
    lp_error *err;
} rd;

/* what = "<kind> '<name>'" with the name cut and made printable. */
static void rd_what(rd *r, const char *kind, const char *name, uint64_t len) {
    size_t n = (size_t)snprintf(r->what, sizeof r->what, "%s '", kind);
    size_t room = sizeof r->what - n - 5; /* "...'" + NUL */
    uint64_t i = 0;
    for (; i < len && i < room; i++) {
        unsigned char c = (unsigned char)name[i];
        r->what[n++] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    if (i < len) { memcpy(r->what + n, "...", 3); n += 3; }
    r->what[n++] = '\'';
    r->what[n] = '\0';
}

static uint64_t rd_left(const rd *r) { return r->size - r->pos; }
/* Bytes left that no counted-but-unread item has claimed. */
static uint64_t rd_free(const rd *r) {
    uint64_t left = rd_left(r);
    return left > r->reserved ? left - r->reserved : 0;
}

static loupe_status rd_bytes(rd *r, void *dst, uint64_t n, const char *field) {
    if (n > rd_left(r))
        return lp_fail(r->err, LOUPE_ERR_FORMAT,
                       "%s: %s: %s at offset %" PRIu64 " needs %" PRIu64 " bytes, only %" PRIu64
                       " left (file truncated?)",
                       r->file, r->what, field, r->pos, n, rd_left(r));
    if (n) memcpy(dst, r->p + r->pos, (size_t)n);
    r->pos += n;
    return LOUPE_OK;
}
#define RD(r, x, field) rd_bytes((r), &(x), sizeof(x), (field))

/* A string: u64 len + bytes. Returns a malloc'd NUL-terminated copy. */
static loupe_status rd_str(rd *r, char **out, uint64_t *len_out, const char *field) {
    uint64_t len = 0;
    loupe_status st = RD(r, len, field);
    if (st) return st;
    if (len > rd_left(r))
        return lp_fail(r->err, LOUPE_ERR_FORMAT,
                       "%s: %s: %s %" PRIu64 " at offset %" PRIu64 " runs past end of file (%" PRIu64
                       " bytes left)",
                       r->file, r->what, field, len, r->pos - 8, rd_left(r));
    char *s = malloc((size_t)len + 1);
    if (!s) return lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: %s: out of memory for a %" PRIu64 "-byte string", r->file, r->what, len);
    memcpy(s, r->p + r->pos, (size_t)len);
    s[len] = '\0';
    r->pos += len;
    *out = s;
    *len_out = len;
    return LOUPE_OK;
}

/* Claim n items of at least min bytes each out of the unclaimed bytes. */
static loupe_status rd_claim(rd *r, uint64_t n, uint64_t min, const char *items) {
    uint64_t need;
    if (__builtin_mul_overflow(n, min, &need) || need > rd_free(r))
        return lp_fail(r->err, LOUPE_ERR_FORMAT,
                       "%s: %s: %" PRIu64 " %s need at least %" PRIu64 " bytes each, only %" PRIu64
                       " bytes left at offset %" PRIu64,
                       r->file, r->what, n, items, min, rd_free(r), r->pos);
    r->reserved += need;
    return LOUPE_OK;
}

static loupe_status rd_array(rd *r, lp_gguf_value *v, int depth);

static loupe_status rd_value(rd *r, uint32_t type, lp_gguf_value *v, int depth) {
    loupe_status st = LOUPE_OK;
    v->type = (lp_gguf_vtype)type;
    switch (type) {
    case LP_GGUF_UINT8:  { uint8_t x = 0; st = RD(r, x, "u8 value");  v->v.u64 = x; break; }
    case LP_GGUF_INT8:   { int8_t x = 0;  st = RD(r, x, "i8 value");  v->v.i64 = x; break; }
    case LP_GGUF_UINT16: { uint16_t x = 0; st = RD(r, x, "u16 value"); v->v.u64 = x; break; }
    case LP_GGUF_INT16:  { int16_t x = 0; st = RD(r, x, "i16 value"); v->v.i64 = x; break; }
    case LP_GGUF_UINT32: { uint32_t x = 0; st = RD(r, x, "u32 value"); v->v.u64 = x; break; }
    case LP_GGUF_INT32:  { int32_t x = 0; st = RD(r, x, "i32 value"); v->v.i64 = x; break; }
    case LP_GGUF_UINT64: { uint64_t x = 0; st = RD(r, x, "u64 value"); v->v.u64 = x; break; }
    case LP_GGUF_INT64:  { int64_t x = 0; st = RD(r, x, "i64 value"); v->v.i64 = x; break; }
    case LP_GGUF_FLOAT32:{ float x = 0;   st = RD(r, x, "f32 value"); v->v.f64 = x; break; }
    case LP_GGUF_FLOAT64:{ double x = 0;  st = RD(r, x, "f64 value"); v->v.f64 = x; break; }
    case LP_GGUF_BOOL:   { uint8_t x = 0; st = RD(r, x, "bool value"); v->v.u64 = x != 0; break; }
    case LP_GGUF_STRING: st = rd_str(r, &v->v.str.s, &v->v.str.len, "string length"); break;
    case LP_GGUF_ARRAY:  st = rd_array(r, v, depth + 1); break;
    default:
        v->type = LP_GGUF_UINT8; /* nothing to free */
        st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: unknown value type %" PRIu32 " at offset %" PRIu64,
                     r->file, r->what, type, r->pos - 4);
    }
    return st;
}

/* An array body: u32 elem type, u64 n, n elements. v->type is already ARRAY;
 * n is stored before the elements are read so a partial array frees cleanly. */
static loupe_status rd_array(rd *r, lp_gguf_value *v, int depth) {
    v->type = LP_GGUF_ARRAY;
    if (depth > LP_GGUF_MAX_DEPTH)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: arrays nested deeper than %d levels at offset %" PRIu64,
                       r->file, r->what, LP_GGUF_MAX_DEPTH, r->pos);
    uint32_t elem = 0;
    uint64_t n = 0;
    loupe_status st = RD(r, elem, "array element type");
    if (!st) st = RD(r, n, "array length");
    if (st) return st;
    if (elem >= LP_GGUF_VTYPE_COUNT)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: array of unknown value type %" PRIu32 " at offset %" PRIu64,
                       r->file, r->what, elem, r->pos - 12);
    v->v.arr.elem = (lp_gguf_vtype)elem;
    char items[32];
    snprintf(items, sizeof items, "array elements of type %s", VT_NAME[elem]);
    uint64_t min = min_elem_bytes(elem);
    if ((st = rd_claim(r, n, min, items))) return st;
    if (n == 0) return LOUPE_OK;

    if (vt_is_scalar(elem)) {
        uint64_t nb = n * min; /* claimed above, so no overflow and within the file */
        r->reserved -= nb;
        v->v.arr.data = malloc((size_t)nb);
        if (!v->v.arr.data) return lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: %s: out of memory for %" PRIu64 " array bytes", r->file, r->what, nb);
        v->v.arr.n = n;
        memcpy(v->v.arr.data, r->p + r->pos, (size_t)nb);
        r->pos += nb;
        if (elem == LP_GGUF_BOOL) {
            uint8_t *b = v->v.arr.data;
            for (uint64_t i = 0; i < n; i++) b[i] = b[i] != 0;
        }
        return LOUPE_OK;
    }
    if (elem == LP_GGUF_STRING) {
        v->v.arr.strs = calloc((size_t)n, sizeof(lp_gguf_str));
    } else {
        v->v.arr.items = calloc((size_t)n, sizeof(lp_gguf_value));
    }
    if (!v->v.arr.strs && !v->v.arr.items) {
        r->reserved -= n * min;
        return lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: %s: out of memory for %" PRIu64 " array elements", r->file, r->what, n);
    }
    v->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        r->reserved -= min; /* this element is being read now */
        if (elem == LP_GGUF_STRING)
            st = rd_str(r, &v->v.arr.strs[i].s, &v->v.arr.strs[i].len, "array string length");
        else
            st = rd_array(r, &v->v.arr.items[i], depth + 1);
        if (st) {
            r->reserved -= (n - 1 - i) * min;
            return st;
        }
    }
    return LOUPE_OK;
}

/* Set of names for duplicate detection: open addressing, FNV-1a. */
typedef struct nameset { const char **slot; uint64_t mask; } nameset;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}
static bool nameset_init(nameset *h, uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2; /* n is bounded by the file size, so this ends */
    h->slot = calloc((size_t)cap, sizeof *h->slot);
    h->mask = cap - 1;
    return h->slot != NULL;
}
/* Returns the name already present, or NULL after inserting s. */
static const char *nameset_add(nameset *h, const char *s) {
    for (uint64_t i = fnv1a(s) & h->mask;; i = (i + 1) & h->mask) {
        if (!h->slot[i]) { h->slot[i] = s; return NULL; }
        if (strcmp(h->slot[i], s) == 0) return h->slot[i];
    }
}

/* A key or tensor name: non-empty, no NUL bytes (they are C strings to us). */
static loupe_status rd_name(rd *r, const char *kind, uint64_t index, char **out) {
    snprintf(r->what, sizeof r->what, "%s #%" PRIu64, kind, index);
    uint64_t len = 0;
    loupe_status st = rd_str(r, out, &len, "name length");
    if (st) return st;
    if (len == 0)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: empty name", r->file, r->what);
    rd_what(r, kind, *out, len);
    if (memchr(*out, 0, (size_t)len))
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: name contains a NUL byte", r->file, r->what);
    return LOUPE_OK;
}

typedef struct span { uint64_t start, end, idx; } span;
static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start ? 1 : (x->end > y->end) - (x->end < y->end);
}

static loupe_status rd_tensor(rd *r, lp_gguf_tensor *t, uint64_t alignment) {
    uint32_t n_dims = 0, type = 0;
    loupe_status st = RD(r, n_dims, "n_dims");
    if (st) return st;
    if (n_dims < 1 || n_dims > LP_GGUF_MAX_DIMS)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: n_dims is %" PRIu32 ", must be 1..%d",
                       r->file, r->what, n_dims, LP_GGUF_MAX_DIMS);
    t->n_dims = n_dims;
    int64_t nel = 1;
    for (int d = 0; d < LP_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if ((uint32_t)d >= n_dims) continue;
        if ((st = RD(r, t->ne[d], "dimension"))) return st;
        if (t->ne[d] < 0)
            return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: dimension %d has negative size %" PRId64,
                           r->file, r->what, d, t->ne[d]);
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: element count overflows (dimension %d is %" PRId64 ")",
                           r->file, r->what, d, t->ne[d]);
    }
    if ((st = RD(r, type, "tensor type"))) return st;
    if (!lp_type_valid(type))
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: unknown tensor type %" PRIu32, r->file, r->what, type);
    t->type = (lp_type)type;
    int64_t bs = lp_type_block_size(t->type);
    uint64_t bb = lp_type_block_bytes(t->type);
    if (bs <= 0 || bb == 0)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: tensor type %s has no known block layout",
                       r->file, r->what, lp_type_name(type));
    if (t->ne[0] % bs != 0)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: row length %" PRId64 " is not a multiple of the %s block size %" PRId64,
                       r->file, r->what, t->ne[0], lp_type_name(type), bs);
    /* nbytes = ne0/bs * bb * ne1 * ne2 * ne3 */
    uint64_t nb = (uint64_t)(t->ne[0] / bs);
    bool ovf = __builtin_mul_overflow(nb, bb, &nb);
    for (int d = 1; d < LP_GGUF_MAX_DIMS; d++) ovf |= __builtin_mul_overflow(nb, (uint64_t)t->ne[d], &nb);
    if (ovf)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: byte size overflows", r->file, r->what);
    t->nbytes = nb;
    if ((st = RD(r, t->offset, "data offset"))) return st;
    if (t->offset % alignment != 0)
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                       r->file, r->what, t->offset, alignment);
    return LOUPE_OK;
}

/* Everything after the kv section needs the alignment, so the tensor infos
 * are read after the kvs have been checked. */
static loupe_status parse(lp_gguf *g, rd *r) {
    loupe_status st;
    char magic[4] = {0};
    snprintf(r->what, sizeof r->what, "header");
    if ((st = RD(r, magic, "magic"))) return st;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        const unsigned char *m = (const unsigned char *)magic;
        return lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: not a GGUF file (magic bytes %02x %02x %02x %02x, expected \"GGUF\")",
                       r->file, m[0], m[1], m[2], m[3]);
    }
    if ((st = RD(r, g->version, "version"))) return st;
    if (g->version == 1)
        return lp_fail(r->err, LOUPE_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (re-convert the file with a current llama.cpp)", r->file);
    if (g->version != 0 && (g->version & 0xffff) == 0)
        return lp_fail(r->err, LOUPE_ERR_UNSUPPORTED, "%s: GGUF version 0x%08" PRIx32 " looks byte-swapped: big-endian files are not supported",
                       r->file, g->version);
    if (g->version != 2 && g->version != 3)
        return lp_fail(r->err, g->version > 3 ? LOUPE_ERR_UNSUPPORTED : LOUPE_ERR_FORMAT,
                       "%s: GGUF version %" PRIu32 " is not supported (expected 2 or 3)", r->file, g->version);
    uint64_t n_tensors = 0, n_kv = 0;
    if ((st = RD(r, n_tensors, "tensor count"))) return st;
    if ((st = RD(r, n_kv, "key-value count"))) return st;

    /* Both counts at once: all items must fit in what is left. */
    uint64_t need_kv, need_t, need;
    if (__builtin_mul_overflow(n_kv, MIN_KV_BYTES, &need_kv) || __builtin_mul_overflow(n_tensors, MIN_TENSOR_BYTES, &need_t) ||
        __builtin_add_overflow(need_kv, need_t, &need) || need > rd_left(r))
        return lp_fail(r->err, LOUPE_ERR_FORMAT,
                       "%s: header claims %" PRIu64 " key-value pairs and %" PRIu64 " tensors, more than the %" PRIu64
                       " bytes that follow can hold (truncated or corrupt file)",
                       r->file, n_kv, n_tensors, rd_left(r));
    r->reserved = need;

    g->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv);
    g->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors);
    if (!g->kv || !g->tensors) return lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: out of memory", r->file);
    g->n_kv = n_kv;
    g->n_tensors = n_tensors;

    nameset names;
    if (!nameset_init(&names, n_kv > n_tensors ? n_kv : n_tensors))
        return lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: out of memory", r->file);

    for (uint64_t i = 0; i < n_kv; i++) {
        lp_gguf_kv *kv = &g->kv[i];
        r->reserved -= MIN_KV_BYTES;
        uint32_t type = 0;
        if ((st = rd_name(r, "key", i, &kv->key))) goto out;
        if (nameset_add(&names, kv->key)) {
            st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: duplicate key", r->file, r->what);
            goto out;
        }
        if ((st = RD(r, type, "value type"))) goto out;
        if ((st = rd_value(r, type, &kv->val, 0))) goto out;
    }

    g->alignment = LP_GGUF_DEFAULT_ALIGNMENT;
    const lp_gguf_value *al = lp_gguf_get(g, KEY_ALIGNMENT);
    if (al) {
        if (al->type != LP_GGUF_UINT32) {
            st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: key '" KEY_ALIGNMENT "': must be u32, is %s", r->file, VT_NAME[al->type]);
            goto out;
        }
        if (!is_pow2(al->v.u64)) {
            st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: key '" KEY_ALIGNMENT "': %" PRIu64 " is not a nonzero power of two",
                         r->file, al->v.u64);
            goto out;
        }
        g->alignment = al->v.u64;
    }

    memset(names.slot, 0, (size_t)(names.mask + 1) * sizeof *names.slot);
    for (uint64_t i = 0; i < n_tensors; i++) {
        lp_gguf_tensor *t = &g->tensors[i];
        r->reserved -= MIN_TENSOR_BYTES;
        if ((st = rd_name(r, "tensor", i, &t->name))) goto out;
        if (nameset_add(&names, t->name)) {
            st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: %s: duplicate tensor name", r->file, r->what);
            goto out;
        }
        if ((st = rd_tensor(r, t, g->alignment))) goto out;
    }

    /* Data section: starts at the next multiple of the alignment. A file
     * without tensors may end before that padding (ggml accepts this). */
    g->data_offset = (r->pos + g->alignment - 1) & ~(g->alignment - 1);
    if (g->data_offset > r->size) {
        if (n_tensors) {
            st = lp_fail(r->err, LOUPE_ERR_FORMAT, "%s: data section at offset %" PRIu64 " starts past end of file (%" PRIu64 " bytes)",
                         r->file, g->data_offset, r->size);
            goto out;
        }
        g->data_offset = r->pos;
    }

    span *sp = n_tensors ? malloc((size_t)n_tensors * sizeof *sp) : NULL;
    if (n_tensors && !sp) { st = lp_fail(r->err, LOUPE_ERR_NOMEM, "%s: out of memory", r->file); goto out; }
    uint64_t n_sp = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        lp_gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (__builtin_add_overflow(g->data_offset, t->offset, &start) || __builtin_add_overflow(start, t->nbytes, &end) || end > r->size) {
            rd_what(r, "tensor", t->name, strlen(t->name));
            st = lp_fail(r->err, LOUPE_ERR_FORMAT,
                         "%s: %s: data extends past end of file (offset %" PRIu64 " + %" PRIu64 " + %" PRIu64 " bytes > %" PRIu64 ")",
                         r->file, r->what, g->data_offset, t->offset, t->nbytes, r->size);
            free(sp);
            goto out;
        }
        t->data = g->map + start;
        if (t->nbytes) sp[n_sp++] = (span){t->offset, t->offset + t->nbytes, i};
    }
    if (n_sp > 1) qsort(sp, (size_t)n_sp, sizeof *sp, span_cmp);
    for (uint64_t i = 1; i < n_sp; i++) {
        if (sp[i].start < sp[i - 1].end) {
            const lp_gguf_tensor *a = &g->tensors[sp[i - 1].idx], *b = &g->tensors[sp[i].idx];
            char other[sizeof r->what];
            rd_what(r, "tensor", a->name, strlen(a->name)); /* sanitized copy of the first name */
            memcpy(other, r->what, sizeof other);
            rd_what(r, "tensor", b->name, strlen(b->name));
            st = lp_fail(r->err, LOUPE_ERR_FORMAT,
                         "%s: %s: data overlaps %s (bytes %" PRIu64 "..%" PRIu64 " and %" PRIu64 "..%" PRIu64 " of the data section)",
                         r->file, r->what, other, sp[i].start, sp[i].end, sp[i - 1].start, sp[i - 1].end);
            free(sp);
            goto out;
        }
    }
    free(sp);
    st = LOUPE_OK;
out:
    free(names.slot);
    return st;
}

static lp_gguf *open_buf(const uint8_t *buf, size_t size, const char *name, lp_error *err) {
    lp_gguf *g = calloc(1, sizeof *g);
    char *path = strdup(name ? name : "(memory)");
    if (!g || !path) {
        free(g);
        free(path);
        lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", name ? name : "(memory)");
        return NULL;
    }
    g->path = path;
    g->map = buf;
    g->map_size = size;
    g->file_size = size;
    rd r = {.p = buf, .size = size, .file = path, .err = err};
    if (parse(g, &r) != LOUPE_OK) {
        lp_gguf_close(g);
        return NULL;
    }
    return g;
}

lp_gguf *lp_gguf_open_mem(const void *buf, size_t size, const char *name, lp_error *err) {
    if (!buf && size) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: NULL buffer", name ? name : "(memory)");
        return NULL;
    }
    return open_buf(buf, size, name, err);
}

lp_gguf *lp_gguf_open(const char *path, lp_error *err) {
    char eb[128];
    if (!path) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_open: NULL path");
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lp_fail(err, LOUPE_ERR_IO, "%s: cannot open: %s", path, lp_strerror(errno, eb, sizeof eb));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        lp_fail(err, LOUPE_ERR_IO, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            lp_fail(err, LOUPE_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, lp_strerror(errno, eb, sizeof eb));
            close(fd);
            return NULL;
        }
    }
    close(fd); /* the mapping keeps the file alive */
    lp_gguf *g = open_buf(map, size, path, err);
    if (!g) {
        if (map) munmap(map, size);
        return NULL;
    }
    g->owns_map = map != NULL;
    return g;
}

void lp_gguf_close(lp_gguf *g) {
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            value_free(&g->kv[i].val);
        }
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->owns_map) munmap((void *)g->map, g->map_size);
    free(g->path);
    free(g);
}

/* ---- lookups and typed getters ---- */

int64_t lp_gguf_find_key(const lp_gguf *g, const char *key) {
    if (!g || !key) return -1;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return (int64_t)i;
    return -1;
}

int64_t lp_gguf_find_tensor(const lp_gguf *g, const char *name) {
    if (!g || !name) return -1;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && strcmp(g->tensors[i].name, name) == 0) return (int64_t)i;
    return -1;
}

const lp_gguf_value *lp_gguf_get(const lp_gguf *g, const char *key) {
    int64_t i = lp_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i].val;
}

/* Find key; NULL (and *st set) if missing and required. */
static const lp_gguf_value *lookup(const lp_gguf *g, const char *key, bool required, loupe_status *st, lp_error *err) {
    *st = LOUPE_OK;
    if (!g || !key) {
        *st = lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get: NULL file or key");
        return NULL;
    }
    const lp_gguf_value *v = lp_gguf_get(g, key);
    if (!v && required) *st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: key '%s' not found", g->path, key);
    return v;
}

static loupe_status type_err(const lp_gguf *g, const char *key, const lp_gguf_value *v, const char *want, lp_error *err) {
    if (v->type == LP_GGUF_ARRAY)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key '%s' is an array of %s, expected %s", g->path, key,
                       lp_gguf_vtype_name(v->v.arr.elem), want);
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key '%s' has type %s, expected %s", g->path, key, lp_gguf_vtype_name(v->type), want);
}

/* Integer value into [lo, hi]. */
static loupe_status get_int(const lp_gguf *g, const char *key, const lp_gguf_value *v, int64_t lo, uint64_t hi,
                            const char *want, int64_t *si, uint64_t *ui, lp_error *err) {
    if (!vt_is_int(v->type)) return type_err(g, key, v, "an integer", err);
    if (vt_is_signed(v->type)) {
        int64_t x = v->v.i64;
        if (x < lo || (x >= 0 && (uint64_t)x > hi))
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key '%s': value %" PRId64 " does not fit in %s", g->path, key, x, want);
        *si = x;
        *ui = (uint64_t)x;
    } else {
        uint64_t x = v->v.u64;
        if (x > hi)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: key '%s': value %" PRIu64 " does not fit in %s", g->path, key, x, want);
        *si = (int64_t)x;
        *ui = x;
    }
    return LOUPE_OK;
}

static loupe_status get_u32(const lp_gguf *g, const char *key, uint32_t *out, bool req, lp_error *err) {
    loupe_status st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_u32: NULL out");
    const lp_gguf_value *v = lookup(g, key, req, &st, err);
    if (!v) return st;
    int64_t si;
    uint64_t ui;
    if ((st = get_int(g, key, v, 0, UINT32_MAX, "u32", &si, &ui, err))) return st;
    *out = (uint32_t)ui;
    return LOUPE_OK;
}

static loupe_status get_f32(const lp_gguf *g, const char *key, float *out, bool req, lp_error *err) {
    loupe_status st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_f32: NULL out");
    const lp_gguf_value *v = lookup(g, key, req, &st, err);
    if (!v) return st;
    if (v->type != LP_GGUF_FLOAT32 && v->type != LP_GGUF_FLOAT64) return type_err(g, key, v, "f32 or f64", err);
    *out = (float)v->v.f64;
    return LOUPE_OK;
}

static loupe_status get_bool(const lp_gguf *g, const char *key, bool *out, bool req, lp_error *err) {
    loupe_status st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_bool: NULL out");
    const lp_gguf_value *v = lookup(g, key, req, &st, err);
    if (!v) return st;
    if (v->type != LP_GGUF_BOOL) return type_err(g, key, v, "bool", err);
    *out = v->v.u64 != 0;
    return LOUPE_OK;
}

static loupe_status get_str(const lp_gguf *g, const char *key, const char **out, bool req, lp_error *err) {
    loupe_status st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_str: NULL out");
    const lp_gguf_value *v = lookup(g, key, req, &st, err);
    if (!v) return st;
    if (v->type != LP_GGUF_STRING) return type_err(g, key, v, "str", err);
    *out = v->v.str.s;
    return LOUPE_OK;
}

loupe_status lp_gguf_get_u32(const lp_gguf *g, const char *key, uint32_t *out, lp_error *err) { return get_u32(g, key, out, true, err); }
loupe_status lp_gguf_get_u32_opt(const lp_gguf *g, const char *key, uint32_t *out, lp_error *err) { return get_u32(g, key, out, false, err); }
loupe_status lp_gguf_get_f32(const lp_gguf *g, const char *key, float *out, lp_error *err) { return get_f32(g, key, out, true, err); }
loupe_status lp_gguf_get_f32_opt(const lp_gguf *g, const char *key, float *out, lp_error *err) { return get_f32(g, key, out, false, err); }
loupe_status lp_gguf_get_bool(const lp_gguf *g, const char *key, bool *out, lp_error *err) { return get_bool(g, key, out, true, err); }
loupe_status lp_gguf_get_bool_opt(const lp_gguf *g, const char *key, bool *out, lp_error *err) { return get_bool(g, key, out, false, err); }
loupe_status lp_gguf_get_str(const lp_gguf *g, const char *key, const char **out, lp_error *err) { return get_str(g, key, out, true, err); }
loupe_status lp_gguf_get_str_opt(const lp_gguf *g, const char *key, const char **out, lp_error *err) { return get_str(g, key, out, false, err); }

loupe_status lp_gguf_get_i64(const lp_gguf *g, const char *key, int64_t *out, lp_error *err) {
    loupe_status st;
    const lp_gguf_value *v = lookup(g, key, true, &st, err);
    if (!v) return st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_i64: NULL out");
    int64_t si;
    uint64_t ui;
    if ((st = get_int(g, key, v, INT64_MIN, INT64_MAX, "i64", &si, &ui, err))) return st;
    *out = si;
    return LOUPE_OK;
}

loupe_status lp_gguf_get_arr(const lp_gguf *g, const char *key, lp_gguf_vtype elem, const lp_gguf_value **out, lp_error *err) {
    loupe_status st;
    const lp_gguf_value *v = lookup(g, key, true, &st, err);
    if (!v) return st;
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_get_arr: NULL out");
    char want[32];
    snprintf(want, sizeof want, "an array of %s", lp_gguf_vtype_name(elem));
    if (v->type != LP_GGUF_ARRAY || v->v.arr.elem != elem) return type_err(g, key, v, want, err);
    *out = v;
    return LOUPE_OK;
}

int64_t lp_gguf_tensor_nelements(const lp_gguf_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < LP_GGUF_MAX_DIMS; d++) n *= t->ne[d]; /* checked for overflow at open */
    return n;
}

/* ---- printing ---- */

/* A string in quotes with escapes, cut after max bytes at a UTF-8 boundary. */
static void print_str(FILE *out, const char *s, uint64_t len, uint64_t max) {
    uint64_t n = len;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) n--;
    }
    fputc('"', out);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c == '\n') fputs("\\n", out);
        else if (c == '\t') fputs("\\t", out);
        else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    fputc('"', out);
    if (n < len) fprintf(out, "... (%" PRIu64 " bytes)", len);
}

/* Shortest %g that reads back as the same value (0.1f prints as 0.1, not 0.100000001). */
static void print_f32(FILE *out, float x) {
    char b[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, x);
        if (strtof(b, NULL) == x) break;
    }
    fputs(b, out);
}
static void print_f64(FILE *out, double x) {
    char b[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, x);
        if (strtod(b, NULL) == x) break;
    }
    fputs(b, out);
}

static void print_scalar(FILE *out, uint32_t type, const void *p) {
    switch (type) {
    case LP_GGUF_UINT8:  fprintf(out, "%u", *(const uint8_t *)p); break;
    case LP_GGUF_INT8:   fprintf(out, "%d", *(const int8_t *)p); break;
    case LP_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); fprintf(out, "%u", x); break; }
    case LP_GGUF_INT16:  { int16_t x;  memcpy(&x, p, 2); fprintf(out, "%d", x); break; }
    case LP_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); fprintf(out, "%" PRIu32, x); break; }
    case LP_GGUF_INT32:  { int32_t x;  memcpy(&x, p, 4); fprintf(out, "%" PRId32, x); break; }
    case LP_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); fprintf(out, "%" PRIu64, x); break; }
    case LP_GGUF_INT64:  { int64_t x;  memcpy(&x, p, 8); fprintf(out, "%" PRId64, x); break; }
    case LP_GGUF_FLOAT32:{ float x;    memcpy(&x, p, 4); print_f32(out, x); break; }
    case LP_GGUF_FLOAT64:{ double x;   memcpy(&x, p, 8); print_f64(out, x); break; }
    case LP_GGUF_BOOL:   fputs(*(const uint8_t *)p ? "true" : "false", out); break;
    default: fputs("?", out);
    }
}

#define PRINT_MAX_ELEMS 8

/* Array elements, the first few only: `1, 2, 3, ...`; nested arrays in []. */
static void print_elems(FILE *out, const lp_gguf_value *v) {
    uint64_t n = v->v.arr.n, shown = n < PRINT_MAX_ELEMS ? n : PRINT_MAX_ELEMS;
    uint32_t e = v->v.arr.elem;
    for (uint64_t i = 0; i < shown; i++) {
        if (i) fputs(", ", out);
        if (e == LP_GGUF_STRING) print_str(out, v->v.arr.strs[i].s, v->v.arr.strs[i].len, 40);
        else if (e == LP_GGUF_ARRAY) {
            fputc('[', out);
            print_elems(out, &v->v.arr.items[i]);
            fputc(']', out);
        } else print_scalar(out, e, (const uint8_t *)v->v.arr.data + i * VT_SIZE[e]);
    }
    if (shown < n) fputs(shown ? ", ..." : "...", out);
}

static void print_value(FILE *out, const lp_gguf_value *v) {
    switch (v->type) {
    case LP_GGUF_STRING: fputs("str   ", out); print_str(out, v->v.str.s, v->v.str.len, 200); break;
    case LP_GGUF_ARRAY:
        fprintf(out, "[arr %s \xc3\x97 %" PRIu64 "] ", lp_gguf_vtype_name(v->v.arr.elem), v->v.arr.n);
        print_elems(out, v);
        break;
    case LP_GGUF_FLOAT32: fputs("f32   ", out); print_f32(out, (float)v->v.f64); break;
    case LP_GGUF_FLOAT64: fputs("f64   ", out); print_f64(out, v->v.f64); break;
    case LP_GGUF_BOOL: fprintf(out, "%-5s %s", "bool", v->v.u64 ? "true" : "false"); break;
    default:
        if (vt_is_signed(v->type)) fprintf(out, "%-5s %" PRId64, VT_NAME[v->type], v->v.i64);
        else fprintf(out, "%-5s %" PRIu64, lp_gguf_vtype_name(v->type), v->v.u64);
    }
}

void lp_gguf_print(const lp_gguf *g, FILE *out) {
    if (!g || !out) return;
    fprintf(out, "%s: GGUF v%" PRIu32 ", %" PRIu64 " bytes, alignment %" PRIu64 ", %" PRIu64 " keys, %" PRIu64
                 " tensors, data at offset %" PRIu64 "\n",
            g->path, g->version, g->file_size, g->alignment, g->n_kv, g->n_tensors, g->data_offset);
    int w = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        size_t l = strlen(g->kv[i].key);
        if ((int)l > w) w = l > 48 ? 48 : (int)l;
    }
    fprintf(out, "\nmetadata:\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        fprintf(out, "  %-*s  ", w, g->kv[i].key);
        print_value(out, &g->kv[i].val);
        fputc('\n', out);
    }
    w = 4;
    uint64_t total = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        size_t l = strlen(g->tensors[i].name);
        if ((int)l > w) w = l > 48 ? 48 : (int)l;
        total += g->tensors[i].nbytes;
    }
    fprintf(out, "\ntensors: %" PRIu64 " (%" PRIu64 " bytes)\n", g->n_tensors, total);
    if (!g->n_tensors) return;
    /* shape column as wide as the widest "[a, b, c, d]" */
    char(*shapes)[96] = malloc((size_t)g->n_tensors * sizeof *shapes);
    int sw = 5;
    for (uint64_t i = 0; shapes && i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        int n = snprintf(shapes[i], sizeof shapes[i], "[");
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += snprintf(shapes[i] + n, sizeof shapes[i] - (size_t)n, d ? ", %" PRId64 : "%" PRId64, t->ne[d]);
        snprintf(shapes[i] + n, sizeof shapes[i] - (size_t)n, "]"); /* 4 × 20 digits fit in 96 */
        if (n + 1 > sw) sw = n + 1;
    }
    fprintf(out, "  %6s  %-*s  %-8s  %-*s  %14s  %14s\n", "#", w, "name", "type", sw, "shape", "bytes", "offset");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        const char *tn = lp_type_name(t->type);
        fprintf(out, "  %6" PRIu64 "  %-*s  %-8s  %-*s  %14" PRIu64 "  %14" PRIu64 "\n", i, w, t->name, tn ? tn : "?", sw,
                shapes ? shapes[i] : "?", t->nbytes, t->offset);
    }
    free(shapes);
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    lp_type type;
    uint32_t n_dims;
    int64_t ne[LP_GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
    const void *data;
    lp_gguf_tensor_fill fill; /* or: produce the bytes at write time */
    void *fill_ctx;
} wtensor;

struct lp_gguf_writer {
    lp_gguf_kv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    loupe_status sticky; /* failure in a call that cannot report it (set_alignment) */
};

lp_gguf_writer *lp_gguf_writer_new(void) { return calloc(1, sizeof(lp_gguf_writer)); }

void lp_gguf_writer_free(lp_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        value_free(&w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

static bool grow(void **p, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return true;
    size_t nc = *cap ? *cap * 2 : 16;
    if (nc > SIZE_MAX / elem) return false;
    void *q = realloc(*p, nc * elem);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

/* Deep copy with validation (types known, sizes representable, depth bounded). */
static loupe_status value_copy(lp_gguf_value *dst, const lp_gguf_value *src, int depth) {
    memset(dst, 0, sizeof *dst);
    if ((unsigned)src->type >= LP_GGUF_VTYPE_COUNT) return LOUPE_ERR_INVALID_ARG;
    dst->type = src->type;
    if (src->type == LP_GGUF_STRING) {
        if (!src->v.str.s && src->v.str.len) return LOUPE_ERR_INVALID_ARG;
        if (src->v.str.len >= SIZE_MAX) return LOUPE_ERR_LIMIT;
        dst->v.str.s = malloc((size_t)src->v.str.len + 1);
        if (!dst->v.str.s) return LOUPE_ERR_NOMEM;
        if (src->v.str.len) memcpy(dst->v.str.s, src->v.str.s, (size_t)src->v.str.len);
        dst->v.str.s[src->v.str.len] = '\0';
        dst->v.str.len = src->v.str.len;
        return LOUPE_OK;
    }
    if (src->type != LP_GGUF_ARRAY) {
        dst->v = src->v;
        if (src->type == LP_GGUF_BOOL) dst->v.u64 = src->v.u64 != 0;
        return LOUPE_OK;
    }
    if (depth > LP_GGUF_MAX_DEPTH) return LOUPE_ERR_LIMIT;
    uint32_t e = src->v.arr.elem;
    uint64_t n = src->v.arr.n;
    if (e >= LP_GGUF_VTYPE_COUNT) return LOUPE_ERR_INVALID_ARG;
    dst->v.arr.elem = (lp_gguf_vtype)e;
    if (n == 0) return LOUPE_OK;
    if (vt_is_scalar(e)) {
        uint64_t nb;
        if (!src->v.arr.data) return LOUPE_ERR_INVALID_ARG;
        if (__builtin_mul_overflow(n, (uint64_t)VT_SIZE[e], &nb) || nb > SIZE_MAX) return LOUPE_ERR_LIMIT;
        if (!(dst->v.arr.data = malloc((size_t)nb))) return LOUPE_ERR_NOMEM;
        memcpy(dst->v.arr.data, src->v.arr.data, (size_t)nb);
        dst->v.arr.n = n;
        if (e == LP_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++) ((uint8_t *)dst->v.arr.data)[i] = ((uint8_t *)dst->v.arr.data)[i] != 0;
        return LOUPE_OK;
    }
    if (n > SIZE_MAX / sizeof(lp_gguf_value)) return LOUPE_ERR_LIMIT;
    if (e == LP_GGUF_STRING) {
        if (!src->v.arr.strs) return LOUPE_ERR_INVALID_ARG;
        if (!(dst->v.arr.strs = calloc((size_t)n, sizeof(lp_gguf_str)))) return LOUPE_ERR_NOMEM;
        dst->v.arr.n = n;
        for (uint64_t i = 0; i < n; i++) {
            lp_gguf_value s = {.type = LP_GGUF_STRING}, d;
            s.v.str.s = src->v.arr.strs[i].s;
            s.v.str.len = src->v.arr.strs[i].len;
            loupe_status st = value_copy(&d, &s, depth);
            if (st) return st;
            dst->v.arr.strs[i].s = d.v.str.s;
            dst->v.arr.strs[i].len = d.v.str.len;
        }
        return LOUPE_OK;
    }
    if (!src->v.arr.items) return LOUPE_ERR_INVALID_ARG;
    if (!(dst->v.arr.items = calloc((size_t)n, sizeof(lp_gguf_value)))) return LOUPE_ERR_NOMEM;
    dst->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        if (src->v.arr.items[i].type != LP_GGUF_ARRAY) return LOUPE_ERR_INVALID_ARG;
        loupe_status st = value_copy(&dst->v.arr.items[i], &src->v.arr.items[i], depth + 1);
        if (st) return st;
    }
    return LOUPE_OK;
}

/* Takes ownership of *v (freed on failure). An existing key keeps its place. */
static loupe_status put(lp_gguf_writer *w, const char *key, lp_gguf_value *v) {
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            value_free(&w->kv[i].val);
            w->kv[i].val = *v;
            return LOUPE_OK;
        }
    }
    char *k = strdup(key);
    if (!k || !grow((void **)&w->kv, &w->cap_kv, w->n_kv, sizeof *w->kv)) {
        free(k);
        value_free(v);
        return LOUPE_ERR_NOMEM;
    }
    w->kv[w->n_kv].key = k;
    w->kv[w->n_kv].val = *v;
    w->n_kv++;
    return LOUPE_OK;
}

loupe_status lp_gguf_writer_set_value(lp_gguf_writer *w, const char *key, const lp_gguf_value *v) {
    if (!w || !key || !*key || !v) return LOUPE_ERR_INVALID_ARG;
    lp_gguf_value c;
    loupe_status st = value_copy(&c, v, 1);
    if (st) {
        value_free(&c);
        return st;
    }
    return put(w, key, &c);
}

#define SET_SCALAR(fn, ctype, vt, field)                                         \
    loupe_status fn(lp_gguf_writer *w, const char *key, ctype x) {               \
        lp_gguf_value v = {.type = vt};                                          \
        v.v.field = x;                                                           \
        return lp_gguf_writer_set_value(w, key, &v);                             \
    }
SET_SCALAR(lp_gguf_writer_set_u8, uint8_t, LP_GGUF_UINT8, u64)
SET_SCALAR(lp_gguf_writer_set_i8, int8_t, LP_GGUF_INT8, i64)
SET_SCALAR(lp_gguf_writer_set_u16, uint16_t, LP_GGUF_UINT16, u64)
SET_SCALAR(lp_gguf_writer_set_i16, int16_t, LP_GGUF_INT16, i64)
SET_SCALAR(lp_gguf_writer_set_u32, uint32_t, LP_GGUF_UINT32, u64)
SET_SCALAR(lp_gguf_writer_set_i32, int32_t, LP_GGUF_INT32, i64)
SET_SCALAR(lp_gguf_writer_set_u64, uint64_t, LP_GGUF_UINT64, u64)
SET_SCALAR(lp_gguf_writer_set_i64, int64_t, LP_GGUF_INT64, i64)
SET_SCALAR(lp_gguf_writer_set_f32, float, LP_GGUF_FLOAT32, f64)
SET_SCALAR(lp_gguf_writer_set_f64, double, LP_GGUF_FLOAT64, f64)
SET_SCALAR(lp_gguf_writer_set_bool, bool, LP_GGUF_BOOL, u64)

loupe_status lp_gguf_writer_set_str(lp_gguf_writer *w, const char *key, const char *s) {
    if (!s) return LOUPE_ERR_INVALID_ARG;
    lp_gguf_value v = {.type = LP_GGUF_STRING};
    v.v.str.s = (char *)s;
    v.v.str.len = strlen(s);
    return lp_gguf_writer_set_value(w, key, &v);
}

loupe_status lp_gguf_writer_set_arr(lp_gguf_writer *w, const char *key, lp_gguf_vtype elem, const void *data, uint64_t n) {
    if (!vt_is_scalar(elem)) return LOUPE_ERR_INVALID_ARG; /* strings: _arr_str; arrays: _value */
    lp_gguf_value v = {.type = LP_GGUF_ARRAY};
    v.v.arr.elem = elem;
    v.v.arr.n = n;
    v.v.arr.data = (void *)data;
    return lp_gguf_writer_set_value(w, key, &v);
}

loupe_status lp_gguf_writer_set_arr_str(lp_gguf_writer *w, const char *key, const char *const *strs, uint64_t n) {
    if (!w || !key || !*key || (!strs && n)) return LOUPE_ERR_INVALID_ARG;
    if (n > SIZE_MAX / sizeof(lp_gguf_str)) return LOUPE_ERR_LIMIT;
    lp_gguf_value v = {.type = LP_GGUF_ARRAY};
    v.v.arr.elem = LP_GGUF_STRING;
    if (n) {
        if (!(v.v.arr.strs = calloc((size_t)n, sizeof(lp_gguf_str)))) return LOUPE_ERR_NOMEM;
        v.v.arr.n = n;
        for (uint64_t i = 0; i < n; i++) {
            if (!strs[i] || !(v.v.arr.strs[i].s = strdup(strs[i]))) {
                loupe_status st = strs[i] ? LOUPE_ERR_NOMEM : LOUPE_ERR_INVALID_ARG;
                value_free(&v);
                return st;
            }
            v.v.arr.strs[i].len = strlen(strs[i]);
        }
    }
    return put(w, key, &v);
}

void lp_gguf_writer_set_alignment(lp_gguf_writer *w, uint32_t alignment) {
    if (!w) return;
    /* validity is checked by lp_gguf_writer_write, which can name the path */
    loupe_status st = lp_gguf_writer_set_u32(w, KEY_ALIGNMENT, alignment);
    if (st && !w->sticky) w->sticky = st;
}

static loupe_status add_tensor(lp_gguf_writer *w, const char *name, lp_type type, uint32_t n_dims, const int64_t *ne,
                               const void *data, lp_gguf_tensor_fill fill, void *fill_ctx);

loupe_status lp_gguf_writer_add_tensor(lp_gguf_writer *w, const char *name, lp_type type, uint32_t n_dims,
                                       const int64_t *ne, const void *data) {
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL);
}

loupe_status lp_gguf_writer_add_tensor_fn(lp_gguf_writer *w, const char *name, lp_type type, uint32_t n_dims,
                                          const int64_t *ne, lp_gguf_tensor_fill fill, void *ctx) {
    if (!fill) return LOUPE_ERR_INVALID_ARG;
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, ctx);
}

static loupe_status add_tensor(lp_gguf_writer *w, const char *name, lp_type type, uint32_t n_dims, const int64_t *ne,
                               const void *data, lp_gguf_tensor_fill fill, void *fill_ctx) {
    if (!w || !name || !ne || n_dims < 1 || n_dims > LP_GGUF_MAX_DIMS || !lp_type_valid((uint32_t)type)) return LOUPE_ERR_INVALID_ARG;
    size_t len = strlen(name);
    if (len == 0 || len > GGUF_NAME_MAX) return LOUPE_ERR_INVALID_ARG; /* ggml refuses longer names */
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return LOUPE_ERR_INVALID_ARG;
    wtensor t = {.type = type, .n_dims = n_dims, .data = data, .fill = fill, .fill_ctx = fill_ctx};
    int64_t bs = lp_type_block_size(type);
    uint64_t bb = lp_type_block_bytes(type);
    for (int d = 0; d < LP_GGUF_MAX_DIMS; d++) {
        t.ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 0) return LOUPE_ERR_INVALID_ARG;
    }
    if (bs <= 0 || t.ne[0] % bs != 0) return LOUPE_ERR_INVALID_ARG;
    uint64_t nb = (uint64_t)(t.ne[0] / bs), nel = 1;
    bool ovf = __builtin_mul_overflow(nb, bb, &nb);
    for (int d = 0; d < LP_GGUF_MAX_DIMS; d++) {
        if (d) ovf |= __builtin_mul_overflow(nb, (uint64_t)t.ne[d], &nb);
        ovf |= __builtin_mul_overflow(nel, (uint64_t)t.ne[d], &nel);
    }
    if (ovf || nel > INT64_MAX) return LOUPE_ERR_LIMIT;
    if (nb && !data && !fill) return LOUPE_ERR_INVALID_ARG;
    t.nbytes = nb;
    if (!(t.name = strdup(name)) || !grow((void **)&w->t, &w->cap_t, w->n_t, sizeof *w->t)) {
        free(t.name);
        return LOUPE_ERR_NOMEM;
    }
    w->t[w->n_t++] = t;
    return LOUPE_OK;
}

/* Buffered output that counts bytes and remembers the first failure. */
typedef struct wr { FILE *f; uint64_t n; bool bad; int err; } wr;

static void w_bytes(wr *o, const void *p, uint64_t n) {
    if (o->bad || n == 0) return;
    if (fwrite(p, 1, (size_t)n, o->f) != n) {
        o->bad = true;
        o->err = errno ? errno : EIO;
    }
    o->n += n;
}
static void w_u32(wr *o, uint32_t x) { w_bytes(o, &x, 4); }
static void w_u64(wr *o, uint64_t x) { w_bytes(o, &x, 8); }
static void w_str(wr *o, const char *s, uint64_t len) { w_u64(o, len); w_bytes(o, s, len); }
static void w_pad(wr *o, uint64_t align) {
    static const uint8_t zeros[256];
    while (!o->bad && o->n % align) {
        uint64_t k = align - o->n % align;
        w_bytes(o, zeros, k < sizeof zeros ? k : sizeof zeros);
    }
}

/* Array body: elem, n, elements (nested arrays repeat the body). */
static void w_array(wr *o, const lp_gguf_value *v) {
    uint32_t e = v->v.arr.elem;
    w_u32(o, e);
    w_u64(o, v->v.arr.n);
    if (vt_is_scalar(e)) w_bytes(o, v->v.arr.data, v->v.arr.n * VT_SIZE[e]);
    else if (e == LP_GGUF_STRING)
        for (uint64_t i = 0; i < v->v.arr.n; i++) w_str(o, v->v.arr.strs[i].s, v->v.arr.strs[i].len);
    else
        for (uint64_t i = 0; i < v->v.arr.n; i++) w_array(o, &v->v.arr.items[i]);
}

static void w_value(wr *o, const lp_gguf_value *v) {
    switch (v->type) {
    case LP_GGUF_UINT8: case LP_GGUF_BOOL: { uint8_t x = (uint8_t)v->v.u64; w_bytes(o, &x, 1); break; }
    case LP_GGUF_INT8:   { int8_t x = (int8_t)v->v.i64; w_bytes(o, &x, 1); break; }
    case LP_GGUF_UINT16: { uint16_t x = (uint16_t)v->v.u64; w_bytes(o, &x, 2); break; }
    case LP_GGUF_INT16:  { int16_t x = (int16_t)v->v.i64; w_bytes(o, &x, 2); break; }
    case LP_GGUF_UINT32: w_u32(o, (uint32_t)v->v.u64); break;
    case LP_GGUF_INT32:  { int32_t x = (int32_t)v->v.i64; w_bytes(o, &x, 4); break; }
    case LP_GGUF_UINT64: w_u64(o, v->v.u64); break;
    case LP_GGUF_INT64:  w_bytes(o, &v->v.i64, 8); break;
    case LP_GGUF_FLOAT32:{ float x = (float)v->v.f64; w_bytes(o, &x, 4); break; }
    case LP_GGUF_FLOAT64: w_bytes(o, &v->v.f64, 8); break;
    case LP_GGUF_STRING: w_str(o, v->v.str.s, v->v.str.len); break;
    case LP_GGUF_ARRAY:  w_array(o, v); break;
    default: o->bad = true; o->err = EINVAL;
    }
}

loupe_status lp_gguf_writer_write(lp_gguf_writer *w, const char *path, lp_error *err) {
    char eb[128];
    if (!w || !path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_gguf_writer_write: NULL writer or path");
    if (w->sticky) return lp_fail(err, w->sticky, "%s: an earlier writer call failed (%s)", path, loupe_status_str(w->sticky));

    uint64_t align = LP_GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, KEY_ALIGNMENT) != 0) continue;
        const lp_gguf_value *v = &w->kv[i].val;
        if (v->type != LP_GGUF_UINT32 || !is_pow2(v->v.u64))
            return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: key '" KEY_ALIGNMENT "' must be a u32 nonzero power of two", path);
        align = v->v.u64;
    }
    /* Tensors back to back, each padded to the alignment (the layout ggml expects). */
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        uint64_t padded;
        if (__builtin_add_overflow(w->t[i].nbytes, align - 1, &padded) ||
            __builtin_add_overflow(off, padded & ~(align - 1), &off))
            return lp_fail(err, LOUPE_ERR_LIMIT, "%s: tensor '%s': data section size overflows", path, w->t[i].name);
    }

    lp_outfile out;
    loupe_status st = lp_outfile_open(&out, path, err);
    if (st != LOUPE_OK) return st;
    wr o = {.f = out.f};

    w_bytes(&o, GGUF_MAGIC, 4);
    w_u32(&o, 3);
    w_u64(&o, w->n_t);
    w_u64(&o, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        w_str(&o, w->kv[i].key, strlen(w->kv[i].key));
        w_u32(&o, w->kv[i].val.type);
        w_value(&o, &w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        w_str(&o, t->name, strlen(t->name));
        w_u32(&o, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) w_u64(&o, (uint64_t)t->ne[d]);
        w_u32(&o, (uint32_t)t->type);
        w_u64(&o, t->offset);
    }
    w_pad(&o, align);
    uint8_t *chunk = NULL;
    for (size_t i = 0; i < w->n_t && !o.bad; i++) {
        const wtensor *t = &w->t[i];
        if (!t->fill) w_bytes(&o, t->data, t->nbytes);
        else {
            /* produced piece by piece: a converter never holds a whole model */
            if (!chunk && !(chunk = malloc(LP_GGUF_FILL_CHUNK))) {
                lp_outfile_abort(&out);
                return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
            }
            for (uint64_t at = 0; at < t->nbytes && !o.bad;) {
                size_t n = t->nbytes - at < LP_GGUF_FILL_CHUNK ? (size_t)(t->nbytes - at) : LP_GGUF_FILL_CHUNK;
                if ((st = t->fill(t->fill_ctx, at, chunk, n, err)) != LOUPE_OK) {
                    free(chunk);
                    lp_outfile_abort(&out);
                    return lp_error_prefix(err, "%s: tensor %s", path, t->name);
                }
                w_bytes(&o, chunk, n);
                at += n;
            }
        }
        w_pad(&o, align);
    }
    free(chunk);

    if (o.bad) {
        lp_outfile_abort(&out);
        return lp_fail(err, LOUPE_ERR_IO, "%s: write failed: %s", path, lp_strerror(o.err, eb, sizeof eb));
    }
    return lp_outfile_commit(&out, err);
}

bool lp_gguf_arr_int(const lp_gguf_value *v, uint64_t i, int64_t *out) {
    if (!v || v->type != LP_GGUF_ARRAY || i >= v->v.arr.n || !v->v.arr.data) return false;
    const void *d = v->v.arr.data;
    switch (v->v.arr.elem) {
    case LP_GGUF_UINT8: *out = ((const uint8_t *)d)[i]; return true;
    case LP_GGUF_INT8: *out = ((const int8_t *)d)[i]; return true;
    case LP_GGUF_UINT16: *out = ((const uint16_t *)d)[i]; return true;
    case LP_GGUF_INT16: *out = ((const int16_t *)d)[i]; return true;
    case LP_GGUF_UINT32: *out = ((const uint32_t *)d)[i]; return true;
    case LP_GGUF_INT32: *out = ((const int32_t *)d)[i]; return true;
    case LP_GGUF_INT64: *out = ((const int64_t *)d)[i]; return true;
    case LP_GGUF_UINT64: {
        uint64_t u = ((const uint64_t *)d)[i];
        if (u > INT64_MAX) return false;
        *out = (int64_t)u;
        return true;
    }
    default: return false;
    }
}
