#!/usr/bin/python3
"""PyTorch reference for loupe's LLaVA parity fixtures (tests/test_parity.c).

Reads a decoder GGUF + mmproj GGUF pair in llama.cpp's conventions with our
own numpy reader (gguf_reader.py), runs

    pixels -> CLIP ViT -> mlp projector -> splice into the token sequence
           -> llama decoder -> last-position logits -> greedy continuation

in float64 (weights dequantized to f32 by the reader, then widened), and
writes every intermediate tensor as F32 (token ids as I32) into one GGUF.

Two semantics are computed and both are dumped:

  (no prefix)  "llamacpp": what llama.cpp's mtmd computes for projector type
               "mlp" (tools/mtmd/models/llava.cpp): the class token is
               concatenated AFTER the patches and position rows 0..N are
               added in that token order; block_count - 1 ViT blocks run;
               the projector gets tokens 1..N of that order (patch 0
               dropped, class token last); the projector GELU is the tanh
               approximation.
  "hf."        the PyTorch/HF LLaVA semantics: class token first; all
               block_count blocks run (the converter already dropped the
               last CLIP layer, so this is hidden_states[-2]); the projector
               gets the N patch tokens; exact erf GELU.
Both use CLIP's quick GELU inside the ViT (clip.use_gelu is false), and
neither reproduces ggml-cpu's f16 lookup-table activations or f16/q8
rounding of matmul inputs (loupe's numeric quirks).

Dumped names (row-major numpy shapes; GGUF ne is the reverse):
  pixels            (3, S, S)       normalized input, f32 arithmetic as mtmd
  v.patch_embd      (n_pos, D)      patches (+class) + position embeddings
  v.pre_ln          (n_pos, D)
  v.blk.%d          (n_pos, D)      each block that runs
  v.features        (N, D)          projector input
  mm.hidden         (N, E)          after mm.0 and GELU
  mm.out            (N, E)          image embeddings
  embd_in           (T, E)          decoder input: prefix | image | suffix
  blk.%d.attn_out, blk.%d.ffn_inp, blk.%d.ffn_out, blk.%d   (T, E)
  output_norm       (1, E)          last position
  logits            (n_vocab,)      last position
  greedy.tokens     (n_gen,) i32    argmax continuation, no stop at EOS
  greedy.logits     (n_gen, n_vocab) logits that chose each token
  prompt.prefix, prompt.suffix (i32) token ids around the image

Usage (Debian's python3 with python3-torch and python3-numpy):
  /usr/bin/python3 tools/reference/llava_reference.py MODEL.gguf MMPROJ.gguf \
      IMAGE.rgb OUT.gguf [--prefix 1,259,260] [--suffix ...] [--n-gen 32]
"""

import argparse
import hashlib
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFReader, GGUFWriter  # noqa: E402

DT = torch.float64

# "USER: <image>\nWhat is in the image? ASSISTANT:" in the synthetic vocabulary
# of tools/gen_model.c: <s> ▁USER : | image | <0x0A> ▁What ▁is ▁in ▁the ▁image ? ▁ASS IST ANT :
DEFAULT_PREFIX = "1,259,260"
DEFAULT_SUFFIX = "13,261,262,263,264,265,266,267,268,269,260"


def T(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


class Weights:
    def __init__(self, reader):
        self.r = reader
        self.cache = {}

    def __call__(self, name):
        if name not in self.cache:
            self.cache[name] = T(self.r.get(name))
        return self.cache[name]

    def opt(self, name):
        return self(name) if self.r.has(name) else None


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


ACT_F16 = False  # --ggml-f16: emulate ggml-cpu's f16 lookup-table activations and f16 im2col


def f16(x):
    return x.to(torch.float16).to(DT)


def quick_gelu(x):
    if ACT_F16:  # ggml_vec_gelu_quick_f32: table indexed by f16(x), stored as f16
        x = f16(x.to(torch.float32).to(DT))
        return f16(x * torch.sigmoid(1.702 * x))
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x):
    if ACT_F16:  # ggml_vec_gelu_f32: |x| >= 10 bypasses the f16 table
        xh = f16(x.to(torch.float32).to(DT))
        y = f16(0.5 * xh * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (xh + 0.044715 * xh ** 3))))
        y = torch.where(x <= -10.0, torch.zeros_like(x), y)
        return torch.where(x >= 10.0, x, y)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


