/* examples/photo_search.c — find a phrase in a folder of photos, the way a
 * photo app would, using only the public header <loupe.h>.
 *
 *   photo_search -m MODEL.gguf --mmproj MMPROJ.gguf PHRASE PHOTO_DIR OUT_DIR
 *
 * For every image in PHOTO_DIR (jpg, jpeg, png, bmp, gif, tga; in name
 * order) it asks the model where PHRASE is (loupe_ground), writes the image
 * with the boxes drawn to OUT_DIR/<name>.png and, at the end,
 * OUT_DIR/index.json:
 *
 *   {"phrase": "...", "model": "...", "images": [
 *     {"file": "...", "width": W, "height": H, "found": true,
 *      "answer": "...", "annotated": "...",
 *      "boxes": [{"x1": .., "y1": .., "x2": .., "y2": .., "label": ".."}]},
 *     {"file": "...", "error": "..."}, ...]}
 *
 * Boxes are in pixels of the original photo. An image that cannot be read
 * or answered is listed with its error and the search goes on. Exit status:
 * 0 when every image was searched, 1 on a usage error, 2 when the model or
 * the output could not be opened, 3 when some image failed.
 *
 * Build against an installed loupe:
 *   cc -std=c11 photo_search.c $(pkg-config --cflags --libs loupe) -o photo_search */
#define _POSIX_C_SOURCE 200809L

#include <loupe.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void) {
    fprintf(stderr, "usage: photo_search -m MODEL.gguf --mmproj MMPROJ.gguf [-t THREADS] PHRASE PHOTO_DIR OUT_DIR\n");
}

/* A JSON string: quotes, backslashes and control characters escaped; other
 * bytes (UTF-8 included) as they are. */
