/* tests/test_vlm.c — the whole ask pipeline (fusion/vlm.h) and prompt
 * assembly (fusion/prompt.h) end to end on the tiny random-weight LLaVA pair
 * in tests/fixtures/parity/ (a llama decoder with a synthetic SentencePiece
 * vocabulary + an mlp-projector CLIP; see tests/fixtures/README.md).
 *
 * The answers of a random model are noise, so the tests check properties:
 * determinism, limits, streaming == final answer, cancellation, stops, and
 * that every broken input is refused with the right status and a message
 * naming the file. Broken and edited variants of the fixture (a projector of
 * the wrong width, an EOS-biased head, a chat template in the metadata, ...)
 * are written to a temporary directory with lp_gguf_writer, and so is the
 * Ferret-style pair for the region tests: the fixture LM with
 * "<region_fea>" as its last vocabulary entry (what gen_model
 * --region-sampler writes) and the fixture mmproj plus a random region
 * sampler (64 points, sub_points [16, 4], neighbors [8, 4], 64 -> 64).
 * Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../fusion/prompt.h"
#include "../fusion/vlm.h"
#include "../language/decoder.h"
#include "../language/tokenizer.h"
#include "../language/weights.h"
#include "gguf.h"

#define LM "tests/fixtures/parity/tiny-f32.gguf"
#define MMPROJ "tests/fixtures/parity/tiny-f32-mmproj.gguf"
#define LM_Q8 "tests/fixtures/parity/tiny-q8_0.gguf"
#define MMPROJ_Q8 "tests/fixtures/parity/tiny-q8_0-mmproj.gguf"
#define IMAGE "tests/fixtures/parity/image-32.png"
#define IMAGE_WIDE "tests/fixtures/images/src_struct_301x199.png"
#define QUESTION "What is in the image?"

static char tmpdir[64];

static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

// ----------------------------------------------------------------------------
// helpers

typedef struct fixture {
    lp_vlm *vlm;
    lp_vlm_ctx *ctx;
    lp_image img;
} fixture;

static void open_fixture(fixture *f, const char *lm, const char *mm, const lp_vlm_params *vp, int n_ctx) {
    lp_error err = {0};
    memset(f, 0, sizeof *f);
    f->vlm = lp_vlm_load(lm, mm, vp, &err);
    if (!f->vlm) fail_msg("lp_vlm_load: %s", err.msg);
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 1;
    cp.n_ctx = n_ctx;
    f->ctx = lp_vlm_ctx_new(f->vlm, &cp, &err);
    if (!f->ctx) fail_msg("lp_vlm_ctx_new: %s", err.msg);
    if (lp_image_load(IMAGE, &f->img, &err)) fail_msg("%s", err.msg);
}

static void close_fixture(fixture *f) {
    lp_vlm_ctx_free(f->ctx);
    lp_vlm_free(f->vlm);
    lp_image_free(&f->img);
}

static lp_vlm_gen_params greedy(int n) {
    lp_vlm_gen_params g = lp_vlm_gen_default_params();
    g.n_predict = n;
    return g;
}

/* Ask and return the answer (malloc'd); fails the test on error. */
static char *ask_ok(fixture *f, const char *q, const lp_vlm_gen_params *g, lp_vlm_stats *stats) {
    lp_error err = {0};
    char *answer = NULL;
    loupe_status st = lp_vlm_ask(f->vlm, f->ctx, &f->img, q, g, NULL, NULL, &answer, stats, &err);
    if (st) fail_msg("lp_vlm_ask: %s", err.msg);
    assert_non_null(answer);
    return answer;
}

/* A copy of a GGUF file with some f32 tensors replaced or added; metadata is
 * copied and may then be changed with the writer's set calls. */
typedef struct tensor_edit {
    const char *name;
    int n_dims;
    int64_t ne[2];
    const float *data;
} tensor_edit;

static lp_gguf_writer *copy_gguf(const lp_gguf *g, const tensor_edit *edits, int n_edits) {
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    lp_gguf_writer_set_alignment(w, (uint32_t)g->alignment);
    for (uint64_t i = 0; i < g->n_kv; i++)
        assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    bool used[8] = {0};
    assert_true(n_edits <= 8);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        int e = -1;
        for (int k = 0; k < n_edits; k++)
            if (!strcmp(edits[k].name, t->name)) e = k;
        if (e >= 0) {
            used[e] = true;
            assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, LP_TYPE_F32, (uint32_t)edits[e].n_dims,
                                                       edits[e].ne, edits[e].data),
                             LOUPE_OK);
        } else {
            assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data), LOUPE_OK);
        }
    }
    for (int k = 0; k < n_edits; k++)
        if (!used[k])
            assert_int_equal(
                lp_gguf_writer_add_tensor(w, edits[k].name, LP_TYPE_F32, (uint32_t)edits[k].n_dims, edits[k].ne,
                                          edits[k].data),
                LOUPE_OK);
    return w;
}

static void write_gguf(lp_gguf_writer *w, const char *path) {
    lp_error err = {0};
    if (lp_gguf_writer_write(w, path, &err)) fail_msg("%s", err.msg);
    lp_gguf_writer_free(w);
}

static void *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void write_all(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    fclose(f);
}

// ----------------------------------------------------------------------------
// prompt assembly

static void test_prompt_segments(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(LM, &err);
    assert_non_null(g);
    lp_weight_store *ws = lp_weights_resident(g, &err);
    lp_tokenizer *tok = lp_tokenizer_load(g, &err);
    lp_llama *m = lp_llama_load(ws, &err);
    assert_non_null(tok);
    assert_non_null(m);
    const int E = lp_llama_n_embd(m);

    const char *text = "USER: <image>\nWhat? ASSISTANT:";
    const size_t at = 6;
    lp_prompt p;
    assert_int_equal(lp_prompt_build(&p, tok, text, strlen(text), at, 7, 5, &err), LOUPE_OK);
    assert_int_equal(p.n_seg, 3);
    assert_int_equal(p.seg[0].kind, LP_SEGMENT_TOKENS);
    assert_int_equal(p.seg[1].kind, LP_SEGMENT_IMAGE);
    assert_int_equal(p.seg[2].kind, LP_SEGMENT_TOKENS);
    assert_int_equal(p.seg[1].n_pos, 5);
    assert_int_equal(p.n_image, 5);
    assert_int_equal(p.n_text, p.seg[0].n_pos + p.seg[2].n_pos);
    assert_int_equal(p.n_pos, p.n_text + 5);
    /* BOS leads the first piece only. */
    assert_true(lp_tokenizer_add_bos(tok));
    assert_int_equal(p.seg[0].tokens[0], lp_tokenizer_bos(tok));
    for (int i = 0; i < p.seg[2].n_pos; i++) assert_int_not_equal(p.seg[2].tokens[i], lp_tokenizer_bos(tok));
    /* Each piece is tokenized on its own, exactly as a separate call would. */
    int32_t ids[64];
    int n = lp_tokenize(tok, text + at + 7, strlen(text + at + 7), false, true, ids, 64, &err);
    assert_int_equal(n, p.seg[2].n_pos);
    assert_memory_equal(ids, p.seg[2].tokens, (size_t)n * sizeof *ids);

    /* Embedding: token rows from the table, image rows copied verbatim. */
    float *img = malloc((size_t)5 * E * sizeof *img);
    float *out = malloc((size_t)p.n_pos * E * sizeof *out);
    float *row = malloc((size_t)E * sizeof *row);
    for (int i = 0; i < 5 * E; i++) img[i] = (float)i * 0.25f - 3.0f;
    assert_int_equal(lp_prompt_embed(&p, m, img, out, &err), LOUPE_OK);
    const int n0 = p.seg[0].n_pos;
    assert_memory_equal(out + (size_t)n0 * E, img, (size_t)5 * E * sizeof *img);
    assert_int_equal(lp_llama_embed(m, &p.seg[0].tokens[0], 1, row, &err), LOUPE_OK);
    assert_memory_equal(out, row, (size_t)E * sizeof *row);
    assert_int_equal(lp_llama_embed(m, &p.seg[2].tokens[0], 1, row, &err), LOUPE_OK);
    assert_memory_equal(out + (size_t)(n0 + 5) * E, row, (size_t)E * sizeof *row);

    /* Context check: exact fit passes, one short names all the numbers. */
    assert_int_equal(lp_prompt_check_ctx(&p, p.n_pos, &err), LOUPE_OK);
    assert_int_equal(lp_prompt_check_ctx(&p, p.n_pos - 1, &err), LOUPE_ERR_LIMIT);
    char want[160];
    snprintf(want, sizeof want, "prompt needs %d positions (text %d + image 5) but the context holds %d", p.n_pos,
             p.n_text, p.n_pos - 1);
    assert_string_equal(err.msg, want);
    lp_prompt_free(&p);

    /* Image first: BOS still leads; no empty segment. */
    const char *t2 = "<image>\nhi";
    assert_int_equal(lp_prompt_build(&p, tok, t2, strlen(t2), 0, 7, 3, &err), LOUPE_OK);
    assert_int_equal(p.n_seg, 3);
    assert_int_equal(p.seg[0].n_pos, 1);
    assert_int_equal(p.seg[0].tokens[0], lp_tokenizer_bos(tok));
    lp_prompt_free(&p);
    /* Image last. */
    assert_int_equal(lp_prompt_build(&p, tok, "x <image>", 9, 2, 7, 3, &err), LOUPE_OK);
    assert_int_equal(p.n_seg, 2);
    assert_int_equal(p.seg[1].kind, LP_SEGMENT_IMAGE);
    lp_prompt_free(&p);
    /* Bad offsets. */
    assert_int_equal(lp_prompt_build(&p, tok, "abc", 3, 2, 7, 3, &err), LOUPE_ERR_INVALID_ARG);
    lp_prompt_free(&p);

    free(img);
    free(out);
    free(row);
    lp_llama_free(m);
    lp_tokenizer_free(tok);
    lp_ws_free(ws);
    lp_gguf_close(g);
}

