/* tests/support/testutil.h — small helpers shared by the cmocka suites. */
#ifndef LP_TESTUTIL_H
#define LP_TESTUTIL_H

#include <stddef.h>

/* The whole file, NUL-terminated (the NUL is not counted in *n), or NULL if
 * it cannot be opened or read. Free with free(). */
char *tu_read_file(const char *path, size_t *n);

/* A fresh directory /tmp/loupe-test-TAG-XXXXXX in buf (n bytes); 0 on success. */
int tu_mkdtemp(char *buf, size_t n, const char *tag);
/* Remove dir and everything below it; 0 on success. */
int tu_rmtree(const char *dir);
/* "dir/name" in one of 8 rotating static buffers (copy it to keep it longer). */
const char *tu_path(const char *dir, const char *name);

#endif
