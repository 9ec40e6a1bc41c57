#!/usr/bin/python3
"""Generate the image fixtures for tests/test_image.c.

Run from the repository root with Debian's Python, which has PIL and numpy:

    /usr/bin/python3 tools/make_image_fixtures.py

Writes tests/fixtures/images/ (format samples, broken files, resize sources
with Pillow's BILINEAR/BICUBIC outputs, and resize_cases.txt listing them)
and tests/fuzz/seeds/image/ (tiny valid files of every format). Output is
deterministic (fixed seed), so re-running only changes files when Pillow's
behaviour or this script changes. The resize references are what loupe's
lp_image_resize must reproduce byte for byte.
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "images")
SEEDS = os.path.join(ROOT, "tests", "fuzz", "seeds", "image")
rng = np.random.default_rng(20240611)


def save(img, name, **kw):
    img.save(os.path.join(OUT, name), **kw)


def noise(w, h):
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def structured(w, h):
    """Gradients, hard edges and a noisy patch: compresses well in PNG but
    still puts every rounding case of the filters to work."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = (x * 255.0 / max(w - 1, 1))
    g = (y * 255.0 / max(h - 1, 1))
    b = 127.5 + 127.5 * np.sin(x / 7.0) * np.cos(y / 11.0)
    a = np.stack([r, g, b], axis=-1)
    checker = ((x // 16 + y // 16) % 2 == 0)
    a[checker & (x > w / 2)] = [250, 5, 128]
    cy, cx, rad = h * 0.6, w * 0.3, min(w, h) * 0.2
    a[(x - cx) ** 2 + (y - cy) ** 2 < rad ** 2] = [0, 0, 0]
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    ph, pw = max(1, h // 6), max(1, w // 6)
    a[:ph, :pw] = rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def palette_blocks(w, h):
    """At most 8 colours, so GIF stores it losslessly."""
    colours = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0],
                        [0, 0, 255], [255, 255, 0], [0, 255, 255], [128, 64, 32]], np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(colours[(x // 2 + 3 * (y // 3)) % 8], "RGB")


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)


def png_header_only(w, h):
    """A PNG whose IHDR declares w x h (valid CRC) followed by an empty IEND:
    enough for a header check, nothing to decode."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(SEEDS, exist_ok=True)

    # ---- format samples: the same 12x9 8-colour picture in every format ----
    base = palette_blocks(12, 9)
    save(base, "tiny.png")
    save(base, "tiny.bmp")
    save(base, "tiny.tga")
    save(base, "tiny.gif")
    save(base, "tiny.jpg", quality=95)
    with open(os.path.join(OUT, "tiny_jpg_pil.rgb"), "wb") as f:  # libjpeg's decode, for comparison
        f.write(Image.open(os.path.join(OUT, "tiny.jpg")).convert("RGB").tobytes())
    save(base, "tiny.ppm")
    # Alpha is dropped (PIL convert("RGB")); grey is replicated.
    rgba = base.convert("RGBA")
    alpha = np.array(rgba)
    alpha[..., 3] = np.arange(12 * 9, dtype=np.uint8).reshape(9, 12) * 2
    save(Image.fromarray(alpha, "RGBA"), "tiny_rgba.png")
    save(base.convert("L"), "tiny_gray.png")
    with open(os.path.join(OUT, "tiny_gray.raw"), "wb") as f:  # reference grey levels
        f.write(base.convert("L").tobytes())
    save(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "tiny_palette.png")
    with open(os.path.join(OUT, "tiny_palette.rgb"), "wb") as f:
        f.write(Image.open(os.path.join(OUT, "tiny_palette.png")).convert("RGB").tobytes())
    with open(os.path.join(OUT, "tiny.rgb"), "wb") as f:  # reference pixels
        f.write(base.tobytes())

    # ---- broken and hostile files ----
    buf = io.BytesIO()
    noise(32, 32).save(buf, "PNG")
    data = buf.getvalue()
    with open(os.path.join(OUT, "truncated.png"), "wb") as f:
        f.write(data[: len(data) * 6 // 10])
    buf = io.BytesIO()
    noise(32, 32).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with open(os.path.join(OUT, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(OUT, "huge_100000x100000.png"), "wb") as f:
        f.write(png_header_only(100000, 100000))
    with open(os.path.join(OUT, "huge_33554432x1.png"), "wb") as f:  # past stb's own 2^24 cap
        f.write(png_header_only(1 << 25, 1))
    with open(os.path.join(OUT, "huge_16384x16384.png"), "wb") as f:  # per side ok, too many pixels
        f.write(png_header_only(16384, 16384))
    # stb_image 2.27 overruns a Huffman table whose code counts sum past 256
    # (loupe screens for it): one in the header, one after the last scan.
    bad_dht = b"\xff\xc4\x00\x13\x00" + b"\xff" * 16
    with open(os.path.join(OUT, "bad_dht_header.jpg"), "wb") as f:
        f.write(b"\xff\xd8" + bad_dht + b"\xff\xd9")
    buf = io.BytesIO()
    palette_blocks(12, 9).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    assert data.endswith(b"\xff\xd9")
    with open(os.path.join(OUT, "bad_dht_after_scan.jpg"), "wb") as f:
        f.write(data[:-2] + bad_dht + b"\xff\xd9")
    with open(os.path.join(OUT, "not_an_image.png"), "wb") as f:
        f.write(b"this is plain text, not a PNG\n")

    # ---- resize references ----
    sources = {
        "noise_37x23": noise(37, 23),
        "struct_640x427": structured(640, 427),
        "noise_5x300": noise(5, 300),
        "noise_100x75": noise(100, 75),
        "noise_64x48": noise(64, 48),
        "noise_1x1": noise(1, 1),
        "struct_301x199": structured(301, 199),
    }
    cases = [
        ("noise_37x23", 224, 224),     # upscale, non-integer ratios
        ("struct_640x427", 336, 336),  # downscale, different ratio per axis
        ("noise_5x300", 64, 64),       # up in x, down in y
        ("noise_100x75", 61, 97),      # down in x, up in y, odd sizes
        ("noise_64x48", 64, 100),      # vertical pass only
        ("noise_64x48", 29, 48),       # horizontal pass only
        ("noise_1x1", 7, 5),           # single pixel
        ("struct_301x199", 96, 64),    # ~3x reduction: wide kernels
        ("struct_301x199", 2, 1),      # extreme reduction
    ]
    for name, img in sources.items():
        save(img, f"src_{name}.png")
    lines = ["# source expected-width expected-height filter expected-file (written by tools/make_image_fixtures.py)"]
    for name, w, h in cases:
        for fname, filt in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
            out = sources[name].resize((w, h), filt)
            exp = f"pil_{name}_to_{w}x{h}_{fname}.png"
            save(out, exp)
            lines.append(f"src_{name}.png {w} {h} {fname} {exp}")
    with open(os.path.join(OUT, "resize_cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

    # ---- fuzz seeds: tiny valid files of each format stb reads ----
    seed = palette_blocks(4, 3)
    for ext, kw in (("png", {}), ("jpg", {"quality": 90}), ("bmp", {}), ("gif", {}), ("tga", {})):
        seed.save(os.path.join(SEEDS, f"tiny.{ext}"), **kw)
    seed.convert("RGBA").save(os.path.join(SEEDS, "tiny_rgba.png"))
    seed.convert("P").save(os.path.join(SEEDS, "tiny_palette.png"))
    seed.convert("L").save(os.path.join(SEEDS, "tiny_gray.jpg"), quality=90)
    seed.save(os.path.join(SEEDS, "tiny_progressive.jpg"), quality=90, progressive=True)
    seed.save(os.path.join(SEEDS, "tiny_rle.tga"), compression="tga_rle")
    seed.convert("P").save(os.path.join(SEEDS, "tiny_8bit.bmp"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(os.listdir(OUT))} files, {total} bytes in {OUT}")
    if total > 1 << 20:
        print("fixtures exceed 1 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
