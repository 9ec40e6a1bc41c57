/* bench/bench_flash.c — decode latency of a decoder GGUF, resident or from
 * the flash store (language/flash.h), with per-token I/O statistics. The
 * driver behind bench/flash.sh (which adds memory cgroups, cold caches and
 * llama.cpp); not a test.
 *
 *   bench_flash MODEL.gguf [--budget BYTES|N%] [--sparsity S] [--window N]
 *               [--io-threads N] [--min-read BYTES] [--prompt N] [--tokens N]
 *               [--threads N]
 *
 * Feeds a fixed prompt of --prompt token ids (default 16), then generates
 * --tokens (default 32) greedily, and prints one JSON object: the plan (for
 * flash mode), prefill time, mean decode ms/token (all tokens, and the
 * second half, after the window has warmed up), mean bytes and reads per
 * token, neuron cache hit rate, active FFN fraction, I/O wait per token and
 * the process's peak RSS (VmHWM). --budget 0 (default) runs the file
 * resident (mmap); a flash-layout file then runs its bundled FFN from the
 * mapping. */
#include "../language/decoder.h"
#include "../language/flash.h"
#include "gguf.h"
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* VmHWM of this process in bytes (peak resident set). */
static long long peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
    }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_flash MODEL.gguf [--budget BYTES|N%%] [--sparsity S] [--window N] [--io-threads N]\n"
                    "                   [--min-read BYTES] [--prompt N] [--tokens N] [--threads N]\n");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *path = argv[1];
    double budget = 0, budget_pct = 0, sparsity = 0;
    int n_prompt = 16, n_tokens = 32, n_threads = 2;
    lp_flash_params fp = lp_flash_default_params();
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc) return usage();
        const char *o = argv[i], *v = argv[++i];
        if (!strcmp(o, "--budget")) {
            char *end;
            budget = strtod(v, &end);
            if (*end == '%') budget_pct = budget, budget = 0;
        } else if (!strcmp(o, "--sparsity")) sparsity = atof(v);
        else if (!strcmp(o, "--window")) fp.window = atoi(v);
        else if (!strcmp(o, "--io-threads")) fp.io_threads = atoi(v);
        else if (!strcmp(o, "--min-read")) fp.min_read = (size_t)atoll(v);
        else if (!strcmp(o, "--prompt")) n_prompt = atoi(v);
        else if (!strcmp(o, "--tokens")) n_tokens = atoi(v);
        else if (!strcmp(o, "--threads")) n_threads = atoi(v);
        else return usage();
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        perror(path);
        return 1;
    }
    if (budget_pct > 0) budget = (double)sb.st_size * budget_pct / 100.0;
    fp.budget = (size_t)budget;
    fp.expected_active = (float)(1.0 - sparsity);

    lp_error err = {0};
    double t0 = now_ms();
    lp_gguf *g = lp_gguf_open(path, &err);
    lp_weight_store *ws = !g ? NULL : fp.budget > 0 ? lp_weights_flash(g, &fp, &err) : lp_weights_resident(g, &err);
    lp_llama *m = ws ? lp_llama_load(ws, &err) : NULL;
    lp_llama_state *s = m ? lp_llama_state_new(m, n_prompt + n_tokens + 1, &err) : NULL;
    if (!s || (sparsity > 0 && lp_llama_state_set_ffn_sparsity(s, (float)(1.0 - sparsity), 0.0f, &err))) {
        fprintf(stderr, "bench_flash: %s\n", err.msg);
        printf("{\"model\": \"%s\", \"budget\": %.0f, \"error\": \"%s\"}\n", path, budget, err.msg);
        return 2;
    }
    const double load_ms = now_ms() - t0;
    lp_pool *pool = lp_pool_new(n_threads);
    const int V = lp_llama_n_vocab(m);
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *prompt = malloc((size_t)n_prompt * sizeof(int32_t));
    for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)(1 + (i * 7919) % (V - 1));

    t0 = now_ms();
    if (lp_llama_forward_tokens(m, s, prompt, n_prompt, logits, pool, &err)) {
        fprintf(stderr, "bench_flash: %s\n", err.msg);
        return 2;
    }
    const double prefill_ms = now_ms() - t0;
    const lp_ws_stats st0 = ws->stats;
    double *tok_ms = calloc((size_t)n_tokens, sizeof(double));
    double t_half = 0;
    for (int t = 0; t < n_tokens; t++) {
        int32_t best = 0;
        for (int v = 1; v < V; v++) best = logits[v] > logits[best] ? v : best;
        if (t == n_tokens / 2) t_half = now_ms();
        double ts = now_ms();
        if (lp_llama_forward_tokens(m, s, &best, 1, logits, pool, &err)) {
            fprintf(stderr, "bench_flash: %s\n", err.msg);
            return 2;
        }
        tok_ms[t] = now_ms() - ts;
    }
    const double t_end = now_ms();
    const lp_ws_stats *st = &ws->stats;
    double total = 0;
    for (int t = 0; t < n_tokens; t++) total += tok_ms[t];
    const double n = n_tokens, n2 = n_tokens - n_tokens / 2;
    const uint64_t need = (st->neuron_hits - st0.neuron_hits) + (st->neuron_misses - st0.neuron_misses);
    const lp_flash_plan *pl = lp_flash_get_plan(ws);
    printf("{\"model\": \"%s\", \"file_bytes\": %lld, \"budget\": %.0f, \"sparsity\": %.3f, \"window\": %d, "
           "\"io_threads\": %d, \"threads\": %d, \"load_ms\": %.1f, \"prefill_ms\": %.1f, \"prompt\": %d, "
           "\"tokens\": %d, \"decode_ms_per_token\": %.2f, \"decode_ms_per_token_2nd_half\": %.2f, "
           "\"bytes_per_token\": %.0f, \"reads_per_token\": %.1f, \"hit_rate\": %.4f, \"active_fraction\": %.4f, "
           "\"io_wait_ms_per_token\": %.2f, \"peak_rss_bytes\": %lld",
           path, (long long)sb.st_size, budget, sparsity, fp.window, fp.io_threads, n_threads, load_ms, prefill_ms,
           n_prompt, n_tokens, total / n, (t_end - t_half) / n2, (double)(st->bytes_read - st0.bytes_read) / n,
           (double)(st->reads - st0.reads) / n, need ? (double)(st->neuron_hits - st0.neuron_hits) / (double)need : 1.0,
           st->ffn_total > st0.ffn_total
               ? (double)(st->ffn_active - st0.ffn_active) / (double)(st->ffn_total - st0.ffn_total)
               : 1.0,
           (double)(st->io_wait_ns - st0.io_wait_ns) / 1e6 / n, peak_rss());
    if (pl) {
        static const char *modes[] = {"resident", "streamed per layer", "streamed per tensor"};
        printf(", \"plan\": {\"total\": %zu, \"resident\": %zu, \"attention\": %zu, \"attention_mode\": \"%s\", "
               "\"cache\": %zu, \"cache_neurons_per_layer\": %d, \"stream\": %zu, \"io\": %zu, \"bookkeeping\": %zu, "
               "\"direct_io\": %s}",
               pl->total_bytes, pl->resident_bytes, pl->attention_bytes, modes[pl->attention_mode], pl->cache_bytes,
               pl->cache_bundles, pl->stream_bytes, pl->io_bytes, pl->bookkeeping_bytes, pl->direct_io ? "true" : "false");
    }
    printf("}\n");
    free(tok_ms);
    free(prompt);
    free(logits);
    lp_pool_free(pool);
    lp_llama_state_free(s);
    lp_llama_free(m);
    lp_ws_free(ws);
    lp_gguf_close(g);
    return 0;
}
