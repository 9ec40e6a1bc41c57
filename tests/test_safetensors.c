/* tests/test_safetensors.c — core/safetensors.c: one file and sharded
 * checkpoints, F32/F16/BF16 conversion, and every refusal (truncated file,
 * bad header, offsets, dtypes, missing shard entries, duplicates) names the
 * file and the tensor; plus the GGUF writer's produced-while-written tensors
 * (lp_gguf_writer_add_tensor_fn). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/testutil.h"

#include "gguf.h"
#include "safetensors.h"
#include "types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];

static int setup(void **state) {
    (void)state;
    return tu_mkdtemp(tmpdir, sizeof tmpdir, "st");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmpdir);
}

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmpdir, name); }

/* Write a safetensors file: header text as given (the caller lays out the
 * offsets), then data. hlen_override > 0 writes that header length instead. */
static void write_st(const char *name, const char *header, const void *data, size_t n, uint64_t hlen_override) {
    char p[256];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    uint64_t hl = hlen_override ? hlen_override : strlen(header);
    assert_int_equal(fwrite(&hl, 8, 1, f), 1);
    assert_int_equal(fwrite(header, 1, strlen(header), f), strlen(header));
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void write_text(const char *name, const char *text) {
    char p[256];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* 2x3 f32, 4 f16 values, 2 bf16 values, an i64 */
static void good_data(uint8_t *buf, size_t *n) {
    float a[6] = {1, -2, 3.5f, 0.25f, -1e3f, 7};
    uint16_t h[4] = {lp_f32_to_f16(1.5f), lp_f32_to_f16(-0.5f), lp_f32_to_f16(65504.f), lp_f32_to_f16(0)};
    uint16_t b[2] = {lp_f32_to_bf16(3.0f), lp_f32_to_bf16(-0.125f)};
    int64_t i = 42;
    size_t k = 0;
    memcpy(buf + k, a, 24), k += 24;
    memcpy(buf + k, h, 8), k += 8;
    memcpy(buf + k, b, 4), k += 4;
    memcpy(buf + k, &i, 8), k += 8;
    *n = k;
}

static const char *GOOD_HEADER =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[32,36]},"
    "\"i\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[36,44]}}";

static void test_single_file(void **state) {
    (void)state;
    uint8_t d[64];
    size_t n;
    good_data(d, &n);
    write_st("one.safetensors", GOOD_HEADER, d, n, 0);
    char p[256];
    path_of(p, sizeof p, "one.safetensors");
    lp_safetensors *s = NULL;
    lp_error err = {0};
    assert_int_equal(lp_st_open_file(p, &s, &err), LOUPE_OK);
    assert_int_equal(lp_st_count(s), 4);
    assert_string_equal(lp_st_at(s, 0)->name, "a"); /* header order */
    assert_string_equal(lp_st_at(s, 3)->name, "i");
    const lp_st_tensor *a = lp_st_find(s, "a");
    assert_non_null(a);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 3);
    float f[6];
    assert_int_equal(lp_st_read_f32(a, 1, 5, f, &err), LOUPE_OK);
    assert_true(f[0] == -2 && f[1] == 3.5f && f[4] == 7);
    assert_int_equal(lp_st_read_f32(lp_st_find(s, "h"), 0, 4, f, &err), LOUPE_OK);
    assert_true(f[0] == 1.5f && f[1] == -0.5f && f[2] == 65504.f && f[3] == 0);
    assert_int_equal(lp_st_read_f32(lp_st_find(s, "b"), 0, 2, f, &err), LOUPE_OK);
    assert_true(f[0] == 3.0f && f[1] == -0.125f);
    /* scalar shape [] has one element; an I64 is refused for conversion */
    const lp_st_tensor *i = lp_st_find(s, "i");
    assert_int_equal(i->n_elements, 1);
    assert_int_equal(lp_st_read_f32(i, 0, 1, f, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "tensor i is I64"));
    assert_int_equal(lp_st_read_f32(a, 4, 3, f, &err), LOUPE_ERR_INVALID_ARG);
    assert_null(lp_st_find(s, "zz"));
    const lp_st_tensor *t;
    assert_int_equal(lp_st_get(s, "zz", "ckpt", &t, &err), LOUPE_ERR_FORMAT);
    assert_string_equal(err.msg, "ckpt: missing tensor zz");
    int64_t want[2] = {3, -1};
    assert_int_equal(lp_st_check_shape(a, 2, want, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tensor a has shape [2, 3], expected [3, *]"));
    want[0] = 2;
    assert_int_equal(lp_st_check_shape(a, 2, want, &err), LOUPE_OK);
    lp_st_close(s);
}

static void expect_bad(const char *header, size_t data_n, uint64_t hlen, loupe_status want, const char *needle) {
    uint8_t d[64];
    size_t n;
    good_data(d, &n);
    write_st("bad.safetensors", header, d, data_n < n ? data_n : n, hlen);
    char p[256];
    path_of(p, sizeof p, "bad.safetensors");
    lp_safetensors *s = NULL;
    lp_error err = {0};
    loupe_status st = lp_st_open_file(p, &s, &err);
    if (st != want || !strstr(err.msg, needle)) fail_msg("got %d \"%s\", wanted %d with \"%s\"", st, err.msg, want, needle);
    assert_null(s);
    assert_non_null(strstr(err.msg, "bad.safetensors"));
}

static void test_refusals(void **state) {
    (void)state;
    /* data cut short: the last tensor's end is past the file */
    expect_bad(GOOD_HEADER, 40, 0, LOUPE_ERR_FORMAT, "truncated: tensor i ends at byte 44");
    /* header length past the end of the file */
    expect_bad(GOOD_HEADER, 44, 100000, LOUPE_ERR_FORMAT, "truncated: header of 100000 bytes");
    expect_bad(GOOD_HEADER, 44, (uint64_t)1 << 40, LOUPE_ERR_LIMIT, "header of");
    expect_bad("[1,2]", 0, 0, LOUPE_ERR_FORMAT, "not a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 44, 0, LOUPE_ERR_FORMAT,
               "tensor a: 20 bytes in data_offsets but F32 x 6 elements need 24");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 44, 0, LOUPE_ERR_UNSUPPORTED,
               "tensor a: unknown dtype \"Q4\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,24]}}", 44, 0, LOUPE_ERR_FORMAT,
               "tensor a: bad shape");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,0]}}", 44, 0, LOUPE_ERR_FORMAT,
               "tensor a: bad data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 44, 0, LOUPE_ERR_FORMAT, "needs \"dtype\"");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 44, 0,
               LOUPE_ERR_UNSUPPORTED, "9 dimensions");
    /* a file shorter than the length prefix */
    char p[256];
    path_of(p, sizeof p, "short.safetensors");
    FILE *f = fopen(p, "wb");
    fputs("abc", f);
    fclose(f);
    lp_safetensors *s = NULL;
    lp_error err = {0};
    assert_int_equal(lp_st_open_file(p, &s, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "short.safetensors: truncated safetensors file (3 bytes"));
    path_of(p, sizeof p, "absent.safetensors");
    assert_int_equal(lp_st_open_file(p, &s, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, "absent.safetensors: cannot open"));
}

