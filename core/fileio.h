/* core/fileio.h — writing a file so readers never see half of it, and
 * thread-safe error text.
 *
 *   lp_outfile o;
 *   if (lp_outfile_open(&o, path, err)) return err->status;
 *   ... fwrite(..., o.f) ...
 *   return lp_outfile_commit(&o, err);   // or lp_outfile_abort(&o)
 *
 * The data goes to a temporary file beside `path` (created with O_EXCL and
 * mode 0666, so the result gets the umask's permissions like any other new
 * file), is flushed and fsync'd, then renamed over `path`. On any failure
 * the temporary file is removed and `path` is left as it was. */
#ifndef LP_FILEIO_H
#define LP_FILEIO_H

#include "error.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct lp_outfile {
    FILE *f;          /* write here */
    char *tmp;        /* the temporary file's path */
    const char *path; /* the target (borrowed) */
} lp_outfile;

loupe_status lp_outfile_open(lp_outfile *o, const char *path, lp_error *err);
/* Flush, fsync, close and rename. Fails (and removes the temporary file) if
 * any earlier write on o->f failed. */
loupe_status lp_outfile_commit(lp_outfile *o, lp_error *err);
/* Close and remove the temporary file. */
void lp_outfile_abort(lp_outfile *o);

/* Read a whole regular file into *buf (malloc'd, size + 1 bytes with a NUL
 * after the data, so text can be parsed in place). Refuses directories,
 * non-regular files and files over max bytes (LOUPE_ERR_LIMIT; `what` names
 * the limit in the message, e.g. "2 GiB file"). An empty file is returned as
 * size 0; the caller decides whether that is an error. */
loupe_status lp_read_file(const char *path, size_t max, const char *what, char **buf, size_t *size, lp_error *err);

/* "dir/name", malloc'd (NULL when out of memory). */
char *lp_path_join(const char *dir, const char *name);
/* Whether path exists (any kind), and whether it is a directory. */
bool lp_path_exists(const char *path);
bool lp_path_is_dir(const char *path);

/* strerror that is safe to call from several threads. */
const char *lp_strerror(int e, char *buf, size_t n);

#endif
