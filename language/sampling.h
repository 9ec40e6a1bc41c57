/* language/sampling.h — choosing the next token, and knowing when to stop.
 *
 * Sampler chain, in the order of llama.cpp's common sampler (common/sampling.cpp
 * with the default sampler list, penalties/DRY/typical/min-p/XTC left out):
 *
 *   top-k        keep the k highest logits (k <= 0: off)
 *   top-p        keep the smallest prefix, by descending probability, whose
 *                probability mass (softmax of the logits at that point) is
 *                >= p, and at least min_keep tokens (p >= 1: off)
 *   temperature  divide the logits by temp; temp <= 0 keeps only the argmax
 *   dist         draw from softmax of what is left
 *
 * temp <= 0 is therefore greedy decoding; it still draws one random number
 * per token, as llama.cpp's chain does, so the PRNG stream does not depend on
 * the temperature. Ties between equal logits go to the lower token id.
 *
 * PRNG: PCG32 (PCG-XSH-RR: 64-bit LCG state, 32-bit output; O'Neill 2014)
 * with multiplier 6364136223846793005 and the fixed odd increment
 * 1442695040888963407. Seeding follows the reference pcg32_srandom: state = 0,
 * step, state += seed, step. A uniform double in [0, 1) takes 53 bits from
 * two outputs. A seed gives the same sequence on every platform (not
 * llama.cpp's mt19937 sequence, so sampled tokens differ from llama.cpp's for
 * the same seed; the distribution sampled from is the same). */
#ifndef LP_SAMPLING_H
#define LP_SAMPLING_H

#include "../core/error.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- PRNG ---- */
typedef struct lp_rng {
    uint64_t state;
    uint64_t inc;
} lp_rng;

void lp_rng_seed(lp_rng *r, uint64_t seed);
uint32_t lp_rng_u32(lp_rng *r);
double lp_rng_uniform(lp_rng *r); /* [0, 1) */

/* ---- sampler ---- */
typedef struct lp_sampler_params {
    int top_k;        /* <= 0: off. llama.cpp default 40 */
    float top_p;      /* >= 1: off. default 0.95 */
    float temp;       /* <= 0: greedy. default 0.8 */
    int min_keep;     /* top-p keeps at least this many (>= 1 in effect). default 0 */
    uint64_t seed;
} lp_sampler_params;

/* llama.cpp's defaults: top_k 40, top_p 0.95, temp 0.8, min_keep 0, seed 0. */
lp_sampler_params lp_sampler_default_params(void);

typedef struct lp_sampler lp_sampler;

/* The candidate buffer for n_vocab tokens is allocated here, once. */
lp_sampler *lp_sampler_new(const lp_sampler_params *p, int n_vocab, lp_error *err);
void lp_sampler_free(lp_sampler *s);
/* Restart the PRNG from seed. */
void lp_sampler_reseed(lp_sampler *s, uint64_t seed);

/* Next token id from logits (n_vocab); logits are not modified. Returns -1
 * only if every logit is NaN or -inf. */
int32_t lp_sampler_sample(lp_sampler *s, const float *logits);

/* The candidates that survived the last lp_sampler_sample (after top-k,
 * top-p and temperature), with their final probabilities, sorted by
 * descending probability when top-k or top-p ran. For tests and tools. */
int lp_sampler_last_candidates(const lp_sampler *s, const int32_t **ids, const float **probs);

/* argmax, lowest id on ties; -1 if n <= 0. */
int32_t lp_sample_greedy(const float *logits, int n);

/* ---- stop checker ----
 * Feed every generated token (its id and its decoded text piece). Stops on
 * any EOS id, or when the generated text contains one of the stop strings,
 * also when the string is spread over several tokens. While no stop has
 * happened, text that could still turn out to be the start of a stop string
 * (and an incomplete UTF-8 sequence at the end) is held back, so a stream
 * never shows a stop string or half a character. */
typedef enum lp_stop_reason {
    LP_STOP_NONE = 0,
    LP_STOP_EOS = 1,    /* the token is an EOS id; its text is not added */
    LP_STOP_STRING = 2  /* a stop string occurred; the text before it is kept */
} lp_stop_reason;

typedef struct lp_stop_result {
    lp_stop_reason reason;
    int stop_index;    /* which stop string (LP_STOP_STRING), else -1 */
    const char *emit;  /* new text safe to show now (valid until the next call) */
    size_t emit_len;
    size_t keep_len;   /* bytes of lp_stop_text() that are the final answer so far */
} lp_stop_result;

typedef struct lp_stop_checker lp_stop_checker;

/* Copies eos ids and stop strings (empty strings are ignored). */
lp_stop_checker *lp_stop_new(const int32_t *eos_ids, int n_eos, const char *const *stops, int n_stops, lp_error *err);
void lp_stop_free(lp_stop_checker *c);
void lp_stop_reset(lp_stop_checker *c);

/* Add one token. After a stop, further pushes are ignored and return the
 * same reason with nothing to emit. NOMEM is the only failure. */
loupe_status lp_stop_push(lp_stop_checker *c, int32_t token, const char *piece, size_t len, lp_stop_result *out,
                          lp_error *err);
/* End of generation without a stop (e.g. a token limit): release whatever
 * is held back. */
void lp_stop_flush(lp_stop_checker *c, lp_stop_result *out);
/* All text pushed so far (NUL-terminated); keep_len bytes of it are the answer. */
const char *lp_stop_text(const lp_stop_checker *c, size_t *len);

#endif
