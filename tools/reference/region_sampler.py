#!/usr/bin/python3
"""loupe's spatial-aware visual sampler (Ferret's GeoRegionSampler), in PyTorch.

One module serves two purposes:
  * the parity reference for fusion/region_sampler.c (tests/test_region_sampler.c
    reads the fixtures this file writes when run as a script), and
  * the layer the training script imports (RegionSampler is a plain
    nn.Module, batched, differentiable; export_gguf() writes its weights and
    hyper-parameters into an mmproj GGUF under loupe's names).

What it computes (Ferret, apple/ml-ferret ferret/model/ferret_arch.py,
GeoRegionSampler.forward, re-derived; loupe's deterministic choices marked *):

  points    (B, P, 2) normalized (x, y) in [0, 1], given by the caller. Ferret
            draws them at random from the region mask every call
            (rand_sample_repeat); loupe draws them with its own seeded sampler
            (sample_points_box / sample_points_mask below, mirrored exactly
            by lp_region_sample_points), and the module takes them as input.
  features  bilinear samples of the (n_side, n_side, C) patch grid at the
            points: F.grid_sample(align_corners=True, zero padding) in f32,
            the point p mapping to grid coordinate p * (n_side - 1).
            With ferret_transpose=True x and y are swapped before sampling,
            which is what Ferret's mask layout + flip do (see README).
  stages    for each stage s (sub_points[s] anchors, neighbors[s] neighbours):
              fps     farthest-point sampling on the xy of the current points:
                      * start at index 0 (Ferret: random); squared Euclidean
                      distance in xy only, dx*dx + dy*dy in f32; ties go to
                      the lowest index.
              knn     the neighbors[s] points nearest each anchor (xy only,
                      the anchor itself included): * exact dx*dx + dy*dy and
                      a stable ascending sort, ties to the lower index
                      (Ferret: the |a|²+|b|²−2ab expansion and an unsorted
                      topk, whose tie order is unspecified).
              diff    Linear(C+2 -> C+2) on [f_nb − f_anchor, xy_nb − xy_anchor]
              gather  concat [diff, f_anchor, xy_anchor] -> 2(C+2)
              agg     Linear(2(C+2) -> C) (Ferret's 1×1 Conv1d), ReLU,
                      LayerNorm(C, eps 1e-5) — in that order
              pool    max (Ferret's released models) or mean over neighbours
            the anchors' xy and the pooled (S, C) features feed the next stage
  flatten   the last stage's (S_last, C) features row-major -> S_last*C
            -> Linear(S_last*C -> C) -> Linear(C -> out_dim), no activation
            between or after: one embedding, which replaces the <region_fea>
            token's embedding in the prompt.

GGUF (export_gguf; fusion/region_sampler.h documents the same):
  mm.region.{s}.diff.weight   (C+2, C+2)      ne [C+2, C+2]    + .bias
  mm.region.{s}.agg.weight    (C, 2(C+2))     ne [2(C+2), C]   + .bias
  mm.region.{s}.norm.weight   (C)                              + .bias
  mm.region.flatten.weight    (C, S_last*C)                    + .bias
  mm.region.proj.weight       (out, C)                         + .bias
  clip.vision.region.num_points u32, .sub_points [i32], .neighbors [i32],
  .input_dim u32, .output_dim u32, .pooler str ("max"|"mean"),
  .layer_norm_epsilon f32, .ferret_transpose bool

Run as a script it writes the parity fixtures (see tests/fixtures/README.md):
  /usr/bin/python3 tools/reference/region_sampler.py tests/fixtures/region
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_reader import GGUFWriter  # noqa: E402

KEY = "clip.vision.region."
PREFIX = "mm.region"
REGION_TOKEN = "<region_fea>"

# ----------------------------------------------------------------------------
# seeded point sampling (mirrored bit for bit by lp_region_sample_points)

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):          # integer in [0, n)
        return self.next() % n

    def unit(self):              # f32 in [0, 1): 24 random bits
        return np.float32((self.next() >> 40) * (1.0 / (1 << 24)))


def sample_points_box(box, n, seed):
    """box (x1, y1, x2, y2) normalized, clipped to [0, 1] (one that misses
    the unit square or has x2 < x1 / y2 < y1 is an error); (n, 2) f32 points,
    x = x1 + u * (x2 - x1) in f32, u drawn for x then for y, point by point."""
    b = np.asarray(box, dtype=np.float32)
    if not np.all(np.isfinite(b)) or b[2] < b[0] or b[3] < b[1]:
        raise ValueError("bad box")
    if b[0] > 1 or b[2] < 0 or b[1] > 1 or b[3] < 0:
        raise ValueError("box lies outside the image")
    b = np.clip(b, np.float32(0), np.float32(1))
    x1, y1, x2, y2 = (np.float32(v) for v in b)
    r = SplitMix64(seed)
    out = np.empty((n, 2), dtype=np.float32)
    wx, wy = np.float32(x2 - x1), np.float32(y2 - y1)
    for i in range(n):
        ux = r.unit()
        uy = r.unit()
        out[i, 0] = np.float32(x1 + np.float32(ux * wx))
        out[i, 1] = np.float32(y1 + np.float32(uy * wy))
    return out


def sample_points_mask(mask, n, seed):
    """mask (h, w), nonzero = inside. Pixels in row-major order; n of them
    chosen without replacement by selection sampling (all of them plus
    uniform repeats when fewer than n), then Fisher-Yates shuffled. A pixel
    (x, y) becomes the point (x / w, y / h) in f32, as Ferret's
    nonzero() / (w, h)."""
    mask = np.asarray(mask)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)            # row-major order
    c = len(xs)
    if c == 0:
        raise ValueError("empty mask")
    r = SplitMix64(seed)
    if c >= n:
        pick = []
        for j in range(c):
            if len(pick) == n:
                break
            if r.below(c - j) < n - len(pick):
                pick.append(j)
    else:
        pick = list(range(c)) + [r.below(c) for _ in range(n - c)]
    for i in range(n - 1, 0, -1):
        j = r.below(i + 1)
        pick[i], pick[j] = pick[j], pick[i]
    pick = np.asarray(pick, dtype=np.int64)
    out = np.empty((n, 2), dtype=np.float32)
    out[:, 0] = xs[pick].astype(np.float32) / np.float32(w)
    out[:, 1] = ys[pick].astype(np.float32) / np.float32(h)
    return out


# ----------------------------------------------------------------------------
# geometry


def farthest_point_sample(xy, n):
    """xy (B, M, 2) -> (B, n) long. Start at 0; first index wins ties."""
    B, M, _ = xy.shape
    ar = torch.arange(M, device=xy.device).expand(B, M)
    rows = torch.arange(B, device=xy.device)
    idx = torch.zeros(B, n, dtype=torch.long, device=xy.device)
    best = torch.full((B, M), 1e10, dtype=xy.dtype, device=xy.device)
    cur = torch.zeros(B, dtype=torch.long, device=xy.device)
    for i in range(n):
        idx[:, i] = cur
        d = xy - xy[rows, cur].unsqueeze(1)             # (B, M, 2)
        d = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]
        best = torch.minimum(best, d)
        top = best.max(dim=-1, keepdim=True).values
        cur = torch.where(best == top, ar, torch.full_like(ar, M)).min(dim=-1).values
    return idx


def knn(xy, anchors, k):
    """xy (B, M, 2), anchors (B, S, 2) -> (B, S, k) long, nearest first,
    equal distances in index order."""
    d = xy.unsqueeze(1) - anchors.unsqueeze(2)          # (B, S, M, 2)
    d = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]
    return torch.sort(d, dim=-1, stable=True).indices[..., :k]


def gather(x, idx):
    """x (B, M, D), idx (B, ...) -> (B, ..., D)."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def bilinear_sample(fmap, xy, ferret_transpose=False):
    """fmap (B, n, n, C) row-major patch grid, xy (B, P, 2) in [0, 1]
    -> (B, P, C), F.grid_sample(align_corners=True) in f32."""
    grid = (2.0 * xy.float() - 1.0)
    if ferret_transpose:
        grid = grid.flip(-1)
    inp = fmap.float().permute(0, 3, 1, 2)              # (B, C, n, n)
    out = F.grid_sample(inp, grid.unsqueeze(2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(3).transpose(1, 2)               # (B, P, C)


# ----------------------------------------------------------------------------
# the module


class RegionStage(nn.Module):
    def __init__(self, dim, n_sub, n_nb, pooler, eps):
        super().__init__()
        self.n_sub, self.n_nb, self.pooler = n_sub, n_nb, pooler
        self.diff = nn.Linear(dim + 2, dim + 2)
        self.agg = nn.Linear(2 * (dim + 2), dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, xy, fea, trace=None, tag=""):
        # xy (B, M, 2), fea (B, M, C)
        fps = farthest_point_sample(xy, self.n_sub)              # (B, S)
        a_xy, a_fea = gather(xy, fps), gather(fea, fps)           # (B, S, 2), (B, S, C)
        nb = knn(xy, a_xy, self.n_nb)                             # (B, S, K)
        anchor = torch.cat([a_fea, a_xy], dim=-1).unsqueeze(2)    # (B, S, 1, C+2)
        local = torch.cat([gather(fea, nb), gather(xy, nb)], -1)  # (B, S, K, C+2)
        diff = self.diff(local - anchor)                          # (B, S, K, C+2)
        g = torch.cat([diff, anchor.expand_as(diff)], dim=-1)     # (B, S, K, 2(C+2))
        h = self.norm(F.relu(self.agg(g)).to(fea.dtype))          # (B, S, K, C); bf16 -> fea.dtype under autocast
        out = h.max(dim=2).values if self.pooler == "max" else h.mean(dim=2)  # (B, S, C)
        if trace is not None:
            trace[tag + "fps"] = fps
            trace[tag + "knn"] = nb
            trace[tag + "diff"] = diff
            trace[tag + "agg"] = h
            trace[tag + "out"] = out
        return a_xy, out


class RegionSampler(nn.Module):
    def __init__(self, input_dim, output_dim, num_points=512, sub_points=(128, 32), neighbors=(24, 24),
                 pooler="max", ferret_transpose=False, eps=1e-5):
        super().__init__()
        assert len(sub_points) == len(neighbors) >= 1 and pooler in ("max", "mean")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.num_points = num_points
        self.sub_points, self.neighbors = list(sub_points), list(neighbors)
        self.pooler, self.ferret_transpose, self.eps = pooler, ferret_transpose, eps
        self.stages = nn.ModuleList(RegionStage(input_dim, s, k, pooler, eps) for s, k in zip(sub_points, neighbors))
        self.flatten = nn.Linear(input_dim * sub_points[-1], input_dim)
        self.proj = nn.Linear(input_dim, output_dim)

    def forward(self, fmap, points, trace=None):
        """fmap (B, n, n, C) or (B, n*n, C); points (B, P, 2) -> (B, out_dim).
        trace: a dict to receive every intermediate (names as the C dump)."""
        if fmap.dim() == 3:
            n = int(round(math.sqrt(fmap.shape[1])))
            fmap = fmap.reshape(fmap.shape[0], n, n, fmap.shape[2])
        xy = points.float()
        fea = bilinear_sample(fmap, xy, self.ferret_transpose).to(self.flatten.weight.dtype)
        if trace is not None:
            trace["point_fea"] = fea
        xy = xy.to(fea.dtype)
        for s, stage in enumerate(self.stages):
            xy, fea = stage(xy, fea, trace, f"{s}.")
        x = self.flatten(fea.flatten(1))                          # (B, C)
        if trace is not None:
            trace["flatten"] = x
        y = self.proj(x)                                          # (B, out)
        if trace is not None:
            trace["out"] = y
        return y

    # ---- GGUF ----
    def export_gguf(self, w, prefix=PREFIX):
        """Add metadata and f32 tensors to a gguf_reader.GGUFWriter."""
        w.add_u32(KEY + "num_points", self.num_points)
        w.add_arr_i32(KEY + "sub_points", self.sub_points)
        w.add_arr_i32(KEY + "neighbors", self.neighbors)
        w.add_u32(KEY + "input_dim", self.input_dim)
        w.add_u32(KEY + "output_dim", self.output_dim)
        w.add_str(KEY + "pooler", self.pooler)
        w.add_f32(KEY + "layer_norm_epsilon", self.eps)
        w.add_bool(KEY + "ferret_transpose", self.ferret_transpose)
        for name, t in self.gguf_tensors(prefix).items():
            w.add_tensor(name, t)

    def gguf_tensors(self, prefix=PREFIX):
        """{gguf name: f32 numpy array}; numpy shape (out, in) = ggml ne [in, out]."""
        out = {}

        def put(name, lin):
            out[f"{prefix}.{name}.weight"] = lin.weight.detach().float().cpu().numpy()
            out[f"{prefix}.{name}.bias"] = lin.bias.detach().float().cpu().numpy()

        for s, st in enumerate(self.stages):
            put(f"{s}.diff", st.diff)
            put(f"{s}.agg", st.agg)
            put(f"{s}.norm", st.norm)
        put("flatten", self.flatten)
        put("proj", self.proj)
        return out

    def load_ferret_state_dict(self, sd, prefix="model.region_geo_sampler."):
        """Copy weights from a Ferret checkpoint (GeoRegionSampler names; the
        agg 1×1 Conv1d weight (C, 2(C+2), 1) is squeezed). Ferret checkpoints
        also need ferret_transpose=True and pooler="max"."""
        own = {}
        for s in range(len(self.stages)):
            own[f"stages.{s}.diff.weight"] = sd[f"{prefix}diff_projector_list.{s}.weight"]
            own[f"stages.{s}.diff.bias"] = sd[f"{prefix}diff_projector_list.{s}.bias"]
            own[f"stages.{s}.agg.weight"] = sd[f"{prefix}agg_projector_list.{s}.net.0.weight"].squeeze(-1)
            own[f"stages.{s}.agg.bias"] = sd[f"{prefix}agg_projector_list.{s}.net.0.bias"]
            own[f"stages.{s}.norm.weight"] = sd[f"{prefix}agg_projector_list.{s}.norm.weight"]
            own[f"stages.{s}.norm.bias"] = sd[f"{prefix}agg_projector_list.{s}.norm.bias"]
        for mine, theirs in (("flatten", "flatten_projector"), ("proj", "dim_projector")):
            own[f"{mine}.weight"] = sd[f"{prefix}{theirs}.weight"]
            own[f"{mine}.bias"] = sd[f"{prefix}{theirs}.bias"]
        self.load_state_dict(own)


def format_box(box, img_w, img_h):
    """Ferret's region text for a box in original pixels:
    int(v * 1000 / size) clipped to 0..999."""
    def q(v, size):
        return min(max(int(v * (1000.0 / size)), 0), 999)
    return "[%d, %d, %d, %d]" % (q(box[0], img_w), q(box[1], img_h), q(box[2], img_w), q(box[3], img_h))


# ----------------------------------------------------------------------------
# fixtures


def _randomize(m, gen):
    # larger-than-default weights so every layer moves the output visibly
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(max(p.shape[-1], 1))) * 2.0)
        for st in m.stages:
            st.norm.weight.copy_(1.0 + 0.2 * torch.randn(st.norm.weight.shape, generator=gen))
            st.norm.bias.copy_(0.1 * torch.randn(st.norm.bias.shape, generator=gen))


