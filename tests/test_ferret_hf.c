/* tests/test_ferret_hf.c — `loupe convert --from-hf` on a random-weight
 * Ferret checkpoint in Hugging Face's layout (tests/fixtures/ferret/,
 * written by tools/reference/ferret_reference.py, which also computed what
 * Ferret gives for one prompt with a box region and a mask region):
 *
 *   - the converted pair is family "ferret", squeezes the image, and its
 *     decoder input is exactly the reference's prompt (ids, image rows,
 *     region rows), its logits agree to 1e-3 (F32) and its greedy answer is
 *     the reference's;
 *   - --outtype q8_0 / q4_k convert and answer;
 *   - a truncated shard, a missing tensor, a tensor of another dtype, a
 *     missing config.json or tokenizer, an existing output: each refused
 *     with the file and the tensor named, no output left behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/testutil.h"

#include "../fusion/hf_convert.h"
#include "../fusion/vlm.h"
#include "../language/decoder.h"
#include "../vision/image.h"
#include "gguf.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/ferret/"
#define TOL 1e-3

static char tmpdir[64];

static int setup(void **state) {
    (void)state;
    return tu_mkdtemp(tmpdir, sizeof tmpdir, "ferret");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmpdir);
}

static cJSON *load_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = 0;
    fclose(f);
    cJSON *j = cJSON_Parse(b);
    free(b);
    assert_non_null(j);
    return j;
}

static float *json_floats(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    float *v = malloc((size_t)*n * sizeof *v);
    for (int i = 0; i < *n; i++) v[i] = (float)cJSON_GetArrayItem(a, i)->valuedouble;
    return v;
}

static double max_abs_diff(const float *a, const float *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - (double)b[i]));
    return m;
}

/* The decoder's input rows of the prefill and every logits row. */
typedef struct capture {
    float *embd;
    int64_t n_embd;
    float **logits;
    int n_logits, V;
} capture;

static void dump_cb(void *user, const char *name, const float *data, int64_t n) {
    capture *c = user;
    if (!strcmp(name, "embd_in") && !c->embd) {
        c->embd = malloc((size_t)n * sizeof(float));
        memcpy(c->embd, data, (size_t)n * sizeof(float));
        c->n_embd = n;
    } else if (!strcmp(name, "logits") && c->V && n >= c->V) {
        c->logits = realloc(c->logits, (size_t)(c->n_logits + 1) * sizeof *c->logits);
        c->logits[c->n_logits] = malloc((size_t)c->V * sizeof(float));
        memcpy(c->logits[c->n_logits++], data + (n - c->V), (size_t)c->V * sizeof(float)); /* the last row */
    }
}

static void convert(const char *dir, const char *prefix, lp_type t) {
    lp_hf_convert_params p = lp_hf_convert_default_params();
    p.outtype = t;
    p.force = true;
    lp_hf_convert_report rep;
    lp_error err = {0};
    if (lp_hf_convert(dir, prefix, &p, &rep, &err) != LOUPE_OK) fail_msg("convert: %s", err.msg);
    assert_string_equal(rep.kind, "ferret");
    assert_true(rep.wrote_mmproj);
    assert_true(rep.n_tensors_lm > 0 && rep.n_tensors_mmproj > 0);
}

