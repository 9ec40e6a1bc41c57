/* core/gguf.h — GGUF v3 reading (mmap) and writing.
 *
 * File layout (little-endian):
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv × (string key, u32 value type, value)
 *   n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 type, u64 offset)
 *   padding to general.alignment (default 32) | tensor data
 * A string is u64 length + bytes (no NUL). An array is u32 element type +
 * u64 count + elements; elements may themselves be arrays.
 *
 * The reader validates everything against the file size before use: no count,
 * length or offset is trusted, arithmetic is overflow-checked, and every
 * failure names the file, the key or tensor, and the reason. Metadata is
 * copied out; tensor data stays in the read-only mapping. */
#ifndef LP_GGUF_H
#define LP_GGUF_H

#include "error.h"
#include "types.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lp_gguf_vtype {
    LP_GGUF_UINT8 = 0,
    LP_GGUF_INT8 = 1,
    LP_GGUF_UINT16 = 2,
    LP_GGUF_INT16 = 3,
    LP_GGUF_UINT32 = 4,
    LP_GGUF_INT32 = 5,
    LP_GGUF_FLOAT32 = 6,
    LP_GGUF_BOOL = 7,
    LP_GGUF_STRING = 8,
    LP_GGUF_ARRAY = 9,
    LP_GGUF_UINT64 = 10,
    LP_GGUF_INT64 = 11,
    LP_GGUF_FLOAT64 = 12,
    LP_GGUF_VTYPE_COUNT = 13
} lp_gguf_vtype;

const char *lp_gguf_vtype_name(lp_gguf_vtype t); /* "u32", "str", "arr", ... */

#define LP_GGUF_DEFAULT_ALIGNMENT 32
#define LP_GGUF_MAX_DIMS 4
/* Arrays of arrays nest at most this deep (ggml itself reads no nesting at all). */
#define LP_GGUF_MAX_DEPTH 8

/* A metadata value. Strings are NUL-terminated copies (len excludes the NUL;
 * embedded NULs are kept). Arrays hold either `n` values of a scalar type
 * packed natively in `data` (u8..f64, bool as uint8_t), or `n` strings in
 * `strs`, or `n` nested values in `items`. */
typedef struct lp_gguf_value {
    lp_gguf_vtype type;
    union {
        uint64_t u64;  /* UINT8/16/32/64, BOOL */
        int64_t i64;   /* INT8/16/32/64 */
        double f64;    /* FLOAT32/64 */
        struct { char *s; uint64_t len; } str;
        struct {
            lp_gguf_vtype elem;
            uint64_t n;
            void *data;                 /* scalar elements                   */
            struct lp_gguf_str *strs;   /* elem == STRING                    */
            struct lp_gguf_value *items;/* elem == ARRAY                     */
        } arr;
    } v;
} lp_gguf_value;

typedef struct lp_gguf_str {
    char *s;
    uint64_t len;
} lp_gguf_str;

typedef struct lp_gguf_kv {
    char *key;
    lp_gguf_value val;
} lp_gguf_kv;

typedef struct lp_gguf_tensor {
    char *name;
    uint32_t n_dims;
    int64_t ne[LP_GGUF_MAX_DIMS]; /* ne[0] is the row length (ggml order); unused dims are 1 */
    lp_type type;
    uint64_t offset;              /* relative to the data section */
    uint64_t nbytes;
    const void *data;             /* into the mapping (NULL if not mapped)   */
} lp_gguf_tensor;

typedef struct lp_gguf {
    char *path;
    uint32_t version;
    uint64_t alignment;
    uint64_t n_kv;
    lp_gguf_kv *kv;
    uint64_t n_tensors;
    lp_gguf_tensor *tensors;
    uint64_t data_offset;  /* file offset of the data section */
    uint64_t file_size;
    const uint8_t *map;    /* whole file mapping, or the buffer for _open_mem */
    size_t map_size;
    bool owns_map;
} lp_gguf;

/* Open and validate a file; maps it read-only. On error returns NULL and fills err. */
lp_gguf *lp_gguf_open(const char *path, lp_error *err);
/* Same on a caller buffer that must outlive the result (fuzzing, tests). `name` is used in messages. */
lp_gguf *lp_gguf_open_mem(const void *buf, size_t size, const char *name, lp_error *err);
void lp_gguf_close(lp_gguf *g);

/* Lookups: index or -1. */
int64_t lp_gguf_find_key(const lp_gguf *g, const char *key);
int64_t lp_gguf_find_tensor(const lp_gguf *g, const char *name);
const lp_gguf_value *lp_gguf_get(const lp_gguf *g, const char *key); /* NULL if absent */

/* Typed getters. Integers accept any integer type whose value fits; floats
 * accept f32/f64. Return LOUPE_OK, or fill err (naming file and key) with
 * LOUPE_ERR_FORMAT for a missing key (unless the *_opt form) or wrong type. */
