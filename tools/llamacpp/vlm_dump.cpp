// tools/llamacpp/vlm_dump.cpp — llama.cpp's side of loupe's InternVL and
// Qwen2.5-VL parity fixtures (tests/fixtures/internvl/, qwen25vl/;
// tests/test_vlm_llamacpp.c). Our own program, linking a
// llama.cpp build you made; loupe keeps no recipe that builds llama.cpp.
//
// Loads a decoder GGUF and its mmproj (CPU only, flash attention off, f32 KV
// cache, no warmup), reads an image file, tokenizes PROMPT (which holds
// mtmd's media marker where the image goes; mtmd adds the family's image
// wrapper tokens itself) with mtmd_tokenize, encodes every image chunk
// (InternVL: one chunk per tile), evaluates all chunks with
// mtmd_helper_eval_chunks (which gives Qwen's M-RoPE positions), then
// greedily generates N_GEN tokens (argmax, no stop at end of generation).
// Writes one GGUF of tensors:
//
//   prompt.ids      i32 (n_pos)        token id of every prompt position, -1 for image rows
//   image.n_tokens  i32 (1)            image rows in the prompt (all chunks)
//   image.n_pos     i32 (1)            positions the image advances (M-RoPE: max(nx, ny))
//   image.nx_ny     i32 (n_chunks, 2)  mtmd_image_tokens_get_nx / get_ny of each image chunk, in
//                                      order (InternVL: one chunk per tile, each 256 x 1: mtmd
//                                      flattens non-M-RoPE images; Qwen: one chunk, the merged grid)
//   tiles.hash      i32 (n_tiles, 2)   FNV-1a 64 (lo, hi) of each tile's f32 pixels exactly as
//                                      the ViT received them ("inp_raw"), in encode order
//   tiles.whc       i32 (n_tiles, 3)   each tile's width, height, channels (ggml ne[0..2] of
//                                      inp_raw: ne0 = width, ne1 = height, ne2 = 3, planar RGB)
//   tiles.sum       f32 (n_tiles)      sum of each tile's pixels (diagnostics)
//   image.embd      f32 (n_tokens, n_embd)  every image chunk's embeddings, in order
//   logits          f32 (n_vocab)      after the whole prompt
//   greedy.tokens   i32 (N_GEN)
// With VLM_DUMP_TILES=1 also tiles.%d f32 (the pixels).
//
// Usage:
//   vlm_dump MODEL.gguf MMPROJ.gguf IMAGE.png PROMPT N_GEN OUT.gguf [MIN_TOKENS MAX_TOKENS]
// The marker in PROMPT is mtmd_default_marker() ("<__media__>").
//
// Build against an existing llama.cpp build tree:
//
//   LLAMA=/work/llama.cpp
//   c++ -std=c++17 -O2 -I$LLAMA/include -I$LLAMA/ggml/include -I$LLAMA/tools/mtmd \
//       tools/llamacpp/vlm_dump.cpp \
//       $LLAMA/build/tools/mtmd/libmtmd.a $LLAMA/build/src/libllama.a $LLAMA/build/vendor/hash/libvendor-hash.a \
//       $LLAMA/build/ggml/src/libggml.a $LLAMA/build/ggml/src/libggml-cpu.a \
//       $LLAMA/build/ggml/src/libggml-base.a -fopenmp -lpthread -ldl -lm -o /tmp/vlm_dump
#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct tiles {
    bool on = false;
    bool fresh = false; /* set before each encode: take its pixels once */
    std::vector<std::vector<float>> px;
    std::vector<std::vector<int32_t>> whc;
};