/* Ask the fixture's question with its box and mask regions; capture. */
static void ask(const char *prefix, capture *cap, int n_predict, lp_vlm **vout) {
    char lm[256], mm[256];
    snprintf(lm, sizeof lm, "%s.gguf", prefix);
    snprintf(mm, sizeof mm, "%s-mmproj.gguf", prefix);
    lp_error err = {0};
    lp_vlm_params vp = lp_vlm_default_params();
    lp_vlm *v = lp_vlm_load(lm, mm, &vp, &err);
    if (!v) fail_msg("%s", err.msg);
    assert_int_equal(lp_vlm_get_family(v), LP_VLM_FERRET);
    lp_image img;
    assert_int_equal(lp_image_load(FIX "ckpt/image.png", &img, &err), LOUPE_OK);
    uint8_t mask[56 * 56];
    FILE *f = fopen(FIX "ckpt/mask.u8", "rb");
    assert_non_null(f);
    assert_int_equal(fread(mask, 1, sizeof mask, f), sizeof mask);
    fclose(f);
    lp_vlm_region reg[2] = {{.kind = LP_VLM_REGION_BOX, .box = {8, 10, 30, 40}},
                            {.kind = LP_VLM_REGION_MASK, .mask = mask, .mask_w = 56, .mask_h = 56}};
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 2;
    lp_vlm_ctx *ctx = lp_vlm_ctx_new(v, &cp, &err);
    assert_non_null(ctx);
    lp_vlm_ctx_set_dump(ctx, dump_cb, cap);
    lp_vlm_gen_params g = lp_vlm_gen_default_params(); /* greedy */
    g.n_predict = n_predict;
    char *answer = NULL;
    lp_vlm_stats st;
    if (lp_vlm_ask_regions(v, ctx, &img, "What is in the region <region> and <region>?", reg, 2, &g, NULL, NULL,
                           &answer, &st, &err) != LOUPE_OK)
        fail_msg("ask: %s", err.msg);
    assert_int_equal(st.n_regions, 2);
    free(answer);
    lp_vlm_ctx_free(ctx);
    lp_image_free(&img);
    *vout = v;
}

static void test_parity_f32(void **state) {
    (void)state;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s/ferret-f32", tmpdir);
    convert(FIX "ckpt", prefix, LP_TYPE_F32);
    cJSON *exp = load_json(FIX "ckpt/expected.json");
    const cJSON *ids = cJSON_GetObjectItem(exp, "prompt_ids");
    const int n_pos = cJSON_GetArraySize(ids);
    int nl, ng = cJSON_GetArraySize(cJSON_GetObjectItem(exp, "greedy"));
    float *logits_ref = json_floats(cJSON_GetObjectItem(exp, "logits"), &nl);

    capture cap = {.V = nl};
    lp_vlm *v;
    ask(prefix, &cap, ng, &v);
    const lp_llama *lmod = lp_vlm_llama(v);
    const int E = lp_llama_n_embd(lmod);
    assert_int_equal(lp_llama_n_vocab(lmod), nl);
    assert_int_equal(cap.n_embd, (int64_t)n_pos * E);

    /* the prompt: text rows are the ids' embeddings, then the image rows,
     * then the two regions' rows where <region_fea> is */
    int n_img = 0, n_reg = 0, img_first = -1;
    float *row = malloc((size_t)E * sizeof *row);
    lp_error err = {0};
    double d_img = 0, d_reg = 0;
    int nf;
    float *img0 = json_floats(cJSON_GetObjectItem(exp, "image_embd_first"), &nf);
    float *img1 = json_floats(cJSON_GetObjectItem(exp, "image_embd_last"), &nf);
    const cJSON *regs = cJSON_GetObjectItem(exp, "region_embd");
    const int region_id = lp_vlm_region_token(v);
    for (int i = 0; i < n_pos; i++) {
        const int id = cJSON_GetArrayItem(ids, i)->valueint;
        const float *got = cap.embd + (size_t)i * E;
        if (id < 0) {
            if (img_first < 0) img_first = i;
            n_img++;
            continue;
        }
        if (id == region_id) {
            float *r = json_floats(cJSON_GetArrayItem(regs, n_reg++), &nf);
            d_reg = fmax(d_reg, max_abs_diff(got, r, E));
            free(r);
            continue;
        }
        assert_int_equal(lp_llama_embed(lmod, &id, 1, row, &err), LOUPE_OK);
        if (memcmp(row, got, (size_t)E * sizeof *row)) fail_msg("prompt position %d is not token %d", i, id);
    }
    assert_int_equal(n_img, cJSON_GetObjectItem(exp, "n_image_tokens")->valueint);
    assert_int_equal(n_reg, 2);
    d_img = fmax(max_abs_diff(cap.embd + (size_t)img_first * E, img0, E),
                 max_abs_diff(cap.embd + (size_t)(img_first + n_img - 1) * E, img1, E));
    assert_true(cap.n_logits >= 1);
    const double d_log = max_abs_diff(cap.logits[0], logits_ref, nl);
    double lmax = 0;
    for (int i = 0; i < nl; i++) lmax = fmax(lmax, fabs(logits_ref[i]));
    printf("  ferret f32: %d positions (%d image, 2 regions): image rows max|diff| %.3g, regions %.3g, "
           "logits %.3g (max|ref| %.3g)\n", n_pos, n_img, d_img, d_reg, d_log, lmax);
    assert_true(d_img <= TOL);
    assert_true(d_reg <= TOL);
    assert_true(d_log <= TOL);
    /* greedy: each step's argmax is the reference's next token */
    const cJSON *greedy = cJSON_GetObjectItem(exp, "greedy");
    int n_cmp = cap.n_logits < ng ? cap.n_logits : ng;
    for (int k = 0; k < n_cmp; k++) {
        int best = 0;
        for (int t = 1; t < nl; t++)
            if (cap.logits[k][t] > cap.logits[k][best]) best = t;
        if (best != cJSON_GetArrayItem(greedy, k)->valueint)
            fail_msg("greedy token %d: loupe %d, reference %d", k, best, cJSON_GetArrayItem(greedy, k)->valueint);
    }
    printf("  greedy: %d of %d reference tokens identical\n", n_cmp, ng);
    assert_true(n_cmp >= 1);
    for (int k = 0; k < cap.n_logits; k++) free(cap.logits[k]);
    free(cap.logits);
    free(cap.embd);
    free(row);
    free(img0);
    free(img1);
    free(logits_ref);
    cJSON_Delete(exp);
    lp_vlm_free(v);
}

