/* tests/test_sampling.c — sampler chain, PCG32 and the stop checker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../language/sampling.h"

#define V 100

static void random_logits(float *l, int n, uint64_t seed) {
    lp_rng r;
    lp_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) l[i] = (float)(lp_rng_uniform(&r) * 8.0 - 4.0);
}

static lp_sampler *mk(int top_k, float top_p, float temp, uint64_t seed) {
    lp_sampler_params p = {.top_k = top_k, .top_p = top_p, .temp = temp, .min_keep = 0, .seed = seed};
    lp_error err = {0};
    lp_sampler *s = lp_sampler_new(&p, V, &err);
    assert_non_null(s);
    return s;
}

// ----------------------------------------------------------------------------
// PRNG

static void test_pcg32_reference(void **state) {
    (void)state;
    // The reference pcg32 demo: pcg32_srandom_r(&rng, 42, 54) — seeding done
    // by hand with that stream's increment, our step function must agree.
    lp_rng r = {.state = 0, .inc = (54u << 1) | 1u};
    lp_rng_u32(&r);
    r.state += 42u;
    lp_rng_u32(&r);
    const uint32_t want[6] = {0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e};
    for (int i = 0; i < 6; i++) assert_int_equal(lp_rng_u32(&r), want[i]);
    // uniform stays in [0, 1) and looks uniform
    lp_rng_seed(&r, 7);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = lp_rng_uniform(&r);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_true(fabs(sum / 100000 - 0.5) < 0.01);
}

// ----------------------------------------------------------------------------
// sampler

static void test_greedy(void **state) {
    (void)state;
    float l[V];
    random_logits(l, V, 1);
    l[37] = 10.0f;
    assert_int_equal(lp_sample_greedy(l, V), 37);
    l[12] = 10.0f; // tie: the lower id
    assert_int_equal(lp_sample_greedy(l, V), 12);
    l[0] = NAN;    // NaN never wins
    assert_int_equal(lp_sample_greedy(l, V), 12);
    assert_int_equal(lp_sample_greedy(l, 0), -1);
}

static void test_top_k1_and_temp0_are_greedy(void **state) {
    (void)state;
    float l[V];
    for (uint64_t seed = 0; seed < 20; seed++) {
        random_logits(l, V, 100 + seed);
        int32_t g = lp_sample_greedy(l, V);
        lp_sampler *a = mk(1, 0.95f, 1.5f, seed);
        lp_sampler *b = mk(0, 1.0f, 0.0f, seed);
        lp_sampler *c = mk(40, 0.9f, -1.0f, seed);
        for (int k = 0; k < 5; k++) {
            assert_int_equal(lp_sampler_sample(a, l), g);
            assert_int_equal(lp_sampler_sample(b, l), g);
            assert_int_equal(lp_sampler_sample(c, l), g);
        }
        lp_sampler_free(a);
        lp_sampler_free(b);
        lp_sampler_free(c);
    }
}

static void test_seeds(void **state) {
    (void)state;
    float l[V];
    for (int i = 0; i < V; i++) l[i] = 0.01f * (float)(i % 7); // nearly flat
    int32_t sa[64], sb[64], sc[64];
    lp_sampler *a = mk(0, 1.0f, 1.0f, 1234), *b = mk(0, 1.0f, 1.0f, 1234), *c = mk(0, 1.0f, 1.0f, 1235);
    for (int i = 0; i < 64; i++) {
        sa[i] = lp_sampler_sample(a, l);
        sb[i] = lp_sampler_sample(b, l);
        sc[i] = lp_sampler_sample(c, l);
        assert_true(sa[i] >= 0 && sa[i] < V);
    }
    assert_memory_equal(sa, sb, sizeof sa);
    assert_memory_not_equal(sa, sc, sizeof sa);
    lp_sampler_reseed(c, 1234); // reseeding restarts the stream
    for (int i = 0; i < 64; i++) assert_int_equal(lp_sampler_sample(c, l), sa[i]);
    lp_sampler_free(a);
    lp_sampler_free(b);
    lp_sampler_free(c);
}

static void test_top_k(void **state) {
    (void)state;
    float l[V];
    random_logits(l, V, 5);
    // the three best ids
    int best[3] = {-1, -1, -1};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < V; i++) {
            bool taken = false;
            for (int j = 0; j < k; j++) taken |= best[j] == i;
            if (!taken && (best[k] < 0 || l[i] > l[best[k]])) best[k] = i;
        }
    lp_sampler *s = mk(3, 1.0f, 5.0f, 9);
    int seen[3] = {0};
    for (int n = 0; n < 300; n++) {
        int32_t t = lp_sampler_sample(s, l);
        assert_true(t == best[0] || t == best[1] || t == best[2]);
        for (int k = 0; k < 3; k++) seen[k] += t == best[k];
    }
    for (int k = 0; k < 3; k++) assert_true(seen[k] > 0); // hot temperature: all three occur
    const int32_t *ids;
    const float *probs;
    assert_int_equal(lp_sampler_last_candidates(s, &ids, &probs), 3);
    assert_int_equal(ids[0], best[0]); // sorted by descending probability
    lp_sampler_free(s);
}

/* top-p keeps the smallest descending-probability prefix with mass >= p */
static void test_top_p_mass(void **state) {
    (void)state;
    float l[V];
    const float ps[] = {0.1f, 0.5f, 0.7f, 0.9f, 0.99f};
    for (int pi = 0; pi < 5; pi++) {
        random_logits(l, V, 77 + (uint64_t)pi);
        double prob[V], mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        for (int i = 0; i < V; i++) sum += (prob[i] = exp(l[i] - mx));
        for (int i = 0; i < V; i++) prob[i] /= sum;
        lp_sampler *s = mk(0, ps[pi], 1.0f, 3);
        int32_t tok = lp_sampler_sample(s, l);
        const int32_t *ids;
        const float *probs;
        int n = lp_sampler_last_candidates(s, &ids, &probs);
        assert_true(n >= 1);
        double mass = 0, smallest = 1;
        bool in = false;
        for (int i = 0; i < n; i++) {
            mass += prob[ids[i]];
            smallest = prob[ids[i]] < smallest ? prob[ids[i]] : smallest;
            in |= ids[i] == tok;
            if (i > 0) assert_true(prob[ids[i]] <= prob[ids[i - 1]]);
        }
        assert_true(in);
        assert_true(mass >= ps[pi] - 1e-6);                 // enough mass
        assert_true(mass - prob[ids[n - 1]] < ps[pi] + 1e-6); // and minimal
        // every kept token is at least as likely as every dropped one
        for (int i = 0; i < V; i++) {
            bool kept = false;
            for (int j = 0; j < n; j++) kept |= ids[j] == i;
            if (!kept) assert_true(prob[i] <= smallest + 1e-9);
        }
        // the final probabilities are renormalised over the kept set
        double ps_sum = 0;
        for (int i = 0; i < n; i++) ps_sum += probs[i];
        assert_true(fabs(ps_sum - 1.0) < 1e-5);
        lp_sampler_free(s);
    }
    // min_keep overrides a tiny p
    lp_sampler_params p = {.top_k = 0, .top_p = 0.01f, .temp = 1.0f, .min_keep = 5, .seed = 1};
    lp_sampler *s = lp_sampler_new(&p, V, NULL);
    lp_sampler_sample(s, l);
    assert_int_equal(lp_sampler_last_candidates(s, NULL, NULL), 5);
    lp_sampler_free(s);
}

