/* cli/cmd_convert.c — `loupe convert --flash IN.gguf OUT.gguf`: write a
 * decoder in the flash layout (language/flash_format.h); `loupe convert
 * --from-hf DIR OUT-PREFIX`: a Hugging Face checkpoint to a GGUF pair
 * (fusion/hf_convert.h). */
#include "cli.h"
#include "gguf.h"
#include "../fusion/hf_convert.h"
#include "../language/flash_format.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void convert_help(FILE *out) {
    fprintf(out,
            "usage: loupe convert --from-hf DIR OUT-PREFIX [--outtype T] [--vision DIR] [--force]\n"
            "       loupe convert --flash IN.gguf OUT.gguf [options]\n\n"
            "--from-hf: turns a Hugging Face checkpoint directory (config.json, safetensors\n"
            "in one file or sharded, tokenizer.model or tokenizer.json) into OUT-PREFIX.gguf\n"
            "and, for a vision-language checkpoint, OUT-PREFIX-mmproj.gguf, in llama.cpp's\n"
            "conventions. Decoders: llama (LlamaForCausalLM, Vicuna); pairs: Ferret\n"
            "(FERRETLlamaForCausalLM, with its region sampler), LLaVA-1.5 (llava_llama).\n"
            "  --outtype T           f32, f16 (default), q8_0, q4_0 or q4_k for the decoder's\n"
            "                        matrices (the mmproj: f32 with f32, else f16)\n"
            "  --vision DIR          the CLIP tower's own checkpoint (mm_vision_tower, e.g.\n"
            "                        openai/clip-vit-large-patch14-336) when DIR does not hold it\n"
            "  --force               overwrite existing output files\n\n"
            "--flash:\n"
            "Writes the llama/qwen2 decoder IN in the flash layout (LLM in a flash,\n"
            "Alizadeh et al. 2023): every tensor as it is, except each layer's\n"
            "ffn_gate/ffn_up/ffn_down, which become one tensor blk.L.ffn_bundle holding,\n"
            "per FFN neuron, its gate row, up row and down column in one 512-byte\n"
            "aligned record, plus a low-rank sparsity predictor blk.L.ffn_pred_a/_b\n"
            "(a truncated SVD of ffn_gate, or one trained offline and read with\n"
            "--predictor-file). Quantized ffn_down columns are requantized\n"
            "(to the input type when loupe can write it, else q8_0); f32/f16/bf16 are\n"
            "copied exactly. OUT is written beside itself and renamed when complete.\n\n"
            "  --predictor svd|none  predictor kind (default svd; none: dense flash mode only)\n"
            "  --predictor-file P    take each layer's predictor from the GGUF P instead:\n"
            "                        blk.L.ffn_pred_a (f32/f16, ne [n_embd, rank]) and\n"
            "                        blk.L.ffn_pred_b (ne [rank, n_ff]) for every layer, kind\n"
            "                        from P's loupe.flash.predictor (lowrank if absent); see\n"
            "                        tools/flash/train_predictor.py. Not with --predictor/--rank\n"
            "  --rank R              predictor rank for every layer (default: chosen per\n"
            "                        layer, a multiple of 16, by --energy and --max-pred-frac)\n"
            "  --energy E            auto rank: capture this fraction of ||W_gate||_F^2\n"
            "                        (default 0.9, 0 < E <= 1)\n"
            "  --max-pred-frac F     auto rank: predictor bytes at most this fraction of the\n"
            "                        layer's FFN bytes (default 0.05, 0 < F <= 1)\n"
            "  --seed S              seed of the randomized SVD (default 1)\n"
            "  --force               overwrite an existing OUT\n"
            "  -q, --quiet           print nothing but errors\n");
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void human(uint64_t b, char *buf, size_t n) {
    if (b >= (1ull << 30)) snprintf(buf, n, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
    else snprintf(buf, n, "%.1f KiB", (double)b / 1024.0);
}

static int convert_from_hf(int argc, char **argv) {
    lp_hf_convert_params p = lp_hf_convert_default_params();
    const char *files[2] = {NULL, NULL};
    int n_files = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--from-hf")) continue;
        if (!strcmp(a, "--force")) { p.force = true; continue; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (a[0] != '-' || !a[1]) {
            if (n_files == 2) return cli_usage("convert", "unexpected argument '%s' (DIR and OUT-PREFIX are already given)", a);
            files[n_files++] = a;
            continue;
        }
        if (i + 1 >= argc) return cli_usage("convert", "option '%s' needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--outtype")) {
            int t = lp_type_from_name(v);
            if (t != LP_TYPE_F32 && t != LP_TYPE_F16 && t != LP_TYPE_Q8_0 && t != LP_TYPE_Q4_0 && t != LP_TYPE_Q4_K)
                return cli_usage("convert", "--outtype: '%s' is not one of f32, f16, q8_0, q4_0, q4_k", v);
            p.outtype = (lp_type)t;
        } else if (!strcmp(a, "--vision")) {
            p.vision_dir = v;
        } else return cli_usage("convert", "unknown option '%s' for --from-hf", a);
    }
    if (n_files < 2) return cli_usage("convert", "--from-hf needs DIR and OUT-PREFIX");
    lp_hf_convert_report rep;
    lp_error err = {0};
    double t0 = now_s();
    loupe_status st = lp_hf_convert(files[0], files[1], &p, &rep, &err);
    if (st != LOUPE_OK) return cli_error(st, "%s", err.msg);
    if (quiet) return CLI_EXIT_OK;
    char lb[32], mb[32];
    human(rep.bytes_lm, lb, sizeof lb);
    human(rep.bytes_mmproj, mb, sizeof mb);
    printf("convert: %s (%s) -> %s.gguf (%d tensors, %s, %s", files[0], rep.kind, files[1], rep.n_tensors_lm, lb,
           lp_type_name(p.outtype));
    if (rep.n_fallback) printf("; %d matrices in a fallback type", rep.n_fallback);
    printf(")");
    if (rep.wrote_mmproj) printf(" + %s-mmproj.gguf (%d tensors, %s)", files[1], rep.n_tensors_mmproj, mb);
    printf(", %.2f s\n", now_s() - t0);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
}

