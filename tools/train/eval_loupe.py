#!/usr/bin/python3
"""Cross-check `loupe eval` through `loupe ask`, and read referring results.

Grounding: drives `loupe ask --json` once per expression of a `loupe synth`
dataset and scores Acc@0.5 (continuous IoU, no +1; an answer without a box
is a miss) overall and by expression kind, so what is scored is exactly what
`ask` prints; `loupe eval` must give the same numbers.

Referring is measured by `loupe eval --task refer` (box and mask regions);
given its results file (--refer-results), this script adds the one number
the report lacks: for how many regions the box and the mask got the same
answer (both send the same prompt text and differ only in the
<region_fea> embedding, so ~100 % means the decoder ignores that token).

    /usr/bin/python3 tools/train/eval_loupe.py --model M.gguf --mmproj P.gguf \
        --data DIR/annotations.json [--n-ground 1000] [--loupe build/loupe] [--refer-results R.jsonl]

Uses only the standard library.
"""
import argparse
import collections
import json
import os
import subprocess
import sys


def iou(a, b):
    """Continuous IoU of two [x1, y1, x2, y2] boxes, no +1 (lmms-eval/Ferret)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def ask(args, image, question, extra=()):
    cmd = [args.loupe, "ask", "-m", args.model, "--mmproj", args.mmproj, image, question,
           "--json", "-n", "24", "-t", str(args.threads)] + list(extra)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--data", required=True, help="annotations.json from loupe synth")
    ap.add_argument("--n-ground", type=int, default=1000)
    ap.add_argument("--refer-results", help="results file of `loupe eval --task refer`")
    ap.add_argument("--loupe", default="build/loupe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    d = json.load(open(args.data))
    root = os.path.dirname(args.data)
    images = {im["id"]: im for im in d["images"]}
    anns = {a["id"]: a for a in d["annotations"]}

    # grounding: one sentence per ref, in file order
    hits, n, iou_sum = 0, 0, 0.0
    by_kind = collections.defaultdict(lambda: [0, 0])
    failures = 0
    for ref in d["refs"]:
        if n >= args.n_ground:
            break
        for s in ref["sentences"][:1]:
            im = images[ref["image_id"]]
            x, y, w, h = anns[ref["ann_id"]]["bbox"]
            gt = [x, y, x + w, y + h]
            res, err = ask(args, os.path.join(root, im["file_name"]), f"What is the location of {s['sent']} in the image?")
            v = 0.0
            if res is None:
                failures += 1
            elif res["boxes"]:
                b = res["boxes"][0]
                v = iou([b["x1"], b["y1"], b["x2"], b["y2"]], gt)
            ok = v >= 0.5
            hits += ok
            iou_sum += v
            n += 1
            by_kind[ref["kind"]][0] += ok
            by_kind[ref["kind"]][1] += 1
    if n:
        print(f"grounding: Acc@0.5 {100.0 * hits / max(n, 1):.1f}% ({hits}/{n}), mean IoU {iou_sum / max(n, 1):.3f}, "
              f"{failures} runs failed")
    for k, (a, t) in sorted(by_kind.items()):
        print(f"  {k:8s} {100.0 * a / t:5.1f}% ({a}/{t})")

    if args.refer_results:
        answers = collections.defaultdict(dict)   # region id -> {"box": answer, "mask": answer}
        for line in open(args.refer_results):
            r = json.loads(line)
            region, kind = r["id"].rsplit(":", 1)
            answers[region][kind] = r.get("answer")
        pairs = [v for v in answers.values() if "box" in v and "mask" in v]
        same = sum(v["box"] == v["mask"] for v in pairs)
        print(f"box and mask answers identical for {100.0 * same / max(len(pairs), 1):.1f}% of {len(pairs)} regions "
              f"(~100 %: the decoder ignores <region_fea>)")

if __name__ == "__main__":
    sys.exit(main())