// ----------------------------------------------------------------------------
// generation

static void test_greedy_deterministic(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    assert_string_equal(lp_vlm_template(f.vlm)->name, "vicuna"); /* no chat_template in the file */
    assert_int_equal(lp_vlm_n_image_tokens(f.vlm), 16);
    lp_vlm_gen_params g = greedy(12);
    lp_vlm_stats s1, s2;
    char *a1 = ask_ok(&f, QUESTION, &g, &s1);
    char *a2 = ask_ok(&f, QUESTION, &g, &s2); /* same ctx, reused cache */
    assert_string_equal(a1, a2);
    assert_true(s1.decode_tokens <= 12);
    if (s1.stop == LP_VLM_STOP_MAX_TOKENS) assert_int_equal(s1.decode_tokens, 12);
    else assert_int_equal(s1.stop, LP_VLM_STOP_EOG);
    assert_int_equal(s1.decode_tokens, s2.decode_tokens);
    assert_int_equal(s1.n_image_tokens, 16);
    assert_int_equal(s1.prefill_tokens, s1.n_text_tokens + 16);
    assert_true(s1.n_ctx >= s1.prefill_tokens + 12); /* auto-sized */
    assert_true(s1.peak_rss_kb > 0);
    assert_true(s1.load_ms >= 0 && s1.encode_ms >= 0 && s1.prefill_ms >= 0 && s1.decode_ms >= 0);

    /* A fresh model and context give the same answer too. */
    fixture f2;
    open_fixture(&f2, LM, MMPROJ, NULL, 256);
    char *a3 = ask_ok(&f2, QUESTION, &g, NULL);
    assert_string_equal(a1, a3);

    /* Another limit is respected as well. */
    lp_vlm_gen_params g20 = greedy(20);
    lp_vlm_stats s3;
    char *a4 = ask_ok(&f, QUESTION, &g20, &s3);
    assert_true(s3.decode_tokens <= 20);
    if (s3.stop == LP_VLM_STOP_MAX_TOKENS) assert_int_equal(s3.decode_tokens, 20);

    /* n_predict 0: prefill only, empty answer. */
    lp_vlm_gen_params g0 = greedy(0);
    lp_vlm_stats s0;
    char *a0 = ask_ok(&f, QUESTION, &g0, &s0);
    assert_string_equal(a0, "");
    assert_int_equal(s0.decode_tokens, 0);
    assert_int_equal(s0.stop, LP_VLM_STOP_MAX_TOKENS);

    free(a0);
    free(a1);
    free(a2);
    free(a3);
    free(a4);
    close_fixture(&f2);
    close_fixture(&f);
}

/* A second question about the same image reuses the image encoding and the
 * decoder's cache up to the end of the image rows, and answers exactly what
 * a fresh context answers; anything that changes the prefix turns reuse off. */
static void test_prefix_reuse(void **state) {
    (void)state;
    fixture a, b;
    open_fixture(&a, LM, MMPROJ, NULL, 0);
    open_fixture(&b, LM, MMPROJ, NULL, 0);
    lp_vlm_gen_params g = greedy(16);
    g.sampling.temp = 0.8f; /* sampled: any change in the logits shows */
    g.sampling.seed = 5;
    lp_vlm_stats s1, s2, s3;
    char *q1 = ask_ok(&a, QUESTION, &g, &s1);
    assert_int_equal(s1.prefix_reused, 0);
    assert_int_equal(s1.image_reused, 0);
    char *a2 = ask_ok(&a, "Where is the cat?", &g, &s2);
    assert_int_equal(s2.image_reused, 1);
    assert_true(s2.prefix_reused >= 16);                   /* at least the image rows */
    assert_int_equal(s2.prefill_tokens + s2.prefix_reused, s2.n_text_tokens + 16);
    char *b2 = ask_ok(&b, "Where is the cat?", &g, &s3);   /* fresh context: everything computed */
    assert_int_equal(s3.prefix_reused, 0);
    assert_string_equal(a2, b2);

    /* another image: nothing reused; back to the first: its encoding is gone */
    lp_image wide;
    lp_error err = {0};
    assert_int_equal(lp_image_load(IMAGE_WIDE, &wide, &err), LOUPE_OK);
    char *w = NULL;
    assert_int_equal(lp_vlm_ask(a.vlm, a.ctx, &wide, QUESTION, &g, NULL, NULL, &w, &s1, &err), LOUPE_OK);
    assert_int_equal(s1.prefix_reused, 0);
    assert_int_equal(s1.image_reused, 0);
    char *q1b = ask_ok(&a, QUESTION, &g, &s1);
    assert_int_equal(s1.image_reused, 0);
    assert_string_equal(q1, q1b);

    /* another system text: the image is reused, the prefix is not */
    lp_vlm_gen_params gs = g;
    gs.system = "You are terse.";
    char *c1 = ask_ok(&a, QUESTION, &gs, &s1);
    assert_int_equal(s1.image_reused, 1);
    assert_int_equal(s1.prefix_reused, 0);
    char *c2 = ask_ok(&b, QUESTION, &gs, &s3);
    assert_string_equal(c1, c2);

    free(q1);
    free(a2);
    free(b2);
    free(w);
    free(q1b);
    free(c1);
    free(c2);
    lp_image_free(&wide);
    close_fixture(&a);
    close_fixture(&b);
}

/* Sampling with a seed is reproducible, and the n-token limit holds. */
static void test_sampled_seeded(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    lp_vlm_gen_params g = greedy(10);
    g.sampling.temp = 1.0f;
    g.sampling.seed = 1234;
    lp_vlm_stats s;
    char *a1 = ask_ok(&f, QUESTION, &g, &s);
    char *a2 = ask_ok(&f, QUESTION, &g, NULL);
    assert_string_equal(a1, a2);
    assert_true(s.decode_tokens <= 10);
    free(a1);
    free(a2);
    close_fixture(&f);
}

