/* tests/support/dumps.c — see dumps.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "dumps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dumps_add(dumps *d, const char *name, lp_type type, const void *data, int64_t n) {
    assert_true(d->n < TU_MAX_DUMPS);
    dump_entry *e = &d->e[d->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->type = type;
    e->data = malloc(4 * (size_t)(n > 0 ? n : 1));
    assert_non_null(e->data);
    memcpy(e->data, data, 4 * (size_t)n);
    e->n = n;
}

const dump_entry *dump_find(const dumps *d, const char *name) {
    for (int i = d->n - 1; i >= 0; i--)
        if (strcmp(d->e[i].name, name) == 0) return &d->e[i];
    return NULL;
}

void dumps_free(dumps *d) {
    for (int i = 0; i < d->n; i++) free(d->e[i].data);
    d->n = 0;
}
