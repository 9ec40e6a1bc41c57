#!/usr/bin/python3
"""Train loupe's tiny Ferret-style model on synthetic scenes (CPU; matrix
products in bfloat16 with f32 master weights, --bf16 0 for f32 throughout).

  /usr/bin/python3 tools/train/train.py --work /tmp/loupe-train --out /tmp/loupe-train/run.pt

then `--resume --steps 8400 --threads 2` (a 3,600-step low-rate tail) for
the shipped model's recipe (the defaults are its first run). Steps: (1) `loupe synth` into
WORK/synth (once; deterministic for --synth-seed/--n-images), (2) the
vocabulary from its first --vocab-images scenes (WORK/tokenizer.json), (3) samples and squeezed
images cached as tensors (WORK/data-S.pt), (4) stage 1: the ViT alone on
dense auxiliary targets (saved as OUT.vit and reused when present), (5)
stage 2: everything, AdamW with linear warm-up + cosine decay, loss on the
answer tokens (+ EOS) plus the soft coordinate, auxiliary and attention
losses; deterministic for --seed (torch.manual_seed, fixed batch order);
checkpoints to --out every --save-every steps. See tools/train/README.md.
"""

import argparse
import json
import math
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import tokenizer as TK  # noqa: E402
from model import DEFAULT_CONFIG, Model  # noqa: E402


def prepare(work, synth_seed, n_images, S, vocab_images=8000):
    os.makedirs(work, exist_ok=True)
    sdir = os.path.join(work, "synth")
    D.synth(sdir, synth_seed, n_images)
    tpath = os.path.join(work, "tokenizer.json")
    if os.path.exists(tpath):
        tok = TK.Tokenizer.from_json(tpath)
    else:
        with open(os.path.join(sdir, "annotations.json")) as f:
            ann = json.load(f)
        # The vocabulary comes from the first vocab_images scenes only: scene i
        # is the same whatever --n-images, so a corpus grown past them keeps
        # the token ids (BPE ranks follow the counts, which any more scenes
        # would reorder).
        keep = {im["id"] for im in ann["images"][:vocab_images]}
        ann = {"refs": [r for r in ann["refs"] if r["image_id"] in keep],
               "regions": [g for g in ann["regions"] if g["image_id"] in keep]}
        tok = TK.build(D.texts_of(ann))
        tok.to_json(tpath)
    data = D.build_samples(sdir, S, tok, os.path.join(work, "data-%d.pt" % S))
    return tok, data


class AuxHead(torch.nn.Module):
    """Training-only dense heads on the ViT patch features (never exported):
    per patch, the category (or background) and colour of the object that
    covers the patch centre, whether an object's centre falls in the patch,
    and that object's box -- as 4 raw values (n_box = 4: absolute, sigmoid)
    or 8 (relative to the patch centre, then absolute; see decode_box).
    They teach the ViT *what is where* far faster than the answer tokens
    alone, which is what the decoder's box answers and the region sampler
    both read."""

    def __init__(self, D, n_cat, n_col, n_box=4):
        super().__init__()
        self.n_cat, self.n_col, self.n_box = n_cat, n_col, n_box
        self.lin = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.GELU(),
                                       torch.nn.Linear(D, n_cat + 1 + n_col + 1 + n_box))

    def forward(self, feats):
        o = self.lin(feats).float()    # the losses in f32 under --bf16
        c, k = self.n_cat + 1, self.n_col
        return o[..., :c], o[..., c:c + k], o[..., c + k], o[..., c + k + 1:]


def cell_centres(n_side):
    """(N,) x and (N,) y of the patch centres, normalized, row-major."""
    cell = (torch.arange(n_side, dtype=torch.float32) + 0.5) / n_side
    cy, cx = torch.meshgrid(cell, cell, indexing="ij")
    return cx.reshape(-1), cy.reshape(-1)


def centre_patch(x1, y1, x2, y2, n_side):
    """Index of the patch (row-major on the n_side grid) holding the centre
    of a box given in normalized coordinates."""
    return (min(int((y1 + y2) / 2 * n_side), n_side - 1) * n_side +
            min(int((x1 + x2) / 2 * n_side), n_side - 1))


def decode_box(raw, n_side):
    """raw (..., N, n_box) of AuxHead -> (..., N, 4) normalized x1 y1 x2 y2.
    n_box 4: sigmoid of absolute coordinates (the first recipes).  n_box 8:
    the first four are distances from the patch centre to the box's sides,
    softplus(raw) / n_side (a patch only has to say how far its object
    reaches, which a small ViT learns far better than where the image puts
    it; measured in tools/train/README.md); the last four are the absolute
    form, trained alongside so the features also carry it linearly."""
    if raw.shape[-1] == 4:
        return torch.sigmoid(raw)
    cx, cy = cell_centres(n_side)
    d = F.softplus(raw[..., :4]) / n_side
    return torch.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], -1)


def giou_loss(p, g):
    """mean(1 - GIoU) of (M, 4) boxes: scale-free, so a cup's box counts as
    much as a sofa's (L1 alone lets small objects stay far off in IoU)."""
    iw = (torch.min(p[:, 2], g[:, 2]) - torch.max(p[:, 0], g[:, 0])).clamp(min=0)
    ih = (torch.min(p[:, 3], g[:, 3]) - torch.max(p[:, 1], g[:, 1])).clamp(min=0)
    inter = iw * ih
    ap = (p[:, 2] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 1]).clamp(min=0)
    ag = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = ap + ag - inter + 1e-7
    cw = torch.max(p[:, 2], g[:, 2]) - torch.min(p[:, 0], g[:, 0])
    ch = torch.max(p[:, 3], g[:, 3]) - torch.min(p[:, 1], g[:, 1])
    hull = cw * ch + 1e-7
    return (1 - inter / union + (hull - union) / hull).mean()


