/* datasets/evaluate.c — metric, results file and report (evaluate.h). */
#include "evaluate.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/fileio.h"

#define LP_RESULTS_MAX_FILE ((size_t)4 << 30)

double lp_iou(const double a[4], const double b[4]) {
    const double iw = fmin(a[2], b[2]) - fmax(a[0], b[0]);
    const double ih = fmin(a[3], b[3]) - fmax(a[1], b[1]);
    const double inter = iw > 0 && ih > 0 ? iw * ih : 0.0;
    const double area_a = fmax(0.0, a[2] - a[0]) * fmax(0.0, a[3] - a[1]);
    const double area_b = fmax(0.0, b[2] - b[0]) * fmax(0.0, b[3] - b[1]);
    const double uni = area_a + area_b - inter;
    return uni > 0 ? inter / uni : 0.0;
}

/* ---- the referring metric ---- */

static int word_char(unsigned char c) { return isalnum(c) || c >= 0x80; }

int lp_answer_names(const char *answer, const char *name) {
    const size_t n = strlen(name);
    if (!n) return 0;
    for (const char *p = answer; *p; p++) {
        if (p > answer && word_char((unsigned char)p[-1])) continue; /* starts a word */
        if (strncasecmp(p, name, n)) continue;
        if (!word_char((unsigned char)p[n])) return 1; /* and ends one */
    }
    return 0;
}

int lp_answer_exact(const char *answer, const char *expected) {
    const char *s[2] = {answer, expected};
    size_t len[2];
    for (int i = 0; i < 2; i++) {
        while (isspace((unsigned char)*s[i])) s[i]++;
        len[i] = strlen(s[i]);
        while (len[i] && isspace((unsigned char)s[i][len[i] - 1])) len[i]--;
        if (len[i] && s[i][len[i] - 1] == '.') len[i]--;
    }
    return len[0] == len[1] && !strncasecmp(s[0], s[1], len[0]);
}

/* ---- records ---- */

int lp_eval_record_correct(const lp_eval_record *r) {
    return r->refer ? r->correct : r->iou >= LP_EVAL_IOU_THRESHOLD;
}

/* Boxes are written exactly (a float box prints in at most 9 significant
 * digits), so IoU recomputed from the file equals loupe's. */
static cJSON *box_json(const double b[4]) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < 4; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)(float)b[i]));
    return a;
}

char *lp_eval_record_json(const lp_eval_record *r) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
#define S(k, v) cJSON_AddStringToObject(o, k, (v) ? (v) : "")
    S("id", r->id);
    S("image", r->image);
    S("expression", r->expr);
    S("split", r->split);
    S("category", r->category);
    S("kind", r->kind);
    if (r->refer) cJSON_AddStringToObject(o, "task", "refer");
    cJSON_AddItemToObject(o, "gt", box_json(r->gt));
    if (r->error && r->error[0]) {
        S("error", r->error);
    } else {
        if (r->refer) {
            S("expected", r->expected);
        } else {
            if (r->has_pred) cJSON_AddItemToObject(o, "pred", box_json(r->pred));
            else cJSON_AddNullToObject(o, "pred");
            cJSON_AddNumberToObject(o, "iou", round(r->iou * 1e6) / 1e6);
        }
        cJSON_AddBoolToObject(o, "correct", lp_eval_record_correct(r));
        if (r->refer) cJSON_AddBoolToObject(o, "exact", r->exact);
        S("answer", r->answer);
        if (r->reason && r->reason[0]) S("reason", r->reason);
        cJSON_AddNumberToObject(o, "encode_ms", round(r->encode_ms * 100.0) / 100.0);
        cJSON_AddNumberToObject(o, "prefill_ms", round(r->prefill_ms * 100.0) / 100.0);
        cJSON_AddNumberToObject(o, "decode_ms", round(r->decode_ms * 100.0) / 100.0);
    }
#undef S
    char *txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!txt) return NULL;
    size_t n = strlen(txt);
    char *line = realloc(txt, n + 2);
    if (!line) {
        free(txt);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    return line;
}

