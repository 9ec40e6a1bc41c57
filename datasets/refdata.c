/* datasets/refdata.c — the four dataset layouts of refdata.h -> lp_ref lists.
 *
 * JSON is parsed by cJSON (Debian's libcjson). A syntax error is reported
 * with its line and column; a record that is missing a field or has one of
 * the wrong type is reported with its key path. Nothing is guessed: a box
 * with a non-positive width, a non-finite number or a dangling id is an
 * error naming the record. */
#include "refdata.h"

#include <cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/fileio.h"

/* Datasets above this are refused (RefCOCO's instances.json is ~100 MB). */
#define LP_REFDATA_MAX_FILE ((size_t)1 << 31)

/* ---- growable list ---- */

static loupe_status push(lp_refset *s, size_t *cap, lp_ref **slot, const char *path, lp_error *err) {
    if (s->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        lp_ref *r = realloc(s->refs, nc * sizeof *r);
        if (!r) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory at record %zu", path, s->n);
        s->refs = r;
        *cap = nc;
    }
    *slot = &s->refs[s->n++];
    memset(*slot, 0, sizeof **slot);
    return LOUPE_OK;
}

static char *dup_or_empty(const char *s) {
    char *d = strdup(s ? s : "");
    return d;
}

static loupe_status fill(lp_ref *r, const char *id, const char *image, const char *expr, const double bbox[4],
                         const char *split, const char *category, const char *kind, int w, int h, const char *path,
                         lp_error *err) {
    r->id = dup_or_empty(id);
    r->image = dup_or_empty(image);
    r->expr = dup_or_empty(expr);
    r->split = dup_or_empty(split);
    r->category = dup_or_empty(category);
    r->kind = dup_or_empty(kind);
    memcpy(r->bbox, bbox, sizeof r->bbox);
    r->width = w;
    r->height = h;
    if (!r->id || !r->image || !r->expr || !r->split || !r->category || !r->kind)
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    return LOUPE_OK;
}

void lp_refset_free(lp_refset *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) {
        lp_ref *r = &s->refs[i];
        free(r->id);
        free(r->image);
        free(r->expr);
        free(r->split);
        free(r->category);
        free(r->kind);
        free(r->answer);
        free(r->rle);
    }
    free(s->refs);
    memset(s, 0, sizeof *s);
}

/* ---- JSON helpers: every failure names file + key path ---- */

static loupe_status parse_json(const char *path, const char *text, size_t len, cJSON **out, lp_error *err) {
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (*out) return LOUPE_OK;
    if (!end) end = text;
    int line = 1, col = 1;
    for (const char *p = text; p < end && p < text + len; p++) {
        if (*p == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s:%d:%d: JSON syntax error", path, line, col);
}

static loupe_status load_json(const char *path, cJSON **out, lp_error *err) {
    char *buf;
    size_t n;
    loupe_status st = lp_read_file(path, LP_REFDATA_MAX_FILE, "2 GiB dataset", &buf, &n, err);
    if (st) return st;
    if (n == 0) {
        free(buf);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: empty file", path);
    }
    st = parse_json(path, buf, n, out, err);
    free(buf);
    return st;
}

static const cJSON *member(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static loupe_status want_array(const cJSON *o, const char *key, const char *path, const char *where, const cJSON **out,
                               lp_error *err) {
    *out = member(o, key);
    if (!cJSON_IsArray(*out)) return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s%s%s: missing or not an array", path, where,
                                             *where ? "." : "", key);
    return LOUPE_OK;
}

static loupe_status want_string(const cJSON *o, const char *key, const char *path, const char *where,
                                const char **out, lp_error *err) {
    const cJSON *v = member(o, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.%s: missing or not a string", path, where, key);
    *out = v->valuestring;
    return LOUPE_OK;
}

/* An id: JSON number (integral) or string, written into buf. */
static loupe_status want_id(const cJSON *o, const char *key, const char *path, const char *where, char *buf, size_t cap,
                            lp_error *err) {
    const cJSON *v = member(o, key);
    if (cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
        fabs(v->valuedouble) < 9e15) {
        snprintf(buf, cap, "%.0f", v->valuedouble);
        return LOUPE_OK;
    }
    if (cJSON_IsString(v) && v->valuestring && v->valuestring[0]) {
        snprintf(buf, cap, "%s", v->valuestring);
        return LOUPE_OK;
    }
    return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.%s: missing, or not an integer or a string", path, where, key);
}

static const char *opt_string(const cJSON *o, const char *key) {
    const cJSON *v = member(o, key);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : "";
}

static int opt_int(const cJSON *o, const char *key) {
    const cJSON *v = member(o, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0 || v->valuedouble > 1e6) return 0;
    return (int)v->valuedouble;
}

/* bbox [x, y, w, h]: four finite numbers, w > 0, h > 0. */
static loupe_status want_bbox(const cJSON *o, const char *key, const char *path, const char *where, double b[4],
                              lp_error *err) {
    const cJSON *v = member(o, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 4)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.%s: missing or not [x, y, w, h]", path, where, key);
    for (int i = 0; i < 4; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble))
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.%s[%d]: not a finite number", path, where, key, i);
        b[i] = e->valuedouble;
    }
    if (!(b[2] > 0) || !(b[3] > 0))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.%s: width and height must be positive (got %g x %g)", path,
                       where, key, b[2], b[3]);
    return LOUPE_OK;
}

