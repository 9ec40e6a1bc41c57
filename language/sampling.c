/* language/sampling.c — sampler chain (top-k, top-p, temperature, dist),
 * PCG32, and the stop checker. See sampling.h for the semantics. */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// PCG32

#define LP_PCG_MULT 6364136223846793005ULL
#define LP_PCG_INC 1442695040888963407ULL

uint32_t lp_rng_u32(lp_rng *r) {
    uint64_t old = r->state;
    r->state = old * LP_PCG_MULT + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

void lp_rng_seed(lp_rng *r, uint64_t seed) {
    r->state = 0;
    r->inc = LP_PCG_INC;
    lp_rng_u32(r);
    r->state += seed;
    lp_rng_u32(r);
}

double lp_rng_uniform(lp_rng *r) {
    uint64_t hi = lp_rng_u32(r), lo = lp_rng_u32(r);
    uint64_t bits = ((hi << 32) | lo) >> 11; // 53 bits
    return (double)bits * (1.0 / 9007199254740992.0);
}

// ----------------------------------------------------------------------------
// sampler

typedef struct cand {
    int32_t id;
    float logit;
    float p;
} cand;

struct lp_sampler {
    lp_sampler_params p;
    int n_vocab;
    lp_rng rng;
    cand *c;         // (n_vocab) candidates of the current step
    int n;           // live candidates
    bool sorted;     // c[0..n) sorted by descending logit
    int32_t *out_id; // (n_vocab) last_candidates
    float *out_p;    // (n_vocab)
    int n_out;
};

lp_sampler_params lp_sampler_default_params(void) {
    lp_sampler_params p = {.top_k = 40, .top_p = 0.95f, .temp = 0.8f, .min_keep = 0, .seed = 0};
    return p;
}

lp_sampler *lp_sampler_new(const lp_sampler_params *p, int n_vocab, lp_error *err) {
    if (!p || n_vocab < 1) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_sampler_new: n_vocab = %d must be at least 1", n_vocab);
        return NULL;
    }
    if (isnan(p->top_p) || isnan(p->temp)) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_sampler_new: top_p and temp must be numbers");
        return NULL;
    }
    lp_sampler *s = calloc(1, sizeof *s);
    if (s) {
        s->c = malloc((size_t)n_vocab * sizeof *s->c);
        s->out_id = malloc((size_t)n_vocab * sizeof *s->out_id);
        s->out_p = malloc((size_t)n_vocab * sizeof *s->out_p);
    }
    if (!s || !s->c || !s->out_id || !s->out_p) {
        lp_sampler_free(s);
        lp_fail(err, LOUPE_ERR_NOMEM, "lp_sampler_new: out of memory for %d candidates", n_vocab);
        return NULL;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    lp_rng_seed(&s->rng, p->seed);
    return s;
}

void lp_sampler_free(lp_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->out_id);
    free(s->out_p);
    free(s);
}

void lp_sampler_reseed(lp_sampler *s, uint64_t seed) {
    s->p.seed = seed;
    lp_rng_seed(&s->rng, seed);
}