void lp_eval_record_clear(lp_eval_record *r) {
    free(r->id);
    free(r->image);
    free(r->expr);
    free(r->split);
    free(r->category);
    free(r->kind);
    free(r->answer);
    free(r->reason);
    free(r->error);
    free(r->expected);
    memset(r, 0, sizeof *r);
}

/* ---- reading ---- */

static char *str_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return strdup(cJSON_IsString(v) && v->valuestring ? v->valuestring : "");
}

static int box_of(const cJSON *o, const char *key, double b[4]) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 4) return 0;
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble)) return 0;
        b[i] = e->valuedouble;
    }
    return 1;
}

static double num_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) ? v->valuedouble : 0.0;
}

/* One line -> record; NULL reason on success. */
static const char *parse_record(const char *line, size_t len, lp_eval_record *r) {
    memset(r, 0, sizeof *r);
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!o) return "not valid JSON";
    const char *why = NULL;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    const cJSON *pred = cJSON_GetObjectItemCaseSensitive(o, "pred");
    const cJSON *iou = cJSON_GetObjectItemCaseSensitive(o, "iou");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(o, "error");
    const cJSON *task = cJSON_GetObjectItemCaseSensitive(o, "task");
    const cJSON *correct = cJSON_GetObjectItemCaseSensitive(o, "correct");
    r->refer = cJSON_IsString(task) && task->valuestring && !strcmp(task->valuestring, "refer");
    if (!cJSON_IsObject(o)) why = "not a JSON object";
    else if (!cJSON_IsString(id) || !id->valuestring || !id->valuestring[0]) why = "no \"id\" string";
    else if (task && !r->refer) why = "\"task\" is not \"refer\" (grounding records have none)";
    else if (!box_of(o, "gt", r->gt)) why = "no \"gt\" box [x1, y1, x2, y2]";
    else if (r->refer) {
        if (!cJSON_IsString(error) && !cJSON_IsBool(correct)) why = "a referring record without \"correct\" (and no \"error\")";
        r->correct = cJSON_IsTrue(correct);
        r->exact = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "exact"));
    } else if (!cJSON_IsString(error)) {
        if (!cJSON_IsNumber(iou) || !(iou->valuedouble >= 0 && iou->valuedouble <= 1))
            why = "no \"iou\" number in 0..1 (and no \"error\")";
        else if (!cJSON_IsNull(pred) && !(r->has_pred = box_of(o, "pred", r->pred)))
            why = "\"pred\" is neither null nor a box";
    }
    if (!why) {
        r->id = str_of(o, "id");
        r->image = str_of(o, "image");
        r->expr = str_of(o, "expression");
        r->split = str_of(o, "split");
        r->category = str_of(o, "category");
        r->kind = str_of(o, "kind");
        r->answer = str_of(o, "answer");
        r->reason = str_of(o, "reason");
        r->error = str_of(o, "error");
        r->expected = str_of(o, "expected");
        r->iou = num_of(o, "iou");
        r->encode_ms = num_of(o, "encode_ms");
        r->prefill_ms = num_of(o, "prefill_ms");
        r->decode_ms = num_of(o, "decode_ms");
        if (!r->id || !r->image || !r->expr || !r->split || !r->category || !r->kind || !r->answer || !r->reason ||
            !r->error || !r->expected)
            why = "out of memory";
    }
    cJSON_Delete(o);
    if (why) lp_eval_record_clear(r);
    return why;
}

void lp_results_free(lp_results *res) {
    if (!res) return;
    for (size_t i = 0; i < res->n; i++) lp_eval_record_clear(&res->rec[i]);
    free(res->rec);
    res->rec = NULL;
    res->n = 0;
}