typedef struct collect {
    char buf[4096];
    size_t len;
    int calls;
    int cancel_at; /* return nonzero on this call (1-based); 0 never */
} collect;

static int on_text(void *user, const char *text, size_t len) {
    collect *c = user;
    assert_true(len > 0);
    assert_true(c->len + len < sizeof c->buf);
    memcpy(c->buf + c->len, text, len);
    c->len += len;
    c->buf[c->len] = '\0';
    c->calls++;
    return c->cancel_at && c->calls >= c->cancel_at;
}

static void test_streaming(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    lp_vlm_gen_params g = greedy(24);
    collect c = {0};
    char *answer = NULL;
    lp_error err = {0};
    lp_vlm_stats s;
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, QUESTION, &g, on_text, &c, &answer, &s, &err), LOUPE_OK);
    assert_string_equal(c.buf, answer);
    assert_true(c.calls > 1); /* streamed, not delivered at the end */
    /* Every piece is valid UTF-8 on its own: the whole is, and the detok
     * never splits characters, so checking the concatenation suffices with
     * the no-U+FFFD-splitting guarantee of lp_detok. */
    char *plain = ask_ok(&f, QUESTION, &g, NULL);
    assert_string_equal(plain, answer);
    free(plain);
    free(answer);
    close_fixture(&f);
}

static void test_cancel(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    lp_vlm_gen_params g = greedy(24);
    collect c = {.cancel_at = 2};
    char *answer = (char *)1;
    lp_error err = {0};
    lp_vlm_stats s;
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, QUESTION, &g, on_text, &c, &answer, &s, &err),
                     LOUPE_ERR_CANCELLED);
    assert_null(answer);
    assert_int_equal(err.status, LOUPE_ERR_CANCELLED);
    assert_int_equal(c.calls, 2);
    assert_int_equal(s.stop, LP_VLM_STOP_CANCELLED);
    assert_true(s.decode_tokens < 24);
    /* The context is usable again afterwards. */
    char *a = ask_ok(&f, QUESTION, &g, NULL);
    assert_memory_equal(a, c.buf, c.len);
    free(a);
    close_fixture(&f);
}

// ----------------------------------------------------------------------------
// stops, via edited copies of the language model

static float *bias_towards(int n_vocab, int id) {
    float *b = calloc((size_t)n_vocab, sizeof *b);
    b[id] = 1e4f;
    return b;
}

static void test_stop_eog(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(LM, &err);
    assert_non_null(g);
    int64_t V = lp_gguf_find_tensor(g, "output.weight") >= 0 ? g->tensors[lp_gguf_find_tensor(g, "output.weight")].ne[1] : 0;
    assert_true(V > 2);
    float *bias = bias_towards((int)V, 2); /* EOS "</s>" */
    tensor_edit e = {"output.bias", 1, {V, 1}, bias};
    write_gguf(copy_gguf(g, &e, 1), tmp_path("eos.gguf"));
    lp_gguf_close(g);

    fixture f;
    open_fixture(&f, tmp_path("eos.gguf"), MMPROJ, NULL, 0);
    lp_vlm_gen_params gp = greedy(16);
    lp_vlm_stats s;
    collect c = {0};
    char *answer = NULL;
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, QUESTION, &gp, on_text, &c, &answer, &s, &err), LOUPE_OK);
    assert_string_equal(answer, "");
    assert_int_equal(c.calls, 0);
    assert_int_equal(s.stop, LP_VLM_STOP_EOG);
    assert_int_equal(s.decode_tokens, 1);
    free(answer);
    free(bias);
    close_fixture(&f);
}

/* A vocabulary entry rewritten to "▁okUSER:" and favoured by the head:
 * the vicuna stop string "USER:" ends the answer after "ok". */
static void test_stop_string(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(LM, &err);
    assert_non_null(g);
    const lp_gguf_value *toks = lp_gguf_get(g, "tokenizer.ggml.tokens");
    assert_non_null(toks);
    const int n = (int)toks->v.arr.n;
    const int id = n - 1; /* a normal piece */
    const char **strs = malloc((size_t)n * sizeof *strs);
    for (int i = 0; i < n; i++) strs[i] = toks->v.arr.strs[i].s;
    strs[id] = "\xe2\x96\x81okUSER:";
    float *bias = bias_towards(n, id);
    tensor_edit e = {"output.bias", 1, {n, 1}, bias};
    lp_gguf_writer *w = copy_gguf(g, &e, 1);
    assert_int_equal(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, (uint64_t)n), LOUPE_OK);
    write_gguf(w, tmp_path("stop.gguf"));
    lp_gguf_close(g);

    fixture f;
    open_fixture(&f, tmp_path("stop.gguf"), MMPROJ, NULL, 0);
    lp_vlm_gen_params gp = greedy(16);
    lp_vlm_stats s;
    collect c = {0};
    char *answer = NULL;
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, QUESTION, &gp, on_text, &c, &answer, &s, &err), LOUPE_OK);
    assert_string_equal(answer, "ok");
    assert_string_equal(c.buf, "ok"); /* the stop string is never streamed */
    assert_int_equal(s.stop, LP_VLM_STOP_STRING);
    assert_int_equal(s.decode_tokens, 1);
    free(answer);
    free(bias);
    free(strs);
    close_fixture(&f);
}

// ----------------------------------------------------------------------------
// templates from metadata

static void test_template_metadata(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(LM, &err);
    assert_non_null(g);
    lp_gguf_writer *w = copy_gguf(g, NULL, 0);
    assert_int_equal(lp_gguf_writer_set_str(w, "tokenizer.chat_template",
                                            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' "
                                            "+ message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
                     LOUPE_OK);
    write_gguf(w, tmp_path("chatml.gguf"));
    w = copy_gguf(g, NULL, 0);
    assert_int_equal(lp_gguf_writer_set_str(w, "tokenizer.chat_template", "{{ '<start_of_turn>' }}"), LOUPE_OK);
    write_gguf(w, tmp_path("gemma.gguf"));
    lp_gguf_close(g);

    lp_vlm *v = lp_vlm_load(tmp_path("chatml.gguf"), MMPROJ, NULL, &err);
    assert_non_null(v);
    assert_string_equal(lp_vlm_template(v)->name, "chatml");
    lp_vlm_free(v);

    /* Unrecognised: refused, naming the file and the key... */
    v = lp_vlm_load(tmp_path("gemma.gguf"), MMPROJ, NULL, &err);
    assert_null(v);
    assert_int_equal(err.status, LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, tmp_path("gemma.gguf")));
    assert_non_null(strstr(err.msg, "tokenizer.chat_template"));
    /* ...unless a template is named. */
    lp_vlm_params vp = lp_vlm_default_params();
    vp.template_name = "llama2";
    v = lp_vlm_load(tmp_path("gemma.gguf"), MMPROJ, &vp, &err);
    assert_non_null(v);
    assert_string_equal(lp_vlm_template(v)->name, "llama2");
    lp_vlm_free(v);
    vp.template_name = "nonesuch";
    assert_null(lp_vlm_load(LM, MMPROJ, &vp, &err));
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "nonesuch"));

    /* Each template runs end to end, and the system text is honoured
     * (different prompt length). */
    static const char *names[] = {"vicuna", "chatml", "llama2", "mistral", "llama3"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        vp.template_name = names[i];
        fixture f;
        open_fixture(&f, LM, MMPROJ, &vp, 0);
        lp_vlm_gen_params gp = greedy(4);
        lp_vlm_stats s1, s2;
        free(ask_ok(&f, QUESTION, &gp, &s1));
        gp.system = "";
        free(ask_ok(&f, QUESTION, &gp, &s2));
        if (strcmp(names[i], "mistral") != 0) assert_true(s2.n_text_tokens < s1.n_text_tokens);
        close_fixture(&f);
    }
}

