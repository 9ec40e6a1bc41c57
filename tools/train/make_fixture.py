#!/usr/bin/python3
"""PyTorch reference for the shipped tiny model, as a test fixture:
tests/fixtures/tiny/ (parity.gguf + the two scene images), checked by
tests/test_tiny_model.c against loupe's full path (ViT, projector, region
sampler, decoder).

  /usr/bin/python3 tools/train/make_fixture.py CKPT.pt --out tests/fixtures/tiny [--lm-type q8_0] [--embd-type q8_0]

The model is the checkpoint with every matrix given the value loupe reads
back from models/loupe-tiny*.gguf: f16-rounded, or, for the decoder's
matrices exported as q8_0 (export.py's --lm-type / --embd-type, given the
same here), quantized to q8_0 blocks and dequantized; the test decodes with
f32 activations (lp_vlm_ctx_set_exact_matvec), so loupe dots exactly those
values. Two scenes of `loupe synth --seed
4242 --n 2` (a seed training never used); five questions: three grounding,
one referring with a box region, one with a mask region (the object's
visible pixels from the annotation RLE). For each, PyTorch's greedy answer
(at most 16 tokens, stopping after EOS) and the logits of every step.
Region points are drawn exactly as loupe draws them
(tools/reference/region_sampler.py's sample_points_box / _mask, seed 0), the
box/mask normalized over the image (squeeze).

parity.gguf: keys sample.count, sample.K.image, sample.K.question (loupe's
form, "<region>" for the region), sample.K.region ("none", "box", "mask");
tensors sample.K.box (f32 x1 y1 x2 y2 pixels), sample.K.mask_rle (i32 COCO
column-major counts, first run background), sample.K.tokens (i32),
sample.K.logits (f32, steps x vocab).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
import data as D  # noqa: E402
from eval import load, round_like_export  # noqa: E402
from gguf_reader import GGUFWriter  # noqa: E402
from region_sampler import sample_points_box, sample_points_mask  # noqa: E402


def rle_mask(rle):
    h, w = rle["size"]
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for run in rle["counts"]:
        if val:
            flat[pos:pos + run] = 1
        pos += run
        val ^= 1
    return flat.reshape(w, h).T   # column-major -> (h, w)


@torch.no_grad()
def greedy_steps(model, prefix, pixels, suffix, points, eos, n_max=16):
    img, feats = model.encode_image(pixels[None])
    ids, steps = [], []
    has = points is not None
    for _ in range(n_max):
        s = torch.tensor([suffix + ids])
        lg = model(prefix, img, feats, torch.zeros(1, dtype=torch.long), s, None,
                   torch.from_numpy(points)[None] if has else None, torch.tensor([has]))[0, -1]
        steps.append(lg.numpy().astype(np.float32))
        t = int(lg.argmax())
        ids.append(t)
        if t == eos:
            break
    return ids, np.stack(steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "tiny"))
    ap.add_argument("--lm-type", default="f16", choices=("f16", "q8_0"), help="the shipped decoder file's matrices")
    ap.add_argument("--embd-type", default=None, choices=("f16", "q8_0"), help="its token_embd and output (export.py)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    ck, tok, model = load(a.ckpt)
    round_like_export(model, a.lm_type, a.embd_type)
    S, P = ck["config"]["image_size"], ck["config"]["region_points"]
    tmp = tempfile.mkdtemp(prefix="loupe-fixture-")
    subprocess.run([os.path.join(REPO, "build", "loupe"), "synth", "--seed", "4242", "--n", "2", "--out", tmp],
                   check=True, capture_output=True)
    with open(os.path.join(tmp, "annotations.json")) as f:
        ann = json.load(f)
    os.makedirs(a.out, exist_ok=True)
    imgs = {}
    for im in ann["images"]:
        name = os.path.basename(im["file_name"])
        shutil.copy(os.path.join(tmp, im["file_name"]), os.path.join(a.out, name))
        imgs[im["id"]] = (name, im["width"], im["height"])
    by_img = lambda i: [r for r in ann["refs"] if r["image_id"] == i]  # noqa: E731
    regs = lambda i: [g for g in ann["regions"] if g["image_id"] == i]  # noqa: E731
    cases = []
    for r in by_img(1)[:2] + by_img(2)[:1]:
        cases.append((r["image_id"], r["sentences"][0]["sent"], "none", None))
    cases.append((1, None, "box", regs(1)[0]))
    cases.append((2, None, "mask", regs(2)[0]))
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    w = GGUFWriter()
    w.add_u32("sample.count", len(cases))
    for k, (iid, expr, kind, reg) in enumerate(cases):
        name, W, H = imgs[iid]
        pixels = D.normalize(torch.from_numpy(D.squeeze(os.path.join(a.out, name), S)[0]))
        points = None
        if kind == "none":
            q = D.grounding_question(expr)
            q_model = q
        else:
            q = "What is in the region <region>?"
            if kind == "box":
                x, y, bw, bh = reg["bbox"]
                box = [x, y, x + bw, y + bh]
                points = sample_points_box([box[0] / W, box[1] / H, box[2] / W, box[3] / H], P, 0)
            else:
                m = rle_mask(reg["mask"])
                ys, xs = np.nonzero(m)
                box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                points = sample_points_mask(m, P, 0)
                w.add_tensor("sample.%d.mask_rle" % k, np.asarray(reg["mask"]["counts"], np.int32))
            w.add_tensor("sample.%d.box" % k, np.asarray(box, np.float32))
            q_model = q.replace("<region>", D.format_box(box, W, H) + " <region_fea>")
        ids, logits = greedy_steps(model, prefix, pixels, tok.encode(D.suffix_text(q_model)), points, tok.eos)
        w.add_str("sample.%d.image" % k, name)
        w.add_str("sample.%d.question" % k, q)
        w.add_str("sample.%d.region" % k, kind)
        w.add_tensor("sample.%d.tokens" % k, np.asarray(ids, np.int32))
        w.add_tensor("sample.%d.logits" % k, logits)
        print("%d %-5s %-60s -> %s" % (k, kind, q_model[:60], tok.decode([i for i in ids if i != tok.eos])))
    w.write(os.path.join(a.out, "parity.gguf"))
    print("wrote", os.path.join(a.out, "parity.gguf"))


if __name__ == "__main__":
    main()
