/* core/fileio.c — see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *lp_strerror(int e, char *buf, size_t n) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(e, buf, n); /* the GNU variant may return a static string */
#else
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "error %d", e);
    return buf;
#endif
}

loupe_status lp_outfile_open(lp_outfile *o, const char *path, lp_error *err) {
    static atomic_uint seq; /* unique names across threads of this process */
    char eb[128];
    o->f = NULL;
    o->path = path;
    size_t cap = strlen(path) + 64;
    if (!(o->tmp = malloc(cap))) return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory", path);
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        snprintf(o->tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&seq, 1u));
        fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        return lp_fail(err, LOUPE_ERR_IO, "%s: cannot create temporary file: %s", path, lp_strerror(e, eb, sizeof eb));
    }
    if (!(o->f = fdopen(fd, "wb"))) {
        int e = errno;
        close(fd);
        unlink(o->tmp);
        free(o->tmp);
        o->tmp = NULL;
        return lp_fail(err, LOUPE_ERR_IO, "%s: %s", path, lp_strerror(e, eb, sizeof eb));
    }
    return LOUPE_OK;
}

loupe_status lp_outfile_commit(lp_outfile *o, lp_error *err) {
    char eb[128];
    int e = 0;
    errno = 0;
    if (ferror(o->f)) e = errno ? errno : EIO;
    else if (fflush(o->f) != 0) e = errno ? errno : EIO;
    if (!e && fsync(fileno(o->f)) != 0) e = errno;
    if (fclose(o->f) != 0 && !e) e = errno ? errno : EIO;
    o->f = NULL;
    if (!e && rename(o->tmp, o->path) != 0) e = errno;
    if (e) unlink(o->tmp);
    free(o->tmp);
    o->tmp = NULL;
    if (e) return lp_fail(err, LOUPE_ERR_IO, "%s: write failed: %s", o->path, lp_strerror(e, eb, sizeof eb));
    return LOUPE_OK;
}

void lp_outfile_abort(lp_outfile *o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp) unlink(o->tmp);
    free(o->tmp);
    o->tmp = NULL;
}

loupe_status lp_read_file(const char *path, size_t max, const char *what, char **buf, size_t *size, lp_error *err) {
    *buf = NULL;
    *size = 0;
    char eb[128];
    FILE *f = fopen(path, "rb");
    if (!f) return lp_fail(err, LOUPE_ERR_IO, "%s: cannot open: %s", path, lp_strerror(errno, eb, sizeof eb));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        int e = errno;
        fclose(f);
        return lp_fail(err, LOUPE_ERR_IO, "%s: cannot stat: %s", path, lp_strerror(e, eb, sizeof eb));
    }
    if (!S_ISREG(sb.st_mode)) {
        fclose(f);
        return lp_fail(err, LOUPE_ERR_IO, "%s: %s", path, S_ISDIR(sb.st_mode) ? "is a directory" : "not a regular file");
    }
    if ((unsigned long long)sb.st_size > (unsigned long long)max) {
        fclose(f);
        return lp_fail(err, LOUPE_ERR_LIMIT, "%s: %lld bytes is over the %s limit", path, (long long)sb.st_size, what);
    }
    size_t n = (size_t)sb.st_size;
    char *b = malloc(n + 1);
    if (!b) {
        fclose(f);
        return lp_fail(err, LOUPE_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = fread(b, 1, n, f);
    int rerr = ferror(f);
    int e = errno;
    fclose(f);
    if (got != n) {
        free(b);
        if (rerr) return lp_fail(err, LOUPE_ERR_IO, "%s: read failed: %s", path, lp_strerror(e, eb, sizeof eb));
        return lp_fail(err, LOUPE_ERR_IO, "%s: file shrank while reading (%zu of %zu bytes)", path, got, n);
    }
    b[n] = '\0';
    *buf = b;
    *size = n;
    return LOUPE_OK;
}

char *lp_path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

bool lp_path_exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0;
}

bool lp_path_is_dir(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}