// ----------------------------------------------------------------------------
// limits and broken inputs

static void test_prompt_too_long(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 40);
    lp_vlm_gen_params g = greedy(4);
    char *answer = (char *)1;
    lp_error err = {0};
    lp_vlm_stats s;
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, QUESTION, &g, NULL, NULL, &answer, &s, &err), LOUPE_ERR_LIMIT);
    assert_null(answer);
    assert_non_null(strstr(err.msg, "prompt needs "));
    assert_non_null(strstr(err.msg, " + image 16) but the context holds 40"));
    close_fixture(&f);

    /* Automatic size: bounded by the training context (512 here). */
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    size_t n = 3000;
    char *q = malloc(n + 1);
    for (size_t i = 0; i < n; i++) q[i] = (char)('a' + (i * 7) % 26);
    q[n] = '\0';
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, q, &g, NULL, NULL, &answer, &s, &err), LOUPE_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "but the context holds 512"));
    free(q);

    /* Fits, but the cache fills while answering: stops, not an error. */
    close_fixture(&f);
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    lp_vlm_stats s0;
    free(ask_ok(&f, QUESTION, &g, &s0));
    close_fixture(&f);
    open_fixture(&f, LM, MMPROJ, NULL, s0.prefill_tokens + 2);
    lp_vlm_gen_params g50 = greedy(50);
    char *a = ask_ok(&f, QUESTION, &g50, &s);
    if (s.stop != LP_VLM_STOP_EOG) {
        assert_int_equal(s.stop, LP_VLM_STOP_CONTEXT);
        assert_int_equal(s.decode_tokens, 3); /* 2 cached + the one sampled from the last logits */
    }
    free(a);
    close_fixture(&f);
}

static void test_mismatch(void **state) {
    (void)state;
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(MMPROJ, &err);
    assert_non_null(g);
    int64_t i2 = lp_gguf_find_tensor(g, "mm.2.weight"), ib = lp_gguf_find_tensor(g, "mm.2.bias");
    assert_true(i2 >= 0 && ib >= 0);
    const lp_gguf_tensor *t = &g->tensors[i2];
    assert_int_equal(t->type, LP_TYPE_F32);
    assert_int_equal(t->ne[1], 64);
    /* Keep the first 32 output rows: a projector into a 32-wide model. */
    tensor_edit e[2] = {{"mm.2.weight", 2, {t->ne[0], 32}, t->data},
                        {"mm.2.bias", 1, {32, 1}, g->tensors[ib].data}};
    lp_gguf_writer *w = copy_gguf(g, e, 2);
    assert_int_equal(lp_gguf_writer_set_u32(w, "clip.vision.projection_dim", 32), LOUPE_OK);
    write_gguf(w, tmp_path("mmproj-32.gguf"));
    lp_gguf_close(g);

    lp_vlm *v = lp_vlm_load(LM, tmp_path("mmproj-32.gguf"), NULL, &err);
    assert_null(v);
    assert_int_equal(err.status, LOUPE_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, tmp_path("mmproj-32.gguf")));
    assert_non_null(strstr(err.msg, LM));
    assert_non_null(strstr(err.msg, "width 32"));
    assert_non_null(strstr(err.msg, "width 64"));

    /* The files swapped: the mmproj is no language model. */
    v = lp_vlm_load(MMPROJ, LM, NULL, &err);
    assert_null(v);
    assert_non_null(strstr(err.msg, MMPROJ));
}

static void test_bad_image(void **state) {
    (void)state;
    size_t n;
    unsigned char *png = read_all(IMAGE, &n);
    write_all(tmp_path("truncated.png"), png, n / 2);
    free(png);
    lp_image img = {0};
    lp_error err = {0};
    assert_int_not_equal(lp_image_load(tmp_path("truncated.png"), &img, &err), LOUPE_OK);
    assert_non_null(strstr(err.msg, tmp_path("truncated.png")));
    assert_null(img.rgb);
    assert_int_not_equal(lp_image_load(tmp_path("missing.png"), &img, &err), LOUPE_OK);
    assert_non_null(strstr(err.msg, "missing.png"));

    /* A non-square image goes through pad-to-square (and llama.cpp's mode). */
    fixture f;
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    lp_image_free(&f.img);
    assert_int_equal(lp_image_load(IMAGE_WIDE, &f.img, &err), LOUPE_OK);
    lp_vlm_gen_params g = greedy(4);
    free(ask_ok(&f, QUESTION, &g, NULL));
    close_fixture(&f);
    lp_vlm_params vp = lp_vlm_default_params();
    vp.llamacpp = true;
    open_fixture(&f, LM, MMPROJ, &vp, 0);
    lp_image_free(&f.img);
    assert_int_equal(lp_image_load(IMAGE_WIDE, &f.img, &err), LOUPE_OK);
    free(ask_ok(&f, QUESTION, &g, NULL));
    close_fixture(&f);

    /* NULL arguments. */
    open_fixture(&f, LM, MMPROJ, NULL, 0);
    char *answer = NULL;
    lp_image empty = {0};
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &empty, QUESTION, &g, NULL, NULL, &answer, NULL, &err),
                     LOUPE_ERR_INVALID_ARG);
    assert_int_equal(lp_vlm_ask(f.vlm, f.ctx, &f.img, NULL, &g, NULL, NULL, &answer, NULL, &err),
                     LOUPE_ERR_INVALID_ARG);
    close_fixture(&f);
}

static void test_corrupt_files(void **state) {
    (void)state;
    size_t n;
    unsigned char *buf = read_all(MMPROJ, &n);
    write_all(tmp_path("mmproj-cut.gguf"), buf, n - 1000); /* tensor data cut short */
    write_all(tmp_path("mmproj-head.gguf"), buf, 100);      /* metadata cut short */
    memcpy(buf, "GGUX", 4);
    write_all(tmp_path("mmproj-magic.gguf"), buf, n);
    free(buf);
    const char *bad[] = {tmp_path("mmproj-cut.gguf"), tmp_path("mmproj-head.gguf"), tmp_path("mmproj-magic.gguf"),
                         tmp_path("nonexistent.gguf")};
    for (size_t i = 0; i < 4; i++) {
        lp_error err = {0};
        assert_null(lp_vlm_load(LM, bad[i], NULL, &err));
        assert_int_not_equal(err.status, LOUPE_OK);
        assert_non_null(strstr(err.msg, bad[i]));
    }
    buf = read_all(LM, &n);
    write_all(tmp_path("lm-cut.gguf"), buf, n / 2);
    free(buf);
    lp_error err = {0};
    assert_null(lp_vlm_load(tmp_path("lm-cut.gguf"), MMPROJ, NULL, &err));
    assert_int_equal(err.status, LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, tmp_path("lm-cut.gguf")));
    assert_null(lp_vlm_load(NULL, MMPROJ, NULL, &err));
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
}

// ----------------------------------------------------------------------------
// regions (Ferret's referring input): a sampler added to copies of the
// fixture pair, built here with lp_gguf_writer

#define REG_LM "region-lm.gguf"          /* LM with "<region_fea>" (CONTROL) as its last id */
#define REG_LM_USER "region-lm-user.gguf" /* the same, USER_DEFINED */
#define REG_LM_NORMAL "region-lm-normal.gguf" /* the same text, NORMAL: not usable */
#define REG_MM "region-mmproj.gguf"      /* MMPROJ + a sampler C = 64 -> 64 */
#define REG_MM_IN "region-mmproj-in32.gguf"   /* sampler input width 32 */
#define REG_MM_OUT "region-mmproj-out32.gguf" /* sampler output width 32 */

