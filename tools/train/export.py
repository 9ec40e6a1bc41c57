#!/usr/bin/python3
"""Export a training checkpoint as the GGUF pair loupe (and llama.cpp's llava
loader) reads:

  PREFIX.gguf         general.architecture "llama": decoder + tokenizer
  PREFIX-mmproj.gguf  general.architecture "clip": ViT + llava "mlp"
                      projector + Ferret region sampler (mm.region.*)

  /usr/bin/python3 tools/train/export.py CKPT.pt PREFIX [--type f16|q8_0|f32]
      [--lm-type T] [--embd-type T] [--mmproj-type T]

Tensor types: 2-D matrices in --type (--lm-type / --mmproj-type set one
file's, --embd-type the decoder's token_embd and output alone; q8_0 falls
back to f16 for a row length that is not a multiple of 32), the 4-D patch embedding f16 (as the legacy
converter writes it), 1-D tensors and the class/position embeddings f32.
Names and keys follow tools/gen_model.c (llama.cpp's legacy llava
converter): CLIP fc1 is stored as ffn_down and fc2 as ffn_up, no post_ln,
clip.use_gelu false (quick GELU), class token + pre_ln;
clip.vision.block_count = the number of blocks trained (loupe's default mode
runs all of them).

Preprocessing: the model was trained on images SQUEEZED to S x S with PIL
bicubic (Ferret). loupe's lp_vlm defaults to LLaVA's pad-to-square
(LP_PREP_PAD_PIL); see tools/train/README.md.
"""

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import gguf_reader as GR  # noqa: E402
import tokenizer as TK  # noqa: E402
from data import MEAN, STD  # noqa: E402


class Writer(GR.GGUFWriter):
    """gguf_reader.GGUFWriter plus string/f32 arrays and F16/Q8_0 tensors."""

    def add_arr_str(self, key, v):
        self.kv.append((key, GR.ARRAY, (GR.STRING, list(v))))

    def add_arr_f32(self, key, v):
        self.kv.append((key, GR.ARRAY, (GR.FLOAT32, [float(x) for x in v])))

    def add_typed(self, name, arr, ttype):
        a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
        ne = list(reversed(a.shape))
        if ttype == GR.GGML_F32:
            raw = a.astype("<f4").tobytes()
        elif ttype == GR.GGML_F16:
            raw = a.astype("<f2").tobytes()
        elif ttype == GR.GGML_Q8_0:
            raw = quantize_q8_0(a.reshape(-1, a.shape[-1]))
        else:
            raise ValueError(ttype)
        self.tensors.append((name, ne, ttype, raw))


Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])   # ggml's block_q8_0


