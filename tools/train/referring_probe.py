#!/usr/bin/python3
"""Where does a checkpoint's referring answer come from, and where is the
colour lost? Two measurements on the referring questions of a training
work directory (teacher-forced, PyTorch, no sampling):

1. Answer-token accuracy by position ("a", colour, category, </s>) on the
   train and the val split, with the <region_fea> embedding as the sampler
   gives it, zeroed, or taken from another question's region (shuffled),
   and with or without the "[x1, y1, x2, y2]" box text. A token the decoder
   reads moves the category when it is zeroed or shuffled.
2. Linear colour probes (fit on --n-fit train-split questions, scored on
   --n-score val-split ones): on the projector's image embedding at the
   object's centre patch and on the <region_fea> embedding (what the decoder
   is given) and on the decoder's final hidden state at the position that
   predicts the colour (what it made of it).

  /usr/bin/python3 tools/train/referring_probe.py CKPT.pt --work WORK
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
from model import load  # noqa: E402
from region_probe import fit_probe  # noqa: E402
from train import centre_patch, collate, drop_box_text, prepare  # noqa: E402


def batches(data, tok, cfg, split, n, bs=32):
    """Yield (question indices, collate(...) tensors) for the first n
    referring questions of split."""
    idx = [j for j, k in enumerate(data["kind"]) if k == 1 and data["split"][j] == split][:n]
    gen = torch.Generator().manual_seed(0)
    for s in range(0, len(idx), bs):
        b = idx[s:s + bs]
        yield b, collate(data, b, tok, gen, cfg["region_points"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--work", required=True, help="the train.py --work directory (its synth, tokenizer and cache)")
    ap.add_argument("--n-acc", type=int, default=256, help="questions per split for the accuracies")
    ap.add_argument("--n-fit", type=int, default=2048)
    ap.add_argument("--n-score", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m, ck = load(a.ckpt)
    cfg = ck["config"]
    tok, data = prepare(a.work, 1, 8000, cfg["image_size"])
    m.region_id = tok.region
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    # the same questions without their box text: only <region_fea> says where
    nobox_data = dict(data, suffix=[drop_box_text(s, tok) if k == 1 else s
                                    for s, k in zip(data["suffix"], data["kind"])])
    sampler = m.region.forward
    hidden = {}
    m.norm.register_forward_hook(lambda mod, inp, out: hidden.__setitem__("h", out))

    def forward(out, region="as is"):
        px, img_of, suf, tgt, pts, reg = out
        if region == "zeroed":
            m.region.forward = lambda f, p: sampler(f, p) * 0
        elif region == "shuffled":
            m.region.forward = lambda f, p: sampler(f, p).roll(1, 0)
        with torch.no_grad():
            img, feats = m.encode_image(px)
            lg = m(prefix, img, feats, img_of, suf, None, pts, reg)
        m.region.forward = sampler
        return img, feats, lg, tgt

    print("1. teacher-forced answer-token accuracy, %% (a, colour, category, </s>), %d questions per split" % a.n_acc)
    for split in ("train", "val"):
        for region in ("as is", "zeroed", "shuffled"):
            for nobox in (False, True):
                hits, tot = torch.zeros(4), 0
                for b, out in batches(nobox_data if nobox else data, tok, cfg, split, a.n_acc):
                    _, _, lg, tgt = forward(out, region)
                    for q in range(len(b)):
                        pos = (tgt[q] >= 0).nonzero().squeeze(1)[:4]
                        hits[:len(pos)] += (lg[q, pos].argmax(-1) == tgt[q, pos]).float()
                    tot += len(b)
                print("  %-5s <region_fea> %-8s %-12s %s" % (split, region, "no box text" if nobox else "box text",
                                                               " ".join("%5.1f" % v for v in (100 * hits / tot).tolist())))

    colours = sorted(set(t.split()[1] for t, k in zip(data["answer_text"], data["kind"]) if k == 1))
    n_side = cfg["image_size"] // cfg["patch_size"]

    def features(split, n):
        X, Y = [[], [], []], []
        for b, out in batches(data, tok, cfg, split, n):
            img, feats, _, tgt = forward(out)
            with torch.no_grad():
                e = m.region(feats[out[1]], out[4])
            for q, j in enumerate(b):
                w, h = data["sizes"][data["img"][j]].tolist()
                x1, y1, x2, y2 = data["abox"][j]
                c = centre_patch(x1 / w, y1 / h, x2 / w, y2 / h, n_side)
                p = (tgt[q] >= 0).nonzero().squeeze(1)[1]     # the position whose target is answer token 1, the colour
                for k, v in enumerate((img[out[1][q], c], e[q], hidden["h"][q, p])):
                    X[k].append(v)
                Y.append(colours.index(data["answer_text"][j].split()[1]))
        return [torch.stack(x) for x in X], torch.tensor(Y)

    (Xtr, Ytr), (Xva, Yva) = features("train", a.n_fit), features("val", a.n_score)
    print("2. linear colour probes (fit on %d train, scored on %d val questions; the most common colour is %.1f %%)" % (
        len(Ytr), len(Yva), 100 * (Yva == Yva.mode().values).float().mean()))
    for name, xt, xv in zip(("image embedding at the object's centre patch", "<region_fea> embedding",
                             "decoder's final hidden state, colour position"), Xtr, Xva):
        lin, _, xv = fit_probe(xt, Ytr, xv, len(colours))
        with torch.no_grad():
            print("  %-46s %5.1f %%" % (name, 100 * (lin(xv).argmax(1) == Yva).float().mean()))


if __name__ == "__main__":
    main()
