/* datasets/refdata.h — referring-expression datasets for grounding
 * evaluation, in the four layouts people have:
 *
 *   mdetr   MDETR's preprocessed COCO JSON (final_refcoco_val.json, what
 *           Ferret and Kosmos-2 evaluate on): one "images" entry per
 *           expression (caption, file_name, width, height, id) and its box in
 *           "annotations" (image_id = that id, bbox [x, y, w, h]). The split
 *           comes from the file name (final_<set>_<split>.json).
 *   refer   the refer toolkit: COCO instances.json plus the refs exported to
 *           JSON (a list of {ref_id, ann_id, image_id, split, sentences
 *           [{sent_id, sent}], category_id}); one sample per sentence.
 *   synth   `loupe synth`'s annotations.json: the refer layout in one file
 *           ("refs" next to "images" and "annotations"), refs carry "kind".
 *   jsonl   one JSON object per line: {"image", "expression", "bbox" [x, y,
 *           w, h], optional "split", "kind", "category", "id"}.
 *
 * Referring samples (a region given, its object to be named) come from the
 * "regions" of synth's annotations.json: lp_refset_load_regions.
 *
 * Every record becomes an lp_ref. Malformed records are refused with the file
 * and the line (jsonl, JSON syntax errors) or the key path
 * ("annotations[12].bbox") and the reason. Sample ids are unique (checked):
 * they key the results file that makes `loupe eval --resume` work. */
#ifndef LOUPE_DATASETS_REFDATA_H
#define LOUPE_DATASETS_REFDATA_H

#include <stddef.h>

#include "../core/error.h"

typedef struct lp_ref {
    char *id;        /* unique and stable: "<ref_id>:<sent_id>", the MDETR entry id, the jsonl id or "line<N>" */
    char *image;     /* image path as the dataset gives it (joined with --images by the caller) */
    char *expr;      /* the referring expression */
    double bbox[4];  /* ground truth x, y, w, h in pixels of the original image */
    char *split;     /* "" when unknown */
    char *category;  /* "" when unknown */
    char *kind;      /* expression kind ("color", "ordinal", ...), "" when unknown */
    int width, height; /* image size the dataset states, 0 when it states none */
    /* referring samples only (lp_refset_load_regions); NULL / 0 otherwise: */
    char *answer;    /* the expected answer, e.g. "a blue tv" */
    int *rle;        // (n_rle) the region as a mask: COCO uncompressed RLE, NULL for a box region
    int n_rle, rle_w, rle_h;
} lp_ref;

typedef struct lp_refset {
    lp_ref *refs;        // (n)
    size_t n;
    const char *format;  /* "mdetr", "refer", "synth" or "jsonl" */
} lp_refset;

/* Load `path` (and `refs_path` for the refer layout: path is then COCO
 * instances.json; NULL otherwise). The layout is recognised from the
 * content: .jsonl by its extension, JSON objects by their keys. */
loupe_status lp_refset_load(const char *path, const char *refs_path, lp_refset *out, lp_error *err);
/* The same from memory (fuzzing, tests): `name` stands for the file in
 * messages and decides jsonl (".jsonl") or JSON; no refer layout. */
loupe_status lp_refset_load_mem(const char *name, const char *text, size_t len, lp_refset *out, lp_error *err);
void lp_refset_free(lp_refset *set);

/* Referring samples from `loupe synth`'s annotations.json: each entry of
 * "regions" ({region_id, ann_id, image_id, bbox, mask, question, answer,
 * split}) gives two samples, the region as its box (id "<region_id>:box",
 * kind "box") and as its mask ("<region_id>:mask", kind "mask"; only when
 * it has one). expr is the question (its "<region>" stands for the region),
 * category the annotation's category name, answer the expected answer.
 * The mask's RLE is checked here (runs >= 0 summing to h*w, the size the
 * image states). */
loupe_status lp_refset_load_regions(const char *path, lp_refset *out, lp_error *err);
/* The same from memory (fuzzing); `name` stands for the file in messages. */
loupe_status lp_refset_load_regions_mem(const char *name, const char *text, size_t len, lp_refset *out,
                                        lp_error *err);

/* COCO uncompressed RLE (column-major runs over an h × w image, the first a
 * run of 0s) -> out (h * w bytes, row-major, 1 inside, 0 outside).
 * LOUPE_ERR_FORMAT when the runs do not cover exactly h * w pixels. */
loupe_status lp_rle_decode(const int *counts, int n, int h, int w, unsigned char *out, lp_error *err);

/* The samples an evaluation takes, as indices into set->refs in dataset
 * order: those of `split` (NULL: all), then the first `limit` of them
 * (< 0: all), then shard k of n (1-based): the i-th remaining sample is
 * kept when i % n == k - 1, so the n shards partition the selection.
 * *idx is malloc'd (NULL when *n_idx is 0); *n_split is the count before
 * sharding. */
loupe_status lp_refset_select(const lp_refset *set, const char *split, long limit, int k, int n, size_t **idx,
                              size_t *n_idx, size_t *n_split, lp_error *err);

/* Split name from an MDETR file name: final_refcoco_val.json -> "val",
 * final_refcocog_test.json -> "test"; "" when the name has no such suffix.
 * Writes at most cap bytes (NUL included). */
void lp_refset_split_from_name(const char *path, char *out, size_t cap);

#endif
