#!/usr/bin/python3
"""Write a SentencePiece tokenizer.model (its ModelProto, protobuf wire
format) without the sentencepiece package.

Fields written (sentencepiece_model.proto):
  ModelProto.pieces (1, repeated): SentencePiece {piece 1: string,
      score 2: float, type 3: enum NORMAL 1, UNKNOWN 2, CONTROL 3,
      USER_DEFINED 4, UNUSED 5, BYTE 6}
  ModelProto.trainer_spec (2): model_type 3 (BPE 2), vocab_size 4,
      byte_fallback 35, unk_id 40, bos_id 41, eos_id 42, pad_id 43
  ModelProto.normalizer_spec (3): name 1 "identity", add_dummy_prefix 3,
      remove_extra_whitespaces 4 (false), escape_whitespaces 5 (true)
language/hf_tokenizer.c reads it back.
"""
import struct


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num, wire):
    return _varint(num << 3 | wire)


def _int(num, v):
    return _key(num, 0) + _varint(v)


def _bytes(num, b):
    return _key(num, 2) + _varint(len(b)) + b


def _float(num, f):
    return _key(num, 5) + struct.pack("<f", f)


def write_tokenizer_model(path, pieces, scores, types, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                          byte_fallback=True, add_dummy_prefix=True):
    out = bytearray()
    for p, s, t in zip(pieces, scores, types):
        body = _bytes(1, p.encode("utf-8")) + _float(2, float(s))
        if t != 1:                        # NORMAL is the proto default
            body += _int(3, int(t))
        out += _bytes(1, body)
    trainer = (_int(3, 2) + _int(4, len(pieces)) + _int(35, 1 if byte_fallback else 0) + _int(40, unk_id) +
               _int(41, bos_id) + _int(42, eos_id) + _int(43, pad_id))
    out += _bytes(2, trainer)
    norm = _bytes(1, b"identity") + _int(3, 1 if add_dummy_prefix else 0) + _int(4, 0) + _int(5, 1)
    out += _bytes(3, norm)
    with open(path, "wb") as f:
        f.write(bytes(out))
