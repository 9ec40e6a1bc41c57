/* fuzz_tokenizer — libFuzzer target for both tokenizers.
 *
 * The first input byte picks the vocabulary (LLaMA SentencePiece or Qwen3
 * byte-level BPE, loaded once from tests/fixtures/tokenizer/, so run from the
 * repository root) and the flags; the rest is the text. Checks, beyond "no
 * crash": the token count is stable between the sizing call and the filling
 * call, every id is in range, and the streaming decoder's output is valid
 * UTF-8. */
#include "gguf.h"
#include "../../language/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static lp_tokenizer *g_tok[2];

static lp_tokenizer *load(const char *path) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(path, &err);
    if (!g) abort();
    lp_tokenizer *t = lp_tokenizer_load(g, &err);
    lp_gguf_close(g);
    if (!t) abort();
    return t;
}

/* Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; }
        else return 0;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000)) return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_tok[0]) {
        g_tok[0] = load("tests/fixtures/tokenizer/llama-vocab.gguf");
        g_tok[1] = load("tests/fixtures/tokenizer/qwen3-vocab.gguf");
    }
    if (size < 1 || size > 4096) return 0;
    const lp_tokenizer *t = g_tok[data[0] & 1];
    bool add_bos = (data[0] & 2) && lp_tokenizer_bos(t) >= 0;
    bool special = data[0] & 4;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    lp_error err = {0};
    int n = lp_tokenize(t, text, len, add_bos, special, NULL, 0, &err);
    if (n < 0) return 0; /* a refusal must come with a message */
    int32_t *ids = malloc(sizeof *ids * (size_t)(n + 1));
    int m = lp_tokenize(t, text, len, add_bos, special, ids, n, &err);
    if (m != n) abort();
    int32_t nv = lp_tokenizer_n_vocab(t);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= nv) abort();

    lp_detok d;
    lp_detok_init(&d, t, special);
    for (int i = 0; i <= n; i++) {
        const char *s;
        size_t sl;
        loupe_status st = i < n ? lp_detok_push(&d, ids[i], &s, &sl, &err) : lp_detok_finish(&d, &s, &sl, &err);
        if (st != LOUPE_OK) abort();
        if (!valid_utf8((const unsigned char *)s, sl)) abort();
    }
    lp_detok_free(&d);
    free(ids);
    return 0;
}
