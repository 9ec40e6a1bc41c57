/* tests/support/dumps.h — collect the activations a dump hook reports, so a
 * parity test can compare each with the reference (llm.c style). Elements
 * are 4 bytes: f32, or i32 for index arrays (type says which). */
#ifndef LP_TEST_DUMPS_H
#define LP_TEST_DUMPS_H

#include "types.h"
#include <stdint.h>

#define TU_MAX_DUMPS 128

typedef struct dump_entry {
    char name[64];
    lp_type type; /* LP_TYPE_F32 or LP_TYPE_I32 */
    void *data;   /* (n) elements */
    int64_t n;
} dump_entry;

typedef struct dumps {
    dump_entry e[TU_MAX_DUMPS];
    int n;
} dumps;

/* Copy one activation in (the test fails when more than TU_MAX_DUMPS arrive). */
void dumps_add(dumps *d, const char *name, lp_type type, const void *data, int64_t n);
/* The latest entry of that name, or NULL. */
const dump_entry *dump_find(const dumps *d, const char *name);
void dumps_free(dumps *d);

#endif
