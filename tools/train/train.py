#!/usr/bin/python3
"""Train loupe's tiny Ferret-style model on synthetic scenes (CPU, fp32).

  /usr/bin/python3 tools/train/train.py --work /tmp/loupe-train --n-images 12000 \\
      --steps 3000 --seed 1 --out /tmp/loupe-train/ckpt.pt

Steps: (1) `loupe synth` into WORK/synth (once; deterministic for
--synth-seed/--n-images), (2) the vocabulary from that corpus
(WORK/tokenizer.json), (3) samples and squeezed images cached as tensors
(WORK/data-S.pt), (4) AdamW with linear warm-up + cosine decay, loss on the
answer tokens (+ EOS) only, deterministic for --seed (torch.manual_seed,
fixed batch order), checkpoints to --out every --save-every steps.
See tools/train/README.md.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import tokenizer as TK  # noqa: E402
from model import DEFAULT_CONFIG, Model  # noqa: E402


def prepare(work, synth_seed, n_images, S):
    os.makedirs(work, exist_ok=True)
    sdir = os.path.join(work, "synth")
    D.synth(sdir, synth_seed, n_images)
    tpath = os.path.join(work, "tokenizer.json")
    if os.path.exists(tpath):
        tok = TK.Tokenizer.from_json(tpath)
    else:
        with open(os.path.join(sdir, "annotations.json")) as f:
            ann = json.load(f)
        tok = TK.build(D.texts_of(ann))
        tok.to_json(tpath)
    data = D.build_samples(sdir, S, tok, os.path.join(work, "data-%d.pt" % S))
    return tok, data


def collate(data, idx, tok, gen, n_points):
    """-> tensors for Model.forward plus targets (-100 outside the answer)."""
    imgs = sorted(set(data["img"][j] for j in idx))
    row = {i: k for k, i in enumerate(imgs)}
    seqs = [data["suffix"][j] + data["answer"][j] for j in idx]
    T = max(len(s) for s in seqs)
    B = len(idx)
    suffix = torch.full((B, T), tok.eos, dtype=torch.long)
    target = torch.full((B, T), -100, dtype=torch.long)
    for b, j in enumerate(idx):
        s, ls = seqs[b], len(data["suffix"][j])
        suffix[b, :len(s)] = torch.tensor(s)
        # logits at position t predict token t + 1: answer token k sits at ls + k
        target[b, ls - 1:len(s) - 1] = torch.tensor(s[ls:])
    region = torch.tensor([data["kind"][j] == 1 for j in idx])
    box = data["rbox"][idx]                                        # (B, 4) normalized x1 y1 x2 y2
    u = torch.rand(B, n_points, 2, generator=gen)
    pts = torch.stack([box[:, None, 0] + u[..., 0] * (box[:, None, 2] - box[:, None, 0]),
                       box[:, None, 1] + u[..., 1] * (box[:, None, 3] - box[:, None, 1])], -1)
    pixels = D.normalize(data["images"][imgs])
    img_of = torch.tensor([row[data["img"][j]] for j in idx])
    return pixels, img_of, suffix, target, pts, region


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/loupe-train")
    ap.add_argument("--synth-seed", type=int, default=1)
    ap.add_argument("--n-images", type=int, default=12000)
    ap.add_argument("--out", default=None, help="checkpoint path (default WORK/ckpt.pt)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-img", type=int, default=16, help="images per batch")
    ap.add_argument("--per-img", type=int, default=2, help="questions per image in a batch")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--config", default=None, help="JSON overrides of model.DEFAULT_CONFIG")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(DEFAULT_CONFIG)
    if a.config:
        cfg.update(json.loads(a.config))
    out = a.out or os.path.join(a.work, "ckpt.pt")
    t0 = time.time()
    tok, data = prepare(a.work, a.synth_seed, a.n_images, cfg["image_size"])
    cfg["n_vocab"] = len(tok)
    train_idx = [j for j, s in enumerate(data["split"]) if s == "train"]
    print("data: %d images, %d samples (%d train), vocab %d, prep %.1fs" %
          (len(data["sizes"]), len(data["img"]), len(train_idx), len(tok), time.time() - t0), flush=True)
    model = Model(cfg)
    model.region_id = tok.region
    n_par = sum(p.numel() for p in model.parameters())
    print("model: %.2fM parameters; config %s" % (n_par / 1e6, json.dumps(cfg)), flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    step, log = 0, []
    if a.resume and os.path.exists(out):
        ck = torch.load(out)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, log = ck["step"], ck["log"]
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    gen = torch.Generator().manual_seed(a.seed)
    epoch, batches = 0, []
    # fixed order: epoch e uses grouped_batches(seed + e); resuming replays the order
    consumed = 0
    while consumed <= step:
        batches = D.grouped_batches(data, train_idx, a.per_img, a.batch_img, a.seed * 1000 + epoch)
        if consumed + len(batches) > step:
            break
        consumed += len(batches)
        epoch += 1
    bi = step - consumed
    gen.manual_seed(a.seed * 7919 + step)
    model.train()
    t_start, seen, run = time.time(), 0, []
    while step < a.steps:
        if bi >= len(batches):
            epoch += 1
            batches = D.grouped_batches(data, train_idx, a.per_img, a.batch_img, a.seed * 1000 + epoch)
            bi = 0
        idx = batches[bi]
        bi += 1
        pixels, img_of, suffix, target, pts, region = collate(data, idx, tok, gen, cfg["region_points"])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup)
        img, feats = model.encode_image(pixels)
        logits = model(prefix, img, feats, img_of, suffix, None, pts, region)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += len(idx)
        run.append(loss.item())
        if step % 25 == 0 or step == a.steps:
            el = time.time() - t_start
            m = float(np.mean(run))
            log.append((step, m))
            print("step %5d  loss %.4f  lr %.2e  %.1f samples/s  %.0fs" % (step, m, opt.param_groups[0]["lr"],
                                                                         seen / el, el), flush=True)
            run = []
        if step % a.save_every == 0 or step == a.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                        "config": cfg, "tokenizer": os.path.join(a.work, "tokenizer.json"), "args": vars(a)}, out)
    print("done: %d steps in %.0fs" % (step, time.time() - t_start), flush=True)


if __name__ == "__main__":
    main()