static uint64_t rng_state;

static double rnd_gauss(void) { /* splitmix64 + Box-Muller, one value per call */
    uint64_t z[2];
    for (int i = 0; i < 2; i++) {
        uint64_t x = (rng_state += 0x9E3779B97F4A7C15ull);
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        z[i] = x ^ (x >> 31);
    }
    const double u = ((double)(z[0] >> 11) + 0.5) / 9007199254740992.0, v = (double)(z[1] >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Random f32 tensor kept alive in `keep` until the file is written. */
static void add_rand(lp_gguf_writer *w, float **keep, int *n_keep, const char *name, int n_dims, int64_t ne0,
                     int64_t ne1, double sd, double mean) {
    const int64_t n = ne0 * (n_dims > 1 ? ne1 : 1);
    float *d = malloc((size_t)n * sizeof *d);
    assert_non_null(d);
    for (int64_t i = 0; i < n; i++) d[i] = (float)(mean + sd * rnd_gauss());
    keep[(*n_keep)++] = d;
    int64_t ne[2] = {ne0, ne1};
    assert_int_equal(lp_gguf_writer_add_tensor(w, name, LP_TYPE_F32, (uint32_t)n_dims, ne, d), LOUPE_OK);
}

/* MMPROJ + a random sampler: 64 points, sub_points [16, 4], neighbors
 * [8, 4], max pooling, input width C, output width out. */
static void write_region_mmproj(const char *path, int C, int out) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(MMPROJ, &err);
    assert_non_null(g);
    lp_gguf_writer *w = copy_gguf(g, NULL, 0);
    const int32_t sub[2] = {16, 4}, nb[2] = {8, 4};
    assert_int_equal(lp_gguf_writer_set_u32(w, "clip.vision.region.num_points", 64), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.region.sub_points", LP_GGUF_INT32, sub, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "clip.vision.region.neighbors", LP_GGUF_INT32, nb, 2), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "clip.vision.region.input_dim", (uint32_t)C), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "clip.vision.region.output_dim", (uint32_t)out), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_str(w, "clip.vision.region.pooler", "max"), LOUPE_OK);
    rng_state = 4242;
    float *keep[32];
    int nk = 0;
    const int D = C + 2;
    char nm[64];
    for (int s = 0; s < 2; s++) {
        snprintf(nm, sizeof nm, "mm.region.%d.diff.weight", s);
        add_rand(w, keep, &nk, nm, 2, D, D, 1.0 / sqrt(D), 0.0);
        snprintf(nm, sizeof nm, "mm.region.%d.diff.bias", s);
        add_rand(w, keep, &nk, nm, 1, D, 1, 0.1, 0.0);
        snprintf(nm, sizeof nm, "mm.region.%d.agg.weight", s);
        add_rand(w, keep, &nk, nm, 2, 2 * D, C, 1.0 / sqrt(2 * D), 0.0);
        snprintf(nm, sizeof nm, "mm.region.%d.agg.bias", s);
        add_rand(w, keep, &nk, nm, 1, C, 1, 0.1, 0.0);
        snprintf(nm, sizeof nm, "mm.region.%d.norm.weight", s);
        add_rand(w, keep, &nk, nm, 1, C, 1, 0.1, 1.0);
        snprintf(nm, sizeof nm, "mm.region.%d.norm.bias", s);
        add_rand(w, keep, &nk, nm, 1, C, 1, 0.1, 0.0);
    }
    add_rand(w, keep, &nk, "mm.region.flatten.weight", 2, 4 * C, C, 1.0 / sqrt(4 * C), 0.0);
    add_rand(w, keep, &nk, "mm.region.flatten.bias", 1, C, 1, 0.1, 0.0);
    /* a strong projection: the region row should stand out in the prompt */
    add_rand(w, keep, &nk, "mm.region.proj.weight", 2, C, out, 4.0 / sqrt(C), 0.0);
    add_rand(w, keep, &nk, "mm.region.proj.bias", 1, out, 1, 0.1, 0.0);
    write_gguf(w, path);
    for (int i = 0; i < nk; i++) free(keep[i]);
    lp_gguf_close(g);
}

/* LM whose last vocabulary entry is "<region_fea>" of the given type (as
 * gen_model --region-sampler writes it). */
static void write_region_lm(const char *path, int32_t type) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(LM, &err);
    assert_non_null(g);
    const lp_gguf_value *toks = lp_gguf_get(g, "tokenizer.ggml.tokens");
    const lp_gguf_value *types = lp_gguf_get(g, "tokenizer.ggml.token_type");
    assert_non_null(toks);
    assert_non_null(types);
    const int n = (int)toks->v.arr.n;
    const char **strs = malloc((size_t)n * sizeof *strs);
    int32_t *ty = malloc((size_t)n * sizeof *ty);
    for (int i = 0; i < n; i++) {
        strs[i] = toks->v.arr.strs[i].s;
        int64_t x = 0;
        assert_true(lp_gguf_arr_int(types, (uint64_t)i, &x));
        ty[i] = (int32_t)x;
    }
    strs[n - 1] = "<region_fea>";
    ty[n - 1] = type;
    lp_gguf_writer *w = copy_gguf(g, NULL, 0);
    assert_int_equal(lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", strs, (uint64_t)n), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, ty, (uint64_t)n), LOUPE_OK);
    write_gguf(w, path);
    free(strs);
    free(ty);
    lp_gguf_close(g);
}

static int region_setup(void **state) {
    (void)state;
    write_region_lm(tmp_path(REG_LM), LP_TOKEN_CONTROL);
    write_region_lm(tmp_path(REG_LM_USER), LP_TOKEN_USER_DEFINED);
    write_region_lm(tmp_path(REG_LM_NORMAL), LP_TOKEN_NORMAL);
    write_region_mmproj(tmp_path(REG_MM), 64, 64);
    write_region_mmproj(tmp_path(REG_MM_IN), 32, 64);
    write_region_mmproj(tmp_path(REG_MM_OUT), 64, 32);
    return 0;
}

/* Collects the sampler's "out" dumps (one per region). */
typedef struct region_dumps {
    float out[4][64];
    int n;
} region_dumps;

static void on_region_dump(void *user, const char *name, lp_type type, const void *data, int64_t n) {
    region_dumps *d = user;
    if (strcmp(name, "out") != 0) return;
    assert_int_equal(type, LP_TYPE_F32);
    assert_int_equal(n, 64);
    assert_true(d->n < 4);
    memcpy(d->out[d->n++], data, sizeof d->out[0]);
}

/* Collects the decoder's "embd_in" rows (prefill, then each decoded token)
 * and the first "logits" row (the prefill's). */
typedef struct llama_dumps {
    float *embd;
    int64_t n;
    float logits[512];
    bool have_logits;
} llama_dumps;

static void on_llama_dump(void *user, const char *name, const float *data, int64_t n) {
    llama_dumps *d = user;
    if (!strcmp(name, "embd_in")) {
        d->embd = realloc(d->embd, (size_t)(d->n + n) * sizeof *d->embd);
        assert_non_null(d->embd);
        memcpy(d->embd + d->n, data, (size_t)n * sizeof *data);
        d->n += n;
    } else if (!strcmp(name, "logits") && !d->have_logits) {
        assert_true(n >= 512);
        memcpy(d->logits, data + (n - 512), sizeof d->logits); /* the last row */
        d->have_logits = true;
    }
}

static void llama_dumps_reset(llama_dumps *d) {
    free(d->embd);
    memset(d, 0, sizeof *d);
}

/* Prefill rows (of n_pos) equal to emb (64 floats); *at: the last one. */
static int rows_equal(const llama_dumps *d, int n_pos, const float *emb, int *at) {
    int k = 0;
    assert_true(d->n >= (int64_t)n_pos * 64);
    for (int i = 0; i < n_pos; i++)
        if (memcmp(d->embd + (size_t)i * 64, emb, 64 * sizeof *emb) == 0) {
            k++;
            if (at) *at = i;
        }
    return k;
}

static char *ask_regions_ok(fixture *f, const char *q, const lp_vlm_region *r, int n, int n_predict,
                            lp_vlm_stats *stats) {
    lp_error err = {0};
    char *answer = NULL;
    lp_vlm_gen_params g = greedy(n_predict);
    loupe_status st = lp_vlm_ask_regions(f->vlm, f->ctx, &f->img, q, r, n, &g, NULL, NULL, &answer, stats, &err);
    if (st) fail_msg("lp_vlm_ask_regions: %s", err.msg);
    assert_non_null(answer);
    return answer;
}

static double max_abs_diff(const float *a, const float *b, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static void test_region_load(void **state) {
    (void)state;
    lp_error err = {0};
    /* A plain pair: no sampler, no token. */
    lp_vlm *v = lp_vlm_load(LM, MMPROJ, NULL, &err);
    assert_non_null(v);
    assert_false(lp_vlm_has_region_sampler(v));
    assert_int_equal(lp_vlm_region_token(v), -1);
    lp_vlm_free(v);
    /* CONTROL and USER_DEFINED tokens are usable; a NORMAL one is text. */
    v = lp_vlm_load(tmp_path(REG_LM), tmp_path(REG_MM), NULL, &err);
    if (!v) fail_msg("%s", err.msg);
    assert_true(lp_vlm_has_region_sampler(v));
    assert_int_equal(lp_vlm_region_token(v), 511);
    lp_vlm_free(v);
    v = lp_vlm_load(tmp_path(REG_LM_USER), tmp_path(REG_MM), NULL, &err);
    assert_non_null(v);
    assert_int_equal(lp_vlm_region_token(v), 511);
    lp_vlm_free(v);
    v = lp_vlm_load(tmp_path(REG_LM_NORMAL), tmp_path(REG_MM), NULL, &err);
    assert_non_null(v);
    assert_int_equal(lp_vlm_region_token(v), -1);
    lp_vlm_free(v);

    /* Widths: sampler input vs CLIP features, output vs the LM. */
    assert_null(lp_vlm_load(tmp_path(REG_LM), tmp_path(REG_MM_IN), NULL, &err));
    assert_int_equal(err.status, LOUPE_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, tmp_path(REG_MM_IN)));
    assert_non_null(strstr(err.msg, "input width 32"));
    assert_non_null(strstr(err.msg, "feature width 64"));
    assert_null(lp_vlm_load(tmp_path(REG_LM), tmp_path(REG_MM_OUT), NULL, &err));
    assert_int_equal(err.status, LOUPE_ERR_MISMATCH);
    assert_non_null(strstr(err.msg, tmp_path(REG_MM_OUT)));
    assert_non_null(strstr(err.msg, "output width 32"));
    assert_non_null(strstr(err.msg, "embedding width 64"));
    assert_non_null(strstr(err.msg, tmp_path(REG_LM)));
}

static void test_region_question(void **state) {
    (void)state;
    lp_error err = {0};
    char *q = NULL;
    lp_vlm_region r[2] = {{.kind = LP_VLM_REGION_BOX, .box = {0, 0, 150, 100}},
                          {.kind = LP_VLM_REGION_BOX, .box = {-20, 50, 400, 99.5}}}; /* clipped */
    /* No placeholder: appended. */
    assert_int_equal(lp_vlm_region_question("What is this?", r, 1, 300, 100, &q, &err), LOUPE_OK);
    assert_string_equal(q, "What is this? [0, 0, 500, 999] <region_fea>");
    free(q);
    assert_int_equal(lp_vlm_region_question("Compare", r, 2, 300, 100, &q, &err), LOUPE_OK);
    assert_string_equal(q, "Compare [0, 0, 500, 999] <region_fea> [0, 500, 999, 995] <region_fea>");
    free(q);
    /* Placeholders: replaced in order. */
    assert_int_equal(lp_vlm_region_question("Is <region> left of <region>?", r, 2, 300, 100, &q, &err), LOUPE_OK);
    assert_string_equal(q, "Is [0, 0, 500, 999] <region_fea> left of [0, 500, 999, 995] <region_fea>?");
    free(q);
    /* No regions: the question as it is, placeholders included. */
    assert_int_equal(lp_vlm_region_question("What is <region>?", NULL, 0, 300, 100, &q, &err), LOUPE_OK);
    assert_string_equal(q, "What is <region>?");
    free(q);
    /* Placeholder count mismatch. */
    assert_int_equal(lp_vlm_region_question("<region> and <region>", r, 1, 300, 100, &q, &err), LOUPE_ERR_INVALID_ARG);
    assert_null(q);
    assert_non_null(strstr(err.msg, "2 <region> placeholders but 1 regions"));
    /* A mask's text is its pixel-edge bounding box. */
    uint8_t *m = calloc(300 * 100, 1);
    for (int y = 20; y < 40; y++)
        for (int x = 30; x < 60; x++) m[y * 300 + x] = 255;
    lp_vlm_region mr = {.kind = LP_VLM_REGION_MASK, .mask = m, .mask_w = 300, .mask_h = 100};
    double box[4];
    assert_int_equal(lp_vlm_region_box(&mr, 300, 100, box, &err), LOUPE_OK);
    assert_true(box[0] == 30 && box[1] == 20 && box[2] == 60 && box[3] == 40);
    assert_int_equal(lp_vlm_region_question("What is <region>?", &mr, 1, 300, 100, &q, &err), LOUPE_OK);
    assert_string_equal(q, "What is [100, 200, 200, 400] <region_fea>?");
    free(q);
    free(m);
}

/* The box -> feature-map mapping on an asymmetric 300x100 image (S = 32,
 * P = 8: the feature map covers the 32x32 input). */
static void test_region_geometry(void **state) {
    (void)state;
    lp_error err = {0};
    lp_image wide = {0};
    assert_int_equal(lp_image_alloc(&wide, 300, 100, &err), LOUPE_OK);
    for (size_t i = 0; i < (size_t)300 * 100 * 3; i++) wide.rgb[i] = (uint8_t)(i * 7);
    const lp_vlm_region left = {.kind = LP_VLM_REGION_BOX, .box = {0, 0, 150, 100}};
    uint8_t *m = calloc(300 * 100, 1);
    for (int y = 0; y < 100; y++)
        for (int x = 0; x < 150; x++) m[y * 300 + x] = 1;
    const lp_vlm_region left_mask = {.kind = LP_VLM_REGION_MASK, .mask = m, .mask_w = 300, .mask_h = 100};
    static const struct {
        lp_prep_mode prep;
        bool llamacpp;
        float want[4];
    } cases[] = {
        /* pad: the image sits at rows 100..200 of the 300x300 square */
        {LP_PREP_PAD_PIL, false, {0.0f, 1.0f / 3.0f, 0.5f, 2.0f / 3.0f}},
        /* squeeze (Ferret): relative to the image itself */
        {LP_PREP_SQUASH_PIL, false, {0.0f, 0.0f, 0.5f, 1.0f}},
        /* llama.cpp: resized to 32x11 (ceil), pasted at row (32-11)/2 = 10 */
        {LP_PREP_LLAMACPP, true, {0.0f, 10.0f / 32.0f, 0.5f, 21.0f / 32.0f}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lp_vlm_params vp = lp_vlm_default_params();
        vp.prep = cases[k].prep;
        vp.llamacpp = cases[k].llamacpp;
        fixture f;
        open_fixture(&f, tmp_path(REG_LM), tmp_path(REG_MM), &vp, 0);
        float fb[4];
        assert_int_equal(lp_vlm_region_feature_box(f.vlm, &wide, &left, fb, &err), LOUPE_OK);
        for (int i = 0; i < 4; i++) assert_float_equal(fb[i], cases[k].want[i], 1e-6);
        assert_int_equal(lp_vlm_region_feature_box(f.vlm, &wide, &left_mask, fb, &err), LOUPE_OK);
        for (int i = 0; i < 4; i++) assert_float_equal(fb[i], cases[k].want[i], 1e-6);
        /* Clipped: a box sticking out of the image maps like its inside part. */
        const lp_vlm_region big = {.kind = LP_VLM_REGION_BOX, .box = {-50, -10, 150, 140}};
        assert_int_equal(lp_vlm_region_feature_box(f.vlm, &wide, &big, fb, &err), LOUPE_OK);
        for (int i = 0; i < 4; i++) assert_float_equal(fb[i], cases[k].want[i], 1e-6);
        /* The whole ask runs on the wide image in this mode, box and mask. */
        lp_image_free(&f.img);
        assert_int_equal(lp_image_from_rgb(wide.rgb, 300, 100, 300 * 3, &f.img, &err), LOUPE_OK);
        lp_vlm_stats s;
        free(ask_regions_ok(&f, "What is <region>?", &left, 1, 4, &s));
        assert_int_equal(s.n_regions, 1);
        free(ask_regions_ok(&f, "What is <region>?", &left_mask, 1, 4, &s));
        close_fixture(&f);
    }
    free(m);
    lp_image_free(&wide);
}

static void test_region_ask(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, tmp_path(REG_LM), tmp_path(REG_MM), NULL, 0);
    region_dumps d = {0};
    lp_vlm_set_region_dump(f.vlm, on_region_dump, &d);
    const lp_vlm_region a = {.kind = LP_VLM_REGION_BOX, .box = {0, 0, 16, 16}};
    const lp_vlm_region b = {.kind = LP_VLM_REGION_BOX, .box = {16, 16, 32, 32}};
    lp_vlm_stats s1, s2, s0;
    char *plain = ask_ok(&f, QUESTION, NULL, &s0);
    assert_int_equal(s0.n_regions, 0);
    assert_int_equal(d.n, 0);

    /* Deterministic: the same region twice gives the same embedding and answer. */
    char *a1 = ask_regions_ok(&f, "What is <region>?", &a, 1, 16, &s1);
    char *a2 = ask_regions_ok(&f, "What is <region>?", &a, 1, 16, &s2);
    assert_string_equal(a1, a2);
    assert_int_equal(d.n, 2);
    assert_memory_equal(d.out[0], d.out[1], sizeof d.out[0]);
    assert_int_equal(s1.n_regions, 1);
    assert_true(s1.region_ms >= 0 && s1.region_ms <= s1.encode_ms);
    assert_int_equal(s1.prefill_tokens, s2.prefill_tokens);
    /* A different region: a different embedding. */
    char *b1 = ask_regions_ok(&f, "What is <region>?", &b, 1, 16, NULL);
    assert_int_equal(d.n, 3);
    assert_true(max_abs_diff(d.out[0], d.out[2], 64) > 1e-3);

    /* Two masks with the same bounding box (so the same text) but other
     * pixels: only the spliced embedding differs, and so does the answer. */
    uint8_t full[32 * 32] = {0}, ring[32 * 32] = {0};
    for (int y = 4; y < 28; y++)
        for (int x = 4; x < 28; x++) {
            full[y * 32 + x] = 1;
            ring[y * 32 + x] = (x < 6 || x >= 26 || y < 6 || y >= 26) ? 255 : 0;
        }
    const lp_vlm_region mf = {.kind = LP_VLM_REGION_MASK, .mask = full, .mask_w = 32, .mask_h = 32};
    const lp_vlm_region mr = {.kind = LP_VLM_REGION_MASK, .mask = ring, .mask_w = 32, .mask_h = 32};
    d.n = 0;
    llama_dumps L1 = {0}, L2 = {0}, L0 = {0};
    lp_vlm_ctx_set_dump(f.ctx, on_llama_dump, &L1);
    char *m1 = ask_regions_ok(&f, QUESTION, &mf, 1, 16, &s1);
    lp_vlm_ctx_set_dump(f.ctx, on_llama_dump, &L2);
    char *m2 = ask_regions_ok(&f, QUESTION, &mr, 1, 16, &s2);
    lp_vlm_ctx_set_dump(f.ctx, NULL, NULL);
    char *m3 = ask_regions_ok(&f, QUESTION, &mf, 1, 16, NULL);
    assert_int_equal(d.n, 3);
    assert_int_equal(s1.n_text_tokens, s2.n_text_tokens);
    assert_true(max_abs_diff(d.out[0], d.out[1], 64) > 1e-3);
    assert_memory_equal(d.out[0], d.out[2], sizeof d.out[0]);
    assert_string_equal(m1, m3);
    /* The embedding is spliced: exactly one prefill row is the sampler's
     * output, at the same place in both, after the image rows and before
     * " ASSISTANT:". */
    int at1 = -1, at2 = -2;
    assert_int_equal(rows_equal(&L1, s1.prefill_tokens, d.out[0], &at1), 1);
    assert_int_equal(rows_equal(&L2, s2.prefill_tokens, d.out[1], &at2), 1);
    assert_int_equal(at1, at2);
    assert_true(at1 > s1.n_image_tokens && at1 < s1.prefill_tokens - 3);
    /* Every other row is the same in both asks; the logits differ. */
    assert_int_equal(s1.prefill_tokens, s2.prefill_tokens);
    for (int i = 0; i < s1.prefill_tokens; i++)
        if (i != at1)
            assert_memory_equal(L1.embd + (size_t)i * 64, L2.embd + (size_t)i * 64, 64 * sizeof(float));
    assert_true(L1.have_logits && L2.have_logits);
    assert_true(max_abs_diff(L1.logits, L2.logits, 512) > 1e-4);
    /* The plain question has no such row. */
    lp_vlm_ctx_set_dump(f.ctx, on_llama_dump, &L0);
    free(ask_ok(&f, QUESTION, NULL, &s0));
    lp_vlm_ctx_set_dump(f.ctx, NULL, NULL);
    assert_int_equal(rows_equal(&L0, s0.prefill_tokens, d.out[0], NULL), 0);
    llama_dumps_reset(&L0);
    llama_dumps_reset(&L1);
    llama_dumps_reset(&L2);
    /* One more text token than the plain question: " [..] <region_fea>" is
     * several; at least the marker. */
    assert_true(s1.n_text_tokens > s0.n_text_tokens);

    /* Two regions in one question: two embeddings, in order. */
    d.n = 0;
    const lp_vlm_region two[2] = {b, a};
    free(ask_regions_ok(&f, "Is <region> like <region>?", two, 2, 4, &s1));
    assert_int_equal(s1.n_regions, 2);
    assert_int_equal(d.n, 2);

    /* The same ask through a shared model on another context (threads
     * share the sampler): same answer. */
    lp_vlm_set_region_dump(f.vlm, NULL, NULL);
    lp_error err = {0};
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 2;
    lp_vlm_ctx *c2 = lp_vlm_ctx_new(f.vlm, &cp, &err);
    assert_non_null(c2);
    char *ans = NULL;
    lp_vlm_gen_params g = greedy(16);
    assert_int_equal(lp_vlm_ask_regions(f.vlm, c2, &f.img, "What is <region>?", &a, 1, &g, NULL, NULL, &ans, NULL, &err),
                     LOUPE_OK);
    assert_string_equal(ans, a1);
    free(ans);
    lp_vlm_ctx_free(c2);

    free(plain);
    free(a1);
    free(a2);
    free(b1);
    free(m1);
    free(m2);
    free(m3);
    close_fixture(&f);
}

static void expect_region_error(fixture *f, const char *q, const lp_vlm_region *r, int n, loupe_status want,
                                const char *msg1, const char *msg2) {
    lp_error err = {0};
    char *answer = (char *)1;
    lp_vlm_gen_params g = greedy(4);
    lp_vlm_stats s;
    assert_int_equal(lp_vlm_ask_regions(f->vlm, f->ctx, &f->img, q, r, n, &g, NULL, NULL, &answer, &s, &err), want);
    assert_null(answer);
    assert_int_equal(err.status, want);
    if (msg1 && !strstr(err.msg, msg1)) fail_msg("'%s' not in '%s'", msg1, err.msg);
    if (msg2 && !strstr(err.msg, msg2)) fail_msg("'%s' not in '%s'", msg2, err.msg);
}

static void test_region_errors(void **state) {
    (void)state;
    const lp_vlm_region box = {.kind = LP_VLM_REGION_BOX, .box = {2, 2, 20, 20}};
    fixture f;
    /* No sampler in the mmproj. */
    open_fixture(&f, tmp_path(REG_LM), MMPROJ, NULL, 0);
    expect_region_error(&f, "What is <region>?", &box, 1, LOUPE_ERR_UNSUPPORTED, MMPROJ, "no region sampler");
    free(ask_ok(&f, QUESTION, NULL, NULL)); /* plain questions still work */
    close_fixture(&f);
    /* No <region_fea> token in the model (and one that is a NORMAL token). */
    open_fixture(&f, LM, tmp_path(REG_MM), NULL, 0);
    expect_region_error(&f, "What is <region>?", &box, 1, LOUPE_ERR_UNSUPPORTED, "model has no <region_fea> token", LM);
    free(ask_ok(&f, QUESTION, NULL, NULL));
    close_fixture(&f);
    open_fixture(&f, tmp_path(REG_LM_NORMAL), tmp_path(REG_MM), NULL, 0);
    expect_region_error(&f, "What is <region>?", &box, 1, LOUPE_ERR_UNSUPPORTED, "model has no <region_fea> token",
                        tmp_path(REG_LM_NORMAL));
    close_fixture(&f);

    open_fixture(&f, tmp_path(REG_LM), tmp_path(REG_MM), NULL, 0);
    /* Boxes: outside the 32x32 image, inverted, empty, not finite. */
    lp_vlm_region r = {.kind = LP_VLM_REGION_BOX, .box = {40, 0, 60, 10}};
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "region 1", "lies outside the 32x32 image");
    r = (lp_vlm_region){.kind = LP_VLM_REGION_BOX, .box = {-10, -10, 0, 5}}; /* touches the edge only */
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "lies outside", NULL);
    r = (lp_vlm_region){.kind = LP_VLM_REGION_BOX, .box = {10, 0, 5, 10}};
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "x1 < x2", NULL);
    r = (lp_vlm_region){.kind = LP_VLM_REGION_BOX, .box = {5, 5, 5, 10}};
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "x1 < x2", NULL);
    r = (lp_vlm_region){.kind = LP_VLM_REGION_BOX, .box = {0, NAN, 5, 10}};
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "not finite", NULL);
    /* The second of two regions is bad: named. */
    const lp_vlm_region pair[2] = {box, {.kind = LP_VLM_REGION_BOX, .box = {0, 33, 5, 40}}};
    expect_region_error(&f, QUESTION, pair, 2, LOUPE_ERR_INVALID_ARG, "region 2", "outside");
    /* Masks: size mismatch, empty, missing. */
    uint8_t m[32 * 32] = {0};
    r = (lp_vlm_region){.kind = LP_VLM_REGION_MASK, .mask = m, .mask_w = 16, .mask_h = 64};
    m[5] = 1;
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "mask is 16x64 but the image is 32x32", NULL);
    m[5] = 0;
    r = (lp_vlm_region){.kind = LP_VLM_REGION_MASK, .mask = m, .mask_w = 32, .mask_h = 32};
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "empty", NULL);
    r.mask = NULL;
    expect_region_error(&f, QUESTION, &r, 1, LOUPE_ERR_INVALID_ARG, "no data", NULL);
    /* Placeholders that do not match the regions. */
    expect_region_error(&f, "<region> or <region>?", &box, 1, LOUPE_ERR_INVALID_ARG, "placeholders", NULL);
    /* A literal <region_fea> in the question would get no embedding. */
    expect_region_error(&f, "What is <region_fea>?", NULL, 0, LOUPE_ERR_INVALID_ARG, "1 <region_fea> tokens but 0",
                        NULL);
    expect_region_error(&f, "What is <region_fea>?", &box, 1, LOUPE_ERR_INVALID_ARG, "2 <region_fea> tokens but 1",
                        NULL);
    /* A single-pixel mask works (all points coincide). */
    m[3 * 32 + 7] = 1;
    r.mask = m;
    free(ask_regions_ok(&f, QUESTION, &r, 1, 2, NULL));
    close_fixture(&f);
}