/* large vocabulary: the adaptive top-256 path and the full sort agree with brute force */
static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y ? 1 : 0;
}

static void test_top_p_large_vocab(void **state) {
    (void)state;
    enum { NV = 5000 };
    float *l = malloc(NV * sizeof(float));
    double *prob = malloc(NV * sizeof(double)), *sorted = malloc(NV * sizeof(double));
    const float ps[] = {0.3f, 0.9f, 0.999f};
    for (int pi = 0; pi < 3; pi++) {
        lp_rng r;
        lp_rng_seed(&r, 900 + (uint64_t)pi);
        for (int i = 0; i < NV; i++) l[i] = (float)(lp_rng_uniform(&r) * 12.0);
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < NV; i++) mx = l[i] > mx ? l[i] : mx;
        for (int i = 0; i < NV; i++) sum += (prob[i] = exp(l[i] - mx));
        for (int i = 0; i < NV; i++) sorted[i] = (prob[i] /= sum);
        qsort(sorted, NV, sizeof(double), cmp_desc);
        int want = 0;
        double cum = 0;
        while (want < NV && cum < ps[pi] - 1e-6) cum += sorted[want++];
        lp_sampler_params p = {.top_k = 0, .top_p = ps[pi], .temp = 1.0f, .seed = 1};
        lp_sampler *s = lp_sampler_new(&p, NV, NULL);
        assert_non_null(s);
        int32_t tok = lp_sampler_sample(s, l);
        const int32_t *ids;
        int n = lp_sampler_last_candidates(s, &ids, NULL);
        if (abs(n - want) > 1) fail_msg("p %g: kept %d, brute force %d", (double)ps[pi], n, want);
        bool in = false;
        for (int i = 0; i < n; i++) {
            in |= ids[i] == tok;
            assert_true(fabs(prob[ids[i]] - sorted[i]) < 1e-12);
        }
        assert_true(in);
        lp_sampler_free(s);
    }
    free(l);
    free(prob);
    free(sorted);
}

