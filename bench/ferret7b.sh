#!/bin/bash
# bench/ferret7b.sh — Ferret-7B's shape end to end, from a Hugging Face
# checkpoint to flash mode: random weights (no real ones can be downloaded
# here), converted by loupe, its decoder run from flash storage within 40 %
# of its size. Not a test; prints what it measured. Needs ~25 GB of disk.
#
#   make && make bench
#   bench/ferret7b.sh [WORK_DIR]        (default /tmp/ferret7b)
#
# Steps (each timed, peak RSS from /usr/bin/time when present):
#   1. tools/reference/ferret_reference.py --shape ferret-7b: a
#      FERRETLlamaForCausalLM checkpoint as apply_delta + save_pretrained
#      leave it (Vicuna-7B decoder in bf16, 32001 tokens with <region_fea>,
#      CLIP ViT-L/14-336 inside, the region sampler), two shards
#   2. loupe convert --from-hf ... --outtype q4_0 (the pair)
#   3. loupe convert --flash (bundles + SVD predictor)
#   4. bench/flash.sh at BUDGETS (default 40) %: resident vs flash at 0, 0.5,
#      0.8, 0.95 sparsity vs naive, each in a memory cgroup of its budget
#   5. loupe ask with the flash decoder at a 40 % budget, a box region and a
#      question, --stats: the whole Ferret turn (image, region, prompt, answer)
set -u
W=${1:-/tmp/ferret7b}
LOUPE=${LOUPE:-build/loupe}
TIME=""
[ -x /usr/bin/time ] && TIME="/usr/bin/time -f %es_%MkB"
mkdir -p "$W"
step() { echo "== $*"; }

if [ ! -f "$W/hf/config.json" ]; then
    step "1. random Ferret-7B checkpoint (HF layout) -> $W/hf"
    $TIME /usr/bin/python3 tools/reference/ferret_reference.py --shape ferret-7b --seed 1 --out "$W/hf" --no-reference || exit 1
fi
du -sh "$W/hf"
if [ ! -f "$W/ferret7b-q4_0.gguf" ]; then
    step "2. loupe convert --from-hf (q4_0)"
    $TIME "$LOUPE" convert --from-hf "$W/hf" "$W/ferret7b-q4_0" --outtype q4_0 || exit 1
fi
if [ ! -f "$W/ferret7b-q4_0-flash.gguf" ]; then
    step "3. loupe convert --flash"
    $TIME "$LOUPE" convert --flash "$W/ferret7b-q4_0.gguf" "$W/ferret7b-q4_0-flash.gguf" -q || exit 1
fi
ls -l "$W"/*.gguf
step "4. bench/flash.sh"
BUDGETS=${BUDGETS:-40} NAIVE_AT=${NAIVE_AT:-40} bench/flash.sh "$W/ferret7b-q4_0.gguf" "$W/ferret7b-q4_0-flash.gguf" \
    "$W/flash.jsonl"
step "5. loupe ask, flash decoder at 40 %, a box region"
/usr/bin/python3 -c "
from PIL import Image; import numpy as np
y, x = np.mgrid[0:480, 0:640]
Image.fromarray((np.stack([x % 256, y % 256, (x + y) % 256], -1)).astype(np.uint8)).save('$W/photo.png')"
$TIME "$LOUPE" ask -m "$W/ferret7b-q4_0-flash.gguf" --mmproj "$W/ferret7b-q4_0-mmproj.gguf" "$W/photo.png" \
    "What is in the region <region>?" --region 100,80,300,260 --mem-budget 40% --sparsity 0.9 \
    -n 8 --json -t 2 > "$W/ask.json" || exit 1
/usr/bin/python3 -c "
import json; r = json.load(open('$W/ask.json'))
r.get('weight_io', {}).pop('tokens', None)
print(json.dumps(r, indent=1)[:4000])"
