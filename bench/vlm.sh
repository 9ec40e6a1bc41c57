#!/bin/bash
# bench/vlm.sh — one image question end to end, loupe beside llama.cpp in the
# same run: image-encode time, prefill tokens/s, decode tokens/s and peak RSS.
# Not a test; prints a table and writes one JSON line per engine.
#
#   make
#   bench/vlm.sh MODEL.gguf MMPROJ.gguf IMAGE [OUT.jsonl]
#
# Both engines get the same files, image, question, 2 threads (THREADS),
# greedy decoding of TOKENS tokens (default 32) and llama.cpp's geometry
# (loupe --llamacpp-compat: llama.cpp's tiling/resizing, so both encode the same
# number of tiles and image tokens). llama.cpp is $LLAMA_CPP_BIN/llama-mtmd-cli
# (a build you made; this script never builds it), run with flash attention
# off, no warmup, --no-mmap, -v (for its timing lines: the encode time is the
# sum of its "mtmd batch encoding done" lines, prefill is its "prompt eval"
# over text and image rows, as loupe's); skipped when LLAMA_CPP_BIN is unset.
# Peak RSS: GNU time's maximum resident set size of the whole process.
# Environment: THREADS (2), TOKENS (32), QUESTION, LLAMA_CPP_BIN, LOUPE
# (build/loupe), EXTRA (more loupe flags).
set -u
MODEL=${1:?usage: bench/vlm.sh MODEL.gguf MMPROJ.gguf IMAGE [OUT.jsonl]}
MMPROJ=${2:?usage}
IMAGE=${3:?usage}
OUT=${4:-vlm-bench.jsonl}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-32}
QUESTION=${QUESTION:-Please provide the bounding box coordinate of the region this sentence describes: <ref>the cup</ref>}
LOUPE=${LOUPE:-build/loupe}
TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "bench/vlm.sh: needs GNU time (apt-get install time)" >&2; exit 1; }
[ -x "$LOUPE" ] || { echo "bench/vlm.sh: $LOUPE not found (run make)" >&2; exit 1; }
: > "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# loupe: its own --json timings
$TIME -f '%M' -o "$tmp/loupe.rss" "$LOUPE" ask -m "$MODEL" --mmproj "$MMPROJ" --llamacpp-compat -t "$THREADS" \
    -n "$TOKENS" --temp 0 --json ${EXTRA:-} "$IMAGE" "$QUESTION" > "$tmp/loupe.json" 2> "$tmp/loupe.err"
rc=$?
if [ $rc = 0 ]; then
    /usr/bin/python3 - "$tmp/loupe.json" "$(cat "$tmp/loupe.rss")" "$OUT" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); t = j["timings"]; rss = int(sys.argv[2]) / 1024
row = dict(engine="loupe", encode_ms=t["encode_ms"], image_tokens=t["image_tokens"],
           prefill_tok_s=t["prefill_tok_s"], decode_tok_s=t["decode_tok_s"], peak_rss_mib=round(rss, 1))
open(sys.argv[3], "a").write(json.dumps(row) + "\n")
EOF
else
    echo "loupe failed (rc $rc):"; tail -3 "$tmp/loupe.err"
fi

# llama.cpp: parse its log lines
if [ -n "${LLAMA_CPP_BIN:-}" ]; then
    $TIME -f '%M' -o "$tmp/llama.rss" "$LLAMA_CPP_BIN/llama-mtmd-cli" -m "$MODEL" --mmproj "$MMPROJ" --image "$IMAGE" \
        -p "$QUESTION" -t "$THREADS" -n "$TOKENS" --temp 0 --ignore-eos -fa off --no-warmup --no-mmap -v \
        > "$tmp/llama.out" 2> "$tmp/llama.err"
    rc=$?
    if [ $rc = 0 ]; then
        /usr/bin/python3 - "$tmp/llama.err" "$(cat "$tmp/llama.rss")" "$OUT" <<'EOF'
import json, re, sys
log = open(sys.argv[1], errors="replace").read(); rss = int(sys.argv[2]) / 1024
enc = sum(float(m) for m in re.findall(r"(?:mtmd batch encoding done|image slice encoded) in (\d+) ms", log))
pe = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
ev = re.search(r"print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs", log)
row = dict(engine="llama.cpp", encode_ms=enc,
           prefill_tok_s=round(int(pe.group(2)) / float(pe.group(1)) * 1e3, 2) if pe else None,
           decode_tok_s=round(int(ev.group(2)) / float(ev.group(1)) * 1e3, 2) if ev else None,
           peak_rss_mib=round(rss, 1))
open(sys.argv[3], "a").write(json.dumps(row) + "\n")
EOF
    else
        echo "llama.cpp failed (rc $rc):"; tail -3 "$tmp/llama.err"
    fi
fi
printf '%-10s %12s %8s %14s %13s %13s\n' engine encode_ms tokens prefill_tok/s decode_tok/s peak_MiB
/usr/bin/python3 -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("%-10s %12s %8s %14s %13s %13s" % (r["engine"], r["encode_ms"], r.get("image_tokens", "-"),
          r["prefill_tok_s"], r["decode_tok_s"], r["peak_rss_mib"]))' "$OUT"
