"""loupe's own SentencePiece-style vocabulary for the synthetic world.

The vocabulary is written as GGUF tokenizer metadata with
tokenizer.ggml.model = "llama" and read by language/tokenizer.c (spm.c).
encode() below is a re-implementation of exactly that algorithm:

  * special tokens (types control/user-defined/unknown; control only with
    parse_special) are matched first, longest match at each byte, left to
    right; they cut the text into fragments;
  * a fragment that starts the text or follows a special token gets a
    leading space (add_space_prefix), then every ' ' becomes U+2581 '▁';
  * one symbol per UTF-8 character; adjacent symbols are merged while their
    concatenation is a vocabulary token, highest score first, ties to the
    leftmost pair (llama.cpp's llm_tokenizer_spm priority queue);
  * a final symbol that is no token becomes byte tokens <0xXX>.

Layout of the vocabulary (ids):
  0 <unk> (unknown), 1 <s> (control, BOS), 2 </s> (control, EOS),
  3..258 <0x00>..<0xFF> (byte), 259 <region_fea> (user-defined: Ferret's
  region marker; loupe splices the region embedding over it),
  then single characters (every printable ASCII character, '▁', '\n' and
  any other character the corpus uses), then merged pieces by rank:
  ",▁" first (so a coordinate list costs one token per separator), then the
  numbers "10".."999" (with the digits this makes every integer 0..999 a
  single token, whatever the merge order), then byte-pair merges learned
  from the corpus words (digits removed) until every word that occurs at
  least twice is one token. Score of a merged piece = -rank; single
  characters score -1e6 (never a merge result, so their score is unused).
"""

import heapq
import json
import re

SP = "\u2581"
SPECIALS = {"<unk>": 2, "<s>": 3, "</s>": 3}
REGION_TOKEN = "<region_fea>"
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6


class Tokenizer:
    def __init__(self, tokens, scores, types):
        self.tokens, self.scores, self.types = list(tokens), list(scores), list(types)
        self.id_of = {t: i for i, t in enumerate(self.tokens)}
        assert len(self.id_of) == len(self.tokens), "duplicate token"
        self.bos, self.eos, self.unk = self.id_of["<s>"], self.id_of["</s>"], self.id_of["<unk>"]
        self.region = self.id_of.get(REGION_TOKEN, -1)
        self.byte_tok = [self.id_of["<0x%02X>" % b] for b in range(256)]
        self.special = sorted([i for i, t in enumerate(self.types) if t in (TYPE_CONTROL, TYPE_USER, TYPE_UNKNOWN)
                               and self.tokens[i]], key=lambda i: -len(self.tokens[i].encode()))
        self._cache = {}

    # -- persistence
    def to_json(self, path):
        with open(path, "w") as f:
            json.dump({"tokens": self.tokens, "scores": self.scores, "types": self.types}, f, ensure_ascii=False)

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            d = json.load(f)
        return cls(d["tokens"], d["scores"], d["types"])

    def __len__(self):
        return len(self.tokens)

    # -- encoding
    def _spm(self, frag):
        """frag: str already with '▁' for spaces -> ids."""
        hit = self._cache.get(frag)
        if hit is not None:
            return hit
        syms = list(frag)                       # one symbol per code point
        n = len(syms)
        alive = [True] * n
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap = []

        def push(l, r):
            if l < 0 or r < 0:
                return
            s = syms[l] + syms[r]
            i = self.id_of.get(s)
            if i is not None:
                heapq.heappush(heap, (-self.scores[i], l, r, len(s)))

        for i in range(1, n):
            push(i - 1, i)
        while heap:
            _, l, r, ln = heapq.heappop(heap)
            if not alive[l] or not alive[r] or len(syms[l]) + len(syms[r]) != ln:
                continue
            syms[l] = syms[l] + syms[r]
            alive[r] = False
            nxt[l] = nxt[r]
            if nxt[r] >= 0:
                prv[nxt[r]] = l
            push(prv[l], l)
            push(l, nxt[l])
        out = []
        i = 0 if n else -1
        while i >= 0:
            s = syms[i]
            t = self.id_of.get(s)
            if t is not None:
                out.append(t)
            else:
                out.extend(self.byte_tok[b] for b in s.encode("utf-8"))
            i = nxt[i]
        self._cache[frag] = out
        return out

    def fragments(self, text, parse_special=True):
        """[(is_special, id or escaped fragment)] as lp_tokenize partitions."""
        out, frag, i, prev_special = [], 0, 0, True
        b = text.encode("utf-8")
        while i < len(b):
            hit = -1
            for sid in self.special:
                if not parse_special and self.types[sid] != TYPE_USER:
                    continue
                tb = self.tokens[sid].encode("utf-8")
                if b.startswith(tb, i):
                    hit = sid
                    break
            if hit < 0:
                i += 1
                continue
            if i > frag:
                out.append((False, self._escape(b[frag:i].decode("utf-8"), prev_special)))
            out.append((True, hit))
            prev_special = True
            i += len(self.tokens[hit].encode("utf-8"))
            frag = i
        if len(b) > frag:
            out.append((False, self._escape(b[frag:].decode("utf-8"), prev_special)))
        return out

    @staticmethod
    def _escape(s, prefix):
        return ((" " if prefix else "") + s).replace(" ", SP)

    def encode(self, text, add_bos=False, parse_special=True):
        ids = [self.bos] if add_bos else []
        for sp, x in self.fragments(text, parse_special):
            ids.extend([x] if sp else self._spm(x))
        return ids

    def decode(self, ids):
        """Text as loupe's streaming decoder gives it (leading space of the
        first piece dropped, control tokens omitted)."""
        bs = bytearray()
        for i in ids:
            t, ty = self.tokens[i], self.types[i]
            if ty in (TYPE_CONTROL, TYPE_UNKNOWN, TYPE_UNUSED):
                continue
            if ty == TYPE_BYTE:
                bs.append(int(t[3:5], 16))
            else:
                bs += t.replace(SP, " ").encode("utf-8")
        s = bs.decode("utf-8", errors="replace")
        return s[1:] if s.startswith(" ") else s