loupe_status lp_results_parse(const char *name, const char *buf, size_t n, lp_results *out, size_t *torn_at,
                              lp_error *err) {
    memset(out, 0, sizeof *out);
    *torn_at = n;
    loupe_status st = LOUPE_OK;
    size_t cap = 0;
    int line = 0;
    const char *p = buf;
    while (p < buf + n) {
        const char *nl = memchr(p, '\n', (size_t)(buf + n - p));
        line++;
        if (!nl) { /* a torn last line: the caller decides */
            *torn_at = (size_t)(p - buf);
            break;
        }
        if (nl > p) {
            if (out->n == cap) {
                size_t nc = cap ? cap * 2 : 256;
                lp_eval_record *r = realloc(out->rec, nc * sizeof *r);
                if (!r) {
                    st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory at line %d", name, line);
                    break;
                }
                out->rec = r;
                cap = nc;
            }
            const char *why = parse_record(p, (size_t)(nl - p), &out->rec[out->n]);
            if (why) {
                st = lp_fail(err, LOUPE_ERR_FORMAT, "%s:%d: not a results record: %s", name, line, why);
                break;
            }
            out->n++;
        }
        p = nl + 1;
    }
    if (st) lp_results_free(out);
    return st;
}

loupe_status lp_results_read(const char *path, int repair, int missing_ok, lp_results *out, lp_error *err) {
    memset(out, 0, sizeof *out);
    if (missing_ok && access(path, F_OK) != 0 && errno == ENOENT) return LOUPE_OK;
    char *buf;
    size_t n, torn_at;
    loupe_status st = lp_read_file(path, LP_RESULTS_MAX_FILE, "4 GiB results file", &buf, &n, err);
    if (st) return st;
    st = lp_results_parse(path, buf, n, out, &torn_at, err);
    if (!st && torn_at < n) {
        int line = 1;
        for (size_t i = 0; i < torn_at; i++) line += buf[i] == '\n';
        char eb[128];
        if (!repair)
            st = lp_fail(err, LOUPE_ERR_FORMAT,
                         "%s:%d: last line is incomplete (a run was killed while writing it); --resume repairs it", path,
                         line);
        else if (truncate(path, (off_t)torn_at) != 0)
            st = lp_fail(err, LOUPE_ERR_IO, "%s: cannot cut the incomplete last line: %s", path,
                         lp_strerror(errno, eb, sizeof eb));
        else
            LP_LOG_WARN("%s:%d: dropped an incomplete last line (%zu bytes) left by a killed run", path, line,
                        n - torn_at);
        if (st) lp_results_free(out);
    }
    free(buf);
    return st;
}

loupe_status lp_results_concat(lp_results *into, lp_results *more, lp_error *err) {
    if (!more->n) return LOUPE_OK;
    lp_eval_record *r = realloc(into->rec, (into->n + more->n) * sizeof *r);
    if (!r) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory merging results");
    memcpy(r + into->n, more->rec, more->n * sizeof *r);
    into->rec = r;
    into->n += more->n;
    free(more->rec);
    more->rec = NULL;
    more->n = 0;
    return LOUPE_OK;
}

/* ---- report ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

typedef struct last_of {
    const char *id;
    size_t index;
} last_of;

static int cmp_last(const void *a, const void *b) {
    const last_of *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    if (c) return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

static lp_eval_group *group_find(lp_eval_report *rep, size_t *cap, const char *axis, const char *key) {
    for (size_t i = 0; i < rep->n_groups; i++)
        if (rep->groups[i].axis == axis && !strcmp(rep->groups[i].key, key)) return &rep->groups[i];
    if (rep->n_groups == *cap) {
        size_t nc = *cap ? *cap * 2 : 32;
        lp_eval_group *g = realloc(rep->groups, nc * sizeof *g);
        if (!g) return NULL;
        rep->groups = g;
        *cap = nc;
    }
    lp_eval_group *g = &rep->groups[rep->n_groups];
    memset(g, 0, sizeof *g);
    g->axis = axis;
    g->key = strdup(key);
    if (!g->key) return NULL;
    rep->n_groups++;
    return g;
}

static int cmp_group(const void *a, const void *b) {
    const lp_eval_group *x = a, *y = b;
    int c = strcmp(x->axis, y->axis);
    return c ? c : strcmp(x->key, y->key);
}

static const char *const AXES[] = {"split", "kind", "category"};

static int cmp_size(const void *a, const void *b) {
    const size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

loupe_status lp_results_latest(const lp_results *res, size_t **idx, size_t *n, lp_error *err) {
    *idx = NULL;
    *n = 0;
    last_of *lo = malloc((res->n ? res->n : 1) * sizeof *lo);
    size_t *out = malloc((res->n ? res->n : 1) * sizeof *out);
    if (!lo || !out) {
        free(lo);
        free(out);
        return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory indexing results");
    }
    for (size_t i = 0; i < res->n; i++) lo[i] = (last_of){res->rec[i].id, i};
    qsort(lo, res->n, sizeof *lo, cmp_last);
    size_t k = 0;
    for (size_t i = 0; i < res->n; i++)
        if (i + 1 == res->n || strcmp(lo[i].id, lo[i + 1].id)) out[k++] = lo[i].index; /* a later record wins */
    free(lo);
    qsort(out, k, sizeof *out, cmp_size);
    *idx = out;
    *n = k;
    return LOUPE_OK;
}