def aux_targets(objs, n_side, dense_box=True):
    """objs (k, 7) of one image -> per-patch targets on the n_side^2 grid:
    cover category (0 = background), cover colour (-100 none), centre flag,
    box (x1 y1 x2 y2 normalized).  dense_box: every patch covered by an
    object carries that object's box (so attention spread over the object
    still reads the right box); otherwise only the patch holding the box
    centre does (the first recipe).  A patch belongs to the smallest object
    covering its centre; with claim_centre (the default since the ninth
    session) an object also claims the patch holding its own box centre
    when it is smaller than that patch's owner -- before, a cup on a table
    that covered no patch centre had no patch at all: its centre patch
    carried the table's box and category, so nothing could point at it."""
    N = n_side * n_side
    cat = torch.zeros(N, dtype=torch.long)
    col = torch.full((N,), -100, dtype=torch.long)
    ctr = torch.zeros(N)
    box = torch.zeros(N, 4)
    cx, cy = cell_centres(n_side)
    best = torch.full((N,), 9.0)
    for o in objs:
        if o[6] < D.MIN_VISIBLE:
            continue
        x1, y1, x2, y2 = o[2:6].tolist()
        area = (x2 - x1) * (y2 - y1)
        inside = (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)
        p = centre_patch(x1, y1, x2, y2, n_side)
        if claim_centre and dense_box:
            inside[p] = True
        inside &= area < best
        cat[inside], col[inside], best[inside] = int(o[0]) + 1, int(o[1]), area
        if dense_box:
            box[inside] = o[2:6]
            ctr[p] = 1
        elif ctr[p] == 0 or area < (box[p, 2] - box[p, 0]) * (box[p, 3] - box[p, 1]):
            ctr[p] = 1
            box[p] = o[2:6]
    return cat, col, ctr, box


def stacked_aux_targets(extra, imgs, n_side, dense_box):
    """aux_targets of each image, stacked: (cat (B, N), colour (B, N),
    centre (B, N), box (B, N, 4)) in the order of imgs."""
    tg = [aux_targets(extra["objs"][i], n_side, dense_box) for i in imgs]
    return tuple(torch.stack([t[k] for t in tg]) for k in range(4))


dense_box_loss = True   # set from --dense-box in main()
claim_centre = True     # set from --claim-centre in main()
n_side_loss = 10        # set in main()


def aux_loss(head, feats, tg):
    cat_l, col_l, ctr_l, box_l = head(feats)
    cat, col, ctr, box = tg
    l_cat = F.cross_entropy(cat_l.reshape(-1, cat_l.shape[-1]), cat.reshape(-1))
    l_col = F.cross_entropy(col_l.reshape(-1, col_l.shape[-1]), col.reshape(-1), ignore_index=-100)
    l_ctr = F.binary_cross_entropy_with_logits(ctr_l, ctr)
    pos = (box[..., 2] > box[..., 0]) if dense_box_loss else ctr > 0
    if not pos.any():
        l_box = feats.sum() * 0
        return l_cat + l_col + l_ctr + l_box, 0.0
    pred = decode_box(box_l, n_side_loss)[pos]
    l_box = F.l1_loss(pred, box[pos])
    total = l_cat + l_col + l_ctr + 10.0 * l_box
    if box_l.shape[-1] == 8:   # relative form: + GIoU, + the absolute form at a quarter weight
        total = total + 2.0 * giou_loss(pred, box[pos]) + 2.5 * F.l1_loss(torch.sigmoid(box_l[..., 4:][pos]), box[pos])
    return total, l_box.item()


def region_aux_loss(model, rhead, feats, imgs, extra, n_points, gen, rms_cap=0.0, per_img=0, detach=False):
    """Training-only: every visible object of the batch's images through the
    region sampler (points uniform in its box), and a head (LayerNorm +
    linear) on the <region_fea> embedding must name its category and colour.
    Without it the sampler only learns through the decoder's few referring
    answers, and its output collapsed to ~3 directions (sixth session,
    region_probe.py: singular values 366, 310, 221, then 11.8; a linear
    probe names 22 % of held-out categories).
    per_img > 0: at most that many objects per image (a random subset: the
    head on every object cost ~20 % of stage 2's speed). detach: the head's
    gradients stop at the patch features and train the sampler alone (the
    features already carry category and colour from stage 1)."""
    if detach:
        feats = feats.detach()
    fs, ps, cats, cols = [], [], [], []
    for r, i in enumerate(imgs):
        o = extra["objs"][i]
        o = o[o[:, 6] >= D.MIN_VISIBLE]
        if per_img > 0 and len(o) > per_img:
            o = o[torch.randperm(len(o), generator=gen)[:per_img]]
        if len(o) == 0:
            continue
        u = torch.rand(len(o), n_points, 2, generator=gen)
        lo, wh = o[:, None, 2:4], (o[:, None, 4:6] - o[:, None, 2:4])
        ps.append(lo + u * wh)
        fs.append(feats[r:r + 1].expand(len(o), -1, -1))
        cats.append(o[:, 0].long())
        cols.append(o[:, 1].long())
    if not ps:
        return feats.sum() * 0
    e = model.region(torch.cat(fs), torch.cat(ps))                 # (k, E)
    out = rhead(e)
    loss = F.cross_entropy(out[:, :D.N_CAT], torch.cat(cats)) + F.cross_entropy(out[:, D.N_CAT:], torch.cat(cols))
    if rms_cap > 0:
        # The head's LayerNorm makes this loss blind to the embedding's scale,
        # and AdamW then lets the scale grow (seventh session: RMS per
        # dimension 2.6 -> 18). The decoder's RMSNorm divides the gradient
        # that reaches the sampler by that scale, so cap it.
        loss = loss + F.relu(e.pow(2).mean(1).sqrt() - rms_cap).pow(2).mean()
    return loss


