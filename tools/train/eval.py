#!/usr/bin/python3
"""Evaluate a checkpoint in PyTorch and check loupe runs the exported pair
the same way.

  /usr/bin/python3 tools/train/eval.py CKPT.pt --work WORK [--prefix /tmp/tiny-smoke]
      [--n-ground 200] [--n-refer 100] [--n-parity 10]

1. PyTorch greedy accuracy on held-out (val split) scenes: grounding =
   IoU >= 0.5 between the parsed answer box and the true box; referring =
   exact answer string ("a green clock").
2. Export PREFIX.gguf / PREFIX-mmproj.gguf (f16) and, for --n-parity held-out
   grounding questions, run `build/loupe ask -m PREFIX.gguf --mmproj
   PREFIX-mmproj.gguf IMAGE "question" -n 24` and compare loupe's greedy answer
   with PyTorch's (PyTorch here uses the weights rounded exactly as exported,
   i.e. f16 matrices).
3. First-step logits, PyTorch vs loupe (tools/train/loupe_logits.c), max abs
   difference, on the first parity sample.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import data as D  # noqa: E402
import export as X  # noqa: E402
import tokenizer as TK  # noqa: E402
import model as M  # noqa: E402
from model import greedy  # noqa: E402

BOX = re.compile(r"^\[(\d+), (\d+), (\d+), (\d+)\]$")


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def parse_box(text, w, h):
    m = BOX.match(text.strip())
    if not m:
        return None
    v = [int(x) for x in m.groups()]
    return [v[0] * w / 1000.0, v[1] * h / 1000.0, v[2] * w / 1000.0, v[3] * h / 1000.0]


def round_like_export(model, lm_type="f16", embd_type=None):
    """Give the parameters the values loupe reads back from the export: the
    patch kernel and the mmproj's matrices f16, the decoder's matrices in
    lm_type (f16, or q8_0 blocks: export.py --lm-type q8_0), its token_embd
    and output in embd_type (export.py --embd-type; default lm_type)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() < 2 or n == "vit.pos":
                continue
            if n.startswith(("tok_embd.", "output.")):
                t = embd_type or lm_type
            elif n.startswith("blocks."):    # the decoder's 2-D matrices (its norms are 1-D)
                t = lm_type
            else:                            # ViT, projector, sampler: f16 in the mmproj
                p.copy_(p.half().float())
                continue
            p.copy_(torch.from_numpy(X.roundtrip(p.detach().float().numpy(), t)))


def load(ckpt_path):
    model, ck = M.load(ckpt_path)
    tok = TK.Tokenizer.from_json(ck["tokenizer"])
    model.region_id = tok.region
    return ck, tok, model