static void test_quantized(void **state) {
    (void)state;
    const lp_type types[] = {LP_TYPE_F16, LP_TYPE_Q8_0, LP_TYPE_Q4_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char prefix[128], lm[160];
        snprintf(prefix, sizeof prefix, "%s/ferret-%s", tmpdir, lp_type_name(types[i]));
        convert(FIX "ckpt", prefix, types[i]);
        snprintf(lm, sizeof lm, "%s.gguf", prefix);
        lp_error err = {0};
        lp_gguf *g = lp_gguf_open(lm, &err);
        assert_non_null(g);
        int64_t t = lp_gguf_find_tensor(g, "blk.0.ffn_up.weight");
        assert_true(t >= 0);
        /* q4_K needs rows of 256: these 32-wide rows fall back to q4_0 */
        assert_int_equal(g->tensors[t].type, types[i] == LP_TYPE_Q4_K ? LP_TYPE_Q4_0 : types[i]);
        lp_gguf_close(g);
        capture cap = {0};
        lp_vlm *v;
        ask(prefix, &cap, 2, &v);
        free(cap.embd);
        lp_vlm_free(v);
    }
}

/* ---- refusals ---- */

static void copy_fixture(const char *to) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r " FIX "ckpt '%s'", to, to);
    assert_int_equal(system(cmd), 0);
}

/* Replace the first occurrence of `from` by `to` (same length) in a file. */
static void patch_file(const char *path, const char *from, const char *to) {
    assert_int_equal(strlen(from), strlen(to));
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    char *at = memmem(b, (size_t)n, from, strlen(from));
    if (!at) fail_msg("%s: no '%s'", path, from);
    fseek(f, at - b, SEEK_SET);
    assert_int_equal(fwrite(to, 1, strlen(to), f), strlen(to));
    fclose(f);
    free(b);
}