int lp_id_in(const char *id, const char *const *ids, size_t n) {
    return n && bsearch(&id, ids, n, sizeof *ids, cmp_str) != NULL;
}

void lp_ids_sort(const char **ids, size_t n) {
    if (n) qsort(ids, n, sizeof *ids, cmp_str);
}

loupe_status lp_eval_report_build(const lp_results *res, const char *const *only, size_t n_only, lp_eval_report *rep,
                                  lp_error *err) {
    memset(rep, 0, sizeof *rep);
    size_t *idx, n;
    loupe_status st = lp_results_latest(res, &idx, &n, err);
    if (st) return st;
    size_t cap = 0;
    int seen = 0;
    for (size_t i = 0; i < n && !st; i++) {
        const lp_eval_record *r = &res->rec[idx[i]];
        if (only && !lp_id_in(r->id, only, n_only)) continue;
        if (seen && r->refer != rep->refer) {
            st = lp_fail(err, LOUPE_ERR_INVALID_ARG,
                         "the results mix grounding and referring records (id %s); report them apart", r->id);
            break;
        }
        rep->refer = r->refer;
        seen = 1;
        if (r->error[0]) {
            rep->errors++;
            continue;
        }
        const int ok = lp_eval_record_correct(r);
        rep->n++;
        rep->correct += ok;
        rep->exact += r->refer && r->exact;
        rep->iou_sum += r->iou;
        rep->no_box += !r->refer && !r->has_pred;
        const char *keys[3] = {r->split, r->kind, r->category};
        for (int a = 0; a < 3; a++) {
            if (!keys[a][0]) continue;
            lp_eval_group *g = group_find(rep, &cap, AXES[a], keys[a]);
            if (!g) {
                st = lp_fail(err, LOUPE_ERR_NOMEM, "out of memory building the report");
                break;
            }
            g->n++;
            g->correct += ok;
            g->iou_sum += r->iou;
            g->exact += r->refer && r->exact;
        }
    }
    free(idx);
    if (st) {
        lp_eval_report_free(rep);
        return st;
    }
    if (rep->n_groups) qsort(rep->groups, rep->n_groups, sizeof *rep->groups, cmp_group);
    return LOUPE_OK;
}

void lp_eval_report_free(lp_eval_report *rep) {
    if (!rep) return;
    for (size_t i = 0; i < rep->n_groups; i++) free(rep->groups[i].key);
    free(rep->groups);
    memset(rep, 0, sizeof *rep);
}

static double pct(long a, long b) { return b ? 100.0 * (double)a / (double)b : 0.0; }

/* One table row: grounding "Acc@0.5  mean IoU", referring "named  exact". */
static void row(FILE *out, const lp_eval_report *rep, const char *axis, const char *key, long n, long correct,
                double iou_sum, long exact) {
    if (rep->refer)
        fprintf(out, "%-10s %-22.22s %8ld %8.2f%% %8.2f%%\n", axis, key, n, pct(correct, n), pct(exact, n));
    else
        fprintf(out, "%-10s %-22.22s %8ld %8.2f%% %9.4f\n", axis, key, n, pct(correct, n),
                n ? iou_sum / (double)n : 0.0);
}

