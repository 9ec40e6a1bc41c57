/* tests/test_eval.c — grounding evaluation: the IoU metric, the four dataset
 * layouts and their error messages, sample selection and shards, the results
 * file (torn lines, resume semantics), the report, and `loupe eval` itself
 * killed with SIGKILL and resumed to the same report; referring evaluation:
 * the answer metric, synth's regions and their masks, referring records and
 * reports, and `loupe eval --task refer` against `loupe ask --region`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "../datasets/evaluate.h"
#include "../datasets/refdata.h"
#include "../datasets/scene.h"
#include "../vision/image.h"
#include "support/testutil.h"

static char g_dir[64];
static char loupe_bin[512]; /* BUILD/loupe next to BUILD/tests/test_eval */

static const char *tmp_path(const char *name) { return tu_path(g_dir, name); }

static const char *write_tmp(const char *name, const char *text) {
    const char *p = tmp_path(name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static int setup(void **state) {
    (void)state;
    return tu_mkdtemp(g_dir, sizeof g_dir, "eval");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(g_dir);
}

/* ---- metric ---- */

static void test_iou(void **state) {
    (void)state;
    const double a[4] = {0, 0, 2, 2}, b[4] = {1, 1, 3, 3}, c[4] = {2, 0, 4, 2}, d[4] = {10, 10, 11, 11};
    assert_float_equal(lp_iou(a, a), 1.0, 1e-12);
    assert_float_equal(lp_iou(a, b), 1.0 / 7.0, 1e-12);  /* continuous: 1 / (4 + 4 - 1) */
    assert_float_equal(lp_iou(a, c), 0.0, 1e-12);        /* touching edges do not overlap */
    assert_float_equal(lp_iou(a, d), 0.0, 1e-12);
    assert_float_equal(lp_iou(d, d), 1.0, 1e-12);        /* a 1x1 box: no +1 anywhere */
    const double e[4] = {5, 5, 5, 9}, f[4] = {0, 0, 10, 10}; /* degenerate */
    assert_float_equal(lp_iou(e, f), 0.0, 1e-12);
    assert_float_equal(lp_iou(e, e), 0.0, 1e-12);
    /* the Acc@0.5 boundary: [0,0,4,4] vs [0,0,4,2] -> 8/16 = 0.5 exactly counts */
    const double g[4] = {0, 0, 4, 4}, h[4] = {0, 0, 4, 2};
    assert_true(lp_iou(g, h) >= LP_EVAL_IOU_THRESHOLD);
}

/* ---- loaders ---- */

static void expect_load_error(const char *path, const char *refs, const char *needle) {
    lp_refset s;
    lp_error err = {0};
    assert_int_not_equal(lp_refset_load(path, refs, &s, &err), LOUPE_OK);
    if (!strstr(err.msg, needle)) fail_msg("error \"%s\" lacks \"%s\"", err.msg, needle);
    /* names the file at fault: the refs file or the dataset */
    assert_true(strstr(err.msg, path) || (refs && strstr(err.msg, refs)));
    assert_int_equal(s.n, 0);
    assert_null(s.refs);
}

static const char *MDETR =
    "{\"images\": [\n"
    " {\"id\": 7, \"file_name\": \"COCO_train2014_000000000073.jpg\", \"height\": 480, \"width\": 640,\n"
    "  \"caption\": \"man on the left\"},\n"
    " {\"id\": 9, \"file_name\": \"COCO_train2014_000000000074.jpg\", \"height\": 100, \"width\": 200,\n"
    "  \"caption\": \"red car\"}],\n"
    " \"annotations\": [{\"id\": 1, \"image_id\": 9, \"bbox\": [10, 20, 30, 40], \"category_id\": 3},\n"
    "                   {\"id\": 2, \"image_id\": 7, \"bbox\": [1.5, 2.5, 3, 4], \"category_id\": 1},\n"
    "                   {\"id\": 3, \"image_id\": 7, \"bbox\": [99, 99, 1, 1], \"category_id\": 1}],\n"
    " \"categories\": [{\"id\": 1, \"name\": \"person\"}, {\"id\": 3, \"name\": \"car\"}]}\n";

static void test_load_mdetr(void **state) {
    (void)state;
    const char *p = write_tmp("final_refcoco_testA.json", MDETR);
    lp_refset s;
    lp_error err = {0};
    assert_int_equal(lp_refset_load(p, NULL, &s, &err), LOUPE_OK);
    assert_string_equal(s.format, "mdetr");
    assert_int_equal(s.n, 2);
    assert_string_equal(s.refs[0].id, "7");
    assert_string_equal(s.refs[0].expr, "man on the left");
    assert_string_equal(s.refs[0].image, "COCO_train2014_000000000073.jpg");
    assert_float_equal(s.refs[0].bbox[0], 1.5, 0); /* the FIRST annotation of image 7 */
    assert_float_equal(s.refs[0].bbox[3], 4.0, 0);
    assert_string_equal(s.refs[0].split, "testA");
    assert_string_equal(s.refs[0].category, "person");
    assert_int_equal(s.refs[0].width, 640);
    assert_string_equal(s.refs[1].category, "car");
    lp_refset_free(&s);
    char split[16];
    lp_refset_split_from_name("/x/final_refcocog_val.json", split, sizeof split);
    assert_string_equal(split, "val");
    lp_refset_split_from_name("/x/mydata.json", split, sizeof split);
    assert_string_equal(split, "");
}

static const char *INSTANCES =
    "{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 50, \"height\": 40},\n"
    "              {\"id\": 2, \"file_name\": \"b.jpg\", \"width\": 60, \"height\": 30}],\n"
    " \"annotations\": [{\"id\": 10, \"image_id\": 1, \"bbox\": [1, 2, 3, 4], \"category_id\": 5},\n"
    "                   {\"id\": 11, \"image_id\": 2, \"bbox\": [5, 6, 7, 8], \"category_id\": 6}],\n"
    " \"categories\": [{\"id\": 5, \"name\": \"cup\"}, {\"id\": 6, \"name\": \"dog\"}]}\n";

static void test_load_refer(void **state) {
    (void)state;
    char inst[256]; /* tu_path's buffers rotate */
    snprintf(inst, sizeof inst, "%s", write_tmp("instances.json", INSTANCES));
    const char *refs = write_tmp(
        "refs.json",
        "[{\"ref_id\": 100, \"ann_id\": 11, \"image_id\": 2, \"split\": \"val\", \"category_id\": 6,\n"
        "  \"sentences\": [{\"sent_id\": 1, \"sent\": \"brown dog\"}, {\"sent_id\": 2, \"sent\": \"dog on right\"}]},\n"
        " {\"ref_id\": 101, \"ann_id\": 10, \"image_id\": 1, \"split\": \"testB\",\n"
        "  \"sentences\": [{\"sent_id\": 3, \"sent\": \"cup\"}]}]\n");
    lp_refset s;
    lp_error err = {0};
    assert_int_equal(lp_refset_load(inst, refs, &s, &err), LOUPE_OK);
    assert_string_equal(s.format, "refer");
    assert_int_equal(s.n, 3);
    assert_string_equal(s.refs[1].id, "100:2");
    assert_string_equal(s.refs[1].expr, "dog on right");
    assert_string_equal(s.refs[1].image, "b.jpg");
    assert_string_equal(s.refs[1].split, "val");
    assert_string_equal(s.refs[1].category, "dog");
    assert_float_equal(s.refs[1].bbox[2], 7.0, 0);
    assert_string_equal(s.refs[2].category, "cup"); /* from the annotation when the ref has none */
    assert_string_equal(s.refs[2].split, "testB");

    /* selection: split, limit, shards partition the selection */
    size_t *idx, n, n_split;
    assert_int_equal(lp_refset_select(&s, "val", -1, 1, 1, &idx, &n, &n_split, &err), LOUPE_OK);
    assert_int_equal(n, 2);
    assert_int_equal(idx[0], 0);
    free(idx);
    assert_int_equal(lp_refset_select(&s, NULL, 2, 1, 1, &idx, &n, &n_split, &err), LOUPE_OK);
    assert_int_equal(n, 2);
    free(idx);
    assert_int_equal(lp_refset_select(&s, "nope", -1, 1, 1, &idx, &n, &n_split, &err), LOUPE_OK);
    assert_int_equal(n_split, 0);
    assert_null(idx);
    int seen[3] = {0};
    for (int k = 1; k <= 2; k++) {
        assert_int_equal(lp_refset_select(&s, NULL, -1, k, 2, &idx, &n, &n_split, &err), LOUPE_OK);
        assert_int_equal(n_split, 3);
        for (size_t i = 0; i < n; i++) seen[idx[i]]++;
        free(idx);
    }
    assert_int_equal(seen[0] + seen[1] + seen[2], 3);
    assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    assert_int_equal(lp_refset_select(&s, NULL, -1, 3, 2, &idx, &n, &n_split, &err), LOUPE_ERR_INVALID_ARG);
    lp_refset_free(&s);

    expect_load_error(inst, write_tmp("r1.json", "[{\"ref_id\": 1, \"ann_id\": 99, \"image_id\": 1, \"split\": \"val\","
                                                 " \"sentences\": []}]"),
                      "refs[0].ann_id: 99 is not in");
    expect_load_error(inst, write_tmp("r2.json", "[{\"ref_id\": 1, \"ann_id\": 10, \"image_id\": 1, \"split\": \"val\","
                                                 " \"sentences\": [{\"sent_id\": 1}]}]"),
                      "refs[0].sentences[0].sent: missing or not a string");
    expect_load_error(inst, write_tmp("r3.json", "{\"refs\": 1}"), "not a JSON array");
    expect_load_error(inst, write_tmp("r4.json", "[{\"ref_id\": 1, \"ann_id\": 10, \"image_id\": 1, \"split\": \"val\","
                                                 " \"sentences\": [{\"sent_id\": 1, \"sent\": \"a\"}, "
                                                 "{\"sent_id\": 1, \"sent\": \"b\"}]}]"),
                      "appears twice");
}

static void test_load_jsonl(void **state) {
    (void)state;
    const char *p = write_tmp("d.jsonl",
                              "{\"image\": \"x.png\", \"expression\": \"the cup\", \"bbox\": [1, 2, 3, 4], \"split\": "
                              "\"val\", \"kind\": \"category\"}\n"
                              "\n"
                              "{\"id\": \"q7\", \"image\": \"/abs/y.png\", \"expression\": \"the dog\", \"bbox\": [0, 0, "
                              "10, 10]}\n");
    lp_refset s;
    lp_error err = {0};
    assert_int_equal(lp_refset_load(p, NULL, &s, &err), LOUPE_OK);
    assert_string_equal(s.format, "jsonl");
    assert_int_equal(s.n, 2);
    assert_string_equal(s.refs[0].id, "line1");
    assert_string_equal(s.refs[0].kind, "category");
    assert_string_equal(s.refs[1].id, "q7");
    assert_string_equal(s.refs[1].split, "");
    lp_refset_free(&s);

    expect_load_error(write_tmp("b1.jsonl", "{\"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 3, 4]}\n"
                                            "{\"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 3]}\n"),
                      NULL, "line 2.bbox: missing or not [x, y, w, h]");
    expect_load_error(write_tmp("b2.jsonl", "{\"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 3, 4]}\n"
                                            "{\"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 3, 4]\n"),
                      NULL, "b2.jsonl:2: not a JSON object");
    expect_load_error(write_tmp("b3.jsonl", "{\"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 0, 4]}\n"), NULL,
                      "width and height must be positive");
    expect_load_error(write_tmp("b4.jsonl", "{\"image\": 3, \"expression\": \"e\", \"bbox\": [1, 2, 3, 4]}\n"), NULL,
                      "line 1.image: missing or not a string");
    expect_load_error(write_tmp("b5.jsonl", "\n\n"), NULL, "no referring expressions");
    expect_load_error(write_tmp("b6.jsonl", "{\"id\": \"a\", \"image\": \"x\", \"expression\": \"e\", \"bbox\": [1, 2, 3, "
                                            "4]}\n{\"id\": \"a\", \"image\": \"x\", \"expression\": \"f\", \"bbox\": [1, "
                                            "2, 3, 4]}\n"),
                      NULL, "sample id \"a\" appears twice");
}

static void test_load_errors(void **state) {
    (void)state;
    expect_load_error(write_tmp("e1.json", "{\"images\": [\n  {\"id\": 1,,}]}"), NULL, "e1.json:2:13: JSON syntax error");
    expect_load_error(write_tmp("e2.json", ""), NULL, "empty file");
    expect_load_error(write_tmp("e3.json", "[1, 2]"), NULL, "not a JSON object");
    expect_load_error(write_tmp("e4.json", "{\"images\": [{\"id\": 1}], \"annotations\": []}"), NULL,
                      "not a grounding dataset loupe knows");
    expect_load_error(tmp_path("missing.json"), NULL, "cannot open");
    expect_load_error(g_dir, NULL, "is a directory");
    /* MDETR: an expression without a box, a non-finite box, a bad id */
    expect_load_error(write_tmp("final_x_val.json",
                                "{\"images\": [{\"id\": 1, \"file_name\": \"a\", \"caption\": \"c\"}], \"annotations\": "
                                "[{\"id\": 1, \"image_id\": 2, \"bbox\": [1, 2, 3, 4]}]}"),
                      NULL, "images[0] (id 1): no annotation has this image_id");
    expect_load_error(write_tmp("final_y_val.json",
                                "{\"images\": [{\"id\": 1, \"file_name\": \"a\", \"caption\": \"c\"}], \"annotations\": "
                                "[{\"id\": 1, \"image_id\": 1, \"bbox\": [1, 2, \"3\", 4]}]}"),
                      NULL, "annotations[0].bbox[2]: not a finite number");
    expect_load_error(write_tmp("final_z_val.json",
                                "{\"images\": [{\"id\": 1.5, \"file_name\": \"a\", \"caption\": \"c\"}], \"annotations\": "
                                "[]}"),
                      NULL, "images[0].id: missing, or not an integer or a string");
}

static void test_load_synth(void **state) {
    (void)state;
    const char *out = tmp_path("synth");
    lp_scene_params p;
    lp_scene_params_default(&p);
    lp_synth_stats st;
    lp_error err = {0};
    assert_int_equal(lp_synth_write(out, 3, 3, &p, &st, &err), LOUPE_OK);
    char ann[300];
    snprintf(ann, sizeof ann, "%s/annotations.json", out);
    lp_refset s;
    assert_int_equal(lp_refset_load(ann, NULL, &s, &err), LOUPE_OK);
    assert_string_equal(s.format, "synth");
    assert_int_equal((long)s.n, st.sentences); /* one sample per sentence */
    int kinds = 0;
    for (size_t i = 0; i < s.n; i++) {
        kinds += s.refs[i].kind[0] != '\0';
        assert_true(s.refs[i].bbox[2] > 0 && s.refs[i].bbox[3] > 0);
        assert_non_null(strstr(s.refs[i].image, "images/"));
    }
    assert_int_equal(kinds, (int)s.n); /* every synth expression carries its kind */
    lp_refset_free(&s);
}

/* ---- results file and report ---- */

static lp_eval_record rec(const char *id, const char *kind, double iou, int has_pred, const char *error) {
    lp_eval_record r = {0};
    r.id = (char *)id;
    r.image = (char *)"i.png";
    r.expr = (char *)"the \"quoted\" cup\n";
    r.split = (char *)"val";
    r.category = (char *)"cup";
    r.kind = (char *)kind;
    r.answer = (char *)"[1, 2, 3, 4]";
    r.reason = (char *)(has_pred ? "" : "no box in the answer");
    r.error = (char *)error;
    r.gt[2] = r.gt[3] = 10;
    r.has_pred = has_pred;
    r.pred[2] = 10, r.pred[3] = 10 * iou;
    r.iou = iou;
    r.encode_ms = 1.25;
    return r;
}

static void append(FILE *f, lp_eval_record r) {
    char *line = lp_eval_record_json(&r);
    assert_non_null(line);
    assert_non_null(strchr(line, '\n'));
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1); /* one line, escapes inside */
    fputs(line, f);
    free(line);
}

static void test_results_and_report(void **state) {
    (void)state;
    const char *p = tmp_path("res.jsonl");
    FILE *f = fopen(p, "wb");
    append(f, rec("a", "color", 0.9, 1, ""));
    append(f, rec("b", "color", 0.2, 1, ""));
    append(f, rec("c", "ordinal", 0.0, 0, ""));
    append(f, rec("d", "ordinal", 0.0, 0, "x.png: truncated"));
    append(f, rec("b", "color", 0.6, 1, "")); /* a retried sample: the last record counts */
    fputs("{\"id\": \"e\", \"gt\": [0, 0, 1", f); /* torn by a kill */
    fclose(f);

    lp_results res;
    lp_error err = {0};
    assert_int_equal(lp_results_read(p, 0, 0, &res, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "res.jsonl:6: last line is incomplete"));
    struct stat sb0, sb1;
    stat(p, &sb0);
    assert_int_equal(lp_results_read(p, 1, 0, &res, &err), LOUPE_OK);
    stat(p, &sb1);
    assert_true(sb1.st_size < sb0.st_size); /* repaired: cut after the last whole line */
    assert_int_equal(res.n, 5);
    assert_string_equal(res.rec[0].expr, "the \"quoted\" cup\n");
    assert_float_equal(res.rec[0].encode_ms, 1.25, 1e-9);
    assert_int_equal(res.rec[2].has_pred, 0);
    assert_string_equal(res.rec[2].reason, "no box in the answer");
    assert_string_equal(res.rec[3].error, "x.png: truncated");

    lp_eval_report rep;
    assert_int_equal(lp_eval_report_build(&res, NULL, 0, &rep, &err), LOUPE_OK);
    assert_int_equal(rep.n, 3);       /* a, b (last), c; d failed */
    assert_int_equal(rep.correct, 2); /* a 0.9, b 0.6 */
    assert_int_equal(rep.errors, 1);
    assert_int_equal(rep.no_box, 1);
    assert_float_equal(rep.iou_sum, 1.5, 1e-9);
    int found = 0;
    for (size_t i = 0; i < rep.n_groups; i++)
        if (!strcmp(rep.groups[i].axis, "kind") && !strcmp(rep.groups[i].key, "ordinal")) {
            assert_int_equal(rep.groups[i].n, 1);
            assert_int_equal(rep.groups[i].correct, 0);
            found = 1;
        }
    assert_true(found);
    char *json = lp_eval_report_json(&rep, "{\"model\": \"m.gguf\"}");
    assert_non_null(json);
    assert_non_null(strstr(json, "\"model\":\t\"m.gguf\""));
    assert_non_null(strstr(json, "\"acc\":\t0.666667"));
    free(json);
    char buf[4096] = {0};
    FILE *mf = fmemopen(buf, sizeof buf - 1, "w");
    lp_eval_report_print(&rep, mf);
    fclose(mf);
    assert_non_null(strstr(buf, "66.67%"));
    assert_non_null(strstr(buf, "1 samples failed to run"));
    lp_eval_report_free(&rep);

    /* only the selection counts */
    const char *only[] = {"a", "c"};
    assert_int_equal(lp_eval_report_build(&res, only, 2, &rep, &err), LOUPE_OK);
    assert_int_equal(rep.n, 2);
    assert_int_equal(rep.correct, 1);
    lp_eval_report_free(&rep);
    lp_results_free(&res);

    /* a broken line in the middle is an error naming it, never skipped */
    const char *q = write_tmp("bad.jsonl", "{\"id\": \"a\", \"gt\": [0, 0, 1, 1], \"iou\": 0.5, \"pred\": null}\n"
                                           "{\"id\": \"b\", \"gt\": [0, 0, 1, 1], \"iou\": 7, \"pred\": null}\n");
    assert_int_equal(lp_results_read(q, 1, 0, &res, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "bad.jsonl:2: not a results record: no \"iou\" number in 0..1"));
    assert_int_equal(lp_results_read(tmp_path("none.jsonl"), 1, 1, &res, &err), LOUPE_OK);
    assert_int_equal(res.n, 0);
    assert_int_equal(lp_results_read(tmp_path("none.jsonl"), 1, 0, &res, &err), LOUPE_ERR_IO);
}

/* ---- referring ---- */

static void test_answer_metric(void **state) {
    (void)state;
    assert_true(lp_answer_names("a blue tv", "tv"));
    assert_true(lp_answer_names("A Blue TV.", "tv"));
    assert_true(lp_answer_names("tv", "tv"));
    assert_true(lp_answer_names("the tall dining table, left", "dining table"));
    assert_false(lp_answer_names("two tvs", "tv"));
    assert_false(lp_answer_names("a tvstand", "tv"));
    assert_false(lp_answer_names("a flat-screen", "tv"));
    assert_false(lp_answer_names("a blue tv", ""));
    assert_false(lp_answer_names("", "cup"));
    assert_true(lp_answer_exact("a blue tv", " A blue TV. "));
    assert_true(lp_answer_exact("a blue tv\n", "a blue tv"));
    assert_false(lp_answer_exact("a blue tv", "a red tv"));
    assert_false(lp_answer_exact("a blue tv set", "a blue tv"));
    assert_false(lp_answer_exact("", "a blue tv"));
}

static void test_rle_decode(void **state) {
    (void)state;
    /* 2 x 3 image, column-major runs 0:1 1:2 0:3 -> pixels (0,0)=0, (1,0)=1, (0,1)=1, rest 0 */
    const int counts[] = {1, 2, 3};
    unsigned char m[6];
    lp_error err = {0};
    assert_int_equal(lp_rle_decode(counts, 3, 2, 3, m, &err), LOUPE_OK);
    const unsigned char want[6] = {0, 1, 0, 1, 0, 0}; /* row-major */
    assert_memory_equal(m, want, 6);
    const int short_runs[] = {1, 2};
    assert_int_equal(lp_rle_decode(short_runs, 2, 2, 3, m, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "cover 3 of the 6 pixels"));
    const int long_runs[] = {4, 4};
    assert_int_equal(lp_rle_decode(long_runs, 2, 2, 3, m, &err), LOUPE_ERR_FORMAT);
    const int negative[] = {7, -1};
    assert_int_equal(lp_rle_decode(negative, 2, 2, 3, m, &err), LOUPE_ERR_FORMAT);
}

static void test_load_regions(void **state) {
    (void)state;
    const char *out = tmp_path("regions");
    lp_synth_stats st;
    lp_error err = {0};
    assert_int_equal(lp_synth_write(out, 4, 3, NULL, &st, &err), LOUPE_OK);
    char ann[300];
    snprintf(ann, sizeof ann, "%s/annotations.json", out);
    lp_refset s;
    assert_int_equal(lp_refset_load_regions(ann, &s, &err), LOUPE_OK);
    assert_true(st.regions > 0);
    assert_int_equal((long)s.n, 2L * st.regions); /* each region as its box and as its mask */
    for (size_t i = 0; i < s.n; i++) {
        const lp_ref *r = &s.refs[i];
        const int is_mask = (int)(i % 2);
        assert_string_equal(r->kind, is_mask ? "mask" : "box");
        assert_non_null(strstr(r->id, is_mask ? ":mask" : ":box"));
        assert_non_null(strstr(r->expr, "<region>"));
        assert_true(r->category[0] != '\0');
        assert_true(lp_answer_names(r->answer, r->category)); /* "a <colour> <category>" */
        if (!is_mask) {
            assert_null(r->rle);
            continue;
        }
        /* the mask: inside pixels exist, and all lie in the region's box */
        assert_non_null(r->rle);
        assert_int_equal(r->rle_w, r->width);
        assert_int_equal(r->rle_h, r->height);
        unsigned char *m = malloc((size_t)r->rle_w * r->rle_h);
        assert_non_null(m);
        assert_int_equal(lp_rle_decode(r->rle, r->n_rle, r->rle_h, r->rle_w, m, &err), LOUPE_OK);
        long inside = 0, outside_box = 0;
        for (int y = 0; y < r->rle_h; y++)
            for (int x = 0; x < r->rle_w; x++) {
                if (!m[(size_t)y * r->rle_w + x]) continue;
                inside++;
                outside_box += x < r->bbox[0] || x >= r->bbox[0] + r->bbox[2] || y < r->bbox[1] ||
                               y >= r->bbox[1] + r->bbox[3];
            }
        free(m);
        assert_true(inside > 0);
        assert_int_equal(outside_box, 0);
    }
    lp_refset_free(&s);

    /* grounding files without regions, and broken regions, are refused by name */
    assert_int_equal(lp_refset_load_regions(write_tmp("noreg.json", "{\"images\": [], \"annotations\": [], \"refs\": []}"),
                                            &s, &err),
                     LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "noreg.json: no \"regions\" array"));
    const char *head = "{\"images\": [{\"id\": 1, \"file_name\": \"a.png\", \"width\": 3, \"height\": 2}],"
                       "\"annotations\": [{\"id\": 5, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 2, 2]}],"
                       "\"categories\": [{\"id\": 1, \"name\": \"cup\"}], \"regions\": [{\"region_id\": 9, \"ann_id\": 5,"
                       "\"image_id\": 1, \"bbox\": [0, 0, 2, 2], \"question\": \"q <region>\", \"answer\": \"a red cup\",";
    const struct {
        const char *tail, *want;
    } bad[] = {
        {"\"mask\": {\"size\": [2, 3], \"counts\": [1, 2]}}]}", "regions[0].mask.counts: the runs cover 3 pixels"},
        {"\"mask\": {\"size\": [2, 4], \"counts\": [8]}}]}", "regions[0].mask.size: 4x2, but the image is 3x2"},
        {"\"mask\": {\"size\": [2, 3], \"counts\": [1, -2, 7]}}]}", "regions[0].mask.counts[1]: not a run length"},
        {"\"mask\": [1, 2]}]}", "regions[0].mask: not {\"size\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[1024], name[32];
        snprintf(text, sizeof text, "%s%s", head, bad[i].tail);
        snprintf(name, sizeof name, "bad%zu.json", i);
        assert_int_equal(lp_refset_load_regions(write_tmp(name, text), &s, &err), LOUPE_ERR_FORMAT);
        if (!strstr(err.msg, bad[i].want)) fail_msg("case %zu: got \"%s\"", i, err.msg);
        assert_non_null(strstr(err.msg, name));
    }
    char text[1024];
    snprintf(text, sizeof text, "%s", head);
    char *ann5 = strstr(text, "\"ann_id\": 5");
    ann5[10] = '6'; /* a region pointing at no annotation */
    strcat(text, "\"mask\": {\"size\": [2, 3], \"counts\": [6]}}]}");
    assert_int_equal(lp_refset_load_regions(write_tmp("dangling.json", text), &s, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "dangling.json: regions[0].ann_id: 6 is not in the annotations"));
    snprintf(text, sizeof text, "%s%s", head, "\"mask\": {\"size\": [2, 3], \"counts\": [1, 2, 3]}}]}");
    assert_int_equal(lp_refset_load_regions(write_tmp("good.json", text), &s, &err), LOUPE_OK);
    assert_int_equal((long)s.n, 2);
    assert_string_equal(s.refs[1].category, "cup");
    assert_string_equal(s.refs[1].answer, "a red cup");
    assert_int_equal(s.refs[1].n_rle, 3);
    lp_refset_free(&s);
}

static void test_refer_records(void **state) {
    (void)state;
    lp_eval_record a = rec("1:box", "box", 0, 0, ""), b = rec("1:mask", "mask", 0, 0, ""),
                   c = rec("2:box", "box", 0, 0, "");
    a.refer = b.refer = c.refer = 1;
    a.expected = b.expected = c.expected = (char *)"a red cup";
    a.answer = (char *)"a red cup", a.correct = 1, a.exact = 1;
    b.answer = (char *)"a blue cup", b.correct = 1, b.exact = 0;
    c.answer = (char *)"a lamp", c.correct = 0, c.exact = 0;
    const char *p = tmp_path("refer.jsonl");
    FILE *f = fopen(p, "wb");
    append(f, a);
    append(f, b);
    append(f, c);
    fclose(f);
    lp_results res;
    lp_error err = {0};
    assert_int_equal(lp_results_read(p, 0, 0, &res, &err), LOUPE_OK);
    assert_int_equal(res.n, 3);
    assert_int_equal(res.rec[0].refer, 1);
    assert_string_equal(res.rec[1].expected, "a red cup");
    assert_int_equal(res.rec[1].correct, 1);
    assert_int_equal(res.rec[1].exact, 0);
    lp_eval_report rep;
    assert_int_equal(lp_eval_report_build(&res, NULL, 0, &rep, &err), LOUPE_OK);
    assert_int_equal(rep.refer, 1);
    assert_int_equal(rep.n, 3);
    assert_int_equal(rep.correct, 2);
    assert_int_equal(rep.exact, 1);
    char buf[4096] = {0};
    FILE *mf = fmemopen(buf, sizeof buf - 1, "w");
    lp_eval_report_print(&rep, mf);
    fclose(mf);
    assert_non_null(strstr(buf, "named"));
    assert_non_null(strstr(buf, "66.67%    33.33%"));
    assert_null(strstr(buf, "Acc@0.5"));
    char *json = lp_eval_report_json(&rep, NULL);
    assert_non_null(strstr(json, "\"task\":\t\"refer\""));
    assert_non_null(strstr(json, "\"exact\":\t0.333333"));
    free(json);
    lp_eval_report_free(&rep);
    lp_results_free(&res);

    /* a grounding record among referring ones: refused, not silently averaged */
    f = fopen(p, "ab");
    append(f, rec("g", "color", 0.9, 1, ""));
    fclose(f);
    assert_int_equal(lp_results_read(p, 0, 0, &res, &err), LOUPE_OK);
    assert_int_equal(lp_eval_report_build(&res, NULL, 0, &rep, &err), LOUPE_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "mix grounding and referring"));
    lp_results_free(&res);
    /* a referring record must say whether it is correct */
    const char *q = write_tmp("nocorrect.jsonl", "{\"id\": \"a\", \"task\": \"refer\", \"gt\": [0, 0, 1, 1]}\n");
    assert_int_equal(lp_results_read(q, 0, 0, &res, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "without \"correct\""));
}