/* ---- id -> index maps over a JSON array (sorted ids, binary search) ---- */

typedef struct idmap {
    char (*key)[64];
    const cJSON **val;
    size_t n;
} idmap;

static int cmp_key(const void *a, const void *b) { return strcmp((const char *)a, (const char *)b); }

static void idmap_free(idmap *m) {
    free(m->key);
    free(m->val);
    memset(m, 0, sizeof *m);
}

/* Index the entries of arr by their "id". Duplicate ids are an error. */
static loupe_status idmap_build(idmap *m, const cJSON *arr, const char *path, const char *name, lp_error *err) {
    memset(m, 0, sizeof *m);
    size_t n = (size_t)cJSON_GetArraySize(arr);
    typedef struct {
        char key[64];
        const cJSON *val;
    } pair;
    pair *p = calloc(n ? n : 1, sizeof *p);
    m->key = calloc(n ? n : 1, sizeof *m->key);
    m->val = calloc(n ? n : 1, sizeof *m->val);
    if (!p || !m->key || !m->val) {
        free(p);
        idmap_free(m);
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory indexing %s", path, name);
    }
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        char where[64];
        snprintf(where, sizeof where, "%s[%zu]", name, i);
        if (!cJSON_IsObject(e)) {
            free(p);
            idmap_free(m);
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: not an object", path, where);
        }
        loupe_status st = want_id(e, "id", path, where, p[i].key, sizeof p[i].key, err);
        if (st) {
            free(p);
            idmap_free(m);
            return st;
        }
        p[i].val = e;
        i++;
    }
    qsort(p, n, sizeof *p, cmp_key);
    for (i = 0; i < n; i++) {
        if (i && !strcmp(p[i].key, p[i - 1].key)) {
            lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: id %s appears twice", path, name, p[i].key);
            free(p);
            idmap_free(m);
            return err ? err->status : LOUPE_ERR_FORMAT;
        }
        memcpy(m->key[i], p[i].key, sizeof m->key[i]);
        m->val[i] = p[i].val;
    }
    m->n = n;
    free(p);
    return LOUPE_OK;
}

