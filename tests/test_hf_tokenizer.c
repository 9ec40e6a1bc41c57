/* tests/test_hf_tokenizer.c — language/hf_tokenizer.c: SentencePiece's
 * tokenizer.model (our protobuf reader) and a byte-level BPE tokenizer.json
 * become GGUF tokenizer metadata that loupe's own tokenizer loads and uses;
 * padding to config.json's vocab_size and added tokens as llama.cpp's
 * converter does; every malformed protobuf is refused with the file named
 * and no crash (all cut points of a real file, bad wire types, lengths past
 * the end). The fixture is the random Ferret checkpoint's tokenizer
 * (tests/fixtures/ferret/ckpt, tools/reference/spm_model.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/testutil.h"

#include "../language/hf_tokenizer.h"
#include "../language/tokenizer.h"
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT "tests/fixtures/ferret/ckpt"

static char tmpdir[64];

static int setup(void **state) {
    (void)state;
    return tu_mkdtemp(tmpdir, sizeof tmpdir, "hftok");
}

static int teardown(void **state) {
    (void)state;
    return tu_rmtree(tmpdir);
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Write v's metadata to a GGUF and load loupe's tokenizer from it. */
static lp_tokenizer *as_tokenizer(const lp_hf_vocab *v, lp_gguf **g_out) {
    char p[256];
    snprintf(p, sizeof p, "%s/vocab.gguf", tmpdir);
    lp_gguf_writer *w = lp_gguf_writer_new();
    lp_error err = {0};
    assert_int_equal(lp_hf_vocab_write_gguf(v, w, &err), LOUPE_OK);
    assert_int_equal(lp_gguf_writer_write(w, p, &err), LOUPE_OK);
    lp_gguf_writer_free(w);
    lp_gguf *g = lp_gguf_open(p, &err);
    assert_non_null(g);
    lp_tokenizer *t = lp_tokenizer_load(g, &err);
    if (!t) fail_msg("%s", err.msg);
    *g_out = g;
    return t;
}

static void test_sentencepiece(void **state) {
    (void)state;
    lp_hf_vocab *v = NULL;
    lp_error err = {0};
    /* without a vocab_size: the pieces, then added_tokens.json's id (the next) is past them: ignored */
    assert_int_equal(lp_hf_vocab_load(CKPT, 0, &v, &err), LOUPE_OK);
    const int n = lp_hf_vocab_size(v);
    assert_true(n > 300);
    assert_string_equal(lp_hf_vocab_model(v), "llama");
    assert_string_equal(lp_hf_vocab_token(v, 0), "<unk>");
    assert_int_equal(lp_hf_vocab_type(v, 0), 2);
    assert_string_equal(lp_hf_vocab_token(v, 1), "<s>");
    assert_int_equal(lp_hf_vocab_type(v, 1), 3);
    assert_string_equal(lp_hf_vocab_token(v, 3), "<0x00>");
    assert_int_equal(lp_hf_vocab_type(v, 3), 6);
    assert_string_equal(lp_hf_vocab_token(v, 259), "\xe2\x96\x81"); /* '▁' */
    assert_int_equal(lp_hf_vocab_special(v, "bos"), 1);
    assert_int_equal(lp_hf_vocab_special(v, "eos"), 2);
    assert_int_equal(lp_hf_vocab_special(v, "unk"), 0);
    /* the first merge has score -0, later ones lower */
    assert_true(lp_hf_vocab_score(v, n - 1) < lp_hf_vocab_score(v, n - 2));
    lp_hf_vocab_free(v);

    /* config.json's vocab_size n + 3: <region_fea> at n (added_tokens.json),
     * two [PAD] tokens after it, as llama.cpp's converter pads */
    assert_int_equal(lp_hf_vocab_load(CKPT, n + 3, &v, &err), LOUPE_OK);
    assert_int_equal(lp_hf_vocab_size(v), n + 3);
    assert_string_equal(lp_hf_vocab_token(v, n), "<region_fea>");
    assert_int_equal(lp_hf_vocab_type(v, n), 4);
    assert_true(lp_hf_vocab_score(v, n) == -1000.0f);
    char pad[32];
    snprintf(pad, sizeof pad, "[PAD%d]", n + 2);
    assert_string_equal(lp_hf_vocab_token(v, n + 2), pad);
    assert_int_equal(lp_hf_vocab_type(v, n + 2), 5);

    /* loupe's tokenizer on the result: <region_fea> is one token, the rest
     * SentencePiece pieces with the space prefix and byte fallback */
    lp_gguf *g;
    lp_tokenizer *t = as_tokenizer(v, &g);
    int32_t ids[64];
    int k = lp_tokenize(t, "a <region_fea>\xc3\xa9", strlen("a <region_fea>\xc3\xa9"), true, true, ids, 64, &err);
    assert_true(k >= 5);
    assert_int_equal(ids[0], 1);
    bool region = false;
    for (int i = 0; i < k; i++) region |= ids[i] == n;
    assert_true(region);
    assert_int_equal(ids[k - 2], 3 + 0xc3); /* 'é' is not a piece: two byte tokens */
    assert_int_equal(ids[k - 1], 3 + 0xa9);
    lp_tokenizer_free(t);
    lp_gguf_close(g);
    lp_hf_vocab_free(v);
}

