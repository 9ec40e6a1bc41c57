/* tests/test_tokenizer.c — the GGUF tokenizers (language/tokenizer.h).
 *
 * Reference: every string of tools/tokenizer_fixtures/corpus.json, tokenized
 * with the Qwen3 vocabulary (byte-level BPE, pre "qwen2") and the LLaMA
 * vocabulary (SentencePiece), must give exactly the ids the npm tokenizers
 * gave (tests/fixtures/tokenizer/NAME-expected.json; see tests/fixtures/README.md
 * for how they are made), and must decode back to the string.
 *
 * Hand-made: tiny vocabularies written with lp_gguf_writer check merge
 * order, byte fallback, special-token splitting on and off, the streaming
 * decoder's UTF-8 hold-back, and that malformed metadata is refused with an
 * error naming the key. */
#include "support/testutil.h"
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "../language/tokenizer.h"
#include "../language/tokenizer_impl.h" /* lp_bpe_split */

#define FIX "tests/fixtures/tokenizer/"

/* ---- helpers ---- */


static lp_tokenizer *load_fixture(const char *path) {
    lp_error err = {0};
    lp_gguf *g = lp_gguf_open(path, &err);
    if (!g) fail_msg("open %s: %s", path, err.msg);
    lp_tokenizer *t = lp_tokenizer_load(g, &err);
    lp_gguf_close(g); /* the tokenizer copies what it needs */
    if (!t) fail_msg("load %s: %s", path, err.msg);
    return t;
}

/* Tokenize into a malloc'd array; *n is the count. */
static int32_t *tok(const lp_tokenizer *t, const char *s, size_t len, bool bos, bool special, int *n) {
    lp_error err = {0};
    int need = lp_tokenize(t, s, len, bos, special, NULL, 0, &err);
    if (need < 0) fail_msg("lp_tokenize: %s", err.msg);
    int32_t *ids = malloc(((size_t)need + 1) * sizeof *ids);
    int got = lp_tokenize(t, s, len, bos, special, ids, need, &err);
    assert_int_equal(got, need);
    *n = need;
    return ids;
}

static char *detok(const lp_tokenizer *t, const int32_t *ids, int n, bool special, size_t *len) {
    lp_error err = {0};
    char *s = NULL;
    if (lp_detokenize(t, ids, (size_t)n, special, &s, len, &err)) fail_msg("lp_detokenize: %s", err.msg);
    return s;
}

static void print_ids(const char *what, const int32_t *v, int n) {
    char buf[2048];
    size_t o = 0;
    for (int i = 0; i < n && o + 16 < sizeof buf; i++) o += (size_t)snprintf(buf + o, sizeof buf - o, "%d ", v[i]);
    buf[o] = '\0';
    print_message("    %s: %s\n", what, buf);
}

/* Run every case of an expected-ids file against the tokenizer; returns the
 * number of mismatches and prints them. Also checks the round trip. */
static void run_reference(const char *gguf_path, const char *json_path, const char *const *exceptions) {
    lp_tokenizer *t = load_fixture(gguf_path);
    char *txt = tu_read_file(json_path, NULL);
    if (!txt) fail_msg("cannot read %s", json_path);
    cJSON *root = cJSON_Parse(txt);
    assert_non_null(root);
    bool add_bos = cJSON_IsTrue(cJSON_GetObjectItem(root, "add_bos"));
    bool parse_special = cJSON_IsTrue(cJSON_GetObjectItem(root, "parse_special"));
    cJSON *cases = cJSON_GetObjectItem(root, "cases");
    int total = 0, match = 0, bad_rt = 0, excused = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
        cJSON *jids = cJSON_GetObjectItem(c, "ids");
        assert_non_null(s);
        int n, ne = cJSON_GetArraySize(jids);
        int32_t *ids = tok(t, s, strlen(s), add_bos, parse_special, &n);
        int32_t *exp = malloc(((size_t)ne + 1) * sizeof *exp);
        for (int i = 0; i < ne; i++) exp[i] = (int32_t)cJSON_GetArrayItem(jids, i)->valuedouble;
        total++;
        bool same = n == ne && memcmp(ids, exp, (size_t)n * sizeof *ids) == 0;
        bool exc = false;
        for (const char *const *e = exceptions; e && *e; e++) exc |= strcmp(*e, s) == 0;
        if (same) {
            match++;
        } else if (exc) {
            excused++;
        } else {
            print_message("  MISMATCH %s: \"%s\"\n", json_path, s);
            print_ids("expected", exp, ne);
            print_ids("got     ", ids, n);
        }
        /* decode(encode(s)) == s: BOS and control tokens are rendered only
         * when they came from the text itself */
        size_t dl;
        char *back = detok(t, add_bos ? ids + 1 : ids, add_bos ? n - 1 : n, parse_special, &dl);
        if (dl != strlen(s) || memcmp(back, s, dl) != 0) {
            bad_rt++;
            print_message("  ROUND TRIP %s: \"%s\" -> \"%s\"\n", json_path, s, back);
        }
        free(back);
        free(ids);
        free(exp);
    }
    print_message("  %s: %d/%d cases match the reference (%d documented exceptions), %d round-trip failures\n",
                  json_path, match, total, excused, bad_rt);
    assert_true(total >= 100);
    assert_int_equal(match + excused, total);
    assert_int_equal(bad_rt, 0);
    cJSON_Delete(root);
    free(txt);
    lp_tokenizer_free(t);
}