static void test_shard_parse(void **state) {
    (void)state;
    int k, n;
    lp_error err = {0};
    assert_int_equal(lp_shard_parse("2/8", &k, &n, &err), LOUPE_OK);
    assert_int_equal(k, 2);
    assert_int_equal(n, 8);
    const char *bad[] = {"0/8", "9/8", "a/b", "2/", "/3", "2/8x", "-1/2", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(lp_shard_parse(bad[i], &k, &n, &err), LOUPE_ERR_INVALID_ARG);
}

/* ---- the command, killed and resumed ---- */

static int run_loupe(const char *const *args, const char *out_file) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out_file ? out_file : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 2);
        execv(loupe_bin, (char *const *)args);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static long count_lines(const char *path) {
    size_t n;
    char *t = tu_read_file(path, &n);
    if (!t) return 0;
    long k = 0;
    for (size_t i = 0; i < n; i++) k += t[i] == '\n';
    free(t);
    return k;
}

static void test_cli_kill_and_resume(void **state) {
    (void)state;
    /* a small synthetic set; the shipped model (found next to build/) */
    const char *data = tmp_path("cli");
    lp_error err = {0};
    assert_int_equal(lp_synth_write(data, 11, 4, NULL, NULL, &err), LOUPE_OK);
    char ann[300], full[300], part[300], rep_full[300], rep_part[300], gal[300];
    snprintf(ann, sizeof ann, "%s/annotations.json", data);
    snprintf(full, sizeof full, "%s/full.jsonl", g_dir);
    snprintf(part, sizeof part, "%s/part.jsonl", g_dir);
    snprintf(rep_full, sizeof rep_full, "%s/full.txt", g_dir);
    snprintf(rep_part, sizeof rep_part, "%s/part.txt", g_dir);
    snprintf(gal, sizeof gal, "%s/gallery", g_dir);
    const char *a_full[] = {loupe_bin, "eval", "--data", ann, "--limit", "24", "-t", "1", "-q", "--out", full,
                            "--gallery", gal, NULL};
    assert_int_equal(run_loupe(a_full, rep_full), 0);
    assert_int_equal(count_lines(full), 24);
    /* refuses to clobber finished work */
    assert_int_not_equal(run_loupe(a_full, NULL), 0);
    assert_int_equal(count_lines(full), 24);
    char idx[320];
    snprintf(idx, sizeof idx, "%s/index.html", gal);
    assert_int_equal(access(idx, R_OK), 0);

    /* `loupe ask --json` on a scored sample gives exactly the box eval scored */
    {
        size_t nf;
        char *t = tu_read_file(full, &nf);
        assert_non_null(t);
        char *nl = strchr(t, '\n');
        *nl = '\0';
        cJSON *rec = cJSON_Parse(t);
        free(t);
        assert_non_null(rec);
        const cJSON *pred = cJSON_GetObjectItem(rec, "pred");
        char img[400], q[400], ask_out[300];
        snprintf(img, sizeof img, "%s/%s", data, cJSON_GetObjectItem(rec, "image")->valuestring);
        snprintf(q, sizeof q, "What is the location of %s in the image?", cJSON_GetObjectItem(rec, "expression")->valuestring);
        snprintf(ask_out, sizeof ask_out, "%s/ask.json", g_dir);
        const char *a_ask[] = {loupe_bin, "ask", img, q, "--json", "-t", "1", NULL};
        assert_int_equal(run_loupe(a_ask, ask_out), 0);
        t = tu_read_file(ask_out, &nf);
        cJSON *ask = cJSON_Parse(t);
        free(t);
        assert_non_null(ask);
        const cJSON *boxes = cJSON_GetObjectItem(ask, "boxes");
        if (cJSON_IsArray(pred)) {
            assert_true(cJSON_GetArraySize(boxes) >= 1);
            const cJSON *b = cJSON_GetArrayItem(boxes, 0);
            const char *k[4] = {"x1", "y1", "x2", "y2"};
            for (int i = 0; i < 4; i++)
                assert_true(cJSON_GetObjectItem(b, k[i])->valuedouble == cJSON_GetArrayItem(pred, i)->valuedouble);
        } else {
            assert_int_equal(cJSON_GetArraySize(boxes), 0);
        }
        assert_string_equal(cJSON_GetObjectItem(ask, "answer")->valuestring,
                            cJSON_GetObjectItem(rec, "answer")->valuestring);
        cJSON_Delete(rec);
        cJSON_Delete(ask);
    }

    /* SIGKILL once a few records are written, then resume */
    const char *a_part[] = {loupe_bin, "eval", "--data", ann, "--limit", "24", "-t", "1", "-q", "--out", part, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        dup2(nul, 2);
        execv(loupe_bin, (char *const *)a_part);
        _exit(127);
    }
    for (int i = 0; i < 6000 && count_lines(part) < 5; i++) usleep(5000);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    long got = count_lines(part);
    assert_true(got >= 5);
    assert_true(got <= 24);
    /* simulate the worst moment too: a torn half line at the end */
    FILE *f = fopen(part, "ab");
    fputs("{\"id\": \"torn", f);
    fclose(f);
    const char *a_res[] = {loupe_bin, "eval", "--data", ann, "--limit", "24", "-t", "1", "-q", "--out", part,
                           "--resume", NULL};
    assert_int_equal(run_loupe(a_res, rep_part), 0);
    assert_int_equal(count_lines(part), 24); /* nothing redone, nothing lost */
    size_t n1, n2;
    char *r1 = tu_read_file(rep_full, &n1), *r2 = tu_read_file(rep_part, &n2);
    assert_non_null(r1);
    assert_non_null(r2);
    assert_non_null(strstr(r1, "overall"));
    assert_string_equal(r1, r2); /* the same final numbers */
    free(r1);
    free(r2);

    /* shards merge to the same report */
    char s1[300], s2[300], merged[300];
    snprintf(s1, sizeof s1, "%s/s1.jsonl", g_dir);
    snprintf(s2, sizeof s2, "%s/s2.jsonl", g_dir);
    snprintf(merged, sizeof merged, "%s/merged.txt", g_dir);
    const char *a_s1[] = {loupe_bin, "eval", "--data", ann, "--limit", "24", "-t", "1", "-q", "--out", s1, "--shard",
                          "1/2", NULL};
    const char *a_s2[] = {loupe_bin, "eval", "--data", ann, "--limit", "24", "-t", "1", "-q", "--out", s2, "--shard",
                          "2/2", NULL};
    assert_int_equal(run_loupe(a_s1, NULL), 0);
    assert_int_equal(run_loupe(a_s2, NULL), 0);
    assert_int_equal(count_lines(s1) + count_lines(s2), 24);
    const char *a_m[] = {loupe_bin, "eval-merge", s1, s2, NULL};
    assert_int_equal(run_loupe(a_m, merged), 0);
    r1 = tu_read_file(rep_full, &n1);
    r2 = tu_read_file(merged, &n2);
    assert_string_equal(r1, r2);
    free(r1);
    free(r2);

    /* a sample whose image is missing: recorded with its error, the others
     * still run, the exit status says so */
    char mix[300], mix_out[300];
    snprintf(mix, sizeof mix, "%s/mix.jsonl", g_dir);
    snprintf(mix_out, sizeof mix_out, "%s/mix_out.jsonl", g_dir);
    f = fopen(mix, "wb");
    fprintf(f, "{\"image\": \"nope.png\", \"expression\": \"the cup\", \"bbox\": [1, 2, 3, 4]}\n"
               "{\"image\": \"%s/images/000001.png\", \"expression\": \"the cup\", \"bbox\": [1, 2, 3, 4]}\n",
            data);
    fclose(f);
    const char *a_mix[] = {loupe_bin, "eval", "--data", mix, "-q", "-t", "1", "--out", mix_out, NULL};
    assert_int_equal(run_loupe(a_mix, NULL), 1 + LOUPE_ERR_IO);
    assert_int_equal(count_lines(mix_out), 2);
    size_t nm;
    char *mt = tu_read_file(mix_out, &nm);
    assert_non_null(strstr(mt, "\"error\":\"") );
    assert_non_null(strstr(mt, "nope.png: cannot open"));
    free(mt);

    /* a malformed dataset line: clear error, nonzero exit, nothing written */
    char bad[300], bad_out[300];
    snprintf(bad, sizeof bad, "%s/bad.jsonl", g_dir);
    snprintf(bad_out, sizeof bad_out, "%s/bad_out.jsonl", g_dir);
    f = fopen(bad, "wb");
    fputs("{\"image\": \"x.png\", \"expression\": \"e\", \"bbox\": [1, 2, 3, 4]}\nnot json\n", f);
    fclose(f);
    const char *a_bad[] = {loupe_bin, "eval", "--data", bad, "-q", "--out", bad_out, NULL};
    assert_int_not_equal(run_loupe(a_bad, NULL), 0);
    assert_int_equal(access(bad_out, F_OK), -1);
}