// ----------------------------------------------------------------------------
// one model, several threads

typedef struct worker {
    const lp_vlm *vlm;
    const lp_image *img;
    char *answer;
    loupe_status st;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    lp_error err = {0};
    lp_vlm_ctx_params cp = lp_vlm_ctx_default_params();
    cp.n_threads = 1;
    lp_vlm_ctx *ctx = lp_vlm_ctx_new(w->vlm, &cp, &err);
    if (!ctx) {
        w->st = err.status;
        return NULL;
    }
    lp_vlm_gen_params g = greedy(10);
    w->st = lp_vlm_ask(w->vlm, ctx, w->img, QUESTION, &g, NULL, NULL, &w->answer, NULL, &err);
    lp_vlm_ctx_free(ctx);
    return NULL;
}

static void test_shared_model(void **state) {
    (void)state;
    fixture f;
    open_fixture(&f, LM_Q8, MMPROJ_Q8, NULL, 0);
    lp_vlm_gen_params g = greedy(10);
    char *want = ask_ok(&f, QUESTION, &g, NULL);
    worker w[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (worker){.vlm = f.vlm, .img = &f.img};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].st, LOUPE_OK);
        assert_string_equal(w[i].answer, want);
        free(w[i].answer);
    }
    /* A context made for another model is refused. */
    fixture o;
    open_fixture(&o, LM, MMPROJ, NULL, 0);
    char *answer = NULL;
    lp_error err = {0};
    assert_int_equal(lp_vlm_ask(f.vlm, o.ctx, &f.img, QUESTION, &g, NULL, NULL, &answer, NULL, &err),
                     LOUPE_ERR_INVALID_ARG);
    close_fixture(&o);
    free(want);
    close_fixture(&f);
}

