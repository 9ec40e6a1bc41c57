/* core/safetensors.c — safetensors reading (see safetensors.h). */
#include "safetensors.h"
#include "fileio.h"
#include "types.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct st_file {
    char *path;
    const uint8_t *map;   /* whole file */
    size_t size;
} st_file;

struct lp_safetensors {
    st_file *files;
    int n_files;
    lp_st_tensor *t;      /* all tensors, file by file in header order */
    int n, cap;
    int *by_name;         /* indices into t sorted by name */
};

static const struct { const char *name; lp_st_dtype t; size_t size; } DTYPES[] = {
    {"F32", LP_ST_F32, 4}, {"F16", LP_ST_F16, 2}, {"BF16", LP_ST_BF16, 2}, {"F64", LP_ST_F64, 8},
    {"I64", LP_ST_I64, 8}, {"I32", LP_ST_I32, 4},  {"I16", LP_ST_I16, 2},   {"I8", LP_ST_I8, 1},
    {"U8", LP_ST_U8, 1},   {"BOOL", LP_ST_BOOL, 1},
    /* known but not converted: their sizes still check the offsets */
    {"U16", LP_ST_OTHER, 2}, {"U32", LP_ST_OTHER, 4}, {"U64", LP_ST_OTHER, 8},
    {"F8_E4M3", LP_ST_OTHER, 1}, {"F8_E5M2", LP_ST_OTHER, 1},
};

const char *lp_st_dtype_name(lp_st_dtype t) {
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].t == t && t != LP_ST_OTHER) return DTYPES[i].name;
    return "other";
}

size_t lp_st_dtype_size(lp_st_dtype t) {
    if (t == LP_ST_OTHER) return 0;
    for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
        if (DTYPES[i].t == t) return DTYPES[i].size;
    return 0;
}

void lp_st_close(lp_safetensors *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free((char *)s->t[i].name);
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map && s->files[i].size) munmap((void *)s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->files);
    free(s->t);
    free(s->by_name);
    free(s);
}

int lp_st_count(const lp_safetensors *s) { return s ? s->n : 0; }
const lp_st_tensor *lp_st_at(const lp_safetensors *s, int i) { return s && i >= 0 && i < s->n ? &s->t[i] : NULL; }

static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const lp_safetensors *s = ctx;
    return strcmp(s->t[*(const int *)a].name, s->t[*(const int *)b].name);
}

const lp_st_tensor *lp_st_find(const lp_safetensors *s, const char *name) {
    if (!s || !name) return NULL;
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(s->t[s->by_name[mid]].name, name);
        if (c == 0) return &s->t[s->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

loupe_status lp_st_get(const lp_safetensors *s, const char *name, const char *where, const lp_st_tensor **out,
                       lp_error *err) {
    *out = lp_st_find(s, name);
    if (!*out) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: missing tensor %s", where, name);
    return LOUPE_OK;
}

static void shape_text(int n, const int64_t *shape, char *buf, size_t cap) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < n && k < cap; i++) {
        if (shape[i] < 0) k += (size_t)snprintf(buf + k, cap - k, "%s*", i ? ", " : "");
        else k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

loupe_status lp_st_check_shape(const lp_st_tensor *t, int n_dims, const int64_t *shape, lp_error *err) {
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = false;
    if (ok) return LOUPE_OK;
    char a[128], b[128];
    shape_text(t->n_dims, t->shape, a, sizeof a);
    shape_text(n_dims, shape, b, sizeof b);
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s", t->file, t->name, a, b);
}

static loupe_status add_file(lp_safetensors *s, const char *path, int *index, lp_error *err) {
    st_file *nf = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *nf);
    if (!nf) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    s->files = nf;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof *f);
    if (!(f->path = strdup(path))) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    s->n_files++;
    *index = s->n_files - 1;

    char eb[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return lp_fail(err, LOUPE_ERR_IO, "%s: cannot open: %s", path, lp_strerror(errno, eb, sizeof eb));
    struct stat stt;
    if (fstat(fd, &stt) != 0 || !S_ISREG(stt.st_mode)) {
        close(fd);
        return lp_fail(err, LOUPE_ERR_IO, "%s: not a regular file", path);
    }
    if (stt.st_size < 8) {
        close(fd);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: truncated safetensors file (%lld bytes, the header length alone is 8)",
                       path, (long long)stt.st_size);
    }
    f->size = (size_t)stt.st_size;
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        f->size = 0;
        return lp_fail(err, LOUPE_ERR_IO, "%s: mmap failed: %s", path, lp_strerror(errno, eb, sizeof eb));
    }
    f->map = m;
    return LOUPE_OK;
}