static void test_qwen3_reference(void **state) {
    (void)state;
    run_reference(FIX "qwen3-vocab.gguf", FIX "qwen3-expected.json", NULL);
}

static void test_llama_reference(void **state) {
    (void)state;
    run_reference(FIX "llama-vocab.gguf", FIX "llama-expected.json", NULL);
}

static void test_qwen3_specials(void **state) {
    (void)state;
    lp_tokenizer *t = load_fixture(FIX "qwen3-vocab.gguf");
    assert_int_equal(lp_tokenizer_get_kind(t), LP_TOKENIZER_BPE);
    assert_int_equal(lp_tokenizer_n_vocab(t), 151669);
    assert_int_equal(lp_tokenizer_find(t, "<|im_start|>"), 151644);
    assert_int_equal(lp_tokenizer_find(t, "<|box_start|>"), 151648);
    assert_int_equal(lp_tokenizer_find(t, "<image>"), -1);
    assert_int_equal(lp_tokenizer_eos(t), 151645);
    assert_false(lp_tokenizer_add_bos(t));
    assert_true(lp_tokenizer_is_eog(t, 151645));
    assert_false(lp_tokenizer_is_eog(t, 151644));

    /* parse_special off: the control token is text, split into pieces */
    const char *s = "<|im_start|>user\n";
    int n;
    int32_t *ids = tok(t, s, strlen(s), false, false, &n);
    assert_true(n > 3);
    for (int i = 0; i < n; i++) assert_int_not_equal(ids[i], 151644);
    size_t dl;
    char *back = detok(t, ids, n, false, &dl);
    assert_string_equal(back, s);
    free(back);
    free(ids);
    /* ... on: one id */
    ids = tok(t, s, strlen(s), false, true, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 151644);
    /* control tokens render only with special */
    char piece[32];
    assert_int_equal(lp_token_to_piece(t, 151644, false, piece, sizeof piece), 0);
    assert_int_equal(lp_token_to_piece(t, 151644, true, piece, sizeof piece), 12);
    assert_memory_equal(piece, "<|im_start|>", 12);
    assert_int_equal(lp_token_to_piece(t, 9707, false, piece, sizeof piece), 5); /* "Hello" */
    assert_memory_equal(piece, "Hello", 5);
    assert_int_equal(lp_token_to_piece(t, 151669, false, piece, sizeof piece), -1);
    free(ids);
    /* user-defined tokens are split even with parse_special off (as HF and llama.cpp) */
    ids = tok(t, "<think>x", 8, false, false, &n);
    assert_int_equal(ids[0], 151667);
    free(ids);

    /* a too-small buffer reports the needed count and stores a prefix */
    int32_t small[2] = {-7, -7};
    lp_error err = {0};
    const char *h = "Hello, world!"; /* 4 tokens */
    assert_int_equal(lp_tokenize(t, h, strlen(h), false, true, small, 2, &err), 4);
    assert_int_equal(small[0], 9707);
    assert_int_equal(small[1], 11);
    /* empty text */
    assert_int_equal(lp_tokenize(t, "", 0, false, true, NULL, 0, &err), 0);
    assert_int_equal(lp_tokenize(t, "", 0, true, true, small, 2, &err), 1);
    assert_int_equal(small[0], 151643);

    /* arbitrary (invalid UTF-8) bytes survive the byte-level round trip as
     * bytes: check pieces directly, since the text decoder would replace them */
    const char bad[] = "a\xff\xfe\xc3(z\xe2\x82";
    ids = tok(t, bad, sizeof bad - 1, false, true, &n);
    char raw[64];
    size_t o = 0;
    for (int i = 0; i < n; i++) o += (size_t)lp_token_to_piece(t, ids[i], true, raw + o, (int32_t)(sizeof raw - o));
    assert_int_equal(o, sizeof bad - 1);
    assert_memory_equal(raw, bad, o);
    free(ids);
    lp_tokenizer_free(t);
}

/* Streaming decode of Qwen3 ids, one at a time, never emits invalid UTF-8
 * and concatenates to the input. */
