#!/bin/sh
# `make demo`: the main job on the shipped tiny model (models/loupe-tiny*.gguf,
# trained by tools/train on synthetic rooms) and a shipped example scene that
# training never saw (models/example/, `loupe synth --seed 2055 --n 1 --split train`;
# chosen among the 40 scenes of seeds 2031-2070 as one whose three demo
# expressions and demo region the ninth session's model got right. The
# sixteenth session's model, shipped now, misses the first one (not
# re-picked): for "the blue tv" it boxes the black tv -- it does not use
# colour words to choose among objects of one category (README, the shipped
# tiny model); it grounds 82 % of this scene's 39 expressions (the
# thirteenth session's model: 72 %) and 67.3 % of a held-out split):
#   1. grounding: "where is <expression>?" -> an answer with a box in image
#      pixels, printed next to the ground truth and drawn into a PNG;
#   2. referring: a box region -> "what is this?";
#   3. a short evaluation on the scene's expressions (loupe eval);
#   4. the same for referring: every object region of the scene, given as its
#      box and as its mask (loupe eval --task refer).
set -eu
LOUPE=${1:-build/loupe}
EX=models/example
OUT=build/demo
IMG=$EX/images/000001.png

rm -rf "$OUT"
mkdir -p "$OUT"
echo "loupe demo: the shipped tiny model on an example room it never saw in training"
echo "  image: $IMG"
echo

# The scene's first expressions of three kinds and the first region, read
# from its annotations with sed (no jq needed): "sent" lines and region boxes.
exprs=$(sed -n 's/.*"sent":[[:space:]]*"\([^"]*\)".*/\1/p' "$EX/annotations.json" | awk '!seen[$0]++' | sed -n '1p;4p;7p')
i=0
echo "$exprs" | while IFS= read -r e; do
    i=$((i + 1))
    echo "== grounding: where is \"$e\"?"
    echo "\$ loupe ask $IMG \"What is the location of $e in the image?\" --draw $OUT/grounded-$i.png"
    "$LOUPE" ask "$IMG" "What is the location of $e in the image?" --draw "$OUT/grounded-$i.png" -t 2
    echo "  (annotated image: $OUT/grounded-$i.png)"
    echo
done

# ground truth of the scene, for comparison
echo "== the scene's ground truth, [x1, y1, x2, y2] in pixels like the boxes above"
sed -n 's/.*"image_id":1,"category_id":\([0-9]*\),"bbox":\[\([^]]*\)\].*"color":"\([a-z]*\)".*/\1 \3 \2/p' "$EX/annotations.json" |
    awk 'BEGIN { split("sofa lamp cup chair table plant tv bed book clock bottle dog", name, " ") }
         { split($3, b, ","); printf "  %-7s %-7s [%d, %d, %d, %d]\n", $2, name[$1], b[1], b[2], b[1] + b[3], b[2] + b[4] }'

echo

BOX=$(sed -n 's/.*"region_id".*"bbox":[[:space:]]*\[\([0-9]*\),[[:space:]]*\([0-9]*\),[[:space:]]*\([0-9]*\),[[:space:]]*\([0-9]*\)\].*/\1 \2 \3 \4/p' \
    "$EX/annotations.json" | head -n 1)
if [ -n "$BOX" ]; then
    set -- $BOX
    R="$1,$2,$(($1 + $3)),$(($2 + $4))"
    echo "== referring: what is in the box $R?"
    echo "\$ loupe ask $IMG \"What is in the region <region>?\" --region $R"
    "$LOUPE" ask "$IMG" "What is in the region <region>?" --region "$R" -t 2
    echo
fi

echo "== loupe eval on every expression of the scene"
echo "\$ loupe eval --data $EX/annotations.json --out $OUT/results.jsonl --gallery $OUT/misses"
"$LOUPE" eval --data "$EX/annotations.json" --out "$OUT/results.jsonl" --gallery "$OUT/misses" -t 2 -q
echo
echo "== loupe eval --task refer: what is each object's region? (as its box, then as its mask)"
echo "\$ loupe eval --task refer --data $EX/annotations.json --out $OUT/refer.jsonl"
"$LOUPE" eval --task refer --data "$EX/annotations.json" --out "$OUT/refer.jsonl" -t 2 -q
echo
echo "Annotated images: $OUT/grounded-*.png; misses: $OUT/misses/index.html"
echo "This scene was picked for the demo; on 5,215 held-out expressions the tiny model's"
echo "Acc@0.5 is 67.3 %, and it names the object of 86.4 % of 500 held-out regions given as"
echo "boxes (86.6 % as masks) (README: the shipped tiny model). It is small and far from done:"
echo "it does not use colour words to choose among objects of one category (\"the blue tv\" above)."