static void expect_fail(const char *dir, loupe_status want, const char *n1, const char *n2) {
    char prefix[128], lm[160], mm[160];
    snprintf(prefix, sizeof prefix, "%s/bad", tmpdir);
    snprintf(lm, sizeof lm, "%s.gguf", prefix);
    snprintf(mm, sizeof mm, "%s-mmproj.gguf", prefix);
    lp_hf_convert_params p = lp_hf_convert_default_params();
    p.force = true;
    lp_error err = {0};
    loupe_status st = lp_hf_convert(dir, prefix, &p, NULL, &err);
    if (st != want || !strstr(err.msg, n1) || (n2 && !strstr(err.msg, n2)))
        fail_msg("got %d \"%s\"; wanted %d with \"%s\" and \"%s\"", st, err.msg, want, n1, n2 ? n2 : "");
    struct stat sb;
    assert_int_not_equal(stat(lm, &sb), 0); /* nothing half-written left */
    assert_int_not_equal(stat(mm, &sb), 0);
}

static void test_refusals(void **state) {
    (void)state;
    char d[128], f[256];
    snprintf(d, sizeof d, "%s/ck", tmpdir);

    /* a truncated shard */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/model-00002-of-00002.safetensors", d);
    struct stat sb;
    assert_int_equal(stat(f, &sb), 0);
    assert_int_equal(truncate(f, sb.st_size - 100), 0);
    expect_fail(d, LOUPE_ERR_FORMAT, "model-00002-of-00002.safetensors: truncated", "ends at byte");

    /* a tensor renamed away (in its shard and the index): missing */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/model-00001-of-00002.safetensors", d);
    patch_file(f, "\"model.layers.1.mlp.up_proj.weight\"", "\"model.layers.1.mlp.up_proj.wXight\"");
    snprintf(f, sizeof f, "%s/model.safetensors.index.json", d);
    patch_file(f, "\"model.layers.1.mlp.up_proj.weight\"", "\"model.layers.1.mlp.up_proj.wXight\"");
    expect_fail(d, LOUPE_ERR_FORMAT, "missing tensor model.layers.1.mlp.up_proj.weight", NULL);

    /* the index lists a tensor its shard lacks */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/model-00001-of-00002.safetensors", d);
    patch_file(f, "\"model.norm.weight\"", "\"model.norX.weight\"");
    expect_fail(d, LOUPE_ERR_FORMAT, "tensor model.norm.weight is listed", "model-00001-of-00002.safetensors");

    /* a weight stored as integers: the dtype is named */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/model-00002-of-00002.safetensors", d);
    patch_file(f, "\"model.mm_projector.bias\":{\"dtype\":\"F32\"", "\"model.mm_projector.bias\":{\"dtype\":\"I32\"");
    expect_fail(d, LOUPE_ERR_UNSUPPORTED, "tensor model.mm_projector.bias is I32", NULL);

    /* no config.json / no tokenizer */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/config.json", d);
    assert_int_equal(unlink(f), 0);
    expect_fail(d, LOUPE_ERR_IO, "config.json", NULL);
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/tokenizer.model", d);
    assert_int_equal(unlink(f), 0);
    expect_fail(d, LOUPE_ERR_IO, d, NULL);

    /* a decoder of another architecture */
    copy_fixture(d);
    snprintf(f, sizeof f, "%s/config.json", d);
    patch_file(f, "FERRETLlamaForCausalLM", "FERRETGemmaForCausalLM");
    patch_file(f, "\"ferret_llama\"", "\"ferret_gemma\"");
    expect_fail(d, LOUPE_ERR_UNSUPPORTED, "FERRETGemmaForCausalLM", "config.json");

    /* an existing output without force */
    char prefix[128], lm[160];
    snprintf(prefix, sizeof prefix, "%s/exists", tmpdir);
    snprintf(lm, sizeof lm, "%s.gguf", prefix);
    FILE *fp = fopen(lm, "w");
    fputs("keep", fp);
    fclose(fp);
    lp_hf_convert_params p = lp_hf_convert_default_params();
    lp_error err = {0};
    assert_int_equal(lp_hf_convert(FIX "ckpt", prefix, &p, NULL, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "exists"));
    assert_int_equal(stat(lm, &sb), 0);
    assert_int_equal(sb.st_size, 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_f32),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
