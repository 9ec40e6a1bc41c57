/* datasets/synth_io.c — writing a synthetic dataset: DIR/images/<id>.png and
 * DIR/annotations.json, COCO/RefCOCO-style, the format `loupe eval` reads.
 *
 *   info        generator, seed, size, split rule, mask format
 *   images      {id, file_name "images/000001.png", width, height}
 *   categories  {id 1..12, name}
 *   annotations {id, image_id, category_id, bbox [x,y,w,h] tight around the
 *                visible pixels, area (visible pixels), full_area (pixels
 *                if unoccluded), color, style, visible_fraction (4 decimals),
 *                support_id (annotation it stands on, or null), iscrowd 0}
 *   refs        {ref_id, ann_id, image_id, category_id, split, kind,
 *                anchor_ann_id (relpos only), sentences [{sent_id, sent, raw,
 *                tokens}]}: the sentences of one ref are paraphrases
 *   regions     {region_id, ann_id, image_id, bbox, mask, question, answer,
 *                split}: mask is COCO uncompressed RLE {"size": [h, w],
 *                "counts": [...]} (column-major runs, starting with a run of
 *                0s) of the object's visible pixels; the question's
 *                "<region>" stands for the region given by bbox and mask
 *
 * Split: every record gets params->split ("train" by default); the name
 * "auto" assigns by image index instead: index % 10 in 0..7 train, 8 val,
 * 9 test.
 *
 * The four arrays are streamed to temporary files while the scenes are made
 * and joined at the end, so memory stays flat for any n. The JSON goes to a
 * temporary name and is renamed into place. */
#include "scene.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static loupe_status make_dir(const char *path, lp_error *err) {
    if (mkdir(path, 0777) == 0) return LOUPE_OK;
    int e = errno;
    struct stat st;
    if (e == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return LOUPE_OK;
    if (e == EEXIST) return lp_fail(err, LOUPE_ERR_IO, "%s: exists and is not a directory", path);
    return lp_fail(err, LOUPE_ERR_IO, "%s: cannot create directory: %s", path, strerror(e));
}

static const char *split_of(const lp_scene_params *p, int index) {
    const char *s = p->split && p->split[0] ? p->split : "train";
    if (strcmp(s, "auto")) return s;
    int k = index % 10;
    return k < 8 ? "train" : k == 8 ? "val" : "test";
}

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* Write one record as a line of its section; 0 on success. */
static int emit(FILE *f, int *first, cJSON *item) {
    if (!item) return -1;
    char *txt = cJSON_PrintUnformatted(item);
    cJSON_Delete(item);
    if (!txt) return -1;
    int rc = fprintf(f, "%s%s", *first ? "" : ",\n", txt) < 0 ? -1 : 0;
    *first = 0;
    cJSON_free(txt);
    return rc;
}

static int copy_section(FILE *out, FILE *in) {
    char buf[65536];
    size_t k;
    if (fflush(in) != 0 || fseek(in, 0, SEEK_SET) != 0) return -1;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, k, out) != k) return -1;
    return ferror(in) ? -1 : 0;
}

/* Emit one scene's records. ids: first annotation, ref, sentence, region id
 * (advanced here). */
