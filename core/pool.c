/* core/pool.c — a small persistent pthread pool.
 *
 * n-1 worker threads sleep on a condition variable. lp_pool_run publishes
 * (fn, arg), bumps a generation counter and wakes them; the caller runs
 * worker 0 itself, then waits until the other n-1 have reported back. All
 * shared fields are read and written under one mutex, so the pool is
 * TSan-clean without atomics. Workers cannot miss a generation: run() does
 * not return (and so cannot start the next generation) before every worker
 * has finished the current one.
 *
 * The wake-up costs a futex round trip (tens of microseconds); kernels are
 * dispatched at the granularity of a whole matvec or attention call, so this
 * is small next to the work. */
#include "pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#define LP_POOL_MAX_THREADS 512

typedef struct lp_worker {
    lp_pool *pool;
    int ith;
} lp_worker;

struct lp_pool {
    int n_threads;           // workers including the caller (worker 0)
    int n_started;           // threads actually created (n_threads-1 on success)
    pthread_t *threads;      // (n_threads-1)
    lp_worker *workers;      // (n_threads-1)

    pthread_mutex_t mu;
    pthread_cond_t cv_start; // workers wait here for a new generation
    pthread_cond_t cv_done;  // the caller waits here for pending == 0
    uint64_t gen;            // bumped once per lp_pool_run
    int pending;             // workers (other than 0) still running this gen
    bool stop;
    lp_pool_fn fn;
    void *arg;
};

static void *worker_main(void *p) {
    lp_worker *w = p;
    lp_pool *pool = w->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (pool->gen == seen && !pool->stop) pthread_cond_wait(&pool->cv_start, &pool->mu);
        if (pool->stop) break;
        seen = pool->gen;
        lp_pool_fn fn = pool->fn;
        void *arg = pool->arg;
        int nth = pool->n_threads;
        pthread_mutex_unlock(&pool->mu);

        fn(arg, w->ith, nth);

        pthread_mutex_lock(&pool->mu);
        if (--pool->pending == 0) pthread_cond_signal(&pool->cv_done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

static void pool_stop_and_join(lp_pool *pool) {
    pthread_mutex_lock(&pool->mu);
    pool->stop = true;
    pthread_cond_broadcast(&pool->cv_start);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pool->n_started = 0;
}

lp_pool *lp_pool_new(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > LP_POOL_MAX_THREADS) n_threads = LP_POOL_MAX_THREADS;

    lp_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    int n_workers = n_threads - 1;
    if (n_workers > 0) {
        pool->threads = calloc((size_t)n_workers, sizeof *pool->threads);
        pool->workers = calloc((size_t)n_workers, sizeof *pool->workers);
        if (!pool->threads || !pool->workers) {
            free(pool->threads);
            free(pool->workers);
            free(pool);
            return NULL;
        }
    }
    if (pthread_mutex_init(&pool->mu, NULL) != 0) goto fail_mu;
    if (pthread_cond_init(&pool->cv_start, NULL) != 0) goto fail_cv_start;
    if (pthread_cond_init(&pool->cv_done, NULL) != 0) goto fail_cv_done;

    for (int i = 0; i < n_workers; i++) {
        pool->workers[i] = (lp_worker){.pool = pool, .ith = i + 1};
        if (pthread_create(&pool->threads[i], NULL, worker_main, &pool->workers[i]) != 0) {
            pool_stop_and_join(pool);
            goto fail_threads;
        }
        pool->n_started++;
    }
    return pool;

fail_threads:
    pthread_cond_destroy(&pool->cv_done);
fail_cv_done:
    pthread_cond_destroy(&pool->cv_start);
fail_cv_start:
    pthread_mutex_destroy(&pool->mu);
fail_mu:
    free(pool->threads);
    free(pool->workers);
    free(pool);
    return NULL;
}

void lp_pool_free(lp_pool *pool) {
    if (!pool) return;
    pool_stop_and_join(pool);
    pthread_cond_destroy(&pool->cv_done);
    pthread_cond_destroy(&pool->cv_start);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool->workers);
    free(pool);
}

int lp_pool_size(const lp_pool *pool) {
    return pool ? pool->n_threads : 1;
}

void lp_pool_run(lp_pool *pool, lp_pool_fn fn, void *arg) {
    if (!pool || pool->n_threads <= 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->pending = pool->n_threads - 1;
    pool->gen++;
    pthread_cond_broadcast(&pool->cv_start);
    pthread_mutex_unlock(&pool->mu);

    fn(arg, 0, pool->n_threads);

    pthread_mutex_lock(&pool->mu);
    while (pool->pending > 0) pthread_cond_wait(&pool->cv_done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}
