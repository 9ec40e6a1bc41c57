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
 *   - Every object a loupe_*_new/load/from_* call hands out is freed by its
 *     own loupe_*_free (NULL is accepted and ignored). Strings and arrays an
 *     accessor returns belong to the object they came from and live as long
 *     as it does.
 *   - Nothing in the library is global and mutable except the log callback
 *     and the per-thread loupe_last_error() text.
 *
 * Quick start (error handling shortened):
 *
 *   loupe_model *m;
 *   char err[256];
 *   loupe_model_params mp = loupe_model_default_params();
 *   if (loupe_model_load("model.gguf", "mmproj.gguf", &mp, &m, err, sizeof err))
 *       { fprintf(stderr, "%s\n", err); return 1; }
 *   loupe_context_params cp = loupe_context_default_params();
 *   loupe_context *ctx;
 *   loupe_context_new(m, &cp, &ctx);
 *   loupe_image *img;
 *   loupe_image_from_file("photo.jpg", &img, err, sizeof err);
 *   loupe_answer *a;
 *   if (loupe_ground(ctx, img, "the red mug", &a) == LOUPE_OK) {
 *       for (int i = 0; i < loupe_answer_n_boxes(a); i++) {
 *           const loupe_box *b = loupe_answer_box(a, i);
 *           printf("%s: %.0f %.0f %.0f %.0f\n", b->label, b->x1, b->y1, b->x2, b->y2);
 *       }
 *       loupe_answer_free(a);
 *   } else fprintf(stderr, "%s\n", loupe_context_last_error(ctx));
 *   loupe_image_free(img);
 *   loupe_context_free(ctx);
 *   loupe_model_free(m);
 *
 * Threads: a loupe_model is read-only once loaded and may be shared by any
 * number of threads. A loupe_context (KV cache, thread pool, scratch, last
 * error) belongs to one thread at a time; give each thread its own. Images
 * and answers are plain data: read them from any thread, free them once.
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

/* ======================================================================
 * Models
 * ====================================================================== */

typedef struct loupe_model loupe_model;     /* opaque: loupe_model_load / loupe_model_free */
typedef struct loupe_context loupe_context; /* opaque: loupe_context_new / loupe_context_free */
typedef struct loupe_image loupe_image;     /* opaque: loupe_image_from_* / loupe_image_free */
typedef struct loupe_answer loupe_answer;   /* opaque: loupe_ask / ground / refer, loupe_answer_free */

/* How an image is turned into the square model input. */
typedef enum loupe_prep {
    /* From the mmproj's metadata key "clip.vision.image_aspect_ratio":
     * "pad" -> LOUPE_PREP_PAD, "squash" or "squeeze" -> LOUPE_PREP_SQUASH;
     * without the key: LOUPE_PREP_PAD (LLaVA-1.5's choice). Any other value
     * is LOUPE_ERR_UNSUPPORTED naming the mmproj. */
    LOUPE_PREP_AUTO = 0,
    LOUPE_PREP_PAD = 1,      /* LLaVA: pad to a square (mean colour), then resize */
    LOUPE_PREP_SQUASH = 2,   /* Ferret: stretch to the square, aspect not kept */
    LOUPE_PREP_LLAMACPP = 3  /* llama.cpp's resize-then-letterbox, bit for bit */
} loupe_prep;