// ----------------------------------------------------------------------------

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/loupe-test-vlm-XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    return region_setup(state);
}

static int teardown(void **state) {
    (void)state;
    static const char *files[] = {"eos.gguf",        "stop.gguf",         "chatml.gguf",       "gemma.gguf",
                                  "mmproj-32.gguf",  "truncated.png",     "mmproj-cut.gguf",   "mmproj-head.gguf",
                                  "mmproj-magic.gguf", "lm-cut.gguf",      REG_LM,              REG_LM_USER,
                                  REG_LM_NORMAL,     REG_MM,              REG_MM_IN,           REG_MM_OUT};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(tmp_path(files[i]));
    return rmdir(tmpdir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_segments),   cmocka_unit_test(test_greedy_deterministic),
        cmocka_unit_test(test_sampled_seeded),    cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_cancel),            cmocka_unit_test(test_stop_eog),
        cmocka_unit_test(test_stop_string),       cmocka_unit_test(test_template_metadata),
        cmocka_unit_test(test_prompt_too_long),   cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_bad_image),         cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_shared_model),      cmocka_unit_test(test_region_load),
        cmocka_unit_test(test_region_question),   cmocka_unit_test(test_region_geometry),
        cmocka_unit_test(test_region_ask),        cmocka_unit_test(test_region_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
