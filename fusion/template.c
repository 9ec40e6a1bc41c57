/* fusion/template.c — fixed chat-template renderers and template detection. */
#include "template.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char LLAVA_SYSTEM[] =
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.";
/* LLaVA's conv_llava_llama_2 (and the llama3 LLaVA variants reuse it). */
static const char LLAVA_LLAMA_SYSTEM[] =
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language.";

static const lp_template TEMPLATES[LP_TEMPLATE_COUNT] = {
    {LP_TEMPLATE_VICUNA, "vicuna", LLAVA_SYSTEM, {"</s>", "USER:"}, 2},
    {LP_TEMPLATE_CHATML, "chatml", "You are a helpful assistant.", {"<|im_end|>", "<|im_start|>", "<|endoftext|>"}, 3},
    {LP_TEMPLATE_LLAMA2, "llama2", LLAVA_LLAMA_SYSTEM, {"</s>", "[INST]"}, 2},
    {LP_TEMPLATE_MISTRAL, "mistral", "", {"</s>", "[INST]"}, 2},
    {LP_TEMPLATE_LLAMA3, "llama3", LLAVA_LLAMA_SYSTEM, {"<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>"}, 3},
};

const char *lp_template_names(void) { return "vicuna, chatml, llama2, mistral, llama3"; }

loupe_status lp_template_by_name(const char *name, const lp_template **out, lp_error *err) {
    *out = NULL;
    if (!name) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "no template name given");
    /* Names under which users and other tools know the same formats. */
    static const struct { const char *alias; lp_template_id id; } ALIASES[] = {
        {"llava", LP_TEMPLATE_VICUNA},   {"llava-v1", LP_TEMPLATE_VICUNA}, {"llava_v1", LP_TEMPLATE_VICUNA},
        {"vicuna_v1", LP_TEMPLATE_VICUNA}, {"qwen", LP_TEMPLATE_CHATML},   {"llama-2", LP_TEMPLATE_LLAMA2},
        {"llama-3", LP_TEMPLATE_LLAMA3},
    };
    for (int i = 0; i < LP_TEMPLATE_COUNT; i++)
        if (!strcmp(name, TEMPLATES[i].name)) return *out = &TEMPLATES[i], LOUPE_OK;
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (!strcmp(name, ALIASES[i].alias)) return *out = &TEMPLATES[ALIASES[i].id], LOUPE_OK;
    return lp_fail(err, LOUPE_ERR_INVALID_ARG, "unknown chat template '%s' (known: %s)", name, lp_template_names());
}

loupe_status lp_template_detect(const char *tmpl, const lp_template **out, lp_error *err) {
    *out = NULL;
    if (!tmpl || !*tmpl) return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "empty chat template");
    if (lp_template_by_name(tmpl, out, NULL) == LOUPE_OK) return LOUPE_OK;
#define HAS(s) (strstr(tmpl, (s)) != NULL)
    lp_template_id id = LP_TEMPLATE_COUNT;
    /* Same order of tests as llama.cpp's llm_chat_detect_template, limited to
     * the families rendered here; the first match wins because the markers
     * overlap (a llama3 template never says "USER: ", a vicuna one may). */
    if (HAS("<|im_start|>")) {
        /* phi-4 ("<|im_sep|>") and SmolVLM ("<end_of_utterance>") borrow the
         * marker but are not chatml. */
        if (!HAS("<|im_sep|>") && !HAS("<end_of_utterance>")) id = LP_TEMPLATE_CHATML;
    } else if (strncmp(tmpl, "mistral", 7) == 0 || HAS("[INST]")) {
        if (HAS("[SYSTEM_PROMPT]")) id = LP_TEMPLATE_COUNT; /* mistral v7: system outside [INST] */
        else if (HAS("<<SYS>>")) id = LP_TEMPLATE_LLAMA2;
        else id = LP_TEMPLATE_MISTRAL;
    } else if (HAS("USER: ") && HAS("ASSISTANT: ")) {
        id = LP_TEMPLATE_VICUNA; /* also the "SYSTEM: " (Orca) variant: close enough for one turn */
    } else if (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) {
        id = LP_TEMPLATE_LLAMA3;
    }
#undef HAS
    if (id == LP_TEMPLATE_COUNT) {
        char head[48];
        size_t n = strlen(tmpl);
        if (n > sizeof head - 4) n = sizeof head - 4;
        memcpy(head, tmpl, n);
        head[n] = '\0';
        for (char *p = head; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
        return lp_fail(err, LOUPE_ERR_UNSUPPORTED, "chat template not recognised (starts \"%s%s\"); known: %s", head,
                       strlen(tmpl) > n ? "..." : "", lp_template_names());
    }
    *out = &TEMPLATES[id];
    return LOUPE_OK;
}

/* ---- rendering ---- */

typedef struct sbuf {
    char *s;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

loupe_status lp_template_render(const lp_template *t, const char *system, const char *question, char **text,
                                size_t *image_at, lp_error *err) {
    *text = NULL;
    *image_at = 0;
    if (!t || !question) return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_template_render: NULL argument");
    const char *sys = system ? system : t->default_system;
    const bool has_sys = sys[0] != '\0';
    sbuf b = {0};
    size_t at = 0;
    switch (t->id) {
    case LP_TEMPLATE_VICUNA:
        if (has_sys) put(&b, sys), put(&b, " ");
        put(&b, "USER: ");
        at = b.len;
        put(&b, LP_IMAGE_MARKER "\n"), put(&b, question), put(&b, " ASSISTANT:");
        break;
    case LP_TEMPLATE_CHATML:
        if (has_sys) put(&b, "<|im_start|>system\n"), put(&b, sys), put(&b, "<|im_end|>\n");
        put(&b, "<|im_start|>user\n");
        at = b.len;
        put(&b, LP_IMAGE_MARKER "\n"), put(&b, question), put(&b, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case LP_TEMPLATE_LLAMA2:
        put(&b, "[INST] ");
        if (has_sys) put(&b, "<<SYS>>\n"), put(&b, sys), put(&b, "\n<</SYS>>\n\n");
        at = b.len;
        put(&b, LP_IMAGE_MARKER "\n"), put(&b, question), put(&b, " [/INST]");
        break;
    case LP_TEMPLATE_MISTRAL:
        put(&b, "[INST] ");
        if (has_sys) put(&b, sys), put(&b, "\n\n");
        at = b.len;
        put(&b, LP_IMAGE_MARKER "\n"), put(&b, question), put(&b, " [/INST]");
        break;
    case LP_TEMPLATE_LLAMA3:
        if (has_sys)
            put(&b, "<|start_header_id|>system<|end_header_id|>\n\n"), put(&b, sys), put(&b, "<|eot_id|>");
        put(&b, "<|start_header_id|>user<|end_header_id|>\n\n");
        at = b.len;
        put(&b, LP_IMAGE_MARKER "\n"), put(&b, question),
            put(&b, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    default:
        return lp_fail(err, LOUPE_ERR_INVALID_ARG, "lp_template_render: bad template id %d", (int)t->id);
    }
    if (b.oom) {
        free(b.s);
        return lp_fail(err, LOUPE_ERR_NOMEM, "rendering the prompt: out of memory");
    }
    *text = b.s;
    *image_at = at;
    return LOUPE_OK;
}