static int emit_scene(const lp_scene *s, int image_id, const char *split, FILE *sec[4], int first[4], int next[4],
                      int *rle, lp_synth_stats *st) {
    char name[64];
    snprintf(name, sizeof name, "images/%06d.png", image_id);
    cJSON *im = cJSON_CreateObject();
    cJSON_AddNumberToObject(im, "id", image_id);
    cJSON_AddStringToObject(im, "file_name", name);
    cJSON_AddNumberToObject(im, "width", s->w);
    cJSON_AddNumberToObject(im, "height", s->h);
    if (emit(sec[0], &first[0], im)) return -1;
    st->images++;

    int ann0 = next[0];
    for (int i = 0; i < s->n_obj; i++) {
        const lp_scene_object *o = &s->obj[i];
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", ann0 + i);
        cJSON_AddNumberToObject(a, "image_id", image_id);
        cJSON_AddNumberToObject(a, "category_id", o->cat + 1);
        cJSON_AddItemToObject(a, "bbox", int_array(o->bbox, 4));
        cJSON_AddNumberToObject(a, "area", o->area);
        cJSON_AddNumberToObject(a, "full_area", o->full_area);
        cJSON_AddStringToObject(a, "color", lp_scene_color_name(o->color));
        cJSON_AddStringToObject(a, "style", lp_scene_style_name(o->cat, o->style));
        /* rounded in integers so the text is the same everywhere */
        long long vf = o->full_area ? ((long long)o->area * 10000 + o->full_area / 2) / o->full_area : 0;
        cJSON_AddNumberToObject(a, "visible_fraction", (double)vf / 10000.0);
        if (o->support >= 0) cJSON_AddNumberToObject(a, "support_id", ann0 + o->support);
        else cJSON_AddNullToObject(a, "support_id");
        cJSON_AddNumberToObject(a, "iscrowd", 0);
        if (emit(sec[1], &first[1], a)) return -1;
        st->annotations++;
        st->cats[o->cat]++;
    }
    next[0] += s->n_obj;

    for (int k = 0; k < s->n_expr; k++) {
        const lp_scene_expr *e = &s->expr[k];
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "ref_id", next[1]++);
        cJSON_AddNumberToObject(r, "ann_id", ann0 + e->target);
        cJSON_AddNumberToObject(r, "image_id", image_id);
        cJSON_AddNumberToObject(r, "category_id", s->obj[e->target].cat + 1);
        cJSON_AddStringToObject(r, "split", split);
        cJSON_AddStringToObject(r, "kind", lp_scene_kind_name(e->kind));
        if (e->anchor >= 0) cJSON_AddNumberToObject(r, "anchor_ann_id", ann0 + e->anchor);
        cJSON *sents = cJSON_AddArrayToObject(r, "sentences");
        for (int j = 0; j < e->n_sent; j++) {
            cJSON *so = cJSON_CreateObject();
            cJSON_AddNumberToObject(so, "sent_id", next[2]++);
            cJSON_AddStringToObject(so, "sent", e->sent[j]);
            cJSON_AddStringToObject(so, "raw", e->sent[j]);
            cJSON *tok = cJSON_AddArrayToObject(so, "tokens");
            char w[LP_SCENE_SENT_MAX];
            const char *p = e->sent[j];
            while (*p) {
                size_t n = strcspn(p, " ");
                if (n) {
                    memcpy(w, p, n);
                    w[n] = 0;
                    cJSON_AddItemToArray(tok, cJSON_CreateString(w));
                }
                p += n;
                if (*p) p++;
            }
            cJSON_AddItemToArray(sents, so);
            st->sentences++;
        }
        if (emit(sec[2], &first[2], r)) return -1;
        st->refs++;
        st->refs_by_kind[e->kind]++;
    }

    for (int i = 0; i < s->n_obj; i++) {
        const lp_scene_object *o = &s->obj[i];
        if (o->visible_fraction < 0.5 || o->area < 24) continue; /* what the expressions may refer to */
        int n = lp_scene_mask_rle(s, i, rle, s->w * s->h + 1);
        if (n < 0) return -1;
        cJSON *g = cJSON_CreateObject();
        cJSON_AddNumberToObject(g, "region_id", next[3]++);
        cJSON_AddNumberToObject(g, "ann_id", ann0 + i);
        cJSON_AddNumberToObject(g, "image_id", image_id);
        cJSON_AddItemToObject(g, "bbox", int_array(o->bbox, 4));
        cJSON *m = cJSON_AddObjectToObject(g, "mask");
        int size[2] = {s->h, s->w};
        cJSON_AddItemToObject(m, "size", int_array(size, 2));
        cJSON_AddItemToObject(m, "counts", int_array(rle, n));
        char ans[64];
        lp_scene_answer(o, ans, sizeof ans);
        cJSON_AddStringToObject(g, "question", "What is in the region <region>?");
        cJSON_AddStringToObject(g, "answer", ans);
        cJSON_AddStringToObject(g, "split", split);
        if (emit(sec[3], &first[3], g)) return -1;
        st->regions++;
    }
    return 0;
}

