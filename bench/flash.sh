#!/bin/bash
# bench/flash.sh — decode latency and peak memory of loupe's flash mode
# (language/flash.h) against resident loupe and, when given, llama.cpp, each
# run inside a memory cgroup of its budget. Not a test; prints a table and
# writes one JSON line per run.
#
#   make bench
#   bench/flash.sh PLAIN.gguf FLASH.gguf [OUT.jsonl]
#
# PLAIN.gguf is a decoder GGUF, FLASH.gguf its `loupe convert --flash`
# output. Runs, each with a cold page cache (dropped before the run):
#   resident        build/bench/bench_flash PLAIN (mmap, no budget, no cgroup limit)
#   flash B% S      FLASH.gguf with --budget B% of FLASH.gguf, top-k sparsity S,
#                   in a cgroup limited to the budget + $OVERHEAD_MIB
#   naive B%        dense and --window 0: every token reads all FFN weights
#   llama.cpp B%    $LLAMA_CPP_BIN (a llama-completion binary you built; this
#                   script never builds it) with --no-mmap --no-repack on PLAIN,
#                   in a cgroup of the same size; its failure is reported as such
# Environment: BUDGETS ("60 40 25"), SPARSITIES ("0.5 0.8 0.95"), NAIVE_AT
# ("40"), TOKENS (32), PROMPT (16), THREADS (2), OVERHEAD_MIB (96: process
# baseline, KV cache, activations), LLAMA_CPP_BIN, BENCH (build/bench/bench_flash).
# Memory cgroups need cgroup v1 at /sys/fs/cgroup/memory, writable (root);
# without it the runs go unconfined and the table says so. Dropping the page
# cache needs root too (skipped with a note otherwise).
set -u
PLAIN=${1:?usage: bench/flash.sh PLAIN.gguf FLASH.gguf [OUT.jsonl]}
FLASH=${2:?usage: bench/flash.sh PLAIN.gguf FLASH.gguf [OUT.jsonl]}
OUT=${3:-flash-bench.jsonl}
BENCH=${BENCH:-build/bench/bench_flash}
BUDGETS=${BUDGETS:-60 40 25}
SPARSITIES=${SPARSITIES:-0.5 0.8 0.95}
NAIVE_AT=${NAIVE_AT:-40}
TOKENS=${TOKENS:-32}
PROMPT=${PROMPT:-16}
THREADS=${THREADS:-2}
OVERHEAD_MIB=${OVERHEAD_MIB:-96}
CG_ROOT=/sys/fs/cgroup/memory

[ -x "$BENCH" ] || { echo "bench/flash.sh: $BENCH not found (run make bench)" >&2; exit 1; }
for f in "$PLAIN" "$FLASH"; do [ -r "$f" ] || { echo "bench/flash.sh: cannot read $f" >&2; exit 1; }; done
have_cg=0
if [ -w "$CG_ROOT" ] && [ -e "$CG_ROOT/memory.limit_in_bytes" ]; then have_cg=1; else
    echo "note: no writable cgroup-v1 memory controller at $CG_ROOT: runs are not confined, peak RSS is still measured" >&2