loupe_status lp_gguf_get_u32(const lp_gguf *g, const char *key, uint32_t *out, lp_error *err);
loupe_status lp_gguf_get_i64(const lp_gguf *g, const char *key, int64_t *out, lp_error *err);
loupe_status lp_gguf_get_f32(const lp_gguf *g, const char *key, float *out, lp_error *err);
loupe_status lp_gguf_get_bool(const lp_gguf *g, const char *key, bool *out, lp_error *err);
loupe_status lp_gguf_get_str(const lp_gguf *g, const char *key, const char **out, lp_error *err);
/* _opt: leave *out unchanged and return OK when the key is absent. */
loupe_status lp_gguf_get_u32_opt(const lp_gguf *g, const char *key, uint32_t *out, lp_error *err);
loupe_status lp_gguf_get_f32_opt(const lp_gguf *g, const char *key, float *out, lp_error *err);
loupe_status lp_gguf_get_bool_opt(const lp_gguf *g, const char *key, bool *out, lp_error *err);
loupe_status lp_gguf_get_str_opt(const lp_gguf *g, const char *key, const char **out, lp_error *err);
/* An array: its element type must be `elem`; returns the value. */
loupe_status lp_gguf_get_arr(const lp_gguf *g, const char *key, lp_gguf_vtype elem, const lp_gguf_value **out, lp_error *err);

/* Element i of a scalar integer array value (any of u8..i64, bool excluded),
 * widened to int64. false if the array holds no integers, i is out of range,
 * or a u64 element exceeds INT64_MAX. */
bool lp_gguf_arr_int(const lp_gguf_value *v, uint64_t i, int64_t *out);

/* Element count of a tensor. */
int64_t lp_gguf_tensor_nelements(const lp_gguf_tensor *t);

/* Print metadata and tensor table (what `loupe info` shows). Long arrays are
 * abbreviated to their first few elements. */
#include <stdio.h>
void lp_gguf_print(const lp_gguf *g, FILE *out);

/* ---- writer ----
 * Build in memory, then write. Tensor data is borrowed: it must stay valid
 * until lp_gguf_writer_write returns. Setting an existing key replaces its
 * value in place. Keys and tensors are written in insertion order, tensors
 * back to back with each padded to the alignment (the layout ggml writes).
 * The set/add calls return LOUPE_ERR_INVALID_ARG for unusable input (empty
 * key, unknown type, rows that are not whole blocks, duplicate or >63-byte
 * tensor name) and LOUPE_ERR_LIMIT for sizes that overflow or nest too deep. */
typedef struct lp_gguf_writer lp_gguf_writer;

lp_gguf_writer *lp_gguf_writer_new(void);
void lp_gguf_writer_free(lp_gguf_writer *w);
void lp_gguf_writer_set_alignment(lp_gguf_writer *w, uint32_t alignment); /* also writes general.alignment */
loupe_status lp_gguf_writer_set_u8(lp_gguf_writer *w, const char *key, uint8_t v);
loupe_status lp_gguf_writer_set_i8(lp_gguf_writer *w, const char *key, int8_t v);
loupe_status lp_gguf_writer_set_u16(lp_gguf_writer *w, const char *key, uint16_t v);
loupe_status lp_gguf_writer_set_i16(lp_gguf_writer *w, const char *key, int16_t v);
loupe_status lp_gguf_writer_set_u32(lp_gguf_writer *w, const char *key, uint32_t v);
loupe_status lp_gguf_writer_set_i32(lp_gguf_writer *w, const char *key, int32_t v);
loupe_status lp_gguf_writer_set_u64(lp_gguf_writer *w, const char *key, uint64_t v);
loupe_status lp_gguf_writer_set_i64(lp_gguf_writer *w, const char *key, int64_t v);
loupe_status lp_gguf_writer_set_f32(lp_gguf_writer *w, const char *key, float v);
loupe_status lp_gguf_writer_set_f64(lp_gguf_writer *w, const char *key, double v);
loupe_status lp_gguf_writer_set_bool(lp_gguf_writer *w, const char *key, bool v);
loupe_status lp_gguf_writer_set_str(lp_gguf_writer *w, const char *key, const char *v);
/* Scalar array: n elements of type elem packed natively (bool as uint8_t). */
loupe_status lp_gguf_writer_set_arr(lp_gguf_writer *w, const char *key, lp_gguf_vtype elem, const void *data, uint64_t n);
loupe_status lp_gguf_writer_set_arr_str(lp_gguf_writer *w, const char *key, const char *const *strs, uint64_t n);
/* Any value, including nested arrays (deep-copied). */
loupe_status lp_gguf_writer_set_value(lp_gguf_writer *w, const char *key, const lp_gguf_value *v);
/* ne in ggml order (ne[0] = row length). data: lp_row_size(type, ne[0]) * rows bytes. */
loupe_status lp_gguf_writer_add_tensor(lp_gguf_writer *w, const char *name, lp_type type,
                                       uint32_t n_dims, const int64_t *ne, const void *data);
/* A tensor whose bytes are produced while the file is written: fill(ctx,
 * offset, dst, n, err) writes bytes [offset, offset + n) of the tensor's
 * data (type rows as for add_tensor) into dst; calls come in ascending
 * offset order, n <= LP_GGUF_FILL_CHUNK, offsets chunk-aligned. A failure
 * status aborts the write (the target is left as it was) with err prefixed
 * by the path and the tensor name. */
#define LP_GGUF_FILL_CHUNK ((size_t)8 << 20)
typedef loupe_status (*lp_gguf_tensor_fill)(void *ctx, uint64_t offset, void *dst, size_t n, lp_error *err);
loupe_status lp_gguf_writer_add_tensor_fn(lp_gguf_writer *w, const char *name, lp_type type, uint32_t n_dims,
                                          const int64_t *ne, lp_gguf_tensor_fill fill, void *ctx);
/* Write the file; err names the path on failure. */
loupe_status lp_gguf_writer_write(lp_gguf_writer *w, const char *path, lp_error *err);

#endif
