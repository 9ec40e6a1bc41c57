/* core/error.h — error records and logging used throughout the library.
 *
 * Every fallible internal call takes an `lp_error *` (may be NULL) and returns
 * a loupe_status. lp_fail() fills the record and returns the status, so error
 * paths read as `return lp_fail(err, LOUPE_ERR_FORMAT, "%s: ...", path);`.
 * Messages name the file and the reason, in one line, without a trailing
 * period. */
#ifndef LP_ERROR_H
#define LP_ERROR_H

#include "loupe.h"
#include <stdarg.h>

#define LP_ERROR_MSG_MAX 512

typedef struct lp_error {
    loupe_status status;
    char msg[LP_ERROR_MSG_MAX];
} lp_error;

/* Set *err (if non-NULL) and return status. */
loupe_status lp_fail(lp_error *err, loupe_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the message already in err with "prefix: " (keeps status). */
loupe_status lp_error_prefix(lp_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void lp_error_clear(lp_error *err);

/* Internal logging: goes to the callback from loupe_log_set(), if any. */
void lp_log(loupe_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define LP_LOG_ERR(...)   lp_log(LOUPE_LOG_ERROR, __VA_ARGS__)
#define LP_LOG_WARN(...)  lp_log(LOUPE_LOG_WARN, __VA_ARGS__)
#define LP_LOG_INFO(...)  lp_log(LOUPE_LOG_INFO, __VA_ARGS__)
#define LP_LOG_DEBUG(...) lp_log(LOUPE_LOG_DEBUG, __VA_ARGS__)

#endif