void lp_eval_report_print(const lp_eval_report *rep, FILE *out) {
    if (rep->refer) fprintf(out, "%-10s %-22s %8s %9s %9s\n", "", "", "samples", "named", "exact");
    else fprintf(out, "%-10s %-22s %8s %9s %9s\n", "", "", "samples", "Acc@0.5", "mean IoU");
    row(out, rep, "overall", "", rep->n, rep->correct, rep->iou_sum, rep->exact);
    for (size_t a = 0; a < sizeof AXES / sizeof AXES[0]; a++) {
        int first = 1;
        for (size_t i = 0; i < rep->n_groups; i++) {
            const lp_eval_group *g = &rep->groups[i];
            if (strcmp(g->axis, AXES[a])) continue;
            row(out, rep, first ? AXES[a] : "", g->key, g->n, g->correct, g->iou_sum, g->exact);
            first = 0;
        }
    }
    if (rep->refer)
        fprintf(out, "named: the answer names the region's category; exact: it is the expected answer "
                     "(colour and category)\n");
    if (rep->no_box) fprintf(out, "%ld answers had no parsable box (counted as misses)\n", rep->no_box);
    if (rep->errors) fprintf(out, "%ld samples failed to run (not counted; `--resume` retries them)\n", rep->errors);
}

static cJSON *group_json(const lp_eval_report *rep, long n, long correct, double iou_sum, long exact) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "samples", (double)n);
    cJSON_AddNumberToObject(o, "correct", (double)correct);
    cJSON_AddNumberToObject(o, "acc", n ? round(1e6 * (double)correct / (double)n) / 1e6 : 0.0);
    if (rep->refer) cJSON_AddNumberToObject(o, "exact", n ? round(1e6 * (double)exact / (double)n) / 1e6 : 0.0);
    else cJSON_AddNumberToObject(o, "mean_iou", n ? round(1e6 * iou_sum / (double)n) / 1e6 : 0.0);
    return o;
}

char *lp_eval_report_json(const lp_eval_report *rep, const char *meta) {
    cJSON *o = meta ? cJSON_Parse(meta) : cJSON_CreateObject();
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return NULL;
    }
    if (rep->refer) {
        cJSON_AddStringToObject(o, "task", "refer");
    } else {
        cJSON_AddStringToObject(o, "task", "ground");
        cJSON_AddNumberToObject(o, "iou_threshold", LP_EVAL_IOU_THRESHOLD);
    }
    cJSON_AddItemToObject(o, "overall", group_json(rep, rep->n, rep->correct, rep->iou_sum, rep->exact));
    if (!rep->refer) cJSON_AddNumberToObject(o, "no_box", (double)rep->no_box);
    cJSON_AddNumberToObject(o, "errors", (double)rep->errors);
    for (size_t a = 0; a < sizeof AXES / sizeof AXES[0]; a++) {
        cJSON *ax = cJSON_CreateObject();
        for (size_t i = 0; ax && i < rep->n_groups; i++) {
            const lp_eval_group *g = &rep->groups[i];
            if (!strcmp(g->axis, AXES[a])) cJSON_AddItemToObject(ax, g->key, group_json(rep, g->n, g->correct, g->iou_sum, g->exact));
        }
        cJSON_AddItemToObject(o, AXES[a], ax);
    }
    char *txt = cJSON_Print(o);
    cJSON_Delete(o);
    return txt;
}

loupe_status lp_shard_parse(const char *text, int *k, int *n, lp_error *err) {
    char *end;
    errno = 0;
    long a = strtol(text, &end, 10);
    if (end == text || *end != '/' || errno)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "--shard %s: expected K/N, e.g. 2/8", text);
    const char *q = end + 1;
    long b = strtol(q, &end, 10);
    if (end == q || *end || errno) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "--shard %s: expected K/N, e.g. 2/8", text);
    if (b < 1 || b > 1000000 || a < 1 || a > b)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "--shard %s: need 1 <= K <= N (shards are numbered from 1)", text);
    *k = (int)a;
    *n = (int)b;
    return LOUPE_OK;
}
