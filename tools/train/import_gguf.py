#!/usr/bin/python3
"""A loupe-tiny GGUF pair back into a PyTorch Model (the inverse of export.py's
tensor names), so the shipped model can be probed or fine-tuned when its
training checkpoint is gone.

  /usr/bin/python3 tools/train/import_gguf.py models/loupe-tiny.gguf models/loupe-tiny-mmproj.gguf \
      WORK/tokenizer.json OUT.pt

OUT.pt holds "model", "config" and "tokenizer" as train.py's checkpoints do:
eval.py, oracle_boxes.py, token_probe.py and `train.py --init OUT.pt` read it.
The weights are the file's (f16 matrices widened to f32); the training-only
heads (AuxHead, ...) are not in the files. WORK/tokenizer.json must be the
vocabulary the model was trained with (train.py rebuilds the same one from the
same `loupe synth` corpus); the vocabulary size is checked.
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import gguf_reader as GR  # noqa: E402
import model as M  # noqa: E402
import tokenizer as TK  # noqa: E402


def load_pair(lm_path, mm_path, tok_path):
    """-> (Model in eval mode, config, tokenizer, state dict)."""
    lm, mp = GR.GGUFReader(lm_path), GR.GGUFReader(mm_path)
    tok = TK.Tokenizer.from_json(tok_path)
    cfg = dict(M.DEFAULT_CONFIG)
    cfg["n_vocab"] = len(tok)
    if lm.kv["llama.vocab_size"] != len(tok):
        raise ValueError("%s: %d tokens, %s: %d" % (lm_path, lm.kv["llama.vocab_size"], tok_path, len(tok)))
    sd = {}

    def put(key, r, name):
        sd[key] = torch.from_numpy(r.get(name).copy()).float()

    put("tok_embd.weight", lm, "token_embd.weight")
    for l in range(cfg["n_layer"]):
        p, b = "blk.%d." % l, "blocks.%d." % l
        for gn, mn in (("attn_norm", "attn_norm"), ("ffn_norm", "ffn_norm"), ("attn_q", "wq"), ("attn_k", "wk"),
                       ("attn_v", "wv"), ("attn_output", "wo"), ("ffn_gate", "gate"), ("ffn_up", "up"),
                       ("ffn_down", "down")):
            put(b + mn + ".weight", lm, p + gn + ".weight")
    put("norm.weight", lm, "output_norm.weight")
    put("output.weight", lm, "output.weight")
    for gn, mn in (("mm.0", "mm0"), ("mm.2", "mm2"), ("v.pre_ln", "vit.pre_ln")):
        for x in ("weight", "bias"):
            put(mn + "." + x, mp, gn + "." + x)
    put("vit.patch.weight", mp, "v.patch_embd.weight")
    put("vit.pos", mp, "v.position_embd.weight")
    for l in range(cfg["v_layer"]):
        p, b = "v.blk.%d." % l, "vit.blocks.%d." % l
        for gn, mn in (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v"), ("attn_out", "o"),
                       ("ffn_down", "fc1"), ("ffn_up", "fc2"), ("ln1", "ln1"), ("ln2", "ln2")):  # export's fc1 naming
            for x in ("weight", "bias"):
                put(b + mn + "." + x, mp, p + gn + "." + x)
    for s in range(len(cfg["region_sub"])):
        for part in ("diff", "agg", "norm"):
            for x in ("weight", "bias"):
                put("region.stages.%d.%s.%s" % (s, part, x), mp, "mm.region.%d.%s.%s" % (s, part, x))
    for part in ("flatten", "proj"):
        for x in ("weight", "bias"):
            put("region.%s.%s" % (part, x), mp, "mm.region.%s.%s" % (part, x))
    m = M.Model(cfg)
    ref = m.state_dict()
    if set(ref) != set(sd):
        raise ValueError("tensor names differ from model.py's: %s" % sorted(set(ref) ^ set(sd)))
    for k in ref:
        sd[k] = sd[k].reshape(ref[k].shape)
    m.load_state_dict(sd)
    m.region_id = tok.region
    m.eval()
    return m, cfg, tok, sd


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    _, cfg, _, sd = load_pair(*sys.argv[1:4])
    torch.save({"config": cfg, "model": sd, "tokenizer": os.path.abspath(sys.argv[3])}, sys.argv[4])
    print("%s: %.2fM parameters" % (sys.argv[4], sum(v.numel() for v in sd.values()) / 1e6))


if __name__ == "__main__":
    main()
