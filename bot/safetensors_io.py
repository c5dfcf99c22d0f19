"""Safetensors without torch (and without executing anything): a checked reader and a writer.

The bot reads member-supplied LoRA files with this. The 8-byte little-endian header length is read
and capped before the JSON header; every entry's dtype, shape and byte range are checked (ranges
contiguous, covering the file exactly: a truncated or padded file is refused); PyTorch pickles are
recognised by their first bytes and refused. Tensors are read one at a time (`read`), so a large file
never sits in memory. `decode`/`encode` convert F16/BF16/F32/F64 bytes to and from float32 numpy arrays.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_NUMPY = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


class LoraImportError(Exception):
    """The file cannot be imported; the message names the problem and can be shown as it is."""


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
            header = json.loads(raw.decode("utf-8")) if raw.lstrip()[:1] == b"{" else None
        except (UnicodeDecodeError, ValueError):
            header = None
        if not isinstance(header, dict):
            raise LoraImportError("This is not a safetensors file (its header is not a JSON object).")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise LoraImportError("The safetensors metadata is malformed.")
        tensors, base, spans = {}, 8 + length, []
        for key, entry in header.items():
            try:
                dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
                assert all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end))
            except (KeyError, TypeError, ValueError, AssertionError):
                raise LoraImportError(f"The header entry for `{key}` is malformed.") from None
            if dtype not in DTYPE_SIZES:
                raise LoraImportError(f"`{key}` is stored as {dtype}; only F16, BF16, F32 and F64 are accepted.")
            if end - begin != DTYPE_SIZES[dtype] * math.prod(shape):
                raise LoraImportError(f"`{key}`: its byte range does not match its shape {list(shape)}.")
            tensors[key] = TensorInfo(dtype, shape, base + begin, base + end)
            spans.append((begin, end))
        position = 0
        for begin, end in sorted(spans):
            if begin != position:
                raise LoraImportError("The tensors' byte ranges overlap or leave gaps: the file is damaged.")
            position = end
        if base + position > size:
            raise LoraImportError(f"The file is truncated: {base + position - size:,} bytes are missing.")
        if base + position < size:
            raise LoraImportError("The file has extra bytes after its tensors: it is damaged.")
        return tensors, metadata

    def read(self, key: str) -> bytes:
        info = self.tensors[key]
        self.handle.seek(info.start)
        return self.handle.read(info.end - info.start)

    def __enter__(self) -> SafeTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def write_safetensors(path: Path, tensors: list[tuple[str, str, tuple, Callable[[], bytes]]], metadata: dict) -> int:
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