loupe_status lp_synth_write(const char *dir, uint64_t seed, int n, const lp_scene_params *params,
                            lp_synth_stats *stats, lp_error *err) {
    lp_scene_params def;
    lp_scene_params_default(&def);
    const lp_scene_params *p = params ? params : &def;
    lp_synth_stats local;
    lp_synth_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    if (!dir || !dir[0]) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_synth_write: no output directory");
    if (n < 0) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_synth_write: negative scene count %d", n);
    if (p->width < 64 || p->height < 64 || p->width > 2048 || p->height > 2048)
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "scene size %dx%d out of range (64..2048 each)", p->width, p->height);

    loupe_status rc = make_dir(dir, err);
    if (rc) return rc;
    size_t dl = strlen(dir);
    char *path = malloc(dl + 64), *tmp = malloc(dl + 64);
    int *rle = malloc(((size_t)p->width * p->height + 1) * sizeof *rle);
    FILE *sec[4] = {0};
    FILE *out = NULL;
    if (!path || !tmp || !rle) { rc = lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", dir); goto done; }
    snprintf(path, dl + 64, "%s/images", dir);
    if ((rc = make_dir(path, err))) goto done;
    for (int k = 0; k < 4; k++)
        if (!(sec[k] = tmpfile())) { rc = lp_fail(err, LOUPE_ERR_IO, "%s: cannot create a temporary file: %s", dir, strerror(errno)); goto done; }

    int first[4] = {1, 1, 1, 1}, next[4] = {1, 1, 1, 1};
    for (int i = 0; i < n; i++) {
        lp_scene s;
        lp_image img = {0};
        if ((rc = lp_scene_generate(seed, i, p, &s, err))) goto done;
        rc = lp_scene_render(&s, &img, err);
        if (!rc) {
            snprintf(path, dl + 64, "%s/images/%06d.png", dir, i + 1);
            rc = lp_image_write_png(path, &img, err);
        }
        lp_image_free(&img);
        if (!rc && emit_scene(&s, i + 1, split_of(p, i), sec, first, next, rle, st))
            rc = lp_fail(err, LOUPE_ERR_IO, "%s: writing annotations of image %d failed (disk full or out of memory)", dir, i + 1);
        lp_scene_free(&s);
        if (rc) goto done;
    }

    snprintf(path, dl + 64, "%s/annotations.json", dir);
    snprintf(tmp, dl + 64, "%s/.annotations.json.tmp", dir);
    out = fopen(tmp, "wb");
    if (!out) { rc = lp_fail(err, LOUPE_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno)); goto done; }
    {
        cJSON *info = cJSON_CreateObject();
        cJSON_AddStringToObject(info, "description", "loupe synthetic indoor scenes with referring expressions");
        cJSON_AddStringToObject(info, "generator", "loupe synth");
        cJSON_AddStringToObject(info, "version", loupe_version());
        char sb[32];
        snprintf(sb, sizeof sb, "%llu", (unsigned long long)seed);
        if (seed < (1ull << 53)) cJSON_AddNumberToObject(info, "seed", (double)seed);
        else cJSON_AddStringToObject(info, "seed", sb);
        cJSON_AddNumberToObject(info, "n", n);
        cJSON_AddNumberToObject(info, "width", p->width);
        cJSON_AddNumberToObject(info, "height", p->height);
        cJSON_AddStringToObject(info, "split", p->split && p->split[0] ? p->split : "train");
        cJSON_AddStringToObject(info, "split_rule", "every record gets --split; 'auto': image index % 10: 0-7 train, 8 val, 9 test");
        cJSON_AddStringToObject(info, "bbox_format", "[x, y, w, h] pixels, tight around the visible pixels");
        cJSON_AddStringToObject(info, "mask_format", "coco uncompressed RLE: {size: [h, w], counts}, column-major, first run is background");
        cJSON *kinds = cJSON_AddArrayToObject(info, "kinds");
        for (int k = 0; k < LP_N_EXPR_KINDS; k++) cJSON_AddItemToArray(kinds, cJSON_CreateString(lp_scene_kind_name(k)));
        char *txt = cJSON_PrintUnformatted(info);
        cJSON_Delete(info);
        cJSON *cats = cJSON_CreateArray();
        for (int c = 0; c < LP_N_CATS; c++) {
            cJSON *co = cJSON_CreateObject();
            cJSON_AddNumberToObject(co, "id", c + 1);
            cJSON_AddStringToObject(co, "name", lp_scene_cat_name(c));
            cJSON_AddItemToArray(cats, co);
        }
        char *ctxt = cJSON_PrintUnformatted(cats);
        cJSON_Delete(cats);
        int bad = !txt || !ctxt;
        if (!bad) {
            fprintf(out, "{\"info\": %s,\n\"images\": [\n", txt);
            bad |= copy_section(out, sec[0]);
            fprintf(out, "\n],\n\"categories\": %s,\n\"annotations\": [\n", ctxt);
            bad |= copy_section(out, sec[1]);
            fputs("\n],\n\"refs\": [\n", out);
            bad |= copy_section(out, sec[2]);
            fputs("\n],\n\"regions\": [\n", out);
            bad |= copy_section(out, sec[3]);
            fputs("\n]}\n", out);
        }
        cJSON_free(txt);
        cJSON_free(ctxt);
        bad |= ferror(out) != 0;
        bad |= fclose(out) != 0;
        out = NULL;
        if (bad) { unlink(tmp); rc = lp_fail(err, LOUPE_ERR_IO, "%s: write failed", path); goto done; }
        if (rename(tmp, path) != 0) {
            rc = lp_fail(err, LOUPE_ERR_IO, "%s: cannot rename from %s: %s", path, tmp, strerror(errno));
            unlink(tmp);
            goto done;
        }
    }
done:
    if (out) { fclose(out); unlink(tmp); }
    for (int k = 0; k < 4; k++)
        if (sec[k]) fclose(sec[k]);
    free(path);
    free(tmp);
    free(rle);
    return rc;
}
