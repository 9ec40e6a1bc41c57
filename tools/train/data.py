"""Synthetic training data: generate scenes with `loupe synth`, turn them into
(image, prompt, answer) samples exactly as `loupe ask` will present them, and
cache everything as tensors.

Prompt (vicuna, fusion/template.c; the image is spliced at the marker and is
no token, fusion/prompt.c):
    BOS + tok("A chat ... questions. USER: ")      -- the shared prefix
    <image rows>
    tok("\\n" + question + " ASSISTANT:")           -- the suffix
    tok(answer) + EOS                               -- the target (loss only here)
Each text piece is tokenized on its own with SentencePiece's leading space,
as loupe does; the answer is tokenized the same way (so its first token
carries the '▁' the model emits after "ASSISTANT:"; loupe's decoder drops
that leading space when it prints the answer).

Tasks:
  grounding  "What is the location of <expr> in the image?" -> "[x1, y1, x2, y2]"
             (one sample per referring sentence)
  referring  "What is in the region [x1, y1, x2, y2] <region_fea>?" -> "a green clock"
             (one per region; the synthetic generator writes the question as
             "What is in the region <region>?" and <region> becomes Ferret's
             "[box] <region_fea>")
Coordinates: Ferret's int(v * 1000 / size) clipped to 0..999 on the original
image (lp_region_format), box = [x, y, x + w, y + h] from the COCO bbox.

Images: squeezed (no padding, Ferret) to S x S with PIL BICUBIC, stored as
uint8; normalisation with CLIP's mean/std happens in the model input step
exactly as loupe's LP_PREP_SQUASH_PIL does it.
"""

import json
import os
import subprocess

import numpy as np
import torch
from PIL import Image

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
PREFIX_TEXT = SYSTEM + " USER: "
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def q(v, size):
    return min(max(int(v * (1000.0 / size)), 0), 999)


def format_box(box, w, h):
    """box [x1, y1, x2, y2] in pixels -> Ferret's "[a, b, c, d]"."""
    return "[%d, %d, %d, %d]" % (q(box[0], w), q(box[1], h), q(box[2], w), q(box[3], h))


def grounding_question(expr):
    return "What is the location of %s in the image?" % expr


def region_question(box_text):
    return "What is in the region %s <region_fea>?" % box_text


def suffix_text(question):
    return "\n" + question + " ASSISTANT:"


def synth(out_dir, seed, n, loupe=None):
    """Run `loupe synth` (deterministic for seed, n) unless out_dir has it."""
    if os.path.exists(os.path.join(out_dir, "annotations.json")):
        return
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    loupe = loupe or os.path.join(REPO, "build", "loupe")
    subprocess.run([loupe, "synth", "--seed", str(seed), "--n", str(n), "--out", out_dir, "--split", "auto"],
                   check=True)


def squeeze(path, S):
    """PIL BICUBIC stretch to S x S (what LP_PREP_SQUASH_PIL does)."""
    im = Image.open(path).convert("RGB")
    return np.asarray(im.resize((S, S), Image.BICUBIC), dtype=np.uint8), im.size


def normalize(u8):
    """(B, S, S, 3) or (S, S, 3) uint8 tensor -> (B, 3, S, S) f32, as loupe:
    v = f32(u8 * (1/255) in f64), (v - mean) / std in f32."""
    x = (u8.double() * (1.0 / 255.0)).float()
    x = (x - torch.from_numpy(MEAN)) / torch.from_numpy(STD)
    return x.movedim(-1, -3).contiguous()


def texts_of(ann):
    """Every text the vocabulary must cover well."""
    for _ in range(16):   # the fixed prefix: make its words whole tokens
        yield PREFIX_TEXT
    for r in ann["refs"]:
        for s in r["sentences"]:
            yield suffix_text(grounding_question(s["sent"]))
    for g in ann["regions"]:
        yield suffix_text(region_question("[1, 2, 3, 4]"))
        yield g["answer"]
    yield "[1, 2, 3, 4]"