# ---------------------------------------------------------------- vision

def preprocess(rgb, S, mean, std):
    """u8 (S, S, 3) -> (3, S, S) float32, as mtmd: (u/255 - mean) / std in f32."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - mean.astype(np.float32)) / std.astype(np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


def vit(mm, kv, pixels, mode, dump):
    S = int(kv["clip.vision.image_size"])
    P = int(kv["clip.vision.patch_size"])
    D = int(kv["clip.vision.embedding_length"])
    H = int(kv["clip.vision.attention.head_count"])
    eps = float(kv["clip.vision.attention.layer_norm_epsilon"])
    n_layer = int(kv["clip.vision.block_count"])
    if kv.get("clip.use_gelu", False) or kv.get("clip.use_silu", False):
        raise SystemExit("this reference implements quick GELU ViTs only")
    hd = D // H
    n_side = S // P
    N = n_side * n_side

    w = mm("v.patch_embd.weight")                       # (D, 3, P, P)
    x = T(pixels)                                       # (3, S, S)
    patches = x.reshape(3, n_side, P, n_side, P).permute(1, 3, 0, 2, 4).reshape(N, 3 * P * P)
    if ACT_F16:  # ggml_conv_2d: im2col in f16, the kernel converted to f16 for the product
        patches, w = f16(patches.to(torch.float32).to(DT)), f16(w)
    emb = patches @ w.reshape(D, 3 * P * P).T           # (N, D), patch order row-major
    b = mm.opt("v.patch_embd.bias")
    if b is not None:
        emb = emb + b
    cls = mm.opt("v.class_embd")
    if cls is not None:
        if mode == "llamacpp":
            emb = torch.cat([emb, cls.reshape(1, D)], 0)  # class token LAST
        else:
            emb = torch.cat([cls.reshape(1, D), emb], 0)  # class token first
    n_pos = emb.shape[0]
    emb = emb + mm("v.position_embd.weight")[:n_pos]
    dump("v.patch_embd", emb)
    h = emb
    if mm.opt("v.pre_ln.weight") is not None:
        h = layer_norm(h, mm("v.pre_ln.weight"), mm.opt("v.pre_ln.bias"), eps)
        dump("v.pre_ln", h)

    n_run = n_layer - 1 if mode == "llamacpp" else n_layer
    for il in range(n_run):
        p = f"v.blk.{il}."
        # the legacy converter stores fc1 as ffn_down, fc2 as ffn_up
        if mm("v.blk.%d.ffn_down.weight" % il).shape[1] == D:
            fc1, fc2 = "ffn_down", "ffn_up"
        else:
            fc1, fc2 = "ffn_up", "ffn_down"
        a = layer_norm(h, mm(p + "ln1.weight"), mm(p + "ln1.bias"), eps)
        q = linear(a, mm(p + "attn_q.weight"), mm.opt(p + "attn_q.bias")).reshape(n_pos, H, hd).transpose(0, 1)
        k = linear(a, mm(p + "attn_k.weight"), mm.opt(p + "attn_k.bias")).reshape(n_pos, H, hd).transpose(0, 1)
        v = linear(a, mm(p + "attn_v.weight"), mm.opt(p + "attn_v.bias")).reshape(n_pos, H, hd).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1) @ v     # (H, n_pos, hd)
        att = att.transpose(0, 1).reshape(n_pos, D)
        h = h + linear(att, mm(p + "attn_out.weight"), mm.opt(p + "attn_out.bias"))
        f = layer_norm(h, mm(p + "ln2.weight"), mm(p + "ln2.bias"), eps)
        f = quick_gelu(linear(f, mm(p + fc1 + ".weight"), mm.opt(p + fc1 + ".bias")))
        h = h + linear(f, mm(p + fc2 + ".weight"), mm.opt(p + fc2 + ".bias"))
        dump(f"v.blk.{il}", h)

    if mode == "llamacpp" and mm.opt("v.post_ln.weight") is not None:
        h = layer_norm(h, mm("v.post_ln.weight"), mm.opt("v.post_ln.bias"), eps)
        dump("v.post_ln", h)
    feats = h[1:N + 1] if cls is not None else h[:N]
    dump("v.features", feats)

    if kv.get("clip.projector_type") != "mlp":
        raise SystemExit("this reference implements projector type mlp only")
    y = linear(feats, mm("mm.0.weight"), mm("mm.0.bias"))
    y = gelu_tanh(y) if mode == "llamacpp" else gelu_erf(y)
    dump("mm.hidden", y)
    y = linear(y, mm("mm.2.weight"), mm("mm.2.bias"))
    dump("mm.out", y)
    return y


# ---------------------------------------------------------------- decoder

class Llama:
    def __init__(self, reader):
        kv = reader.kv
        if kv["general.architecture"] != "llama":
            raise SystemExit("this reference implements general.architecture llama only")
        self.w = Weights(reader)
        self.E = int(kv["llama.embedding_length"])
        self.L = int(kv["llama.block_count"])
        self.H = int(kv["llama.attention.head_count"])
        self.Hkv = int(kv.get("llama.attention.head_count_kv", self.H))
        self.hd = self.E // self.H
        self.eps = float(kv["llama.attention.layer_norm_rms_epsilon"])
        self.base = float(kv.get("llama.rope.freq_base", 10000.0))
        self.n_rot = int(kv.get("llama.rope.dimension_count", self.hd))
        self.tok = self.w("token_embd.weight")
        self.n_vocab = self.tok.shape[0]

    def embed(self, ids):
        return self.tok[torch.tensor(ids, dtype=torch.long)]

    def rope(self, x, pos):
        """x (n, heads, hd); NORMAL mode: pairs (2i, 2i+1), theta = pos * base^(-2i/n_rot)."""
        n_rot = self.n_rot
        i = torch.arange(n_rot // 2, dtype=DT)
        inv = self.base ** (-2.0 * i / n_rot)
        ang = pos.to(DT)[:, None] * inv[None, :]                       # (n, n_rot/2)
        c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
        x = x.clone()
        x0, x1 = x[..., 0:n_rot:2].clone(), x[..., 1:n_rot:2].clone()
        x[..., 0:n_rot:2] = x0 * c - x1 * s
        x[..., 1:n_rot:2] = x0 * s + x1 * c
        return x

    def forward(self, embd, dump):
        w, n = self.w, embd.shape[0]
        pos = torch.arange(n)
        x = embd
        dump("embd_in", x)
        mask = torch.full((n, n), float("-inf"), dtype=DT).triu(1)
        rep = self.H // self.Hkv
        for il in range(self.L):
            p = f"blk.{il}."
            h = rms_norm(x, w(p + "attn_norm.weight"), self.eps)
            q = linear(h, w(p + "attn_q.weight")).reshape(n, self.H, self.hd)
            k = linear(h, w(p + "attn_k.weight")).reshape(n, self.Hkv, self.hd)
            v = linear(h, w(p + "attn_v.weight")).reshape(n, self.Hkv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            k = k.repeat_interleave(rep, dim=1)      # q head j uses kv head j // rep (ggml broadcast)
            v = v.repeat_interleave(rep, dim=1)
            s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.hd) + mask
            a = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v).reshape(n, self.E)
            attn_out = linear(a, w(p + "attn_output.weight"))
            dump(p + "attn_out", attn_out)
            x = x + attn_out
            dump(p + "ffn_inp", x)
            h = rms_norm(x, w(p + "ffn_norm.weight"), self.eps)
            g = linear(h, w(p + "ffn_gate.weight"))
            u = linear(h, w(p + "ffn_up.weight"))
            ffn_out = linear(torch.nn.functional.silu(g) * u, w(p + "ffn_down.weight"))
            dump(p + "ffn_out", ffn_out)
            x = x + ffn_out
            dump(f"blk.{il}", x)
        xn = rms_norm(x[-1:], w("output_norm.weight"), self.eps)
        dump("output_norm", xn)
        out_w = w.opt("output.weight")
        logits = linear(xn, out_w if out_w is not None else self.tok)[0]
        dump("logits", logits)
        return logits


def nodump(name, t):
    pass


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("mmproj")
    ap.add_argument("image", help="S*S*3 raw RGB bytes")
    ap.add_argument("out")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX)
    ap.add_argument("--suffix", default=DEFAULT_SUFFIX)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--ggml-f16", action="store_true",
                    help="diagnostic: emulate ggml-cpu's f16-table GELUs and f16 im2col (not used for the fixtures)")
    args = ap.parse_args()
    global ACT_F16
    ACT_F16 = args.ggml_f16

    torch.set_grad_enabled(False)
    lm_r, mm_r = GGUFReader(args.model), GGUFReader(args.mmproj)
    kv = mm_r.kv
    S = int(kv["clip.vision.image_size"])
    rgb = np.fromfile(args.image, dtype=np.uint8)
    if rgb.size != S * S * 3:
        raise SystemExit(f"{args.image}: expected {S}x{S}x3 bytes")
    rgb = rgb.reshape(S, S, 3)
    pixels = preprocess(rgb, S, np.asarray(kv["clip.vision.image_mean"]), np.asarray(kv["clip.vision.image_std"]))
    prefix = [int(t) for t in args.prefix.split(",") if t]
    suffix = [int(t) for t in args.suffix.split(",") if t]

    wr = GGUFWriter()
    wr.add_str("parity.producer", "tools/reference/llava_reference.py (PyTorch %s, float64)" % torch.__version__)
    wr.add_str("parity.model", os.path.basename(args.model))
    wr.add_str("parity.model.sha256", sha256(args.model))
    wr.add_str("parity.mmproj", os.path.basename(args.mmproj))
    wr.add_str("parity.mmproj.sha256", sha256(args.mmproj))
    wr.add_str("parity.image", os.path.basename(args.image))
    wr.add_u32("parity.n_gen", args.n_gen)
    wr.add_tensor("pixels", pixels)
    wr.add_tensor("prompt.prefix", np.asarray(prefix, dtype=np.int32))
    wr.add_tensor("prompt.suffix", np.asarray(suffix, dtype=np.int32))

    mm = Weights(mm_r)
    lm = Llama(lm_r)
    for mode, pre in (("llamacpp", ""), ("hf", "hf.")):
        def dump(name, t, pre=pre):
            wr.add_tensor(pre + name, t.numpy())

        img = vit(mm, kv, pixels, mode, dump)
        seq = torch.cat([lm.embed(prefix), img, lm.embed(suffix)], 0)
        logits = lm.forward(seq, dump)
        toks, glog, cur, margins = [], [], logits, []
        for step in range(args.n_gen):
            top2 = torch.topk(cur, 2).values
            margins.append(float(top2[0] - top2[1]))
            t = int(torch.argmax(cur))
            toks.append(t)
            glog.append(cur.numpy())
            if step + 1 == args.n_gen:
                break
            seq = torch.cat([seq, lm.embed([t])], 0)
            cur = lm.forward(seq, nodump)
        wr.add_tensor(pre + "greedy.tokens", np.asarray(toks, dtype=np.int32))
        wr.add_tensor(pre + "greedy.logits", np.stack(glog))
        print(f"{mode}: greedy {toks}", file=sys.stderr)
        print(f"{mode}: smallest top-1/top-2 logit margin along the greedy path {min(margins):.4g}", file=sys.stderr)
    wr.write(args.out)


if __name__ == "__main__":
    main()