static loupe_status push_tensor(lp_safetensors *s, lp_error *err, const char *path) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 256;
        lp_st_tensor *nt = realloc(s->t, (size_t)cap * sizeof *nt);
        if (!nt) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
        s->t = nt;
        s->cap = cap;
    }
    memset(&s->t[s->n], 0, sizeof s->t[s->n]);
    return LOUPE_OK;
}

/* A JSON number that is a non-negative integer no larger than max. */
static bool json_uint(const cJSON *v, double max, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= max) || d != (double)(int64_t)d) return false;
    *out = (int64_t)d;
    return true;
}

/* Parse one file's header and append its tensors. */
static loupe_status parse_file(lp_safetensors *s, int fi, lp_error *err) {
    const st_file *f = &s->files[fi];
    const char *path = f->path;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->map[i];
    if (hlen > LP_ST_MAX_HEADER)
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: header of %llu bytes (limit %u MiB): not a safetensors file?", path,
                       (unsigned long long)hlen, LP_ST_MAX_HEADER >> 20);
    if (hlen > f->size - 8)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: truncated: header of %llu bytes but the file has %zu", path,
                       (unsigned long long)hlen, f->size);
    const uint8_t *data = f->map + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;

    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: the header is not a JSON object", path);
    }
    loupe_status st = LOUPE_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        const char *name = e->string;
        if (!name) continue;
        if (!strcmp(name, "__metadata__")) continue;
        if (!*name || strlen(name) > 1024) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor with an empty or over-long name", path);
            break;
        }
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) ||
            cJSON_GetArraySize(of) != 2) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: needs \"dtype\", \"shape\" and two \"data_offsets\"",
                         path, name);
            break;
        }
        if ((st = push_tensor(s, err, path))) break;
        lp_st_tensor *t = &s->t[s->n];
        size_t esize = 0;
        for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
            if (!strcmp(dt->valuestring, DTYPES[i].name)) {
                t->dtype = DTYPES[i].t;
                esize = DTYPES[i].size;
            }
        if (!esize) {
            st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s: unknown dtype \"%.16s\"", path, name,
                         dt->valuestring);
            break;
        }
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->valuestring);
        int nd = cJSON_GetArraySize(sh);
        if (nd > LP_ST_MAX_DIMS) {
            st = lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s has %d dimensions (at most %d)", path, name, nd,
                         LP_ST_MAX_DIMS);
            break;
        }
        int64_t count = 1;
        bool ok = true;
        for (int d = 0; d < nd; d++) {
            int64_t v;
            if (!json_uint(cJSON_GetArrayItem(sh, d), 9.0e15, &v)) ok = false;
            else {
                t->shape[d] = v;
                if (v && count > INT64_MAX / 16 / v) ok = false;
                else count *= v;
            }
        }
        int64_t b = 0, en = 0;
        if (!ok) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: bad shape", path, name);
            break;
        }
        if (!json_uint(cJSON_GetArrayItem(of, 0), 9.0e15, &b) || !json_uint(cJSON_GetArrayItem(of, 1), 9.0e15, &en) ||
            en < b) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s: bad data_offsets", path, name);
            break;
        }
        if ((uint64_t)(en - b) != (uint64_t)count * esize) {
            st = lp_fail(err, LOUPE_ERR_FORMAT,
                         "%s: tensor %s: %lld bytes in data_offsets but %s x %lld elements need %llu", path, name,
                         (long long)(en - b), dt->valuestring, (long long)count,
                         (unsigned long long)((uint64_t)count * esize));
            break;
        }
        if ((uint64_t)en > data_size) {
            st = lp_fail(err, LOUPE_ERR_FORMAT,
                         "%s: truncated: tensor %s ends at byte %lld of the data but the file holds %llu", path, name,
                         (long long)en, (unsigned long long)data_size);
            break;
        }
        if (!(t->name = strdup(name))) {
            st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        t->file = f->path;
        t->n_dims = nd;
        t->n_elements = count;
        t->data = data + b;
        t->n_bytes = (uint64_t)(en - b);
        s->n++;
    }
    cJSON_Delete(root);
    return st;
}

