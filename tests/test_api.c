/* tests/test_api.c — the public API (include/loupe.h) on the tiny
 * random-weight LLaVA pair in tests/fixtures/parity/: parameters, load
 * errors, asking, grounding and referring, images from buffers, threads
 * sharing one model, cancellation, box parsing and drawing, and the CLI's
 * --json output. The random model's answers are noise, so the tests check
 * properties (determinism, equality across paths, statuses and texts).
 *
 * Everything but the broken-fixture writer (core/gguf.h, used to fabricate a
 * projector of the wrong width) goes through loupe.h. Run from the
 * repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loupe.h"
#include "support/testutil.h"
#include "gguf.h"

#define LM "tests/fixtures/parity/tiny-f32.gguf"
#define MMPROJ "tests/fixtures/parity/tiny-f32-mmproj.gguf"
#define IMAGE "tests/fixtures/parity/image-32.png"
#define IMAGE_WIDE "tests/fixtures/images/src_struct_301x199.png"

static char tmpdir[64];
static char loupe_bin[512]; /* the CLI next to this test's build directory */

static const char *tmp_path(const char *name) { return tu_path(tmpdir, name); }

static loupe_model *load_ok(void) {
    char err[256];
    loupe_model *m = NULL;
    loupe_status st = loupe_model_load(LM, MMPROJ, NULL, &m, err, sizeof err);
    if (st) fail_msg("%s", err);
    assert_non_null(m);
    return m;
}

static loupe_context *ctx_ok(const loupe_model *m, int max_tokens) {
    loupe_context_params cp = loupe_context_default_params();
    cp.n_threads = 1;
    cp.max_tokens = max_tokens;
    loupe_context *c = NULL;
    if (loupe_context_new(m, &cp, &c)) fail_msg("%s", loupe_last_error());
    return c;
}

static loupe_image *image_ok(const char *path) {
    char err[256];
    loupe_image *img = NULL;
    if (loupe_image_from_file(path, &img, err, sizeof err)) fail_msg("%s", err);
    return img;
}

/* ---- parameters ---- */

static void test_defaults(void **state) {
    (void)state;
    loupe_model_params mp = loupe_model_default_params();
    assert_int_equal(mp.prep, LOUPE_PREP_AUTO);
    assert_int_equal(mp.llamacpp_compat, 0);
    assert_null(mp.template_name);
    assert_null(mp.box_format);
    assert_int_equal(mp.memory_budget, 0);
    assert_true(mp.ffn_keep == 1.0f && mp.ffn_threshold == 0.0f);
    assert_int_equal(mp.flash_window, 5);
    loupe_context_params cp = loupe_context_default_params();
    assert_int_equal(cp.n_threads, 0);
    assert_int_equal(cp.n_ctx, 0);
    assert_true(cp.temperature == 0.0f);
    assert_int_equal(cp.top_k, 40);
    assert_true(cp.top_p > 0.94f && cp.top_p < 0.96f);
    assert_int_equal(cp.max_tokens, 256);
    assert_null(cp.system_prompt);
    assert_null(cp.progress);
    assert_null(cp.on_text);
    assert_string_equal(loupe_version(), "0.1.0");

    loupe_model *m = load_ok();
    assert_string_equal(loupe_model_path(m, LOUPE_FILE_MODEL), LM);
    assert_string_equal(loupe_model_path(m, LOUPE_FILE_MMPROJ), MMPROJ);
    assert_string_equal(loupe_model_name(m, LOUPE_FILE_MODEL), "loupe-random-llava-tiny-f32-seed26");
    assert_string_equal(loupe_model_name(m, LOUPE_FILE_MMPROJ), "loupe-random-llava-tiny-mmproj-f32-seed26");
    assert_string_equal(loupe_model_template(m), "vicuna");
    assert_string_equal(loupe_model_box_format(m), "ferret");
    assert_int_equal(loupe_model_prep(m), LOUPE_PREP_PAD); /* no metadata key: LLaVA's pad */
    assert_int_equal(loupe_model_can_refer(m), 0);
    loupe_context *c = NULL;
    assert_int_equal(loupe_context_new(m, &cp, &c), LOUPE_OK);
    assert_int_equal(loupe_context_memory_budget(c), 0); /* resident */
    assert_string_equal(loupe_context_last_error(c), "");
    loupe_context_free(c);
    cp.top_p = 2.0f;
    assert_int_equal(loupe_context_new(m, &cp, &c), LOUPE_ERR_INVALID_ARG);
    assert_null(c);
    assert_non_null(strstr(loupe_last_error(), "top_p"));
    loupe_model_free(m);

    /* Overrides. */
    mp.box_format = "qwen2.5-vl";
    mp.prep = LOUPE_PREP_SQUASH;
    mp.template_name = "chatml";
    char err[256];
    assert_int_equal(loupe_model_load(LM, MMPROJ, &mp, &m, err, sizeof err), LOUPE_OK);
    assert_string_equal(loupe_model_box_format(m), "qwen2.5-vl");
    assert_string_equal(loupe_model_template(m), "chatml");
    assert_int_equal(loupe_model_prep(m), LOUPE_PREP_SQUASH);
    loupe_model_free(m);
    mp.box_format = "yolo";
    assert_int_equal(loupe_model_load(LM, MMPROJ, &mp, &m, err, sizeof err), LOUPE_ERR_INVALID_ARG);
    assert_null(m);
    assert_non_null(strstr(err, "yolo"));

    /* NULL is accepted by every free and accessor. */
    loupe_model_free(NULL);
    loupe_context_free(NULL);
    loupe_image_free(NULL);
    loupe_answer_free(NULL);
    assert_int_equal(loupe_answer_n_boxes(NULL), 0);
    assert_null(loupe_answer_box(NULL, 0));
}