class EmbdAux(torch.nn.Module):
    """Training-only linear heads on what the decoder reads of the image
    (--embd-aux; never exported): per image token, the category (or
    background) and colour of the object covering the patch and that
    object's box (x1 y1 x2 y2, normalized; every covered patch, as the
    dense auxiliary targets), from the projector's output and from the normed
    input of the last block (the vectors its keys and values are made of).
    Sixteenth session, linear probes at held-out objects' centre patches:
    the ViT features name the colour for 82 % of objects, the projector's
    output for 52 % and the last block's input for 41 %, while the category
    stays at 81 % throughout -- the projector drops the colour the decoder
    never asked for, and grounding by colour among objects of one category
    stays at chance; a linear box read off the last block's input reaches IoU
    0.5 for 67 %, about the model's own grounding. Linear on purpose:
    attention scores and the values it copies are linear in that input."""

    def __init__(self, E, n_cat, n_col, n_taps=2, box=False):
        super().__init__()
        self.n_cat, self.n_col, self.box = n_cat, n_col, box
        self.heads = torch.nn.ModuleList(torch.nn.Linear(E, n_cat + 1 + n_col + (4 if box else 0))
                                         for _ in range(n_taps))

    def forward(self, taps, tgs):
        """taps: list of (B, N, E) image-token vectors; tgs: for each, its
        aux_targets stacked (cat (B, N), colour (B, N), centre, box (B, N, 4)).
        Mean over the taps of the category and colour cross-entropies (+ 10 L1
        + 2 GIoU of the box, the auxiliary head's weights)."""
        loss = 0.0
        c, k = self.n_cat + 1, self.n_col
        for h, x, tg in zip(self.heads, taps, tgs):
            o = h(x.float()).reshape(-1, h.out_features)
            loss = loss + F.cross_entropy(o[:, :c], tg[0].reshape(-1)) + \
                F.cross_entropy(o[:, c:c + k], tg[1].reshape(-1), ignore_index=-100)
            if self.box:
                box = tg[3].reshape(-1, 4)
                pos = box[:, 2] > box[:, 0]
                if pos.any():
                    pred = o[pos, c + k:]
                    loss = loss + 10.0 * F.l1_loss(pred, box[pos]) + 2.0 * giou_loss(pred, box[pos])
        return loss / len(taps)


def attention_loss(model, data, idx, target, n_side, layer, head, cover=None, kinds=(0,)):
    """Attention supervision: for the questions of the given kinds (0
    grounding, 1 referring), at every position that predicts an answer
    token, head `head` of block `layer` should look at the image patch
    holding the centre of the true box (the patch whose features the
    auxiliary head teaches to carry that box). -log of the attention mass
    there, averaged. Training only: the model is unchanged, this only shows
    the decoder early where to look -- for a referring answer, at the object
    whose category and colour it has to name."""
    att = model.blocks[layer].att                        # (R, H, T, Tp + T)
    N, Tp = n_side * n_side, model.Tp
    rs, ts, sels = [], [], []       # per answer position: row, position, target patches (N,)
    for q, j in enumerate(idx):
        if data["kind"][j] not in kinds:
            continue
        r, o, L = model.where[q]
        w, h = data["sizes"][data["img"][j]].tolist()
        x1, y1, x2, y2 = data["abox"][j]
        c = centre_patch(x1 / w, y1 / h, x2 / w, y2 / h, n_side)
        ans = (target[q] >= 0).nonzero().squeeze(1)        # positions predicting answer tokens
        if len(ans) == 0:
            continue
        sel = torch.zeros(N, dtype=torch.bool)
        if cover is not None:
            # dense boxes: every patch the object covers carries its box, so
            # the mass over all of them is what has to be high
            nb = torch.tensor([x1 / w, y1 / h, x2 / w, y2 / h], dtype=torch.float32)
            sel = (cover[data["img"][j]] - nb).abs().max(dim=1).values < 2e-3
        sel[c] = True
        rs.append(torch.full((len(ans),), r))
        ts.append(o + ans)
        sels.append(sel.expand(len(ans), N))
    if not rs:
        return target.new_zeros((), dtype=torch.float32)
    # one gather for every answer position (a per-question slice of att would
    # cost a zero tensor of att's full size, and an add, each in backward)
    a_img = att[:, head, :, Tp:Tp + N][torch.cat(rs), torch.cat(ts)]   # (M, N)
    mass = (a_img * torch.cat(sels)).sum(dim=1)                       # (M,)
    return -torch.log(mass + 1e-6).mean()