def quantize_q8_0(x):
    """ggml's quantize_row_q8_0_ref: per block of 32, d = amax / 127 (f32),
    q = roundf(x * (1/d)) (half away from zero), d stored as f16."""
    rows, n = x.shape
    assert n % 32 == 0
    b = x.reshape(rows, n // 32, 32).astype(np.float32)
    d = (np.abs(b).max(-1) / np.float32(127)).astype(np.float32)
    idv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (b * idv[..., None]).astype(np.float32)
    qs = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    out = np.empty((rows, n // 32), dtype=Q8_0_BLOCK)
    out["d"] = d.astype(np.float16)
    out["qs"] = qs
    return out.tobytes()


def roundtrip(x, ttype):
    """x (rows, n) as loupe reads it back after export in ttype (mat_type's
    fallback included): f16 rounding, or q8_0 quantize + dequantize (d * q)."""
    t = mat_type(TYPES[ttype], x)
    if t == GR.GGML_F32:
        return x.astype(np.float32)
    if t == GR.GGML_F16:
        return x.astype(np.float16).astype(np.float32)
    q = np.frombuffer(quantize_q8_0(x), dtype=Q8_0_BLOCK).reshape(x.shape[0], x.shape[1] // 32)
    return (q["d"].astype(np.float32)[..., None] * q["qs"].astype(np.float32)).reshape(x.shape)


TYPES = {"f32": GR.GGML_F32, "f16": GR.GGML_F16, "q8_0": GR.GGML_Q8_0}
FTYPE = {"f32": 0, "f16": 1, "q8_0": 7}


def mat_type(t, arr):
    if t == GR.GGML_Q8_0 and arr.shape[-1] % 32 != 0:
        return GR.GGML_F16
    return t


def np_(t):
    return t.detach().float().cpu().numpy()


def write_lm(path, sd, cfg, tok, ttype, name, embd_type=None):
    """embd_type: token_embd and output in another type (default ttype).
    token_embd is only looked up by row, so a q8_0 one is read back exactly by
    loupe and llama.cpp alike; output is a matrix product, which both engines'
    default decode computes with q8_0-rounded activations for q8_0 weights."""
    t = TYPES[ttype]
    te = TYPES[embd_type or ttype]
    w = Writer(32)
    w.add_str("general.architecture", "llama")
    w.add_str("general.name", name)
    w.add_u32("general.file_type", FTYPE[ttype])
    w.add_u32("llama.vocab_size", cfg["n_vocab"])
    w.add_u32("llama.context_length", cfg["n_ctx"])
    w.add_u32("llama.embedding_length", cfg["n_embd"])
    w.add_u32("llama.block_count", cfg["n_layer"])
    w.add_u32("llama.feed_forward_length", cfg["n_ff"])
    w.add_u32("llama.rope.dimension_count", cfg["n_embd"] // cfg["n_head"])
    w.add_u32("llama.attention.head_count", cfg["n_head"])
    w.add_u32("llama.attention.head_count_kv", cfg["n_head_kv"])
    w.add_f32("llama.attention.layer_norm_rms_epsilon", cfg["rms_eps"])
    w.add_f32("llama.rope.freq_base", cfg["rope_base"])
    TK.gguf_metadata(w, tok)

    def mat(n, key, tt=t):
        a = np_(sd[key])
        w.add_typed(n, a, mat_type(tt, a))

    mat("token_embd.weight", "tok_embd.weight", te)
    for l in range(cfg["n_layer"]):
        p, b = "blk.%d." % l, "blocks.%d." % l
        w.add_typed(p + "attn_norm.weight", np_(sd[b + "attn_norm.weight"]), GR.GGML_F32)
        for gn, mn in (("attn_q", "wq"), ("attn_k", "wk"), ("attn_v", "wv"), ("attn_output", "wo")):
            mat(p + gn + ".weight", b + mn + ".weight")
        w.add_typed(p + "ffn_norm.weight", np_(sd[b + "ffn_norm.weight"]), GR.GGML_F32)
        for gn, mn in (("ffn_gate", "gate"), ("ffn_up", "up"), ("ffn_down", "down")):
            mat(p + gn + ".weight", b + mn + ".weight")
    w.add_typed("output_norm.weight", np_(sd["norm.weight"]), GR.GGML_F32)
    mat("output.weight", "output.weight", te)
    w.write(path)


def write_mmproj(path, sd, cfg, ttype, name):
    t = TYPES[ttype]
    S, P, D, E = cfg["image_size"], cfg["patch_size"], cfg["v_embd"], cfg["n_embd"]
    w = Writer(32)
    w.add_str("general.architecture", "clip")
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_llava_projector", True)
    w.add_u32("general.file_type", FTYPE[ttype])
    w.add_str("general.name", name)
    w.add_str("general.description", "loupe tiny Ferret-style image encoder (synthetic scenes)")
    w.add_str("clip.projector_type", "mlp")
    w.add_u32("clip.vision.image_size", S)
    # trained on squeezed images (Ferret): loupe's auto preprocessing reads this
    w.add_str("clip.vision.image_aspect_ratio", "squash")
    w.add_u32("clip.vision.patch_size", P)
    w.add_u32("clip.vision.embedding_length", D)
    w.add_u32("clip.vision.feed_forward_length", cfg["v_ff"])
    w.add_u32("clip.vision.projection_dim", E)
    w.add_u32("clip.vision.attention.head_count", cfg["v_head"])
    w.add_f32("clip.vision.attention.layer_norm_epsilon", cfg["v_eps"])
    w.add_u32("clip.vision.block_count", cfg["v_layer"])
    # Features = the output of the last block. Stating it makes llama.cpp run
    # every block too (without the key its llava graph stops one block early,
    # the legacy converter's convention).
    w.add_arr_i32("clip.vision.feature_layer", [cfg["v_layer"]])
    w.add_arr_f32("clip.vision.image_mean", MEAN)
    w.add_arr_f32("clip.vision.image_std", STD)
    w.add_bool("clip.use_gelu", False)

    def mat(n, key):
        a = np_(sd[key])
        w.add_typed(n, a, mat_type(t, a))

    def vec(n, key):
        w.add_typed(n, np_(sd[key]), GR.GGML_F32)

    mat("mm.0.weight", "mm0.weight")
    vec("mm.0.bias", "mm0.bias")
    mat("mm.2.weight", "mm2.weight")
    vec("mm.2.bias", "mm2.bias")
    if cfg.get("v_cls", True):
        vec("v.class_embd", "vit.cls")
    w.add_typed("v.patch_embd.weight", np_(sd["vit.patch.weight"]), GR.GGML_F16)   # (D, 3, P, P) -> ne [P, P, 3, D]
    vec("v.position_embd.weight", "vit.pos")
    vec("v.pre_ln.weight", "vit.pre_ln.weight")
    vec("v.pre_ln.bias", "vit.pre_ln.bias")
    for l in range(cfg["v_layer"]):
        p, b = "v.blk.%d." % l, "vit.blocks.%d." % l
        for gn, mn in (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v"), ("attn_out", "o"),
                       ("ffn_down", "fc1"), ("ffn_up", "fc2")):     # legacy converter: fc1 -> ffn_down
            mat(p + gn + ".weight", b + mn + ".weight")
            vec(p + gn + ".bias", b + mn + ".bias")
        for ln in ("ln1", "ln2"):
            vec(p + ln + ".weight", b + ln + ".weight")
            vec(p + ln + ".bias", b + ln + ".bias")
    # region sampler: the reference module's keys, our tensor types
    K = "clip.vision.region."
    w.add_u32(K + "num_points", cfg["region_points"])
    w.add_arr_i32(K + "sub_points", cfg["region_sub"])
    w.add_arr_i32(K + "neighbors", cfg["region_nb"])
    w.add_u32(K + "input_dim", D)
    w.add_u32(K + "output_dim", E)
    w.add_str(K + "pooler", "max")
    w.add_f32(K + "layer_norm_epsilon", 1e-5)
    w.add_bool(K + "ferret_transpose", False)
    names = ["%d.diff" % s for s in range(len(cfg["region_sub"]))]
    for s in range(len(cfg["region_sub"])):
        for part in ("diff", "agg", "norm"):
            key = "region.stages.%d.%s" % (s, part)
            (vec if part == "norm" else mat)("mm.region.%d.%s.weight" % (s, part), key + ".weight")
            vec("mm.region.%d.%s.bias" % (s, part), key + ".bias")
    del names
    for part in ("flatten", "proj"):
        mat("mm.region.%s.weight" % part, "region.%s.weight" % part)
        vec("mm.region.%s.bias" % part, "region.%s.bias" % part)
    w.write(path)


def write_tokenizer_only(path, tok):
    """A GGUF holding only the tokenizer metadata (for tools/train/tokcheck.c)."""
    w = Writer(32)
    w.add_str("general.architecture", "llama")
    TK.gguf_metadata(w, tok)
    w.write(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("prefix", help="writes PREFIX.gguf and PREFIX-mmproj.gguf")
    ap.add_argument("--type", default="f16", choices=sorted(TYPES))
    ap.add_argument("--lm-type", default=None, choices=sorted(TYPES), help="the decoder file's matrices (default --type)")
    ap.add_argument("--embd-type", default=None, choices=sorted(TYPES),
                    help="the decoder's token_embd and output (default --lm-type)")
    ap.add_argument("--mmproj-type", default=None, choices=sorted(TYPES), help="the mmproj's matrices (default --type)")
    ap.add_argument("--name", default="loupe-tiny-ferret")
    a = ap.parse_args()
    ck = torch.load(a.ckpt)
    tok = TK.Tokenizer.from_json(ck["tokenizer"])
    cfg = ck["config"]
    write_lm(a.prefix + ".gguf", ck["model"], cfg, tok, a.lm_type or a.type, a.name, a.embd_type)
    write_mmproj(a.prefix + "-mmproj.gguf", ck["model"], cfg, a.mmproj_type or a.type, a.name)
    for p in (a.prefix + ".gguf", a.prefix + "-mmproj.gguf"):
        print("wrote %s (%.2f MB)" % (p, os.path.getsize(p) / 1e6))


if __name__ == "__main__":
    main()