/* ---- load errors ---- */

static void expect_load_error(const char *lm, const char *mm, loupe_status want, const char *names) {
    char err[512];
    loupe_model *m = (loupe_model *)1;
    loupe_status st = loupe_model_load(lm, mm, NULL, &m, err, sizeof err);
    assert_int_equal(st, want);
    assert_null(m);
    if (!strstr(err, names)) fail_msg("error text \"%s\" does not name %s", err, names);
    assert_string_equal(loupe_last_error(), err);
}

/* A projector into a 32-wide model (the fixture LM is 64 wide). */
static void write_narrow_mmproj(const char *path) {
    lp_error e = {0};
    lp_gguf *g = lp_gguf_open(MMPROJ, &e);
    assert_non_null(g);
    lp_gguf_writer *w = lp_gguf_writer_new();
    assert_non_null(w);
    lp_gguf_writer_set_alignment(w, (uint32_t)g->alignment);
    for (uint64_t i = 0; i < g->n_kv; i++)
        assert_int_equal(lp_gguf_writer_set_value(w, g->kv[i].key, &g->kv[i].val), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_set_u32(w, "clip.vision.projection_dim", 32), LOUPE_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const lp_gguf_tensor *t = &g->tensors[i];
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (!strcmp(t->name, "mm.2.weight")) ne[1] = 32; /* keep the first 32 rows */
        if (!strcmp(t->name, "mm.2.bias")) ne[0] = 32;
        assert_int_equal(lp_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, ne, t->data), LOUPE_OK);
    }
    if (lp_gguf_writer_write(w, path, &e)) fail_msg("%s", e.msg);
    lp_gguf_writer_free(w);
    lp_gguf_close(g);
}

