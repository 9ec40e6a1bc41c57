#!/usr/bin/python3
"""Compare two parity dumps (GGUF of F32/I32 tensors): for every tensor name
present in both, print max |a - b|, max |b| and the relative figure
max|a-b| / max|b|, and whether integer tensors (token ids) are identical.

  /usr/bin/python3 tools/reference/compare.py A.gguf B.gguf [--prefix-a hf.] [--prefix-b hf.]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFReader  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--prefix-a", default="")
ap.add_argument("--prefix-b", default="")
args = ap.parse_args()
A, B = GGUFReader(args.a), GGUFReader(args.b)
for name in A.tensors:
    if not name.startswith(args.prefix_a):
        continue
    base = name[len(args.prefix_a):]
    if args.prefix_a == "" and base.startswith("hf."):
        continue
    nb = args.prefix_b + base
    if nb not in B.tensors:
        continue
    a, b = A.get(name), B.get(nb)
    if a.shape != b.shape:
        print(f"{base:24s} shape {a.shape} vs {b.shape}")
        continue
    if np.issubdtype(a.dtype, np.integer):
        same = np.array_equal(a, b)
        first = -1 if same else int(np.argmax(a != b))
        print(f"{base:24s} {'identical' if same else 'DIFFER at %d' % first}  {a.tolist()}")
        if not same:
            print(f"{'':24s} {'':9s}  {b.tolist()}")
        continue
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
    m = np.abs(b).max()
    print(f"{base:24s} max_abs {d:.3e}  max|ref| {m:.3e}  rel {d / max(m, 1e-30):.3e}")