static const cJSON *idmap_get(const idmap *m, const char *key) {
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(m->key[mid], key);
        if (!c) return m->val[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static const char *category_name(const idmap *cats, const cJSON *o) {
    char id[64];
    if (!cats || want_id(o, "category_id", "", "", id, sizeof id, NULL)) return "";
    const cJSON *c = idmap_get(cats, id);
    return c ? opt_string(c, "name") : "";
}

/* The id maps of a COCO-style file: images, annotations and (when present)
 * categories. */
typedef struct coco_maps {
    idmap im, am, cm;
} coco_maps;

static void coco_maps_free(coco_maps *m) {
    idmap_free(&m->im);
    idmap_free(&m->am);
    idmap_free(&m->cm);
}

static loupe_status coco_maps_build(const cJSON *inst, const char *path, coco_maps *m, lp_error *err) {
    memset(m, 0, sizeof *m);
    const cJSON *images, *anns, *cats = member(inst, "categories");
    loupe_status st;
    if ((st = want_array(inst, "images", path, "", &images, err))) return st;
    if ((st = want_array(inst, "annotations", path, "", &anns, err))) return st;
    if ((st = idmap_build(&m->im, images, path, "images", err)) ||
        (st = idmap_build(&m->am, anns, path, "annotations", err)) ||
        (cJSON_IsArray(cats) && (st = idmap_build(&m->cm, cats, path, "categories", err))))
        coco_maps_free(m);
    return st;
}

/* ---- refer toolkit (and synth: the same in one file) ---- */

static loupe_status load_refer(const char *inst_path, const cJSON *inst, const char *refs_path, const cJSON *refs,
                               lp_refset *s, lp_error *err) {
    coco_maps maps;
    loupe_status st = coco_maps_build(inst, inst_path, &maps, err);
    if (st) return st;
    if (!cJSON_IsArray(refs)) {
        coco_maps_free(&maps);
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: refs: not a JSON array of refs", refs_path);
    }
    size_t cap = 0, k = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, refs) {
        char where[64], ref_id[64], ann_id[64], img_id[64];
        snprintf(where, sizeof where, "refs[%zu]", k++);
        const cJSON *sents, *ann, *img;
        const char *split = "", *file = "";
        double bbox[4];
        if (!cJSON_IsObject(r)) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: not an object", refs_path, where);
            break;
        }
        if ((st = want_id(r, "ref_id", refs_path, where, ref_id, sizeof ref_id, err))) break;
        if ((st = want_id(r, "ann_id", refs_path, where, ann_id, sizeof ann_id, err))) break;
        if ((st = want_id(r, "image_id", refs_path, where, img_id, sizeof img_id, err))) break;
        if ((st = want_string(r, "split", refs_path, where, &split, err))) break;
        if ((st = want_array(r, "sentences", refs_path, where, &sents, err))) break;
        if (!(ann = idmap_get(&maps.am, ann_id))) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.ann_id: %s is not in %s's annotations", refs_path, where, ann_id,
                         inst_path);
            break;
        }
        if (!(img = idmap_get(&maps.im, img_id))) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.image_id: %s is not in %s's images", refs_path, where, img_id,
                         inst_path);
            break;
        }
        char awhere[96];
        snprintf(awhere, sizeof awhere, "annotations[id %s]", ann_id);
        if ((st = want_bbox(ann, "bbox", inst_path, awhere, bbox, err))) break;
        snprintf(awhere, sizeof awhere, "images[id %s]", img_id);
        if ((st = want_string(img, "file_name", inst_path, awhere, &file, err))) break;
        const char *cat = category_name(maps.cm.n ? &maps.cm : NULL, member(r, "category_id") ? r : ann);
        const char *kind = opt_string(r, "kind");
        size_t j = 0;
        const cJSON *sn;
        cJSON_ArrayForEach(sn, sents) {
            char swhere[96], sent_id[64], id[160];
            const char *sent = "";
            snprintf(swhere, sizeof swhere, "%s.sentences[%zu]", where, j++);
            if ((st = want_id(sn, "sent_id", refs_path, swhere, sent_id, sizeof sent_id, err))) break;
            if ((st = want_string(sn, "sent", refs_path, swhere, &sent, err))) break;
            snprintf(id, sizeof id, "%s:%s", ref_id, sent_id);
            lp_ref *out;
            if ((st = push(s, &cap, &out, refs_path, err))) break;
            if ((st = fill(out, id, file, sent, bbox, split, cat, kind, opt_int(img, "width"), opt_int(img, "height"),
                           refs_path, err)))
                break;
        }
        if (st) break;
    }
    coco_maps_free(&maps);
    return st;
}

/* ---- referring samples: synth's "regions" ---- */

loupe_status lp_rle_decode(const int *counts, int n, int h, int w, unsigned char *out, lp_error *err) {
    const size_t total = (size_t)h * (size_t)w;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        if (counts[i] < 0 || (size_t)counts[i] > total - pos)
            return lp_fail(err, LOUPE_ERR_FORMAT, "mask runs cover more than the %d x %d image", w, h);
        for (size_t k = pos; k < pos + (size_t)counts[i]; k++) /* column-major run -> row-major pixels */
            out[(k % (size_t)h) * (size_t)w + k / (size_t)h] = (unsigned char)(i & 1);
        pos += (size_t)counts[i];
    }
    if (pos != total) return lp_fail(err, LOUPE_ERR_FORMAT, "mask runs cover %zu of the %zu pixels", pos, total);
    return LOUPE_OK;
}

