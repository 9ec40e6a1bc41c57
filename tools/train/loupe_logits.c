/* tools/train/loupe_logits.c — loupe's first-step logits for one question,
 * for the PyTorch-vs-loupe comparison in tools/train/eval.py (built into
 * /tmp by eval.py; not part of the Makefile).
 *
 *   loupe_logits LM.gguf MMPROJ.gguf IMAGE "question" OUT.f32
 *
 * Runs what lp_vlm_ask does before its first sample, in loupe's default
 * semantics (LP_CLIP_QUIRKS_NONE), with LP_PREP_SQUASH_PIL preprocessing
 * (what the model is trained with), the vicuna template and its default
 * system text, exact f32 matvec; writes the n_vocab logits of the last
 * prompt position as raw little-endian f32. No regions. */
#include "clip.h"
#include "decoder.h"
#include "gguf.h"
#include "prompt.h"
#include "template.h"
#include "tokenizer.h"
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x)                                                                 \
    do {                                                                         \
        if ((x) != LOUPE_OK) {                                                   \
            fprintf(stderr, "loupe_logits: %s: %s\n", #x, err.msg);              \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: loupe_logits LM.gguf MMPROJ.gguf IMAGE question OUT.f32\n");
        return 1;
    }
    lp_error err;
    lp_error_clear(&err);
    lp_gguf *lm = lp_gguf_open(argv[1], &err), *mm = lm ? lp_gguf_open(argv[2], &err) : NULL;
    if (!mm) return fprintf(stderr, "%s\n", err.msg), 1;
    lp_weight_store *lws = lp_weights_resident(lm, &err), *mws = lws ? lp_weights_resident(mm, &err) : NULL;
    if (!mws) return fprintf(stderr, "%s\n", err.msg), 1;
    lp_tokenizer *tok = lp_tokenizer_load(lm, &err);
    lp_llama *llama = tok ? lp_llama_load(lws, &err) : NULL;
    lp_clip *clip = llama ? lp_clip_load(mm, mws, &err) : NULL;
    if (!clip) return fprintf(stderr, "%s\n", err.msg), 1;
    CHECK(lp_clip_set_quirks(clip, LP_CLIP_QUIRKS_NONE, &err));
    lp_image img;
    CHECK(lp_image_load(argv[3], &img, &err));
    const int S = lp_clip_image_size(clip), N = lp_clip_n_out_tokens(clip), E = lp_clip_out_dim(clip);
    float *pixels = malloc(sizeof(float) * 3 * S * S), *iemb = malloc(sizeof(float) * (size_t)N * E);
    CHECK(lp_clip_preprocess(clip, &img, LP_PREP_SQUASH_PIL, pixels, NULL, &err));
    CHECK(lp_clip_encode(clip, pixels, iemb, NULL, &err));
    const lp_template *t;
    CHECK(lp_template_by_name("vicuna", &t, &err));
    char *text;
    size_t at;
    CHECK(lp_template_render(t, NULL, argv[4], &text, &at, &err));
    lp_prompt p;
    CHECK(lp_prompt_build(&p, tok, text, strlen(text), at, strlen(LP_IMAGE_MARKER), N, &err));
    float *embd = malloc(sizeof(float) * (size_t)p.n_pos * E);
    CHECK(lp_prompt_embed(&p, llama, iemb, embd, &err));
    lp_llama_state *st = lp_llama_state_new(llama, p.n_pos + 8, &err);
    if (!st) return fprintf(stderr, "%s\n", err.msg), 1;
    lp_llama_state_set_exact_matvec(st, true);
    const int V = lp_llama_n_vocab(llama);
    float *logits = malloc(sizeof(float) * V);
    CHECK(lp_llama_forward(llama, st, embd, p.n_pos, logits, NULL, &err));
    FILE *f = fopen(argv[5], "wb");
    if (!f || fwrite(logits, sizeof(float), (size_t)V, f) != (size_t)V) return perror(argv[5]), 1;
    fclose(f);
    fprintf(stderr, "loupe_logits: %d positions (%d text + %d image), %d logits\n", p.n_pos, p.n_text, p.n_image, V);
    return 0;
}