static loupe_status build_index(lp_safetensors *s, lp_error *err) {
    s->by_name = malloc((size_t)(s->n ? s->n : 1) * sizeof *s->by_name);
    if (!s->by_name) return lp_fail(err, LOUPE_ERR_NOMEM, "safetensors: out of memory");
    for (int i = 0; i < s->n; i++) s->by_name[i] = i;
    qsort_r(s->by_name, (size_t)s->n, sizeof *s->by_name, cmp_by_name, s);
    for (int i = 1; i < s->n; i++) {
        const lp_st_tensor *a = &s->t[s->by_name[i - 1]], *b = &s->t[s->by_name[i]];
        if (!strcmp(a->name, b->name))
            return lp_fail(err, LOUPE_ERR_FORMAT, "tensor %s appears twice (%s and %s)", a->name, a->file, b->file);
    }
    return LOUPE_OK;
}

static loupe_status open_files(char **paths, int n, lp_safetensors **out, lp_error *err) {
    lp_safetensors *s = calloc(1, sizeof *s);
    if (!s) return lp_fail(err, LOUPE_ERR_NOMEM, "safetensors: out of memory");
    loupe_status st = LOUPE_OK;
    for (int i = 0; i < n && !st; i++) {
        int fi;
        if (!(st = add_file(s, paths[i], &fi, err))) st = parse_file(s, fi, err);
    }
    if (!st) st = build_index(s, err);
    if (st) {
        lp_st_close(s);
        return st;
    }
    *out = s;
    return LOUPE_OK;
}

loupe_status lp_st_open_file(const char *path, lp_safetensors **out, lp_error *err) {
    *out = NULL;
    char *p = (char *)path;
    return open_files(&p, 1, out, err);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* The shard files of an index: each distinct value of weight_map, sorted. */
static loupe_status index_shards(const char *dir, const char *index_path, cJSON **wm_out, cJSON **root_out,
                                 char ***paths, int *n_paths, lp_error *err) {
    char *text = NULL;
    size_t len = 0;
    loupe_status st = lp_read_file(index_path, 64u << 20, "64 MiB index", &text, &len, err);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: not JSON with a \"weight_map\" object", index_path);
    }
    char **v = NULL;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        if (!cJSON_IsString(e) || !*e->valuestring || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..")) {
            lp_fail(err, LOUPE_ERR_FORMAT, "%s: weight_map entry %s is not a file name in the directory", index_path,
                    e->string ? e->string : "?");
            free_list(v, n);
            cJSON_Delete(root);
            return LOUPE_ERR_FORMAT;
        }
        bool seen = false;
        for (int i = 0; i < n && !seen; i++) seen = !strcmp(strrchr(v[i], '/') + 1, e->valuestring);
        if (seen) continue;
        char **nv = realloc(v, (size_t)(n + 1) * sizeof *nv);
        char *p = nv ? lp_path_join(dir, e->valuestring) : NULL;
        if (!nv || !p) {
            free(p);
            free_list(nv ? nv : v, n);
            cJSON_Delete(root);
            return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", index_path);
        }
        v = nv;
        v[n++] = p;
    }
    if (!n) {
        cJSON_Delete(root);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: weight_map is empty", index_path);
    }
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    *wm_out = (cJSON *)wm;
    *root_out = root;
    *paths = v;
    *n_paths = n;
    return LOUPE_OK;
}

