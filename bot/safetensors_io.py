"""Safetensors without torch (and without executing anything): a checked reader and a writer.

The bot reads member-supplied LoRA files with this, so the header is treated as hostile. The 8-byte
little-endian header length is read and capped before the JSON header; the JSON's nesting depth is
checked on the raw text before it is parsed (deep nesting costs recursion and memory); then every
entry is checked for type and range BEFORE any arithmetic on it: the tensor count, each name, the
dtype (a str in the known set), the number of dimensions and each dimension's size, the byte range
(ints inside the file), and only then shape x itemsize against the byte range. The ranges must be
contiguous and cover the file exactly (a truncated or padded file is refused); PyTorch pickles are
recognised by their first bytes and refused. Every refusal is a LoraImportError with a short message.
Tensors are read one at a time (`read`), so a large file never sits in memory. `decode`/`encode`
convert F16/BF16/F32/F64 bytes to and from float32 numpy arrays.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}

# Caps far above any real LoRA of this model (~280 layers x down/up/alpha, 2-D weights, names < 100
# characters) that keep every later step cheap: with <= 4 dimensions of <= 2**32 the shape's product
# is small-integer arithmetic, however the file lies.
MAX_TENSORS = 4096
MAX_DIMS = 4
MAX_DIM = 1 << 32
MAX_NAME = 256
MAX_OFFSET = 1 << 48  # a byte offset; past the file's end it is reported as truncation, below
# A safetensors header nests 3 deep: {name: {"shape": [..]}}; metadata is {str: str}.
HEADER_DEPTH = 3

# A JSON string literal (escapes included), written so that the regex runs in linear time.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


class LoraImportError(Exception):
    """The file cannot be imported; the message names the problem and can be shown as it is."""


def loads_bounded(text: str, max_depth: int) -> object:
    """json.loads for hostile text: refuses nesting deeper than `max_depth`, NaN/Infinity and repeated keys.

    Raises ValueError. The depth is measured on the text (string contents skipped) before parsing, so
    a megabyte of "[" costs one linear scan instead of a RecursionError or a million nested lists."""
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not a number")

    def unique(pairs: list[tuple[str, object]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("a key is repeated")
        return result

    try:
        return json.loads(text, parse_constant=constant, object_pairs_hook=unique)
    except RecursionError:  # unreachable after the depth scan; kept so no input can escape as one
        raise ValueError("nested too deep") from None


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high  # not bool: JSON true is no size


def _plain_name(name: str) -> bool:
    return len(name) <= MAX_NAME and name.isascii() and name.isprintable() and "`" not in name


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


class SafeTensors:
    """A checked safetensors file; tensors are read one at a time (`read`). Use as a context manager."""

    def __init__(self, path: Path, max_header: int):
        self.path, self.handle = Path(path), open(path, "rb")  # noqa: SIM115 - closed in __exit__
        try:
            self.tensors, self.metadata = self._parse(max_header)
        except BaseException:
            self.handle.close()
            raise

    def _parse(self, max_header: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        size, first = os.fstat(self.handle.fileno()).st_size, self.handle.read(9)
        # torch.save writes a zip; older pickles start with PROTO (0x80, 2-5). A real header starts with "{".
        if first[:4] == b"PK\x03\x04" or (first[:1] == b"\x80" and first[1:2] in (b"\2", b"\3", b"\4", b"\5")
                                          and first[8:9] != b"{"):
            raise LoraImportError("This is a PyTorch pickle file (.pt/.ckpt/.bin), which can run code when loaded: "
                                  "only .safetensors files are accepted.")
        (length,) = struct.unpack("<Q", first[:8]) if len(first) == 9 else (size,)
        if length > max_header:
            raise LoraImportError(f"The safetensors header is {length:,} bytes; the limit is {max_header:,}.")
        if 8 + length > size:
            raise LoraImportError("The file is truncated (it ends inside its header).")
        self.handle.seek(8)
        raw = self.handle.read(length)
        try:
            header = loads_bounded(raw.decode("utf-8"), HEADER_DEPTH) if raw.lstrip()[:1] == b"{" else None
        except ValueError:  # UnicodeDecodeError is a ValueError too
            header = None
        if not isinstance(header, dict):
            raise LoraImportError("This is not a safetensors file (its header is not a JSON object, or it is "
                                  "malformed or nested too deep).")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise LoraImportError("The safetensors metadata is malformed (it must map names to strings).")
        if len(header) > MAX_TENSORS:
            raise LoraImportError(f"The file holds {len(header):,} tensors; the limit is {MAX_TENSORS:,}.")
        base = 8 + length
        tensors = {key: self._entry(key, entry, base) for key, entry in header.items()}
        position = base
        for info in sorted(tensors.values(), key=lambda info: (info.start, info.end)):
            if info.start != position:
                raise LoraImportError("The tensors' byte ranges overlap or leave gaps: the file is damaged.")
            position = info.end
        if position > size:
            raise LoraImportError(f"The file is truncated: {position - size:,} bytes are missing.")
        if position < size:
            raise LoraImportError("The file has extra bytes after its tensors: it is damaged.")
        return tensors, metadata

    @staticmethod
    def _entry(key: str, entry: object, base: int) -> TensorInfo:
        """One header entry, checked field by field before any arithmetic on it."""
        if not _plain_name(key):
            raise LoraImportError(f"The file has a tensor name that is not a plain ASCII name of at most {MAX_NAME} "
                                  "characters.")
        malformed = LoraImportError(f"The header entry for `{key}` is malformed.")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise malformed
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
            raise malformed
        if dtype not in DTYPE_SIZES:
            shown = dtype if len(dtype) <= 16 and _plain_name(dtype) else "an unknown type"
            raise LoraImportError(f"`{key}` is stored as {shown}; only F16, BF16, F32 and F64 are accepted.")
        if len(shape) > MAX_DIMS:
            raise LoraImportError(f"`{key}` has {len(shape):,} dimensions; at most {MAX_DIMS} are accepted.")
        if not all(_is_int(n, 0, MAX_DIM) for n in shape):
            raise malformed
        if len(offsets) != 2 or not all(_is_int(n, 0, MAX_OFFSET) for n in offsets) or offsets[0] > offsets[1]:
            raise malformed
        begin, end = offsets
        if end - begin != DTYPE_SIZES[dtype] * math.prod(shape):
            raise LoraImportError(f"`{key}`: its byte range does not match its shape {shape}.")
        return TensorInfo(dtype, tuple(shape), base + begin, base + end)

    def read(self, key: str) -> bytes:
        info = self.tensors[key]
        self.handle.seek(info.start)
        return self.handle.read(info.end - info.start)

    def __enter__(self) -> SafeTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def write_safetensors(path: Path, tensors: Sequence[tuple[str, str, tuple, Callable[[], bytes]]], metadata: dict) -> int:
    """Write (key, dtype, shape, produce_bytes) entries; atomic (temp file + rename). Returns the size."""
    header, offset = {"__metadata__": metadata}, 0
    for key, dtype, shape, _ in tensors:
        size = DTYPE_SIZES[dtype] * math.prod(shape)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.part")
    try:
        with open(scratch, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            for key, _, _, produce in tensors:
                data = produce()
                assert len(data) == header[key]["data_offsets"][1] - header[key]["data_offsets"][0]
                handle.write(data)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return 8 + len(raw) + offset


def decode(dtype: str, data: bytes, shape: tuple):
    import numpy as np

    if dtype == "BF16":
        return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.frombuffer(data, _NUMPY[dtype]).astype(np.float32).reshape(shape)


def encode(dtype: str, values) -> bytes:
    import numpy as np

    if dtype == "BF16":  # round to nearest even
        bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(values).astype(_NUMPY[dtype]).tobytes()
