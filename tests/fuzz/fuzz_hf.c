/* tests/fuzz/fuzz_hf.c — libFuzzer target for the Hugging Face readers of
 * `loupe convert --from-hf`: the input is tried as a SentencePiece
 * tokenizer.model (language/hf_tokenizer.c's protobuf reader) and as a
 * safetensors file (core/safetensors.c, through a memfd); both must refuse
 * cleanly or give a vocabulary / tensors whose bytes can all be read. */
#include "safetensors.h"
#include "../../language/hf_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lp_error err = {0};
    lp_hf_vocab *v = NULL;
    if (lp_hf_vocab_load_spm_mem(data, size, "fuzz.model", &v, &err) == LOUPE_OK) {
        for (int i = 0; i < lp_hf_vocab_size(v); i++) {
            const char *t = lp_hf_vocab_token(v, i);
            sink += t ? strlen(t) : 0;
            sink += (uint64_t)lp_hf_vocab_type(v, i);
        }
        lp_hf_vocab_free(v);
    } else if (err.status == LOUPE_OK || !strstr(err.msg, "fuzz.model")) {
        abort(); /* a refusal must carry a status and name the file */
    }

    int fd = memfd_create("fuzz.safetensors", 0);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    lp_safetensors *s = NULL;
    if (lp_st_open_file(path, &s, &err) == LOUPE_OK) {
        float buf[64];
        for (int i = 0; i < lp_st_count(s); i++) {
            const lp_st_tensor *t = lp_st_at(s, i);
            for (uint64_t k = 0; k < t->n_bytes; k++) sink += t->data[k];
            int64_t n = t->n_elements < 64 ? t->n_elements : 64;
            (void)lp_st_read_f32(t, 0, n, buf, &err);
            if (lp_st_find(s, t->name) != t) abort();
        }
        lp_st_close(s);
    } else if (err.status == LOUPE_OK) {
        abort();
    }
    close(fd);
    return 0;
}
