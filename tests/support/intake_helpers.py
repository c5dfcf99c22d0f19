"""Builders for the intake tests (test_intake*.py): zips, photos and bombs made in the test, and the `refused`/`accept`
calls. The `ws` fixture (tests/conftest.py) checks that nothing was written outside the job folder."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bot.training.intake import IntakeError, IntakeLimits, IntakeReport, prepare_dataset

MIB = 1024 * 1024
FEW = IntakeLimits(min_images=1)


# --- builders ---------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo(i: int, size: tuple[int, int] = (96, 96), fmt: str = "JPEG") -> bytes:
    """A distinct image per i (solid colour plus a marker square)."""
    im = Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53 + 40) % 256))
    im.paste((255 - (i * 37) % 256, 0, 0), (0, 0, 16, 16))
    return encode(im, fmt, quality=95) if fmt == "JPEG" else encode(im, fmt)


def photos(n: int, start: int = 0, folder: str = "") -> list[tuple[str, bytes]]:
    return [(f"{folder}img_{i:03d}.jpg", photo(i)) for i in range(start, start + n)]


def build_zip(path: Path, entries, compression: int = zipfile.ZIP_DEFLATED, after=None) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if after:
            after(zf)
    return path


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height, all zeros: tiny on disk, huge in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)
    rows_per_block = max(1, MIB // len(row))
    comp, parts, left = zlib.compressobj(6), [], height
    block = row * rows_per_block
    while left:
        n = min(rows_per_block, left)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def outputs(report: IntakeReport) -> dict[str, tuple[dict, Image.Image]]:
    """source_name -> (manifest entry, decoded output image)."""
    manifest = json.loads(report.manifest_path.read_text(encoding="utf-8"))
    result = {}
    for entry in manifest:
        with Image.open(report.manifest_path.parent / entry["file"]) as im:
            im.load()
            result[entry["source_name"]] = (entry, im.copy())
    return result


def close(a, b, tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def refused(space, limits: IntakeLimits | None = None) -> str:
    with pytest.raises(IntakeError) as info:
        prepare_dataset(space.zip, space.job, name="alice", default_caption=None, limits=limits)
    if space.job.exists():
        assert not (space.job / "images").exists() and not (space.job / "manifest.json").exists()
    message = str(info.value)
    assert "\n" not in message and len(message) < 1500
    return message


def accept(space, limits: IntakeLimits | None = None, *, name: str = "alice", caption: str | None = None) -> IntakeReport:
    return prepare_dataset(space.zip, space.job, name=name, default_caption=caption, limits=limits)