// "inp_raw" is a graph input, never a node the callback sees: take it as
// the source of the first node that reads it (the patch im2col).
static bool eval_cb(struct ggml_tensor *t, bool ask, void *user) {
    auto *c = (tiles *)user;
    const ggml_tensor *in = nullptr;
    for (int i = 0; i < GGML_MAX_SRC && t->src[i]; i++)
        if (strcmp(t->src[i]->name, "inp_raw") == 0) in = t->src[i];
    const bool want = c->on && in != nullptr;
    if (ask) return want;
    if (!want || in->type != GGML_TYPE_F32 || !ggml_is_contiguous(in)) return true;
    if (!c->fresh) return true; /* a second reader of the same input (Qwen's two patch kernels) */
    c->fresh = false;
    std::vector<float> v(ggml_nelements(in));
    ggml_backend_tensor_get(in, v.data(), 0, ggml_nbytes(in));
    c->px.push_back(v);
    c->whc.push_back({(int32_t)in->ne[0], (int32_t)in->ne[1], (int32_t)in->ne[2]});
    return true;
}

static void die(const char *msg) {
    fprintf(stderr, "vlm_dump: %s\n", msg);
    exit(1);
}

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
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
    if (argc != 7 && argc != 9) {
        fprintf(stderr, "usage: %s MODEL.gguf MMPROJ.gguf IMAGE PROMPT N_GEN OUT.gguf [MIN_TOKENS MAX_TOKENS]\n",
                argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *mmproj_path = argv[2], *img_path = argv[3], *prompt = argv[4];
    const int n_gen = atoi(argv[5]);
    const char *out_path = argv[6];

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) die("cannot load the model");
    const llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const int n_embd = llama_model_n_embd(model);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 8192;
    cp.n_batch = 2048;
    cp.n_ubatch = 2048;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.no_perf = true;
    llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) die("cannot create the context");

    tiles cap;
    mtmd_context_params mcp = mtmd_context_params_default();
    mcp.use_gpu = false;
    mcp.print_timings = false;
    mcp.n_threads = 2;
    mcp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    mcp.warmup = false;
    mcp.cb_eval = eval_cb;
    mcp.cb_eval_user_data = &cap;
    if (argc == 9) {
        mcp.image_min_tokens = atoi(argv[7]);
        mcp.image_max_tokens = atoi(argv[8]);
    }
    mtmd_context *mctx = mtmd_init_from_file(mmproj_path, model, mcp);
    if (!mctx) die("cannot load the mmproj");

    mtmd_helper_bitmap_wrapper bw = mtmd_helper_bitmap_init_from_file(mctx, img_path, false);
    if (!bw.bitmap) die("cannot read the image");
    mtmd_input_chunks *chunks = mtmd_input_chunks_init();
    mtmd_input_text txt = {prompt, strlen(prompt), true, true};
    const mtmd_bitmap *bmps[1] = {bw.bitmap};
    if (mtmd_tokenize(mctx, chunks, &txt, bmps, 1) != 0) die("mtmd_tokenize failed");

    // every position's id (-1: image) and every image chunk's embeddings, tiles captured once
    std::vector<int32_t> ids;
    std::vector<float> embd;
    std::vector<int32_t> nx_ny;
    int n_img = 0, n_img_pos = 0;
    cap.on = true;
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++) {
        const mtmd_input_chunk *c = mtmd_input_chunks_get(chunks, i);
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token *t = mtmd_input_chunk_get_tokens_text(c, &n);
            ids.insert(ids.end(), t, t + n);
            continue;
        }
        cap.fresh = true;
        if (mtmd_encode_chunk(mctx, c) != 0) die("mtmd_encode_chunk failed");
        const int n = (int)mtmd_input_chunk_get_n_tokens(c);
        const float *e = mtmd_get_output_embd(mctx);
        embd.insert(embd.end(), e, e + (size_t)n * n_embd);
        ids.insert(ids.end(), (size_t)n, -1);
        n_img += n;
        n_img_pos += (int)mtmd_input_chunk_get_n_pos(c);
        const mtmd_image_tokens *it = mtmd_input_chunk_get_tokens_image(c);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
        nx_ny.push_back(it ? (int32_t)mtmd_image_tokens_get_nx(it) : -1);
        nx_ny.push_back(it ? (int32_t)mtmd_image_tokens_get_ny(it) : -1);
