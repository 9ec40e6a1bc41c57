/* datasets/evaluate.h — the grounding metric, the results file and the
 * report behind `loupe eval` and `loupe eval-merge`.
 *
 * Metric (RefCOCO protocol as lmms-eval, Ferret and InternVL compute it):
 * IoU of continuous [x1, y1, x2, y2] boxes with no +1; a sample is correct
 * when IoU >= 0.5; an answer without a parsable box is a miss (IoU 0).
 *
 * Results file: JSON Lines, one record per evaluated sample, appended with
 * one write(2) each (so a killed process leaves whole lines, at most a torn
 * last one, which lp_results_read can cut off). Keys:
 *   id, image, expression, split, category, kind  -- from the dataset
 *   gt [x1, y1, x2, y2]  pred [x1, y1, x2, y2] or null  iou  correct
 *   answer (raw model text), reason (why there is no box; absent otherwise)
 *   encode_ms, prefill_ms, decode_ms
 *   error (instead of pred/iou when the sample could not be run, e.g. an
 *          unreadable image; such records are retried by --resume and left
 *          out of the accuracy, counted as errors)
 * When one id has several records (a retried error, merged shards), the
 * last one counts.
 *
 * Referring (`loupe eval --task refer`): a region is given and the answer
 * must name its object. Such records carry "task": "refer", gt is the
 * region's box, "expected" the dataset's answer ("a blue tv"), "correct"
 * whether the answer names the category (lp_answer_names) and "exact"
 * whether it equals the expected answer (case and surrounding blanks
 * aside); they have no pred or iou. One report never mixes the two tasks. */
#ifndef LOUPE_DATASETS_EVALUATE_H
#define LOUPE_DATASETS_EVALUATE_H

#include <stdio.h>

#include "../core/error.h"

#define LP_EVAL_IOU_THRESHOLD 0.5

typedef struct lp_eval_record {
    char *id, *image, *expr, *split, *category, *kind;
    char *answer;   /* "" when none */
    char *reason;   /* "" unless there is no predicted box */
    char *error;    /* "" unless the sample failed to run */
    double gt[4];   /* x1, y1, x2, y2 */
    double pred[4];
    int has_pred;
    double iou;
    double encode_ms, prefill_ms, decode_ms;
    /* referring records */
    int refer;        /* 1: a referring record (the fields below), 0: grounding */
    char *expected;   /* the expected answer; "" for grounding */
    int correct;      /* the category is named */
    int exact;        /* the answer is the expected one */
} lp_eval_record;

/* Does `answer` name `name`: the words of name appear consecutively in
 * answer as whole words, ignoring case ("tv" in "a blue tv." yes, in "tvs"
 * or "a tvstand" no)? The referring metric. */
int lp_answer_names(const char *answer, const char *name);
/* answer == expected ignoring case and leading/trailing blanks and a final '.'. */
int lp_answer_exact(const char *answer, const char *expected);

/* Continuous IoU of [x1, y1, x2, y2] boxes, no +1; 0 when the union is empty. */
double lp_iou(const double a[4], const double b[4]);

/* Does r count as correct: IoU >= 0.5 for grounding, the category named for referring. */
int lp_eval_record_correct(const lp_eval_record *r);
/* One line of JSON (with its '\n') for r; malloc'd, NULL when out of memory. */
char *lp_eval_record_json(const lp_eval_record *r);
void lp_eval_record_clear(lp_eval_record *r);

typedef struct lp_results {
    lp_eval_record *rec;  // (n)
    size_t n;
} lp_results;

/* Read a results file. A last line without its '\n' is a torn write from a
 * killed run: with `repair` nonzero the file is truncated to its last whole
 * line (and a warning logged), otherwise it is an error. Any other line
 * that is not a valid record is an error naming the file and line. A
 * missing file is LOUPE_ERR_IO unless `missing_ok`, then an empty result. */
loupe_status lp_results_read(const char *path, int repair, int missing_ok, lp_results *out, lp_error *err);
/* The parsing part, on a buffer: whole lines only; *torn_at is the offset
 * of an unterminated last line (n when there is none), which is not parsed.
 * `name` stands for the file in messages. */
loupe_status lp_results_parse(const char *name, const char *buf, size_t n, lp_results *out, size_t *torn_at,
                              lp_error *err);
/* Append `more` to `into` (moves the records; `more` ends empty). */
loupe_status lp_results_concat(lp_results *into, lp_results *more, lp_error *err);
void lp_results_free(lp_results *res);

/* The record that counts for each id (its last), as indices into res->rec
 * in file order; *idx is malloc'd. */
loupe_status lp_results_latest(const lp_results *res, size_t **idx, size_t *n, lp_error *err);
/* Is id in the sorted list ids[0..n)? */
int lp_id_in(const char *id, const char *const *ids, size_t n);
/* Sort an id list for lp_id_in. */
void lp_ids_sort(const char **ids, size_t n);

/* Accuracy by group. */
typedef struct lp_eval_group {
    const char *axis;  /* "split", "category" or "kind" */
    char *key;
    long n, correct;
    double iou_sum;
    long exact;        /* referring: answers equal to the expected one */
} lp_eval_group;

typedef struct lp_eval_report {
    int refer;         /* the records are referring ones: correct = category named */
    long n, correct, errors, no_box, exact;
    double iou_sum;
    lp_eval_group *groups;  // (n_groups), sorted by axis then key
    size_t n_groups;
} lp_eval_report;

/* The report over res (last record per id; error records counted apart;
 * LOUPE_ERR_INVALID_ARG when grounding and referring records are mixed).
 * If `only` is non-NULL, records whose id is not in the sorted id list
 * only[0..n_only) are ignored (a resumed run reports its own selection). */
loupe_status lp_eval_report_build(const lp_results *res, const char *const *only, size_t n_only, lp_eval_report *rep,
                                  lp_error *err);
void lp_eval_report_free(lp_eval_report *rep);
/* The summary table (overall, then each axis). */
void lp_eval_report_print(const lp_eval_report *rep, FILE *out);
/* The report as a JSON object (malloc'd text); `meta` (may be NULL) is a
 * JSON object text whose members are copied in first (model, data, ...). */
char *lp_eval_report_json(const lp_eval_report *rep, const char *meta);

/* "K/N" with 1 <= K <= N: sample i (0-based, in dataset order after the
 * split filter and --limit) belongs to shard K when i % N == K - 1. */
loupe_status lp_shard_parse(const char *text, int *k, int *n, lp_error *err);

#endif
