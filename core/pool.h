/* core/pool.h — a small pthread pool shared by the kernels.
 *
 * lp_pool_run(pool, fn, arg) calls fn(arg, ith, nth) for ith = 0..nth-1, one
 * call per thread (the caller's thread is worker 0), and returns when all are
 * done. Work is split by the callee from (ith, nth); see lp_split(). A NULL
 * pool runs fn(arg, 0, 1) inline, so every kernel works without threads. */
#ifndef LP_POOL_H
#define LP_POOL_H

#include <stdint.h>

typedef struct lp_pool lp_pool;
typedef void (*lp_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0 means the number of online CPUs. Returns NULL on failure. */
lp_pool *lp_pool_new(int n_threads);
void lp_pool_free(lp_pool *pool);
int lp_pool_size(const lp_pool *pool); /* 1 for NULL */
/* Not re-entrant: one lp_pool_run at a time per pool (a pool is per context). */
void lp_pool_run(lp_pool *pool, lp_pool_fn fn, void *arg);

/* The half-open range [*lo, *hi) of n items that worker ith of nth owns. */
static inline void lp_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    int64_t per = (n + nth - 1) / nth;
    int64_t a = per * ith, b = a + per;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

#endif
