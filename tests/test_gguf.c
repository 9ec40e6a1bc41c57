/* tests/test_gguf.c — GGUF reader/writer: round trips, layout, typed getters,
 * a table of corrupt files, truncation at every byte, and the llama.cpp fixture. */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"

static char g_dir[64];

static int setup_dir(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/loupe_test_gguf_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(g_dir);
    return 0;
}

static const char *tmp_path(const char *name) {
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

/* The whole file; the test fails if it cannot be read. */
static uint8_t *slurp(const char *path, size_t *n) {
    uint8_t *b = (uint8_t *)tu_read_file(path, n);
    assert_non_null(b);
    return b;
}

static bool contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

#define assert_contains(hay, needle)                                                         \
    do {                                                                                     \
        if (!contains((hay), (needle))) fail_msg("expected \"%s\" in \"%s\"", (needle), (hay)); \
    } while (0)

/* ---- round trip of every value type ---- */

static lp_gguf_writer *writer_all_types(void) {
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(lp_gguf_writer_set_u8(w, "t.u8", 255), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_i8(w, "t.i8", -128), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u16(w, "t.u16", 65535), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_i16(w, "t.i16", -32768), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "t.u32", 4000000000u), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_i32(w, "t.i32", INT32_MIN), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u64(w, "t.u64", UINT64_MAX), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_i64(w, "t.i64", INT64_MIN), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_f32(w, "t.f32", 0.1f), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_f64(w, "t.f64", 3.141592653589793), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "t.true", true), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_bool(w, "t.false", false), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_str(w, "t.str", "h\xc3\xa9llo \"w\"\n"), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_str(w, "t.empty", ""), LOUPE_OK);

    uint8_t a_u8[] = {0, 1, 255};
    int8_t a_i8[] = {-1, 0, 127};
    uint16_t a_u16[] = {1, 65535};
    int16_t a_i16[] = {-32768, 32767};
    uint32_t a_u32[] = {7, 8, 9, UINT32_MAX};
    int32_t a_i32[] = {-5, 5};
    uint64_t a_u64[] = {UINT64_MAX, 0};
    int64_t a_i64[] = {INT64_MIN, INT64_MAX};
    float a_f32[] = {1.5f, -2.25f, 1e-30f};
    double a_f64[] = {1e300, -0.0};
    uint8_t a_bool[] = {1, 0, 1, 1};
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.u8", LP_GGUF_UINT8, a_u8, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.i8", LP_GGUF_INT8, a_i8, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.u16", LP_GGUF_UINT16, a_u16, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.i16", LP_GGUF_INT16, a_i16, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.u32", LP_GGUF_UINT32, a_u32, 4), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.i32", LP_GGUF_INT32, a_i32, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.u64", LP_GGUF_UINT64, a_u64, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.i64", LP_GGUF_INT64, a_i64, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.f32", LP_GGUF_FLOAT32, a_f32, 3), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.f64", LP_GGUF_FLOAT64, a_f64, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.bool", LP_GGUF_BOOL, a_bool, 4), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "a.empty", LP_GGUF_UINT32, NULL, 0), LOUPE_OK);
    const char *strs[] = {"alpha", "", "\xe4\xb8\xad"};
    assert_int_equal(lp_gguf_writer_set_arr_str(w, "a.str", strs, 3), LOUPE_OK);

    /* nested: [[1,2,3], [], [[s0, s1]]] — arr of arr with different element types */
    uint32_t inner_u32[] = {1, 2, 3};
    lp_gguf_str inner_s[] = {{(char *)"s0", 2}, {(char *)"s1", 2}};
    lp_gguf_value deep = {.type = LP_GGUF_ARRAY};
    deep.v.arr.elem = LP_GGUF_STRING;
    deep.v.arr.n = 2;
    deep.v.arr.strs = inner_s;
    lp_gguf_value items[3] = {{.type = LP_GGUF_ARRAY}, {.type = LP_GGUF_ARRAY}, {.type = LP_GGUF_ARRAY}};
    items[0].v.arr.elem = LP_GGUF_UINT32;
    items[0].v.arr.n = 3;
    items[0].v.arr.data = inner_u32;
    items[1].v.arr.elem = LP_GGUF_INT8;
    items[2].v.arr.elem = LP_GGUF_ARRAY;
    items[2].v.arr.n = 1;
    items[2].v.arr.items = &deep;
    lp_gguf_value nested = {.type = LP_GGUF_ARRAY};
    nested.v.arr.elem = LP_GGUF_ARRAY;
    nested.v.arr.n = 3;
    nested.v.arr.items = items;
    assert_int_equal(lp_gguf_writer_set_value(w, "a.nested", &nested), LOUPE_OK);

    /* replacement keeps the first position and the last value */
    assert_int_equal(lp_gguf_writer_set_u32(w, "t.u32", 4000000001u), LOUPE_OK);
    return w;
}

static void check_all_types(const lp_gguf *g) {
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, 28);
    assert_string_equal(g->kv[0].key, "t.u8");
    assert_string_equal(g->kv[4].key, "t.u32");
    assert_string_equal(g->kv[27].key, "a.nested");

    const lp_gguf_value *v;
#define SCALAR(key, ty, field, want)                 \
    v = lp_gguf_get(g, key);                         \
    assert_non_null(v);                              \
    assert_int_equal(v->type, ty);                   \
    assert_true(v->v.field == (want))
    SCALAR("t.u8", LP_GGUF_UINT8, u64, 255);
    SCALAR("t.i8", LP_GGUF_INT8, i64, -128);
    SCALAR("t.u16", LP_GGUF_UINT16, u64, 65535);
    SCALAR("t.i16", LP_GGUF_INT16, i64, -32768);
    SCALAR("t.u32", LP_GGUF_UINT32, u64, 4000000001u);
    SCALAR("t.i32", LP_GGUF_INT32, i64, INT32_MIN);
    SCALAR("t.u64", LP_GGUF_UINT64, u64, UINT64_MAX);
    SCALAR("t.i64", LP_GGUF_INT64, i64, INT64_MIN);
    SCALAR("t.f32", LP_GGUF_FLOAT32, f64, (double)0.1f);
    SCALAR("t.f64", LP_GGUF_FLOAT64, f64, 3.141592653589793);
    SCALAR("t.true", LP_GGUF_BOOL, u64, 1);
    SCALAR("t.false", LP_GGUF_BOOL, u64, 0);
