#!/usr/bin/python3
"""Train the low-rank FFN sparsity predictor of a flash decoder offline
(LLM in a flash, Alizadeh et al. 2023, section 3.1) and write it as the
predictor file `loupe convert --flash ... --predictor-file` reads
(language/flash_format.h).

Usage (Debian's python3 with python3-torch and python3-numpy):

  /usr/bin/python3 tools/flash/train_predictor.py models/loupe-tiny.gguf --out /tmp/pred.gguf --rank 16
  build/loupe convert --flash models/loupe-tiny.gguf /tmp/tiny-flash-lowrank.gguf --predictor-file /tmp/pred.gguf
  build/loupe ask --sparsity 0.5 -m /tmp/tiny-flash-lowrank.gguf --mmproj models/loupe-tiny-mmproj.gguf \\
      models/example/images/000001.png "What is the location of the bed in the image?"

  For the shipped tiny model, train on what it sees when it answers (better;
  see "Which tokens" below), from a fresh synthetic set:
  build/loupe synth --seed 4242 --n 300 --out /tmp/predtrain
  /usr/bin/python3 tools/flash/train_predictor.py models/loupe-tiny.gguf --out /tmp/pred.gguf --rank 16 \\
      --grounding /tmp/predtrain --mmproj models/loupe-tiny-mmproj.gguf --max-seq 2000

Sequences to collect activations on (one of):
  --tokens FILE      one sequence per line, space-separated token ids (used as given)
  --texts FILE       one text per line, tokenized with the model's own vocabulary
                     (tokenizer.ggml.* keys, or --tokenizer JSON from tools/train);
                     a literal \\n in a line stands for a newline; BOS is added when
                     tokenizer.ggml.add_bos_token says so
  --grounding DIR    a `loupe synth` directory (annotations.json, images/) and
                     --mmproj: every referring sentence as `loupe ask` presents it
                     (tools/train/data.py: BOS + system prefix, the image rows from
                     the mmproj's ViT and projector, "\\n<question> ASSISTANT:"),
                     followed by the ground-truth answer; only the answer tokens are
                     used (the ones `loupe ask` feeds back one at a time)
  default            --n-seq random sequences of --seq-len normal-type token ids
                     (after a BOS), from --seed
Other options: --keep 0.5 --rank 32 --steps 300 --lr 3e-3 --batch 1024 --seed 1
  --weight mag|none (BCE term weights, below), --threads 1,
  --max-seq N (use N sequences of a file, chosen with --seed), --holdout 0.2,
  --type f32|f16 (the factors' type in the file; loupe stores them as f16 anyway),
  --eval PRED.gguf (no training: report a predictor file's held-out recall on
  these sequences, e.g. one trained on other data; pass --rank for the svd
  baseline's rank).

What it does, per layer L of a llama-architecture decoder GGUF (F32, F16,
Q8_0 or Q4_0 weights, read with tools/reference/gguf_reader.py; the decoder
and ViT math is tools/reference/llava_reference.py's, run here in float32):

  x    (N, n_embd)  the FFN input after ffn_norm, for every token used
  h    (N, n_ff)    the true neuron outputs h_i = silu(gate_i . x) * (up_i . x)
  y    (N, n_ff)    labels: neuron i is active for a token when |h_i| is among the
                    k = round(keep * n_ff) largest of that token's |h| in that layer
                    (the set the decoder's top-k selection wants to find)
  A    (rank, n_embd), B (n_ff, rank): logits s = B (A x), trained with
       BCE-with-logits against y (pos_weight (n_ff - k) / k balances the classes;
       with --weight mag, the default, each term also weighs 1 + |h_i| / mean |h|
       of its token, so that missing a neuron that contributes much costs more
       than missing a marginal one), Adam on CPU, minibatches of tokens, seeded;
       initialised from the truncated SVD of ffn_gate (A = S_r V_r^T, B = U_r:
       s starts as the svd predictor's estimate of the gate pre-activations)

The decoder reads a "lowrank" predictor's s_i as they are (top k, or s_i >=
threshold); the "svd" predictor is ranked by |silu(s_i)|. The report compares
both at the same rank on held-out tokens (~20%: whole groups of sequences,
a group being an image for --grounding and a sequence otherwise, in a seeded
shuffled order), with the factors rounded to f16 as the flash file stores
them:

  recall = |predicted top-k  intersect  true top-k| / k, averaged over tokens
  error  = ||down (h * selected) - down h|| / ||down h||, averaged over tokens
           (what the skipped neurons cost the FFN output; recall counts a
           marginal neuron as much as a large one)

Which tokens. `loupe ask` computes the prompt densely (prefill) and applies
the predictor only to the tokens it generates, each fed back alone; their FFN
inputs depend on the image rows before them. A predictor trained on other
tokens can be worse there than the training-free svd predictor even when it
beats it on its own kind of tokens. Measured on the tiny model at rank 16,
keep 0.5: trained on random tokens, held-out random tokens recall 0.81 /
error 0.048 against svd's 0.72 / 0.086, but on grounding answer tokens 0.61 /
0.20 against svd's 0.72 / 0.081; and `loupe eval` at --sparsity 0.5 on 1000
held-out synthetic samples gave the dense model's exact answer 12% of the
time (svd: 59%), trained on prompt texts without images 35%, trained with
--grounding 70% (53% with --weight none). So train on --grounding (or on
token files of real prompts and answers) for the model's actual use.

A token whose whole prefix (itself included) came before, e.g. the system
prompt every text shares, is used once: the decoder is causal, so its
activations would be exact duplicates.

Output GGUF: blk.L.ffn_pred_a (ne [n_embd, rank]) and blk.L.ffn_pred_b (ne
[rank, n_ff]) for every layer, loupe.flash.predictor = "lowrank",
general.architecture copied, and loupe.flash.train.* keys recording how it
was made (loupe ignores them).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
import gguf_reader as GR  # noqa: E402
import llava_reference as LR  # noqa: E402

# The reference runs in float64 (for parity fixtures); activations for a
# predictor need no such precision, and float32 halves memory and time.
# Its module-level DT and T() are read at call time, so setting them here
# switches the whole decoder and ViT.
LR.DT = torch.float32
LR.T = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))

TYPE_NORMAL = 1  # tokenizer.ggml.token_type of ordinary vocabulary pieces


# ---------------------------------------------------------------- sequences
#
# A sequence is (segments, first, group): segments a list of token-id lists
# and ("image", i) markers (image i's rows), `first` the index of the first
# segment whose positions are used (earlier ones are context only), `group`
# what the held-out split keeps together.

def read_token_file(path, n_vocab):
    seqs = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            ids = [int(t) for t in line.split()]
            bad = [t for t in ids if not 0 <= t < n_vocab]
            if bad:
                raise SystemExit(f"{path}:{ln}: token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})")
            seqs.append(([ids], 0, len(seqs)))
    return seqs


def tokenizer_for(reader, json_path):
    import tokenizer as TK  # tools/train/tokenizer.py: loupe's SentencePiece-style encoder
    if json_path:
        return TK.Tokenizer.from_json(json_path)
    kv = reader.kv
    if kv.get("tokenizer.ggml.model") != "llama" or "tokenizer.ggml.tokens" not in kv:
        raise SystemExit(f"{reader.path}: needs a SentencePiece (tokenizer.ggml.model = llama) vocabulary "
                         "in the file, or --tokenizer JSON")
    return TK.Tokenizer(kv["tokenizer.ggml.tokens"], [float(s) for s in kv["tokenizer.ggml.scores"]],
                        [int(t) for t in kv["tokenizer.ggml.token_type"]])


def read_text_file(path, reader, tok):
    add_bos = bool(reader.kv.get("tokenizer.ggml.add_bos_token", True))
    seqs = []
    with open(path) as f:
        for line in f:
            text = line.rstrip("\n").replace("\\n", "\n")
            if text.strip():
                seqs.append(([tok.encode(text, add_bos=add_bos)], 0, len(seqs)))
    return seqs


def random_sequences(reader, n_vocab, n_seq, seq_len, seed):
    """n_seq sequences of seq_len ids drawn uniformly from the normal-type
    tokens (all ids when the file has no token types), each after a BOS."""
    kv = reader.kv
    types = kv.get("tokenizer.ggml.token_type")
    pool = np.arange(n_vocab)
    if types is not None and len(types) == n_vocab:
        normal = pool[np.asarray(types) == TYPE_NORMAL]
        if len(normal):
            pool = normal
    rng = np.random.default_rng(seed)
    bos = kv.get("tokenizer.ggml.bos_token_id")
    head = [int(bos)] if bos is not None and kv.get("tokenizer.ggml.add_bos_token", True) else []
    return [([head + [int(t) for t in rng.choice(pool, size=seq_len)]], 0, i) for i in range(n_seq)]


def grounding_sequences(ann_dir, tok):
    """Every referring sentence of a `loupe synth` set as tools/train/data.py
    builds its training samples (the prompt `loupe ask` makes), answer last;
    and the image files."""
    import data as D  # tools/train/data.py (PIL)
    with open(os.path.join(ann_dir, "annotations.json")) as f:
        ann = json.load(f)
    images = ann["images"]
    index = {im["id"]: i for i, im in enumerate(images)}
    boxes = {a["id"]: a["bbox"] for a in ann["annotations"]}
    prefix = [tok.bos] + tok.encode(D.PREFIX_TEXT)
    seqs = []
    for r in ann["refs"]:
        i = index[r["image_id"]]
        w, h = images[i]["width"], images[i]["height"]
        x, y, bw, bh = boxes[r["ann_id"]]
        answer = tok.encode(D.format_box([x, y, x + bw, y + bh], w, h))
        for s in r["sentences"]:
            suffix = tok.encode(D.suffix_text(D.grounding_question(s["sent"])))
            seqs.append(([prefix, ("image", i), suffix, answer], 3, i))
    return seqs, [os.path.join(ann_dir, im["file_name"]) for im in images]


class ImageRows:
    """Projected image rows (n_img_rows, n_embd) per image, computed once:
    squeezed to the ViT's size with PIL bicubic and normalized as loupe's
    squash preprocessing does (tools/train/data.py), then the ViT (all
    blocks, class token first: loupe's default PyTorch semantics) and the
    mlp projector of tools/reference/llava_reference.py."""

    def __init__(self, mmproj_path, files):
        import data as D
        self.D, self.files, self.cache = D, files, {}
        self.r = GR.GGUFReader(mmproj_path)
        self.mm = LR.Weights(self.r)
        self.S = int(self.r.kv["clip.vision.image_size"])

    def __call__(self, i):
        if i not in self.cache:
            u8, _ = self.D.squeeze(self.files[i], self.S)
            pixels = self.D.normalize(torch.from_numpy(np.array(u8))).numpy()
            self.cache[i] = LR.vit(self.mm, self.r.kv, pixels, "hf", LR.nodump)
        return self.cache[i]


# ---------------------------------------------------------------- activations

@torch.no_grad()
def collect(model, seqs, image_rows, n_ctx):
    """Per layer, the FFN inputs after ffn_norm of the positions used: list of
    (N, n_embd), and how many positions each sequence gave. Positions past
    n_ctx are cut; a position whose whole prefix came before is skipped."""
    xs = [[] for _ in range(model.L)]
    seen, counts = set(), []
    for segments, first, _ in seqs:
        parts, keep, h = [], [], 0
        for si, seg in enumerate(segments):
            if isinstance(seg, tuple):
                rows = image_rows(seg[1])
                keys = [(seg[1], r) for r in range(rows.shape[0])]
                parts.append(rows)
            else:
                keys = list(seg)
                parts.append(model.embed(seg))
            for key in keys:
                h = hash((h, key))
                keep.append(si >= first and h not in seen)
                seen.add(h)
        embd = torch.cat(parts, 0)[:n_ctx]
        keep = keep[:n_ctx]
        counts.append(sum(keep))
        if not counts[-1]:
            continue
        got = {}

        def dump(name, t):
            if name.endswith(".ffn_inp"):
                got[name] = t

        model.forward(embd, dump)
        sel = torch.tensor(keep)
        for il in range(model.L):
            x = got[f"blk.{il}.ffn_inp"][sel]
            xs[il].append(LR.rms_norm(x, model.w(f"blk.{il}.ffn_norm.weight"), model.eps))
    return [torch.cat(x, 0) for x in xs], counts


def topk_mask(score, k):
    """(N, F) bool: the k largest entries of each row."""
    m = torch.zeros(score.shape, dtype=torch.bool)
    m.scatter_(1, torch.topk(score, k, dim=1).indices, True)
    return m


def recall(score, truth, k):
    """Mean over tokens of |top-k(score) & truth| / k."""
    return float((topk_mask(score, k) & truth).sum(1).double().mean() / k)


def ffn_error(h, sel, wd):
    """Mean over tokens of ||down (h * sel) - down h|| / ||down h||: how far
    the FFN output computed from the selected neurons is from the dense one."""
    y = h @ wd.T
    return float(((h * sel) @ wd.T - y).norm(dim=1).div(y.norm(dim=1).clamp_min(1e-30)).mean())


def f16(t):
    return t.to(torch.float16).to(torch.float32)


# ---------------------------------------------------------------- training

def train_layer(x_tr, y_tr, m_tr, a0, b0, k, args, gen):
    """A (rank, n_embd), B (n_ff, rank) minimising BCE(B A x, y) from (a0, b0).
    m_tr (N, n_ff): the |h| of the labels; with --weight mag each term is
    weighted 1 + |h_i| / mean_j |h_j| (per token), so that missing a neuron
    that contributes much costs more than missing a marginal one."""
    F = y_tr.shape[1]
    a = torch.nn.Parameter(a0.clone())
    b = torch.nn.Parameter(b0.clone())
    opt = torch.optim.Adam([a, b], lr=args.lr)
    pos_weight = torch.full((F,), (F - k) / k)
    n = x_tr.shape[0]
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, n, (min(args.batch, n),), generator=gen)
        s = (x_tr[idx] @ a.T) @ b.T
        wt = None
        if args.weight == "mag":
            m = m_tr[idx]
            wt = 1.0 + m / m.mean(1, keepdim=True).clamp_min(1e-30)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s, y_tr[idx], weight=wt, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0 or step == args.steps - 1:
            losses.append(float(loss))
    return a.detach(), b.detach(), losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="decoder GGUF (llama architecture)")
    ap.add_argument("--out", help="predictor GGUF to write")
    ap.add_argument("--eval", metavar="PRED", help="report PRED's recall instead of training (no --out)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--tokens", help="one sequence of space-separated token ids per line")
    src.add_argument("--texts", help="one text per line, tokenized with the model's vocabulary")
    src.add_argument("--grounding", metavar="DIR", help="a `loupe synth` directory (needs --mmproj)")
    ap.add_argument("--mmproj", help="with --grounding: the vision tower and projector GGUF")
    ap.add_argument("--tokenizer", help="a tools/train tokenizer JSON instead of the GGUF's vocabulary")
    ap.add_argument("--n-seq", type=int, default=64, help="random sequences (default 64)")
    ap.add_argument("--seq-len", type=int, default=64, help="tokens per random sequence (default 64)")
    ap.add_argument("--max-seq", type=int, default=0, help="use at most this many sequences of a file (0: all)")
    ap.add_argument("--keep", type=float, default=0.5, help="fraction of neurons labelled active (default 0.5)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=1024, help="tokens per Adam step")
    ap.add_argument("--weight", choices=["mag", "none"], default="mag",
                    help="BCE term weights: 1 + |h_i| / mean |h| per token (mag, default) or none")
    ap.add_argument("--holdout", type=float, default=0.2, help="fraction of tokens held out for the report")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--type", choices=["f32", "f16"], default="f32", help="factor type in the file")
    args = ap.parse_args()
    if bool(args.out) == bool(args.eval):
        raise SystemExit("give one of --out (train) and --eval (report a predictor file)")
    if not 0.0 < args.keep < 1.0:
        raise SystemExit("--keep must be in (0, 1)")
    if not 0.0 < args.holdout < 1.0:
        raise SystemExit("--holdout must be in (0, 1)")
    if args.tokenizer and not (args.texts or args.grounding):
        raise SystemExit("--tokenizer goes with --texts or --grounding")
    if bool(args.grounding) != bool(args.mmproj):
        raise SystemExit("--grounding and --mmproj go together")
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")

    t0 = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    reader = GR.GGUFReader(args.model)
    arch = reader.kv.get("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{args.model}: general.architecture = {arch!r}: only llama decoders are supported")
    if "loupe.flash.version" in reader.kv:
        raise SystemExit(f"{args.model}: a flash file; give the decoder it was converted from")
    model = LR.Llama(reader)
    E, L = model.E, model.L
    F = int(reader.kv["llama.feed_forward_length"])
    n_ctx = int(reader.kv.get("llama.context_length", 4096))
    pred = GR.GGUFReader(args.eval) if args.eval else None
    pred_kind = pred.kv.get("loupe.flash.predictor", "lowrank") if pred else "lowrank"
    if not 1 <= args.rank <= min(E, F):
        raise SystemExit(f"--rank {args.rank} is outside [1, min(n_embd, n_ff) = {min(E, F)}]")
    k = max(1, min(F, int(math.floor(args.keep * F + 0.5))))  # the decoder's lroundf(keep * n_ff)

    image_rows = None
    if args.tokens:
        seqs, what = read_token_file(args.tokens, model.n_vocab), args.tokens
    elif args.texts:
        seqs, what = read_text_file(args.texts, reader, tokenizer_for(reader, args.tokenizer)), args.texts
    elif args.grounding:
        seqs, files = grounding_sequences(args.grounding, tokenizer_for(reader, args.tokenizer))
        image_rows, what = ImageRows(args.mmproj, files), f"{args.grounding} (answer tokens, images from {args.mmproj})"
    else:
        seqs = random_sequences(reader, model.n_vocab, args.n_seq, args.seq_len, args.seed)
        what = f"{args.n_seq} random sequences of {args.seq_len} tokens, seed {args.seed}"
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(seqs))
    if args.max_seq > 0:
        order = order[:args.max_seq]
    # training sequences first, then the held-out groups: whole groups, in a
    # shuffled order, from the end until ~holdout of the sequences' tokens
    groups = list(dict.fromkeys(seqs[i][2] for i in order))
    held = set()
    n_all = sum(sum(len(s) if not isinstance(s, tuple) else 0 for s in seqs[i][0][seqs[i][1]:]) for i in order)
    by_group = {}
    for i in order:
        by_group.setdefault(seqs[i][2], []).append(i)
    acc = 0
    for g in reversed(groups[1:]):
        if acc >= args.holdout * n_all:
            break
        held.add(g)
        acc += sum(sum(len(s) for s in seqs[i][0][seqs[i][1]:] if not isinstance(s, tuple)) for i in by_group[g])
    seqs = [seqs[i] for i in order if seqs[i][2] not in held] + [seqs[i] for i in order if seqs[i][2] in held]
    n_test_seq = sum(len(by_group[g]) for g in held)
    if not held or n_test_seq == len(seqs):
        raise SystemExit(f"{what}: too few sequences to train and hold out")

    print(f"{args.model}: llama, {L} layers, n_embd {E}, n_ff {F}; k = {k} of {F} (keep {args.keep})")
    xs, lens = collect(model, seqs, image_rows, n_ctx)
    n_train, n_test = sum(lens[:len(seqs) - n_test_seq]), sum(lens[len(seqs) - n_test_seq:])
    if n_train == 0 or n_test == 0:
        raise SystemExit(f"{what}: too few distinct tokens to train and hold out")
    print(f"sequences: {what}: {len(seqs)} sequences, {n_train + n_test} tokens used "
          f"({n_train} train, {n_test} held out in {n_test_seq} sequences)")
    t1 = time.time()
    print(f"activations: {t1 - t0:.1f} s", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    w = GR.GGUFWriter()
    w.add_str("general.architecture", arch)
    w.add_str("loupe.flash.predictor", "lowrank")
    w.add_f32("loupe.flash.train.keep", args.keep)
    w.add_u32("loupe.flash.train.rank", args.rank)
    w.add_u32("loupe.flash.train.steps", args.steps)
    w.add_u32("loupe.flash.train.tokens", n_train)
    w.add_str("loupe.flash.train.source", os.path.basename(args.model))
    w.add_str("loupe.flash.train.data", what)
    rows = []
    for il in range(L):
        p = f"blk.{il}."
        wg, wu = model.w(p + "ffn_gate.weight"), model.w(p + "ffn_up.weight")  # (F, E)
        wd = model.w(p + "ffn_down.weight")                                    # (E, F)
        x = xs[il]
        with torch.no_grad():
            h = torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)
            truth = topk_mask(h.abs(), k)                                    # (N, F)
        x_tr, x_te = x[:n_train], x[n_train:]
        y_tr, y_te = truth[:n_train].float(), truth[n_train:]

        # truncated SVD of the gate: W ~ U_r S_r V_r^T, A0 = S_r V_r^T, B0 = U_r
        u, sv, vh = torch.linalg.svd(wg.double(), full_matrices=False)
        a0 = (sv[:args.rank, None] * vh[:args.rank]).float()
        b0 = u[:, :args.rank].float().contiguous()
        energy = float((sv[:args.rank] ** 2).sum() / (sv ** 2).sum())

        if pred:
            a = torch.from_numpy(pred.get(p + "ffn_pred_a"))                   # (rank, E)
            b = torch.from_numpy(pred.get(p + "ffn_pred_b"))                   # (F, rank)
            if a.shape[1] != E or b.shape != (F, a.shape[0]):
                raise SystemExit(f"{args.eval}: {p}ffn_pred_a/_b have shapes {tuple(a.shape)}, {tuple(b.shape)}")
            losses = [float("nan")]
        else:
            a, b, losses = train_layer(x_tr, y_tr, h[:n_train].abs(), a0, b0, k, args, gen)
            if args.type == "f16":
                a, b = f16(a), f16(b)

        with torch.no_grad():  # held out, with the factors as the flash file stores them
            s_tr = (x_te @ f16(a).T) @ f16(b).T
            if pred_kind == "svd":
                s_tr = torch.nn.functional.silu(s_tr).abs()
            s_svd = (x_te @ f16(a0).T) @ f16(b0).T
            s_svd = torch.nn.functional.silu(s_svd).abs()
            r_tr, r_svd = recall(s_tr, y_te, k), recall(s_svd, y_te, k)
            h_te = h[n_train:]
            e_tr, e_svd = ffn_error(h_te, topk_mask(s_tr, k), wd), ffn_error(h_te, topk_mask(s_svd, k), wd)
            e_best = ffn_error(h_te, y_te, wd)
        rows.append((il, energy, r_svd, r_tr, e_svd, e_tr, e_best))
        if pred:
            print(f"layer {il}: held-out recall svd {r_svd:.4f}, {args.eval} {r_tr:.4f} (chance {k / F:.4f})", flush=True)
            continue
        for name, t in ((p + "ffn_pred_a", a), (p + "ffn_pred_b", b)):
            arr = t.numpy().astype(np.float32)                               # row-major: ne reversed
            if args.type == "f16":
                w.tensors.append((name, list(reversed(arr.shape)), GR.GGML_F16, arr.astype("<f2").tobytes()))
            else:
                w.add_tensor(name, arr)
        print(f"layer {il}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, held-out recall svd {r_svd:.4f} "
              f"trained {r_tr:.4f} (chance {k / F:.4f})", flush=True)
    if not pred:
        w.write(args.out)
    t2 = time.time()

    print(f"\nheld-out, top-{k} of {F} (svd rank {args.rank}, f16 factors): recall of the true top-{k}, and the")
    print(f"FFN output's relative error ||down(h*sel) - down(h)|| / ||down(h)|| (true top-k: selecting the labels)")
    if pred:
        print(f"trained: {args.eval} ({pred_kind})")
    print("  layer  svd-energy  recall: svd  trained   error: svd  trained  true top-k")
    for r in rows + [("mean", float("nan")) + tuple(np.mean([q[j] for q in rows]) for j in range(2, 7))]:
        print(f"  {r[0]:>5}  {r[1]:10.4f}  {r[2]:11.4f}  {r[3]:7.4f}  {r[4]:10.4f}  {r[5]:7.4f}  {r[6]:10.4f}"
              .replace("nan", "   "))
    print(f"{'wrote ' + args.out if not pred else 'evaluated ' + args.eval}; activations {t1 - t0:.1f} s, "
          f"{'training' if not pred else 'evaluation'} {t2 - t1:.1f} s, total {t2 - t0:.1f} s")


if __name__ == "__main__":
    main()
