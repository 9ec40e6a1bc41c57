#!/bin/sh
# `make demo`: run loupe end to end on what exists today.
#
# There is no trained model yet (issue #4 trains and ships one), so this
#   1. generates a synthetic indoor scene with ground-truth referring
#      expressions (the world the shipped model will be trained on), and
#   2. runs the whole engine on it (image decode, CLIP preprocessing, ViT,
#      projector, prompt assembly, llama decoder, sampling) with a
#      RANDOM-WEIGHT LLaVA-style test model.
# The answer is meaningless text by construction: the demo shows that every
# stage runs, and how long each takes. It does not pretend to ground anything.
set -eu
LOUPE=${1:-build/loupe}
FIX=tests/fixtures/parity
OUT=build/demo

rm -rf "$OUT"
mkdir -p "$OUT"
echo "loupe demo"
echo "  NOTE: no trained model ships yet (issue #4). Step 2 runs the full pipeline"
echo "  on a random-weight test model, so its answer is meaningless text."
echo
echo "== 1. a synthetic scene with referring expressions"
echo "\$ loupe synth --seed 7 --n 1 --out $OUT/scene"
"$LOUPE" synth --seed 7 --n 1 --out "$OUT/scene"
IMG="$OUT/scene/images/000001.png"
# The first referring expression of the scene, read with plain sed (no jq needed).
EXPR=$(sed -n 's/.*"sent":[[:space:]]*"\([^"]*\)".*/\1/p' "$OUT/scene/annotations.json" | head -n 1)
[ -n "$EXPR" ] || EXPR="the lamp"
echo "  image: $IMG  (open it to see the room)"
echo "  one of its ground-truth expressions: \"$EXPR\""
echo
echo "== 2. the engine end to end, on a random-weight model"
echo "\$ loupe ask -m $FIX/tiny-f32.gguf --mmproj $FIX/tiny-f32-mmproj.gguf $IMG \"What is the location of $EXPR in the image?\" -n 24 --verbose"
"$LOUPE" ask -m "$FIX/tiny-f32.gguf" --mmproj "$FIX/tiny-f32-mmproj.gguf" "$IMG" \
    "What is the location of $EXPR in the image?" -n 24 --verbose
