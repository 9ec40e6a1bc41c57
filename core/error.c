/* core/error.c — error records, status names and the log callback. */
#include "error.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

const char *loupe_status_str(loupe_status s) {
    switch (s) {
    case LOUPE_OK: return "ok";
    case LOUPE_ERR_INVALID_ARG: return "invalid argument";
    case LOUPE_ERR_IO: return "i/o error";
    case LOUPE_ERR_FORMAT: return "format error";
    case LOUPE_ERR_UNSUPPORTED: return "unsupported";
    case LOUPE_ERR_NOMEM: return "out of memory";
    case LOUPE_ERR_LIMIT: return "limit exceeded";
    case LOUPE_ERR_MISMATCH: return "mismatch";
    case LOUPE_ERR_CANCELLED: return "cancelled";
    case LOUPE_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *loupe_version(void) {
#define LP_STR2(x) #x
#define LP_STR(x) LP_STR2(x)
    return LP_STR(LOUPE_VERSION_MAJOR) "." LP_STR(LOUPE_VERSION_MINOR) "." LP_STR(LOUPE_VERSION_PATCH);
}

loupe_status lp_fail(lp_error *err, loupe_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

loupe_status lp_error_prefix(lp_error *err, const char *fmt, ...) {
    if (!err) return LOUPE_OK;
    /* Build "prefix: old" in place: format the prefix, then append the old
     * text, truncating at the buffer's end (never overflowing it). */
    char old[LP_ERROR_MSG_MAX];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t used = (size_t)n < sizeof err->msg ? (size_t)n : sizeof err->msg - 1;
    size_t room = sizeof err->msg - used;
    if (room > 2) {
        memcpy(err->msg + used, ": ", 2);
        used += 2;
        room -= 2;
        size_t len = strnlen(old, sizeof old - 1);
        if (len > room - 1) len = room - 1;
        memcpy(err->msg + used, old, len);
        err->msg[used + len] = '\0';
    }
    return err->status;
}

void lp_error_clear(lp_error *err) {
    if (err) {
        err->status = LOUPE_OK;
        err->msg[0] = '\0';
    }
}

/* The callback triple is swapped under a lock; lp_log copies it first so a
 * concurrent loupe_log_set never tears it. */
static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static loupe_log_fn g_log_fn;
static void *g_log_user;
static loupe_log_level g_log_max = LOUPE_LOG_WARN;

void loupe_log_set(loupe_log_fn fn, void *user, loupe_log_level max_level) {
    pthread_mutex_lock(&g_log_lock);
    g_log_fn = fn;
    g_log_user = user;
    g_log_max = max_level;
    pthread_mutex_unlock(&g_log_lock);
}

void lp_log(loupe_log_level level, const char *fmt, ...) {
    pthread_mutex_lock(&g_log_lock);
    loupe_log_fn fn = g_log_fn;
    void *user = g_log_user;
    loupe_log_level max = g_log_max;
    pthread_mutex_unlock(&g_log_lock);
    if (!fn || level > max) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fn(level, msg, user);
}