int cmd_convert(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--from-hf")) return convert_from_hf(argc, argv);
    lp_flash_convert_params p = lp_flash_convert_default_params();
    const char *files[2] = {NULL, NULL};
    int n_files = 0, flash = 0, force = 0, quiet = 0, kind_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            convert_help(stdout);
            return CLI_EXIT_OK;
        }
        if (!strcmp(a, "--flash")) { flash = 1; continue; }
        if (!strcmp(a, "--force")) { force = 1; continue; }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { quiet = 1; continue; }
        if (a[0] != '-' || !a[1]) {
            if (n_files == 2) return cli_usage("convert", "unexpected argument '%s' (IN and OUT are already given)", a);
            files[n_files++] = a;
            continue;
        }
        if (i + 1 >= argc) return cli_usage("convert", "option '%s' needs a value", a);
        const char *v = argv[++i];
        long n;
        unsigned long long u;
        if (!strcmp(a, "--predictor")) {
            kind_given = 1;
            if (!strcmp(v, "svd")) p.predictor = LP_FLASH_PRED_SVD;
            else if (!strcmp(v, "none")) p.predictor = LP_FLASH_PRED_NONE;
            else return cli_usage("convert", "--predictor: '%s' is not a predictor (svd, none)", v);
        } else if (!strcmp(a, "--predictor-file")) {
            p.predictor_path = v;
        } else if (!strcmp(a, "--rank")) {
            if (!cli_parse_int(v, 1, 1 << 20, &n)) return cli_usage("convert", "--rank: '%s' is not a rank (1 or more)", v);
            p.rank = (int)n;
        } else if (!strcmp(a, "--energy")) {
            if (!cli_parse_float(v, 0.0f, 1.0f, &p.energy) || p.energy <= 0.0f)
                return cli_usage("convert", "--energy: '%s' is not a fraction in (0, 1]", v);
        } else if (!strcmp(a, "--max-pred-frac")) {
            if (!cli_parse_float(v, 0.0f, 1.0f, &p.max_pred_frac) || p.max_pred_frac <= 0.0f)
                return cli_usage("convert", "--max-pred-frac: '%s' is not a fraction in (0, 1]", v);
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_u64(v, &u)) return cli_usage("convert", "--seed: '%s' is not a non-negative integer", v);
            p.seed = u;
        } else return cli_usage("convert", "unknown option '%s'", a);
    }
    if (!flash) return cli_usage("convert", "--flash or --from-hf is required");
    if (n_files < 2) return cli_usage("convert", "IN.gguf and OUT.gguf are required");
    const char *in = files[0], *out = files[1];
    if (p.predictor_path) {
        if (kind_given) return cli_usage("convert", "--predictor-file and --predictor exclude each other");
        if (p.rank > 0) return cli_usage("convert", "--predictor-file and --rank exclude each other (the file sets the ranks)");
        p.predictor = LP_FLASH_PRED_FILE;
    }
    if (p.predictor == LP_FLASH_PRED_NONE && p.rank > 0) return cli_usage("convert", "--rank needs --predictor svd");

    struct stat si, so;
    bool out_exists = stat(out, &so) == 0;
    if (!strcmp(in, out) || (out_exists && stat(in, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino))
        return cli_error(LOUPE_ERR_INVALID_ARG, "%s: OUT is the input file", out);
    if (out_exists && !force) return cli_error(LOUPE_ERR_INVALID_ARG, "%s exists (--force to overwrite it)", out);

    lp_flash_convert_report rep;
    lp_error err = {0};
    double t0 = now_s();
    loupe_status st = lp_flash_convert(in, out, &p, &rep, &err);
    if (st != LOUPE_OK) return cli_error(st, "%s", err.msg);
    double secs = now_s() - t0;
    if (quiet) {
        lp_flash_convert_report_free(&rep);
        return CLI_EXIT_OK;
    }

    /* the bundle's parts, from the file just written */
    lp_flash_layout lay;
    memset(&lay, 0, sizeof lay);
    lp_gguf *g = lp_gguf_open(out, &err);
    if (!g || lp_flash_layout_read(g, &lay, &err) != LOUPE_OK) {
        lp_gguf_close(g);
        lp_flash_convert_report_free(&rep);
        return cli_error(err.status, "%s", err.msg);
    }
    lp_gguf_close(g);

    printf("convert: %s -> %s (flash layout v%d, predictor %s%s%s)\n", in, out, LP_FLASH_VERSION, lay.predictor,
           p.predictor_path ? " from " : "", p.predictor_path ? p.predictor_path : "");
    if (p.predictor == LP_FLASH_PRED_FILE) {
        const bool svd = !strcmp(lay.predictor, "svd");
        printf(svd ? "  layer  rank  energy\n" : "  layer  rank\n");
        for (int l = 0; l < rep.n_layer; l++) {
            if (svd) printf("  %5d  %4d  %.4f\n", l, rep.layers[l].rank, (double)rep.layers[l].energy);
            else printf("  %5d  %4d\n", l, rep.layers[l].rank);
        }
    } else if (p.predictor == LP_FLASH_PRED_SVD) {
        printf("  layer  rank  energy\n");
        for (int l = 0; l < rep.n_layer; l++) {
            const bool capped = p.rank == 0 && rep.layers[l].energy < p.energy;
            printf("  %5d  %4d  %.4f%s\n", l, rep.layers[l].rank, (double)rep.layers[l].energy,
                   capped ? "  (rank capped by --max-pred-frac)" : "");
        }
    }
    char ib[32], ob[32];
    human(rep.in_bytes, ib, sizeof ib);
    human(rep.out_bytes, ob, sizeof ob);
    printf("bundles: %d layers x %d neurons, stride %zu bytes (gate %s %zu + up %s %zu + down %s %zu = %zu)\n", lay.n_layer,
           lay.n_ff, rep.bundle_stride, lp_type_name(lay.gate_type), lay.gate_bytes, lp_type_name(lay.up_type), lay.up_bytes,
           lp_type_name(lay.down_type), lay.down_bytes, lay.bundle_bytes);
    printf("in %s, out %s, %.2f s\n", ib, ob, secs);
    lp_flash_convert_report_free(&rep);
    return fflush(stdout) == 0 ? CLI_EXIT_OK : cli_error(LOUPE_ERR_IO, "writing to stdout failed");
}