#pragma GCC diagnostic pop
    }
    cap.on = false;
    fprintf(stderr, "vlm_dump: %zu positions, %d image tokens (%d positions), %zu tiles\n", ids.size(), n_img,
            n_img_pos, cap.px.size());
    fprintf(stderr, "vlm_dump: image chunks nx x ny:");
    for (size_t i = 0; i < nx_ny.size(); i += 2) fprintf(stderr, " %dx%d", nx_ny[i], nx_ny[i + 1]);
    fprintf(stderr, "\n");

    llama_pos n_past = 0;
    if (mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, cp.n_batch, true, &n_past) != 0) die("eval failed");
    std::vector<float> logits(llama_get_logits_ith(ctx, -1), llama_get_logits_ith(ctx, -1) + n_vocab);

    std::vector<int32_t> gen;
    std::vector<float> cur = logits;
    for (int step = 0; step < n_gen; step++) {
        int best = 0;
        for (int i = 1; i < n_vocab; i++)
            if (cur[i] > cur[best]) best = i;
        gen.push_back(best);
        if (step + 1 == n_gen) break;
        llama_batch b = llama_batch_init(1, 0, 1);
        b.token[0] = best;
        b.pos[0] = n_past++;
        b.n_seq_id[0] = 1;
        b.seq_id[0][0] = 0;
        b.logits[0] = true;
        b.n_tokens = 1;
        if (llama_decode(ctx, b) != 0) die("llama_decode failed");
        llama_batch_free(b);
        const float *l = llama_get_logits_ith(ctx, -1);
        cur.assign(l, l + n_vocab);
    }
    fprintf(stderr, "vlm_dump: greedy:");
    for (int t : gen) fprintf(stderr, " %d", t);
    fprintf(stderr, "\n");

    out_file o;
    gguf_set_val_str(o.g, "parity.producer", "llama.cpp vlm_dump");
    gguf_set_val_str(o.g, "parity.prompt", prompt);
    const int n_tiles = (int)cap.px.size();
    std::vector<int32_t> hash, whc;
    std::vector<float> sums;
    for (int t = 0; t < n_tiles; t++) {
        const uint64_t h = fnv1a(cap.px[t].data(), cap.px[t].size() * sizeof(float));
        hash.push_back((int32_t)(uint32_t)h);
        hash.push_back((int32_t)(uint32_t)(h >> 32));
        whc.insert(whc.end(), cap.whc[t].begin(), cap.whc[t].end());
        double s = 0;
        for (float v : cap.px[t]) s += v;
        sums.push_back((float)s);
        if (getenv("VLM_DUMP_TILES") && atoi(getenv("VLM_DUMP_TILES"))) {
            std::string nm = "tiles." + std::to_string(t);
            o.add(nm.c_str(), GGML_TYPE_F32, {(int64_t)cap.px[t].size()}, cap.px[t].data());
        }
    }
    o.add("prompt.ids", GGML_TYPE_I32, {(int64_t)ids.size()}, ids.data());
    o.add("image.n_tokens", GGML_TYPE_I32, {1}, &n_img);
    o.add("image.n_pos", GGML_TYPE_I32, {1}, &n_img_pos);
    if (!nx_ny.empty()) o.add("image.nx_ny", GGML_TYPE_I32, {2, (int64_t)nx_ny.size() / 2}, nx_ny.data());
    if (n_tiles > 0) {
        o.add("tiles.hash", GGML_TYPE_I32, {2, n_tiles}, hash.data());
        o.add("tiles.whc", GGML_TYPE_I32, {3, n_tiles}, whc.data());
        o.add("tiles.sum", GGML_TYPE_F32, {n_tiles}, sums.data());
    }
    o.add("image.embd", GGML_TYPE_F32, {n_embd, n_img}, embd.data());
    o.add("logits", GGML_TYPE_F32, {n_vocab}, logits.data());
    o.add("greedy.tokens", GGML_TYPE_I32, {(int64_t)gen.size()}, gen.data());
    o.write(out_path);

    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(bw.bitmap);
    mtmd_free(mctx);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