def number_ids(tok):
    """token id of each coordinate 0..999 (every one is a single token)."""
    return torch.tensor([tok.id_of[str(n)] for n in range(1000)])


def coord_loss(logits, target, num_ids, value_of, sigma):
    """Soft cross-entropy for coordinate tokens: the target distribution is
    a Gaussian (sigma grid steps) over the 1000 number tokens centred on the
    true value, so a near miss costs less than a far one (plain CE treats
    "412" vs "413" like "412" vs "7"). Argmax stays at the true value."""
    is_num = value_of[target.clamp(min=0)] >= 0
    is_num &= target >= 0
    if not is_num.any():
        return logits.sum() * 0
    lp = F.log_softmax(logits[is_num], -1)[:, num_ids]                # (M, 1000)
    v = value_of[target[is_num]].float()
    grid = torch.arange(1000, dtype=torch.float32)
    p = torch.exp(-0.5 * ((grid[None] - v[:, None]) / sigma) ** 2)
    p = p / p.sum(-1, keepdim=True)
    return -(p * lp).sum(-1).mean()


def init_number_rows(model, num_ids, gain=10.0):
    """Coordinate tokens: smooth sinusoidal input embeddings, and output rows
    that make the 1000 coordinate logits a quadratic in the value:
        logit(v) = h0 * u - h1 * u^2 / 2 + h2,  u = v / 999
    (h = the final normed hidden state), i.e. a Gaussian over the values
    centred on u* = h0 / h1 -- so the decoder only has to regress a number
    into h0 and h1 instead of learning a 1000-way classifier from scratch
    (greedy decoding takes the centre, however wide the Gaussian); h2 says
    "a coordinate comes now". The rows are O(1) so Adam's steps stay in
    proportion; the final norm's gain on those three dimensions starts at
    `gain`. Every other entry of the rows starts at 0, every other token's
    row has 0 in those dimensions, and everything stays trainable: this is
    an initialisation, the exported head is an ordinary output matrix."""
    E = model.tok_embd.weight.shape[1]
    v = torch.arange(1000, dtype=torch.float64)[:, None]
    freq = 1.0 / (2000.0 ** (torch.arange(E // 2, dtype=torch.float64) / (E // 2)))
    ang = v * freq[None] * 2 * math.pi / 8
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], 1).float() * 0.02
    u = torch.arange(1000, dtype=torch.float32) / 999.0
    out = torch.zeros(1000, E)
    out[:, 0] = u
    out[:, 1] = -u * u / 2
    out[:, 2] = 1.0
    with torch.no_grad():
        model.tok_embd.weight[num_ids] = emb + 0.005 * torch.randn_like(emb)
        model.output.weight[:, :3] = 0.0
        model.output.weight[num_ids] = out
        model.norm.weight[:3] = gain


def collate(data, idx, tok, gen, n_points, extra=None, p_mask=0.0):
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
    if extra is not None and p_mask > 0:   # some regions as masks: points from the mask's pixels
        for b, j in enumerate(idx):
            m = extra["mask"][j]
            if m is not None and len(m) > 0 and float(torch.rand(1, generator=gen)) < p_mask:
                pts[b] = m[torch.randint(len(m), (n_points,), generator=gen)]
    pixels = D.normalize(data["images"][imgs])
    img_of = torch.tensor([row[data["img"][j]] for j in idx])
    return pixels, img_of, suffix, target, pts, region


def drop_box_text(suffix, tok):
    """A referring question without its "[x1, y1, x2, y2]" text (the tokens
    from "▁[" to "]"): "What is in the region <region_fea>?", so that the
    <region_fea> token is the only way to the region."""
    a, b = suffix.index(tok.id_of["\u2581["]), suffix.index(tok.id_of["]"])
    return suffix[:a] + suffix[b + 1:]


def collate_packed(data, chunks, tok, gen, n_points, extra, p_mask, p_nobox=0.0):
    """A batch of chunks (each: questions about one image) -> the inputs of
    Model.forward_packed plus per-question targets (Q, Lmax), -100 outside
    the answer. p_nobox: share of referring questions without the box text."""
    idx = [j for c in chunks for j in c]
    imgs = sorted(set(data["img"][j] for j in idx))
    row = {i: k for k, i in enumerate(imgs)}
    rows, tgts = [], []
    for c in chunks:
        blocks = []
        for j in c:
            suf = data["suffix"][j]
            if p_nobox > 0 and data["kind"][j] == 1 and torch.rand(1, generator=gen).item() < p_nobox:
                suf = drop_box_text(suf, tok)
            s, ls = suf + data["answer"][j], len(suf)
            blocks.append(s)
            t = [-100] * len(s)
            t[ls - 1:len(s) - 1] = s[ls:]
            tgts.append(t)
        rows.append((row[data["img"][c[0]]], blocks))
    L = max(len(t) for t in tgts)
    target = torch.tensor([t + [-100] * (L - len(t)) for t in tgts])
    _, _, _, _, pts, region = collate(data, idx, tok, gen, n_points, extra, p_mask)
    return D.normalize(data["images"][imgs]), imgs, rows, target, pts, region


def pretrain_vit(model, head, data, extra, n_side, steps, batch, lr, seed, log, bf16=False, rank=0, world=1):
    """Stage 1: the ViT alone on the dense auxiliary task (what is where),
    with large image batches -- the ViT is cheap next to the decoder, so this
    sees ~10x more images per second than the full model does. With
    world > 1 processes (--ddp), each takes its share of the batch's images
    (share) and the gradients are averaged (sync_grads)."""
    train_imgs = sorted({data["img"][j] for j, s in enumerate(data["split"]) if s == "train"})
    rng = np.random.RandomState(seed)
    params = list(model.vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    order, k, t0, run = rng.permutation(train_imgs), 0, time.time(), []
    for step in range(steps):
        if k + batch > len(order):
            order, k = rng.permutation(train_imgs), 0
        imgs = share(sorted(order[k:k + batch].tolist()), data, rank, world, packed=False)
        k += batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, max(1, steps // 20))
        tg = stacked_aux_targets(extra, imgs, n_side, dense_box_loss)
        with autocast(bf16):
            feats = model.vit(D.normalize(data["images"][imgs]))
            loss, lb = aux_loss(head, feats, tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stats = sync_grads(params, [loss.item(), lb], world)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run.append(stats)
        if (step + 1) % 25 == 0 or step + 1 == steps:
            m = np.mean(run, 0)
            log.append(("vit", step + 1, float(m[0])))
            if rank == 0:
                print("vit step %5d  aux loss %.4f  box L1 %.4f  %.1f images/s  %.0fs" % (
                    step + 1, m[0], m[1], (step + 1) * batch / (time.time() - t0), time.time() - t0), flush=True)
            run = []


def share(batch, data, rank, world, packed):
    """--ddp: this process's part of a batch. Packed batches are chunks (one
    image's questions each) of unequal size (an image's last chunk holds its
    remainder), so they are dealt largest first to the process with the
    fewest tokens so far: each step waits for the slowest process. A batch
    with fewer parts than processes (an epoch's last) goes whole to every
    process: each computes the same gradient, so the average is that one.
    Unpacked batches (samples, or stage 1's images) are dealt round-robin."""
    if world == 1 or len(batch) < world:
        return batch
    if not packed:
        return batch[rank::world]
    cost = [sum(len(data["suffix"][j]) + len(data["answer"][j]) for j in c) for c in batch]
    load, mine = [0] * world, []
    for k in sorted(range(len(batch)), key=lambda k: (-cost[k], k)):
        r = min(range(world), key=lambda r: (load[r], r))
        load[r] += cost[k]
        if r == rank:
            mine.append(k)
    return [batch[k] for k in sorted(mine)]


def sync_grads(params, stats, world):
    """--ddp: average the gradients of params (None counts as zero) and the
    float list stats over the world processes, in one all-reduce; returns
    the averaged stats. Every process then clips and steps the same
    gradients, so the weights stay identical without a broadcast. world 1:
    nothing to do (stats returned as they are)."""
    if world == 1:
        return stats
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params] +
                     [torch.tensor(stats, dtype=torch.float32)])
    dist.all_reduce(flat)
    flat /= world
    o = 0
    for p in params:
        n = p.numel()
        p.grad = flat[o:o + n].view_as(p)
        o += n
    return flat[o:].tolist()


def autocast(on):
    """--bf16: matrix products in bfloat16 (oneDNN), everything else and
    the master weights in f32. On this machine's CPU (avx512_bf16) a 256x704
    linear layer's forward + backward runs 4.8x faster than in f32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(on))


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/loupe-train")
    ap.add_argument("--synth-seed", type=int, default=1)
    ap.add_argument("--n-images", type=int, default=16000,
                    help="scenes of `loupe synth --seed SYNTH_SEED` (twelfth session: 16000; 8000 before; a WORK that "
                         "already holds synth/ keeps its scenes)")
    ap.add_argument("--vocab-images", type=int, default=8000,
                    help="build the vocabulary from the first N scenes (8000: the shipped vocabulary)")
    ap.add_argument("--out", default=None, help="checkpoint path (default WORK/ckpt.pt)")
    ap.add_argument("--steps", type=int, default=4800,
                    help="stage-2 steps (the tenth session's recipe; ninth: 3600 + a 600-step second cycle)")
    ap.add_argument("--batch-img", type=int, default=8, help="images per batch")
    ap.add_argument("--per-img", type=int, default=8, help="questions per image in a batch")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads. 1 for two runs side by side (with OPENBLAS_NUM_THREADS=1); a run alone on two "
                         "cores is faster with 2 (thirteenth session, bf16: stage 1 158 vs ~100 images/s, stage 2 "
                         "125 vs 101 questions/s; the eighth session's f32 code was slower with 2). The shipped model: "
                         "stages 1 and 2 with 1, the tail with 2 (the count changes float rounding)")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--config", default=None, help="JSON overrides of model.DEFAULT_CONFIG")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the dense ViT auxiliary loss (0: off)")
    ap.add_argument("--coord", type=float, default=1.0, help="weight of the soft coordinate loss (0: off)")
    ap.add_argument("--sigma", type=float, default=8.0, help="soft coordinate target width, grid steps")
    ap.add_argument("--vit-steps", type=int, default=3000,
                    help="stage 1: ViT-only auxiliary pre-training steps (tenth session; 1500 before)")
    ap.add_argument("--vit-batch", type=int, default=64)
    ap.add_argument("--vit-lr", type=float, default=2e-3)
    ap.add_argument("--att", type=float, default=0.5, help="weight of the attention supervision (0: off)")
    ap.add_argument("--vit-lr-scale", type=float, default=0.3, help="ViT learning rate relative to --lr in stage 2")
    ap.add_argument("--packed", type=int, default=1, help="pack each image's questions in one row (1) or not (0)")
    ap.add_argument("--dense-box", type=int, default=1,
                    help="box targets on every patch an object covers, attention supervised over them (1), or the centre patch only (0)")
    ap.add_argument("--claim-centre", type=int, default=1,
                    help="an object smaller than its centre patch's owner claims that patch (1; the shipped sixth-session model: 0)")
    ap.add_argument("--box-param", choices=("rel", "abs"), default="rel",
                    help="auxiliary box targets relative to each patch (rel, + GIoU) or absolute (abs: the first recipes)")
    ap.add_argument("--region-aux", type=float, default=0.0,
                    help="weight of the region sampler's auxiliary category/colour loss (region_aux_loss; 0: off)")
    ap.add_argument("--region-rms-cap", type=float, default=0.0,
                    help="with --region-aux: penalise <region_fea> embeddings whose RMS per dimension exceeds this (0: off)")
    ap.add_argument("--p-nobox", type=float, default=0.0,
                    help="share of referring questions trained without their box text (only <region_fea> says where)")
    ap.add_argument("--region-per-img", type=int, default=0,
                    help="with --region-aux: at most this many objects per image through the head (0: all)")
    ap.add_argument("--region-detach", type=int, default=0,
                    help="with --region-aux: the head's gradients stop at the ViT features (1) or reach the ViT (0)")
    ap.add_argument("--att-refer", type=int, default=0,
                    help="attention supervision on referring answers too (1), not only grounding (0)")
    ap.add_argument("--colour-weight", type=float, default=0.0,
                    help="extra weight on the colour token of referring answers (0: off)")
    ap.add_argument("--embd-aux", type=float, default=0.0,
                    help="weight of the linear category/colour heads on the image tokens the decoder reads "
                         "(EmbdAux; 0: off)")
    ap.add_argument("--embd-aux-box", type=int, default=0,
                    help="--embd-aux heads also regress each token's object box (1) or not (0)")
    ap.add_argument("--init", default=None,
                    help="start stage 2 from this checkpoint's model weights (no stage 1; fresh optimizer and "
                         "auxiliary head): fine-tuning")
    ap.add_argument("--bf16", type=int, default=1,
                    help="1: matrix products in bfloat16 under torch.autocast (weights, norms, losses stay f32)")
    ap.add_argument("--p-mask", type=float, default=0.4, help="share of referring samples given as mask points")
    ap.add_argument("--kind-weights", default="",
                    help="sampling weight per question kind, e.g. 'ordinal=1.8,size=1.6,relpos=0.6' (kinds: category, "
                         "color, abspos, relpos, size, ordinal, refer; unnamed: 1; default: all 1, the shipped recipe)")
    ap.add_argument("--ddp", type=int, default=1,
                    help="processes training one model together (data parallel: each takes 1/N of every batch, "
                         "gradients averaged over gloo); 2 with --threads 1 uses two cores better than one process "
                         "with --threads 2 (fourteenth session). Changes the float rounding, like --threads")
    a = ap.parse_args()
    if a.ddp > 1:
        with socket.socket() as sk:   # a free port for the process group
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        mp.spawn(train_process, args=(a, port), nprocs=a.ddp)
    else:
        train_process(0, a, None)


def train_process(rank, a, port):
    """One training process (rank of a.ddp; port: the process group's, None alone)."""
    world = a.ddp
    if world > 1:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world)
    say = print if rank == 0 else (lambda *x, **k: None)
    global dense_box_loss, n_side_loss, claim_centre
    dense_box_loss = bool(a.dense_box)
    claim_centre = bool(a.claim_centre)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(DEFAULT_CONFIG)
    if a.config:
        cfg.update(json.loads(a.config))
    out = a.out or os.path.join(a.work, "ckpt.pt")
    t0 = time.time()
    if rank > 0:          # rank 0 makes the caches (synth, tokenizer, tensors) first
        dist.barrier()
    tok, data = prepare(a.work, a.synth_seed, a.n_images, cfg["image_size"], a.vocab_images)
    extra = D.build_extra(os.path.join(a.work, "synth"), data, os.path.join(a.work, "extra.pt"))
    if world > 1 and rank == 0:
        dist.barrier()
    cfg["n_vocab"] = len(tok)
    if a.embd_aux > 0 and not a.packed:
        sys.exit("--embd-aux needs --packed 1 (it reads the image rows of the packed forward)")
    train_idx = [j for j, s in enumerate(data["split"]) if s == "train"]
    weight = None
    if a.kind_weights:
        try:
            weight, shares = D.kind_weights(os.path.join(a.work, "synth", "annotations.json"),
                                            a.kind_weights, len(data["img"]), train_idx)
        except ValueError as e:
            sys.exit("--kind-weights: %s" % e)
        say("kind shares per epoch: " + ", ".join("%s %.1f%%" % (k, 100 * v) for k, v in shares), flush=True)
    say("data: %d images, %d samples (%d train), vocab %d, prep %.1fs" %
          (len(data["sizes"]), len(data["img"]), len(train_idx), len(tok), time.time() - t0), flush=True)
    model = Model(cfg)
    model.region_id = tok.region
    num_ids = number_ids(tok)
    value_of = torch.full((len(tok),), -1, dtype=torch.long)
    value_of[num_ids] = torch.arange(1000)
    init_number_rows(model, num_ids)
    head = AuxHead(cfg["v_embd"], D.N_CAT, len(extra["colours"]), 8 if a.box_param == "rel" else 4)
    n_side = cfg["image_size"] // cfg["patch_size"]
    n_side_loss = n_side
    att_layer = cfg["n_layer"] - 1
    model.blocks[att_layer].keep_att = a.att > 0
    n_par = sum(p.numel() for p in model.parameters())
    say("model: %.2fM parameters; config %s" % (n_par / 1e6, json.dumps(cfg)), flush=True)
    params = list(model.named_parameters()) + [("aux." + n, p) for n, p in head.named_parameters()]
    is_vit = lambda n: n.startswith("vit.")  # noqa: E731
    groups = []
    for vit in (False, True):
        for dec in (True, False):
            ps = [p for n, p in params if is_vit(n) == vit and (p.dim() >= 2) == dec]
            groups.append({"params": ps, "weight_decay": a.wd if dec else 0.0,
                           "scale": a.vit_lr_scale if vit else 1.0})
    # the gradient-clipping groups: the ViT + auxiliary head, the region
    # sampler, and the rest (projector + decoder). The sampler gets its own
    # when the region head trains it, so that head's gradients cannot shrink
    # the decoder's steps (as one global norm once let the auxiliary loss do).
    def clip_group(n):   # 0 ViT + aux head, 1 the rest, 2 the sampler
        if is_vit(n) or n.startswith("aux."):
            return 0
        return 2 if a.region_aux > 0 and n.startswith("region.") else 1
    clip_vit, clip_rest, clip_region = ([p for n, p in params if clip_group(n) == g] for g in range(3))
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95))
    # the region head has its own optimizer, so a checkpoint made without it resumes unchanged
    # (a LayerNorm first, so the head reads the embedding's direction; its scale is then free to grow:
    # --region-rms-cap)
    rhead = torch.nn.Sequential(torch.nn.LayerNorm(cfg["n_embd"], elementwise_affine=False),
                                torch.nn.Linear(cfg["n_embd"], D.N_CAT + len(extra["colours"])))
    ropt = torch.optim.AdamW(rhead.parameters(), lr=a.lr, betas=(0.9, 0.95))
    # --embd-aux: its own optimizer too (a checkpoint made without it resumes unchanged)
    ehead = EmbdAux(cfg["n_embd"], D.N_CAT, len(extra["colours"]), box=bool(a.embd_aux_box))
    eopt = torch.optim.AdamW(ehead.parameters(), lr=a.lr, betas=(0.9, 0.95))
    model.blocks[att_layer].keep_in = a.embd_aux > 0
    sync_params = [p for _, p in params] + (list(rhead.parameters()) if a.region_aux > 0 else []) + \
        (list(ehead.parameters()) if a.embd_aux > 0 else [])
    step, log = 0, []
    if a.resume and os.path.exists(out):
        ck = torch.load(out)
        model.load_state_dict(ck["model"])
        head.load_state_dict(ck["aux"])
        opt.load_state_dict(ck["opt"])
        step, log = ck["step"], ck["log"]
        if "raux" in ck:
            rhead.load_state_dict(ck["raux"])
            ropt.load_state_dict(ck["ropt"])
        if "eaux" in ck:
            ehead.load_state_dict(ck["eaux"])
            eopt.load_state_dict(ck["eopt"])
    elif a.init:
        model.load_state_dict(torch.load(a.init)["model"])
        say("stage 2 starts from the weights of %s" % a.init, flush=True)
    if step == 0 and a.vit_steps > 0 and not a.init:
        vit_ck = out + ".vit"
        if os.path.exists(vit_ck):     # stage 1 done before: reuse it
            ck = torch.load(vit_ck)
            model.vit.load_state_dict(ck["vit"])
            head.load_state_dict(ck["aux"])
            say("stage 1: loaded %s" % vit_ck, flush=True)
        else:
            pretrain_vit(model, head, data, extra, n_side, a.vit_steps, a.vit_batch, a.vit_lr, a.seed, log, a.bf16,
                         rank, world)
            if rank == 0:
                torch.save({"vit": model.vit.state_dict(), "aux": head.state_dict(), "config": cfg, "args": vars(a)},
                           vit_ck)
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    gen = torch.Generator().manual_seed(a.seed)
    epoch, batches = 0, []
    # fixed order: epoch e uses grouped_batches(seed * 1000 + e); resuming replays the order
    def epoch_batches(e):
        return D.grouped_batches(data, train_idx, a.per_img, a.batch_img, a.seed * 1000 + e, a.packed, weight)
    consumed = 0
    while consumed <= step:
        batches = epoch_batches(epoch)
        if consumed + len(batches) > step:
            break
        consumed += len(batches)
        epoch += 1
    bi = step - consumed
    gen.manual_seed(a.seed * 7919 + step + 1000003 * rank)   # region points: each process its own
    model.train()
    t_start, seen, run, run_gn = time.time(), 0, [], []   # run: the logged stats of each step since the last log
    while step < a.steps:
        if bi >= len(batches):
            epoch += 1
            batches = epoch_batches(epoch)
            bi = 0
        idx = share(batches[bi], data, rank, world, a.packed)   # --ddp: this process's part
        n_batch = sum(len(c) for c in batches[bi]) if a.packed else len(batches[bi])
        bi += 1
        for g in opt.param_groups + ropt.param_groups + eopt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup) * g.get("scale", 1.0)
        if a.packed:
            pixels, imgs, rows, target, pts, region = collate_packed(data, idx, tok, gen, cfg["region_points"], extra,
                                                                     a.p_mask, a.p_nobox)
            with autocast(a.bf16):
                img, feats = model.encode_image(pixels)
                logits = model.forward_packed(prefix, img, feats, rows, pts, region)
            idx = [j for c in idx for j in c]
            cover = None
            if a.dense_box:
                cover = {i: aux_targets(extra["objs"][i], n_side, True)[3] for i in set(data["img"][j] for j in idx)}
            att_l = attention_loss(model, data, idx, target, n_side, att_layer, 0, cover,
                                   (0, 1) if a.att_refer else (0,)) if a.att > 0 else None
        else:
            pixels, img_of, suffix, target, pts, region = collate(data, idx, tok, gen, cfg["region_points"], extra,
                                                                  a.p_mask)
            img, feats = model.encode_image(pixels)
            logits = model(prefix, img, feats, img_of, suffix, None, pts, region)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        total = loss
        if a.colour_weight > 0:
            # referring answers are "a <colour> <category>": answer token 1
            # is the colour; its cross-entropy again, weighted
            first = (target >= 0).float().argmax(1)                       # (Q,) position of answer token 0
            rq = region.nonzero().squeeze(1)
            if len(rq):
                lc = F.cross_entropy(logits[rq, first[rq] + 1], target[rq, first[rq] + 1])
                total = total + a.colour_weight * lc
        stats = [loss.item(), 0.0, 0.0, 0.0]   # answer loss, aux box L1, attention, region (logged)
        if a.packed and a.att > 0:
            total = total + a.att * att_l
            stats[2] = att_l.item()
        if a.coord > 0:
            total = total + a.coord * coord_loss(logits, target, num_ids, value_of, a.sigma)
        if a.aux > 0 or a.embd_aux > 0:
            if not a.packed:     # collate_packed gave the images in feats' row order already
                imgs = sorted(set(data["img"][j] for j in idx))
            tg = stacked_aux_targets(extra, imgs, n_side, a.dense_box)
        if a.aux > 0:
            with autocast(a.bf16):
                la, lb = aux_loss(head, feats, tg)
            total = total + a.aux * la
            stats[1] = lb
        if a.embd_aux > 0:
            N = img.shape[1]
            # packed rows: one per chunk of questions, and an image can fill two rows
            row_img = torch.tensor([i for i, _ in rows])
            total = total + a.embd_aux * ehead([img, model.blocks[att_layer].x_in[:, :N]],
                                               [tg, tuple(t[row_img] for t in tg)])
        if a.region_aux > 0 and a.packed:
            lr_ = region_aux_loss(model, rhead, feats, imgs, extra, cfg["region_points"], gen,  # feats row r: imgs[r]
                                  a.region_rms_cap, a.region_per_img, bool(a.region_detach))
            total = total + a.region_aux * lr_
            stats[3] = lr_.item()
        opt.zero_grad(set_to_none=True)
        ropt.zero_grad(set_to_none=True)
        eopt.zero_grad(set_to_none=True)
        total.backward()
        stats = sync_grads(sync_params, stats, world)
        # Clip the ViT (+ auxiliary head) and the rest apart: one global norm
        # let the auxiliary loss's large gradients (norm ~7 against ~1 for
        # the answer tokens) shrink every decoder step ~7x.
        run_gn.append((torch.nn.utils.clip_grad_norm_(clip_vit, 1.0).item(),
                       torch.nn.utils.clip_grad_norm_(clip_rest, 1.0).item(),
                       torch.nn.utils.clip_grad_norm_(clip_region, 1.0).item() if clip_region else 0.0))
        opt.step()
        if a.region_aux > 0:
            ropt.step()
        if a.embd_aux > 0:
            torch.nn.utils.clip_grad_norm_(list(ehead.parameters()), 1.0)
            eopt.step()
        step += 1
        seen += n_batch
        run.append(stats)
        if step % 25 == 0 or step == a.steps:
            el = time.time() - t_start
            m = np.mean(run, 0)     # a loss that is off stays 0.0
            log.append((step, float(m[0])))
            gn = np.mean(run_gn, axis=0)   # gradient norms before clipping (1.0): ViT + aux head, the rest, sampler
            say("step %5d  loss %.4f  aux box L1 %.4f  attention %.3f  region %.3f  grad norm %.2f / %.2f / %.2f  lr %.2e  "
                  "%.1f samples/s  %.0fs" % (
                      step, m[0], m[1], m[2], m[3], gn[0], gn[1], gn[2], opt.param_groups[0]["lr"],
                      seen / el, el),
                  flush=True)
            run, run_gn = [], []
        if rank == 0 and (step % a.save_every == 0 or step == a.steps):
            torch.save({"model": model.state_dict(), "aux": head.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
                        "raux": rhead.state_dict(), "ropt": ropt.state_dict(),
                        "eaux": ehead.state_dict(), "eopt": eopt.state_dict(),
                        "config": cfg, "tokenizer": os.path.join(a.work, "tokenizer.json"), "args": vars(a)}, out)
    say("done: %d steps in %.0fs" % (step, time.time() - t_start), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
