#!/usr/bin/python3
"""Recompute `loupe eval`'s numbers independently from its results file.

  /usr/bin/python3 tools/eval_check.py --data DIR/annotations.json \
      --results results.jsonl --report report.json

Reads the ground truth from the dataset itself (loupe synth's layout, or
JSONL; not the "gt" that loupe copied into the results), takes the last
record of each sample id, recomputes IoU from "pred" (continuous, no +1;
null = miss), and compares Acc@0.5, mean IoU and the per-kind and per-split
accuracy with the report. Exits 1 on any disagreement. Standard library only.
"""
import argparse
import collections
import json
import sys


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def truth(path):
    """id -> (box x1 y1 x2 y2, kind, split)"""
    out = {}
    if path.endswith(".jsonl"):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                r = json.loads(line)
                x, y, w, h = r["bbox"]
                out[str(r.get("id", "line%d" % n))] = ([x, y, x + w, y + h], r.get("kind", ""), r.get("split", ""))
        return out
    with open(path) as f:
        d = json.load(f)
    boxes = {a["id"]: a["bbox"] for a in d["annotations"]}
    for r in d["refs"]:
        x, y, w, h = boxes[r["ann_id"]]
        for s in r["sentences"]:
            out["%s:%s" % (r["ref_id"], s["sent_id"])] = ([x, y, x + w, y + h], r.get("kind", ""), r["split"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    gt = truth(a.data)
    last = {}
    with open(a.results) as f:
        for line in f:
            r = json.loads(line)
            last[r["id"]] = r
    n = hit = 0
    iou_sum = 0.0
    by = {"kind": collections.Counter(), "split": collections.Counter()}
    by_n = {"kind": collections.Counter(), "split": collections.Counter()}
    for sid, r in last.items():
        if "error" in r:
            continue
        box, kind, split = gt[sid]
        v = iou(r["pred"], box) if r["pred"] is not None else 0.0
        ok = v >= 0.5
        n += 1
        hit += ok
        iou_sum += v
        for axis, key in (("kind", kind), ("split", split)):
            if key:
                by_n[axis][key] += 1
                by[axis][key] += ok
    with open(a.report) as f:
        rep = json.load(f)
    bad = 0

    def check(what, mine, theirs, tol):
        nonlocal bad
        same = abs(mine - theirs) <= tol
        bad += not same
        print("%-28s recomputed %-10.6g report %-10.6g %s" % (what, mine, theirs, "ok" if same else "DIFFERENT"))

    check("samples", n, rep["overall"]["samples"], 0)
    check("Acc@0.5", hit / max(1, n), rep["overall"]["acc"], 1e-6)
    check("mean IoU", iou_sum / max(1, n), rep["overall"]["mean_iou"], 2e-6)
    for axis in ("kind", "split"):
        for key in sorted(by_n[axis]):
            check("%s %s" % (axis, key), by[axis][key] / by_n[axis][key], rep[axis][key]["acc"], 1e-6)
    print("%s: %d disagreements" % ("OK" if not bad else "FAILED", bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
