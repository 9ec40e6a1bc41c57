#!/usr/bin/python3
"""How well could the model ground if it always picked the right object?

Runs only the ViT and the training-time auxiliary box head (AuxHead in
train.py) of a checkpoint on held-out scenes, and scores the box the head
predicts at the ground-truth object's own patches (the patch holding the
box centre, and the mean over every patch the object covers) with Acc@0.5,
and how often the category head names the object at its centre patch.
The decoder can only copy boxes that the image features carry, so this is a
ceiling on grounding accuracy whatever the language side learns.

  /usr/bin/python3 tools/train/oracle_boxes.py CKPT.pt --data /tmp/heldval [--n-images 120]

(CKPT: train.py's --out, or its stage-1 OUT.vit.)

(--data: a `loupe synth --split val` directory.)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import model as M  # noqa: E402
from train import AuxHead, cell_centres, decode_box  # noqa: E402


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u if u > 0 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n-images", type=int, default=120)
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, ck = M.load(a.ckpt)      # also a stage-1 checkpoint (train.py's OUT.vit)
    cfg = ck["config"]
    ann = json.load(open(os.path.join(a.data, "annotations.json")))
    cats = {c["id"]: c["name"] for c in ann["categories"]}
    n_out = ck["aux"]["lin.2.weight"].shape[0]
    n_box = 8 if ck.get("args", {}).get("box_param") == "rel" else 4
    head = AuxHead(cfg["v_embd"], len(cats), n_out - len(cats) - 1 - 1 - n_box, n_box)
    head.load_state_dict(ck["aux"])
    head.eval()
    S, n = cfg["image_size"], cfg["image_size"] // cfg["patch_size"]
    xx, yy = (t.numpy() for t in cell_centres(n))
    centre, cover, named = {}, {}, {}
    with torch.no_grad():
        for W, H, u8, objs in D.visible_scenes(ann, a.data, S, a.n_images):
            out = head(m.vit(D.normalize(torch.from_numpy(np.array(u8))[None])))
            box = decode_box(out[3][0], n).numpy()                             # (N, 4)
            cat = out[0][0].argmax(-1).numpy()                                 # (N,) 0 = background
            for o in objs:
                x, y, bw, bh = o["bbox"]
                g = [x / W, y / H, (x + bw) / W, (y + bh) / H]
                p = min(int((g[1] + g[3]) / 2 * n), n - 1) * n + min(int((g[0] + g[2]) / 2 * n), n - 1)
                cov = (xx >= g[0]) & (xx < g[2]) & (yy >= g[1]) & (yy < g[3])
                c = cats[o["category_id"]]
                centre.setdefault(c, []).append(iou(box[p], g))
                named.setdefault(c, []).append(cat[p] == o["category_id"])    # aux category = id - 1 + 1
                cover.setdefault(c, []).append(iou(box[cov].mean(0) if cov.any() else box[p], g))
    allc = np.array([v for l in centre.values() for v in l])
    allv = np.array([v for l in cover.values() for v in l])
    print("oracle Acc@0.5: centre patch %.3f, mean over covered patches %.3f (%d objects, %d images)" %
          (np.mean(allc >= 0.5), np.mean(allv >= 0.5), len(allc), min(a.n_images, len(ann["images"]))))
    alln = np.array([v for l in named.values() for v in l])
    print("category head at the centre patch: right for %.3f of the objects (the features' side of referring)" %
          np.mean(alln))
    for c in sorted(centre):
        print("  %-8s %.2f  %.2f  (n=%d, mean IoU %.2f, category %.2f)" % (
            c, np.mean(np.array(centre[c]) >= 0.5), np.mean(np.array(cover[c]) >= 0.5), len(centre[c]),
            np.mean(centre[c]), np.mean(named[c])))


if __name__ == "__main__":
    main()