static void test_qwen3_streaming(void **state) {
    (void)state;
    lp_tokenizer *t = load_fixture(FIX "qwen3-vocab.gguf");
    const char *s = "I love 🍕 and 🍣! 👨‍👩‍👧‍👦 日本語 🇺🇸";
    int n;
    int32_t *ids = tok(t, s, strlen(s), false, true, &n);
    lp_detok d;
    lp_detok_init(&d, t, false);
    char acc[256];
    size_t m = 0;
    int held = 0;
    for (int i = 0; i < n; i++) {
        const char *p;
        size_t k;
        assert_int_equal(lp_detok_push(&d, ids[i], &p, &k, NULL), LOUPE_OK);
        char one[16];
        held += lp_token_to_piece(t, ids[i], false, one, sizeof one) > 0 && k == 0;
        /* every chunk is itself complete UTF-8 */
        for (size_t j = 0; j < k;) {
            int len = (unsigned char)p[j] < 0x80 ? 1 : (unsigned char)p[j] < 0xE0 ? 2 : (unsigned char)p[j] < 0xF0 ? 3 : 4;
            assert_true(j + (size_t)len <= k);
            j += (size_t)len;
        }
        memcpy(acc + m, p, k);
        m += k;
    }
    const char *p;
    size_t k;
    assert_int_equal(lp_detok_finish(&d, &p, &k, NULL), LOUPE_OK);
    assert_int_equal(k, 0);
    acc[m] = '\0';
    assert_string_equal(acc, s);
    assert_true(held > 0); /* some emoji were split across byte-level tokens */
    lp_detok_free(&d);
    free(ids);
    lp_tokenizer_free(t);
}

/* Random bytes (mostly invalid UTF-8) through both reference vocabularies:
 * no crash; byte-level BPE pieces give the bytes back exactly; the text
 * decoder's output is always valid UTF-8. */
static bool valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (!k || i + k > n) return false;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return false;
        if (k == 3 && c == 0xE0 && s[i + 1] < 0xA0) return false;
        if (k == 3 && c == 0xED && s[i + 1] > 0x9F) return false;
        if (k == 4 && c == 0xF0 && s[i + 1] < 0x90) return false;
        if (k == 4 && c == 0xF4 && s[i + 1] > 0x8F) return false;
        i += k;
    }
    return true;
}

static void test_random_bytes(void **state) {
    (void)state;
    lp_tokenizer *q = load_fixture(FIX "qwen3-vocab.gguf");
    lp_tokenizer *l = load_fixture(FIX "llama-vocab.gguf");
    uint32_t x = 12345;
    for (int round = 0; round < 200; round++) {
        unsigned char buf[96];
        size_t n = (size_t)(round % 96);
        for (size_t i = 0; i < n; i++) {
            x = x * 1664525u + 1013904223u;
            /* bias towards interesting bytes: ASCII, UTF-8 leads, continuations */
            unsigned r = x >> 24;
            buf[i] = (unsigned char)(r < 64 ? ' ' + (r % 95) : r < 128 ? 0x80 + (r % 64) : r < 160 ? 0xC0 + (r % 64) : r);
        }
        for (int which = 0; which < 2; which++) {
            lp_tokenizer *t = which ? l : q;
            int nt;
            int32_t *ids = tok(t, (const char *)buf, n, false, true, &nt);
            if (!which) {
                char raw[512];
                size_t o = 0;
                for (int i = 0; i < nt; i++)
                    o += (size_t)lp_token_to_piece(t, ids[i], true, raw + o, (int32_t)(sizeof raw - o));
                assert_int_equal(o, n);
                assert_memory_equal(raw, buf, n);
            }
            size_t dl;
            char *text = detok(t, ids, nt, true, &dl);
            assert_true(valid_utf8((const unsigned char *)text, dl));
            free(text);
            free(ids);
        }
    }
    lp_tokenizer_free(q);
    lp_tokenizer_free(l);
}

/* ---- pre-tokenizers ----
 * Word splits of the hand-written pre-tokenizers against the regexes
 * themselves: the expected column was produced by node's RegExp (u flag)
 * running the GPT-2, Qwen2 and LLaMA 3 patterns (the (?i:...) group written
 * as [sS]... as llama.cpp does), words joined by '|'. */
