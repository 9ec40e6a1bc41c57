#!/usr/bin/python3
"""Ferret in PyTorch, and random-weight Ferret checkpoints in Hugging Face's layout.

Two jobs, one model:
  * write a checkpoint directory the way apple/ml-ferret's released model
    looks after its delta is applied (FERRETLlamaForCausalLM, saved with
    save_pretrained): config.json, model-0000N-of-00002.safetensors +
    model.safetensors.index.json, tokenizer.model (+ added_tokens.json with
    <region_fea>, special_tokens_map.json, tokenizer_config.json), and the
    CLIP tower either inside the checkpoint (model.vision_tower.vision_tower.
    vision_model.*, with a "vision_config" in config.json) or as its own
    CLIPVisionModel directory (--tower-dir: what mm_vision_tower names);
  * compute what Ferret computes for a prompt with an image, a box region and
    a mask region — logits and a greedy answer — written as expected.json
    for tests/test_ferret_hf.c, which converts the directory with
    `loupe convert --from-hf` and compares.

The forward pass is written from ml-ferret's code (ferret/model/ferret_arch.py,
language_model/ferret_llama.py, multimodal_encoder/clip_encoder.py) and
Hugging Face's CLIP/LLaMA modules, not from loupe's C code:
  CLIP ViT      class token first, + position embeddings, pre_layrnorm, L
                encoder layers (LayerNorm eps, quick_gelu), features =
                hidden_states[mm_vision_select_layer] (-2: before the last
                layer), class token dropped ("patch").
  projector     mm_projector Linear(mm_hidden_size, hidden_size).
  region        GeoRegionSampler: points (x/w, y/h), features by
                F.grid_sample(align_corners=True) at the points FLIPPED
                (Ferret's masks are (w, h) arrays: its flip reads the map
                transposed, which loupe reproduces with ferret_transpose),
                then 2 stages (FPS, kNN, diff Linear on the neighbour −
                anchor [fea, xy], concat the anchor, 1×1 Conv1d, ReLU,
                LayerNorm, max-pool), flatten_projector, dim_projector.
                Ferret draws the 512 points at random and starts FPS at a
                random index; here the points are given (loupe's seeded
                sampler, region_sampler.sample_points_box/mask, seed 0),
                FPS starts at index 0 and kNN sorts stably — loupe's fixed
                choices.
  decoder       LLaMA: RMSNorm, rotate-half RoPE (HF layout: loupe's
                converter must permute Wq/Wk), GQA, SwiGLU, untied lm_head.
  prompt        ferret_v1 conversation: system + " " + "USER: " +
                "<image>\\n" + question + " " + "ASSISTANT:"; chunks around
                <image> tokenized separately with the SentencePiece space
                prefix, BOS on the first only (tokenizer_image_token).

Usage (tests/fixtures/README.md has the fixture's exact command):
  /usr/bin/python3 tools/reference/ferret_reference.py --shape tiny --seed 1 --out DIR
  /usr/bin/python3 tools/reference/ferret_reference.py --shape ferret-7b --seed 1 --out DIR --no-reference
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "train"))
from region_sampler import sample_points_box, sample_points_mask  # noqa: E402
from spm_model import write_tokenizer_model  # noqa: E402
from tokenizer import (Tokenizer, TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_UNKNOWN,  # noqa: E402
                       TYPE_USER)

FERRET_SYSTEM = ("A chat between a human and an AI that understands visuals. "
                 "In images, [x, y] denotes points: top-left [0, 0], bottom-right [width-1, height-1]. "
                 "Increasing x moves right; y moves down. "
                 "Bounding box: [x1, y1, x2, y2]. Image size: 1000x1000. "
                 "Follow instructions. ")
REGION = "<region_fea>"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SHAPES = {
    # D, vision layers, heads, ff, image, patch | E, layers, heads, kv heads, ff, extra merges
    "tiny": dict(v_embd=16, v_layer=3, v_head=2, v_ff=32, image=56, patch=14,
                 n_embd=32, n_layer=2, n_head=4, n_head_kv=2, n_ff=64, vocab=None),
    # Ferret-7B: CLIP ViT-L/14-336 + Vicuna-7B v1.3 (32000 pieces + <region_fea>)
    "ferret-7b": dict(v_embd=1024, v_layer=24, v_head=16, v_ff=4096, image=336, patch=14,
                      n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008, vocab=32000),
}


# ----------------------------------------------------------------------------
# vocabulary: a small SentencePiece vocabulary (tiny) or 32000 pieces (7B shape)

def make_vocab(n_pieces=None):
    """tokens/scores/types for tokenizer.model: <unk> <s> </s>, 256 byte
    pieces, single characters, then merges of the prompt's words (score
    -rank). n_pieces pads with unused merges to that size (7B shape)."""
    toks, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL]
    for b in range(256):
        toks.append("<0x%02X>" % b)
        scores.append(0.0)
        types.append(TYPE_BYTE)
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    for c in chars:
        toks.append(c)
        scores.append(-1e6)
        types.append(TYPE_NORMAL)
    text = (FERRET_SYSTEM + " USER: What is in the region and is the location of the image ASSISTANT: "
            "a red cup on table")
    words = sorted(set(("\u2581" + w) for w in text.replace(".", " ").replace(",", " ").split()))
    if n_pieces is None:
        words = words[::3]        # the tiny vocabulary: merges for a third of the words, kept small
    rank = 0
    have = set(toks)
    for w in words:               # every prefix of every word, shortest first: BPE-reachable
        for k in range(2, len(w) + 1):
            p = w[:k]
            if p not in have:
                have.add(p)
                toks.append(p)
                scores.append(-float(rank))
                types.append(TYPE_NORMAL)
                rank += 1
    if n_pieces:
        i = 0
        while len(toks) < n_pieces:
            p = "\u2581zz%d" % i
            i += 1
            if p not in have:
                toks.append(p)
                scores.append(-float(rank))
                types.append(TYPE_NORMAL)
                rank += 1
    return toks, scores, types


# ----------------------------------------------------------------------------
# safetensors writing (the format: u64 header length, JSON header, data)

DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path, items):
    """items: list of (name, shape, torch dtype, make) in file order, make()
    returning the tensor: the header first, then each tensor made and written
    in turn (a 7B checkpoint never sits in memory)."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dt, _ in items:
        n = int(np.prod(shape)) * torch.tensor([], dtype=dt).element_size()
        header[name] = {"dtype": DT[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape, dt, make in items:
            t = make().contiguous()
            assert tuple(t.shape) == tuple(shape) and t.dtype == dt, name
            f.write(t.view(torch.int16).numpy().tobytes() if dt == torch.bfloat16 else t.numpy().tobytes())
    return off


# ----------------------------------------------------------------------------
# weights

def weight_spec(c, n_vocab):
    """HF name -> (shape, kind, std) of every weight, in checkpoint order;
    kind "w" (normal, std), "ln" (1 + normal for norm weights) or "b" (bias)."""
    spec = {}
    E, Fd, H, KV = c["n_embd"], c["n_ff"], c["n_head"], c["n_head_kv"]
    hd = E // H

    def put(name, shape, std=0.05, kind="w"):
        spec[name] = (tuple(shape), kind, std)

    put("model.embed_tokens.weight", (n_vocab, E), 0.5)
    for i in range(c["n_layer"]):
        p = "model.layers.%d." % i
        put(p + "input_layernorm.weight", (E,), 0.1, "ln")
        put(p + "self_attn.q_proj.weight", (H * hd, E), 0.3)
        put(p + "self_attn.k_proj.weight", (KV * hd, E), 0.3)
        put(p + "self_attn.v_proj.weight", (KV * hd, E), 0.2)
        put(p + "self_attn.o_proj.weight", (E, H * hd), 0.2)
        put(p + "post_attention_layernorm.weight", (E,), 0.1, "ln")
        put(p + "mlp.gate_proj.weight", (Fd, E), 0.2)
        put(p + "mlp.up_proj.weight", (Fd, E), 0.2)
        put(p + "mlp.down_proj.weight", (E, Fd), 0.2)
    put("model.norm.weight", (E,), 0.1, "ln")
    put("lm_head.weight", (n_vocab, E), 0.3)

    D, P, S, Fv = c["v_embd"], c["patch"], c["image"], c["v_ff"]
    n_pos = (S // P) ** 2 + 1
    V = "model.vision_tower.vision_tower.vision_model."
    put(V + "embeddings.class_embedding", (D,), 0.5)
    put(V + "embeddings.patch_embedding.weight", (D, 3, P, P), 0.05)
    put(V + "embeddings.position_embedding.weight", (n_pos, D), 0.3)
    put(V + "pre_layrnorm.weight", (D,), 0.1, "ln")
    put(V + "pre_layrnorm.bias", (D,), 0.05, "b")
    for i in range(c["v_layer"]):
        p = V + "encoder.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            put(p + "self_attn.%s.weight" % n, (D, D), 0.3)
            put(p + "self_attn.%s.bias" % n, (D,), 0.05, "b")
        for n in ("layer_norm1", "layer_norm2"):
            put(p + n + ".weight", (D,), 0.1, "ln")
            put(p + n + ".bias", (D,), 0.05, "b")
        put(p + "mlp.fc1.weight", (Fv, D), 0.3)
        put(p + "mlp.fc1.bias", (Fv,), 0.05, "b")
        put(p + "mlp.fc2.weight", (D, Fv), 0.3)
        put(p + "mlp.fc2.bias", (D,), 0.05, "b")
    put(V + "post_layernorm.weight", (D,), 0.1, "ln")      # unused by Ferret
    put(V + "post_layernorm.bias", (D,), 0.05, "b")
    put("model.mm_projector.weight", (E, D), 0.3)
    put("model.mm_projector.bias", (E,), 0.05, "b")
    R = "model.region_geo_sampler."
    for s in range(2):
        put(R + "diff_projector_list.%d.weight" % s, (D + 2, D + 2), 0.3)
        put(R + "diff_projector_list.%d.bias" % s, (D + 2,), 0.05, "b")
        put(R + "agg_projector_list.%d.net.0.weight" % s, (D, 2 * (D + 2), 1), 0.3)
        put(R + "agg_projector_list.%d.net.0.bias" % s, (D,), 0.05, "b")
        put(R + "agg_projector_list.%d.norm.weight" % s, (D,), 0.1, "ln")
        put(R + "agg_projector_list.%d.norm.bias" % s, (D,), 0.05, "b")
    put(R + "flatten_projector.weight", (D, D * 32), 0.05)
    put(R + "flatten_projector.bias", (D,), 0.05, "b")
    put(R + "dim_projector.weight", (E, D), 0.3)
    put(R + "dim_projector.bias", (E,), 0.05, "b")
    return spec


def make_weight(name, shape, kind, std, seed, index):
    """One weight, from its own generator (seed, index): any subset of the
    checkpoint can be made without the rest. Stored dtype applied."""
    g = torch.Generator().manual_seed(seed * 1000003 + index)
    t = torch.randn(*shape, generator=g) * std
    if kind == "ln":
        t = t + 1.0
    return t.to(storage_dtype(name))


def storage_dtype(name):
    """The dtypes the checkpoint stores, mixed on purpose: the decoder bf16
    (how Ferret was trained and saved), the tower and the region sampler f16,
    the projector f32 (all three must convert)."""
    if name.startswith(("model.vision_tower.", "model.region_geo_sampler.")):
        return torch.float16
    if name.startswith("model.mm_projector."):
        return torch.float32
    return torch.bfloat16


# ----------------------------------------------------------------------------
# the forward pass (f32 on the stored values)

def layer_norm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def clip_features(w, c, pixels, select=-2):
    """pixels (3, S, S) normalized -> (N, D) patch features of hidden_states[select]."""
    V = "model.vision_tower.vision_tower.vision_model."
    D, H, eps = c["v_embd"], c["v_head"], 1e-5
    x = F.conv2d(pixels[None], w[V + "embeddings.patch_embedding.weight"], stride=c["patch"])  # (1, D, n, n)
    x = x.flatten(2).transpose(1, 2)[0]                                                     # (N, D)
    x = torch.cat([w[V + "embeddings.class_embedding"][None], x], 0) + w[V + "embeddings.position_embedding.weight"]
    x = layer_norm(x, w[V + "pre_layrnorm.weight"], w[V + "pre_layrnorm.bias"], eps)
    hidden = [x]
    T, hd = x.shape[0], D // H
    for i in range(c["v_layer"]):
        p = V + "encoder.layers.%d." % i
        h = layer_norm(x, w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)

        def proj(n):
            return (h @ w[p + "self_attn.%s.weight" % n].T + w[p + "self_attn.%s.bias" % n]).view(T, H, hd).transpose(0, 1)
        q, k, v = proj("q_proj") * (hd ** -0.5), proj("k_proj"), proj("v_proj")
        a = torch.softmax(q @ k.transpose(1, 2), -1) @ v                                     # (H, T, hd)
        x = x + a.transpose(0, 1).reshape(T, D) @ w[p + "self_attn.out_proj.weight"].T + w[p + "self_attn.out_proj.bias"]
        h = layer_norm(x, w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
        h = h @ w[p + "mlp.fc1.weight"].T + w[p + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)                                                    # quick_gelu
        x = x + h @ w[p + "mlp.fc2.weight"].T + w[p + "mlp.fc2.bias"]
        hidden.append(x)
    return hidden[select][1:]


def ferret_region(w, c, fmap, xy):
    """GeoRegionSampler.forward for one region: fmap (N, D), xy (P, 2) = (x/w, y/h)."""
    R = "model.region_geo_sampler."
    n = int(round(math.sqrt(fmap.shape[0])))
    D = fmap.shape[1]
    grid = fmap.reshape(n, n, D).permute(2, 0, 1)[None]                                     # (1, C, H, W)
    pts = xy[None]                                                                          # (1, P, 2)
    fea = F.grid_sample(grid, (2.0 * pts.flip(dims=(2,)) - 1.0)[:, :, None, :], align_corners=True)  # (1, C, P, 1)
    fea = fea[0, :, :, 0].T[None]                                                           # (1, P, C)
    points = pts
    for s, (n_sub, n_nb) in enumerate(((128, 24), (32, 24))):
        B, M, _ = points.shape
        # farthest point sampling, start 0, ties to the first index
        dist = torch.full((M,), 1e10)
        far, idx = 0, []
        for _ in range(n_sub):
            idx.append(far)
            d = ((points[0] - points[0, far]) ** 2).sum(-1)
            dist = torch.minimum(dist, d)
            far = int(torch.argmax(dist))
        idx = torch.tensor(idx)
        new_pts, new_fea = points[:, idx], fea[:, idx]                                      # (1, S, 2), (1, S, C)
        # k nearest neighbours, exact squared distance, stable order
        d = ((new_pts[0][:, None, :] - points[0][None, :, :]) ** 2).sum(-1)                # (S, M)
        nb = torch.argsort(d, dim=1, stable=True)[:, :n_nb]
        local = torch.cat([fea[0][nb], points[0][nb]], -1)                                 # (S, K, C+2)
        anchor = torch.cat([new_fea[0], new_pts[0]], -1)[:, None, :]                        # (S, 1, C+2)
        diff = (local - anchor) @ w[R + "diff_projector_list.%d.weight" % s].T + w[R + "diff_projector_list.%d.bias" % s]
        g = torch.cat([diff, anchor.expand_as(diff)], -1)                                   # (S, K, 2(C+2))
        h = g @ w[R + "agg_projector_list.%d.net.0.weight" % s][:, :, 0].T + w[R + "agg_projector_list.%d.net.0.bias" % s]
        h = layer_norm(torch.relu(h), w[R + "agg_projector_list.%d.norm.weight" % s],
                       w[R + "agg_projector_list.%d.norm.bias" % s], 1e-5)                  # (S, K, C)
        fea = h.max(dim=1).values[None]                                                     # (1, S, C)
        points = new_pts
    x = fea.flatten(1) @ w[R + "flatten_projector.weight"].T + w[R + "flatten_projector.bias"]
    return (x @ w[R + "dim_projector.weight"].T + w[R + "dim_projector.bias"])[0]


def rope_hf(x, pos, theta):
    """rotate_half RoPE (HF LlamaRotaryEmbedding): x (H, T, hd)."""
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos.float()[:, None] * inv[None]                                                  # (T, hd/2)
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def llama_logits(w, c, embd):
    """embd (T, E) -> logits (T, V)."""
    E, H, KV, eps = c["n_embd"], c["n_head"], c["n_head_kv"], 1e-6
    hd, T = E // H, embd.shape[0]
    pos = torch.arange(T)
    mask = torch.full((T, T), float("-inf")).triu(1)

    def rms(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * wt
    x = embd
    for i in range(c["n_layer"]):
        p = "model.layers.%d." % i
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, hd).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, KV, hd).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, KV, hd).transpose(0, 1)
        q, k = rope_hf(q, pos, 10000.0), rope_hf(k, pos, 10000.0)
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(T, E) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        x = x + (F.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) @ \
            w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def q1000(v, size):
    return min(max(int(v * (1000.0 / size)), 0), 999)


def region_text(box, W, H):
    return "[%d, %d, %d, %d] %s" % (q1000(box[0], W), q1000(box[1], H), q1000(box[2], W), q1000(box[3], H), REGION)


# ----------------------------------------------------------------------------

def write_checkpoint(out, c, spec, seed, toks, scores, types, tower_dir=None):
    """Write the checkpoint; returns {name: stored tensor} for the tiny shape
    (None for big ones: nothing is kept)."""
    os.makedirs(out, exist_ok=True)
    E, V = c["n_embd"], len(toks) + 1
    keep = {} if c["vocab"] is None else None
    names = list(spec)

    def item(name, rename=None):
        shape, kind, std = spec[name]
        idx = names.index(name)

        def make():
            t = make_weight(name, shape, kind, std, seed, idx)
            if keep is not None:
                keep[name] = t
            return t
        return (rename or name, shape, storage_dtype(name), make)

    tower = [n for n in names if n.startswith("model.vision_tower.")]
    mm = [n for n in names if n.startswith(("model.mm_projector.", "model.region_geo_sampler."))]
    lm = [n for n in names if n not in tower and n not in mm]
    vcfg = {"hidden_size": c["v_embd"], "intermediate_size": c["v_ff"], "num_attention_heads": c["v_head"],
            "num_hidden_layers": c["v_layer"], "image_size": c["image"], "patch_size": c["patch"],
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}
    shard2 = [item(n) for n in mm]
    if tower_dir:
        os.makedirs(tower_dir, exist_ok=True)
        pre = "model.vision_tower.vision_tower."
        write_safetensors(os.path.join(tower_dir, "model.safetensors"), [item(n, n[len(pre):]) for n in tower])
        with open(os.path.join(tower_dir, "config.json"), "w") as f:
            json.dump(dict(vcfg, architectures=["CLIPVisionModel"]), f, indent=2)
    else:
        shard2 = [item(n) for n in tower] + shard2
    shard1 = [item(n) for n in lm]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = write_safetensors(os.path.join(out, files[0]), shard1)
    total += write_safetensors(os.path.join(out, files[1]), shard2)
    wm = {it[0]: files[0] for it in shard1}
    wm.update({it[0]: files[1] for it in shard2})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    cfg = {
        "architectures": ["FERRETLlamaForCausalLM"], "model_type": "ferret_llama",
        "hidden_size": E, "intermediate_size": c["n_ff"], "num_attention_heads": c["n_head"],
        "num_key_value_heads": c["n_head_kv"], "num_hidden_layers": c["n_layer"], "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048, "vocab_size": V, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16",
        "mm_vision_tower": tower_dir if tower_dir else "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": c["v_embd"], "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
        "add_region_feature": True, "region_geo_sampler": True, "sampler_pooler_mode": "max",
        "im_region_fea_token": V - 1, "image_aspect_ratio": "square_nocrop",
    }
    if not tower_dir:
        cfg["vision_config"] = vcfg
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_tokenizer_model(os.path.join(out, "tokenizer.model"), toks, scores, types)
    with open(os.path.join(out, "added_tokens.json"), "w") as f:
        json.dump({REGION: V - 1}, f)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "model_max_length": 2048,
                   "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": None}, f)
    return keep