loupe_status lp_st_open_dir(const char *dir, lp_safetensors **out, lp_error *err) {
    *out = NULL;
    char *index = lp_path_join(dir, "model.safetensors.index.json");
    char *single = lp_path_join(dir, "model.safetensors");
    if (!index || !single) {
        free(index);
        free(single);
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", dir);
    }
    loupe_status st;
    if (lp_path_exists(index)) {
        cJSON *root = NULL, *wm = NULL;
        char **paths = NULL;
        int n = 0;
        st = index_shards(dir, index, &wm, &root, &paths, &n, err);
        if (!st) st = open_files(paths, n, out, err);
        /* every name of the index must be in the shard it names */
        const cJSON *e;
        if (!st) cJSON_ArrayForEach(e, wm) {
            const lp_st_tensor *t = lp_st_find(*out, e->string);
            const char *base = t ? strrchr(t->file, '/') + 1 : NULL;
            if (!t || strcmp(base, e->valuestring)) {
                st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: tensor %s is listed in %s but not found in %s", dir,
                             e->string, "model.safetensors.index.json", e->valuestring);
                lp_st_close(*out);
                *out = NULL;
                break;
            }
        }
        free_list(paths, n);
        cJSON_Delete(root);
    } else if (lp_path_exists(single)) {
        st = lp_st_open_file(single, out, err);
    } else {
        DIR *d = opendir(dir);
        if (!d) {
            char eb[128];
            st = lp_fail(err, LOUPE_ERR_IO, "%s: cannot open directory: %s", dir, lp_strerror(errno, eb, sizeof eb));
        } else {
            char **v = NULL;
            int n = 0;
            bool bin = false;
            struct dirent *de;
            st = LOUPE_OK;
            while (!st && (de = readdir(d))) {
                size_t l = strlen(de->d_name);
                if (l > 4 && !strcmp(de->d_name + l - 4, ".bin") && !strncmp(de->d_name, "pytorch_model", 13)) bin = true;
                if (l <= 12 || strcmp(de->d_name + l - 12, ".safetensors")) continue;
                char **nv = realloc(v, (size_t)(n + 1) * sizeof *nv);
                char *p = nv ? lp_path_join(dir, de->d_name) : NULL;
                if (!nv || !p) {
                    free(p);
                    if (nv) v = nv;
                    st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", dir);
                    break;
                }
                v = nv;
                v[n++] = p;
            }
            closedir(d);
            if (!st && !n)
                st = bin ? lp_fail(err, LOUPE_ERR_UNSUPPORTED,
                                   "%s: only pytorch_model*.bin files (pickle); loupe reads safetensors: re-save the "
                                   "checkpoint with save_pretrained(..., safe_serialization=True)",
                                   dir)
                         : lp_fail(err, LOUPE_ERR_IO, "%s: no model.safetensors, index or *.safetensors file", dir);
            if (!st) {
                qsort(v, (size_t)n, sizeof *v, cmp_str);
                st = open_files(v, n, out, err);
            }
            free_list(v, n);
        }
    }
    free(index);
    free(single);
    return st;
}

void lp_st_release(const lp_st_tensor *t) {
    if (!t || !t->n_bytes) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)t->data + page - 1) & ~(page - 1), b = ((uintptr_t)t->data + t->n_bytes) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

loupe_status lp_st_read_f32(const lp_st_tensor *t, int64_t first, int64_t n, float *dst, lp_error *err) {
    if (first < 0 || n < 0 || first > t->n_elements || n > t->n_elements - first)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "%s: tensor %s: elements %lld..%lld out of %lld", t->file, t->name,
                       (long long)first, (long long)(first + n), (long long)t->n_elements);
    switch (t->dtype) {
    case LP_ST_F32: memcpy(dst, t->data + (size_t)first * 4, (size_t)n * 4); break;
    case LP_ST_F16: {
        const uint8_t *p = t->data + (size_t)first * 2;
        for (int64_t i = 0; i < n; i++) dst[i] = lp_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    }
    case LP_ST_BF16: {
        const uint8_t *p = t->data + (size_t)first * 2;
        for (int64_t i = 0; i < n; i++) dst[i] = lp_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    }
    default:
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "%s: tensor %s is %s; loupe converts F32, F16 and BF16 weights",
                       t->file, t->name, t->dtype_name);
    }
    return LOUPE_OK;
}