typedef struct loupe_model_params {
    loupe_prep prep;           /* default LOUPE_PREP_AUTO */
    /* Nonzero: reproduce llama.cpp's numbers, its LLaVA-graph bugs included
     * (its preprocessing + CLIP quirks; overrides prep). Default 0. */
    int llamacpp_compat;
    /* Chat template by name: "vicuna", "chatml", "llama2", "mistral",
     * "llama3". NULL (default): recognised from the model's
     * tokenizer.chat_template, vicuna when it has none. */
    const char *template_name;
    /* How boxes are written in the model's answers (and how loupe_ground
     * asks): "ferret", "shikra", "internvl", "qwen2-vl", "qwen2.5-vl",
     * "kosmos-2", "florence-2", "paligemma". NULL (default): the model
     * family's, from the mmproj's clip.projector_type: "internvl" for
     * InternVL2.5/3 files, "ferret" for the LLaVA-style ones (llama/qwen2
     * decoder + mlp projector, loupe's own Ferret-style model: text boxes
     * "[x1, y1, x2, y2]" on a 0..999 grid). An unknown name is
     * LOUPE_ERR_INVALID_ARG. */
    const char *box_format;
    /* ---- flash mode (Apple's "LLM in a flash"; README "Flash mode") ----
     * memory_budget > 0: the language model's weights stay in its file and
     * the decoder keeps at most this many bytes of them in DRAM (embeddings,
     * attention, norms, predictors, the FFN neuron cache and I/O buffers;
     * KV cache and activations are not weights and are not counted). The
     * file must be in the flash layout (`loupe convert --flash`); a budget
     * below what the model needs is LOUPE_ERR_LIMIT with the minimum in the
     * message. 0 (default): resident, memory-mapped. */
    size_t memory_budget;
    int flash_window;       /* keep FFN neurons used by the last N tokens (default 5; 0: none) */
    int flash_io_threads;   /* parallel reads (default 8) */
    /* Flash-layout files (resident or flash mode): the fraction of FFN
     * neurons each generated token computes, picked by the file's sparsity
     * predictor (top-k). 1 (default): all of them — dense, the same logits
     * as running the file resident. The prompt is always computed dense. */
    float ffn_keep;
    /* > 0: instead of top-k, the neurons whose predicted |silu(gate)| (svd
     * predictor) is at least this. Default 0. */
    float ffn_threshold;
    /* Qwen2.5-VL: the fewest and most tokens an image may take (llama.cpp's
     * --image-min-tokens / --image-max-tokens); the image is resized to fit.
     * 0 (default): 1024 and 2048, the range the Qwen maintainers recommend
     * for grounding (with llamacpp_compat: llama.cpp's 8 and 4096). Other
     * families ignore them. */
    int image_min_tokens, image_max_tokens;
} loupe_model_params;

loupe_model_params loupe_model_default_params(void);

/* Load a language-model GGUF and its vision projector ("mmproj") GGUF, both
 * in llama.cpp's conventions. params may be NULL (defaults). On success *out
 * is the model; on failure *out is NULL, the returned status says what kind
 * of failure, and the text (naming the file and the reason, e.g.
 * "x.gguf: not a GGUF file (bad magic)") is written to err (err_size bytes,
 * NUL-terminated, truncated to fit; err may be NULL) and is also what
 * loupe_last_error() returns afterwards on this thread. A projector whose
 * output width is not the model's embedding width (the files are not a
 * pair) is LOUPE_ERR_MISMATCH. The files are memory-mapped and stay open
 * until loupe_model_free. */
loupe_status loupe_model_load(const char *model_path, const char *mmproj_path, const loupe_model_params *params,
                              loupe_model **out, char *err, size_t err_size);
/* Only after every context made for it is freed. */
void loupe_model_free(loupe_model *model);

/* Text of the last failed loupe_model_load, loupe_context_new or
 * loupe_image_from_* call ON THIS THREAD ("" if none). Thread-local: calls
 * on other threads never change it. Valid until the next such call on this
 * thread. */
const char *loupe_last_error(void);

typedef enum loupe_file {
    LOUPE_FILE_MODEL = 0,  /* the language model */
    LOUPE_FILE_MMPROJ = 1  /* the vision projector */
} loupe_file;

/* The path the file was loaded from. */
const char *loupe_model_path(const loupe_model *model, loupe_file which);
/* The file's general.name metadata, or "" when it has none. */
const char *loupe_model_name(const loupe_model *model, loupe_file which);
const char *loupe_model_template(const loupe_model *model);   /* e.g. "vicuna" */
const char *loupe_model_box_format(const loupe_model *model); /* e.g. "ferret" */
/* The model family, from the mmproj's clip.projector_type: "llava" (LLaVA-1.5,
 * the shipped model), "internvl" or "qwen2.5-vl"; "ferret" for a llava-style
 * pair converted from an apple/ml-ferret checkpoint (its region sampler reads
 * the feature map transposed, clip.vision.region.ferret_transpose). */
