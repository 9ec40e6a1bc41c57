/* tests/support/testutil.c — see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>

char *tu_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0) len = ftell(f);
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)len + 1)) != NULL) {
        if (fread(b, 1, (size_t)len, f) != (size_t)len) {
            free(b);
            b = NULL;
        } else {
            b[len] = '\0';
            if (n) *n = (size_t)len;
        }
    }
    fclose(f);
    return b;
}
