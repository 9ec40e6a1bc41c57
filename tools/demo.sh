#!/bin/sh
# `make demo`: run loupe end to end on what exists today.
#
# There is no trained model yet (issue #4 trains and ships one), so this runs
# the whole engine (image decode, CLIP preprocessing, ViT, projector, prompt
# assembly, llama decoder, sampling) on a RANDOM-WEIGHT LLaVA-style test
# model. Its answer is meaningless text by construction; what the demo shows
# is that every stage runs, and how long each takes.
set -eu
LOUPE=${1:-build/loupe}
FIX=tests/fixtures/parity
IMG=tests/fixtures/images/src_struct_640x427.png

echo "loupe demo"
echo "  NOTE: no trained model ships yet. This runs the full pipeline on a"
echo "  random-weight test model ($FIX/tiny-f32*.gguf), so the answer below"
echo "  is meaningless text. Grounding with a trained model arrives with issue #4."
echo
echo "\$ loupe info $FIX/tiny-f32-mmproj.gguf   (first lines)"
"$LOUPE" info "$FIX/tiny-f32-mmproj.gguf" | head -n 12
echo "..."
echo
echo "\$ loupe ask -m $FIX/tiny-f32.gguf --mmproj $FIX/tiny-f32-mmproj.gguf $IMG \"What is in the image?\" -n 24 --verbose"
"$LOUPE" ask -m "$FIX/tiny-f32.gguf" --mmproj "$FIX/tiny-f32-mmproj.gguf" "$IMG" "What is in the image?" -n 24 --verbose