def _dump(w, tag, trace, full):
    for name, t in trace.items():
        if not full and name.split(".")[-1] in ("diff", "agg"):
            continue
        a = t.detach()[0].cpu().numpy()
        w.add_tensor(f"{tag}.{name}", a.astype(np.int32) if a.dtype == np.int64 else a.astype(np.float32))


def _ellipse_mask(h, w, cx, cy, rx, ry):
    ys, xs = np.mgrid[0:h, 0:w]
    return (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0).astype(np.int32)


def make_config(out_dir, name, seed, C, out_dim, n_side, cfg, cases):
    gen = torch.Generator().manual_seed(seed)
    m = RegionSampler(C, out_dim, **cfg)
    _randomize(m, gen)
    wm = GGUFWriter()
    wm.add_str("general.architecture", "clip")
    wm.add_str("general.description", "loupe region-sampler parity fixture (random weights)")
    m.export_gguf(wm)
    wm.write(os.path.join(out_dir, f"{name}-mmproj.gguf"))

    fmap = torch.randn(1, n_side, n_side, C, generator=gen)
    wr = GGUFWriter()
    wr.add_u32("ref.n_side", n_side)
    wr.add_tensor("input.features", fmap[0].reshape(n_side * n_side, C).numpy())
    for tag, kind, region, pseed, full in cases:
        if kind == "box":
            pts = sample_points_box(region, m.num_points, pseed)
            wr.add_tensor(f"{tag}.box", np.asarray(region, dtype=np.float32))
        else:
            pts = sample_points_mask(region, m.num_points, pseed)
            wr.add_tensor(f"{tag}.mask", region.astype(np.int32))
        wr.add_u32(f"{tag}.seed", pseed)
        wr.add_tensor(f"{tag}.points", pts)
        trace = {}
        with torch.no_grad():
            m(fmap, torch.from_numpy(pts)[None], trace)
        _dump(wr, tag, trace, full)
    wr.write(os.path.join(out_dir, f"{name}-ref.gguf"))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/region"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    # Ferret's geometry (512 points, [128, 32] anchors, [24, 24] neighbours,
    # max pooling) on a small feature width.
    make_config(out_dir, "ferret", 1234, C=16, out_dim=24, n_side=8,
                cfg=dict(num_points=512, sub_points=(128, 32), neighbors=(24, 24), pooler="max"),
                cases=[("box", "box", (0.2, 0.3, 0.7, 0.9), 7, True),
                       ("mask", "mask", _ellipse_mask(30, 40, 22.0, 14.0, 16.0, 12.0), 11, False),
                       ("small", "mask", _ellipse_mask(30, 40, 5.0, 25.0, 2.5, 2.0), 3, False)])
    # Another geometry: mean pooling, Ferret's x/y transposition, 3 stages.
    make_config(out_dir, "mean", 99, C=12, out_dim=20, n_side=7,
                cfg=dict(num_points=200, sub_points=(64, 16, 8), neighbors=(16, 8, 4), pooler="mean",
                         ferret_transpose=True),
                cases=[("box", "box", (-0.1, 0.25, 0.6, 1.2), 5, False)])


if __name__ == "__main__":
    main()