static void test_sharded(void **state) {
    (void)state;
    char sub[256];
    path_of(sub, sizeof sub, "shards");
    mkdir(sub, 0755);
    float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
    write_st("shards/model-00001-of-00002.safetensors",
             "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", x, 16, 0);
    write_st("shards/model-00002-of-00002.safetensors",
             "{\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", y, 8, 0);
    write_text("shards/model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":24},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
               "\"y\":\"model-00002-of-00002.safetensors\"}}");
    lp_safetensors *s = NULL;
    lp_error err = {0};
    assert_int_equal(lp_st_open_dir(sub, &s, &err), LOUPE_OK);
    assert_int_equal(lp_st_count(s), 2);
    float v[4];
    assert_int_equal(lp_st_read_f32(lp_st_find(s, "y"), 0, 2, v, &err), LOUPE_OK);
    assert_true(v[0] == 5 && v[1] == 6);
    assert_non_null(strstr(lp_st_find(s, "x")->file, "model-00001-of-00002"));
    lp_st_close(s);

    /* the index names a tensor the shard lacks */
    write_text("shards/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
               "\"y\":\"model-00002-of-00002.safetensors\",\"z\":\"model-00002-of-00002.safetensors\"}}");
    assert_int_equal(lp_st_open_dir(sub, &s, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tensor z is listed"));
    /* a shard is missing */
    write_text("shards/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"y\":\"model-00003.safetensors\"}}");
    assert_int_equal(lp_st_open_dir(sub, &s, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, "model-00003.safetensors: cannot open"));
    /* a path outside the directory */
    write_text("shards/model.safetensors.index.json", "{\"weight_map\":{\"x\":\"../x.safetensors\"}}");
    assert_int_equal(lp_st_open_dir(sub, &s, &err), LOUPE_ERR_FORMAT);
    /* the same name in two shards */
    write_st("shards/model-00002-of-00002.safetensors",
             "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", y, 8, 0);
    write_text("shards/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"w\":\"model-00002-of-00002.safetensors\"}}");
    assert_int_equal(lp_st_open_dir(sub, &s, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tensor x appears twice"));

    /* no index, no model.safetensors: every *.safetensors; only .bin: a hint */
    char sub2[256];
    path_of(sub2, sizeof sub2, "bin");
    mkdir(sub2, 0755);
    write_text("bin/pytorch_model.bin", "pickle");
    assert_int_equal(lp_st_open_dir(sub2, &s, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "safe_serialization=True"));
    write_st("bin/a.safetensors", "{\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", y, 8, 0);
    assert_int_equal(lp_st_open_dir(sub2, &s, &err), LOUPE_OK);
    assert_non_null(lp_st_find(s, "y"));
    lp_st_close(s);
}

typedef struct fill_ctx { int calls; uint64_t next; int fail_at; } fill_ctx;

static loupe_status fill_ramp(void *ctx, uint64_t off, void *dst, size_t n, lp_error *err) {
    fill_ctx *c = ctx;
    if (off != c->next) return lp_fail(err, LOUPE_ERR_INTERNAL, "out of order");
    if (c->calls++ == c->fail_at) return lp_fail(err, LOUPE_ERR_IO, "source went away");
    float *f = dst;
    for (size_t i = 0; i < n / 4; i++) f[i] = (float)((off / 4) + i);
    c->next = off + n;
    return LOUPE_OK;
}

static void test_writer_fill(void **state) {
    (void)state;
    /* a tensor larger than one fill chunk: (LP_GGUF_FILL_CHUNK/4 + 3) f32 values in one row per... */
    int64_t n = (int64_t)(LP_GGUF_FILL_CHUNK / 4) * 2 + 256;
    int64_t ne[2] = {256, n / 256};
    char p[256];
    path_of(p, sizeof p, "fill.gguf");
    fill_ctx c = {.fail_at = -1};
    lp_gguf_writer *w = lp_gguf_writer_new();
    float small[4] = {9, 8, 7, 6};
    int64_t ne_s[1] = {4};
    assert_int_equal(lp_gguf_writer_add_tensor(w, "small", LP_TYPE_F32, 1, ne_s, small), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor_fn(w, "ramp", LP_TYPE_F32, 2, ne, fill_ramp, &c), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor_fn(w, "nofill", LP_TYPE_F32, 2, ne, NULL, NULL), LOUPE_ERR_INVALID_ARG);
    lp_error err = {0};
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    assert_int_equal(c.calls, 3); /* two full chunks and a tail */
    lp_gguf *g = lp_gguf_open(p, &err);
    assert_non_null(g);
    int64_t ti = lp_gguf_find_tensor(g, "ramp"), si = lp_gguf_find_tensor(g, "small");
    assert_true(ti >= 0 && si >= 0);
    const float *f = g->tensors[ti].data;
    assert_true(f[0] == 0 && f[12345] == 12345.f && f[n - 1] == (float)(n - 1));
    assert_true(((const float *)g->tensors[si].data)[3] == 6);
    lp_gguf_close(g);

    /* a failing producer aborts the write and leaves the old file alone */
    c = (fill_ctx){.fail_at = 1};
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, "tensor ramp"));
    assert_non_null(strstr(err.msg, "source went away"));
    g = lp_gguf_open(p, &err);
    assert_non_null(g);
    lp_gguf_close(g);
    lp_gguf_writer_free(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_file),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_writer_fill),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
