// tools/llamacpp/llava_dump.cpp — llama.cpp's side of loupe's LLaVA parity
// fixtures (tests/fixtures/parity/, tests/test_parity.c).
//
// Loads a decoder GGUF and its mmproj with llama.cpp (libllama + libmtmd,
// CPU only, flash attention off, f32 KV cache), encodes one S×S RGB image
// with mtmd, splices the image embeddings into an explicit token sequence
//
//     prefix ids | image embeddings | suffix ids
//
// decodes it with llama_batch (token batches for the text, an embd batch for
// the image), and greedily generates N tokens (no stop at EOS). It writes one
// GGUF of tensors:
//
//   pixels          f32 (3, S, S)      mtmd's preprocessed input ("inp_raw",
//                                      captured by the eval callback)
//   v.blk.%d        f32 (n_pos, n_embd) the ViT's "layer_out-%d"
//   mm.out          f32 (N, n_embd_lm) mtmd_get_output_embd
//   logits          f32 (n_vocab)      last position after the prompt
//   greedy.tokens   i32 (n_gen)        greedy continuation
//   greedy.logits   f32 (n_gen, n_vocab) logits that chose each token
//
// Usage:
//   llava_dump MODEL.gguf MMPROJ.gguf IMAGE.rgb S PREFIX_IDS SUFFIX_IDS N_GEN OUT.gguf
// where IMAGE.rgb is S*S*3 raw bytes (row-major RGB) and *_IDS are
// comma-separated token ids.
//
// Build against an existing llama.cpp build tree (no build recipe for
// llama.cpp is kept in loupe); see tests/fixtures/README.md:
//
//   LLAMA=/work/llama.cpp
//   c++ -std=c++17 -O2 -I$LLAMA/include -I$LLAMA/ggml/include -I$LLAMA/tools/mtmd \
//       tools/llamacpp/llava_dump.cpp \
//       $LLAMA/build/tools/mtmd/libmtmd.a $LLAMA/build/src/libllama.a \
//       $LLAMA/build/ggml/src/libggml.a $LLAMA/build/ggml/src/libggml-cpu.a \
//       $LLAMA/build/ggml/src/libggml-base.a -fopenmp -lpthread -ldl -lm -o /tmp/llava_dump
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
#include "mtmd.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

struct capture {
    std::map<std::string, std::vector<float>> t;
    std::map<std::string, std::vector<int64_t>> ne;
};

static bool g_all = false; // LLAVA_DUMP_ALL=1: also every named ViT tensor, as "clip.<name>"

static bool wanted(const char *name) {
    return strcmp(name, "inp_raw") == 0 || strncmp(name, "layer_out-", 10) == 0 || (g_all && name[0]);
}

static bool eval_cb(struct ggml_tensor *t, bool ask, void *user) {
    if (ask) return wanted(t->name);
    if (!wanted(t->name) || t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) return true;
    auto *c = (capture *)user;
    std::vector<float> v(ggml_nelements(t));
    ggml_backend_tensor_get(t, v.data(), 0, ggml_nbytes(t));
    c->t[t->name] = v;
    c->ne[t->name] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
    return true;
}

static std::vector<llama_token> parse_ids(const char *s) {
    std::vector<llama_token> v;
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s) break;
        v.push_back((llama_token)x);
        s = *end ? end + 1 : end;
    }
    return v;
}

static void die(const char *msg) {
    fprintf(stderr, "llava_dump: %s\n", msg);
    exit(1);
}