const char *loupe_model_family(const loupe_model *model);
loupe_prep loupe_model_prep(const loupe_model *model);        /* never AUTO: what was chosen */
/* Nonzero when the model can take regions (loupe_refer): the mmproj has a
 * region sampler and the vocabulary a "<region_fea>" token. */
int loupe_model_can_refer(const loupe_model *model);
double loupe_model_load_ms(const loupe_model *model);
/* memory_budget as loaded (0: resident). */
size_t loupe_model_memory_budget(const loupe_model *model);

/* ======================================================================
 * Contexts
 * ====================================================================== */

/* Stages of one ask, in order, as the progress callback sees them. */
typedef enum loupe_stage {
    LOUPE_STAGE_ENCODE = 0,  /* image encode: done 0 of 1 before, 1 of 1 after     */
    LOUPE_STAGE_PREFILL = 1, /* prompt prefill: 0 of n before, n of n after          */
    LOUPE_STAGE_DECODE = 2   /* after each generated token: k of max_tokens (total
                                -1 when max_tokens < 0)                              */
} loupe_stage;

/* Progress: called on the asking thread. Return nonzero to cancel: the call
 * then returns LOUPE_ERR_CANCELLED and no answer. */
typedef int (*loupe_progress_fn)(void *user, loupe_stage stage, int done, int total);
/* Streaming: each new piece of the answer text as it is generated (whole
 * UTF-8 characters, never part of a stop string; the pieces concatenate to
 * loupe_answer_text). text is not NUL-terminated. Return nonzero to cancel
 * (LOUPE_ERR_CANCELLED). */
typedef int (*loupe_text_fn)(void *user, const char *text, size_t len);

typedef struct loupe_context_params {
    int n_threads;            /* <= 0 (default): all online CPUs */
    /* KV-cache positions. 0 (default): sized per question to prompt +
     * max_tokens, at most the model's training context. */
    int n_ctx;
    uint64_t seed;            /* sampling seed, default 0 */
    float temperature;        /* 0 (default): greedy, the same answer every time */
    int top_k;                /* default 40, 0 = off (only with temperature > 0) */
    float top_p;              /* default 0.95, 1 = off */
    int max_tokens;           /* most generated tokens, default 256; < 0: no limit */
    /* System prompt; NULL (default): the model family's (InternVL: its own
     * Chinese system message, as its conversation template; Ferret: its
     * ferret_v1 system message with "Image size: 1000x1000"), else the
     * template's; "": none. Copied. */
    const char *system_prompt;
    loupe_progress_fn progress; /* may be NULL (default) */
    void *progress_user;
    loupe_text_fn on_text;      /* may be NULL (default) */
    void *on_text_user;
} loupe_context_params;

loupe_context_params loupe_context_default_params(void);

/* A context for asking questions of `model` (several may share one model).
 * params may be NULL (defaults). On failure *out is NULL and the text is in
 * loupe_last_error(). */
loupe_status loupe_context_new(const loupe_model *model, const loupe_context_params *params, loupe_context **out);
void loupe_context_free(loupe_context *ctx);
/* Text of the last failed call on ctx ("" if none): which file or argument,
 * and why. Valid until the next call on ctx. */
const char *loupe_context_last_error(const loupe_context *ctx);
/* The model's memory_budget (loupe_model_params), 0 when resident. */
size_t loupe_context_memory_budget(const loupe_context *ctx);

/* ======================================================================
 * Images: 8-bit RGB, row-major, top-left origin.
 * ====================================================================== */

/* Decode JPEG, PNG, BMP, GIF (first frame) or TGA. Grey and alpha are
 * converted to RGB (alpha dropped). Images over 16384 px a side or 64 Mpx
 * are refused with LOUPE_ERR_LIMIT. err as for loupe_model_load. */