static void test_load_errors(void **state) {
    (void)state;
    expect_load_error("tests/fixtures/parity/no-such.gguf", MMPROJ, LOUPE_ERR_IO, "no-such.gguf");
    expect_load_error(LM, "tests/fixtures/parity/no-such-mmproj.gguf", LOUPE_ERR_IO, "no-such-mmproj.gguf");

    /* Corrupt: a GGUF header that stops short, and text that is no GGUF. */
    FILE *f = fopen(tmp_path("corrupt.gguf"), "wb");
    assert_non_null(f);
    fwrite("GGUF\x03\x00\x00\x00\xff\xff", 1, 10, f);
    fclose(f);
    expect_load_error(tmp_path("corrupt.gguf"), MMPROJ, LOUPE_ERR_FORMAT, tmp_path("corrupt.gguf"));
    f = fopen(tmp_path("text.gguf"), "wb");
    assert_non_null(f);
    fputs("this is not a model\n", f);
    fclose(f);
    expect_load_error(LM, tmp_path("text.gguf"), LOUPE_ERR_FORMAT, tmp_path("text.gguf"));

    /* Mismatched pair: the projector's width is not the model's. */
    write_narrow_mmproj(tmp_path("mmproj-32.gguf"));
    expect_load_error(LM, tmp_path("mmproj-32.gguf"), LOUPE_ERR_MISMATCH, tmp_path("mmproj-32.gguf"));
    assert_non_null(strstr(loupe_last_error(), LM));
    /* Swapped files: the mmproj is no language model. */
    char err[512];
    loupe_model *m = NULL;
    assert_int_not_equal(loupe_model_load(MMPROJ, LM, NULL, &m, err, sizeof err), LOUPE_OK);
    assert_null(m);
    assert_non_null(strstr(err, MMPROJ));

    /* Arguments. */
    assert_int_equal(loupe_model_load(NULL, MMPROJ, NULL, &m, err, sizeof err), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(loupe_model_load(LM, MMPROJ, NULL, NULL, NULL, 0), LOUPE_ERR_INVALID_ARG);
    /* A tiny error buffer is truncated, never overrun. */
    char small[8];
    assert_int_equal(loupe_model_load("missing.gguf", MMPROJ, NULL, &m, small, sizeof small), LOUPE_ERR_IO);
    assert_int_equal(strlen(small), sizeof small - 1);
    /* Images too. */
    loupe_image *img = NULL;
    assert_int_equal(loupe_image_from_file("tests/fixtures/images/not_an_image.png", &img, err, sizeof err),
                     LOUPE_ERR_FORMAT);
    assert_null(img);
    assert_non_null(strstr(err, "not_an_image.png"));
}

static void *fail_on_thread(void *arg) {
    (void)arg;
    loupe_model *m = NULL;
    loupe_model_load("other-thread.gguf", MMPROJ, NULL, &m, NULL, 0);
    return strstr(loupe_last_error(), "other-thread.gguf") ? (void *)1 : NULL;
}

static void test_last_error_per_thread(void **state) {
    (void)state;
    loupe_model *m = NULL;
    assert_int_equal(loupe_model_load("this-thread.gguf", MMPROJ, NULL, &m, NULL, 0), LOUPE_ERR_IO);
    pthread_t t;
    void *res = NULL;
    assert_int_equal(pthread_create(&t, NULL, fail_on_thread, NULL), 0);
    assert_int_equal(pthread_join(t, &res), 0);
    assert_non_null(res);
    assert_non_null(strstr(loupe_last_error(), "this-thread.gguf"));
    assert_null(strstr(loupe_last_error(), "other-thread.gguf"));
}

/* ---- asking ---- */

static void test_ask(void **state) {
    (void)state;
    loupe_model *m = load_ok();
    loupe_context *c = ctx_ok(m, 12);
    loupe_image *img = image_ok(IMAGE);
    assert_int_equal(loupe_image_width(img), 32);
    assert_int_equal(loupe_image_height(img), 32);
    loupe_answer *a = NULL;
    assert_int_equal(loupe_ask(c, img, "What is in the image?", &a), LOUPE_OK);
    assert_non_null(a);
    assert_true(strlen(loupe_answer_text(a)) > 0);
    assert_string_equal(loupe_answer_question(a), "What is in the image?");
    const loupe_timings *t = loupe_answer_timings(a);
    assert_int_equal(t->image_tokens, 16);
    assert_true(t->prompt_tokens > 16);
    assert_int_equal(t->generated_tokens, 12);
    assert_true(t->encode_ms > 0 && t->prefill_ms > 0 && t->decode_ms > 0);
    assert_true(t->peak_rss_bytes > 1 << 20);
    assert_string_equal(loupe_answer_stop_reason(a), "token limit");
    /* Every box lies inside the image; every issue has a reason. */
    for (int i = 0; i < loupe_answer_n_boxes(a); i++) {
        const loupe_box *b = loupe_answer_box(a, i);
        assert_true(b->x1 >= 0 && b->x2 <= 32 && b->y1 >= 0 && b->y2 <= 32);
    }
    for (int i = 0; i < loupe_answer_n_issues(a); i++) assert_true(loupe_answer_issue(a, i)->reason[0]);
    assert_null(loupe_answer_box(a, loupe_answer_n_boxes(a)));

    /* Greedy: the same again. */
    loupe_answer *b = NULL;
    assert_int_equal(loupe_ask(c, img, "What is in the image?", &b), LOUPE_OK);
    assert_string_equal(loupe_answer_text(a), loupe_answer_text(b));
    loupe_answer_free(b);

    /* Grounding asks the Ferret question. */
    assert_int_equal(loupe_ground(c, img, "the red chair", &b), LOUPE_OK);
    assert_string_equal(loupe_answer_question(b), "What is the location of the red chair in the image?");
    loupe_answer_free(b);
    /* A phrase is text, not a format. */
    assert_int_equal(loupe_ground(c, img, "100%s %n", &b), LOUPE_OK);
    assert_string_equal(loupe_answer_question(b), "What is the location of 100%s %n in the image?");
    loupe_answer_free(b);

    /* Bad arguments leave a text on the context. */
    assert_int_equal(loupe_ask(c, NULL, "q", &b), LOUPE_ERR_INVALID_ARG);
    assert_null(b);
    assert_true(strlen(loupe_context_last_error(c)) > 0);
    assert_int_equal(loupe_ground(c, img, "", &b), LOUPE_ERR_INVALID_ARG);

    loupe_answer_free(a);
    loupe_image_free(img);
    loupe_context_free(c);
    loupe_model_free(m);
}

/* ---- threads ---- */

#define N_THREADS 2
#define N_QUESTIONS 3
static const char *const QUESTIONS[N_QUESTIONS] = {"What is in the image?", "Describe the picture.",
                                                   "Where is the cup?"};

typedef struct worker {
    const loupe_model *m;
    const loupe_image *img;
    char *answers[N_QUESTIONS];
    loupe_status st;
} worker;

static void *run_worker(void *arg) {
    worker *w = arg;
    loupe_context_params cp = loupe_context_default_params();
    cp.n_threads = 1;
    cp.max_tokens = 10;
    loupe_context *c = NULL;
    if ((w->st = loupe_context_new(w->m, &cp, &c))) return NULL;
    for (int q = 0; q < N_QUESTIONS && !w->st; q++) {
        loupe_answer *a = NULL;
        if (!(w->st = loupe_ask(c, w->img, QUESTIONS[q], &a))) w->answers[q] = strdup(loupe_answer_text(a));
        loupe_answer_free(a);
    }
    loupe_context_free(c);
    return NULL;
}

static void test_threads_share_model(void **state) {
    (void)state;
    loupe_model *m = load_ok();
    loupe_image *img = image_ok(IMAGE);
    worker seq = {.m = m, .img = img};
    run_worker(&seq);
    assert_int_equal(seq.st, LOUPE_OK);
    worker w[N_THREADS];
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (worker){.m = m, .img = img};
        assert_int_equal(pthread_create(&t[i], NULL, run_worker, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(w[i].st, LOUPE_OK);
        for (int q = 0; q < N_QUESTIONS; q++) {
            assert_string_equal(w[i].answers[q], seq.answers[q]);
            free(w[i].answers[q]);
        }
    }
    for (int q = 0; q < N_QUESTIONS; q++) free(seq.answers[q]);
    loupe_image_free(img);
    loupe_model_free(m);
}

/* ---- images ---- */

static void test_image_from_rgb_stride(void **state) {
    (void)state;
    loupe_image *file = image_ok(IMAGE_WIDE);
    const int w = loupe_image_width(file), h = loupe_image_height(file);
    assert_int_equal(w, 301);
    assert_int_equal(h, 199);
    const size_t stride = (size_t)w * 3 + 13;
    uint8_t *buf = malloc(stride * h);
    assert_non_null(buf);
    memset(buf, 0xAB, stride * h);
    for (int y = 0; y < h; y++) memcpy(buf + y * stride, loupe_image_rgb(file) + (size_t)y * w * 3, (size_t)w * 3);
    loupe_image *mem = NULL;
    assert_int_equal(loupe_image_from_rgb(buf, w, h, stride, &mem), LOUPE_OK);
    assert_int_equal(loupe_image_width(mem), w);
    assert_int_equal(loupe_image_height(mem), h);
    assert_memory_equal(loupe_image_rgb(mem), loupe_image_rgb(file), (size_t)w * h * 3);

    /* The same answer from either. */
    loupe_model *m = load_ok();
    loupe_context *c = ctx_ok(m, 8);
    loupe_answer *a = NULL, *b = NULL;
    assert_int_equal(loupe_ask(c, file, "What is in the image?", &a), LOUPE_OK);
    assert_int_equal(loupe_ask(c, mem, "What is in the image?", &b), LOUPE_OK);
    assert_string_equal(loupe_answer_text(a), loupe_answer_text(b));
    loupe_answer_free(a);
    loupe_answer_free(b);

    /* Stride 0 means packed rows; a stride shorter than a row is refused. */
    loupe_image *packed = NULL;
    assert_int_equal(loupe_image_from_rgb(loupe_image_rgb(file), w, h, 0, &packed), LOUPE_OK);
    assert_memory_equal(loupe_image_rgb(packed), loupe_image_rgb(file), (size_t)w * h * 3);
    loupe_image_free(packed);
    loupe_image *bad = (loupe_image *)1;
    assert_int_equal(loupe_image_from_rgb(buf, w, h, (size_t)w * 3 - 1, &bad), LOUPE_ERR_INVALID_ARG);
    assert_null(bad);
    assert_true(strlen(loupe_last_error()) > 0);
    assert_int_equal(loupe_image_from_rgb(buf, 0, h, stride, &bad), LOUPE_ERR_INVALID_ARG);

    free(buf);
    loupe_context_free(c);
    loupe_model_free(m);
    loupe_image_free(mem);
    loupe_image_free(file);
}

/* ---- cancellation ---- */

typedef struct cancel_at {
    loupe_stage stage;
    int done;
    int calls;
    int last_stage;
} cancel_at;

static int on_progress(void *user, loupe_stage stage, int done, int total) {
    cancel_at *c = user;
    c->calls++;
    assert_true((int)stage >= c->last_stage); /* stages only move forward */
    c->last_stage = (int)stage;
    assert_true(done >= 0 && (total < 0 || done <= total));
    return stage == c->stage && done == c->done;
}

static int stop_text(void *user, const char *text, size_t len) {
    (void)text;
    (void)len;
    return ++*(int *)user >= 2;
}

static void test_cancel(void **state) {
    (void)state;
    loupe_model *m = load_ok();
    loupe_image *img = image_ok(IMAGE);
    const cancel_at points[] = {{LOUPE_STAGE_ENCODE, 0, 0, 0}, {LOUPE_STAGE_PREFILL, 0, 0, 0},
                                {LOUPE_STAGE_DECODE, 3, 0, 0}};
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        cancel_at ca = points[i];
        loupe_context_params cp = loupe_context_default_params();
        cp.n_threads = 1;
        cp.max_tokens = 8;
        cp.progress = on_progress;
        cp.progress_user = &ca;
        loupe_context *c = NULL;
        assert_int_equal(loupe_context_new(m, &cp, &c), LOUPE_OK);
        loupe_answer *a = (loupe_answer *)1;
        assert_int_equal(loupe_ask(c, img, "What is in the image?", &a), LOUPE_ERR_CANCELLED);
        assert_null(a);
        assert_non_null(strstr(loupe_context_last_error(c), "cancelled"));
        /* The context still works afterwards. */
        ca.stage = (loupe_stage)-1;
        ca.last_stage = 0;
        assert_int_equal(loupe_ask(c, img, "What is in the image?", &a), LOUPE_OK);
        assert_true(ca.calls > 8); /* encode 2 + prefill 2 + 8 tokens, plus the cancelled run */
        loupe_answer_free(a);
        loupe_context_free(c);
    }
    /* The streaming callback cancels too. */
    int pieces = 0;
    loupe_context_params cp = loupe_context_default_params();
    cp.n_threads = 1;
    cp.max_tokens = 16;
    cp.on_text = stop_text;
    cp.on_text_user = &pieces;
    loupe_context *c = NULL;
    assert_int_equal(loupe_context_new(m, &cp, &c), LOUPE_OK);
    loupe_answer *a = NULL;
    assert_int_equal(loupe_ask(c, img, "What is in the image?", &a), LOUPE_ERR_CANCELLED);
    assert_null(a);
    assert_int_equal(pieces, 2);
    loupe_context_free(c);
    loupe_image_free(img);
    loupe_model_free(m);
}

/* ---- referring ---- */

static void test_refer_unsupported(void **state) {
    (void)state;
    loupe_model *m = load_ok();
    loupe_context *c = ctx_ok(m, 4);
    loupe_image *img = image_ok(IMAGE);
    loupe_region r = {.kind = LOUPE_REGION_BOX, .box = {2, 3, 20, 30}};
    loupe_answer *a = (loupe_answer *)1;
    assert_int_equal(loupe_refer(c, img, &r, &a), LOUPE_ERR_UNSUPPORTED);
    assert_null(a);
    const char *e = loupe_context_last_error(c);
    assert_non_null(strstr(e, MMPROJ));
    assert_non_null(strstr(e, "region sampler"));
    /* A bad region is an argument error first. */
    loupe_region bad = {.kind = LOUPE_REGION_BOX, .box = {20, 3, 2, 30}};
    assert_int_equal(loupe_refer(c, img, &bad, &a), LOUPE_ERR_INVALID_ARG);
    assert_int_equal(loupe_refer(c, img, NULL, &a), LOUPE_ERR_INVALID_ARG);
    loupe_image_free(img);
    loupe_context_free(c);
    loupe_model_free(m);
}

/* ---- boxes: parsing and drawing ---- */

static void test_parse_and_draw(void **state) {
    (void)state;
    loupe_model *m = load_ok();
    loupe_image *img = image_ok(IMAGE_WIDE); /* 301 x 199: pad mode adds 51 rows above */
    loupe_answer *a = NULL;
    char err[256];
    assert_int_equal(loupe_answer_parse(m, img, "the cup [100, 300, 500, 600] and [9, 9, 2, 2]", &a, err, sizeof err),
                     LOUPE_OK);
    assert_int_equal(loupe_answer_n_boxes(a), 1);
    const loupe_box *b = loupe_answer_box(a, 0);
    assert_string_equal(b->label, "the cup");
    /* Ferret 0..999 over the padded 301-pixel square, back to the photo. */
    assert_true(b->x1 > 29 && b->x1 < 31 && b->x2 > 149 && b->x2 < 151);
    assert_true(b->y1 > 38 && b->y1 < 40 && b->y2 > 128 && b->y2 < 130);
    assert_int_equal(loupe_answer_n_issues(a), 1);
    assert_true(loupe_answer_issue(a, 0)->offset > 0);
    assert_non_null(strstr(loupe_answer_issue(a, 0)->reason, "x2 < x1"));

    /* Drawing changes the outline, not the middle of the box. */
    const int w = loupe_image_width(img);
    uint8_t before[3], mid[3];
    const uint8_t *px = loupe_image_rgb(img);
    const int ex = (int)b->x1 + 1, ey = (int)((b->y1 + b->y2) / 2), cx = (int)((b->x1 + b->x2) / 2);
    memcpy(before, px + ((size_t)ey * w + ex) * 3, 3);
    memcpy(mid, px + ((size_t)ey * w + cx) * 3, 3);
    assert_int_equal(loupe_image_draw_answer(img, a), LOUPE_OK);
    px = loupe_image_rgb(img);
    const uint8_t red[3] = {230, 25, 75}; /* palette colour 1 */
    assert_memory_equal(px + ((size_t)ey * w + ex) * 3, red, 3);
    assert_memory_equal(px + ((size_t)ey * w + cx) * 3, mid, 3);
    (void)before;
    assert_int_equal(loupe_image_write_png(img, tmp_path("drawn.png"), err, sizeof err), LOUPE_OK);
    loupe_image *back = image_ok(tmp_path("drawn.png"));
    assert_memory_equal(loupe_image_rgb(back), loupe_image_rgb(img), (size_t)w * loupe_image_height(img) * 3);
    loupe_image_free(back);
    assert_int_equal(loupe_image_write_png(img, "/nonexistent-dir/x.png", err, sizeof err), LOUPE_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent-dir/x.png"));
    loupe_answer_free(a);

    /* Squash mode: the frame is the photo itself. */
    loupe_model_params mp = loupe_model_default_params();
    mp.prep = LOUPE_PREP_SQUASH;
    loupe_model *ms = NULL;
    assert_int_equal(loupe_model_load(LM, MMPROJ, &mp, &ms, err, sizeof err), LOUPE_OK);
    assert_int_equal(loupe_answer_parse(ms, img, "[0, 0, 999, 500]", &a, err, sizeof err), LOUPE_OK);
    assert_int_equal(loupe_answer_n_boxes(a), 1);
    b = loupe_answer_box(a, 0);
    assert_true(b->x1 == 0 && b->y1 == 0 && b->x2 > 300 && b->y2 > 99 && b->y2 < 100);
    assert_string_equal(b->label, "");
    loupe_answer_free(a);
    loupe_model_free(ms);
    loupe_image_free(img);
    loupe_model_free(m);
}

/* ---- the CLI's --json ---- */

static char *run_capture(const char *cmd, int *status) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 == cap) {
            buf = realloc(buf, cap *= 2);
            assert_non_null(buf);
        }
    }
    buf[len] = '\0';
    *status = pclose(p);
    return buf;
}

