#!/usr/bin/python3
"""What does the region sampler's output carry? A linear probe.

Runs the ViT and the region sampler of a checkpoint (frozen) on every
visible object of --train-data's first --n-train images (points uniform in
the object's box, drawn as loupe draws them: sample_points_box, seed 0),
fits a linear classifier (standardized inputs, Adam) from the <region_fea>
embedding to the object's category, and scores it on every visible object
of the --data scenes. Also prints the singular values of the standardized
embeddings: how many directions the sampler's output really uses.

  /usr/bin/python3 tools/train/region_probe.py CKPT.pt --train-data WORK/synth --data /tmp/heldval

(--data: a `loupe synth --split val` directory.)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import data as D  # noqa: E402
import model as M  # noqa: E402
from region_sampler import sample_points_box  # noqa: E402

NAMES = "sofa lamp cup chair table plant tv bed book clock bottle dog".split()


def embeddings(m, cfg, ddir, n_img):
    """(k, n_embd) region embeddings and (k,) category indices of the visible objects."""
    with open(os.path.join(ddir, "annotations.json")) as f:
        ann = json.load(f)
    X, Y = [], []
    with torch.no_grad():
        for W, H, u8, objs in D.visible_scenes(ann, ddir, cfg["image_size"], n_img):
            if not objs:
                continue
            f = m.vit(D.normalize(torch.from_numpy(np.array(u8))[None]))                     # (1, N, C)
            pts = [sample_points_box([o["bbox"][0] / W, o["bbox"][1] / H, (o["bbox"][0] + o["bbox"][2]) / W,
                                      (o["bbox"][1] + o["bbox"][3]) / H], cfg["region_points"], 0) for o in objs]
            X.append(m.region(f.expand(len(objs), -1, -1), torch.from_numpy(np.stack(pts))))  # (k, E)
            Y += [o["category_id"] - 1 for o in objs]
    return torch.cat(X), torch.tensor(Y)


def fit_probe(Xtr, Ytr, Xva, n_class, steps=400):
    """A linear classifier on standardized inputs (Adam, full batch): ->
    (the fitted layer, the standardized Xtr and Xva)."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-5
    Xtr, Xva = (Xtr - mu) / sd, (Xva - mu) / sd
    lin = torch.nn.Linear(Xtr.shape[1], n_class)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(lin(Xtr), Ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin, Xtr, Xva


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--train-data", required=True, help="a loupe synth directory to fit the probe on")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--data", required=True, help="held-out loupe synth directory to score it on")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m, ck = M.load(a.ckpt)
    cfg = ck["config"]
    Xtr, Ytr = embeddings(m, cfg, a.train_data, a.n_train)
    Xva, Yva = embeddings(m, cfg, a.data, None)
    lin, Xtr, Xva = fit_probe(Xtr, Ytr, Xva, len(NAMES))
    with torch.no_grad():
        pred = lin(Xva).argmax(1)
        print("region embedding, linear probe for the category: fit %.3f, held-out %.3f (%d / %d objects)" % (
            (lin(Xtr).argmax(1) == Ytr).float().mean(), (pred == Yva).float().mean(), len(Ytr), len(Yva)))
        print("  " + ", ".join("%s %.2f" % (NAMES[c], (pred[Yva == c] == c).float().mean()) for c in range(len(NAMES))))
        sv = torch.linalg.svdvals(Xtr - Xtr.mean(0))
        print("singular values of the standardized embeddings: %s ... 20th %.2f, 50th %.3f" % (
            ", ".join("%.1f" % v for v in sv[:8].tolist()), sv[19], sv[49]))


if __name__ == "__main__":
    main()