fi
can_drop=0
if [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; else echo "note: not root: the page cache is not dropped (warm runs)" >&2; fi
flash_size=$(stat -c %s "$FLASH")
: > "$OUT"

drop_caches() { [ $can_drop = 1 ] && { sync; echo 3 > /proc/sys/vm/drop_caches; }; }

# run_in_cgroup LIMIT_BYTES CMD...: runs CMD (stdout to $tmp_out) confined to
# LIMIT_BYTES (0 = no limit); sets cg_peak (bytes, cgroup max usage incl. page
# cache), cg_oom (OOM kills), rc.
run_in_cgroup() {
    local limit=$1; shift
    local cg="$CG_ROOT/loupe-bench-$$"
    cg_peak=-1; cg_oom=0
    if [ $have_cg = 1 ]; then
        mkdir -p "$cg"
        if [ "$limit" -gt 0 ]; then
            echo "$limit" > "$cg/memory.limit_in_bytes"
            [ -e "$cg/memory.memsw.limit_in_bytes" ] && echo "$limit" > "$cg/memory.memsw.limit_in_bytes" 2>/dev/null
        fi
        bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' _ "$cg" "$@" > "$tmp_out" 2> "$tmp_err"
        rc=$?
        cg_peak=$(cat "$cg/memory.max_usage_in_bytes")
        cg_oom=$(awk '/oom_kill /{print $2}' "$cg/memory.oom_control" 2>/dev/null)
        [ -z "$cg_oom" ] && cg_oom=0
        rmdir "$cg" 2>/dev/null
    else
        "$@" > "$tmp_out" 2> "$tmp_err"
        rc=$?
    fi
}

tmp_out=$(mktemp); tmp_err=$(mktemp)
trap 'rm -f "$tmp_out" "$tmp_err"' EXIT

# record NAME LIMIT: one JSON line from the last run
record() {
    local name=$1 limit=$2 json
    json=$(grep '^{' "$tmp_out" | tail -1)
    [ -z "$json" ] && json='{}'
    local err; err=$(tail -c 300 "$tmp_err" | tr '"\n\\' "' /")
    echo "{\"run\": \"$name\", \"cgroup_limit\": $limit, \"cgroup_peak\": $cg_peak, \"oom_kills\": $cg_oom, \"rc\": $rc, \"stderr_tail\": \"$err\", \"result\": $json}" >> "$OUT"
    printf '%-26s rc=%-3s cgroup limit %8.1f MiB, peak %8.1f MiB, oom %s  ' "$name" "$rc" \
        "$(echo "$limit/1048576" | bc -l)" "$(echo "$cg_peak/1048576" | bc -l)" "$cg_oom"
    if [ "$json" != '{}' ]; then
        /usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1])
if "error" in r: print("error:", r["error"]); sys.exit()
print("%.1f ms/token (2nd half %.1f), %.1f MiB/token, %.0f reads, hit %.3f, active %.3f, RSS %.1f MiB" % (r["decode_ms_per_token"], r["decode_ms_per_token_2nd_half"], r["bytes_per_token"]/1048576, r["reads_per_token"], r["hit_rate"], r["active_fraction"], r["peak_rss_bytes"]/1048576))' "$json"
    else
        echo "(no result) $(tail -1 "$tmp_err")"
    fi
}

echo "model $PLAIN ($(stat -c %s "$PLAIN") bytes), flash $FLASH ($flash_size bytes), $TOKENS tokens after a $PROMPT-token prompt, $THREADS threads"

drop_caches
run_in_cgroup 0 "$BENCH" "$PLAIN" --prompt "$PROMPT" --tokens "$TOKENS" --threads "$THREADS"
record "resident" 0

for b in $BUDGETS; do
    budget=$((flash_size * b / 100))
    limit=$((budget + OVERHEAD_MIB * 1048576))
    if [ "$b" = "$NAIVE_AT" ]; then
        drop_caches
        run_in_cgroup $limit "$BENCH" "$FLASH" --budget "$b%" --sparsity 0 --window 0 --prompt "$PROMPT" --tokens "$TOKENS" --threads "$THREADS"
        record "naive $b%" $limit
    fi
    for s in 0 $SPARSITIES; do
        drop_caches
        run_in_cgroup $limit "$BENCH" "$FLASH" --budget "$b%" --sparsity "$s" --prompt "$PROMPT" --tokens "$TOKENS" --threads "$THREADS"
        record "flash $b% sparsity $s" $limit
    done
    if [ -n "${LLAMA_CPP_BIN:-}" ]; then
        drop_caches
        run_in_cgroup $limit "$LLAMA_CPP_BIN" -m "$PLAIN" -p "the" -n "$TOKENS" -t "$THREADS" --no-mmap --no-repack \
            --temp 0 -no-cnv --no-warmup --perf --ignore-eos
        # llama.cpp prints its own timings on stderr: "eval time = X ms / N runs"
        per=$(grep -E ' eval time' "$tmp_err" | grep -v 'prompt eval' | tail -1 |
              sed -E 's/.*= *([0-9.]+) ms \/ *([0-9]+) runs.*/\1 \2/' | awk 'NF == 2 && $2 > 0 {printf "%.3f", $1 / $2}')
        if [ -n "$per" ]; then
            echo "{\"decode_ms_per_token\": $per, \"decode_ms_per_token_2nd_half\": $per, \"bytes_per_token\": 0, \"reads_per_token\": 0, \"hit_rate\": 0, \"active_fraction\": 1, \"peak_rss_bytes\": 0}" > "$tmp_out"
        else
            : > "$tmp_out"
        fi
        record "llama.cpp $b%" $limit
    fi
done
echo "results: $OUT"