static const struct {
    lp_pretok pre;
    const char *text;
    const char *words;
} split_cases[] = {
    {LP_PRETOK_GPT2, "Hello world's 12345 IT'S", "Hello| world|'s| 12345| IT|'|S"},
    {LP_PRETOK_GPT2, "a   b\x09""\x09""c  \x0a""\x0a""  d   ", "a|  | b|\x09""|\x09""|c|  \x0a""\x0a"" | d|   "},
    {LP_PRETOK_GPT2, "x\x0d""\x0a""\x0d""\x0a""y \x0a"" z", "x|\x0d""\x0a""\x0d""|\x0a""|y| \x0a""| z"},
    {LP_PRETOK_GPT2, "(foo) [bar]!!\x0a""\x0a""baz?", "(|foo|)| [|bar|]!!|\x0a""|\x0a""|baz|?"},
    {LP_PRETOK_GPT2, "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""123\xe6""\x96""\x87""\xe6""\x9c""\xac""", "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""|123|\xe6""\x96""\x87""\xe6""\x9c""\xac"""},
    {LP_PRETOK_GPT2, "caf\xc3""\xa9"" \xc2""\xbd"" \xe2""\x91""\xa0""\xe2""\x91""\xa1"" 3.14", "caf\xc3""\xa9""| \xc2""\xbd""| \xe2""\x91""\xa0""\xe2""\x91""\xa1""| 3|.|14"},
    {LP_PRETOK_GPT2, "  leading", " | leading"},
    {LP_PRETOK_GPT2, "tail  ", "tail|  "},
    {LP_PRETOK_GPT2, "'twas 'LL 'Re don't", "'t|was| '|LL| '|Re| don|'t"},
    {LP_PRETOK_GPT2, "emoji\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83"" ok\xf0""\x9f""\x8e""\x89""!", "emoji|\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83""| ok|\xf0""\x9f""\x8e""\x89""!"},
    {LP_PRETOK_GPT2, "\x09""\x09""indented\x0a""\x09""code();\x0a""", "\x09""|\x09""|indented|\x0a""|\x09""|code|();|\x0a"""},
    {LP_PRETOK_GPT2, "1234567", "1234567"},
    {LP_PRETOK_GPT2, "a\xc2""\xa0""\xc2""\xa0""b", "a|\xc2""\xa0""|\xc2""\xa0""|b"},
    {LP_PRETOK_GPT2, "$100,000.50 #tag @user", "$|100|,|000|.|50| #|tag| @|user"},
    {LP_PRETOK_QWEN2, "Hello world's 12345 IT'S", "Hello| world|'s| |1|2|3|4|5| IT|'S"},
    {LP_PRETOK_QWEN2, "a   b\x09""\x09""c  \x0a""\x0a""  d   ", "a|  | b|\x09""|\x09""c|  \x0a""\x0a""| | d|   "},
    {LP_PRETOK_QWEN2, "x\x0d""\x0a""\x0d""\x0a""y \x0a"" z", "x|\x0d""\x0a""\x0d""\x0a""|y| \x0a""| z"},
    {LP_PRETOK_QWEN2, "(foo) [bar]!!\x0a""\x0a""baz?", "(foo|)| [|bar|]!!\x0a""\x0a""|baz|?"},
    {LP_PRETOK_QWEN2, "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""123\xe6""\x96""\x87""\xe6""\x9c""\xac""", "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""|1|2|3|\xe6""\x96""\x87""\xe6""\x9c""\xac"""},
    {LP_PRETOK_QWEN2, "caf\xc3""\xa9"" \xc2""\xbd"" \xe2""\x91""\xa0""\xe2""\x91""\xa1"" 3.14", "caf\xc3""\xa9""| |\xc2""\xbd""| |\xe2""\x91""\xa0""|\xe2""\x91""\xa1""| |3|.|1|4"},
    {LP_PRETOK_QWEN2, "  leading", " | leading"},
    {LP_PRETOK_QWEN2, "tail  ", "tail|  "},
    {LP_PRETOK_QWEN2, "'twas 'LL 'Re don't", "'t|was| '|LL| '|Re| don|'t"},
    {LP_PRETOK_QWEN2, "emoji\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83"" ok\xf0""\x9f""\x8e""\x89""!", "emoji|\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83""| ok|\xf0""\x9f""\x8e""\x89""!"},
    {LP_PRETOK_QWEN2, "\x09""\x09""indented\x0a""\x09""code();\x0a""", "\x09""|\x09""indented|\x0a""|\x09""code|();\x0a"""},
    {LP_PRETOK_QWEN2, "1234567", "1|2|3|4|5|6|7"},
    {LP_PRETOK_QWEN2, "a\xc2""\xa0""\xc2""\xa0""b", "a|\xc2""\xa0""|\xc2""\xa0""b"},
    {LP_PRETOK_QWEN2, "$100,000.50 #tag @user", "$|1|0|0|,|0|0|0|.|5|0| #|tag| @|user"},
    {LP_PRETOK_LLAMA3, "Hello world's 12345 IT'S", "Hello| world|'s| |123|45| IT|'S"},
    {LP_PRETOK_LLAMA3, "a   b\x09""\x09""c  \x0a""\x0a""  d   ", "a|  | b|\x09""|\x09""c|  \x0a""\x0a""| | d|   "},
    {LP_PRETOK_LLAMA3, "x\x0d""\x0a""\x0d""\x0a""y \x0a"" z", "x|\x0d""\x0a""\x0d""\x0a""|y| \x0a""| z"},
    {LP_PRETOK_LLAMA3, "(foo) [bar]!!\x0a""\x0a""baz?", "(foo|)| [|bar|]!!\x0a""\x0a""|baz|?"},
    {LP_PRETOK_LLAMA3, "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""123\xe6""\x96""\x87""\xe6""\x9c""\xac""", "\xe4""\xb8""\xad""\xe6""\x96""\x87""English\xe6""\xb7""\xb7""\xe5""\x90""\x88""|123|\xe6""\x96""\x87""\xe6""\x9c""\xac"""},
    {LP_PRETOK_LLAMA3, "caf\xc3""\xa9"" \xc2""\xbd"" \xe2""\x91""\xa0""\xe2""\x91""\xa1"" 3.14", "caf\xc3""\xa9""| |\xc2""\xbd""| |\xe2""\x91""\xa0""\xe2""\x91""\xa1""| |3|.|14"},
    {LP_PRETOK_LLAMA3, "  leading", " | leading"},
    {LP_PRETOK_LLAMA3, "tail  ", "tail|  "},
    {LP_PRETOK_LLAMA3, "'twas 'LL 'Re don't", "'t|was| '|LL| '|Re| don|'t"},
    {LP_PRETOK_LLAMA3, "emoji\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83"" ok\xf0""\x9f""\x8e""\x89""!", "emoji|\xf0""\x9f""\x98""\x80""\xf0""\x9f""\x98""\x83""| ok|\xf0""\x9f""\x8e""\x89""!"},
    {LP_PRETOK_LLAMA3, "\x09""\x09""indented\x0a""\x09""code();\x0a""", "\x09""|\x09""indented|\x0a""|\x09""code|();\x0a"""},
    {LP_PRETOK_LLAMA3, "1234567", "123|456|7"},
    {LP_PRETOK_LLAMA3, "a\xc2""\xa0""\xc2""\xa0""b", "a|\xc2""\xa0""|\xc2""\xa0""b"},
    {LP_PRETOK_LLAMA3, "$100,000.50 #tag @user", "$|100|,|000|.|50| #|tag| @|user"},
};