#undef SCALAR
    v = lp_gguf_get(g, "t.str");
    assert_int_equal(v->type, LP_GGUF_STRING);
    assert_int_equal(v->v.str.len, 11);
    assert_string_equal(v->v.str.s, "h\xc3\xa9llo \"w\"\n");
    v = lp_gguf_get(g, "t.empty");
    assert_int_equal(v->v.str.len, 0);
    assert_string_equal(v->v.str.s, "");

    const lp_gguf_value *a;
    lp_error err = {0};
    assert_int_equal(lp_gguf_get_arr(g, "a.u8", LP_GGUF_UINT8, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 3);
    assert_int_equal(((uint8_t *)a->v.arr.data)[2], 255);
    assert_int_equal(lp_gguf_get_arr(g, "a.i8", LP_GGUF_INT8, &a, &err), LOUPE_OK);
    assert_int_equal(((int8_t *)a->v.arr.data)[0], -1);
    assert_int_equal(lp_gguf_get_arr(g, "a.u16", LP_GGUF_UINT16, &a, &err), LOUPE_OK);
    assert_int_equal(((uint16_t *)a->v.arr.data)[1], 65535);
    assert_int_equal(lp_gguf_get_arr(g, "a.i16", LP_GGUF_INT16, &a, &err), LOUPE_OK);
    assert_int_equal(((int16_t *)a->v.arr.data)[0], -32768);
    assert_int_equal(lp_gguf_get_arr(g, "a.u32", LP_GGUF_UINT32, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 4);
    assert_int_equal(((uint32_t *)a->v.arr.data)[3], UINT32_MAX);
    assert_int_equal(lp_gguf_get_arr(g, "a.i32", LP_GGUF_INT32, &a, &err), LOUPE_OK);
    assert_int_equal(((int32_t *)a->v.arr.data)[0], -5);
    assert_int_equal(lp_gguf_get_arr(g, "a.u64", LP_GGUF_UINT64, &a, &err), LOUPE_OK);
    assert_true(((uint64_t *)a->v.arr.data)[0] == UINT64_MAX);
    assert_int_equal(lp_gguf_get_arr(g, "a.i64", LP_GGUF_INT64, &a, &err), LOUPE_OK);
    assert_true(((int64_t *)a->v.arr.data)[0] == INT64_MIN);
    assert_true(((int64_t *)a->v.arr.data)[1] == INT64_MAX);
    assert_int_equal(lp_gguf_get_arr(g, "a.f32", LP_GGUF_FLOAT32, &a, &err), LOUPE_OK);
    assert_true(((float *)a->v.arr.data)[1] == -2.25f);
    assert_true(((float *)a->v.arr.data)[2] == 1e-30f);
    assert_int_equal(lp_gguf_get_arr(g, "a.f64", LP_GGUF_FLOAT64, &a, &err), LOUPE_OK);
    assert_true(((double *)a->v.arr.data)[0] == 1e300);
    assert_true(signbit(((double *)a->v.arr.data)[1]));
    assert_int_equal(lp_gguf_get_arr(g, "a.bool", LP_GGUF_BOOL, &a, &err), LOUPE_OK);
    assert_memory_equal(a->v.arr.data, ((uint8_t[]){1, 0, 1, 1}), 4);
    assert_int_equal(lp_gguf_get_arr(g, "a.empty", LP_GGUF_UINT32, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 0);
    assert_int_equal(lp_gguf_get_arr(g, "a.str", LP_GGUF_STRING, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 3);
    assert_string_equal(a->v.arr.strs[0].s, "alpha");
    assert_int_equal(a->v.arr.strs[1].len, 0);
    assert_string_equal(a->v.arr.strs[2].s, "\xe4\xb8\xad");
    assert_int_equal(a->v.arr.strs[2].len, 3);

    assert_int_equal(lp_gguf_get_arr(g, "a.nested", LP_GGUF_ARRAY, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 3);
    const lp_gguf_value *it = a->v.arr.items;
    assert_int_equal(it[0].type, LP_GGUF_ARRAY);
    assert_int_equal(it[0].v.arr.elem, LP_GGUF_UINT32);
    assert_int_equal(it[0].v.arr.n, 3);
    assert_int_equal(((uint32_t *)it[0].v.arr.data)[2], 3);
    assert_int_equal(it[1].v.arr.elem, LP_GGUF_INT8);
    assert_int_equal(it[1].v.arr.n, 0);
    assert_int_equal(it[2].v.arr.elem, LP_GGUF_ARRAY);
    assert_int_equal(it[2].v.arr.n, 1);
    const lp_gguf_value *d = &it[2].v.arr.items[0];
    assert_int_equal(d->v.arr.elem, LP_GGUF_STRING);
    assert_int_equal(d->v.arr.n, 2);
    assert_string_equal(d->v.arr.strs[1].s, "s1");
}

static void test_roundtrip_all_types(void **state) {
    (void)state;
    lp_gguf_writer *w = writer_all_types();
    lp_error err = {0};
    const char *p = tmp_path("all.gguf");
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    lp_gguf_writer_free(w);

    lp_gguf *g = lp_gguf_open(p, &err);
    if (!g) fail_msg("%s", err.msg);
    check_all_types(g);
    assert_int_equal(g->n_tensors, 0);
    lp_gguf_close(g);

    /* the same bytes through the memory path */
    size_t n;
    uint8_t *buf = slurp(p, &n);
    g = lp_gguf_open_mem(buf, n, "all-mem.gguf", &err);
    assert_non_null(g);
    check_all_types(g);
    assert_string_equal(g->path, "all-mem.gguf");
    lp_gguf_close(g);
    free(buf);
}

/* Reopen a file and write it back through set_value: the bytes must not change. */
static void test_rewrite_identical(void **state) {
    (void)state;
    lp_gguf_writer *w = writer_all_types();
    lp_error err = {0};
    const char *p1 = tmp_path("rw1.gguf"), *p2 = tmp_path("rw2.gguf");
    float t[6] = {1, 2, 3, 4, 5, 6};
    assert_int_equal(lp_gguf_writer_add_tensor(w, "w", LP_TYPE_F32, 2, (int64_t[]){3, 2}, t), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_write(w, p1, &err), LOUPE_OK);
    lp_gguf_writer_free(w);

    lp_gguf *g = lp_gguf_open(p1, &err);
    assert_non_null(g);
    w = lp_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *ti = &g->tensors[i];
        assert_int_equal(lp_gguf_writer_add_tensor(w, ti->name, ti->type, ti->n_dims, ti->ne, ti->data), LOUPE_OK);
    }
    assert_int_equal(lp_gguf_writer_write(w, p2, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);

    size_t n1, n2;
    uint8_t *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
}

/* ---- tensors and alignment ---- */

static void test_tensors_and_alignment(void **state) {
    (void)state;
    lp_error err = {0};
    /* shapes in ggml order; byte sizes from the block layouts */
    float f32[6] = {1, 2, 3, 4, 5, 6};
    uint16_t f16[8] = {0x3c00, 0x4000, 0, 0, 0, 0, 0, 0x7bff};
    uint8_t q8[2 * 2 * 34], q4k[144], i32d[2 * 3 * 2 * 2 * 4];
    for (size_t i = 0; i < sizeof q8; i++) q8[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof q4k; i++) q4k[i] = (uint8_t)(255 - i);
    for (size_t i = 0; i < sizeof i32d; i++) i32d[i] = (uint8_t)(i * 7);
    struct { const char *name; lp_type type; uint32_t nd; int64_t ne[4]; const void *data; uint64_t nbytes; } T[] = {
        {"blk.0.attn_q.weight", LP_TYPE_F32, 2, {3, 2}, f32, 24},
        {"f16", LP_TYPE_F16, 1, {8}, f16, 16},
        {"q8", LP_TYPE_Q8_0, 2, {64, 2}, q8, sizeof q8},
        {"q4k", LP_TYPE_Q4_K, 1, {256}, q4k, sizeof q4k},
        {"i32.4d", LP_TYPE_I32, 4, {2, 3, 2, 2}, i32d, sizeof i32d},
    };
    const uint32_t aligns[] = {0 /* default */, 1, 64, 4096};
    for (size_t ai = 0; ai < sizeof aligns / sizeof aligns[0]; ai++) {
        lp_gguf_writer *w = lp_gguf_writer_new();
        if (aligns[ai]) lp_gguf_writer_set_alignment(w, aligns[ai]);
        assert_int_equal(lp_gguf_writer_set_str(w, "general.name", "t"), LOUPE_OK);
        for (size_t i = 0; i < 5; i++)
            assert_int_equal(lp_gguf_writer_add_tensor(w, T[i].name, T[i].type, T[i].nd, T[i].ne, T[i].data), LOUPE_OK);
        const char *p = tmp_path("tensors.gguf");
        assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
        lp_gguf_writer_free(w);

        lp_gguf *g = lp_gguf_open(p, &err);
        if (!g) fail_msg("%s", err.msg);
        uint64_t al = aligns[ai] ? aligns[ai] : LP_GGUF_DEFAULT_ALIGNMENT;
        assert_int_equal(g->alignment, al);
        assert_int_equal(g->data_offset % al, 0);
        assert_int_equal(g->n_tensors, 5);
        for (size_t i = 0; i < 5; i++) {
            const lp_gguf_tensor *t = &g->tensors[i];
            assert_int_equal(lp_gguf_find_tensor(g, T[i].name), (int64_t)i);
            assert_string_equal(t->name, T[i].name);
            assert_int_equal(t->type, T[i].type);
            assert_int_equal(t->n_dims, T[i].nd);
            int64_t nel = 1;
            for (uint32_t d = 0; d < 4; d++) {
                int64_t want = d < T[i].nd ? T[i].ne[d] : 1;
                assert_int_equal(t->ne[d], want);
                nel *= want;
            }
            assert_int_equal(lp_gguf_tensor_nelements(t), nel);
            assert_int_equal(t->nbytes, T[i].nbytes);
            assert_int_equal(t->offset % al, 0);
            assert_ptr_equal(t->data, g->map + g->data_offset + t->offset);
            assert_memory_equal(t->data, T[i].data, T[i].nbytes);
        }
        /* padding between tensors is zeros */
        const lp_gguf_tensor *t0 = &g->tensors[0], *t1 = &g->tensors[1];
        for (uint64_t o = t0->offset + t0->nbytes; o < t1->offset; o++) assert_int_equal(g->map[g->data_offset + o], 0);
        assert_int_equal(lp_gguf_find_tensor(g, "nope"), -1);
        lp_gguf_close(g);
    }
}

static void test_writer_rejects(void **state) {
    (void)state;
    lp_gguf_writer *w = lp_gguf_writer_new();
    uint8_t buf[1024] = {0};
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_Q8_0, 1, (int64_t[]){33}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", (lp_type)4, 1, (int64_t[]){1}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 0, (int64_t[]){1}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 5, (int64_t[]){1, 1, 1, 1, 1}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 1, (int64_t[]){-1}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 1, (int64_t[]){4}, NULL), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "", LP_TYPE_F32, 1, (int64_t[]){4}, buf), LOUPE_ERR_INVALID_ARG);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[79] = 0;
    assert_int_equal(lp_gguf_writer_add_tensor(w, longname, LP_TYPE_F32, 1, (int64_t[]){4}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 4, (int64_t[]){1 << 20, 1 << 20, 1 << 20, 1 << 20}, buf), LOUPE_ERR_LIMIT);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 1, (int64_t[]){4}, buf), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "a", LP_TYPE_F32, 1, (int64_t[]){4}, buf), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_set_arr(w, "k", LP_GGUF_STRING, buf, 1), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_set_u32(w, "", 1), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_gguf_writer_set_str(w, "k", NULL), LOUPE_ERR_INVALID_ARG);
    lp_gguf_value bad = {.type = (lp_gguf_vtype)13};
    assert_int_equal(lp_gguf_writer_set_value(w, "k", &bad), LOUPE_ERR_INVALID_ARG);

    /* 9 levels of nesting is one too many */
    lp_gguf_value lv[10];
    memset(lv, 0, sizeof lv);
    for (int i = 0; i < 10; i++) {
        lv[i].type = LP_GGUF_ARRAY;
        lv[i].v.arr.elem = i < 9 ? LP_GGUF_ARRAY : LP_GGUF_UINT8;
        lv[i].v.arr.n = i < 9 ? 1 : 0;
        lv[i].v.arr.items = i < 9 ? &lv[i + 1] : NULL;
    }
    assert_int_equal(lp_gguf_writer_set_value(w, "deep", &lv[1]), LOUPE_ERR_LIMIT); /* lv[1..9]: 9 levels */
    assert_int_equal(lp_gguf_writer_set_value(w, "deep", &lv[2]), LOUPE_OK);        /* lv[2..9]: 8 levels */
    lp_gguf_writer_free(w);
}

/* A failing write names the path and leaves neither the target nor a temp file. */
static void test_writer_atomic(void **state) {
    (void)state;
    lp_error err = {0};
    const char *p = tmp_path("atomic.gguf");
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_int_equal(lp_gguf_writer_set_u32(w, "x", 1), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    size_t n0;
    uint8_t *before = slurp(p, &n0);

    lp_gguf_writer_set_alignment(w, 48); /* not a power of two */
    assert_int_not_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    assert_contains(err.msg, p);
    assert_contains(err.msg, "general.alignment");
    lp_gguf_writer_set_alignment(w, 0);
    assert_int_not_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    size_t n1;
    uint8_t *after = slurp(p, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(before);
    free(after);

    lp_gguf_writer_set_alignment(w, 32);
    const char *bad = tmp_path("no/such/dir/x.gguf");
    assert_int_equal(lp_gguf_writer_write(w, bad, &err), LOUPE_ERR_IO);
    assert_contains(err.msg, bad);
    lp_gguf_writer_free(w);

    DIR *d = opendir(g_dir);
    struct dirent *e;
    while ((e = readdir(d))) assert_null(strstr(e->d_name, ".tmp."));
    closedir(d);
}

/* ---- typed getters ---- */

static void test_getters(void **state) {
    (void)state;
    lp_gguf_writer *w = lp_gguf_writer_new();
    lp_gguf_writer_set_u8(w, "small", 7);
    lp_gguf_writer_set_i32(w, "neg", -3);
    lp_gguf_writer_set_u64(w, "big", 1ull << 40);
    lp_gguf_writer_set_u64(w, "huge", UINT64_MAX);
    lp_gguf_writer_set_f64(w, "f64", 0.5);
    lp_gguf_writer_set_f32(w, "f32", 2.5f);
    lp_gguf_writer_set_bool(w, "flag", true);
    lp_gguf_writer_set_str(w, "name", "loupe");
    lp_gguf_writer_set_arr(w, "ids", LP_GGUF_INT32, (int32_t[]){1, 2}, 2);
    lp_error err = {0};
    const char *p = tmp_path("get.gguf");
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf *g = lp_gguf_open(p, &err);
    assert_non_null(g);

    uint32_t u = 0;
    int64_t i = 0;
    float f = 0;
    bool b = false;
    const char *s = NULL;
    const lp_gguf_value *a = NULL;
    assert_int_equal(lp_gguf_get_u32(g, "small", &u, &err), LOUPE_OK);
    assert_int_equal(u, 7);
    assert_int_equal(lp_gguf_get_i64(g, "neg", &i, &err), LOUPE_OK);
    assert_int_equal(i, -3);
    assert_int_equal(lp_gguf_get_i64(g, "big", &i, &err), LOUPE_OK);
    assert_int_equal(i, 1ll << 40);
    assert_int_equal(lp_gguf_get_f32(g, "f64", &f, &err), LOUPE_OK);
    assert_true(f == 0.5f);
    assert_int_equal(lp_gguf_get_f32(g, "f32", &f, &err), LOUPE_OK);
    assert_true(f == 2.5f);
    assert_int_equal(lp_gguf_get_bool(g, "flag", &b, &err), LOUPE_OK);
    assert_true(b);
    assert_int_equal(lp_gguf_get_str(g, "name", &s, &err), LOUPE_OK);
    assert_string_equal(s, "loupe");

    /* failures: each names the file and the key */
    assert_int_equal(lp_gguf_get_u32(g, "neg", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'neg'");
    assert_contains(err.msg, "does not fit");
    assert_contains(err.msg, p);
    assert_int_equal(lp_gguf_get_u32(g, "big", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'big'");
    assert_int_equal(lp_gguf_get_i64(g, "huge", &i, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'huge'");
    assert_int_equal(lp_gguf_get_str(g, "small", &s, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'small'");
    assert_contains(err.msg, "u8");
    assert_int_equal(lp_gguf_get_u32(g, "name", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'name'");
    assert_contains(err.msg, "str");
    assert_int_equal(lp_gguf_get_f32(g, "small", &f, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'small'");
    assert_int_equal(lp_gguf_get_bool(g, "small", &b, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'small'");
    assert_int_equal(lp_gguf_get_u32(g, "ids", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "array of i32");
    assert_int_equal(lp_gguf_get_arr(g, "ids", LP_GGUF_UINT32, &a, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'ids'");
    assert_int_equal(lp_gguf_get_arr(g, "name", LP_GGUF_UINT32, &a, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'name'");
    assert_int_equal(lp_gguf_get_arr(g, "ids", LP_GGUF_INT32, &a, &err), LOUPE_OK);
    assert_int_equal(a->v.arr.n, 2);
    assert_int_equal(lp_gguf_get_u32(g, "missing.key", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'missing.key'");
    assert_contains(err.msg, "not found");
    assert_int_equal(lp_gguf_get_str(g, "missing.key", &s, &err), LOUPE_ERR_FORMAT);

    /* _opt: absent leaves the default, present-but-wrong still fails */
    u = 99;
    f = 9.f;
    b = true;
    s = "dflt";
    assert_int_equal(lp_gguf_get_u32_opt(g, "missing", &u, &err), LOUPE_OK);
    assert_int_equal(lp_gguf_get_f32_opt(g, "missing", &f, &err), LOUPE_OK);
    assert_int_equal(lp_gguf_get_bool_opt(g, "missing", &b, &err), LOUPE_OK);
    assert_int_equal(lp_gguf_get_str_opt(g, "missing", &s, &err), LOUPE_OK);
    assert_int_equal(u, 99);
    assert_true(f == 9.f);
    assert_true(b);
    assert_string_equal(s, "dflt");
    assert_int_equal(lp_gguf_get_u32_opt(g, "small", &u, &err), LOUPE_OK);
    assert_int_equal(u, 7);
    assert_int_equal(lp_gguf_get_u32_opt(g, "name", &u, &err), LOUPE_ERR_FORMAT);
    assert_contains(err.msg, "'name'");
    assert_int_equal(lp_gguf_get_str_opt(g, "small", &s, &err), LOUPE_ERR_FORMAT);
    assert_null(lp_gguf_get(g, "missing"));
    assert_int_equal(lp_gguf_find_key(g, "flag"), 6);
    lp_gguf_close(g);
}

/* ---- hand-built files for the corruption table ---- */

typedef struct bb { uint8_t b[8192]; size_t n; } bb;

static void b_raw(bb *o, const void *p, size_t n) {
    assert_true(o->n + n <= sizeof o->b);
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void b_u32(bb *o, uint32_t x) { b_raw(o, &x, 4); }
static void b_u64(bb *o, uint64_t x) { b_raw(o, &x, 8); }
static void b_str(bb *o, const char *s) { b_u64(o, strlen(s)); b_raw(o, s, strlen(s)); }
static void b_hdr(bb *o, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    o->n = 0;
    b_raw(o, "GGUF", 4);
    b_u32(o, version);
    b_u64(o, n_tensors);
    b_u64(o, n_kv);
}
static void b_kv_u32(bb *o, const char *k, uint32_t v) { b_str(o, k); b_u32(o, LP_GGUF_UINT32); b_u32(o, v); }
static void b_tensor(bb *o, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type, uint64_t off) {
    b_str(o, name);
    b_u32(o, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) b_u64(o, (uint64_t)ne[i]);
    b_u32(o, type);
    b_u64(o, off);
}
static void b_data(bb *o, size_t align, size_t bytes) {
    while (o->n % align) o->b[o->n++] = 0;
    for (size_t i = 0; i < bytes; i++) o->b[o->n++] = (uint8_t)i;
}

/* One valid file with 2 kvs and 2 f32 tensors (4 and 8 elements). */
static void b_valid(bb *o, uint32_t version) {
    b_hdr(o, version, 2, 2);
    b_kv_u32(o, "general.alignment", 32);
    b_str(o, "general.name");
    b_u32(o, LP_GGUF_STRING);
    b_str(o, "tiny");
    b_tensor(o, "tok_embd", 1, (int64_t[]){4}, LP_TYPE_F32, 0);
    b_tensor(o, "blk.0.attn_q.weight", 2, (int64_t[]){4, 2}, LP_TYPE_F32, 32);
    b_data(o, 32, 16);
    b_data(o, 32, 32);
}

typedef void (*build_fn)(bb *);

static void c_magic(bb *o) { b_valid(o, 3); memcpy(o->b, "GGUG", 4); }
static void c_v1(bb *o) { b_valid(o, 1); }
static void c_v4(bb *o) { b_valid(o, 4); }
static void c_v0(bb *o) { b_valid(o, 0); }
static void c_swapped(bb *o) { b_valid(o, 0x03000000u); }
static void c_nkv_huge(bb *o) { b_hdr(o, 3, 0, 1ull << 60); b_kv_u32(o, "a", 1); }
static void c_nkv_wrap(bb *o) { b_hdr(o, 3, 0, UINT64_MAX); b_kv_u32(o, "a", 1); }
static void c_nt_huge(bb *o) { b_hdr(o, 3, (1ull << 62) + 5, 0); b_tensor(o, "t", 1, (int64_t[]){1}, 0, 0); }
static void c_keylen(bb *o) { b_hdr(o, 3, 0, 1); b_u64(o, 1000); b_raw(o, "abc", 3); b_u32(o, 4); b_u32(o, 0); }
static void c_keylen_max(bb *o) { b_hdr(o, 3, 0, 1); b_u64(o, UINT64_MAX); b_u32(o, 4); b_u32(o, 0); }
static void c_strval(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "general.name"); b_u32(o, LP_GGUF_STRING); b_u64(o, 1ull << 50); b_raw(o, "xx", 2); }
static void c_arrcount(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "tokenizer.ggml.tokens"); b_u32(o, LP_GGUF_ARRAY); b_u32(o, LP_GGUF_STRING); b_u64(o, 1ull << 40); b_str(o, "a"); }
static void c_arrcount_u64(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "arr.u64"); b_u32(o, LP_GGUF_ARRAY); b_u32(o, LP_GGUF_UINT64); b_u64(o, 1ull << 61); b_u64(o, 0); }
static void c_arrstr_trunc(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "arr.str"); b_u32(o, LP_GGUF_ARRAY); b_u32(o, LP_GGUF_STRING); b_u64(o, 2); b_str(o, "a"); b_u64(o, 99); b_raw(o, "b", 1); }
static void c_vtype(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "bad.vtype"); b_u32(o, 13); b_u32(o, 0); }
static void c_vtype_huge(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "bad.vtype"); b_u32(o, 0xffffffffu); b_u32(o, 0); }
static void c_arr_elem(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "bad.elem"); b_u32(o, LP_GGUF_ARRAY); b_u32(o, 77); b_u64(o, 1); b_u32(o, 0); }
static void c_dupkey(bb *o) { b_hdr(o, 3, 0, 3); b_kv_u32(o, "a.b", 1); b_kv_u32(o, "c", 1); b_kv_u32(o, "a.b", 2); }
static void c_emptykey(bb *o) { b_hdr(o, 3, 0, 1); b_kv_u32(o, "", 1); }
static void c_nulkey(bb *o) { b_hdr(o, 3, 0, 1); b_u64(o, 3); b_raw(o, "a\0b", 3); b_u32(o, LP_GGUF_UINT32); b_u32(o, 1); }
static void c_align0(bb *o) { b_hdr(o, 3, 0, 1); b_kv_u32(o, "general.alignment", 0); }
static void c_align48(bb *o) { b_hdr(o, 3, 0, 1); b_kv_u32(o, "general.alignment", 48); }
static void c_align_type(bb *o) { b_hdr(o, 3, 0, 1); b_str(o, "general.alignment"); b_u32(o, LP_GGUF_UINT64); b_u64(o, 32); }
static void c_depth(bb *o) {
    b_hdr(o, 3, 0, 1);
    b_str(o, "depth.bomb");
    b_u32(o, LP_GGUF_ARRAY);
    for (int i = 0; i < 500; i++) { b_u32(o, LP_GGUF_ARRAY); b_u64(o, 1); }
    b_u32(o, LP_GGUF_UINT8);
    b_u64(o, 0);
}
static void one_tensor(bb *o, uint32_t n_dims, const int64_t *ne, uint32_t type, uint64_t off, size_t data) {
    b_hdr(o, 3, 1, 0);
    b_tensor(o, "blk.0.attn_q.weight", n_dims, ne, type, off);
    b_data(o, 32, data);
}
static void c_ne_overflow(bb *o) { one_tensor(o, 4, (int64_t[]){1 << 20, 1 << 20, 1 << 20, 1 << 20}, LP_TYPE_F32, 0, 16); }
static void c_ne_overflow2(bb *o) { one_tensor(o, 2, (int64_t[]){INT64_MAX, 2}, LP_TYPE_I8, 0, 16); }
static void c_bytes_overflow(bb *o) { one_tensor(o, 2, (int64_t[]){1ll << 32, 1ll << 30}, LP_TYPE_F64, 0, 16); }
static void c_ne_neg(bb *o) { one_tensor(o, 2, (int64_t[]){4, -1}, LP_TYPE_F32, 0, 16); }
static void c_ndims0(bb *o) { one_tensor(o, 0, NULL, LP_TYPE_F32, 0, 16); }
static void c_ndims5(bb *o) { one_tensor(o, 5, (int64_t[]){1, 1, 1, 1, 1}, LP_TYPE_F32, 0, 16); }
static void c_ttype(bb *o) { one_tensor(o, 1, (int64_t[]){4}, 4, 0, 16); }
static void c_ttype_huge(bb *o) { one_tensor(o, 1, (int64_t[]){4}, 1000, 0, 16); }
static void c_block(bb *o) { one_tensor(o, 1, (int64_t[]){33}, LP_TYPE_Q8_0, 0, 64); }
static void c_misaligned(bb *o) { one_tensor(o, 1, (int64_t[]){4}, LP_TYPE_F32, 4, 64); }
static void c_past_eof(bb *o) { one_tensor(o, 1, (int64_t[]){4}, LP_TYPE_F32, 1024, 16); }
static void c_off_wrap(bb *o) { one_tensor(o, 1, (int64_t[]){4}, LP_TYPE_F32, UINT64_MAX - 31, 16); }
static void c_size_past_eof(bb *o) { one_tensor(o, 1, (int64_t[]){400}, LP_TYPE_F32, 0, 16); }
static void c_overlap(bb *o) {
    b_hdr(o, 3, 2, 0);
    b_tensor(o, "first", 1, (int64_t[]){16}, LP_TYPE_F32, 0);
    b_tensor(o, "second", 1, (int64_t[]){4}, LP_TYPE_F32, 32);
    b_data(o, 32, 96);
}
static void c_dup_tensor(bb *o) {
    b_hdr(o, 3, 2, 0);
    b_tensor(o, "w", 1, (int64_t[]){4}, LP_TYPE_F32, 0);
    b_tensor(o, "w", 1, (int64_t[]){4}, LP_TYPE_F32, 32);
    b_data(o, 32, 64);
}
static void c_no_data(bb *o) { b_hdr(o, 3, 1, 0); b_tensor(o, "w", 1, (int64_t[]){4}, LP_TYPE_F32, 0); }

typedef struct ccase { const char *what; build_fn build; loupe_status st; const char *m1, *m2; } ccase;

static const ccase CASES[] = {
    {"bad magic", c_magic, LOUPE_ERR_FORMAT, "not a GGUF file", NULL},
    {"version 1", c_v1, LOUPE_ERR_UNSUPPORTED, "version 1", NULL},
    {"version 4", c_v4, LOUPE_ERR_UNSUPPORTED, "version 4", NULL},
    {"version 0", c_v0, LOUPE_ERR_FORMAT, "version 0", NULL},
    {"byte-swapped version", c_swapped, LOUPE_ERR_UNSUPPORTED, "big-endian", NULL},
    {"huge n_kv", c_nkv_huge, LOUPE_ERR_FORMAT, "key-value pairs", NULL},
    {"n_kv = 2^64-1", c_nkv_wrap, LOUPE_ERR_FORMAT, "key-value pairs", NULL},
    {"huge n_tensors", c_nt_huge, LOUPE_ERR_FORMAT, "tensors", NULL},
    {"key length past EOF", c_keylen, LOUPE_ERR_FORMAT, "key #0", "past end of file"},
    {"key length 2^64-1", c_keylen_max, LOUPE_ERR_FORMAT, "key #0", "past end of file"},
    {"string value past EOF", c_strval, LOUPE_ERR_FORMAT, "key 'general.name'", "past end of file"},
    {"absurd array count", c_arrcount, LOUPE_ERR_FORMAT, "key 'tokenizer.ggml.tokens'", "1099511627776"},
    {"absurd u64 array count", c_arrcount_u64, LOUPE_ERR_FORMAT, "key 'arr.u64'", "u64"},
    {"string in array past EOF", c_arrstr_trunc, LOUPE_ERR_FORMAT, "key 'arr.str'", "past end of file"},
    {"unknown value type", c_vtype, LOUPE_ERR_FORMAT, "key 'bad.vtype'", "unknown value type 13"},
    {"unknown value type 2^32-1", c_vtype_huge, LOUPE_ERR_FORMAT, "key 'bad.vtype'", "unknown value type"},
    {"unknown array element type", c_arr_elem, LOUPE_ERR_FORMAT, "key 'bad.elem'", "unknown value type 77"},
    {"duplicate key", c_dupkey, LOUPE_ERR_FORMAT, "key 'a.b'", "duplicate"},
    {"empty key", c_emptykey, LOUPE_ERR_FORMAT, "key #0", "empty"},
    {"NUL in key", c_nulkey, LOUPE_ERR_FORMAT, "key 'a?b'", "NUL"},
    {"zero alignment", c_align0, LOUPE_ERR_FORMAT, "general.alignment", "power of two"},
    {"alignment 48", c_align48, LOUPE_ERR_FORMAT, "general.alignment", "power of two"},
    {"alignment not u32", c_align_type, LOUPE_ERR_FORMAT, "general.alignment", "u32"},
    {"depth bomb", c_depth, LOUPE_ERR_FORMAT, "key 'depth.bomb'", "nested deeper"},
    {"ne product overflows", c_ne_overflow, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "overflow"},
    {"ne INT64_MAX x 2", c_ne_overflow2, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "overflow"},
    {"byte size overflows", c_bytes_overflow, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "overflow"},
    {"negative dimension", c_ne_neg, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "negative"},
    {"n_dims 0", c_ndims0, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "n_dims"},
    {"n_dims 5", c_ndims5, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "n_dims"},
    {"removed tensor type 4", c_ttype, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "unknown tensor type 4"},
    {"tensor type 1000", c_ttype_huge, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "unknown tensor type 1000"},
    {"row not whole blocks", c_block, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "block size"},
    {"misaligned offset", c_misaligned, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "alignment"},
    {"offset past EOF", c_past_eof, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "past end of file"},
    {"offset wraps", c_off_wrap, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "past end of file"},
    {"size past EOF", c_size_past_eof, LOUPE_ERR_FORMAT, "tensor 'blk.0.attn_q.weight'", "past end of file"},
    {"overlapping tensors", c_overlap, LOUPE_ERR_FORMAT, "tensor 'second'", "overlaps tensor 'first'"},
    {"duplicate tensor", c_dup_tensor, LOUPE_ERR_FORMAT, "tensor 'w'", "duplicate"},
    {"no data section", c_no_data, LOUPE_ERR_FORMAT, "data section", NULL},
};

static void test_corruption_table(void **state) {
    (void)state;
    static bb o;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const ccase *c = &CASES[i];
        memset(&o, 0, sizeof o);
        c->build(&o);
        /* exact-size heap copy so ASan sees any overread */
        uint8_t *buf = malloc(o.n);
        memcpy(buf, o.b, o.n);
        lp_error err = {0};
        lp_gguf *g = lp_gguf_open_mem(buf, o.n, "corrupt.gguf", &err);
        if (g) fail_msg("case '%s': opened a corrupt file", c->what);
        if (err.status != c->st) fail_msg("case '%s': status %d, want %d (%s)", c->what, err.status, c->st, err.msg);
        if (!contains(err.msg, "corrupt.gguf") || !contains(err.msg, c->m1) || (c->m2 && !contains(err.msg, c->m2)))
            fail_msg("case '%s': message \"%s\" lacks \"%s\"/\"%s\"", c->what, err.msg, c->m1, c->m2 ? c->m2 : "");
        if (getenv("LOUPE_TEST_VERBOSE")) printf("  %-28s %s\n", c->what, err.msg);
        free(buf);
    }
}

/* The valid builder file opens; a v2 file too; 8 nesting levels are fine. */
static void test_valid_handbuilt(void **state) {
    (void)state;
    static bb o;
    lp_error err = {0};
    for (uint32_t ver = 2; ver <= 3; ver++) {
        b_valid(&o, ver);
        lp_gguf *g = lp_gguf_open_mem(o.b, o.n, "ok.gguf", &err);
        if (!g) fail_msg("%s", err.msg);
        assert_int_equal(g->version, ver);
        assert_int_equal(g->n_tensors, 2);
        assert_int_equal(g->tensors[1].nbytes, 32);
        assert_int_equal(g->tensors[1].ne[1], 2);
        assert_int_equal(((const uint8_t *)g->tensors[1].data)[31], 31);
        lp_gguf_close(g);
    }
    b_hdr(&o, 3, 0, 1);
    b_str(&o, "eight");
    b_u32(&o, LP_GGUF_ARRAY);
    for (int i = 0; i < 7; i++) { b_u32(&o, LP_GGUF_ARRAY); b_u64(&o, 1); }
    b_u32(&o, LP_GGUF_UINT8);
    b_u64(&o, 1);
    b_raw(&o, "\x2a", 1);
    lp_gguf *g = lp_gguf_open_mem(o.b, o.n, "eight.gguf", &err);
    if (!g) fail_msg("%s", err.msg);
    const lp_gguf_value *v = lp_gguf_get(g, "eight");
    for (int i = 0; i < 7; i++) v = &v->v.arr.items[0];
    assert_int_equal(v->v.arr.elem, LP_GGUF_UINT8);
    assert_int_equal(((uint8_t *)v->v.arr.data)[0], 42);
    lp_gguf_close(g);
    /* empty tensorless file without trailing padding (ggml accepts it) */
    b_hdr(&o, 3, 0, 0);
    g = lp_gguf_open_mem(o.b, o.n, "empty.gguf", &err);
    assert_non_null(g);
    assert_int_equal(g->n_kv, 0);
    lp_gguf_close(g);
}

/* Cut a valid file at every byte: all cuts before the end of the last tensor fail with the file name. */
static void test_truncate_everywhere(void **state) {
    (void)state;
    lp_gguf_writer *w = writer_all_types();
    uint8_t data[2 * 34 * 2];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 13);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "blk.0.ffn.weight", LP_TYPE_Q8_0, 2, (int64_t[]){64, 2}, data), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_add_tensor(w, "norm", LP_TYPE_F32, 1, (int64_t[]){5}, data), LOUPE_OK);
    lp_error err = {0};
    const char *p = tmp_path("trunc.gguf");
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    size_t n;
    uint8_t *full = slurp(p, &n);
    lp_gguf *g = lp_gguf_open_mem(full, n, "trunc.gguf", &err);
    assert_non_null(g);
    uint64_t end = g->data_offset + g->tensors[1].offset + g->tensors[1].nbytes;
    lp_gguf_close(g);

    int failed = 0;
    for (size_t cut = 0; cut < n; cut++) {
        uint8_t *b = malloc(cut ? cut : 1);
        memcpy(b, full, cut);
        g = lp_gguf_open_mem(cut ? b : NULL, cut, "trunc.gguf", &err);
        if (cut < end) {
            if (g) fail_msg("cut at %zu of %zu opened", cut, n);
            assert_int_equal(err.status, LOUPE_ERR_FORMAT);
            if (!contains(err.msg, "trunc.gguf")) fail_msg("cut %zu: %s", cut, err.msg);
            failed++;
        } else {
            if (!g) fail_msg("cut at %zu (in trailing padding) failed: %s", cut, err.msg);
            lp_gguf_close(g);
        }
        free(b);
    }
    assert_int_equal(failed, (int)end);

    /* the mmap path on a few truncated files, including an empty one */
    size_t cuts[] = {0, 3, 23, n / 2, (size_t)end - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        const char *tp = tmp_path("cut.gguf");
        FILE *f = fopen(tp, "wb");
        fwrite(full, 1, cuts[i], f);
        fclose(f);
        assert_null(lp_gguf_open(tp, &err));
        assert_contains(err.msg, tp);
    }
    free(full);
    assert_null(lp_gguf_open(tmp_path("does-not-exist.gguf"), &err));
    assert_int_equal(err.status, LOUPE_ERR_IO);
    assert_contains(err.msg, "does-not-exist.gguf");
    assert_null(lp_gguf_open(g_dir, &err));
    assert_int_equal(err.status, LOUPE_ERR_IO);
}

/* ---- printing ---- */

static void test_print(void **state) {
    (void)state;
    lp_gguf_writer *w = writer_all_types();
    const char *many[100];
    char bufs[100][16];
    for (int i = 0; i < 100; i++) {
        snprintf(bufs[i], sizeof bufs[i], "t%d", i);
        many[i] = bufs[i];
    }
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", many, 100);
    float wt[8] = {0};
    lp_gguf_writer_add_tensor(w, "output.weight", LP_TYPE_F32, 2, (int64_t[]){4, 2}, wt);
    lp_error err = {0};
    const char *p = tmp_path("print.gguf");
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf *g = lp_gguf_open(p, &err);
    assert_non_null(g);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    lp_gguf_print(g, f);
    fclose(f);
    assert_contains(text, "GGUF v3");
    assert_contains(text, "alignment 32");
    assert_contains(text, "29 keys");
    assert_contains(text, "1 tensors");
    assert_contains(text, "[arr str \xc3\x97 100] \"t0\", \"t1\"");
    assert_contains(text, "\"t7\", ...");
    assert_null(strstr(text, "\"t8\""));
    assert_contains(text, "[arr arr \xc3\x97 3] [1, 2, 3], [], [[\"s0\", \"s1\"]]");
    assert_contains(text, "t.i64");
    assert_contains(text, "-9223372036854775808");
    assert_contains(text, "18446744073709551615");
    assert_contains(text, "\"h\xc3\xa9llo \\\"w\\\"\\n\"");
    assert_contains(text, "true");
    assert_contains(text, "f32   0.1\n"); /* shortest form that reads back as 0.1f */
    assert_contains(text, "f64   3.141592653589793\n");
    assert_contains(text, "1.5, -2.25, 1e-30");
    assert_contains(text, "output.weight");
    assert_contains(text, "[4, 2]");
    assert_contains(text, "f32");
    free(text);
    lp_gguf_close(g);
}

/* ---- interop: a file written by llama.cpp's own writer (see tests/fixtures/README.md) ---- */

static void test_llama_fixture(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open("tests/fixtures/llama_gguf_sample.gguf", &err);
    if (!g) fail_msg("%s", err.msg);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->alignment, 32);
    assert_int_equal(g->n_kv, 15);
    assert_int_equal(g->data_offset, 1216);

    uint32_t u = 0;
    int64_t i = 0;
    float f = 0;
    bool b = false;
    const char *s = NULL;
    const lp_gguf_value *v;
    assert_int_equal(lp_gguf_get_u32(g, "some.parameter.uint8", &u, &err), LOUPE_OK);
    assert_int_equal(u, 0x12);
    assert_int_equal(lp_gguf_get(g, "some.parameter.uint8")->type, LP_GGUF_UINT8);
    assert_int_equal(lp_gguf_get_i64(g, "some.parameter.int8", &i, &err), LOUPE_OK);
    assert_int_equal(i, -0x13);
    assert_int_equal(lp_gguf_get_u32(g, "some.parameter.uint16", &u, &err), LOUPE_OK);
    assert_int_equal(u, 0x1234);
    assert_int_equal(lp_gguf_get_i64(g, "some.parameter.int16", &i, &err), LOUPE_OK);
    assert_int_equal(i, -0x1235);
    assert_int_equal(lp_gguf_get_u32(g, "some.parameter.uint32", &u, &err), LOUPE_OK);
    assert_int_equal(u, 0x12345678);
    assert_int_equal(lp_gguf_get_i64(g, "some.parameter.int32", &i, &err), LOUPE_OK);
    assert_int_equal(i, -0x12345679);
    assert_int_equal(lp_gguf_get_f32(g, "some.parameter.float32", &f, &err), LOUPE_OK);
    assert_true(f == 0.123456789f);
    v = lp_gguf_get(g, "some.parameter.uint64");
    assert_int_equal(v->type, LP_GGUF_UINT64);
    assert_true(v->v.u64 == 0x123456789abcdef0ull);
    assert_int_equal(lp_gguf_get_i64(g, "some.parameter.int64", &i, &err), LOUPE_OK);
    assert_true(i == -0x123456789abcdef1ll);
    v = lp_gguf_get(g, "some.parameter.float64");
    assert_int_equal(v->type, LP_GGUF_FLOAT64);
    assert_true(v->v.f64 == 0.1234567890123456789);
    assert_int_equal(lp_gguf_get_bool(g, "some.parameter.bool", &b, &err), LOUPE_OK);
    assert_true(b);
    assert_int_equal(lp_gguf_get_str(g, "some.parameter.string", &s, &err), LOUPE_OK);
    assert_string_equal(s, "hello world");
    assert_int_equal(lp_gguf_get_arr(g, "some.parameter.arr.i16", LP_GGUF_INT16, &v, &err), LOUPE_OK);
    assert_int_equal(v->v.arr.n, 4);
    assert_memory_equal(v->v.arr.data, ((int16_t[]){1, 2, 3, 4}), 8);
    assert_int_equal(lp_gguf_get_arr(g, "some.parameter.arr.f32", LP_GGUF_FLOAT32, &v, &err), LOUPE_OK);
    assert_int_equal(v->v.arr.n, 3);
    assert_memory_equal(v->v.arr.data, ((float[]){3.145f, 2.718f, 1.414f}), 12);
    assert_int_equal(lp_gguf_get_arr(g, "some.parameter.arr.str", LP_GGUF_STRING, &v, &err), LOUPE_OK);
    assert_int_equal(v->v.arr.n, 3);
    assert_string_equal(v->v.arr.strs[0].s, "hello");
    assert_string_equal(v->v.arr.strs[1].s, "world");
    assert_string_equal(v->v.arr.strs[2].s, "!");

    /* 10 f32 tensors "tensor_<i>", every element 100 + i; shapes come from
     * rand() seeded with 123456 in llama.cpp's example, as listed by
     * `llama-gguf FILE r n` when the fixture was made. */
    static const int64_t shapes[10][4] = {{4, 7, 9, 3}, {5, 1, 1, 1}, {6, 4, 10, 7}, {3, 2, 1, 1}, {9, 10, 1, 1},
                                          {1, 6, 2, 1}, {3, 1, 1, 1}, {1, 10, 1, 5}, {1, 1, 1, 1}, {2, 8, 7, 4}};
    static const uint64_t offsets[10] = {0, 3040, 3072, 9792, 9824, 10208, 10272, 10304, 10528, 10560};
    assert_int_equal(g->n_tensors, 10);
    for (int t = 0; t < 10; t++) {
        char name[24];
        snprintf(name, sizeof name, "tensor_%d", t);
        int64_t k = lp_gguf_find_tensor(g, name);
        assert_int_equal(k, t);
        const lp_gguf_tensor *ti = &g->tensors[k];
        assert_int_equal(ti->type, LP_TYPE_F32);
        for (int d = 0; d < 4; d++) assert_int_equal(ti->ne[d], shapes[t][d]);
        int64_t nel = lp_gguf_tensor_nelements(ti);
        assert_int_equal(ti->nbytes, (uint64_t)nel * 4);
        assert_int_equal(ti->offset, offsets[t]);
        const float *x = ti->data;
        for (int64_t j = 0; j < nel; j++) {
            float val;
            memcpy(&val, x + j, 4);
            if (val != 100.0f + t) fail_msg("%s[%lld] = %g", name, (long long)j, val);
        }
    }
    lp_gguf_close(g);
}

/* Copying the fixture through our writer reproduces llama.cpp's bytes exactly. */
static void test_llama_fixture_rewrite(void **state) {
    (void)state;
    lp_error err = {0};
    const char *src = "tests/fixtures/llama_gguf_sample.gguf";
    lp_gguf *g = lp_gguf_open(src, &err);
    if (!g) fail_msg("%s", err.msg);
    lp_gguf_writer *w = lp_gguf_writer_new();
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
    }
    const char *dst = tmp_path("llama_copy.gguf");
    assert_int_equal(lp_gguf_writer_write(w, dst, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
    size_t n1, n2;
    uint8_t *a = slurp(src, &n1), *b = slurp(dst, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

/* lp_gguf_arr_int widens every integer element type and refuses the rest. */
static void test_arr_int(void **state) {
    (void)state;
    int64_t x = 0;
    const int16_t i16[3] = {-5, 7, 32767};
    lp_gguf_value v = {.type = LP_GGUF_ARRAY};
    v.v.arr.elem = LP_GGUF_INT16;
    v.v.arr.n = 3;
    v.v.arr.data = (void *)i16;
    assert_true(lp_gguf_arr_int(&v, 0, &x));
    assert_int_equal(x, -5);
    assert_true(lp_gguf_arr_int(&v, 2, &x));
    assert_int_equal(x, 32767);
    assert_false(lp_gguf_arr_int(&v, 3, &x)); /* out of range */
    const uint64_t u64[2] = {UINT64_C(1) << 40, UINT64_MAX};
    v.v.arr.elem = LP_GGUF_UINT64;
    v.v.arr.n = 2;
    v.v.arr.data = (void *)u64;
    assert_true(lp_gguf_arr_int(&v, 0, &x));
    assert_int_equal(x, (int64_t)1 << 40);
    assert_false(lp_gguf_arr_int(&v, 1, &x)); /* does not fit int64 */
    const float f[1] = {1.0f};
    v.v.arr.elem = LP_GGUF_FLOAT32;
    v.v.arr.n = 1;
    v.v.arr.data = (void *)f;
    assert_false(lp_gguf_arr_int(&v, 0, &x)); /* not an integer array */
    lp_gguf_value scalar = {.type = LP_GGUF_UINT32};
    assert_false(lp_gguf_arr_int(&scalar, 0, &x));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_all_types),
        cmocka_unit_test(test_arr_int),
        cmocka_unit_test(test_rewrite_identical),
        cmocka_unit_test(test_tensors_and_alignment),
        cmocka_unit_test(test_writer_rejects),
        cmocka_unit_test(test_writer_atomic),
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_corruption_table),
        cmocka_unit_test(test_valid_handbuilt),
        cmocka_unit_test(test_truncate_everywhere),
        cmocka_unit_test(test_print),
        cmocka_unit_test(test_llama_fixture),
        cmocka_unit_test(test_llama_fixture_rewrite),
    };
    return cmocka_run_group_tests_name("gguf", tests, setup_dir, teardown_dir);
}