/* mask {"size": [h, w], "counts": [...]} -> r->rle; image_w/h: the size the image states (0: none). */
static loupe_status want_rle(const cJSON *o, const char *path, const char *where, int image_w, int image_h, lp_ref *r,
                             lp_error *err) {
    const cJSON *m = member(o, "mask"), *size = member(m, "size"), *counts = member(m, "counts");
    if (!cJSON_IsObject(m) || !cJSON_IsArray(size) || cJSON_GetArraySize(size) != 2 || !cJSON_IsArray(counts))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.mask: not {\"size\": [h, w], \"counts\": [...]}", path, where);
    const double h = cJSON_GetArrayItem(size, 0)->valuedouble, w = cJSON_GetArrayItem(size, 1)->valuedouble;
    if (!(h >= 1 && h <= 16384 && w >= 1 && w <= 16384) || h != floor(h) || w != floor(w))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.mask.size: not two integers in 1..16384", path, where);
    if ((image_w && (int)w != image_w) || (image_h && (int)h != image_h))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.mask.size: %gx%g, but the image is %dx%d", path, where, w, h,
                       image_w, image_h);
    const int n = cJSON_GetArraySize(counts);
    r->rle = malloc((n ? (size_t)n : 1) * sizeof *r->rle);
    if (!r->rle) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    double sum = 0;
    int i = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, counts) {
        if (!cJSON_IsNumber(c) || !(c->valuedouble >= 0) || c->valuedouble != floor(c->valuedouble) ||
            c->valuedouble > h * w)
            return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.mask.counts[%d]: not a run length (an integer >= 0)", path,
                           where, i);
        r->rle[i++] = (int)c->valuedouble;
        sum += c->valuedouble;
    }
    if (sum != h * w)
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.mask.counts: the runs cover %.0f pixels, the %gx%g mask has %.0f",
                       path, where, sum, w, h, h * w);
    r->n_rle = n;
    r->rle_w = (int)w;
    r->rle_h = (int)h;
    return LOUPE_OK;
}

static loupe_status load_regions(const char *path, const cJSON *root, lp_refset *s, lp_error *err) {
    if (!cJSON_IsObject(root))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a JSON object (expected loupe synth's annotations.json)", path);
    const cJSON *regions = member(root, "regions");
    if (!cJSON_IsArray(regions))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: no \"regions\" array: referring samples come from loupe synth's "
                       "annotations.json", path);
    coco_maps maps;
    loupe_status st = coco_maps_build(root, path, &maps, err);
    if (st) return st;
    size_t cap = 0, k = 0;
    const cJSON *g;
    cJSON_ArrayForEach(g, regions) {
        char where[64], rid[64], ann_id[64], img_id[64], id[80];
        snprintf(where, sizeof where, "regions[%zu]", k++);
        const char *question = "", *answer = "", *file = "";
        const cJSON *ann, *img;
        double bbox[4];
        if (!cJSON_IsObject(g)) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s: not an object", path, where);
            break;
        }
        if ((st = want_id(g, "region_id", path, where, rid, sizeof rid, err))) break;
        if ((st = want_id(g, "ann_id", path, where, ann_id, sizeof ann_id, err))) break;
        if ((st = want_id(g, "image_id", path, where, img_id, sizeof img_id, err))) break;
        if ((st = want_bbox(g, "bbox", path, where, bbox, err))) break;
        if ((st = want_string(g, "question", path, where, &question, err))) break;
        if ((st = want_string(g, "answer", path, where, &answer, err))) break;
        if (!(ann = idmap_get(&maps.am, ann_id))) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.ann_id: %s is not in the annotations", path, where, ann_id);
            break;
        }
        if (!(img = idmap_get(&maps.im, img_id))) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s.image_id: %s is not in the images", path, where, img_id);
            break;
        }
        char iwhere[96];
        snprintf(iwhere, sizeof iwhere, "images[id %s]", img_id);
        if ((st = want_string(img, "file_name", path, iwhere, &file, err))) break;
        const char *cat = category_name(maps.cm.n ? &maps.cm : NULL, ann);
        const int w = opt_int(img, "width"), h = opt_int(img, "height");
        static const char *const kinds[2] = {"box", "mask"};
        for (int as_mask = 0; as_mask <= (member(g, "mask") != NULL) && !st; as_mask++) {
            lp_ref *out;
            snprintf(id, sizeof id, "%s:%s", rid, kinds[as_mask]);
            if ((st = push(s, &cap, &out, path, err))) break;
            if ((st = fill(out, id, file, question, bbox, opt_string(g, "split"), cat, kinds[as_mask], w, h, path, err)))
                break;
            if (!(out->answer = strdup(answer))) st = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
            else if (as_mask) st = want_rle(g, path, where, w, h, out, err);
        }
        if (st) break;
    }
    coco_maps_free(&maps);
    return st;
}