def run_sample(model, tok, data, prefix, j):
    pixels = D.normalize(data["images"][data["img"][j]])
    pts = None
    if data["kind"][j] == 1:
        from region_sampler import sample_points_box  # tools/reference, on sys.path via model.py
        box = data["rbox"][j].tolist()
        pts = torch.tensor(np.asarray(sample_points_box(box, model.c["region_points"], 0), np.float32)).reshape(-1, 2)
    ids, first = greedy(model, prefix, pixels, data["suffix"][j], pts, n_max=24, eos=tok.eos)
    return ids, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--work", default="/tmp/loupe-train")
    ap.add_argument("--split", default="val")
    ap.add_argument("--prefix", default="/tmp/tiny-smoke")
    ap.add_argument("--n-ground", type=int, default=200)
    ap.add_argument("--n-refer", type=int, default=100)
    ap.add_argument("--n-parity", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck, tok, model = load(a.ckpt)
    cfg = ck["config"]
    data = D.build_samples(os.path.join(a.work, "synth"), cfg["image_size"], tok,
                           os.path.join(a.work, "data-%d.pt" % cfg["image_size"]))
    prefix = torch.tensor(tok.encode(D.PREFIX_TEXT, add_bos=True))
    held = [j for j, s in enumerate(data["split"]) if s == a.split]
    ground = [j for j in held if data["kind"][j] == 0]
    refer = [j for j in held if data["kind"][j] == 1]
    # spread the picks over the split, deterministically
    pick = lambda js, n: [js[k] for k in np.linspace(0, len(js) - 1, min(n, len(js))).astype(int)]  # noqa: E731

    # 1. accuracy
    hits, valid = 0, 0
    for j in pick(ground, a.n_ground):
        ids, _ = run_sample(model, tok, data, prefix, j)
        w, h = data["sizes"][data["img"][j]].tolist()
        b = parse_box(tok.decode([i for i in ids if i != tok.eos]), w, h)
        valid += b is not None
        hits += b is not None and iou(b, data["abox"][j]) >= 0.5
    n_g = min(a.n_ground, len(ground))
    print("grounding (%s): %d/%d IoU>=0.5 = %.1f%% (%d well-formed boxes)" % (a.split, hits, n_g, 100.0 * hits / max(1, n_g), valid))
    ok = 0
    for j in pick(refer, a.n_refer):
        ids, _ = run_sample(model, tok, data, prefix, j)
        ok += tok.decode([i for i in ids if i != tok.eos]) == data["answer_text"][j]
    n_r = min(a.n_refer, len(refer))
    print("referring (%s): %d/%d exact = %.1f%%" % (a.split, ok, n_r, 100.0 * ok / max(1, n_r)))

    if a.n_parity <= 0:
        return
    # 2. export + loupe greedy parity
    X.write_lm(a.prefix + ".gguf", ck["model"], cfg, tok, "f16", "loupe-smoke")
    X.write_mmproj(a.prefix + "-mmproj.gguf", ck["model"], cfg, "f16", "loupe-smoke")
    round_like_export(model)
    loupe = os.path.join(REPO, "build", "loupe")
    has_prep = b"--prep" in subprocess.run([loupe, "ask", "--help"], capture_output=True).stdout + \
        subprocess.run([loupe, "ask", "--help"], capture_output=True).stderr
    tmp = tempfile.mkdtemp(prefix="loupe-eval-")
    sdir = os.path.join(a.work, "synth")
    agree, first_diff = 0, None
    for k, j in enumerate(pick(ground, a.n_parity)):
        ids, first = run_sample(model, tok, data, prefix, j)
        py = tok.decode([i for i in ids if i != tok.eos]).strip()
        orig = os.path.join(sdir, "images", "%06d.png" % (data["img"][j] + 1))
        if has_prep:
            img, extra = orig, ["--prep", "squash"]
        else:   # a pre-squeezed S x S image: loupe's default pad mode is then a no-op
            img = os.path.join(tmp, "sq%d.png" % k)
            Image.fromarray(data["images"][data["img"][j]].numpy()).save(img)
            extra = []
        q = data["question"][j]
        r = subprocess.run([loupe, "ask", "-m", a.prefix + ".gguf", "--mmproj", a.prefix + "-mmproj.gguf", img, q,
                            "-n", "24", "-t", "2"] + extra, capture_output=True, text=True)
        lo = (r.stdout.strip().split("\n") or [""])[0].strip()   # the answer line (box lines may follow)
        same = lo == py
        agree += same
        print("  [%s] %-60s torch %-22s loupe %s" % ("ok" if same else "DIFF", q[24:80], py, lo if r.returncode == 0 else
                                                       "ERROR " + r.stderr.strip()))
        if k == 0:
            exe = os.path.join(tmp, "loupe_logits")
            subprocess.run(["cc", "-std=c11", "-O2"] + ["-I" + os.path.join(REPO, d) for d in
                                                        ("include", "core", "language", "vision", "fusion")] +
                           [os.path.join(HERE, "loupe_logits.c"), os.path.join(REPO, "build", "libloupe.a"), "-o", exe,
                            "-lm", "-lopenblas", "-lpthread", "-lpng", "-lcjson"], check=True)
            lf = os.path.join(tmp, "logits.f32")
            subprocess.run([exe, a.prefix + ".gguf", a.prefix + "-mmproj.gguf", orig, q, lf], check=True)
            ll = np.fromfile(lf, dtype="<f4")
            first_diff = float(np.abs(ll - first.numpy()).max())
            print("  first-step logits: max |torch - loupe| = %.3g (logit range %.2f..%.2f), argmax %d vs %d" %
                  (first_diff, float(first.min()), float(first.max()), int(first.argmax()), int(ll.argmax())))
    n_p = min(a.n_parity, len(ground))
    print("loupe vs torch greedy (grounding): %d/%d identical answers" % (agree, n_p))
    # referring through `loupe ask --region` (box points, seed 0, as lp_vlm)
    agree_r, n_r = 0, 0
    for j in pick(refer, a.n_parity // 2) if has_prep else []:
        ids, _ = run_sample(model, tok, data, prefix, j)
        py = tok.decode([i for i in ids if i != tok.eos]).strip()
        orig = os.path.join(sdir, "images", "%06d.png" % (data["img"][j] + 1))
        box = ",".join(str(int(v)) for v in data["abox"][j])
        r = subprocess.run([loupe, "ask", "-m", a.prefix + ".gguf", "--mmproj", a.prefix + "-mmproj.gguf", orig,
                            "What is in the region <region>?", "--region", box, "--prep", "squash", "-n", "24",
                            "-t", "2"], capture_output=True, text=True)
        lo = (r.stdout.strip().split("\n") or [""])[0].strip()   # the answer line (box lines may follow)
        n_r += 1
        agree_r += lo == py
        print("  [%s] region %-20s torch %-22s loupe %s" % ("ok" if lo == py else "DIFF", box, py,
                                                          lo if r.returncode == 0 else "ERROR " + r.stderr.strip()))
    if n_r:
        print("loupe vs torch greedy (referring, --region): %d/%d identical answers" % (agree_r, n_r))


if __name__ == "__main__":
    main()