def _words_for_bpe(tok0, text):
    """Corpus words for BPE: fragments as the encoder sees them, split before
    each '▁', with digit runs cut out (numbers have their own tokens)."""
    words = []
    for sp, frag in tok0.fragments(text):
        if sp:
            continue
        for w in re.split("(?=%s)" % SP, frag):
            for part in re.split(r"[0-9]+", w):
                if part:
                    words.append(part)
    return words


def build(texts, min_count=2):
    """Build the vocabulary from an iterable of strings (prompts, questions,
    answers). Deterministic for the same multiset of texts."""
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + [REGION_TOKEN]
    types = [TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_BYTE] * 256 + [TYPE_USER]
    scores = [0.0] * len(tokens)
    # a tokenizer with only the specials, to cut the corpus into fragments
    tok0 = Tokenizer(tokens, scores, types)
    freq = {}
    chars = set(chr(c) for c in range(0x21, 0x7F)) | {SP, "\n"}
    for t in texts:
        for w in _words_for_bpe(tok0, t):
            freq[w] = freq.get(w, 0) + 1
            chars.update(w)
    for c in sorted(chars):
        tokens.append(c)
        types.append(TYPE_NORMAL)
        scores.append(-1e6)
    merged = []
    merged.append("," + SP)
    merged += [str(v) for v in range(10, 1000)]
    # byte-pair merges over corpus words
    words = {tuple(w): f for w, f in freq.items() if f >= min_count}
    have = set(tokens) | set(merged)
    while True:
        pairs = {}
        for w, f in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + f
        if not pairs:
            break
        (a, b), cnt = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ab = a + b
        if ab not in have:
            merged.append(ab)
            have.add(ab)
        nw = {}
        for w, f in words.items():
            if len(w) > 1:
                out, i = [], 0
                while i < len(w):
                    if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                        out.append(ab)
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                w = tuple(out)
            if len(w) > 1:
                nw[w] = nw.get(w, 0) + f
        words = nw
    for rank, m in enumerate(merged):
        if m in tokens:
            continue
        tokens.append(m)
        types.append(TYPE_NORMAL)
        scores.append(-float(rank))
    return Tokenizer(tokens, scores, types)


def gguf_metadata(w, tok):
    """Add the tokenizer keys to a GGUF writer (tools/train/export.py's)."""
    w.add_str("tokenizer.ggml.model", "llama")
    w.add_str("tokenizer.ggml.pre", "default")
    w.add_arr_str("tokenizer.ggml.tokens", tok.tokens)
    w.add_arr_f32("tokenizer.ggml.scores", tok.scores)
    w.add_arr_i32("tokenizer.ggml.token_type", tok.types)
    w.add_u32("tokenizer.ggml.bos_token_id", tok.bos)
    w.add_u32("tokenizer.ggml.eos_token_id", tok.eos)
    w.add_u32("tokenizer.ggml.unknown_token_id", tok.unk)
    w.add_u32("tokenizer.ggml.padding_token_id", tok.unk)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", True)