static void test_pretokenizer_splits(void **state) {
    (void)state;
    for (size_t c = 0; c < sizeof split_cases / sizeof split_cases[0]; c++) {
        const char *s = split_cases[c].text;
        size_t n = strlen(s), ends[64];
        size_t nw = lp_bpe_split(split_cases[c].pre, (const uint8_t *)s, n, ends, 64);
        assert_true(nw <= 64);
        char got[256];
        size_t o = 0, b = 0;
        for (size_t w = 0; w < nw; w++) {
            if (w) got[o++] = '|';
            memcpy(got + o, s + b, ends[w] - b);
            o += ends[w] - b;
            b = ends[w];
        }
        got[o] = '\0';
        if (strcmp(got, split_cases[c].words) != 0)
            fail_msg("pre %d, \"%s\":\n  expected %s\n  got      %s", split_cases[c].pre, s, split_cases[c].words, got);
    }
}

/* ---- tiny hand-made vocabularies ---- */

static char tmpdir[64];

static int setup_tmp(void **state) {
    (void)state;
    strcpy(tmpdir, "/tmp/loupe-tok-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Write w to a temp file, open it and load a tokenizer; on failure returns
 * NULL with err filled. */
static lp_tokenizer *load_writer(lp_gguf_writer *w, const char *name, lp_error *err) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s.gguf", tmpdir, name);
    if (lp_gguf_writer_write(w, path, err)) fail_msg("write %s: %s", path, err->msg);
    lp_gguf_writer_free(w);
    lp_gguf *g = lp_gguf_open(path, err);
    if (!g) fail_msg("open %s: %s", path, err->msg);
    lp_tokenizer *t = lp_tokenizer_load(g, err);
    lp_gguf_close(g);
    return t;
}

/* A byte-level BPE vocabulary: the 256 byte stand-ins (ids 0..255, in byte
 * order), then `extra` tokens, then "<image>" (control) and "<obj>"
 * (user-defined). */
static lp_gguf_writer *tiny_bpe(const char *const *extra, int n_extra, const char *const *merges, int n_merges) {
    lp_gguf_writer *w = lp_gguf_writer_new();
    int n = 256 + n_extra + 2;
    char **toks = calloc((size_t)n, sizeof *toks);
    int32_t *types = calloc((size_t)n, sizeof *types);
    for (int b = 0; b < 256; b++) {
        /* GPT-2 byte stand-ins (as language/bpe.c, written out independently) */
        unsigned cp;
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if (self) {
            cp = (unsigned)b;
        } else {
            unsigned k = 0;
            for (int i = 0; i < b; i++) k += !((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE);
            cp = 256 + k;
        }
        toks[b] = calloc(4, 1);
        if (cp < 0x80) {
            toks[b][0] = (char)cp;
        } else {
            toks[b][0] = (char)(0xC0 | (cp >> 6));
            toks[b][1] = (char)(0x80 | (cp & 0x3F));
        }
        types[b] = 1;
    }
    for (int i = 0; i < n_extra; i++) {
        toks[256 + i] = strdup(extra[i]);
        types[256 + i] = 1;
    }
    toks[n - 2] = strdup("<image>");
    types[n - 2] = 3;
    toks[n - 1] = strdup("<obj>");
    types[n - 1] = 4;
    lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    lp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2");
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (uint64_t)n);
    lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, types, (uint64_t)n);
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, (uint64_t)n_merges);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)(n - 2));
    for (int i = 0; i < n; i++) free(toks[i]);
    free(toks);
    free(types);
    return w;
}