/* ---- MDETR ---- */

/* The first annotation of each image_id: sorted by (image_id, position). */
typedef struct first_ann {
    char key[64];
    const cJSON *ann;
    size_t index;
} first_ann;

static int cmp_first(const void *a, const void *b) {
    const first_ann *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

void lp_refset_split_from_name(const char *path, char *out, size_t cap) {
    if (!cap) return;
    out[0] = '\0';
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    const char *us = NULL;
    for (const char *p = base; p < (dot ? dot : base + strlen(base)); p++)
        if (*p == '_') us = p;
    if (!us || !dot || dot <= us + 1) return;
    static const char *known[] = {"train", "val", "test", "testA", "testB"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        size_t n = strlen(known[i]);
        if ((size_t)(dot - us - 1) == n && !strncmp(us + 1, known[i], n)) {
            snprintf(out, cap, "%s", known[i]);
            return;
        }
    }
}

static loupe_status load_mdetr(const char *path, const cJSON *root, lp_refset *s, lp_error *err) {
    const cJSON *images, *anns, *cats_arr = member(root, "categories");
    loupe_status st;
    if ((st = want_array(root, "images", path, "", &images, err))) return st;
    if ((st = want_array(root, "annotations", path, "", &anns, err))) return st;
    idmap cm = {0};
    if (cJSON_IsArray(cats_arr) && (st = idmap_build(&cm, cats_arr, path, "categories", err))) return st;
    size_t na = (size_t)cJSON_GetArraySize(anns);
    first_ann *f = calloc(na ? na : 1, sizeof *f);
    if (!f) {
        idmap_free(&cm);
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t i = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, anns) {
        char where[64];
        snprintf(where, sizeof where, "annotations[%zu]", i);
        if ((st = want_id(a, "image_id", path, where, f[i].key, sizeof f[i].key, err))) break;
        f[i].ann = a;
        f[i].index = i;
        i++;
    }
    if (!st) qsort(f, na, sizeof *f, cmp_first);
    char split[16];
    lp_refset_split_from_name(path, split, sizeof split);
    size_t cap = 0;
    i = 0;
    const cJSON *img;
    if (!st) cJSON_ArrayForEach(img, images) {
        char where[64], id[64];
        const char *file = "", *caption = "";
        snprintf(where, sizeof where, "images[%zu]", i++);
        if ((st = want_id(img, "id", path, where, id, sizeof id, err))) break;
        if ((st = want_string(img, "file_name", path, where, &file, err))) break;
        if ((st = want_string(img, "caption", path, where, &caption, err))) break;
        /* binary search for the first annotation with image_id == id */
        size_t lo = 0, hi = na;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (strcmp(f[mid].key, id) < 0) lo = mid + 1;
            else hi = mid;
        }
        if (lo >= na || strcmp(f[lo].key, id)) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: %s (id %s): no annotation has this image_id", path, where, id);
            break;
        }
        double bbox[4];
        char awhere[64];
        snprintf(awhere, sizeof awhere, "annotations[%zu]", f[lo].index);
        if ((st = want_bbox(f[lo].ann, "bbox", path, awhere, bbox, err))) break;
        lp_ref *out;
        if ((st = push(s, &cap, &out, path, err))) break;
        if ((st = fill(out, id, file, caption, bbox, split, category_name(cm.n ? &cm : NULL, f[lo].ann), "",
                       opt_int(img, "width"), opt_int(img, "height"), path, err)))
            break;
    }
    free(f);
    idmap_free(&cm);
    return st;
}

