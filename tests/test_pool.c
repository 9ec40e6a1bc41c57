/* tests/test_pool.c — the pthread pool: every worker index runs exactly once
 * per lp_pool_run, the caller is worker 0, many runs in a row, sizes 1..4,
 * a NULL pool, and create/free cycles (for ThreadSanitizer). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "pool.h"

#define MAX_T 8

typedef struct once_args {
    int counts[MAX_T]; // (MAX_T) times each ith ran; each slot written by one thread only
    int nth_seen[MAX_T];
    pthread_t caller;
    int caller_is_0;
} once_args;

static void once_fn(void *p, int ith, int nth) {
    once_args *a = p;
    if (ith >= 0 && ith < MAX_T) {
        a->counts[ith]++;
        a->nth_seen[ith] = nth;
    }
    if (ith == 0) a->caller_is_0 = pthread_equal(pthread_self(), a->caller);
}

static void check_once(lp_pool *pool) {
    int n = lp_pool_size(pool);
    assert_true(n >= 1 && n <= MAX_T);
    once_args a;
    memset(&a, 0, sizeof a);
    a.caller = pthread_self();
    lp_pool_run(pool, once_fn, &a);
    for (int i = 0; i < MAX_T; i++) {
        assert_int_equal(a.counts[i], i < n ? 1 : 0);
        if (i < n) assert_int_equal(a.nth_seen[i], n);
    }
    assert_true(a.caller_is_0);
}

static void test_null_pool(void **state) {
    (void)state;
    assert_int_equal(lp_pool_size(NULL), 1);
    check_once(NULL);
    lp_pool_free(NULL); // no-op
}

static void test_sizes_1_to_4(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        lp_pool *pool = lp_pool_new(n);
        assert_non_null(pool);
        assert_int_equal(lp_pool_size(pool), n);
        for (int r = 0; r < 20; r++) check_once(pool);
        lp_pool_free(pool);
    }
}

static void test_default_size(void **state) {
    (void)state;
    lp_pool *pool = lp_pool_new(0);
    assert_non_null(pool);
    int n = lp_pool_size(pool);
    assert_true(n >= 1);
    if (n <= MAX_T) check_once(pool);
    lp_pool_free(pool);
}

// Items split with lp_split: each of n items is touched exactly once.
typedef struct split_args {
    int64_t n;
    int *hits; // (n) each slot written by the one worker owning it
} split_args;

static void split_fn(void *p, int ith, int nth) {
    split_args *a = p;
    int64_t lo, hi;
    lp_split(a->n, ith, nth, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) a->hits[i]++;
}

static void test_split_covers_all(void **state) {
    (void)state;
    static const int64_t ns[] = {0, 1, 2, 3, 5, 7, 64, 1000, 1001};
    int hits[1001];
    for (int t = 1; t <= 4; t++) {
        lp_pool *pool = lp_pool_new(t);
        assert_non_null(pool);
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            memset(hits, 0, sizeof hits);
            split_args a = {.n = ns[k], .hits = hits};
            lp_pool_run(pool, split_fn, &a);
            for (int64_t i = 0; i < ns[k]; i++) assert_int_equal(hits[i], 1);
        }
        lp_pool_free(pool);
    }
    // lp_split on its own: ranges are contiguous, ordered and within [0, n)
    for (int64_t n = 0; n < 50; n++) {
        for (int nth = 1; nth <= 7; nth++) {
            int64_t prev_hi = 0;
            for (int ith = 0; ith < nth; ith++) {
                int64_t lo, hi;
                lp_split(n, ith, nth, &lo, &hi);
                assert_true(lo == prev_hi && lo <= hi && hi <= n);
                prev_hi = hi;
            }
            assert_int_equal(prev_hi, n);
        }
    }
}

// Many runs back to back: each run adds ith+1 into its own slot.
typedef struct sum_args {
    int64_t slot[MAX_T];
} sum_args;

static void sum_fn(void *p, int ith, int nth) {
    (void)nth;
    sum_args *a = p;
    a->slot[ith] += ith + 1;
}

static void test_many_runs(void **state) {
    (void)state;
    const int runs = 5000;
    for (int t = 1; t <= 4; t++) {
        lp_pool *pool = lp_pool_new(t);
        assert_non_null(pool);
        sum_args a;
        memset(&a, 0, sizeof a);
        for (int r = 0; r < runs; r++) lp_pool_run(pool, sum_fn, &a);
        for (int i = 0; i < MAX_T; i++) assert_int_equal(a.slot[i], i < t ? (int64_t)runs * (i + 1) : 0);
        lp_pool_free(pool);
    }
}

// Pools created and freed at once (workers may not have reached their wait
// yet) and after a single run: shutdown must never hang or race.
static void test_create_free_cycles(void **state) {
    (void)state;
    for (int r = 0; r < 200; r++) {
        lp_pool *pool = lp_pool_new(1 + r % 4);
        assert_non_null(pool);
        if (r % 2) check_once(pool);
        lp_pool_free(pool);
    }
}

// Two pools used from two threads at once (a pool is per context).
static void *pool_user(void *p) {
    (void)p;
    lp_pool *pool = lp_pool_new(2);
    if (!pool) return (void *)1;
    sum_args a;
    memset(&a, 0, sizeof a);
    for (int r = 0; r < 500; r++) lp_pool_run(pool, sum_fn, &a);
    lp_pool_free(pool);
    return (a.slot[0] == 500 && a.slot[1] == 1000) ? NULL : (void *)1;
}

static void test_independent_pools(void **state) {
    (void)state;
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, pool_user, NULL), 0);
    for (int i = 0; i < 2; i++) {
        void *ret = (void *)1;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_pool),
        cmocka_unit_test(test_sizes_1_to_4),
        cmocka_unit_test(test_default_size),
        cmocka_unit_test(test_split_covers_all),
        cmocka_unit_test(test_many_runs),
        cmocka_unit_test(test_create_free_cycles),
        cmocka_unit_test(test_independent_pools),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