static void test_bpe_merge_order(void **state) {
    (void)state;
    const char *extra[] = {"ab", "bc", "abc"};
    lp_error err = {0};
    int n;
    /* "b c" ranks before "a b": abc -> a + bc, then "a bc" is not a merge */
    const char *m1[] = {"b c", "a b"};
    lp_tokenizer *t = load_writer(tiny_bpe(extra, 3, m1, 2), "m1", &err);
    assert_non_null(t);
    int32_t *ids = tok(t, "abc", 3, false, true, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 'a');
    assert_int_equal(ids[1], 257); /* bc */
    free(ids);
    lp_tokenizer_free(t);
    /* the other order: ab + c, then "ab c" -> abc */
    const char *m2[] = {"a b", "b c", "ab c"};
    t = load_writer(tiny_bpe(extra, 3, m2, 3), "m2", &err);
    assert_non_null(t);
    ids = tok(t, "abc", 3, false, true, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 258);
    free(ids);
    /* words do not merge across the pre-tokenizer split: "ab c" -> ab, Ġ, c */
    ids = tok(t, "ab c", 4, false, true, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[2], 'c');
    free(ids);
    /* equal candidates merge leftmost first: "abab" with only "a b" ... */
    ids = tok(t, "abab", 4, false, true, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[1], 256);
    free(ids);
    lp_tokenizer_free(t);
}

static void test_bpe_special_split(void **state) {
    (void)state;
    const char *extra[] = {"ab"};
    const char *merges[] = {"a b"};
    lp_error err = {0};
    lp_tokenizer *t = load_writer(tiny_bpe(extra, 1, merges, 1), "sp", &err);
    assert_non_null(t);
    int32_t img = lp_tokenizer_find(t, "<image>"), obj = lp_tokenizer_find(t, "<obj>");
    assert_int_equal(img, 257);
    assert_int_equal(obj, 258);
    int n;
    const char *s = "ab<image>ab<obj>";
    int32_t *ids = tok(t, s, strlen(s), false, true, &n);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[1], img);
    assert_int_equal(ids[2], 256);
    assert_int_equal(ids[3], obj);
    free(ids);
    /* off: "<image>" is text (7 single-byte tokens; no merges apply, and
     * "<image" and ">ab" are qwen2 words), but the user-defined "<obj>" is
     * still one id */
    ids = tok(t, s, strlen(s), false, false, &n);
    assert_int_equal(n, 1 + 7 + 1 + 1);
    assert_int_equal(ids[1], '<');
    assert_int_equal(ids[7], '>');
    assert_int_equal(ids[9], obj);
    size_t dl;
    char *back = detok(t, ids, n, false, &dl);
    assert_string_equal(back, s);
    free(back);
    free(ids);
    /* a truncated special token is text */
    ids = tok(t, "<image", 6, false, true, &n);
    assert_int_equal(n, 6);
    free(ids);
    /* BOS requested but the vocabulary has none */
    int32_t one[4];
    assert_true(lp_tokenize(t, "ab", 2, true, true, one, 4, &err) < 0);
    assert_int_equal(err.status, LOUPE_ERR_INVALID_ARG);
    lp_tokenizer_free(t);
}

/* A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, then
 * pieces with scores. */