/* `loupe eval --task refer` scores exactly what `loupe ask --region/--mask`
 * answers, and refuses to mix its results with grounding ones. */
static const cJSON *line_json(const char *path, int k, cJSON **hold) {
    size_t n;
    char *t = tu_read_file(path, &n);
    assert_non_null(t);
    char *p = t;
    for (int i = 0; i < k; i++) p = strchr(p, '\n') + 1;
    *strchr(p, '\n') = '\0';
    *hold = cJSON_Parse(p);
    free(t);
    assert_non_null(*hold);
    return *hold;
}

static char *ask_answer(const char *const *args) {
    char out[300];
    snprintf(out, sizeof out, "%s/ask_refer.json", g_dir);
    assert_int_equal(run_loupe(args, out), 0);
    size_t n;
    char *t = tu_read_file(out, &n);
    cJSON *o = cJSON_Parse(t);
    free(t);
    assert_non_null(o);
    char *a = strdup(cJSON_GetObjectItem(o, "answer")->valuestring);
    cJSON_Delete(o);
    return a;
}

static void test_cli_refer(void **state) {
    (void)state;
    const char *data = tmp_path("cli_refer");
    lp_error err = {0};
    assert_int_equal(lp_synth_write(data, 12, 2, NULL, NULL, &err), LOUPE_OK);
    char ann[300], res[300], rep[300];
    snprintf(ann, sizeof ann, "%s/annotations.json", data);
    snprintf(res, sizeof res, "%s/refer_cli.jsonl", g_dir);
    snprintf(rep, sizeof rep, "%s/refer.txt", g_dir);
    const char *a_ev[] = {loupe_bin, "eval", "--task", "refer", "--data", ann, "--limit", "6", "-t", "1", "-q",
                          "--out", res, NULL};
    assert_int_equal(run_loupe(a_ev, rep), 0);
    assert_int_equal(count_lines(res), 6);
    size_t n;
    char *t = tu_read_file(rep, &n);
    assert_non_null(strstr(t, "named"));
    const char *kb = strstr(t, "kind       box ");
    assert_non_null(kb);
    assert_int_equal(strtol(kb + strlen("kind       box "), NULL, 10), 3); /* 3 regions, each as box and mask */
    free(t);

    /* record 0 is region 1 as its box, record 1 the same region as its mask */
    cJSON *r0, *r1;
    line_json(res, 0, &r0);
    line_json(res, 1, &r1);
    assert_string_equal(cJSON_GetObjectItem(r0, "kind")->valuestring, "box");
    assert_string_equal(cJSON_GetObjectItem(r1, "kind")->valuestring, "mask");
    char img[400], box[128];
    snprintf(img, sizeof img, "%s/%s", data, cJSON_GetObjectItem(r0, "image")->valuestring);
    const cJSON *gt = cJSON_GetObjectItem(r0, "gt");
    snprintf(box, sizeof box, "%g,%g,%g,%g", cJSON_GetArrayItem(gt, 0)->valuedouble, cJSON_GetArrayItem(gt, 1)->valuedouble,
             cJSON_GetArrayItem(gt, 2)->valuedouble, cJSON_GetArrayItem(gt, 3)->valuedouble);
    const char *q = cJSON_GetObjectItem(r0, "expression")->valuestring;
    const char *a_box[] = {loupe_bin, "ask", img, q, "--region", box, "--json", "-t", "1", NULL};
    char *ans = ask_answer(a_box);
    assert_string_equal(ans, cJSON_GetObjectItem(r0, "answer")->valuestring);
    free(ans);
    /* the mask, written as a PNG from the dataset's RLE */
    lp_refset set;
    assert_int_equal(lp_refset_load_regions(ann, &set, &err), LOUPE_OK);
    const lp_ref *mr = &set.refs[1];
    assert_string_equal(mr->id, cJSON_GetObjectItem(r1, "id")->valuestring);
    unsigned char *m = malloc((size_t)mr->rle_w * mr->rle_h);
    assert_int_equal(lp_rle_decode(mr->rle, mr->n_rle, mr->rle_h, mr->rle_w, m, &err), LOUPE_OK);
    lp_image mi = {.w = mr->rle_w, .h = mr->rle_h, .rgb = malloc((size_t)3 * mr->rle_w * mr->rle_h)};
    for (size_t i = 0; i < (size_t)mr->rle_w * mr->rle_h; i++) mi.rgb[3 * i] = mi.rgb[3 * i + 1] = mi.rgb[3 * i + 2] = m[i] ? 255 : 0;
    char mpng[300];
    snprintf(mpng, sizeof mpng, "%s/mask.png", g_dir);
    assert_int_equal(lp_image_write_png(mpng, &mi, &err), LOUPE_OK);
    free(mi.rgb);
    free(m);
    lp_refset_free(&set);
    const char *a_mask[] = {loupe_bin, "ask", img, q, "--mask", mpng, "--json", "-t", "1", NULL};
    ans = ask_answer(a_mask);
    assert_string_equal(ans, cJSON_GetObjectItem(r1, "answer")->valuestring);
    free(ans);
    cJSON_Delete(r0);
    cJSON_Delete(r1);

    /* resuming a referring results file as grounding, --refs with refer, a bad --task: refused */
    const char *a_ground[] = {loupe_bin, "eval", "--data", ann, "--limit", "6", "-q", "--out", res, "--resume", NULL};
    assert_int_equal(run_loupe(a_ground, NULL), 1 + LOUPE_ERR_INVALID_ARG);
    assert_int_equal(count_lines(res), 6);
    const char *a_refs[] = {loupe_bin, "eval", "--task", "refer", "--data", ann, "--refs", ann, "-q", NULL};
    assert_int_not_equal(run_loupe(a_refs, NULL), 0);
    const char *a_task[] = {loupe_bin, "eval", "--task", "caption", "--data", ann, "-q", NULL};
    assert_int_not_equal(run_loupe(a_task, NULL), 0);
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(loupe_bin, sizeof loupe_bin, "%s", argv[0]);
    char *slash = strrchr(loupe_bin, '/');
    if (slash) *slash = '\0';
    slash = strrchr(loupe_bin, '/');
    if (slash) snprintf(slash + 1, sizeof loupe_bin - (size_t)(slash + 1 - loupe_bin), "loupe");
    if (access(loupe_bin, X_OK) != 0) snprintf(loupe_bin, sizeof loupe_bin, "build/loupe");
    setenv("LOUPE_MODEL_DIR", "models", 0); /* the shipped model, for every build directory */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iou),
        cmocka_unit_test(test_load_mdetr),
        cmocka_unit_test(test_load_refer),
        cmocka_unit_test(test_load_jsonl),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_synth),
        cmocka_unit_test(test_results_and_report),
        cmocka_unit_test(test_answer_metric),
        cmocka_unit_test(test_rle_decode),
        cmocka_unit_test(test_load_regions),
        cmocka_unit_test(test_refer_records),
        cmocka_unit_test(test_shard_parse),
        cmocka_unit_test(test_cli_kill_and_resume),
        cmocka_unit_test(test_cli_refer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
