/* core/safetensors.h — reading Hugging Face safetensors checkpoints, one
 * file or sharded, memory-mapped.
 *
 * File layout (little-endian):
 *   u64 N | N bytes of JSON header | data
 *   header: { "NAME": {"dtype": "F16", "shape": [rows, cols],
 *                      "data_offsets": [begin, end]}, ...,
 *             "__metadata__": {"format": "pt", ...} }   (optional)
 *   offsets are relative to the first byte after the header, end exclusive.
 * A sharded checkpoint has DIR/model.safetensors.index.json:
 *   { "metadata": {...}, "weight_map": { "NAME": "model-00001-of-00002.safetensors", ... } }
 *
 * Everything is validated against the file sizes before use: the header
 * length, JSON, every dtype, shape (product overflow, size = end − begin),
 * offsets inside the data, names unique across shards, and every name of the
 * index found in the shard it names. A failure names the file, the tensor and
 * the reason. Tensor data stays in the read-only mappings; lp_st_read_f32
 * converts rows of F32, F16 or BF16 (the dtypes a checkpoint's weights come
 * in) to f32. */
#ifndef LP_SAFETENSORS_H
#define LP_SAFETENSORS_H

#include "error.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LP_ST_MAX_DIMS 8
/* a header larger than this is refused (LOUPE_ERR_LIMIT); real ones are < 2 MiB */
#define LP_ST_MAX_HEADER (100u << 20)

typedef enum lp_st_dtype {
    LP_ST_F32 = 0,
    LP_ST_F16 = 1,
    LP_ST_BF16 = 2,
    LP_ST_F64,
    LP_ST_I64,
    LP_ST_I32,
    LP_ST_I16,
    LP_ST_I8,
    LP_ST_U8,
    LP_ST_BOOL,
    LP_ST_OTHER /* F8_*, U16, ...: listed, never converted */
} lp_st_dtype;

typedef struct lp_st_tensor {
    const char *name;     /* NUL-terminated, owned by the set */
    const char *file;     /* the shard's path, owned by the set */
    lp_st_dtype dtype;
    char dtype_name[12];  /* as written: "F16", "BF16", "F8_E4M3", ... */
    int n_dims;
    int64_t shape[LP_ST_MAX_DIMS]; /* row-major, PyTorch order: shape[n_dims-1] is the row length */
    int64_t n_elements;
    const uint8_t *data;  /* in the mapping */
    uint64_t n_bytes;
} lp_st_tensor;

typedef struct lp_safetensors lp_safetensors;

/* One .safetensors file. */
loupe_status lp_st_open_file(const char *path, lp_safetensors **out, lp_error *err);
/* A checkpoint directory: DIR/model.safetensors.index.json (sharded) if it
 * exists, else DIR/model.safetensors, else every DIR/ *.safetensors file
 * (sorted by name). A directory with only pytorch_model*.bin files is
 * LOUPE_ERR_UNSUPPORTED with a hint. */
loupe_status lp_st_open_dir(const char *dir, lp_safetensors **out, lp_error *err);
void lp_st_close(lp_safetensors *s);

int lp_st_count(const lp_safetensors *s);
const lp_st_tensor *lp_st_at(const lp_safetensors *s, int i); /* in file, then header order */
const lp_st_tensor *lp_st_find(const lp_safetensors *s, const char *name); /* NULL if absent */
/* Like find, but absence is LOUPE_ERR_FORMAT "NAME: missing tensor" naming
 * `where` (the checkpoint). */
loupe_status lp_st_get(const lp_safetensors *s, const char *name, const char *where, const lp_st_tensor **out,
                       lp_error *err);
/* Check the shape: n_dims dims equal to shape[] (a shape value < 0 matches
 * anything). The error names the tensor, its file, and both shapes. */
loupe_status lp_st_check_shape(const lp_st_tensor *t, int n_dims, const int64_t *shape, lp_error *err);

const char *lp_st_dtype_name(lp_st_dtype t);
size_t lp_st_dtype_size(lp_st_dtype t); /* 0 for LP_ST_OTHER */

/* Done with t: drop the whole pages of its data from this process's
 * resident set (madvise MADV_DONTNEED on the read-only mapping; a later
 * read faults them back in from the file). A converter calls it after each
 * tensor so that converting a 7B checkpoint does not show 14 GB resident. */
void lp_st_release(const lp_st_tensor *t);

/* Convert elements [first, first + n) of t to f32. F32, F16 and BF16 only;
 * anything else is LOUPE_ERR_UNSUPPORTED naming the tensor and its dtype. */
loupe_status lp_st_read_f32(const lp_st_tensor *t, int64_t first, int64_t n, float *dst, lp_error *err);

#endif
