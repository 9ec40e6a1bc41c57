/* fusion/template.h — chat templates for a one-turn question about one image.
 *
 * loupe does not run Jinja. A model's tokenizer.chat_template is only
 * *recognised* (by telltale substrings, the way llama.cpp's
 * llm_chat_detect_template does) and mapped to one of the fixed renderers
 * below, each of which produces exactly one system turn (optional), one user
 * turn holding the image and the question, and the opening of the assistant
 * turn:
 *
 *   vicuna   LLaVA v1 (conv "llava_v1", SeparatorStyle.TWO, sep " "):
 *              "{system} USER: <image>\n{q} ASSISTANT:"
 *            Default system: "A chat between a curious human and an
 *            artificial intelligence assistant. The assistant gives helpful,
 *            detailed, and polite answers to the human's questions."
 *            (LLaVA-1.5's own eval script uses conv "vicuna_v1", which says
 *            "user" instead of "human"; pass it with --system if wanted.)
 *   chatml   "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
 *            "<image>\n{q}<|im_end|>\n<|im_start|>assistant\n"
 *            Default system: "You are a helpful assistant."
 *   llama2   "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\n{q} [/INST]"
 *            (LLaVA's conv "llava_llama_2" system prompt by default)
 *   mistral  "[INST] {system}\n\n<image>\n{q} [/INST]" (LLaVA-1.6-Mistral;
 *            no system text by default)
 *   llama3   "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
 *            "<|start_header_id|>user<|end_header_id|>\n\n<image>\n{q}<|eot_id|>"
 *            "<|start_header_id|>assistant<|end_header_id|>\n\n"
 * An empty system text leaves the system part out entirely. BOS is never
 * written by a template: the tokenizer adds it (tokenizer.ggml.add_bos_token).
 *
 * Every template lists stop strings: text that ends the answer if the model
 * writes it (the end-of-turn marker, the start of the next turn). Those that
 * are single vocabulary tokens are also treated as end-of-generation ids. */
#ifndef LP_TEMPLATE_H
#define LP_TEMPLATE_H

#include "../core/error.h"

#include <stddef.h>

/* Where the image goes in rendered text. */
#define LP_IMAGE_MARKER "<image>"

typedef enum lp_template_id {
    LP_TEMPLATE_VICUNA = 0,
    LP_TEMPLATE_CHATML,
    LP_TEMPLATE_LLAMA2,
    LP_TEMPLATE_MISTRAL,
    LP_TEMPLATE_LLAMA3,
    LP_TEMPLATE_COUNT
} lp_template_id;

#define LP_TEMPLATE_MAX_STOPS 4

typedef struct lp_template {
    lp_template_id id;
    const char *name;            /* "vicuna", "chatml", ... */
    const char *default_system;  /* "" when the template has none by default */
    const char *stops[LP_TEMPLATE_MAX_STOPS];
    int n_stops;
} lp_template;

/* The template with this name (case-sensitive; "llava", "llava-v1" and
 * "vicuna_v1" are accepted for vicuna). LOUPE_ERR_INVALID_ARG listing the
 * known names otherwise. */
loupe_status lp_template_by_name(const char *name, const lp_template **out, lp_error *err);

/* Recognise a Jinja chat template (the value of tokenizer.chat_template), or
 * a bare template name. LOUPE_ERR_UNSUPPORTED when it is none loupe renders
 * (including look-alikes such as phi-4's "<|im_sep|>" chatml). */
loupe_status lp_template_detect(const char *chat_template, const lp_template **out, lp_error *err);

/* Comma-separated names of all templates, for help texts. */
const char *lp_template_names(void);

/* Render one turn. system == NULL uses the template's default; "" means no
 * system part. *text is a malloc'd NUL-terminated string holding
 * LP_IMAGE_MARKER once, at byte offset *image_at (found by position, not by
 * search, so a question or system text that itself contains "<image>" is
 * plain text). NOMEM is the only failure. */
loupe_status lp_template_render(const lp_template *t, const char *system, const char *question, char **text,
                                size_t *image_at, lp_error *err);

#endif
