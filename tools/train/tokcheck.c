/* tools/train/tokcheck.c — tokenize texts with loupe's C tokenizer, for
 * comparison with tools/train/tokenizer.py (tools/train/check_tokenizer.py
 * builds and runs it; not part of the Makefile).
 *
 *   cc -std=c11 -O2 -I include -I core -I language tools/train/tokcheck.c build/libloupe.a -lm -lopenblas -lpthread
 *   tokcheck TOKENIZER.gguf TEXTS.bin > IDS.txt
 *
 * TEXTS.bin: records "<decimal byte length>\n<bytes>". Output: one line of
 * space-separated ids per record (no BOS, special tokens parsed, as
 * fusion/prompt.c tokenizes a prompt piece). */
#include "gguf.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: tokcheck TOKENIZER.gguf TEXTS.bin\n");
        return 1;
    }
    lp_error err;
    lp_error_clear(&err);
    lp_gguf *g = lp_gguf_open(argv[1], &err);
    if (!g) return fprintf(stderr, "%s\n", err.msg), 1;
    lp_tokenizer *t = lp_tokenizer_load(g, &err);
    if (!t) return fprintf(stderr, "%s\n", err.msg), 1;
    FILE *f = fopen(argv[2], "rb");
    if (!f) return perror(argv[2]), 1;
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    int32_t *ids = malloc(sizeof(int32_t) * 65536);
    unsigned long n;
    while (fscanf(f, "%lu", &n) == 1) {
        fgetc(f);
        if (n + 1 > cap) buf = realloc(buf, cap = n + 1);
        if (fread(buf, 1, n, f) != n) return fprintf(stderr, "short read\n"), 1;
        int k = lp_tokenize(t, buf, n, false, true, ids, 65536, &err);
        if (k < 0) return fprintf(stderr, "%s\n", err.msg), 1;
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    return 0;
}
