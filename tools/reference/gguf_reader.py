"""A small, self-contained GGUF v2/v3 reader and writer in numpy.

Independent of loupe's C code and of the `gguf` Python package: it exists so
that tools/reference/llava_reference.py can read llama.cpp-convention model
files and write its activation dumps.

Reading: metadata of every value type, tensor table, tensor data as numpy
arrays in row-major order (numpy shape = reversed ggml ne). dequantize()
turns F32, F16, Q8_0 and Q4_0 tensors into float32 (bit-exact with ggml's
dequantize_row_*: d is an f16 scale, values are q*d in f32).

Writing: GGUFWriter with scalar/string/array metadata and F32/I32 tensors.
"""

import struct

import numpy as np

# value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {
    UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
    FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d",
}
_NP = {
    UINT8: np.uint8, INT8: np.int8, UINT16: np.uint16, INT16: np.int16, UINT32: np.uint32,
    INT32: np.int32, FLOAT32: np.float32, BOOL: np.bool_, UINT64: np.uint64, INT64: np.int64,
    FLOAT64: np.float64,
}

# ggml tensor types used here: type -> (block elements, block bytes)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_I32 = 0, 1, 2, 8, 26
_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34), GGML_I32: (1, 4)}
TYPE_NAMES = {GGML_F32: "f32", GGML_F16: "f16", GGML_Q4_0: "q4_0", GGML_Q8_0: "q8_0", GGML_I32: "i32"}


class Tensor:
    def __init__(self, name, ne, ttype, raw):
        self.name = name
        self.ne = ne          # ggml order, ne[0] = row length
        self.type = ttype
        self.raw = raw        # uint8 view of the stored bytes

    @property
    def shape(self):
        return tuple(reversed(self.ne))

    def dequantize(self):
        """float32 array of shape reversed(ne)."""
        n = int(np.prod(self.ne))
        t = self.type
        if t == GGML_F32:
            out = self.raw.view("<f4")[:n].astype(np.float32)
        elif t == GGML_F16:
            out = self.raw.view("<f2")[:n].astype(np.float32)
        elif t == GGML_Q8_0:
            b = self.raw.reshape(-1, 34)
            d = b[:, :2].copy().view("<f2").astype(np.float32)           # (nb, 1)
            q = b[:, 2:].copy().view(np.int8).astype(np.float32)         # (nb, 32)
            out = (q * d).reshape(-1)
        elif t == GGML_Q4_0:
            b = self.raw.reshape(-1, 18)
            d = b[:, :2].copy().view("<f2").astype(np.float32)
            qs = b[:, 2:]
            lo = (qs & 0x0F).astype(np.int32) - 8
            hi = (qs >> 4).astype(np.int32) - 8
            q = np.concatenate([lo, hi], axis=1).astype(np.float32)       # (nb, 32)
            out = (q * d).reshape(-1)
        elif t == GGML_I32:
            return self.raw.view("<i4")[:n].reshape(self.shape).copy()
        else:
            raise ValueError(f"{self.name}: ggml type {t} not supported by this reader")
        return out.reshape(self.shape)