/* a ranks before b: higher logit, then lower id */
static bool before(const cand *a, const cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* min-heap on "before": the root is the worst of the kept set */
static void heap_sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && before(&h[w], &h[l])) w = l;
        if (r < n && before(&h[w], &h[r])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Move the best k of c[0..n) to c[0..k), sorted; c[k..n) keeps the rest.
 * A min-heap of size k: O(n log k). */
static void select_top(lp_sampler *s, int k) {
    if (k < s->n) {
        for (int i = k / 2 - 1; i >= 0; i--) heap_sift_down(s->c, k, i);
        for (int i = k; i < s->n; i++) {
            if (before(&s->c[i], &s->c[0])) {
                cand t = s->c[0];
                s->c[0] = s->c[i];
                s->c[i] = t;
                heap_sift_down(s->c, k, 0);
            }
        }
    }
    qsort(s->c, (size_t)(k < s->n ? k : s->n), sizeof *s->c, cmp_cand);
}

static void top_k(lp_sampler *s, int k) {
    if (k <= 0) return;
    if (k > s->n) k = s->n;
    if (!s->sorted) select_top(s, k);
    s->n = k;
    s->sorted = true;
}

/* p of each live candidate = softmax of the logits; returns false if none is finite. */
static bool softmax_cands(lp_sampler *s) {
    float max = -INFINITY;
    for (int i = 0; i < s->n; i++) max = s->c[i].logit > max ? s->c[i].logit : max;
    if (!(max > -INFINITY)) return false;
    double sum = 0.0;
    for (int i = 0; i < s->n; i++) {
        s->c[i].p = expf(s->c[i].logit - max);
        sum += s->c[i].p;
    }
    for (int i = 0; i < s->n; i++) s->c[i].p = (float)(s->c[i].p / sum);
    return true;
}

static void top_p(lp_sampler *s, float p, int min_keep) {
    if (p >= 1.0f || s->n <= 1) return;
    if (!softmax_cands(s)) return;
    if (!s->sorted) {
        // usually a few hundred tokens carry the mass: try those before sorting all
        const int guess = 256;
        bool done = false;
        if (s->n > 4 * guess) {
            select_top(s, guess);
            double mass = 0.0;
            for (int i = 0; i < guess; i++) mass += s->c[i].p;
            done = mass >= p && guess >= min_keep;
            if (done) s->n = guess;
        }
        if (!done) qsort(s->c, (size_t)s->n, sizeof *s->c, cmp_cand);
        s->sorted = true;
    }
    double cum = 0.0;
    for (int i = 0; i < s->n; i++) {
        cum += s->c[i].p;
        if (cum >= p && i + 1 >= min_keep) {
            s->n = i + 1;
            return;
        }
    }
}

static void temperature(lp_sampler *s, float temp) {
    if (temp <= 0.0f) {
        // only the best survives (the first in rank order)
        int best = 0;
        for (int i = 1; i < s->n; i++)
            if (before(&s->c[i], &s->c[best])) best = i;
        s->c[0] = s->c[best];
        s->n = s->n > 0 ? 1 : 0;
        return;
    }
    for (int i = 0; i < s->n; i++) s->c[i].logit /= temp;
}

/* Draw from softmax of the live candidates; one uniform per call. */
static int32_t dist(lp_sampler *s) {
    const double u = lp_rng_uniform(&s->rng);
    if (s->n == 0 || !softmax_cands(s)) return -1;
    double run = 0.0;
    int pick = -1;
    for (int i = 0; i < s->n; i++) {
        if (s->c[i].p <= 0.0f) continue;
        run += s->c[i].p;
        pick = i;
        if (run > u) break;
    }
    return pick < 0 ? -1 : s->c[pick].id;
}

int32_t lp_sampler_sample(lp_sampler *s, const float *logits) {
    s->n = s->n_vocab;
    s->sorted = false;
    for (int i = 0; i < s->n_vocab; i++) {
        s->c[i].id = i;
        s->c[i].logit = isnan(logits[i]) ? -INFINITY : logits[i];
        s->c[i].p = 0.0f;
    }
    top_k(s, s->p.top_k);
    top_p(s, s->p.top_p, s->p.min_keep);
    temperature(s, s->p.temp);
    int32_t tok = dist(s);
    s->n_out = tok < 0 ? 0 : s->n;
    for (int i = 0; i < s->n_out; i++) {
        s->out_id[i] = s->c[i].id;
        s->out_p[i] = s->c[i].p;
    }
    return tok;
}

int lp_sampler_last_candidates(const lp_sampler *s, const int32_t **ids, const float **probs) {
    if (ids) *ids = s->out_id;
    if (probs) *probs = s->out_p;
    return s->n_out;
}

int32_t lp_sample_greedy(const float *logits, int n) {
    int32_t best = -1;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (logits[i] > bv || (best < 0 && !isnan(logits[i]))) {
            best = i;
            bv = logits[i];
        }
    }
    return best;
}

// ----------------------------------------------------------------------------
// stop checker

struct lp_stop_checker {
    int32_t *eos;      // (n_eos)
    int n_eos;
    char **stops;      // (n_stops) NUL-terminated copies
    size_t *stop_len;  // (n_stops)
    int n_stops;
    size_t max_stop;   // longest stop string
    char *text;        // (cap) all pushed text, NUL-terminated
    size_t len, cap;
    size_t emitted;    // bytes of text already handed out
    lp_stop_reason done;
    int stop_index;
    size_t keep_len;
};

lp_stop_checker *lp_stop_new(const int32_t *eos_ids, int n_eos, const char *const *stops, int n_stops, lp_error *err) {
    if (n_eos < 0 || n_stops < 0 || (n_eos > 0 && !eos_ids) || (n_stops > 0 && !stops)) {
        lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_stop_new: bad arguments");
        return NULL;
    }
    lp_stop_checker *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->eos = calloc((size_t)n_eos + 1, sizeof *c->eos);
    c->stops = calloc((size_t)n_stops + 1, sizeof *c->stops);
    c->stop_len = calloc((size_t)n_stops + 1, sizeof *c->stop_len);
    c->cap = 64;
    c->text = malloc(c->cap);
    if (!c->eos || !c->stops || !c->stop_len || !c->text) goto nomem;
    if (n_eos > 0) memcpy(c->eos, eos_ids, (size_t)n_eos * sizeof *eos_ids);
    c->n_eos = n_eos;
    for (int i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0]) continue;
        size_t l = strlen(stops[i]);
        c->stops[c->n_stops] = malloc(l + 1);
        if (!c->stops[c->n_stops]) goto nomem;
        memcpy(c->stops[c->n_stops], stops[i], l + 1);
        c->stop_len[c->n_stops] = l;
        c->n_stops++;
        if (l > c->max_stop) c->max_stop = l;
    }
    lp_stop_reset(c);
    return c;
