"""The tiny Ferret-style model, written so that every op is what loupe runs
for the exported GGUF pair in its default (PyTorch-semantics) mode,
LP_CLIP_QUIRKS_NONE:

Vision (CLIP ViT, llama.cpp llava conventions, vision/clip.h):
  patches: Conv2d(3, D, P, stride P, no bias) -> N = (S/P)^2 tokens, row-major
  class token FIRST, + position embeddings rows 0..N, v.pre_ln LayerNorm
  L blocks: x += out(attn(ln1(x))); x += fc2(quick_gelu(fc1(ln2(x))))
  features = output of the LAST block (no post_ln), class token dropped.
  Exported as clip.vision.block_count = L with no clip.vision.feature_layer:
  loupe (QUIRKS_NONE) runs all L blocks. (llama.cpp would run L - 1, its
  DROP_LAYER defect — the legacy converter already dropped the unused last
  HF layer, so our trained L blocks are "num_hidden_layers - 1" in HF terms.)
Projector (llava "mlp"): mm.0 Linear(D, E), exact erf GELU, mm.2 Linear(E, E).
Region sampler: tools/reference/region_sampler.py's RegionSampler over the
  (n_side, n_side, D) patch features, output E; its embedding replaces the
  <region_fea> token's embedding.
Decoder (llama): token embeddings, L blocks of RMSNorm -> attention with
  RoPE NORMAL mode (adjacent pairs (2i, 2i+1), theta = pos * base^(-2i/hd),
  what llama.cpp/loupe do for "llama": we export our Wq/Wk as they are, no
  HF permutation) -> residual, RMSNorm -> SwiGLU -> residual; output_norm,
  untied output head.
"""

import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from region_sampler import RegionSampler  # noqa: E402

DEFAULT_CONFIG = dict(
    image_size=160, patch_size=16, v_embd=192, v_ff=768, v_head=3, v_layer=4, v_eps=1e-5,
    n_embd=256, n_layer=4, n_head=4, n_head_kv=4, n_ff=704, rms_eps=1e-5, rope_base=10000.0, n_ctx=512,
    region_points=128, region_sub=(32, 8), region_nb=(8, 8),
    v_cls=False,
    n_vocab=0,
)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class VitBlock(nn.Module):
    def __init__(self, D, F_, H, eps):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(D, eps=eps)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln2 = nn.LayerNorm(D, eps=eps)
        self.fc1 = nn.Linear(D, F_)
        self.fc2 = nn.Linear(F_, D)

    def forward(self, x):
        B, T, D = x.shape
        a = self.ln1(x)
        sh = lambda t: t.view(B, T, self.H, D // self.H).transpose(1, 2)  # noqa: E731
        q, k, v = sh(self.q(a)), sh(self.k(a)), sh(self.v(a))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.H), -1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(quick_gelu(self.fc1(self.ln2(x))))


class Vit(nn.Module):
    def __init__(self, c):
        super().__init__()
        S, P, D = c["image_size"], c["patch_size"], c["v_embd"]
        self.n_side = S // P
        self.patch = nn.Conv2d(3, D, P, stride=P, bias=False)
        # No class token by default: the llava features drop it anyway, and
        # llama.cpp's llava graph mishandles one (it appends it after the
        # patches, shifting every patch's position embedding by one row and
        # handing the projector the class token instead of patch 0). Without
        # it both engines compute exactly this model.
        self.use_cls = c.get("v_cls", True)
        self.cls = nn.Parameter(torch.randn(D) * 0.02) if self.use_cls else None
        self.pos = nn.Parameter(torch.randn(self.n_side ** 2 + (1 if self.use_cls else 0), D) * 0.02)
        self.pre_ln = nn.LayerNorm(D, eps=c["v_eps"])
        self.blocks = nn.ModuleList(VitBlock(D, c["v_ff"], c["v_head"], c["v_eps"]) for _ in range(c["v_layer"]))

    def forward(self, pixels):
        x = self.patch(pixels).flatten(2).transpose(1, 2)          # (B, N, D) row-major patches
        if self.use_cls:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1)
        x = self.pre_ln(x + self.pos)
        for b in self.blocks:
            x = b(x)
        return x[:, 1:] if self.use_cls else x                      # (B, N, D)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, pos, base):
    """x (B, H, T, hd); pos (T,) for every row or (B, T) per row; NORMAL
    mode: pairs (2i, 2i+1)."""
    hd = x.shape[-1]
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[..., None] * inv                          # (T, hd/2) or (B, T, hd/2)
    if ang.dim() == 3:
        ang = ang[:, None]                                        # (B, 1, T, hd/2): every head
    c, s = torch.cos(ang).float(), torch.sin(ang).float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)


class LlamaBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        E, self.H, self.Hkv = c["n_embd"], c["n_head"], c["n_head_kv"]
        self.hd = E // self.H
        self.base = c["rope_base"]
        self.attn_norm = RMSNorm(E, c["rms_eps"])
        self.wq = nn.Linear(E, E, bias=False)
        self.wk = nn.Linear(E, self.hd * self.Hkv, bias=False)
        self.wv = nn.Linear(E, self.hd * self.Hkv, bias=False)
        self.wo = nn.Linear(E, E, bias=False)
        self.ffn_norm = RMSNorm(E, c["rms_eps"])
        self.gate = nn.Linear(E, c["n_ff"], bias=False)
        self.up = nn.Linear(E, c["n_ff"], bias=False)
        self.down = nn.Linear(c["n_ff"], E, bias=False)

    def qkv(self, x, pos):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        if self.keep_in:     # training: train.py --embd-aux reads the normed input (what keys are made of);
            self.x_in = h    # forward calls this for the prefix first, then for the rest: the rest's stays
        q = self.wq(h).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.wk(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        v = self.wv(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        q, k = rope(q, pos, self.base), rope(k, pos, self.base)
        if self.Hkv != self.H:
            k = k.repeat_interleave(self.H // self.Hkv, 1)
            v = v.repeat_interleave(self.H // self.Hkv, 1)
        return q, k, v

    def finish(self, x, att):
        B, _, T, _ = att.shape
        x = x + self.wo(att.transpose(1, 2).reshape(B, T, -1))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def forward(self, xp, x, mask, pos=None):
        """xp (1, Tp, E): the shared prefix (same for every row); x (B, T, E)
        the per-sample rest at positions Tp.. (or at pos, (T,) or (B, T)); mask
        additive, (B or 1, 1, T, Tp + T), built by the caller."""
        Tp = xp.shape[1]
        B, T, _ = x.shape
        qp, kp, vp = self.qkv(xp, torch.arange(Tp))
        q, k, v = self.qkv(x, torch.arange(Tp, Tp + T) if pos is None else pos)
        sc = 1.0 / math.sqrt(self.hd)
        cm = torch.full((Tp, Tp), float("-inf")).triu(1)
        ap = torch.softmax(qp @ kp.transpose(-1, -2) * sc + cm, -1) @ vp
        kk = torch.cat([kp.expand(B, -1, -1, -1), k], 2)
        vv = torch.cat([vp.expand(B, -1, -1, -1), v], 2)
        probs = torch.softmax(q @ kk.transpose(-1, -2) * sc + mask, -1)   # (B, H, T, Tp + T)
        if self.keep_att:    # training: attention supervision reads these
            self.att = probs
        return self.finish(xp, ap), self.finish(x, probs @ vv)

    keep_att = False
    keep_in = False


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = dict(c)
        E = c["n_embd"]
        self.vit = Vit(c)
        self.mm0 = nn.Linear(c["v_embd"], E)
        self.mm2 = nn.Linear(E, E)
        self.region = RegionSampler(c["v_embd"], E, num_points=c["region_points"], sub_points=tuple(c["region_sub"]),
                                    neighbors=tuple(c["region_nb"]), pooler="max")
        self.tok_embd = nn.Embedding(c["n_vocab"], E)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c["n_layer"]))
        self.norm = RMSNorm(E, c["rms_eps"])
        self.output = nn.Linear(E, c["n_vocab"], bias=False)
        self.apply(self._init)
        for b in self.blocks:   # scaled residual projections (GPT-2)
            for lin in (b.wo, b.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c["n_layer"]))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def encode_image(self, pixels):
        """(B, 3, S, S) -> image embeddings (B, N, E), patch features (B, N, D)."""
        f = self.vit(pixels)
        return self.mm2(F.gelu(self.mm0(f))), f

    def forward(self, prefix_ids, img_embd, feats, img_of, suffix, suf_len, points, region_mask):
        """prefix_ids (Tp,) shared prefix; img_embd (Bi, N, E), feats (Bi, N, D);
        img_of (B,) image row of each sample; suffix (B, T) ids (suffix +
        answer, right-padded), suf_len (B,); points (B, P, 2) region points,
        region_mask (B,) which samples carry a <region_fea> (its embedding
        replaces that token's). Returns logits (B, T, V) for the suffix
        positions (the image rows come first in the rest sequence)."""
        xp = self.tok_embd(prefix_ids)[None]
        B, T = suffix.shape
        N = img_embd.shape[1]
        te = self.tok_embd(suffix)
        if region_mask.any():
            r = region_mask.nonzero().squeeze(1)
            remb = self.region(feats[img_of[r]], points[r])         # (R, E)
            pos = (suffix[r] == self.region_id).float().argmax(1)    # one marker per sample
            te = te.clone()
            te[r, pos] = remb
        x = torch.cat([img_embd[img_of], te], 1)                    # (B, N + T, E)
        Tt = N + T
        Tp = xp.shape[1]
        causal = torch.full((Tt, Tt), float("-inf")).triu(1)
        mask = torch.cat([torch.zeros(Tt, Tp), causal], 1)[None, None]  # (1, 1, Tt, Tp + Tt)
        for b in self.blocks:
            xp, x = b(xp, x, mask)
        return self.output(self.norm(x[:, N:]))

    region_id = -1

    def forward_packed(self, prefix_ids, img_embd, feats, rows, points, region_mask):
        """Training only: several questions about one image in one row,
        computed exactly as if each were its own sample. A row is
        [image (N)] [q1 + a1] [q2 + a2] ...; every question block sits at
        the positions right after the image (RoPE positions restart) and
        attends to the prefix, the image and itself causally -- never to the
        other blocks. So the image's keys/values are computed once for K
        questions (the decoder's cost per question drops ~3x) and the
        gradients are those of K separate samples.

        rows: list of (image row, [token id lists]); points (Q, P, 2) and
        region_mask (Q,) per question in row-major order.
        Returns logits (Q, Lmax, V) per question block (right-padded)."""
        E = self.tok_embd.weight.shape[1]
        N = img_embd.shape[1]
        xp = self.tok_embd(prefix_ids)[None]
        Tp = xp.shape[1]
        lens = [sum(len(b) for b in blocks) for _, blocks in rows]
        T = N + max(lens)
        R = len(rows)
        flat = [b for _, blocks in rows for b in blocks]
        ids = torch.zeros(R, T - N, dtype=torch.long)
        pos = torch.zeros(R, T, dtype=torch.long)
        mask = torch.full((R, T, Tp + T), float("-inf"))
        mask[:, :, :Tp] = 0
        img_causal = torch.full((N, N), float("-inf")).triu(1)
        mask[:, :N, Tp:Tp + N] = img_causal
        mask[:, N:, Tp:Tp + N] = 0
        pos[:, :N] = torch.arange(N)
        where = []                                                    # (row, start, len) per question
        for r, (_, blocks) in enumerate(rows):
            o = N
            for b in blocks:
                L = len(b)
                ids[r, o - N:o - N + L] = torch.tensor(b)
                pos[r, o:o + L] = torch.arange(N, N + L)
                mask[r, o:o + L, Tp + o:Tp + o + L] = torch.full((L, L), float("-inf")).triu(1)
                where.append((r, o, L))
                o += L
            for t in range(o, T):                                     # padding attends to itself
                mask[r, t, Tp + t] = 0
        te = self.tok_embd(ids)
        if region_mask.any():
            ri = region_mask.nonzero().squeeze(1).tolist()
            qimg = torch.tensor([rows[where[q][0]][0] for q in ri])
            remb = self.region(feats[qimg], points[ri])                # (R', E)
            # one index_put, not one slice assignment per question: each slice's
            # backward would build and add a zero tensor the size of te
            at_r = torch.tensor([where[q][0] for q in ri])
            at_t = torch.tensor([where[q][1] - N + flat[q].index(self.region_id) for q in ri])
            te = te.index_put((at_r, at_t), remb.to(te.dtype))
        x = torch.cat([img_embd[torch.tensor([i for i, _ in rows])], te], 1)   # (R, T, E)
        for b in self.blocks:   # positions differ by row: a per-row RoPE table
            xp, x = b(xp, x, mask[:, None], pos + Tp)
        h = self.norm(x)
        # gather each question block, right-padded with a zero row, in one
        # indexing op (per-block slices cost a full-size zero + add each in backward)
        Lmax = max(L for _, _, L in where)
        gather = torch.full((len(where), Lmax), R * T, dtype=torch.long)  # (Q, Lmax) rows of h_flat
        for q, (r, o, L) in enumerate(where):
            gather[q, :L] = torch.arange(r * T + o, r * T + o + L)
        out = torch.cat([h.reshape(R * T, E), h.new_zeros(1, E)])[gather]   # (Q, Lmax, E)
        self.where, self.Tp = where, Tp   # for attention supervision (train.py)
        with torch.autocast("cpu", enabled=False):   # logits in f32 under train.py --bf16: neighbouring
            return self.output(out.float())          # coordinate tokens differ by small logit steps



def load(path):
    """(Model in eval mode, the checkpoint dict) from a train.py checkpoint;
    a stage-1 checkpoint (train.py's OUT.vit) fills the ViT only."""
    ck = torch.load(path, map_location="cpu")
    m = Model(ck["config"])
    if "model" in ck:
        m.load_state_dict(ck["model"])
    else:
        m.vit.load_state_dict(ck["vit"])
    m.eval()
    return m, ck


@torch.no_grad()
def greedy(model, prefix_ids, pixels, suffix_ids, points=None, n_max=24, eos=2):
    """Greedy answer for one sample (recomputes the whole sequence per token;
    answers are short). pixels (3, S, S); suffix_ids list; points (P, 2) or
    None. Returns (ids, first-step logits)."""
    img, feats = model.encode_image(pixels[None])
    ids, first = [], None
    has_region = points is not None
    for _ in range(n_max):
        s = torch.tensor([suffix_ids + ids])
        lg = model(prefix_ids, img, feats, torch.zeros(1, dtype=torch.long), s, None,
                   points[None] if has_region else None, torch.tensor([has_region]))[0, -1]
        if first is None:
            first = lg.clone()
        t = int(lg.argmax())
        ids.append(t)
        if t == eos:
            break
    return ids, first