def make_image(S, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) / S
    img = np.stack([0.5 + 0.4 * np.sin(6 * x + 1), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    img += rng.normal(0, 0.05, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)                              # (S, S, 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="the checkpoint directory")
    ap.add_argument("--tower-dir", default=None, help="write the CLIP tower as its own checkpoint here")
    ap.add_argument("--no-reference", action="store_true", help="only the checkpoint (no forward pass)")
    ap.add_argument("--n-gen", type=int, default=8)
    a = ap.parse_args()
    c = SHAPES[a.shape]
    toks, scores, types = make_vocab(c["vocab"])
    spec = weight_spec(c, len(toks) + 1)
    stored = write_checkpoint(a.out, c, spec, a.seed, toks, scores, types, a.tower_dir)
    if a.no_reference or stored is None:
        return
    w = {n: t.float() for n, t in stored.items()}                     # compute on the stored values
    tok = Tokenizer(toks + [REGION], scores + [0.0], types + [TYPE_USER])

    from PIL import Image
    S = c["image"]
    img = make_image(S, a.seed)
    Image.fromarray(img).save(os.path.join(a.out, "image.png"))
    mask = np.zeros((S, S), np.uint8)                                  # (h, w) an ellipse
    yy, xx = np.mgrid[0:S, 0:S]
    mask[((xx - 0.6 * S) / (0.25 * S)) ** 2 + ((yy - 0.45 * S) / (0.3 * S)) ** 2 <= 1] = 1
    mask.tofile(os.path.join(a.out, "mask.u8"))
    box = [8.0, 10.0, 30.0, 40.0]
    ys, xs = np.nonzero(mask)
    mbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]

    # image: the processor squeezes to S x S (here already S x S), /255, CLIP mean/std
    pix = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1) / 255.0
    pix = (pix - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    feats = clip_features(w, c, pix)                                   # (N, D)
    img_embd = feats @ w["model.mm_projector.weight"].T + w["model.mm_projector.bias"]
    pb = torch.tensor(sample_points_box([box[0] / S, box[1] / S, box[2] / S, box[3] / S], 512, 0))
    pm = torch.tensor(sample_points_mask(mask, 512, 0))
    reg = [ferret_region(w, c, feats, pb), ferret_region(w, c, feats, pm)]

    question = "What is in the region %s and %s?" % (region_text(box, S, S), region_text(mbox, S, S))
    prefix = [tok.bos] + tok.encode(FERRET_SYSTEM + " USER: ")
    suffix = tok.encode("\n" + question + " ASSISTANT:")
    ids = prefix + [-1] * img_embd.shape[0] + suffix
    emb_tab = w["model.embed_tokens.weight"]

    def embed(seq):
        rows, k = [], 0
        for t in seq:
            if t == -1:
                rows.append(img_embd[k])
                k += 1
            else:
                rows.append(emb_tab[t])
        x = torch.stack(rows)
        at = [i for i, t in enumerate(seq) if t == tok.region]
        for j, i in enumerate(at):
            x[i] = reg[j]
        return x

    seq = list(ids)
    logits0 = None
    gen = []
    with torch.no_grad():
        for step in range(a.n_gen):
            lg = llama_logits(w, c, embed(seq))[-1]
            if logits0 is None:
                logits0 = lg
            nxt = int(torch.argmax(lg))
            gen.append(nxt)
            seq.append(nxt)
    exp = {
        "command": "/usr/bin/python3 tools/reference/ferret_reference.py --shape %s --seed %d --out DIR" % (a.shape, a.seed),
        "image": "image.png", "mask": "mask.u8", "mask_wh": [S, S], "box": box, "mask_box": mbox,
        "question": "What is in the region <region> and <region>?",
        "question_expanded": question,
        "prompt_ids": ids, "n_image_tokens": int(img_embd.shape[0]),
        "image_embd_first": img_embd[0].tolist(), "image_embd_last": img_embd[-1].tolist(),
        "region_embd": [r.tolist() for r in reg],
        "logits": logits0.tolist(), "greedy": gen,
    }
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(exp, f)
    print("wrote %s: %d prompt positions (%d image), logits range %.3f..%.3f, greedy %s" %
          (a.out, len(ids), img_embd.shape[0], float(logits0.min()), float(logits0.max()), gen))


if __name__ == "__main__":
    main()
