"""tools/reference/make_photo.py — deterministic test photos of any size for
the InternVL / Qwen2.5-VL parity fixtures: colour gradients, six solid
rectangles and a fine checker (edges for the resizers), as RGB PNG written
with zlib alone (no PIL), PNG filter 1 so the gradients compress.

    /usr/bin/python3 tools/reference/make_photo.py OUTDIR 1280x853 300x200 ...

writes OUTDIR/image-WxH.png; the same size always gives the same bytes."""
import sys, zlib, struct, random
def png(path, w, h, seed):
    rnd = random.Random(seed)
    rects = [(rnd.randrange(w), rnd.randrange(h), rnd.randrange(1, w), rnd.randrange(1, h),
              (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))) for _ in range(6)]
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            r, g, b = (x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), ((x + y) * 7) % 256
            for (rx, ry, rw, rh, c) in rects:
                if rx <= x < rx + rw // 3 and ry <= y < ry + rh // 3: r, g, b = c
            n = 24 if ((x // 7) + (y // 5)) % 2 else 0  # a fine checker: edges for the resizers
            row += bytes((min(255, max(0, r + n)), min(255, max(0, g + n)), min(255, max(0, b + n))))
        sub = bytearray([1]) + bytes((row[i] - (row[i - 3] if i >= 3 else 0)) & 255 for i in range(len(row)))
        rows.append(bytes(sub))  # PNG filter 1 (Sub): gradients compress
    raw = zlib.compress(b"".join(rows), 9)
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                           chunk(b"IDAT", raw) + chunk(b"IEND", b""))
import os
os.makedirs(sys.argv[1], exist_ok=True)
for spec in sys.argv[2:]:
    w, h = map(int, spec.split("x"))
    png("%s/image-%dx%d.png" % (sys.argv[1], w, h), w, h, w * 7919 + h)
