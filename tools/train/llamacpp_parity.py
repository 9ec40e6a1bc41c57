#!/usr/bin/python3
"""Greedy answers of llama.cpp vs loupe on the shipped model's grounding path.

  /usr/bin/python3 tools/train/llamacpp_parity.py --model models/loupe-tiny.gguf \
      --mmproj models/loupe-tiny-mmproj.gguf --data HELDOUT/annotations.json \
      --llava-dump /tmp/llava_dump [--n 50] [--loupe build/loupe]

llama.cpp side: tools/llamacpp/llava_dump.cpp (built by hand against a
llama.cpp build tree, see its header; loupe keeps no recipe that builds
llama.cpp). It takes the S x S model input, so the image is squeezed here
with PIL bicubic exactly as the model was trained (llama.cpp's llava
preprocessing only pads; it has no squeeze mode), the prompt as explicit
token ids (tools/train/tokenizer.py, the same SentencePiece vocabulary; the
vicuna template loupe uses), and 24 greedy tokens; its answer is cut at the
first EOS and decoded.

loupe side: `loupe ask --json -n 24` on the ORIGINAL image (loupe squeezes it
itself, from the mmproj's clip.vision.image_aspect_ratio = "squash").

Samples: the first --n grounding expressions of the held-out set, spread
over it. Prints each pair and the count of identical answers.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
import data as D  # noqa: E402
import tokenizer as TK  # noqa: E402
from gguf_reader import GGUFReader  # noqa: E402


def tokenizer_from_gguf(path):
    r = GGUFReader(path)
    return TK.Tokenizer(r.kv["tokenizer.ggml.tokens"], r.kv["tokenizer.ggml.scores"], r.kv["tokenizer.ggml.token_type"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--llava-dump", required=True)
    ap.add_argument("--loupe", default=os.path.join(REPO, "build", "loupe"))
    ap.add_argument("--n", type=int, default=50)
    a = ap.parse_args()
    tok = tokenizer_from_gguf(a.model)
    S = int(GGUFReader(a.mmproj).kv["clip.vision.image_size"])
    with open(a.data) as f:
        ann = json.load(f)
    root = os.path.dirname(os.path.abspath(a.data))
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    samples = [(files[r["image_id"]], s["sent"]) for r in ann["refs"] for s in r["sentences"]]
    pick = [samples[k] for k in np.linspace(0, len(samples) - 1, min(a.n, len(samples))).astype(int)]
    prefix = ",".join(map(str, tok.encode(D.PREFIX_TEXT, add_bos=True)))
    tmp = tempfile.mkdtemp(prefix="loupe-llamacpp-")
    same = 0
    for k, (file, expr) in enumerate(pick):
        img = os.path.join(root, file)
        q = D.grounding_question(expr)
        raw = os.path.join(tmp, "img.rgb")
        sq, _ = D.squeeze(img, S)
        sq.tofile(raw)
        suffix = ",".join(map(str, tok.encode(D.suffix_text(q))))
        out = os.path.join(tmp, "out.gguf")
        r = subprocess.run([a.llava_dump, a.model, a.mmproj, raw, str(S), prefix, suffix, "24", out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("llava_dump failed: " + r.stderr[-2000:])
        ids = [int(t) for t in np.asarray(GGUFReader(out).get("greedy.tokens")).reshape(-1)]
        if tok.eos in ids:
            ids = ids[:ids.index(tok.eos)]
        ll = tok.decode(ids).strip()
        r = subprocess.run([a.loupe, "ask", "-m", a.model, "--mmproj", a.mmproj, img, q, "--json", "-n", "24", "-t", "2"],
                           capture_output=True, text=True)
        lo = json.loads(r.stdout)["answer"].strip() if r.returncode == 0 else "ERROR " + r.stderr.strip()
        same += ll == lo
        print("%3d [%s] %-50s llama.cpp %-22s loupe %s" % (k, "same" if ll == lo else "DIFF", expr[:50], ll, lo),
              flush=True)
    print("llama.cpp vs loupe greedy grounding answers: %d/%d identical" % (same, len(pick)))


if __name__ == "__main__":
    main()