struct out_file {
    gguf_context *g = gguf_init_empty();
    std::vector<ggml_context *> ctxs;
    void add(const char *name, ggml_type type, std::vector<int64_t> ne, const void *data) {
        size_t n = 1;
        for (auto x : ne) n *= (size_t)x;
        ggml_init_params p = {ggml_tensor_overhead() + n * ggml_type_size(type) + 64, nullptr, false};
        ggml_context *c = ggml_init(p);
        ggml_tensor *t = ggml_new_tensor(c, type, (int)ne.size(), ne.data());
        memcpy(t->data, data, ggml_nbytes(t));
        ggml_set_name(t, name);
        gguf_add_tensor(g, t);
        ctxs.push_back(c);
    }
    void write(const char *path) {
        if (!gguf_write_to_file(g, path, false)) die("cannot write output");
        gguf_free(g);
        for (auto c : ctxs) ggml_free(c);
    }
};

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s MODEL.gguf MMPROJ.gguf IMAGE.rgb S PREFIX_IDS SUFFIX_IDS N_GEN OUT.gguf\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *mmproj_path = argv[2], *img_path = argv[3], *out_path = argv[8];
    const int S = atoi(argv[4]);
    const std::vector<llama_token> prefix = parse_ids(argv[5]), suffix = parse_ids(argv[6]);
    const int n_gen = atoi(argv[7]);

    g_all = getenv("LLAVA_DUMP_ALL") && atoi(getenv("LLAVA_DUMP_ALL"));
    std::vector<unsigned char> rgb((size_t)S * S * 3);
    FILE *f = fopen(img_path, "rb");
    if (!f || fread(rgb.data(), 1, rgb.size(), f) != rgb.size()) die("cannot read the image");
    fclose(f);

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) die("cannot load the model");
    const llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const int n_embd = llama_model_n_embd(model);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.no_perf = true;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) die("cannot create the context");

    capture cap;
    mtmd_context_params mcp = mtmd_context_params_default();
    mcp.use_gpu = false;
    mcp.print_timings = false;
    mcp.n_threads = 2;
    mcp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    mcp.warmup = false;
    mcp.cb_eval = eval_cb;
    mcp.cb_eval_user_data = &cap;
    mtmd_context *mctx = mtmd_init_from_file(mmproj_path, model, mcp);
    if (!mctx) die("cannot load the mmproj");

    // image -> chunks: the prompt is just the media marker
    mtmd_bitmap *bmp = mtmd_bitmap_init((uint32_t)S, (uint32_t)S, rgb.data());
    mtmd_input_chunks *chunks = mtmd_input_chunks_init();
    const char *marker = mtmd_get_marker(mctx);
    mtmd_input_text txt = {marker, strlen(marker), false, true};
    const mtmd_bitmap *bmps[1] = {bmp};
    if (mtmd_tokenize(mctx, chunks, &txt, bmps, 1) != 0) die("mtmd_tokenize failed");
    const mtmd_input_chunk *img_chunk = nullptr;
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++) {
        const mtmd_input_chunk *c = mtmd_input_chunks_get(chunks, i);
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_IMAGE) img_chunk = c;
    }
    if (!img_chunk) die("no image chunk");
    if (mtmd_encode_chunk(mctx, img_chunk) != 0) die("mtmd_encode_chunk failed");
    const int n_img = (int)mtmd_input_chunk_get_n_tokens(img_chunk);
    std::vector<float> img_embd((size_t)n_img * n_embd);
    memcpy(img_embd.data(), mtmd_get_output_embd(mctx), img_embd.size() * sizeof(float));
    fprintf(stderr, "llava_dump: %d image tokens of width %d\n", n_img, n_embd);

    // decode prefix | image | suffix
    int pos = 0;
    auto decode_tokens = [&](const std::vector<llama_token> &ids, bool want_logits) {
        llama_batch b = llama_batch_init((int)ids.size(), 0, 1);
        for (size_t i = 0; i < ids.size(); i++) {
            b.token[i] = ids[i];
            b.pos[i] = pos++;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = want_logits && i + 1 == ids.size();
        }
        b.n_tokens = (int)ids.size();
        if (llama_decode(ctx, b) != 0) die("llama_decode (tokens) failed");
        llama_batch_free(b);
    };
    decode_tokens(prefix, false);
    {
        llama_batch b = llama_batch_init(n_img, n_embd, 1);
        memcpy(b.embd, img_embd.data(), img_embd.size() * sizeof(float));
        for (int i = 0; i < n_img; i++) {
            b.pos[i] = pos++;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = false;
        }
        b.n_tokens = n_img;
        if (llama_decode(ctx, b) != 0) die("llama_decode (image) failed");
        llama_batch_free(b);
    }
    decode_tokens(suffix, true);
    std::vector<float> logits(llama_get_logits_ith(ctx, -1), llama_get_logits_ith(ctx, -1) + n_vocab);

    std::vector<int32_t> gen;
    std::vector<float> gen_logits;
    std::vector<float> cur = logits;
    for (int step = 0; step < n_gen; step++) {
        int best = 0;
        for (int i = 1; i < n_vocab; i++)
            if (cur[i] > cur[best]) best = i;
        gen.push_back(best);
        gen_logits.insert(gen_logits.end(), cur.begin(), cur.end());
        if (step + 1 == n_gen) break;
        decode_tokens({best}, true);
        const float *l = llama_get_logits_ith(ctx, -1);
        cur.assign(l, l + n_vocab);
    }
    fprintf(stderr, "llava_dump: greedy:");
    for (int t : gen) fprintf(stderr, " %d", t);
    fprintf(stderr, "\n");

    out_file o;
    gguf_set_val_str(o.g, "parity.producer", "llama.cpp llava_dump");
    gguf_set_val_str(o.g, "parity.model", model_path);
    gguf_set_val_str(o.g, "parity.mmproj", mmproj_path);
    if (cap.t.count("inp_raw")) {
        auto &ne = cap.ne["inp_raw"];
        o.add("pixels", GGML_TYPE_F32, {ne[0], ne[1], ne[2]}, cap.t["inp_raw"].data());
    }
    for (int il = 0; il < 256; il++) {
        std::string k = "layer_out-" + std::to_string(il);
        if (!cap.t.count(k)) continue;
        std::string nm = "v.blk." + std::to_string(il);
        auto &ne = cap.ne[k];
        o.add(nm.c_str(), GGML_TYPE_F32, {ne[0], ne[1]}, cap.t[k].data());
    }
    if (g_all) {
        for (auto &kv : cap.t) {
            auto &ne = cap.ne[kv.first];
            std::string nm = "clip." + kv.first;
            o.add(nm.c_str(), GGML_TYPE_F32, {ne[0], ne[1], ne[2], ne[3]}, kv.second.data());
        }
    }
    o.add("mm.out", GGML_TYPE_F32, {n_embd, n_img}, img_embd.data());
    o.add("logits", GGML_TYPE_F32, {n_vocab}, logits.data());
    o.add("greedy.tokens", GGML_TYPE_I32, {(int64_t)gen.size()}, gen.data());
    o.add("greedy.logits", GGML_TYPE_F32, {n_vocab, (int64_t)gen.size()}, gen_logits.data());
    o.write(out_path);

    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(bmp);
    mtmd_free(mctx);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
