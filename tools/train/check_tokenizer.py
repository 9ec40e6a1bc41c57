#!/usr/bin/python3
"""Check that tools/train/tokenizer.py encodes every text exactly as loupe's
C tokenizer does: writes the vocabulary as a tokenizer-only GGUF, builds
tools/train/tokcheck.c against build/libloupe.a (into /tmp), runs it on
every distinct text of the corpus plus some stress strings and compares.

  /usr/bin/python3 tools/train/check_tokenizer.py WORK/tokenizer.json WORK/synth/annotations.json
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import data as D  # noqa: E402
import tokenizer as TK  # noqa: E402
from export import write_tokenizer_only  # noqa: E402

STRESS = ["", " ", "  two  spaces ", "[0, 0, 999, 999]", "[1000, 12345]", "héllo wörld ✓ 日本",
          "<region_fea><region_fea>", "What is this [1, 2, 3, 4] <region_fea>?", "a\tb\r\nc", "<s></s><unk>",
          "the red cup, the blue cup; the GREEN cup!", "007 0123 99 9"]


def main():
    tok = TK.Tokenizer.from_json(sys.argv[1])
    with open(sys.argv[2]) as f:
        ann = json.load(f)
    texts = sorted(set(D.texts_of(ann)))
    for r in ann["regions"]:
        x, y, w, h = r["bbox"]
        texts.append(D.suffix_text(D.region_question(D.format_box([x, y, x + w, y + h], 256, 192))))
    texts += [D.format_box([x, x // 2, x + 7, 191], 256, 192) for x in range(0, 256)]
    texts = sorted(set(texts)) + STRESS
    tmp = tempfile.mkdtemp(prefix="loupe-tokcheck-")
    g = os.path.join(tmp, "tok.gguf")
    write_tokenizer_only(g, tok)
    exe = os.path.join(tmp, "tokcheck")
    subprocess.run(["cc", "-std=c11", "-O2", "-I", os.path.join(REPO, "include"), "-I", os.path.join(REPO, "core"), "-I", os.path.join(REPO, "language"),
                    os.path.join(HERE, "tokcheck.c"), os.path.join(REPO, "build", "libloupe.a"), "-o", exe,
                    "-lm", "-lopenblas", "-lpthread", "-lpng", "-lcjson"], check=True)
    blob = b"".join(b"%d\n" % len(t.encode()) + t.encode() for t in texts)
    with open(os.path.join(tmp, "texts.bin"), "wb") as f:
        f.write(blob)
    out = subprocess.run([exe, g, os.path.join(tmp, "texts.bin")], check=True, capture_output=True).stdout.decode()
    got = [[int(x) for x in line.split()] for line in out.split("\n")[:-1]]
    assert len(got) == len(texts), (len(got), len(texts))
    bad = 0
    for t, c in zip(texts, got):
        p = tok.encode(t)
        if p != c:
            bad += 1
            if bad <= 5:
                print("MISMATCH %r\n  py %s\n  c  %s" % (t, p, c))
    print("tokenizer check: %d texts, %d mismatches" % (len(texts), bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
