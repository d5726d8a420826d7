"""Read and validate a GGUF file's header without llama.cpp.

llama.cpp aborts or prints pages of log on a file that is not a GGUF, and on a
truncated one it may only notice deep inside loading.  Checking the magic, the
header and that every tensor's bytes lie inside the file lets us fail with one
clear line before llama.cpp ever sees the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecgenError
from ..fileio import home_path, open_regular, os_problem

MAGIC = b"GGUF"

# ggml type id -> (bytes per block, elements per block): ggml's type_traits as of the
# llama.cpp in llama-cpp-python 0.3.36, whose last type is
# Q2_0 = 42; 4, 5 and 31-33, 36-38 were removed from ggml.  A type missing here is
# refused: counting it as 0 bytes would let a truncated file through.  The `gguf`
# package's copy of this table lags llama.cpp (no Q2_0 in 0.19) and sizes Q8_1 as
# 40 bytes where ggml's block is 36, so it is not used.
_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32),
    8: (34, 32), 9: (36, 32), 10: (84, 256), 11: (110, 256), 12: (144, 256),
    13: (176, 256), 14: (210, 256), 15: (292, 256), 16: (66, 256), 17: (74, 256),
    18: (98, 256), 19: (50, 256), 20: (18, 32), 21: (110, 256), 22: (82, 256),
    23: (136, 256), 24: (1, 1), 25: (2, 1), 26: (4, 1), 27: (8, 1), 28: (8, 1),
    29: (56, 256), 30: (2, 1), 34: (54, 256), 35: (66, 256), 39: (17, 32),
    40: (36, 64), 41: (18, 128), 42: (18, 64),
}

# GGUF value type id -> struct format for scalars.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_UINTS = {0, 2, 4, 10}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

# Header fields this code (or llama.cpp before it could fail cleanly) reads, and the value type each
# must have; a key ending in ".block_count" etc. is checked for any architecture.
_FIELD_TYPES: dict[str, tuple[set[int], str]] = {
    "general.alignment": (_UINTS, "an unsigned integer"),
    "general.architecture": ({_STRING}, "a string"),
    "general.name": ({_STRING}, "a string"),
    ".block_count": (_UINTS | {5}, "an integer"),
    ".context_length": (_UINTS | {5}, "an integer"),
}
_MIN_KV_BYTES, _MIN_TENSOR_BYTES = 8 + 4 + 1, 8 + 4 + 4 + 8


class GGUFError(SpecgenError):
    """The file is missing, unreadable, not a GGUF, or damaged."""


@dataclass
class GGUFInfo:
    path: Path
    version: int
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    """Scalar keys as values; array keys as their length (token lists are big)."""
    n_tensors: int = 0
    tokens_digest: str | None = None
    """sha256 of the raw `tokenizer.ggml.tokens` array: equal digests mean equal vocabularies."""

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF header (file ends at byte {len(self.buf)})")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF header (string of {n} bytes runs past the end)")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("<I"), self.take("<Q")
            if itype in _SCALARS:  # skip fixed-size items without decoding them
                self.pos += struct.calcsize(_SCALARS[itype]) * count
                if self.pos > len(self.buf):
                    raise GGUFError(f"{self.path}: truncated GGUF header (array runs past the end)")
            elif itype == _STRING:  # vocabularies: 150k strings, skipped by length in a tight loop
                length, buf, pos = _U64.unpack_from, self.buf, self.pos
                try:
                    for _ in range(count):
                        pos += 8 + length(buf, pos)[0]
                except struct.error:
                    pos = len(self.buf) + 1
                self.pos = pos
                if self.pos > len(self.buf):
                    raise GGUFError(f"{self.path}: truncated GGUF header (array runs past the end)")
            elif itype == _ARRAY:  # llama.cpp refuses these too, and their nesting has no bound
                raise GGUFError(f"{self.path}: corrupt GGUF header (an array of arrays)")
            else:
                for _ in range(count):
                    self.value(itype)
            return count
        raise GGUFError(f"{self.path}: corrupt GGUF header (unknown value type {vtype})")


WHAT_TO_GIVE = "the path of a .gguf file"
"""What to give instead of a model path that is not a file (see `fileio.unreadable`)."""


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse the header of *path* and check that the tensor data fits the file.

    Raises GGUFError with a one-line message for every way a file can be bad.
    """
    p = home_path(path)
    try:
        with open_regular(p, WHAT_TO_GIVE, GGUFError) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 4 or f.read(4) != MAGIC:
                raise GGUFError(f"{p}: not a GGUF file (bad magic; expected 'GGUF')")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(_Reader(buf, p), p, size)
    except OSError as e:  # opening is open_regular's to word: this is a read that failed
        raise GGUFError(f"{p}: cannot read ({os_problem(e)})") from None


def _parse(r: _Reader, p: Path, size: int) -> GGUFInfo:
    r.pos = 4
    version = r.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"{p}: unsupported GGUF version {version}")
    n_tensors, n_kv = r.take("<Q"), r.take("<Q")
    if n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES > size:
        raise GGUFError(f"{p}: corrupt GGUF header (it lists {n_tensors} tensors and {n_kv} keys, more than "
                        f"a file of {size} bytes can hold); re-download it")
    info = GGUFInfo(path=p, version=version, size=size, n_tensors=n_tensors)
    for _ in range(n_kv):
        key = r.string()
        start = r.pos
        vtype = r.take("<I")
        info.metadata[key] = r.value(vtype)
        _check_type(p, key, vtype, info.metadata[key])
        if key == "tokenizer.ggml.tokens":
            info.tokens_digest = hashlib.sha256(r.buf[start:r.pos]).hexdigest()
    end = 0
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("<I")
        if n_dims > 8:
            raise GGUFError(f"{p}: corrupt GGUF header (tensor with {n_dims} dimensions)")
        n_elems = 1
        for _ in range(n_dims):
            n_elems *= r.take("<Q")
        ttype, offset = r.take("<I"), r.take("<Q")
        if ttype not in _TYPE_SIZES:
            raise GGUFError(f"{p}: tensor {name!r} has ggml type {ttype}, which this specgen does not know "
                            "(a newer quantization, or a damaged file); it cannot check the file's size")
        block_bytes, block_elems = _TYPE_SIZES[ttype]
        end = max(end, offset + n_elems // block_elems * block_bytes)
    align = info.metadata.get("general.alignment", 32)
    data_start = (r.pos + align - 1) // align * align
    if data_start + end > size:
        raise GGUFError(
            f"{p}: truncated GGUF ({size} bytes, tensor data needs {data_start + end}); "
            "re-download it")
    return info


def _check_type(p: Path, key: str, vtype: int, value: Any) -> None:
    want = _FIELD_TYPES.get(key) or next((t for k, t in _FIELD_TYPES.items()
                                          if k.startswith(".") and key.endswith(k)), None)
    if want is None:
        return
    types, described = want
    if vtype not in types:
        raise GGUFError(f"{p}: corrupt GGUF header ({key} is {_TYPE_NAMES.get(vtype, f'type {vtype}')}, "
                        f"expected {described}); re-download it")
    if key == "general.alignment" and (value <= 0 or value & (value - 1) or value > 1 << 20):
        raise GGUFError(f"{p}: corrupt GGUF header (general.alignment is {value}, expected a power of two); "
                        "re-download it")