/* frequencies follow softmax(logits / temp) */
static void test_distribution(void **state) {
    (void)state;
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    const double w[4] = {0.1, 0.2, 0.3, 0.4};
    for (int i = 0; i < 4; i++) l[10 + i] = (float)log(w[i]);
    const float temps[2] = {1.0f, 0.5f};
    for (int ti = 0; ti < 2; ti++) {
        lp_sampler *s = mk(0, 1.0f, temps[ti], 42);
        int cnt[4] = {0};
        const int N = 40000;
        for (int n = 0; n < N; n++) {
            int32_t t = lp_sampler_sample(s, l);
            assert_true(t >= 10 && t < 14);
            cnt[t - 10]++;
        }
        double z = 0, q[4];
        for (int i = 0; i < 4; i++) z += (q[i] = pow(w[i], 1.0 / temps[ti]));
        for (int i = 0; i < 4; i++) {
            double f = (double)cnt[i] / N, e = q[i] / z;
            if (fabs(f - e) > 0.015) fail_msg("temp %g token %d: freq %g, expected %g", (double)temps[ti], i, f, e);
        }
        lp_sampler_free(s);
    }
    // all -inf: nothing to sample
    for (int i = 0; i < V; i++) l[i] = -INFINITY;
    lp_sampler *s = mk(0, 1.0f, 1.0f, 1);
    assert_int_equal(lp_sampler_sample(s, l), -1);
    lp_sampler_free(s);
}

static void test_defaults(void **state) {
    (void)state;
    lp_sampler_params p = lp_sampler_default_params();
    assert_int_equal(p.top_k, 40);
    assert_true(fabsf(p.top_p - 0.95f) < 1e-7f);
    assert_true(fabsf(p.temp - 0.8f) < 1e-7f);
    lp_error err = {0};
    assert_null(lp_sampler_new(&p, 0, &err));
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
}

// ----------------------------------------------------------------------------
// stop checker

typedef struct stream {
    char out[256];
    size_t n;
} stream;

static lp_stop_reason push(lp_stop_checker *c, stream *s, int32_t tok, const char *piece, lp_stop_result *r) {
    assert_int_equal(lp_stop_push(c, tok, piece, strlen(piece), r, NULL), LOUPE_OK);
    memcpy(s->out + s->n, r->emit, r->emit_len);
    s->n += r->emit_len;
    s->out[s->n] = '\0';
    return r->reason;
}