/* ---- JSONL ---- */

static loupe_status parse_jsonl(const char *path, const char *buf, size_t n, lp_refset *s, lp_error *err) {
    loupe_status st = LOUPE_OK;
    size_t cap = 0;
    int line = 0;
    const char *p = buf;
    while (!st && p < buf + n) {
        const char *nl = memchr(p, '\n', (size_t)(buf + n - p));
        const char *end = nl ? nl : buf + n;
        line++;
        const char *q = p;
        while (q < end && isspace((unsigned char)*q)) q++;
        if (q == end) { /* blank line */
            p = end + 1;
            continue;
        }
        const char *pe = NULL;
        cJSON *o = cJSON_ParseWithLengthOpts(p, (size_t)(end - p), &pe, 0);
        char where[32];
        snprintf(where, sizeof where, "line %d", line);
        if (!o) {
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s:%d: not a JSON object (syntax error at column %d)", path, line,
                         pe ? (int)(pe - p) + 1 : 1);
            break;
        }
        const char *image = "", *expr = "";
        double bbox[4];
        char id[64];
        if (!cJSON_IsObject(o)) st = lp_fail(err, LOUPE_ERR_FORMAT, "%s:%d: not a JSON object", path, line);
        if (!st && (st = want_string(o, "image", path, where, &image, err))) {
        } else if (!st && (st = want_string(o, "expression", path, where, &expr, err))) {
        } else if (!st && (st = want_bbox(o, "bbox", path, where, bbox, err))) {
        } else if (!st) {
            if (member(o, "id")) st = want_id(o, "id", path, where, id, sizeof id, err);
            else snprintf(id, sizeof id, "line%d", line);
            lp_ref *out;
            if (!st) st = push(s, &cap, &out, path, err);
            if (!st)
                st = fill(out, id, image, expr, bbox, opt_string(o, "split"), opt_string(o, "category"),
                          opt_string(o, "kind"), opt_int(o, "width"), opt_int(o, "height"), path, err);
        }
        cJSON_Delete(o);
        p = end + 1;
    }
    return st;
}

static loupe_status load_jsonl(const char *path, lp_refset *s, lp_error *err) {
    char *buf;
    size_t n;
    loupe_status st = lp_read_file(path, LP_REFDATA_MAX_FILE, "2 GiB dataset", &buf, &n, err);
    if (st) return st;
    st = parse_jsonl(path, buf, n, s, err);
    free(buf);
    return st;
}

loupe_status lp_refset_select(const lp_refset *set, const char *split, long limit, int k, int n, size_t **idx,
                              size_t *n_idx, size_t *n_split, lp_error *err) {
    *idx = NULL;
    *n_idx = *n_split = 0;
    if (n < 1 || k < 1 || k > n) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "shard %d/%d: need 1 <= K <= N", k, n);
    size_t *out = malloc((set->n ? set->n : 1) * sizeof *out);
    if (!out) return lp_fail(err, LOUPE_ERR_NOMEM, "out of memory selecting samples");
    size_t m = 0, seen = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (split && strcmp(set->refs[i].split, split)) continue;
        if (limit >= 0 && (long)seen >= limit) break;
        if (seen % (size_t)n == (size_t)(k - 1)) out[m++] = i;
        seen++;
    }
    if (!m) {
        free(out);
        out = NULL;
    }
    *idx = out;
    *n_idx = m;
    *n_split = seen;
    return LOUPE_OK;
}

/* ---- entry point ---- */

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int cmp_id(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static loupe_status check_unique(const char *path, lp_refset *s, lp_error *err) {
    char **ids = malloc((s->n ? s->n : 1) * sizeof *ids);
    if (!ids) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < s->n; i++) ids[i] = s->refs[i].id;
    qsort(ids, s->n, sizeof *ids, cmp_id);
    loupe_status st = LOUPE_OK;
    for (size_t i = 1; i < s->n && !st; i++)
        if (!strcmp(ids[i], ids[i - 1]))
            st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: sample id \"%s\" appears twice", path, ids[i]);
    free(ids);
    return st;
}

