/* tests/fuzz/fuzz_gguf.c — libFuzzer target for the GGUF reader.
 * Opens the input as a GGUF buffer; when it parses, walks every value and
 * tensor byte (so ASan checks the bounds the reader promised) and prints it;
 * a file with loupe.flash.* keys also goes through the flash layout check,
 * and one with clip.projector_type through both vision-tower loaders (CLIP /
 * InternViT and Qwen2.5-VL's), which must fail cleanly or load. */
#include "gguf.h"
#include "../../language/flash_format.h"
#include "../../language/weights.h"
#include "../../vision/clip.h"
#include "../../vision/qwen_vit.h"

#include <stdio.h>
#include <string.h>

static volatile uint64_t sink;

static void walk(const lp_gguf_value *v) {
    switch (v->type) {
    case LP_GGUF_STRING:
        for (uint64_t i = 0; i <= v->v.str.len; i++) sink += (uint8_t)v->v.str.s[i]; /* includes the NUL */
        break;
    case LP_GGUF_ARRAY:
        for (uint64_t i = 0; i < v->v.arr.n; i++) {
            if (v->v.arr.elem == LP_GGUF_STRING) sink += v->v.arr.strs[i].len + (uint8_t)v->v.arr.strs[i].s[v->v.arr.strs[i].len];
            else if (v->v.arr.elem == LP_GGUF_ARRAY) walk(&v->v.arr.items[i]);
        }
        if (v->v.arr.data && v->v.arr.n) sink += ((const uint8_t *)v->v.arr.data)[0];
        break;
    default:
        sink += v->v.u64;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *devnull;
    if (!devnull) devnull = fopen("/dev/null", "w");
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open_mem(data, size, "fuzz.gguf", &err);
    if (!g) {
        if (err.status == LOUPE_OK || !strstr(err.msg, "fuzz.gguf")) __builtin_trap(); /* every failure is reported and named */
        return 0;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        walk(&g->kv[i].val);
        if (lp_gguf_find_key(g, g->kv[i].key) != (int64_t)i) __builtin_trap(); /* keys are unique */
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        const uint8_t *p = t->data;
        if (t->nbytes) sink += p[0] + p[t->nbytes - 1]; /* first and last byte lie inside the buffer */
        sink += (uint64_t)lp_gguf_tensor_nelements(t);
    }
    uint32_t u;
    int64_t i64;
    float f;
    bool b;
    const char *s;
    lp_gguf_get_u32_opt(g, "general.alignment", &u, &err);
    lp_gguf_get_i64(g, "general.file_type", &i64, &err);
    lp_gguf_get_f32_opt(g, "general.scale", &f, &err);
    lp_gguf_get_bool_opt(g, "general.flag", &b, &err);
    lp_gguf_get_str_opt(g, "general.architecture", &s, &err);
    if (devnull) lp_gguf_print(g, devnull);
    /* the flash layout's own checks (language/flash_format.c) */
    if (lp_flash_is_flash(g)) {
        lp_flash_layout fl;
        lp_error fe = {0};
        if (lp_flash_layout_read(g, &fl, &fe) != LOUPE_OK && (fe.status == LOUPE_OK || !strstr(fe.msg, "fuzz.gguf")))
            __builtin_trap();
    }
    if (lp_gguf_find_key(g, "clip.projector_type") >= 0) {
        lp_error ve = {0};
        lp_weight_store *ws = lp_weights_resident(g, &ve);
        if (ws) {
            lp_clip *c = lp_clip_load(g, ws, &ve);
            if (!c && ve.status == LOUPE_OK) __builtin_trap(); /* a refusal says why */
            lp_clip_free(c);
            ve = (lp_error){0};
            lp_qwen_vit *q = lp_qwen_vit_load(g, ws, &ve);
            if (!q && ve.status == LOUPE_OK) __builtin_trap();
            lp_qwen_vit_free(q);
            lp_ws_free(ws);
        }
    }
    lp_gguf_close(g);
    return 0;
}