static void test_spm_refusals(void **state) {
    (void)state;
    size_t n;
    uint8_t *buf = read_all(CKPT "/tokenizer.model", &n);
    lp_hf_vocab *v = NULL;
    lp_error err = {0};
    assert_int_equal(lp_hf_vocab_load_spm_mem(buf, n, "tok.model", &v, &err), LOUPE_OK);
    lp_hf_vocab_free(v);
    /* every cut point: a whole prefix of pieces loads, anything else is a
     * FORMAT error naming the file; nothing crashes */
    int ok = 0, bad = 0;
    for (size_t cut = 0; cut < n; cut++) {
        loupe_status st = lp_hf_vocab_load_spm_mem(buf, cut, "tok.model", &v, &err);
        if (st == LOUPE_OK) {
            ok++;
            lp_hf_vocab_free(v);
        } else {
            bad++;
            assert_int_equal(st, LOUPE_ERR_FORMAT);
            assert_null(v);
            assert_non_null(strstr(err.msg, "tok.model: "));
        }
    }
    printf("  %zu cut points: %d load (whole pieces), %d refused\n", n, ok, bad);
    assert_true(ok > 100 && bad > 1000);
    assert_int_equal(lp_hf_vocab_load_spm_mem(buf, 0, "tok.model", &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "no pieces"));
    free(buf);

    /* a piece with a group (wire type 3), a length past the end, a bad type */
    const uint8_t group[] = {0x0a, 0x02, 0x0b, 0x00};
    assert_int_equal(lp_hf_vocab_load_spm_mem(group, sizeof group, "g", &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "wire type"));
    const uint8_t past[] = {0x0a, 0x7f, 0x0a, 0x01, 'a'};
    assert_int_equal(lp_hf_vocab_load_spm_mem(past, sizeof past, "p", &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "past the end"));
    const uint8_t type9[] = {0x0a, 0x05, 0x0a, 0x01, 'a', 0x18, 0x09};
    assert_int_equal(lp_hf_vocab_load_spm_mem(type9, sizeof type9, "t", &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "unknown type 9"));
    const uint8_t noname[] = {0x0a, 0x02, 0x18, 0x01};
    assert_int_equal(lp_hf_vocab_load_spm_mem(noname, sizeof noname, "x", &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "piece 0 has no text"));
    const uint8_t overlong[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(lp_hf_vocab_load_spm_mem(overlong, sizeof overlong, "o", &v, &err), LOUPE_ERR_FORMAT);
    /* a unigram model with one piece is fine; a WORD model is not supported */
    const uint8_t word[] = {0x0a, 0x03, 0x0a, 0x01, 'a', 0x12, 0x02, 0x18, 0x03};
    assert_int_equal(lp_hf_vocab_load_spm_mem(word, sizeof word, "w", &v, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "model_type 3"));
}

static void test_tokenizer_json(void **state) {
    (void)state;
    char d[192];
    snprintf(d, sizeof d, "%s/bpe", tmpdir);
    mkdir(d, 0755);
    write_text(d, "tokenizer.json",
               "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":5,\"content\":\"<|end|>\",\"special\":true}],"
               "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"abc\":4},"
               "\"merges\":[\"a b\",[\"ab\",\"c\"]]}}");
    write_text(d, "tokenizer_config.json", "{\"eos_token\":\"<|end|>\",\"add_bos_token\":false}");
    lp_hf_vocab *v = NULL;
    lp_error err = {0};
    assert_int_equal(lp_hf_vocab_load(d, 0, &v, &err), LOUPE_OK);
    assert_string_equal(lp_hf_vocab_model(v), "gpt2");
    assert_int_equal(lp_hf_vocab_size(v), 6);
    assert_int_equal(lp_hf_vocab_type(v, 5), 3);
    assert_int_equal(lp_hf_vocab_special(v, "eos"), 5);
    lp_gguf *g;
    lp_tokenizer *t = as_tokenizer(v, &g);
    int32_t ids[16];
    int k = lp_tokenize(t, "abcab<|end|>", 12, false, true, ids, 16, &err);
    assert_int_equal(k, 3);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 5);
    lp_tokenizer_free(t);
    lp_gguf_close(g);
    lp_hf_vocab_free(v);

    /* an id hole, a SentencePiece-style one, a unigram one, bad JSON */
    write_text(d, "tokenizer.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2},\"merges\":[]}}");
    assert_int_equal(lp_hf_vocab_load(d, 0, &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "no token has id 1"));
    /* a SentencePiece-style (byte_fallback) BPE: merged pieces scored by merge rank, so that
     * " ab" is ▁ + ab (the merge a b has rank 0, ▁ a rank 1) as in the BPE itself; equal
     * scores (llama.cpp's LlamaHfVocab) would merge the leftmost pair into ▁a + b */
    char json[8192];
    int k2 = snprintf(json, sizeof json, "{\"added_tokens\":[{\"id\":1,\"content\":\"<s>\",\"special\":true},"
                                         "{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
                                         "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<s>\":1,\"</s>\":2");
    for (int b = 0; b < 256; b++) k2 += snprintf(json + k2, sizeof json - (size_t)k2, ",\"<0x%02X>\":%d", b, 3 + b);
    snprintf(json + k2, sizeof json - (size_t)k2,
             ",\"\xe2\x96\x81\":259,\"a\":260,\"b\":261,\"\xe2\x96\x81" "a\":262,\"ab\":263},"
             "\"merges\":[\"a b\",[\"\xe2\x96\x81\",\"a\"]]}}");
    write_text(d, "tokenizer.json", json);
    write_text(d, "tokenizer_config.json", "{\"bos_token\":\"<s>\",\"eos_token\":\"</s>\",\"unk_token\":\"<unk>\"}");
    assert_int_equal(lp_hf_vocab_load(d, 0, &v, &err), LOUPE_OK);
    assert_string_equal(lp_hf_vocab_model(v), "llama");
    assert_int_equal(lp_hf_vocab_type(v, 3 + 0x41), 6);
    assert_int_equal(lp_hf_vocab_type(v, 1), 3);
    assert_true(lp_hf_vocab_score(v, 263) == 0.0f && lp_hf_vocab_score(v, 262) == -1.0f);
    assert_int_equal(lp_hf_vocab_special(v, "bos"), 1);
    t = as_tokenizer(v, &g);
    k = lp_tokenize(t, "ab ba\xc3\xa9", strlen("ab ba\xc3\xa9"), true, false, ids, 16, &err);
    /* <s> ▁ ab ▁ b a <0xC3> <0xA9> */
    const int32_t want[] = {1, 259, 263, 259, 261, 260, 3 + 0xc3, 3 + 0xa9};
    assert_int_equal(k, 8);
    assert_memory_equal(ids, want, sizeof want);
    lp_tokenizer_free(t);
    lp_gguf_close(g);
    lp_hf_vocab_free(v);
    write_text(d, "tokenizer.json", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}");
    assert_int_equal(lp_hf_vocab_load(d, 0, &v, &err), LOUPE_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "Unigram"));
    write_text(d, "tokenizer.json", "{\"model\":");
    assert_int_equal(lp_hf_vocab_load(d, 0, &v, &err), LOUPE_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "bpe/tokenizer.json: not a JSON object"));
    char e[192];
    snprintf(e, sizeof e, "%s/empty", tmpdir);
    mkdir(e, 0755);
    assert_int_equal(lp_hf_vocab_load(e, 0, &v, &err), LOUPE_ERR_IO);
    assert_non_null(strstr(err.msg, "no tokenizer.model or tokenizer.json"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sentencepiece),
        cmocka_unit_test(test_spm_refusals),
        cmocka_unit_test(test_tokenizer_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