static lp_gguf_writer *tiny_spm(const char *const *pieces, const float *scores, int np) {
    lp_gguf_writer *w = lp_gguf_writer_new();
    int n = 3 + 256 + np;
    char **toks = calloc((size_t)n, sizeof *toks);
    int32_t *types = calloc((size_t)n, sizeof *types);
    float *sc = calloc((size_t)n, sizeof *sc);
    toks[0] = strdup("<unk>");
    types[0] = 2;
    toks[1] = strdup("<s>");
    types[1] = 3;
    toks[2] = strdup("</s>");
    types[2] = 3;
    for (int b = 0; b < 256; b++) {
        toks[3 + b] = malloc(8);
        snprintf(toks[3 + b], 8, "<0x%02X>", b);
        types[3 + b] = 6;
    }
    for (int i = 0; i < np; i++) {
        toks[259 + i] = strdup(pieces[i]);
        types[259 + i] = 1;
        sc[259 + i] = scores[i];
    }
    lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, (uint64_t)n);
    lp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LP_GGUF_FLOAT32, sc, (uint64_t)n);
    lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, types, (uint64_t)n);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    for (int i = 0; i < n; i++) free(toks[i]);
    free(toks);
    free(types);
    free(sc);
    return w;
}

#define SP "\xe2\x96\x81" /* U+2581 */

static void test_spm_scores_and_fallback(void **state) {
    (void)state;
    /* ids: 259 ▁  260 a  261 b  262 ab  263 ▁a  264 ▁ab */
    const char *pieces[] = {SP, "a", "b", "ab", SP "a", SP "ab"};
    float scores[] = {-1, -2, -3, -5, -4, -6};
    lp_error err = {0};
    lp_tokenizer *t = load_writer(tiny_spm(pieces, scores, 6), "spm", &err);
    assert_non_null(t);
    assert_int_equal(lp_tokenizer_get_kind(t), LP_TOKENIZER_SPM);
    assert_true(lp_tokenizer_add_bos(t));
    int n;
    /* " ab" -> ▁ a b: "▁a" (-4) beats "ab" (-5); then "▁a b" -> "▁ab" */
    int32_t *ids = tok(t, "ab", 2, true, false, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 264);
    free(ids);
    /* byte fallback: é is not a piece -> <0xC3> <0xA9> */
    ids = tok(t, "a\xc3\xa9", 3, false, false, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 263);
    assert_int_equal(ids[1], 3 + 0xC3);
    assert_int_equal(ids[2], 3 + 0xA9);
    size_t dl;
    char *back = detok(t, ids, n, false, &dl);
    assert_string_equal(back, "a\xc3\xa9"); /* the prefix space is dropped */
    free(back);
    free(ids);
    /* special tokens: with parse_special the text after </s> gets the space
     * prefix again (llama.cpp); without, "</s>" is bytes/pieces */
    ids = tok(t, "a</s>a", 6, false, true, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 263);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 263);
    free(ids);
    ids = tok(t, "a</s>", 5, false, false, &n);
    assert_int_equal(n, 1 + 4);
    assert_int_equal(ids[1], 3 + '<');
    free(ids);
    lp_tokenizer_free(t);
}

/* The streaming decoder holds back a 4-byte emoji split over byte tokens,
 * replaces what cannot become valid, and flushes a dangling partial
 * sequence as U+FFFD. */