class GGUFReader:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.buf = np.frombuffer(f.read(), dtype=np.uint8)
        self.pos = 0
        magic = bytes(self.buf[:4])
        if magic != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        self.pos = 4
        self.version = self._u("<I")
        if self.version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {self.version} not supported")
        n_tensors = self._u("<Q")
        n_kv = self._u("<Q")
        self.kv = {}
        for _ in range(n_kv):
            key = self._str()
            vt = self._u("<I")
            self.kv[key] = self._value(vt)
        self.alignment = int(self.kv.get("general.alignment", 32))
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            nd = self._u("<I")
            ne = [self._u("<Q") for _ in range(nd)]
            tt = self._u("<I")
            off = self._u("<Q")
            infos.append((name, ne, tt, off))
        data_start = (self.pos + self.alignment - 1) // self.alignment * self.alignment
        self.tensors = {}
        for name, ne, tt, off in infos:
            if tt not in _BLOCK:
                raise ValueError(f"{path}: tensor {name}: ggml type {tt} not supported")
            be, bb = _BLOCK[tt]
            n = int(np.prod(ne))
            if n % be:
                raise ValueError(f"{path}: tensor {name}: {n} elements is not a whole number of blocks")
            nbytes = n // be * bb
            start = data_start + off
            if start + nbytes > len(self.buf):
                raise ValueError(f"{path}: tensor {name} runs past the end of the file")
            self.tensors[name] = Tensor(name, ne, tt, self.buf[start:start + nbytes])

    def _u(self, fmt):
        size = struct.calcsize(fmt)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def _str(self):
        n = self._u("<Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def _value(self, vt):
        if vt in _SCALAR:
            return self._u(_SCALAR[vt])
        if vt == STRING:
            return self._str()
        if vt == ARRAY:
            et = self._u("<I")
            n = self._u("<Q")
            if et in _NP:
                a = np.frombuffer(self.buf, dtype=np.dtype(_NP[et]).newbyteorder("<"), count=n, offset=self.pos).copy()
                self.pos += a.nbytes
                return a
            return [self._value(et) for _ in range(n)]
        raise ValueError(f"{self.path}: bad value type {vt}")

    def get(self, name):
        """Tensor as float32 (dequantized), row-major, shape reversed(ne)."""
        return self.tensors[name].dequantize()

    def has(self, name):
        return name in self.tensors


class GGUFWriter:
    """Writes GGUF v3 with scalar/string/array metadata and F32/I32 tensors."""

    def __init__(self, alignment=32):
        self.alignment = alignment
        self.kv = []
        self.tensors = []

    def add_str(self, key, v):
        self.kv.append((key, STRING, v))

    def add_u32(self, key, v):
        self.kv.append((key, UINT32, int(v)))

    def add_f32(self, key, v):
        self.kv.append((key, FLOAT32, float(v)))

    def add_bool(self, key, v):
        self.kv.append((key, BOOL, bool(v)))

    def add_arr_i32(self, key, v):
        self.kv.append((key, ARRAY, (INT32, [int(x) for x in v])))

    def add_tensor(self, name, arr):
        """arr: numpy array (row-major); stored as F32, or I32 for integer arrays."""
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.integer):
            a, tt = np.ascontiguousarray(arr, dtype="<i4"), GGML_I32
        else:
            a, tt = np.ascontiguousarray(arr, dtype="<f4"), GGML_F32
        if a.ndim == 0:
            a = a.reshape(1)
        self.tensors.append((name, list(reversed(a.shape)), tt, a.tobytes()))

    @staticmethod
    def _s(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _val(self, vt, v):
        if vt == STRING:
            return self._s(v)
        if vt == ARRAY:
            et, items = v
            return struct.pack("<IQ", et, len(items)) + b"".join(self._val(et, x) for x in items)
        return struct.pack(_SCALAR[vt], v)

    def write(self, path):
        out = bytearray(b"GGUF")
        kv = [("general.alignment", UINT32, self.alignment)] + self.kv
        out += struct.pack("<IQQ", 3, len(self.tensors), len(kv))
        for key, vt, v in kv:
            out += self._s(key) + struct.pack("<I", vt) + self._val(vt, v)
        off = 0
        offs = []
        for name, ne, tt, data in self.tensors:
            offs.append(off)
            out += self._s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
            out += struct.pack("<IQ", tt, off)
            off += (len(data) + self.alignment - 1) // self.alignment * self.alignment
        out += b"\0" * ((-len(out)) % self.alignment)
        for (name, ne, tt, data), o in zip(self.tensors, offs):
            out += data + b"\0" * ((-len(data)) % self.alignment)
        with open(path, "wb") as f:
            f.write(out)