nomem:
    lp_stop_free(c);
    lp_fail(err, LOUPE_ERR_NOMEM, "lp_stop_new: out of memory");
    return NULL;
}

void lp_stop_free(lp_stop_checker *c) {
    if (!c) return;
    if (c->stops)
        for (int i = 0; i < c->n_stops; i++) free(c->stops[i]);
    free(c->stops);
    free(c->stop_len);
    free(c->eos);
    free(c->text);
    free(c);
}

void lp_stop_reset(lp_stop_checker *c) {
    c->len = 0;
    c->text[0] = '\0';
    c->emitted = 0;
    c->done = LP_STOP_NONE;
    c->stop_index = -1;
    c->keep_len = 0;
}

const char *lp_stop_text(const lp_stop_checker *c, size_t *len) {
    if (len) *len = c->len;
    return c->text;
}

static void result(lp_stop_checker *c, size_t emit_end, lp_stop_result *out) {
    out->reason = c->done;
    out->stop_index = c->stop_index;
    out->emit = c->text + c->emitted;
    out->emit_len = emit_end > c->emitted ? emit_end - c->emitted : 0;
    if (emit_end > c->emitted) c->emitted = emit_end;
    out->keep_len = c->keep_len;
}

/* Bytes at the end of text[0..n) that start a UTF-8 sequence not yet complete. */
static size_t utf8_incomplete_tail(const char *text, size_t n) {
    for (size_t back = 1; back <= 4 && back <= n; back++) {
        unsigned char b = (unsigned char)text[n - back];
        if ((b & 0xC0) == 0x80) continue; // continuation byte: keep looking for the lead
        size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
        return need > back ? back : 0;
    }
    return 0; // no lead byte within reach: malformed, do not hold anything
}

loupe_status lp_stop_push(lp_stop_checker *c, int32_t token, const char *piece, size_t len, lp_stop_result *out,
                          lp_error *err) {
    if (c->done != LP_STOP_NONE) {
        result(c, 0, out);
        return LOUPE_OK;
    }
    for (int i = 0; i < c->n_eos; i++) {
        if (c->eos[i] == token) {
            c->done = LP_STOP_EOS;
            c->keep_len = c->len;
            result(c, c->len, out);
            return LOUPE_OK;
        }
    }

    // append
    const size_t old_len = c->len;
    if (len > 0) {
        if (!piece) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_stop_push: NULL piece");
        if (len > SIZE_MAX - 1 - c->len) return lp_fail(err, LOUPE_ERR_NOMEM, "lp_stop_push: text too long");
        if (c->len + len + 1 > c->cap) {
            size_t cap = c->cap;
            while (cap < c->len + len + 1) cap = cap > SIZE_MAX / 2 ? c->len + len + 1 : cap * 2;
            char *t = realloc(c->text, cap);
            if (!t) return lp_fail(err, LOUPE_ERR_NOMEM, "lp_stop_push: out of memory");
            c->text = t;
            c->cap = cap;
        }
        memcpy(c->text + c->len, piece, len);
        c->len += len;
        c->text[c->len] = '\0';
    }

    // earliest stop string that ends in the new text
    size_t from = c->max_stop > 0 && old_len > c->max_stop - 1 ? old_len - (c->max_stop - 1) : 0;
    size_t best_pos = SIZE_MAX;
    int best = -1;
    for (int k = 0; k < c->n_stops; k++) {
        const size_t sl = c->stop_len[k];
        if (sl > c->len) continue;
        for (size_t p = from; p + sl <= c->len && p < best_pos; p++) {
            if (memcmp(c->text + p, c->stops[k], sl) == 0) {
                best_pos = p;
                best = k;
                break;
            }
        }
    }
    if (best >= 0) {
        c->done = LP_STOP_STRING;
        c->stop_index = best;
        c->keep_len = best_pos;
        result(c, best_pos, out);
        return LOUPE_OK;
    }

    // hold back the longest suffix that is a proper prefix of a stop string
    size_t hold = 0;
    for (int k = 0; k < c->n_stops; k++) {
        const size_t sl = c->stop_len[k];
        for (size_t h = sl - 1; h > hold; h--) {
            if (h <= c->len && memcmp(c->text + c->len - h, c->stops[k], h) == 0) {
                hold = h;
                break;
            }
        }
    }
    size_t safe = c->len - hold;
    safe -= utf8_incomplete_tail(c->text, safe);
    c->keep_len = c->len;
    result(c, safe, out);
    return LOUPE_OK;
}

void lp_stop_flush(lp_stop_checker *c, lp_stop_result *out) {
    if (c->done != LP_STOP_NONE) {
        result(c, 0, out);
        return;
    }
    c->keep_len = c->len;
    result(c, c->len, out);
}
