/* fuzz_datasets — libFuzzer target for what `loupe eval` reads: dataset
 * files (datasets/refdata.h: MDETR / synth JSON and JSONL, synth's referring
 * regions with their RLE masks) and results files (datasets/evaluate.h),
 * then the report over what parsed.
 *
 * Byte 0 picks the reader (JSON dataset, JSONL dataset, results, regions);
 * the rest is the file. Checks, beyond "no crash": a successful load has at
 * least one sample, every string set and every box finite with positive
 * size, every mask decodable; a failed one leaves an empty set and a
 * message; the report's counts add up.
 *
 *   make fuzz && build/fuzz/fuzz_datasets -max_total_time=60 tests/fuzz/seeds/datasets
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../datasets/evaluate.h"
#include "../../datasets/refdata.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 1 << 16) return 0;
    const char *text = (const char *)data + 1;
    const size_t n = size - 1;
    lp_error err = {0};
    const int reader = data[0] % 4;
    if (reader != 2) {
        lp_refset s;
        loupe_status st = reader == 3 ? lp_refset_load_regions_mem("r.json", text, n, &s, &err)
                                      : lp_refset_load_mem(reader ? "f.jsonl" : "f.json", text, n, &s, &err);
        if (st) {
            if (s.n || s.refs || !err.msg[0]) __builtin_trap();
            return 0;
        }
        if (!s.n) __builtin_trap();
        for (size_t i = 0; i < s.n; i++) {
            const lp_ref *r = &s.refs[i];
            if (!r->id || !r->image || !r->expr || !r->split || !r->category || !r->kind) __builtin_trap();
            if (!(isfinite(r->bbox[0]) && isfinite(r->bbox[1]) && r->bbox[2] > 0 && r->bbox[3] > 0)) __builtin_trap();
            if (reader == 3 && !r->answer) __builtin_trap();
            if (r->rle) { /* checked at load: it must decode */
                unsigned char *m = malloc((size_t)r->rle_w * (size_t)r->rle_h);
                if (!m) return 0;
                if (lp_rle_decode(r->rle, r->n_rle, r->rle_h, r->rle_w, m, &err)) __builtin_trap();
                free(m);
            }
        }
        lp_refset_free(&s);
        return 0;
    }
    lp_results res;
    size_t torn;
    if (lp_results_parse("r.jsonl", text, n, &res, &torn, &err)) {
        if (res.n || res.rec || !err.msg[0]) __builtin_trap();
        return 0;
    }
    if (torn > n) __builtin_trap();
    lp_eval_report rep;
    if (!lp_eval_report_build(&res, NULL, 0, &rep, &err)) {
        if (rep.n + rep.errors > (long)res.n || rep.correct > rep.n || rep.no_box > rep.n || rep.exact > rep.n)
            __builtin_trap();
        for (size_t i = 0; i < rep.n_groups; i++)
            if (rep.groups[i].correct > rep.groups[i].n || rep.groups[i].n > rep.n) __builtin_trap();
        lp_eval_report_free(&rep);
    }
    lp_results_free(&res);
    return 0;
}
