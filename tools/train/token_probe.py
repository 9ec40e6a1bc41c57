#!/usr/bin/python3
"""What the decoder can read off the image tokens: linear probes per layer.

At the centre patch of every visible object of the work directory's first
--n-train training images and --n-val held-out (val) images, collects the
ViT features, the projector's output (the image embeddings) and the normed
input of every decoder block at the image positions (what its keys and
values are made of), and fits on the training objects (scores on the val
objects):
  - a linear colour classifier and a linear category classifier
    (region_probe.fit_probe);
  - a linear box regressor (least squares on standardized inputs): the share
    of objects whose regressed box reaches IoU 0.5.
Then, for colour expressions, a linear probe of the colour word on each
block's input at the position that predicts the first answer token (does
the question's colour reach the query?).

  /usr/bin/python3 tools/train/token_probe.py CKPT.pt --work WORK

(A shipped GGUF pair: tools/train/import_gguf.py makes CKPT.pt.)
"""
import argparse
import collections
import json
import os
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data as D  # noqa: E402
import model as M  # noqa: E402
import tokenizer as TK  # noqa: E402
from region_probe import fit_probe  # noqa: E402


def box_iou(a, b):
    iw = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0)
    i = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    return i / (area(a) + area(b) - i + 1e-9)


def fit_box(Xtr, Ytr, Xva, ridge=1e-2):
    """Ridge regression on standardized inputs -> predicted val boxes."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-5
    A = torch.cat([(Xtr - mu) / sd, torch.ones(len(Xtr), 1)], 1).double()
    B = torch.cat([(Xva - mu) / sd, torch.ones(len(Xva), 1)], 1).double()
    W = torch.linalg.solve(A.T @ A + ridge * len(A) * torch.eye(A.shape[1], dtype=A.dtype), A.T @ Ytr.double())
    return (B @ W).float()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--work", default="/tmp/loupe-train")
    ap.add_argument("--n-train", type=int, default=700)
    ap.add_argument("--n-val", type=int, default=250)
    ap.add_argument("--n-questions", type=int, default=1500, help="colour expressions to fit the word probe on")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m, ck = M.load(a.ckpt)
    tok = TK.Tokenizer.from_json(ck["tokenizer"])
    m.region_id = tok.region
    S = ck["config"]["image_size"]
    n_side = S // ck["config"]["patch_size"]
    N = n_side * n_side
    sdir = os.path.join(a.work, "synth")
    data = D.build_samples(sdir, S, tok, os.path.join(a.work, "data-%d.pt" % S))
    extra = D.build_extra(sdir, data, os.path.join(a.work, "extra.pt"))
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    taps = {}
    for l, b in enumerate(m.blocks):
        b.register_forward_hook(lambda mod, args, out, l=l: taps.__setitem__(l, mod.attn_norm(args[1])[0]))

    def run(i, suffix):
        img, feats = m.encode_image(D.normalize(data["images"][i])[None])
        m(prefix, img, feats, torch.zeros(1, dtype=torch.long), torch.tensor([suffix]), None, None,
          torch.tensor([False]))
        return img[0], feats[0]

    @torch.no_grad()
    def objects(split, n):
        X, col, cat, box = collections.defaultdict(list), [], [], []
        ims = [i for i, s in enumerate(data["img_split"]) if s == split][:n]
        for i in ims:
            img, feats = run(i, data["suffix"][0][:3])
            for o in extra["objs"][i]:
                if o[6] < D.MIN_VISIBLE:
                    continue
                x1, y1, x2, y2 = o[2:6].tolist()
                p = min(int((y1 + y2) / 2 * n_side), n_side - 1) * n_side + min(int((x1 + x2) / 2 * n_side), n_side - 1)
                X["ViT features"].append(feats[p])
                X["projector output"].append(img[p])
                for l in taps:
                    X["block %d input" % l].append(taps[l][p])
                col.append(int(o[1]))
                cat.append(int(o[0]))
                box.append(o[2:6].clone())
        return {k: torch.stack(v) for k, v in X.items()}, torch.tensor(col), torch.tensor(cat), torch.stack(box)

    Xt, ct, kt, bt = objects("train", a.n_train)
    Xv, cv, kv, bv = objects("val", a.n_val)
    print("image tokens at objects' centre patches (%d training objects, %d held-out):" % (len(ct), len(cv)))
    print("%-18s %8s %9s %12s" % ("", "colour", "category", "box IoU>=0.5"))
    for k in Xt:
        def acc(y, yv, n):
            lin, _, xv = fit_probe(Xt[k], y, Xv[k], n)
            return (lin(xv).argmax(1) == yv).float().mean().item()
        good = (box_iou(fit_box(Xt[k], bt, Xv[k]), bv) >= 0.5).float().mean().item()
        print("%-18s %7.1f%% %8.1f%% %11.1f%%" % (k, 100 * acc(ct, cv, len(extra["colours"])),
                                                  100 * acc(kt, kv, D.N_CAT), 100 * good))

    with open(os.path.join(sdir, "annotations.json")) as f:
        ann = json.load(f)
    kinds = [r["kind"] for r in ann["refs"] for _ in r["sentences"]]
    cols = extra["colours"]

    @torch.no_grad()
    def words(split, n):
        X, y = collections.defaultdict(list), []
        for j in (j for j, k in enumerate(kinds) if k == "color" and data["split"][j] == split):
            c = [k for k, c in enumerate(cols) if re.search(r"\b%s\b" % c, data["question"][j])]
            if len(c) != 1:
                continue
            run(data["img"][j], data["suffix"][j])
            at = N + len(data["suffix"][j]) - 1      # the position predicting the first answer token
            for l in taps:
                X["block %d input" % l].append(taps[l][at])
            y.append(c[0])
            if len(y) >= n:
                break
        return {k: torch.stack(v) for k, v in X.items()}, torch.tensor(y)

    Wt, yt = words("train", a.n_questions)
    Wv, yv = words("val", a.n_questions // 3)
    print("the colour word of a colour expression at the answer position (%d / %d questions):" % (len(yt), len(yv)))
    for k in Wt:
        lin, _, xv = fit_probe(Wt[k], yt, Wv[k], len(cols))
        print("%-18s %7.1f%%" % (k, 100 * (lin(xv).argmax(1) == yv).float().mean().item()))


if __name__ == "__main__":
    main()
