/*
 * loupe.h — public API of loupe, on-device visual grounding.
 *
 * Usable from this header alone: link with -lloupe (or `pkg-config --libs loupe`).
 *
 * Conventions
 *   - Every call that can fail returns a loupe_status; LOUPE_OK is 0.
 *   - Objects that carry state (contexts) keep the text of their last error,
 *     readable with the object's *_last_error() call.
 *   - The library never prints and never calls exit(). Diagnostics go to the
 *     log callback set with loupe_log_set(), and nowhere by default.
 *
 * This is the runtime layer (issue #2). The model/context calls
 * (loupe_model_load, loupe_context_new, loupe_ask, ...) arrive with the
 * inference engine and are not declared until they exist.
 */
#ifndef LOUPE_H
#define LOUPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOUPE_VERSION_MAJOR 0
#define LOUPE_VERSION_MINOR 1
#define LOUPE_VERSION_PATCH 0

/* Status codes. Stable numbers: the CLI maps them to its exit codes. */
typedef enum loupe_status {
    LOUPE_OK = 0,
    LOUPE_ERR_INVALID_ARG = 1,   /* a caller passed something unusable       */
    LOUPE_ERR_IO = 2,            /* open/read/write/mmap failed              */
    LOUPE_ERR_FORMAT = 3,        /* a file is malformed or truncated         */
    LOUPE_ERR_UNSUPPORTED = 4,   /* valid input that loupe does not handle   */
    LOUPE_ERR_NOMEM = 5,         /* allocation failed                        */
    LOUPE_ERR_LIMIT = 6,         /* input exceeds a documented size limit    */
    LOUPE_ERR_MISMATCH = 7,      /* two inputs do not fit together           */
    LOUPE_ERR_CANCELLED = 8,     /* the progress callback asked to stop      */
    LOUPE_ERR_INTERNAL = 9       /* a bug in loupe; please report it         */
} loupe_status;

/* Short constant name of a status, e.g. "format error". Never NULL. */
const char *loupe_status_str(loupe_status s);

/* "0.1.0" */
const char *loupe_version(void);

/* Logging. Levels, most severe first. */
typedef enum loupe_log_level {
    LOUPE_LOG_ERROR = 0,
    LOUPE_LOG_WARN = 1,
    LOUPE_LOG_INFO = 2,
    LOUPE_LOG_DEBUG = 3
} loupe_log_level;

typedef void (*loupe_log_fn)(loupe_log_level level, const char *msg, void *user);

/* Install a log callback (NULL turns logging off, the default). Messages
 * above max_level are not formatted at all. Thread-safe to call at any time;
 * the callback itself may be called from several threads at once. */
void loupe_log_set(loupe_log_fn fn, void *user, loupe_log_level max_level);

#ifdef __cplusplus
}
#endif
#endif /* LOUPE_H */
