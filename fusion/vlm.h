/* fusion/vlm.h — a LLaVA-style vision-language model: one question about
 * one image, answered by one call.
 *
 *   lp_vlm *vlm = lp_vlm_load("model.gguf", "mmproj.gguf", NULL, &err);
 *   lp_vlm_ctx *ctx = lp_vlm_ctx_new(vlm, NULL, &err);
 *   lp_vlm_ask(vlm, ctx, &image, "What is in the picture?", NULL, on_text, user, &answer, &stats, &err);
 *
 * lp_vlm_ask: preprocess the image (LLaVA's PIL pad-to-square by default),
 * encode it (CLIP ViT + projector), render the chat template, tokenize and
 * splice the image rows in (fusion/prompt.h), prefill the whole prompt in
 * one decoder call (matrix-matrix passes), then decode one token at a time
 * with the sampler until an end-of-generation token, a template stop string,
 * the token limit or a full context.
 *
 * The model (lp_vlm: both mapped files, tokenizer, decoder and CLIP weights,
 * template) is read-only after load and may be shared by several threads,
 * each with its own lp_vlm_ctx (KV cache, thread pool, scratch). A ctx is
 * used by one thread at a time.
 *
 * CLIP defaults to the model's PyTorch semantics (LP_CLIP_QUIRKS_NONE); the
 * `llamacpp` parameter switches on every llama.cpp quirk and llama.cpp's own
 * preprocessing, for parity runs against llama.cpp (see vision/clip.h). */
#ifndef LP_VLM_H
#define LP_VLM_H

#include "../core/error.h"
#include "../language/sampling.h"
#include "../vision/image.h"
#include "../vision/preprocess.h"
#include "template.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lp_vlm lp_vlm;
typedef struct lp_vlm_ctx lp_vlm_ctx;

typedef struct lp_vlm_params {
    /* Chat template by name (fusion/template.h); NULL: recognise the
     * language model's tokenizer.chat_template, or vicuna (LLaVA-1.5, whose
     * GGUFs carry no template) when it has none. An unrecognised template
     * is an error that asks for a name. */
    const char *template_name;
    unsigned clip_quirks;    /* LP_CLIP_QUIRK_* bits; default LP_CLIP_QUIRKS_NONE */
    lp_prep_mode prep;       /* default LP_PREP_PAD_PIL */
    bool llamacpp;           /* overrides the two above: LP_CLIP_QUIRKS_LLAMACPP + LP_PREP_LLAMACPP */
} lp_vlm_params;

lp_vlm_params lp_vlm_default_params(void);

/* Open both files, build tokenizer, decoder and CLIP, choose the template.
 * Errors name the file and the reason; a projector whose output width is
 * not the language model's embedding width is LOUPE_ERR_MISMATCH naming
 * both files and both widths. params may be NULL (defaults). */
lp_vlm *lp_vlm_load(const char *lm_path, const char *mmproj_path, const lp_vlm_params *params, lp_error *err);
void lp_vlm_free(lp_vlm *vlm);

const lp_template *lp_vlm_template(const lp_vlm *vlm);
int lp_vlm_n_image_tokens(const lp_vlm *vlm); /* positions one image takes  */
int lp_vlm_n_ctx_train(const lp_vlm *vlm);
double lp_vlm_load_ms(const lp_vlm *vlm);

typedef struct lp_vlm_ctx_params {
    /* KV-cache capacity in positions. 0: sized per question to prompt +
     * n_predict, at most the model's training context (the cache is then
     * reallocated only when a question needs more than the last one). */
    int n_ctx;
    int n_threads;  /* <= 0: all online CPUs */
    int n_batch;    /* prefill chunk, <= 0: decoder default */
    bool kv_f16;    /* round the KV cache through f16 like llama.cpp's default cache */
} lp_vlm_ctx_params;

lp_vlm_ctx_params lp_vlm_ctx_default_params(void);

lp_vlm_ctx *lp_vlm_ctx_new(const lp_vlm *vlm, const lp_vlm_ctx_params *params, lp_error *err);
void lp_vlm_ctx_free(lp_vlm_ctx *ctx);

typedef struct lp_vlm_gen_params {
    const char *system;          /* NULL: the template's default; "": none */
    int n_predict;               /* most new tokens; < 0: until a stop or a full context. default 256 */
    lp_sampler_params sampling;  /* default greedy: temp 0, top_k 40, top_p 0.95, seed 0 */
} lp_vlm_gen_params;

lp_vlm_gen_params lp_vlm_gen_default_params(void);

typedef enum lp_vlm_stop {
    LP_VLM_STOP_NONE = 0,
    LP_VLM_STOP_EOG,          /* an end-of-generation token */
    LP_VLM_STOP_STRING,       /* a template stop string */
    LP_VLM_STOP_MAX_TOKENS,   /* n_predict reached */
    LP_VLM_STOP_CONTEXT,      /* the KV cache is full */
    LP_VLM_STOP_CANCELLED     /* the text callback asked to stop */
} lp_vlm_stop;

const char *lp_vlm_stop_name(lp_vlm_stop s); /* "eog", "stop string", ... */

typedef struct lp_vlm_stats {
    double load_ms;            /* lp_vlm_load, both files */
    double encode_ms;          /* preprocess + ViT + projector */
    int n_image_tokens;
    int n_text_tokens;
    int prefill_tokens;        /* positions prefilled: text + image */
    double prefill_ms;
    double prefill_tok_s;
    int decode_tokens;         /* tokens sampled (the stop token included) */
    double decode_ms;
    double decode_tok_s;
    lp_vlm_stop stop;
    int n_ctx;                 /* KV-cache capacity used */
    long peak_rss_kb;          /* getrusage ru_maxrss of the process */
} lp_vlm_stats;

/* Called with each new piece of the answer, always whole UTF-8 characters
 * and never part of a stop string; the pieces concatenate to the answer.
 * Return nonzero to stop: lp_vlm_ask then returns LOUPE_ERR_CANCELLED. */
typedef int (*lp_vlm_text_fn)(void *user, const char *text, size_t len);

/* Answer one question about one image. gen may be NULL (defaults); on_text
 * may be NULL. *answer (malloc'd, NUL-terminated) is set on success and
 * NULL on any error; stats, if not NULL, is filled as far as the run got,
 * also on error. The ctx must have been made for this vlm. */
loupe_status lp_vlm_ask(const lp_vlm *vlm, lp_vlm_ctx *ctx, const lp_image *image, const char *question,
                        const lp_vlm_gen_params *gen, lp_vlm_text_fn on_text, void *user, char **answer,
                        lp_vlm_stats *stats, lp_error *err);

#endif