loupe_status loupe_image_from_file(const char *path, loupe_image **out, char *err, size_t err_size);
/* Copy pixels from a caller buffer: h rows of w RGB triples, `stride` bytes
 * from one row to the next (>= w*3; 0 means w*3). Errors in
 * loupe_last_error(). */
loupe_status loupe_image_from_rgb(const uint8_t *rgb, int w, int h, size_t stride, loupe_image **out);
void loupe_image_free(loupe_image *img);
int loupe_image_width(const loupe_image *img);
int loupe_image_height(const loupe_image *img);
/* The pixels: height rows of width*3 bytes, no padding between rows. */
const uint8_t *loupe_image_rgb(const loupe_image *img);
/* Write as PNG. err as for loupe_model_load. */
loupe_status loupe_image_write_png(const loupe_image *img, const char *path, char *err, size_t err_size);

/* ======================================================================
 * Asking
 * ====================================================================== */

/* A box in pixels of the ORIGINAL image, pixel edges: the whole image is
 * (0, 0, width, height); x1 <= x2, y1 <= y2, always inside the image. */
typedef struct loupe_box {
    float x1, y1, x2, y2;
    const char *label;  /* the phrase the answer attaches to the box; never NULL, may be "" */
} loupe_box;

/* Box text the parser skipped (malformed, out of the grid, inverted, in
 * the padding, ...): where it starts in the answer and why. loupe never
 * invents a box from such text. */
typedef struct loupe_box_issue {
    int offset;          /* byte offset in loupe_answer_text */
    const char *reason;  /* one line, e.g. "x2 < x1 (12 < 40)" */
} loupe_box_issue;

typedef struct loupe_timings {
    double load_ms;        /* loading the model (both files), once per model */
    double encode_ms;      /* preprocessing + ViT + projector (+ region sampler) */
    double prefill_ms;
    double decode_ms;
    int image_tokens;      /* positions the image takes */
    int prompt_tokens;     /* positions prefilled by this ask: text + image, less reused_tokens */
    /* Positions whose decoder cache was kept from the previous ask on this
     * context because it was about the same image (same pixels) with the
     * same text before the image; the image encoding is reused then too and
     * encode_ms is ~0. The answer is exactly what a fresh context gives. */
    int reused_tokens;
    int generated_tokens;  /* tokens sampled, the stop token included */
    double prefill_tok_s;
    double decode_tok_s;
    long long peak_rss_bytes; /* peak resident memory of the process so far */
    /* Weight reads from storage during this ask (flash mode; 0 otherwise). */
    long long weight_bytes_read;
    long long weight_reads;
    double io_ms;          /* time spent waiting for them */
} loupe_timings;

/* What one decoder pass of the answer read and computed (flash mode, and
 * flash-layout files run resident). The counters belong to the model: when
 * several contexts decode on one flash model at once (they take turns pass
 * by pass), a pass's figures may include another context's reads. */
typedef struct loupe_token_stats {
    long long bytes_read;   /* weight bytes read from storage */
    long long reads;        /* read requests issued */
    double hit_rate;        /* FFN bundles served by the neuron cache / bundles needed (1 if none) */
    double active_fraction; /* FFN neurons computed / neurons of the dense model (1 if no FFN sparsity) */
    double io_ms;           /* waiting for reads */
    double compute_ms;      /* the rest of the pass */
} loupe_token_stats;

/* Ask a question about an image. On success *out is the answer (free it
 * with loupe_answer_free); on failure *out is NULL and the text is in
 * loupe_context_last_error(ctx). Greedy by default: the same question gives
 * the same answer. The boxes of the answer are parsed with the model's box
 * format and mapped back through the preprocessing to original pixels. */
loupe_status loupe_ask(loupe_context *ctx, const loupe_image *image, const char *question, loupe_answer **out);

/* Grounding: where is `phrase`? Asks the box format's grounding question —
 * Ferret: "What is the location of <phrase> in the image?" — and returns
 * its boxes. Boxes the answer leaves unlabelled get the phrase as label. */