static void test_stream_utf8_holdback(void **state) {
    (void)state;
    const char *pieces[] = {SP, "a"};
    float scores[] = {-1, -2};
    lp_error err = {0};
    lp_tokenizer *t = load_writer(tiny_spm(pieces, scores, 2), "stream", &err);
    assert_non_null(t);
    int n;
    int32_t *ids = tok(t, "\xf0\x9f\x98\x80", 4, false, false, &n); /* 😀 */
    assert_int_equal(n, 5); /* ▁ + 4 bytes */
    lp_detok d;
    lp_detok_init(&d, t, false);
    const char *p;
    size_t k;
    assert_int_equal(lp_detok_push(&d, ids[0], &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 0); /* the leading space is dropped */
    for (int i = 1; i < 4; i++) {
        assert_int_equal(lp_detok_push(&d, ids[i], &p, &k, &err), LOUPE_OK);
        assert_int_equal(k, 0); /* held back */
    }
    assert_int_equal(lp_detok_push(&d, ids[4], &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 4);
    assert_memory_equal(p, "\xf0\x9f\x98\x80", 4);
    /* dangling: F0 9F then the end */
    assert_int_equal(lp_detok_push(&d, ids[1], &p, &k, &err), LOUPE_OK);
    assert_int_equal(lp_detok_push(&d, ids[2], &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 0);
    assert_int_equal(lp_detok_finish(&d, &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 3);
    assert_memory_equal(p, "\xef\xbf\xbd", 3);
    /* a partial sequence broken by an ASCII byte: U+FFFD then the byte */
    assert_int_equal(lp_detok_push(&d, 3 + 0xE2, &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 0);
    assert_int_equal(lp_detok_push(&d, lp_tokenizer_find(t, "a"), &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 4);
    assert_memory_equal(p, "\xef\xbf\xbd" "a", 4);
    /* a byte that can never start a character */
    assert_int_equal(lp_detok_push(&d, 3 + 0xFF, &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 3);
    /* control tokens render only when asked */
    assert_int_equal(lp_detok_push(&d, 2, &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 0);
    assert_int_equal(lp_detok_push(&d, 99999, &p, &k, &err), LOUPE_ERR_INVALID_ARG);
    lp_detok_free(&d);
    lp_detok_init(&d, t, true);
    assert_int_equal(lp_detok_push(&d, 2, &p, &k, &err), LOUPE_OK);
    assert_int_equal(k, 4);
    assert_memory_equal(p, "</s>", 4);
    lp_detok_free(&d);
    free(ids);
    lp_tokenizer_free(t);
}

/* ---- malformed metadata ---- */

static void expect_error(lp_gguf_writer *w, const char *name, loupe_status st, const char *key) {
    lp_error err = {0};
    lp_tokenizer *t = load_writer(w, name, &err);
    if (t) {
        lp_tokenizer_free(t);
        fail_msg("%s: loaded, expected an error naming %s", name, key);
    }
    if (err.status != st || !strstr(err.msg, key) || !strstr(err.msg, name))
        fail_msg("%s: got status %d \"%s\", expected %d naming %s and the file", name, err.status, err.msg, st, key);
}

static void test_malformed(void **state) {
    (void)state;
    const char *extra[] = {"ab"};
    const char *ok_merges[] = {"a b"};
    const char *bad_merges[] = {"a b", "a zz"};
    const char *no_space[] = {"ab"};
    lp_gguf_writer *w;

    w = lp_gguf_writer_new();
    lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    expect_error(w, "no-tokens", LOUPE_ERR_FORMAT, "tokenizer.ggml.tokens");

    w = lp_gguf_writer_new();
    expect_error(w, "no-model", LOUPE_ERR_FORMAT, "tokenizer.ggml.model");

    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "wordpiece");
    expect_error(w, "bad-model", LOUPE_ERR_UNSUPPORTED, "tokenizer.ggml.model");

    w = tiny_bpe(extra, 1, bad_merges, 2);
    expect_error(w, "bad-merge", LOUPE_ERR_FORMAT, "tokenizer.ggml.merges[1]");

    w = tiny_bpe(extra, 1, no_space, 1);
    expect_error(w, "merge-no-space", LOUPE_ERR_FORMAT, "tokenizer.ggml.merges[0]");

    int32_t types[3] = {1, 1, 1};
    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LP_GGUF_INT32, types, 3);
    expect_error(w, "type-length", LOUPE_ERR_FORMAT, "tokenizer.ggml.token_type");

    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_str(w, "tokenizer.ggml.token_type", "normal");
    expect_error(w, "type-kind", LOUPE_ERR_FORMAT, "tokenizer.ggml.token_type");

    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 100000);
    expect_error(w, "bos-range", LOUPE_ERR_FORMAT, "tokenizer.ggml.bos_token_id");

    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "klingon");
    expect_error(w, "bad-pre", LOUPE_ERR_UNSUPPORTED, "tokenizer.ggml.pre");

    w = tiny_bpe(extra, 1, ok_merges, 1);
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", NULL, 0);
    lp_gguf_writer_set_u32(w, "tokenizer.ggml.merges", 3);
    expect_error(w, "merges-type", LOUPE_ERR_FORMAT, "tokenizer.ggml.merges");

    const char *pieces[] = {SP};
    float scores[] = {-1};
    float few[2] = {0, 0};
    w = tiny_spm(pieces, scores, 1);
    lp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LP_GGUF_FLOAT32, few, 2);
    expect_error(w, "score-length", LOUPE_ERR_FORMAT, "tokenizer.ggml.scores");

    /* BPE without merges */
    w = lp_gguf_writer_new();
    const char *toks[] = {"a"};
    lp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    lp_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 1);
    expect_error(w, "no-merges", LOUPE_ERR_FORMAT, "tokenizer.ggml.merges");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_reference),
        cmocka_unit_test(test_llama_reference),
        cmocka_unit_test(test_qwen3_specials),
        cmocka_unit_test(test_qwen3_streaming),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_pretokenizer_splits),
        cmocka_unit_test(test_bpe_merge_order),
        cmocka_unit_test(test_bpe_special_split),
        cmocka_unit_test(test_spm_scores_and_fallback),
        cmocka_unit_test(test_stream_utf8_holdback),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, setup_tmp, teardown_tmp);
}