def build_samples(ann_dir, S, tok, cache=None):
    """-> dict with images (N, S, S, 3) uint8, image sizes, image splits and
    per-sample: img, kind (0 grounding, 1 referring), suffix ids, answer ids
    (EOS appended), region box normalized to [0, 1] (referring) and the
    answer box in pixels (grounding), the raw question/answer strings."""
    if cache and os.path.exists(cache):
        return torch.load(cache)
    with open(os.path.join(ann_dir, "annotations.json")) as f:
        ann = json.load(f)
    imgs = ann["images"]
    index = {im["id"]: i for i, im in enumerate(imgs)}
    images = np.zeros((len(imgs), S, S, 3), np.uint8)
    sizes = np.zeros((len(imgs), 2), np.int32)
    for i, im in enumerate(imgs):
        images[i], sz = squeeze(os.path.join(ann_dir, im["file_name"]), S)
        sizes[i] = sz
    boxes = {a["id"]: a["bbox"] for a in ann["annotations"]}
    split_of = ["train"] * len(imgs)
    smp = {"img": [], "kind": [], "suffix": [], "answer": [], "rbox": [], "abox": [], "question": [],
           "answer_text": [], "split": []}

    def add(i, kind, question, answer, rbox, abox, split):
        smp["img"].append(i)
        smp["kind"].append(kind)
        smp["suffix"].append(tok.encode(suffix_text(question)))
        smp["answer"].append(tok.encode(answer) + [tok.eos])
        smp["rbox"].append(rbox)
        smp["abox"].append(abox)
        smp["question"].append(question)
        smp["answer_text"].append(answer)
        smp["split"].append(split)

    for r in ann["refs"]:
        i = index[r["image_id"]]
        split_of[i] = r["split"]
        w, h = sizes[i]
        x, y, bw, bh = boxes[r["ann_id"]]
        box = [x, y, x + bw, y + bh]
        for s in r["sentences"]:
            add(i, 0, grounding_question(s["sent"]), format_box(box, w, h), [0.0] * 4, box, r["split"])
    for g in ann["regions"]:
        i = index[g["image_id"]]
        w, h = sizes[i]
        x, y, bw, bh = g["bbox"]
        box = [x, y, x + bw, y + bh]
        # the region as loupe's --region gives it: the box normalized over the image
        rbox = [x / w, y / h, (x + bw) / w, (y + bh) / h]
        q_ = g["question"].replace("<region>", format_box(box, w, h) + " <region_fea>")
        add(i, 1, q_, g["answer"], rbox, box, g["split"])
    out = {"images": torch.from_numpy(images), "sizes": torch.from_numpy(sizes), "S": S,
           "img_split": split_of, **smp}
    out["rbox"] = torch.tensor(out["rbox"], dtype=torch.float32)
    if cache:
        torch.save(out, cache)
    return out


def kind_weights(ann_path, spec, n_samples, train_idx):
    """spec "ordinal=1.8,size=1.6" (unnamed kinds: 1) -> (weight per sample,
    for grouped_batches; [(kind, expected share of an epoch's training
    samples)]).  A sample's kind is its ref's expression kind ("category",
    "color", "abspos", "relpos", "size", "ordinal") for a grounding
    sentence, "refer" for a region -- in build_samples' order, read from the
    annotations it was built from (ann_path).  ValueError on a malformed
    spec, an unknown kind, or annotations that do not match the samples."""
    want = {}
    for part in filter(None, (t.strip() for t in spec.split(","))):
        k, _, v = part.partition("=")
        if not v or float(v) < 0:
            raise ValueError("%r: want KIND=WEIGHT with WEIGHT >= 0" % part)
        want[k.strip()] = float(v)
    with open(ann_path) as f:
        ann = json.load(f)
    kinds = [r["kind"] for r in ann["refs"] for _ in r["sentences"]] + ["refer"] * len(ann["regions"])
    if len(kinds) != n_samples:
        raise ValueError("%s has %d samples, the cache %d" % (ann_path, len(kinds), n_samples))
    unknown = set(want) - set(kinds)
    if unknown:
        raise ValueError("no such kind %s (have %s)" % (sorted(unknown), sorted(set(kinds))))
    weight = [want.get(k, 1.0) for k in kinds]
    per = {}
    for j in train_idx:
        per[kinds[j]] = per.get(kinds[j], 0.0) + weight[j]
    tot = sum(per.values())
    return weight, [(k, v / tot) for k, v in sorted(per.items())]