/* A parsed JSON dataset (root) with optional refs -> out, by layout. */
static loupe_status from_json(const char *path, const cJSON *root, const char *refs_path, const cJSON *refs,
                              lp_refset *out, lp_error *err) {
    if (!cJSON_IsObject(root))
        return lp_fail(err, LOUPE_ERR_FORMAT, "%s: not a JSON object (a COCO-style dataset has images and annotations)",
                       path);
    const cJSON *own_refs = member(root, "refs");
    const cJSON *img0 = cJSON_GetArrayItem(member(root, "images"), 0);
    if (refs) {
        out->format = "refer";
        return load_refer(path, root, refs_path, refs, out, err);
    }
    if (cJSON_IsArray(own_refs)) {
        out->format = "synth";
        return load_refer(path, root, path, own_refs, out, err);
    }
    if (img0 && member(img0, "caption")) {
        out->format = "mdetr";
        return load_mdetr(path, root, out, err);
    }
    return lp_fail(err, LOUPE_ERR_FORMAT,
                   "%s: not a grounding dataset loupe knows: expected MDETR's JSON (images with \"caption\"), loupe "
                   "synth's (with \"refs\"), COCO instances.json plus --refs REFS.json, or .jsonl",
                   path);
}

static loupe_status finish(const char *path, lp_refset *out, loupe_status st, lp_error *err) {
    if (!st && out->n == 0) st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: no referring expressions in the file", path);
    if (!st) st = check_unique(path, out, err);
    if (st) {
        const char *f = out->format;
        lp_refset_free(out);
        out->format = f;
    }
    return st;
}

loupe_status lp_refset_load_mem(const char *name, const char *text, size_t len, lp_refset *out, lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_mem: no output");
    memset(out, 0, sizeof *out);
    if (!name || !text) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_mem: no name or text");
    loupe_status st;
    if (ends_with(name, ".jsonl")) {
        out->format = "jsonl";
        st = parse_jsonl(name, text, len, out, err);
    } else {
        cJSON *root = NULL;
        st = len ? parse_json(name, text, len, &root, err) : lp_fail(err, LOUPE_ERR_FORMAT, "%s: empty file", name);
        if (!st) st = from_json(name, root, NULL, NULL, out, err);
        cJSON_Delete(root);
    }
    return finish(name, out, st, err);
}

loupe_status lp_refset_load(const char *path, const char *refs_path, lp_refset *out, lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load: no output");
    memset(out, 0, sizeof *out);
    if (!path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load: no dataset path");
    loupe_status st;
    if (!refs_path && ends_with(path, ".jsonl")) {
        out->format = "jsonl";
        st = load_jsonl(path, out, err);
    } else {
        cJSON *root = NULL, *refs = NULL;
        st = load_json(path, &root, err);
        if (!st && refs_path) st = load_json(refs_path, &refs, err);
        if (!st) st = from_json(path, root, refs_path, refs, out, err);
        cJSON_Delete(root);
        cJSON_Delete(refs);
    }
    return finish(refs_path ? refs_path : path, out, st, err);
}

/* A parsed regions file (or its JSON syntax error) -> out. */
static loupe_status regions_finish(const char *path, cJSON *root, loupe_status st, lp_refset *out, lp_error *err) {
    if (!st) st = load_regions(path, root, out, err);
    cJSON_Delete(root);
    if (!st && out->n == 0) st = lp_fail(err, LOUPE_ERR_FORMAT, "%s: no regions in the file", path);
    return finish(path, out, st, err);
}

loupe_status lp_refset_load_regions(const char *path, lp_refset *out, lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_regions: no output");
    memset(out, 0, sizeof *out);
    if (!path) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_regions: no dataset path");
    out->format = "synth regions";
    cJSON *root = NULL;
    loupe_status st = load_json(path, &root, err);
    return regions_finish(path, root, st, out, err);
}

loupe_status lp_refset_load_regions_mem(const char *name, const char *text, size_t len, lp_refset *out,
                                        lp_error *err) {
    if (!out) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_regions_mem: no output");
    memset(out, 0, sizeof *out);
    if (!name || !text) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_refset_load_regions_mem: no name or text");
    out->format = "synth regions";
    cJSON *root = NULL;
    loupe_status st = len ? parse_json(name, text, len, &root, err) : lp_fail(err, LOUPE_ERR_FORMAT, "%s: empty file", name);
    return regions_finish(name, root, st, out, err);
}
