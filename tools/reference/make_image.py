#!/usr/bin/python3
"""Deterministic S×S test picture for the parity fixtures.

Writes PREFIX.rgb (S*S*3 raw bytes, row-major RGB) and PREFIX.png (the same
pixels, for loaders). A gradient background, a red rectangle, a blue disc
and fixed-seed noise, so every patch differs.

  /usr/bin/python3 tools/reference/make_image.py 32 tests/fixtures/parity/image-32
"""
import sys

import numpy as np
from PIL import Image

S, prefix = int(sys.argv[1]), sys.argv[2]
y, x = np.mgrid[0:S, 0:S].astype(np.float64) / max(S - 1, 1)
img = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x) + 60 * y + 20], -1)
img[S // 8:S // 2, S // 6:S * 2 // 3] = [220, 40, 30]
disc = (x - 0.68) ** 2 + (y - 0.7) ** 2 < 0.04
img[disc] = [30, 60, 210]
img += np.random.default_rng(1234).normal(0, 12, img.shape)
img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
img.tofile(prefix + ".rgb")
Image.fromarray(img, "RGB").save(prefix + ".png")
