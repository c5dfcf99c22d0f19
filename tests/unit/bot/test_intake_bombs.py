"""Photo intake against hostile zips (issue #18): decoding is bounded before it starts, and copies are found cheaply."""

from __future__ import annotations

import io
import struct
import time
import zipfile

import numpy as np
from intake_helpers import FEW, accept, build_zip, encode, photo, photos, png_header_bomb, refused
from PIL import Image

from bot.training import images as images_mod
from bot.training.intake import IntakeLimits


def test_a_small_png_that_decodes_to_40_megapixels_is_skipped_without_decoding(ws):
    """39.6 MP in 5 KB (under the 40 MP cap): decoding it cost 1.3 s and 40 MB; its pixels per stored byte give it away."""
    build_zip(ws.zip, [*photos(1), *((f"bomb{i}.png", png_header_bomb(6000 + i, 6600)) for i in range(3))])
    start = time.perf_counter()
    report = accept(ws, FEW)
    assert time.perf_counter() - start < 1.0
    assert report.accepted == 1
    assert [reason for _, reason in report.skipped] == [images_mod.BOMB] * 3
    assert "3 images with too many pixels for their file size" in report.summary()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)).resize((width, height))


def gradient(width: int, height: int) -> Image.Image:
    xs, ys = np.meshgrid(np.linspace(0, 255, width, dtype=np.float32), np.linspace(0, 255, height, dtype=np.float32))
    return Image.fromarray(np.stack([xs, ys, (xs + ys) / 2], axis=2).astype(np.uint8))


def test_real_photo_sizes_are_kept(ws):
    """A 12 MP camera JPEG, a 10 MP smooth PNG (32 pixels per byte) and a plain 1.5 MP PNG are photos, not bombs."""
    build_zip(ws.zip, [("camera.jpg", encode(noise(4000, 3000), "JPEG", quality=90)),
                       ("smooth.png", encode(gradient(4000, 2500))),
                       ("plain.png", encode(Image.new("RGB", (1400, 1100), (200, 180, 160))))], zipfile.ZIP_STORED)
    report = accept(ws, FEW)
    assert report.accepted == 3, report.skipped


def test_identical_files_are_decoded_once(ws, monkeypatch):
    calls = []
    real = images_mod.load_photo
    monkeypatch.setattr(images_mod, "load_photo", lambda data, **kw: calls.append(len(data)) or real(data, **kw))
    same = photo(7)
    build_zip(ws.zip, [*photos(3), *((f"copy{i}.jpg", same) for i in range(20))])
    report = accept(ws, FEW)
    assert report.accepted == 4 and report.duplicates == 19
    assert len(calls) == 4  # the 19 byte-identical copies are never decoded
    assert sorted(name for name, reason in report.skipped if reason == "duplicate") == sorted(
        f"copy{i}.jpg" for i in range(1, 20))


def test_reencoded_copies_are_still_duplicates(ws):
    """Different bytes, same pixels: found by the digest of the decoded (downscaled) image, as before."""
    im = Image.new("RGB", (96, 96), (10, 200, 30))
    build_zip(ws.zip, [("a.png", encode(im)), ("b.png", encode(im, compress_level=0)), ("c.png", encode(im, optimize=True))])
    report = accept(ws, FEW)
    assert report.accepted == 1 and report.duplicates == 2


def test_decoded_pixels_are_budgeted_per_archive(ws, monkeypatch):
    calls = []
    real = images_mod.load_photo
    monkeypatch.setattr(images_mod, "load_photo", lambda data, **kw: calls.append(1) or real(data, **kw))
    build_zip(ws.zip, photos(6))  # 96 x 96 each
    report = accept(ws, IntakeLimits(min_images=1, max_decoded_pixels=3 * 96 * 96))
    assert report.accepted == 3
    assert [reason for _, reason in report.skipped] == [images_mod.OVER_BUDGET] * 3
    assert "3 images over the archive's decoding budget" in report.summary()


def duplicate_central_records(data: bytes, copies: int) -> bytes:
    """The zip with its (single) central-directory record repeated: many entries over the same bytes."""
    end = data.rindex(b"PK\x05\x06")
    size, offset = struct.unpack("<II", data[end + 12:end + 20])
    record = data[offset:offset + size]
    directory = record * copies
    eocd = bytearray(data[end:end + 22])
    struct.pack_into("<HHII", eocd, 8, copies, copies, len(directory), offset)
    return data[:offset] + directory + bytes(eocd)


def test_entries_that_share_their_bytes_are_refused(ws):
    """An overlapping-entries zip bomb: 300 records over one file's bytes claim more than the archive holds."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", encode(noise(256, 256)))
    ws.zip.write_bytes(duplicate_central_records(one.getvalue(), 300))
    assert "overlap" in refused(ws, FEW)