static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        case '\b': fputs("\\b", f); break;
        case '\f': fputs("\\f", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

static int is_image_name(const char *name) {
    static const char *const exts[] = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga"};
    const char *dot = strrchr(name, '.');
    if (!dot || name[0] == '.') return 0;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        const char *e = exts[i];
        size_t k = 0;
        while (e[k] && dot[k] && tolower((unsigned char)dot[k]) == e[k]) k++;
        if (!e[k] && !dot[k]) return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The image names of dir, sorted; NULL on error. */
static char **list_images(const char *dir, size_t *n) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    size_t cap = 16, len = 0;
    char **names = malloc(cap * sizeof *names);
    struct dirent *e;
    while (names && (e = readdir(d))) {
        if (!is_image_name(e->d_name)) continue;
        if (len == cap) {
            char **grown = realloc(names, 2 * cap * sizeof *names);
            if (!grown) break;
            names = grown;
            cap *= 2;
        }
        if (!(names[len] = strdup(e->d_name))) break;
        len++;
    }
    closedir(d);
    if (names) qsort(names, len, sizeof *names, cmp_str);
    *n = len;
    return names;
}

/* "photo.jpg" -> "photo.png" under out_dir. */
static void annotated_path(char *buf, size_t size, const char *out_dir, const char *name) {
    const char *dot = strrchr(name, '.');
    snprintf(buf, size, "%s/%.*s.png", out_dir, (int)(dot - name), name);
}

int main(int argc, char **argv) {
    const char *model = NULL, *mmproj = NULL, *pos[3] = {0};
    int n_pos = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--mmproj") && i + 1 < argc) mmproj = argv[++i];
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (argv[i][0] == '-') { usage(); return 1; }
        else if (n_pos < 3) pos[n_pos++] = argv[i];
        else { usage(); return 1; }
    }
    if (!model || !mmproj || n_pos != 3) {
        usage();
        return 1;
    }
    const char *phrase = pos[0], *photo_dir = pos[1], *out_dir = pos[2];

    char err[512];
    loupe_model *m = NULL;
    loupe_status st = loupe_model_load(model, mmproj, NULL, &m, err, sizeof err);
    if (st) {
        fprintf(stderr, "photo_search: %s (%s)\n", err, loupe_status_str(st));
        return 2;
    }
    loupe_context_params cp = loupe_context_default_params();
    cp.n_threads = threads;
    cp.max_tokens = 64; /* a grounding answer is a few boxes */
    loupe_context *ctx = NULL;
    if ((st = loupe_context_new(m, &cp, &ctx))) {
        fprintf(stderr, "photo_search: %s\n", loupe_last_error());
        loupe_model_free(m);
        return 2;
    }
    size_t n_files = 0;
    char **files = list_images(photo_dir, &n_files);
    char index_path[4096];
    snprintf(index_path, sizeof index_path, "%s/index.json", out_dir);
    FILE *idx = NULL;
    if (!files) fprintf(stderr, "photo_search: cannot read %s: %s\n", photo_dir, strerror(errno));
    else if (mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        fprintf(stderr, "photo_search: cannot create %s: %s\n", out_dir, strerror(errno));
    else if (!(idx = fopen(index_path, "w")))
        fprintf(stderr, "photo_search: cannot write %s: %s\n", index_path, strerror(errno));
    if (!idx) {
        for (size_t i = 0; files && i < n_files; i++) free(files[i]);
        free(files);
        loupe_context_free(ctx);
        loupe_model_free(m);
        return 2;
    }

    fputs("{\n  \"phrase\": ", idx);
    json_string(idx, phrase);
    fputs(",\n  \"model\": ", idx);
    json_string(idx, loupe_model_name(m, LOUPE_FILE_MODEL));
    fputs(",\n  \"images\": [", idx);
    int failed = 0, found = 0;
    for (size_t i = 0; i < n_files; i++) {
        char in_path[4096], out_path[4096];
        snprintf(in_path, sizeof in_path, "%s/%s", photo_dir, files[i]);
        annotated_path(out_path, sizeof out_path, out_dir, files[i]);
        fputs(i ? ",\n    {\"file\": " : "\n    {\"file\": ", idx);
        json_string(idx, in_path);

        loupe_image *img = NULL;
        loupe_answer *a = NULL;
        const char *why = NULL;
        if (loupe_image_from_file(in_path, &img, err, sizeof err)) why = err;
        else if (loupe_ground(ctx, img, phrase, &a)) why = loupe_context_last_error(ctx);
        else if (loupe_image_draw_answer(img, a) || loupe_image_write_png(img, out_path, err, sizeof err)) why = err;
        if (why) {
            fputs(", \"error\": ", idx);
            json_string(idx, why);
            fprintf(stderr, "photo_search: %s: %s\n", in_path, why);
            failed++;
        } else {
            const int nb = loupe_answer_n_boxes(a);
            found += nb > 0;
            fprintf(idx, ", \"width\": %d, \"height\": %d, \"found\": %s,\n     \"answer\": ", loupe_image_width(img),
                    loupe_image_height(img), nb > 0 ? "true" : "false");
            json_string(idx, loupe_answer_text(a));
            fputs(", \"annotated\": ", idx);
            json_string(idx, out_path);
            fputs(",\n     \"boxes\": [", idx);
            for (int k = 0; k < nb; k++) {
                const loupe_box *b = loupe_answer_box(a, k);
                fprintf(idx, "%s{\"x1\": %.2f, \"y1\": %.2f, \"x2\": %.2f, \"y2\": %.2f, \"label\": ", k ? ", " : "",
                        b->x1, b->y1, b->x2, b->y2);
                json_string(idx, b->label);
                fputc('}', idx);
            }
            fputc(']', idx);
            printf("%s: %d box%s\n", in_path, nb, nb == 1 ? "" : "es");
        }
        fputc('}', idx);
        loupe_answer_free(a);
        loupe_image_free(img);
        free(files[i]);
    }
    free(files);
    fputs("\n  ]\n}\n", idx);
    if (fclose(idx) != 0) {
        fprintf(stderr, "photo_search: writing %s failed\n", index_path);
        failed = -1;
    }
    printf("%zu images, \"%s\" found in %d; index: %s\n", n_files, phrase, found, index_path);
    loupe_context_free(ctx);
    loupe_model_free(m);
    return failed < 0 ? 2 : failed > 0 ? 3 : 0;
}