static void test_cli_json(void **state) {
    (void)state;
    if (access(loupe_bin, X_OK) != 0) {
        print_message("skipped: %s not built\n", loupe_bin);
        skip();
    }
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s ask -m %s --mmproj %s -t 1 -n 8 --json --draw %s %s 'Where is the cup?' 2>%s", loupe_bin, LM,
             MMPROJ, tmp_path("cli.png"), IMAGE_WIDE, tmp_path("cli.err"));
    int status;
    char *out = run_capture(cmd, &status);
    if (status != 0) fail_msg("%s exited %d: %s", cmd, status, out);
    cJSON *o = cJSON_Parse(out);
    if (!o) fail_msg("not JSON: %s", out);
    const char *keys[] = {"answer", "boxes", "box_issues", "image", "model", "timings", "peak_rss_bytes", "stop"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!cJSON_GetObjectItemCaseSensitive(o, keys[i])) fail_msg("no \"%s\" in %s", keys[i], out);
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(o, "answer")));
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(o, "boxes")));
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(o, "image");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(img, "path")->valuestring, IMAGE_WIDE);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(img, "width")->valueint, 301);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(img, "height")->valueint, 199);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(o, "model");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(model, "name")->valuestring,
                        "loupe-random-llava-tiny-f32-seed26");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(model, "mmproj_path")->valuestring, MMPROJ);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(model, "box_format")->valuestring, "ferret");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "timings");
    const char *tkeys[] = {"encode_ms", "prefill_ms", "decode_ms", "prefill_tok_s", "decode_tok_s"};
    for (size_t i = 0; i < sizeof tkeys / sizeof tkeys[0]; i++)
        assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(t, tkeys[i])));
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(t, "decode_tokens")->valueint, 8);
    assert_true(cJSON_GetObjectItemCaseSensitive(o, "peak_rss_bytes")->valuedouble > 0);

    /* The same answer through the library: the CLI is a client of the API. */
    loupe_model *m = load_ok();
    loupe_context *c = ctx_ok(m, 8);
    loupe_image *im = image_ok(IMAGE_WIDE);
    loupe_answer *a = NULL;
    assert_int_equal(loupe_ask(c, im, "Where is the cup?", &a), LOUPE_OK);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "answer")->valuestring, loupe_answer_text(a));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "boxes")), loupe_answer_n_boxes(a));
    loupe_answer_free(a);
    loupe_image_free(im);
    loupe_context_free(c);
    loupe_model_free(m);
    struct stat sb;
    assert_int_equal(stat(tmp_path("cli.png"), &sb), 0);
    assert_true(sb.st_size > 0);
    cJSON_Delete(o);
    free(out);

    /* Errors: the documented exit code (1 + status), nothing on stdout. */
    snprintf(cmd, sizeof cmd, "%s ask -m missing.gguf --mmproj %s --json %s 'q' 2>/dev/null", loupe_bin, MMPROJ,
             IMAGE);
    out = run_capture(cmd, &status);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1 + LOUPE_ERR_IO);
    assert_string_equal(out, "");
    free(out);
}

static int setup(void **state) {
    (void)state;
    return tu_mkdtemp(tmpdir, sizeof tmpdir, "api");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmpdir);
}

int main(int argc, char **argv) {
    /* BUILD/tests/test_api -> BUILD/loupe */
    (void)argc;
    snprintf(loupe_bin, sizeof loupe_bin, "%s", argv[0]);
    char *slash = strrchr(loupe_bin, '/');
    if (slash) *slash = '\0';
    slash = strrchr(loupe_bin, '/');
    if (slash) snprintf(slash + 1, sizeof loupe_bin - (size_t)(slash + 1 - loupe_bin), "loupe");
    else snprintf(loupe_bin, sizeof loupe_bin, "build/loupe");
    if (access(loupe_bin, X_OK) != 0) snprintf(loupe_bin, sizeof loupe_bin, "build/loupe");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),          cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_last_error_per_thread), cmocka_unit_test(test_ask),
        cmocka_unit_test(test_threads_share_model), cmocka_unit_test(test_image_from_rgb_stride),
        cmocka_unit_test(test_cancel),            cmocka_unit_test(test_refer_unsupported),
        cmocka_unit_test(test_parse_and_draw),    cmocka_unit_test(test_cli_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