static void test_stop_across_tokens(void **state) {
    (void)state;
    const char *stops[] = {"</answer>", "STOP"};
    const int32_t eos[] = {2};
    lp_stop_checker *c = lp_stop_new(eos, 1, stops, 2, NULL);
    assert_non_null(c);
    stream s = {0};
    lp_stop_result r;
    assert_int_equal(push(c, &s, 10, "Hel", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "Hel");
    assert_int_equal(push(c, &s, 11, "lo <", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "Hello "); // "<" could start "</answer>": held
    assert_int_equal(push(c, &s, 12, "/ans", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "Hello ");
    assert_int_equal(push(c, &s, 13, "wer> tail", &r), LP_STOP_STRING);
    assert_int_equal(r.stop_index, 0);
    assert_int_equal(r.keep_len, 6);
    assert_string_equal(s.out, "Hello ");
    size_t len;
    const char *all = lp_stop_text(c, &len);
    assert_int_equal(len, strlen("Hello </answer> tail"));
    assert_memory_equal(all, "Hello ", 6);
    // after a stop nothing more comes out
    assert_int_equal(push(c, &s, 14, "more", &r), LP_STOP_STRING);
    assert_int_equal(r.emit_len, 0);

    // a false start is released once it cannot be a stop string any more
    lp_stop_reset(c);
    memset(&s, 0, sizeof s);
    assert_int_equal(push(c, &s, 1, "a </ans", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "a ");
    assert_int_equal(push(c, &s, 1, "x", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "a </ansx");
    // held text comes out at the end of generation
    assert_int_equal(push(c, &s, 1, " ST", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "a </ansx ");
    lp_stop_flush(c, &r);
    memcpy(s.out + s.n, r.emit, r.emit_len);
    s.n += r.emit_len;
    s.out[s.n] = '\0';
    assert_string_equal(s.out, "a </ansx ST");
    assert_int_equal(r.reason, LP_STOP_NONE);

    // the earliest stop string wins; one token can hold a whole stop string
    lp_stop_reset(c);
    memset(&s, 0, sizeof s);
    assert_int_equal(push(c, &s, 1, "xSTOPy</answer>", &r), LP_STOP_STRING);
    assert_int_equal(r.stop_index, 1);
    assert_string_equal(s.out, "x");

    // EOS: its text is not added, held text is released
    lp_stop_reset(c);
    memset(&s, 0, sizeof s);
    assert_int_equal(push(c, &s, 1, "done </", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "done ");
    assert_int_equal(push(c, &s, 2, "<eos>", &r), LP_STOP_EOS);
    assert_string_equal(s.out, "done </");
    assert_int_equal(r.keep_len, 7);
    lp_stop_free(c);
}

static void test_stop_utf8(void **state) {
    (void)state;
    lp_stop_checker *c = lp_stop_new(NULL, 0, NULL, 0, NULL);
    assert_non_null(c);
    stream s = {0};
    lp_stop_result r;
    push(c, &s, 1, "caf\xC3", &r); // "é" split over two tokens
    assert_string_equal(s.out, "caf");
    push(c, &s, 1, "\xA9 \xE2\x82", &r);
    assert_string_equal(s.out, "caf\xC3\xA9 ");
    push(c, &s, 1, "\xAC", &r); // "€" completed
    assert_string_equal(s.out, "caf\xC3\xA9 \xE2\x82\xAC");
    // a long run of text grows the buffer
    for (int i = 0; i < 50; i++) push(c, &s, 1, "", &r);
    lp_stop_free(c);
    // a stop string after a multi-byte character
    const char *stops[] = {"\xC3\xA9!"};
    c = lp_stop_new(NULL, 0, stops, 1, NULL);
    memset(&s, 0, sizeof s);
    assert_int_equal(push(c, &s, 1, "ol\xC3", &r), LP_STOP_NONE);
    assert_int_equal(push(c, &s, 1, "\xA9", &r), LP_STOP_NONE);
    assert_string_equal(s.out, "ol");
    assert_int_equal(push(c, &s, 1, "!", &r), LP_STOP_STRING);
    assert_string_equal(s.out, "ol");
    lp_stop_free(c);
}

static void test_stop_long_text(void **state) {
    (void)state;
    const char *stops[] = {"<|im_end|>"};
    lp_stop_checker *c = lp_stop_new(NULL, 0, stops, 1, NULL);
    lp_stop_result r;
    size_t emitted = 0;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(lp_stop_push(c, 5, "word <|", 7, &r, NULL), LOUPE_OK);
        emitted += r.emit_len;
    }
    assert_int_equal(emitted, 1000 * 7 - 2);
    assert_int_equal(lp_stop_push(c, 5, "im_end|>", 8, &r, NULL), LOUPE_OK);
    assert_int_equal(r.reason, LP_STOP_STRING);
    assert_int_equal(r.keep_len, 1000 * 7 - 2);
    lp_stop_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pcg32_reference),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_top_k1_and_temp0_are_greedy),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p_mass),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_stop_across_tokens),
        cmocka_unit_test(test_stop_utf8),
        cmocka_unit_test(test_stop_long_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
