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
 * preprocessing, for parity runs against llama.cpp (see vision/clip.h).
 *
 * Regions (Ferret's referring input, lp_vlm_ask_regions): when the mmproj
 * carries a region sampler (mm.region.* tensors, fusion/region_sampler.h) a
 * question may point at parts of the image, each a box or a mask:
 *
 *   lp_vlm_region r = {.kind = LP_VLM_REGION_BOX, .box = {0, 0, 150, 100}};
 *   lp_vlm_ask_regions(vlm, ctx, &image, "What is <region>?", &r, 1, ...);
 *   -> on a 300×100 image the user turn reads
 *      "What is [0, 0, 500, 999] <region_fea>?" and the <region_fea>
 *      token's embedding is replaced by the sampler's output.
 *
 * Region text. Each region becomes Ferret's "[x1, y1, x2, y2] <region_fea>"
 * (lp_region_format: int(v · 1000 / size) clipped to 0..999). The
 * coordinates are ALWAYS relative to the ORIGINAL image (x over its width, y
 * over its height), whatever the preprocessing. Ferret squeezes the image to
 * S×S, so for Ferret this is also relative to the model input. For pad-mode
 * (LLaVA expand2square) and llama.cpp-mode (letterbox) models the text still
 * describes the original image, not the padded square: the model is told
 * where the region is in the photo, while the region EMBEDDING is taken from
 * the right place of the padded feature map (below). A model trained on
 * padded-square coordinates would need its own text; loupe has none such.
 *
 * Where the text goes: every "<region>" placeholder in the question is
 * replaced by the text of the next region, in order (the number of
 * placeholders must then equal the number of regions); a question without
 * placeholders gets " [x1, y1, x2, y2] <region_fea>" appended for each
 * region, in order ("What is this?" -> "What is this? [..] <region_fea>").
 * Without regions the question is used as it is.
 *
 * Region geometry. A BOX is (x1, y1, x2, y2) in original-image pixels,
 * pixel EDGES: the whole image is (0, 0, W, H); x1 < x2 and y1 < y2. It is
 * clipped to the image; a box with nothing left after clipping (no overlap
 * of positive area with the image) is LOUPE_ERR_INVALID_ARG. A MASK is
 * W × H bytes, row-major, nonzero = inside, exactly the image's size (no
 * resizing: a mask of another size is LOUPE_ERR_INVALID_ARG, as is an empty
 * one); its text box is its pixel-edge bounding box (min x, min y, max x + 1,
 * max y + 1).
 * The sampler's points live in [0, 1] coordinates of the ViT feature map,
 * which covers the whole S×S model input — the PADDED square in pad mode
 * and llama.cpp mode. An original pixel coordinate x maps to
 *   u = (x · scale_x + off_x) / (n_side · P)      (likewise v with y)
 * with scale/off from lp_clip_preprocess's geometry (vision/preprocess.h)
 * and n_side · P the input pixels the patch grid covers (= S for every real
 * model). Squeeze: u = x / W, exactly Ferret's. Pad (LLaVA): a 300×100
 * image sits at rows 100..200 of a 300×300 square, so the box
 * (0, 0, 150, 100) becomes (0, 1/3, 1/2, 2/3). A box is mapped corner by
 * corner and its points are drawn in the mapped box; a mask's points are
 * drawn from the mask (pixel (x, y) -> (x / W, y / H), Ferret's rule) and
 * mapped point by point. Points: lp_region_sample_points with the fixed seed
 * LP_VLM_REGION_SEED, so one region always gives the same embedding. The
 * feature map is lp_clip_encode_ex's patch features (before the projector);
 * lp_region_sampler_forward gives one embedding per region, spliced at its
 * <region_fea> token (lp_prompt_splice_marker).
 *
 * Requirements, checked in this order when regions are given:
 * LOUPE_ERR_UNSUPPORTED naming the mmproj when it has no sampler;
 * LOUPE_ERR_UNSUPPORTED "model has no <region_fea> token" naming the
 * language model when its vocabulary lacks "<region_fea>" as one control or
 * user-defined token; LOUPE_ERR_INVALID_ARG for a bad region or placeholder
 * count. At load, a sampler whose input width is not the CLIP feature width,
 * or whose output width is not the language model's embedding width, is
 * LOUPE_ERR_MISMATCH naming the file and both widths. */
#ifndef LP_VLM_H
#define LP_VLM_H

#include "../core/error.h"
#include "../language/decoder.h"
#include "../language/flash.h"
#include "../language/sampling.h"
#include "../vision/image.h"
#include "../vision/preprocess.h"
#include "region_sampler.h"
#include "template.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lp_vlm lp_vlm;
typedef struct lp_vlm_ctx lp_vlm_ctx;

/* Model families, told apart by the mmproj's clip.projector_type:
 *   llava     "mlp" / "linear": one S×S image (LLaVA-1.5, Ferret, loupe's
 *             tiny model), the region sampler when the mmproj has one.
 *   internvl  "internvl": dynamic tiles (vision/tiles.h), each tile's
 *             pixel-shuffled tokens in tile order, the whole image wrapped
 *             in "<img>" … "</img>" text as InternVL and llama.cpp do; the
 *             default system text is InternVL's own (LP_INTERNVL_SYSTEM).
 *             Boxes: "<box>[[x1, y1, x2, y2]]</box>", 0..1000 of the whole
 *             image. Tiling follows the reference unless `llamacpp`.
 *   qwen2.5-vl "qwen2.5vl_merger" (also "qwen2vl_merger", "qwen2.5o"): one
 *             image smart-resized to multiples of 28 (vision/qwen_vit.h),
 *             wrapped in "<|vision_start|>" … "<|vision_end|>"; the language
 *             model must be general.architecture "qwen2vl" (M-RoPE): image
 *             token (row y, column x) of an image starting at position p0
 *             gets ids (p0, p0 + y, p0 + x, 0), the text after it starts at
 *             p0 + max(nx, ny) (language/decoder.h). Image tokens: 1024..2048
 *             by default (what the Qwen maintainers recommend for
 *             grounding; llama.cpp mode: llama.cpp's 8..4096), changed by
 *             image_min/max_tokens. Boxes: JSON "bbox_2d" in pixels of the
 *             resized input, mapped back through its geometry. */
typedef enum lp_vlm_family {
    LP_VLM_LLAVA = 0,
    LP_VLM_INTERNVL = 1,
    LP_VLM_QWEN25VL = 2,
    /* ferret: a llava-family pair whose region sampler reads the feature map
     * transposed (clip.vision.region.ferret_transpose, what `loupe convert
     * --from-hf` writes for apple/ml-ferret checkpoints): Ferret's own
     * system text (LP_FERRET_SYSTEM) by default */
    LP_VLM_FERRET = 3
} lp_vlm_family;

/* Ferret's system message (ferret/conversation.py, ferret_conv_vicuna_v1;
 * its trailing space and the template's " " separator give two spaces
 * before "USER:", as in Ferret's own prompts). */
#define LP_FERRET_SYSTEM                                                                              \
    "A chat between a human and an AI that understands visuals. In images, [x, y] denotes points: "   \
    "top-left [0, 0], bottom-right [width-1, height-1]. Increasing x moves right; y moves down. "     \
    "Bounding box: [x1, y1, x2, y2]. Image size: 1000x1000. Follow instructions. "

/* Qwen2.5-VL grounding defaults (image tokens). */
#define LP_QWEN_GROUND_MIN_TOKENS 1024
#define LP_QWEN_GROUND_MAX_TOKENS 2048

/* InternVL2.5/3's system message (its conversation template "internvl2_5"). */
#define LP_INTERNVL_SYSTEM \
    "\xe4\xbd\xa0\xe6\x98\xaf\xe4\xb9\xa6\xe7\x94\x9f\xc2\xb7\xe4\xb8\x87\xe8\xb1\xa1\xef\xbc\x8c" \
    "\xe8\x8b\xb1\xe6\x96\x87\xe5\x90\x8d\xe6\x98\xafInternVL\xef\xbc\x8c\xe6\x98\xaf\xe7\x94\xb1" \
    "\xe4\xb8\x8a\xe6\xb5\xb7\xe4\xba\xba\xe5\xb7\xa5\xe6\x99\xba\xe8\x83\xbd\xe5\xae\x9e" \
    "\xe9\xaa\x8c\xe5\xae\xa4\xe3\x80\x81\xe6\xb8\x85\xe5\x8d\x8e\xe5\xa4\xa7\xe5\xad\xa6" \
    "\xe5\x8f\x8a\xe5\xa4\x9a\xe4\xb8\xaa\xe5\x90\x88\xe4\xbd\x9c\xe5\x8d\x95\xe4\xbd\x8d" \
    "\xe8\x81\x94\xe5\x90\x88\xe5\xbc\x80\xe5\x8f\x91\xe7\x9a\x84\xe5\xa4\x9a\xe6\xa8\xa1" \
    "\xe6\x80\x81\xe5\xa4\xa7\xe8\xaf\xad\xe8\xa8\x80\xe6\xa8\xa1\xe5\x9e\x8b\xe3\x80\x82"

typedef struct lp_vlm_params {
    /* Chat template by name (fusion/template.h); NULL: recognise the
     * language model's tokenizer.chat_template, or vicuna (LLaVA-1.5, whose
     * GGUFs carry no template) when it has none. An unrecognised template
     * is an error that asks for a name. */
    const char *template_name;
    unsigned clip_quirks;    /* LP_CLIP_QUIRK_* bits; default LP_CLIP_QUIRKS_NONE */
    lp_prep_mode prep;       /* default LP_PREP_PAD_PIL */
    bool llamacpp;           /* overrides the two above: LP_CLIP_QUIRKS_LLAMACPP + LP_PREP_LLAMACPP */
    /* flash.budget > 0: the language model runs from the flash weight store
     * (language/flash.h) within that many bytes; it must be a flash-layout
     * file. 0 (default): resident (mmap). */
    lp_flash_params flash;
    /* Qwen2.5-VL: image token limits (0: the defaults above). */
    int image_min_tokens, image_max_tokens;
} lp_vlm_params;

lp_vlm_params lp_vlm_default_params(void);

/* Open both files, build tokenizer, decoder and CLIP, choose the template.
 * Errors name the file and the reason; a projector whose output width is
 * not the language model's embedding width is LOUPE_ERR_MISMATCH naming
 * both files and both widths. params may be NULL (defaults). */
lp_vlm *lp_vlm_load(const char *lm_path, const char *mmproj_path, const lp_vlm_params *params, lp_error *err);
void lp_vlm_free(lp_vlm *vlm);

const lp_template *lp_vlm_template(const lp_vlm *vlm);
lp_vlm_family lp_vlm_get_family(const lp_vlm *vlm);
const lp_llama *lp_vlm_llama(const lp_vlm *vlm); /* the decoder (read-only) */
const char *lp_vlm_family_name(lp_vlm_family f); /* "llava", "internvl", "qwen2.5-vl", "ferret" */
/* Positions one S×S input (one tile) takes; 0 for Qwen2.5-VL (any size). */
int lp_vlm_n_image_tokens(const lp_vlm *vlm);
/* Positions a w × h image takes (InternVL: tiles × tokens per tile). */
loupe_status lp_vlm_image_tokens(const lp_vlm *vlm, int w, int h, int *n, lp_error *err);
int lp_vlm_n_ctx_train(const lp_vlm *vlm);
double lp_vlm_load_ms(const lp_vlm *vlm);
int lp_vlm_image_size(const lp_vlm *vlm);     /* S of the S×S model input; 0 for Qwen2.5-VL */
lp_prep_mode lp_vlm_prep(const lp_vlm *vlm);  /* the preprocessing in use */
const char *lp_vlm_lm_path(const lp_vlm *vlm);
/* The language model's weight store (its stats, its flash plan). */
lp_weight_store *lp_vlm_lm_store(const lp_vlm *vlm);
bool lp_vlm_is_flash_layout(const lp_vlm *vlm);
const char *lp_vlm_mmproj_path(const lp_vlm *vlm);
/* A string metadata value of the language model (which 0) or the mmproj
 * (which 1), e.g. "general.name"; NULL when absent or not a string. */
const char *lp_vlm_meta_str(const lp_vlm *vlm, int which, const char *key);

typedef struct lp_vlm_ctx_params {
    /* KV-cache capacity in positions. 0: sized per question to prompt +
     * n_predict, at most the model's training context (the cache is then
     * reallocated only when a question needs more than the last one). */
    int n_ctx;
    int n_threads;  /* <= 0: all online CPUs */
    int n_batch;    /* prefill chunk, <= 0: decoder default */
    bool kv_f16;    /* round the KV cache through f16 like llama.cpp's default cache */
    /* Flash-layout models: FFN neurons per generated token (decoder.h's
     * ffn_keep / ffn_threshold). Defaults 1 and 0: dense. */
    float ffn_keep, ffn_threshold;
} lp_vlm_ctx_params;

lp_vlm_ctx_params lp_vlm_ctx_default_params(void);

lp_vlm_ctx *lp_vlm_ctx_new(const lp_vlm *vlm, const lp_vlm_ctx_params *params, lp_error *err);
void lp_vlm_ctx_free(lp_vlm_ctx *ctx);

/* Decoder activation dump for this context's asks (language/decoder.h:
 * "embd_in" of the prefill holds every prompt row, image and region rows
 * included; "logits"). NULL turns it off. */
void lp_vlm_ctx_set_dump(lp_vlm_ctx *ctx, lp_llama_dump_fn fn, void *user);

/* Decode steps with f32 activations for q4_0/q8_0 weights too
 * (language/decoder.h, lp_llama_state_set_exact_matvec), so logits stay
 * within f32 rounding of a reference that uses the dequantized weights. Off
 * by default: x is quantized to q8_0 as llama.cpp does. */
void lp_vlm_ctx_set_exact_matvec(lp_vlm_ctx *ctx, bool on);

/* Stages reported to the progress callback, in order. */
typedef enum lp_vlm_stage {
    LP_VLM_STAGE_ENCODE = 0,  /* done 0 of 1 before the image encode, 1 of 1 after */
    LP_VLM_STAGE_PREFILL = 1, /* 0 of n before the prefill, n of n after (n prompt positions) */
    LP_VLM_STAGE_DECODE = 2   /* k of n_predict after each sampled token (total -1: no limit) */
} lp_vlm_stage;

/* Return nonzero to stop: lp_vlm_ask then returns LOUPE_ERR_CANCELLED. */
typedef int (*lp_vlm_progress_fn)(void *user, lp_vlm_stage stage, int done, int total);

typedef struct lp_vlm_gen_params {
    const char *system;          /* NULL: the template's default; "": none */
    int n_predict;               /* most new tokens; < 0: until a stop or a full context. default 256 */
    lp_sampler_params sampling;  /* default greedy: temp 0, top_k 40, top_p 0.95, seed 0 */
    lp_vlm_progress_fn progress; /* may be NULL (default) */
    void *progress_user;
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

/* What one decoder pass read and computed (weight-store counters, differences). */
typedef struct lp_vlm_io {
    uint64_t bytes_read, reads;         /* storage reads */
    uint64_t neuron_hits, neuron_misses;
    uint64_t ffn_active, ffn_total;     /* FFN neurons computed / in the dense model */
    double io_ms;                       /* waiting for reads */
    double ms;                          /* the whole pass */
} lp_vlm_io;

typedef struct lp_vlm_stats {
    double load_ms;            /* lp_vlm_load, both files */
    double encode_ms;          /* preprocess + ViT + projector */
    int n_image_tokens;
    int n_text_tokens;
    int prefill_tokens;        /* positions prefilled now: text + image, less prefix_reused */
    int prefix_reused;         /* positions whose KV cache came from the previous ask (same
                                  image and text before it): 0 on a fresh image */
    int image_reused;          /* 1: the image encoding came from the previous ask */
    double prefill_ms;
    double prefill_tok_s;
    int decode_tokens;         /* tokens sampled (the stop token included) */
    double decode_ms;
    double decode_tok_s;
    lp_vlm_stop stop;
    int n_ctx;                 /* KV-cache capacity used */
    long peak_rss_kb;          /* getrusage ru_maxrss of the process */
    int n_regions;             /* regions embedded (lp_vlm_ask_regions) */
    double region_ms;          /* point sampling + region sampler, all regions (inside encode_ms) */
    /* The preprocessing geometry of the image (vision/preprocess.h) into the
     * image_size × image_size model input; valid when has_geom (set once the
     * image was encoded). lp_box_geom_from_prep turns it into the frame the
     * model's box text refers to. */
    int has_geom;
    int image_size;
    int frame_w, frame_h;      /* the model-input frame box text refers to: S×S, or
                                  Qwen2.5-VL's resized W×H */
    lp_prep_geom geom;
    /* Weight I/O (all zero on a resident non-flash model): the prefill's
     * passes together, and each decode pass (one per generated token but the
     * last): tokens[0..n_tokens), owned by the ctx, valid until its next ask. */
    lp_vlm_io prefill_io;
    const lp_vlm_io *tokens;
    int n_tokens;
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

/* ---- regions (see the top of this file) ---- */

#define LP_VLM_REGION_PLACEHOLDER "<region>"
#define LP_VLM_REGION_SEED 0u /* lp_region_sample_points seed, every region */
#define LP_VLM_MAX_REGIONS 64

typedef enum lp_vlm_region_kind {
    LP_VLM_REGION_BOX = 0,
    LP_VLM_REGION_MASK = 1
} lp_vlm_region_kind;

typedef struct lp_vlm_region {
    lp_vlm_region_kind kind;
    double box[4];        /* BOX: x1, y1, x2, y2, original-image pixel edges */
    const uint8_t *mask;  /* MASK: mask_w × mask_h bytes, row-major, nonzero = inside */
    int mask_w, mask_h;   /* must equal the image's w × h */
} lp_vlm_region;

/* lp_vlm_ask with regions (0..LP_VLM_MAX_REGIONS; 0 is lp_vlm_ask). stats
 * also gets n_regions and region_ms. */
loupe_status lp_vlm_ask_regions(const lp_vlm *vlm, lp_vlm_ctx *ctx, const lp_image *image, const char *question,
                                const lp_vlm_region *regions, int n_regions, const lp_vlm_gen_params *gen,
                                lp_vlm_text_fn on_text, void *user, char **answer, lp_vlm_stats *stats,
                                lp_error *err);

/* The preprocessing geometry this model applies to `image` (what
 * lp_vlm_stats.geom reports after an ask), and S of the S×S input. Runs the
 * preprocessing. */
loupe_status lp_vlm_prep_geom(const lp_vlm *vlm, const lp_image *image, lp_prep_geom *geom, int *S, lp_error *err);
/* The same with the frame's width and height (Qwen2.5-VL: not square). */
loupe_status lp_vlm_prep_frame(const lp_vlm *vlm, const lp_image *image, lp_prep_geom *geom, int *W, int *H,
                               lp_error *err);

/* true when the mmproj has a region sampler (regions can be asked about). */
bool lp_vlm_has_region_sampler(const lp_vlm *vlm);
/* The id of the model's "<region_fea>" token, or -1 when it has none usable. */
int32_t lp_vlm_region_token(const lp_vlm *vlm);

/* Validate a region against a w × h image (LOUPE_ERR_INVALID_ARG with the
 * reason) and give its box in original pixels after clipping (a mask: its
 * pixel-edge bounding box) — the box the region text describes. */
loupe_status lp_vlm_region_box(const lp_vlm_region *region, int img_w, int img_h, double box[4], lp_error *err);

/* The question with the region text placed as described at the top
 * (*out malloc'd). Validates every region; LOUPE_ERR_INVALID_ARG when the
 * question has placeholders but not one per region. */
loupe_status lp_vlm_region_question(const char *question, const lp_vlm_region *regions, int n_regions, int img_w,
                                    int img_h, char **out, lp_error *err);

/* Where a region lands on the ViT feature map: its box (lp_vlm_region_box)
 * mapped through this model's preprocessing of `image` into the sampler's
 * [0, 1] coordinates (u1, v1, u2, v2). For a box these are the bounds its
 * points are drawn in. Runs the preprocessing (for its geometry). */
loupe_status lp_vlm_region_feature_box(const lp_vlm *vlm, const lp_image *image, const lp_vlm_region *region,
                                       float fbox[4], lp_error *err);

/* Set the sampler's dump hook (fusion/region_sampler.h: "out" is a region's
 * embedding). Not while asks run on the model. No-op without a sampler. */
void lp_vlm_set_region_dump(lp_vlm *vlm, lp_region_dump_fn fn, void *user);

#endif