loupe_status loupe_ground(loupe_context *ctx, const loupe_image *image, const char *phrase, loupe_answer **out);

/* A region of an image: a box or a mask. */
typedef enum loupe_region_kind {
    LOUPE_REGION_BOX = 0,
    LOUPE_REGION_MASK = 1
} loupe_region_kind;

typedef struct loupe_region {
    loupe_region_kind kind;
    /* BOX: x1, y1, x2, y2 in pixels of the original image, pixel edges (the
     * whole image is 0, 0, W, H), x1 < x2, y1 < y2; clipped to the image. */
    double box[4];
    /* MASK: mask_w × mask_h bytes, row-major, nonzero = inside; must be the
     * image's exact size. */
    const uint8_t *mask;
    int mask_w, mask_h;
} loupe_region;

/* Referring: what is in this region? Asks "What is in the region <region>?"
 * (the phrasing loupe's Ferret-style model is trained on), where <region>
 * becomes "[x1, y1, x2, y2] <region_fea>" (0..999 over the original image;
 * a mask gives its bounding box) and the <region_fea> token carries the
 * region sampler's embedding of the region. A model without a region
 * sampler or "<region_fea>" token (loupe_model_can_refer() == 0) gives
 * LOUPE_ERR_UNSUPPORTED; a bad region LOUPE_ERR_INVALID_ARG. */
loupe_status loupe_refer(loupe_context *ctx, const loupe_image *image, const loupe_region *region,
                         loupe_answer **out);

/* The general form: each "<region>" in the question is replaced by the next
 * region's text (one placeholder per region), or, without placeholders,
 * the regions are appended in order. n_regions 0 is loupe_ask; at most 64. */
loupe_status loupe_ask_regions(loupe_context *ctx, const loupe_image *image, const char *question,
                               const loupe_region *regions, int n_regions, loupe_answer **out);

/* Parse `text` as this model's answer about `image` (same box format and
 * geometry as loupe_ask): for answers recorded earlier, evaluation, tests.
 * Timings are zero, the question "". err as for loupe_model_load. */
loupe_status loupe_answer_parse(const loupe_model *model, const loupe_image *image, const char *text,
                                loupe_answer **out, char *err, size_t err_size);

void loupe_answer_free(loupe_answer *answer);
const char *loupe_answer_text(const loupe_answer *answer);     /* the generated text */
/* The question as the model saw it (region text substituted). */
const char *loupe_answer_question(const loupe_answer *answer);
int loupe_answer_n_boxes(const loupe_answer *answer);
const loupe_box *loupe_answer_box(const loupe_answer *answer, int i); /* NULL when out of range */
int loupe_answer_n_issues(const loupe_answer *answer);
const loupe_box_issue *loupe_answer_issue(const loupe_answer *answer, int i); /* NULL when out of range */
const loupe_timings *loupe_answer_timings(const loupe_answer *answer);
/* Per decode pass (each generated token but the last is run through the
 * decoder once), in order; *n gets the count. NULL and *n = 0 if none. The
 * prompt's passes together are in *prefill when prefill is not NULL. */
const loupe_token_stats *loupe_answer_token_stats(const loupe_answer *answer, int *n, loupe_token_stats *prefill);
/* Why generation stopped: "end of generation", "stop string", "token
 * limit", "context full". */
const char *loupe_answer_stop_reason(const loupe_answer *answer);

/* Draw the answer's boxes onto img (in place): each box in its own colour
 * from a fixed palette of 10 high-contrast colours (box i gets colour
 * i % 10), a 2 px outline (3 px when the shorter side is 600 px or more)
 * inside a 1 px halo (black around light colours, white around dark ones)
 * so it reads on any background, and a filled tag with "N label" above its
 * top-left corner (tags are drawn after every outline). img must have the size of the image that was asked
 * about. */
loupe_status loupe_image_draw_answer(loupe_image *img, const loupe_answer *answer);

#ifdef __cplusplus
}
#endif
#endif /* LOUPE_H */
