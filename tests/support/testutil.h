/* tests/support/testutil.h — small helpers shared by the cmocka suites. */
#ifndef LP_TESTUTIL_H
#define LP_TESTUTIL_H

#include <stddef.h>

/* The whole file, NUL-terminated (the NUL is not counted in *n), or NULL if
 * it cannot be opened or read. Free with free(). */
char *tu_read_file(const char *path, size_t *n);

#endif