def grouped_batches(data, idx, n_per_img, n_img, seed, chunked=False, weight=None):
    """Deterministic batches: the samples idx are grouped by image, shuffled
    within an image and cut into chunks of n_per_img (the ViT then encodes
    each image once per batch); chunks are shuffled and n_img of them form a
    batch.  weight (per sample, indexed like data; None: all 1): an epoch
    holds sample j floor(w) times and once more with probability frac(w),
    drawn afresh each epoch -- so a kind of question can be made a larger
    (w > 1) or smaller (w < 1) share of training than the generator wrote."""
    rng = np.random.RandomState(seed)
    if weight is not None:
        w = np.asarray([weight[j] for j in idx], np.float64)
        n = np.floor(w).astype(np.int64) + (rng.random_sample(len(idx)) < w - np.floor(w))
        idx = [j for j, c in zip(idx, n) for _ in range(c)]
    by_img = {}
    for j in idx:
        by_img.setdefault(data["img"][j], []).append(j)
    chunks = []
    for i in sorted(by_img):
        js = by_img[i]
        js = [js[k] for k in rng.permutation(len(js))]
        chunks += [js[k:k + n_per_img] for k in range(0, len(js), n_per_img)]
    order = rng.permutation(len(chunks))
    chunks = [chunks[k] for k in order]
    if chunked:   # keep each image's questions together (Model.forward_packed rows)
        return [chunks[k:k + n_img] for k in range(0, len(chunks), n_img)]
    return [sum(chunks[k:k + n_img], []) for k in range(0, len(chunks), n_img)]


def rle_points(rle, max_points, rng):
    """COCO uncompressed RLE (column-major, first run background) -> the
    inside pixels as normalized (x / W, y / H) points, the coordinates
    lp_region_sample_points gives a mask region; at most max_points of them
    (a fixed random subset)."""
    h, w = rle["size"]
    idx, pos, val = [], 0, 0
    for run in rle["counts"]:
        if val:
            idx.append(np.arange(pos, pos + run))
        pos += run
        val ^= 1
    idx = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    if len(idx) > max_points:
        idx = idx[np.sort(rng.choice(len(idx), max_points, replace=False))]
    x, y = idx // h, idx % h   # column-major
    return torch.from_numpy(np.stack([x / w, y / h], 1).astype(np.float32))


N_CAT = 12          # sofa .. dog, category_id 1..12
MIN_VISIBLE = 0.3   # objects less visible than this carry no training target


def visible_scenes(ann, ann_dir, S, n_images=None):
    """Yield (W, H, u8 (S, S, 3) squeezed image, [annotations of the objects
    at least MIN_VISIBLE visible]) for the first n_images scenes of a
    `loupe synth` directory whose annotations.json is ann (the held-out
    diagnostics' loop)."""
    by_img = {}
    for o in ann["annotations"]:
        if o.get("visible_fraction", 1) >= MIN_VISIBLE:
            by_img.setdefault(o["image_id"], []).append(o)
    for im in ann["images"][:n_images]:
        u8, (W, H) = squeeze(os.path.join(ann_dir, im["file_name"]), S)
        yield W, H, u8, by_img.get(im["id"], [])


def build_extra(ann_dir, data, cache=None):
    """Training-only targets the exported model never sees:
    objs[i]  (k, 7) float: category 0..11, colour index, box x1 y1 x2 y2
             normalized over the image, visible fraction -- for the dense
             auxiliary heads on the ViT features;
    mask[j]  (m, 2) normalized mask pixels of referring sample j (None for
             grounding samples) -- so referring also trains on mask points."""
    if cache and os.path.exists(cache):
        return torch.load(cache)
    with open(os.path.join(ann_dir, "annotations.json")) as f:
        ann = json.load(f)
    index = {im["id"]: i for i, im in enumerate(ann["images"])}
    colours = sorted({a["color"] for a in ann["annotations"]})
    cid = {c: k for k, c in enumerate(colours)}
    objs = [[] for _ in ann["images"]]
    for a in ann["annotations"]:
        i = index[a["image_id"]]
        w, h = data["sizes"][i].tolist()
        x, y, bw, bh = a["bbox"]
        objs[i].append([a["category_id"] - 1, cid[a["color"]], x / w, y / h, (x + bw) / w, (y + bh) / h,
                        float(a.get("visible_fraction", 1))])
    objs = [torch.tensor(o, dtype=torch.float32).reshape(-1, 7) for o in objs]
    rng = np.random.RandomState(0)
    n_ground = sum(len(r["sentences"]) for r in ann["refs"])
    mask = [None] * n_ground + [rle_points(g["mask"], 512, rng) for g in ann["regions"]]
    assert len(mask) == len(data["img"])
    out = {"objs": objs, "colours": colours, "mask": mask}
    if cache:
        torch.save(out, cache)
    return out
