"""bot.training.intake, accepted archives: images normalised, captions, skipped entries with reasons.
Every archive is built in the test (no binary fixtures)."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zipfile

import pytest
from intake_helpers import (
    FEW,
    accept,
    build_zip,
    close,
    encode,
    outputs,
    photo,
    photos,
    png_header_bomb,
)
from PIL import Image

from bot.training import images as images_mod
from bot.training.intake import IntakeLimits

# --- happy path -------------------------------------------------------------------------------


def test_clean_archive_writes_numbered_pngs_and_manifest(ws):
    build_zip(ws.zip, photos(12))
    report = accept(ws)
    assert report.accepted == 12 and report.skipped == [] and report.duplicates == 0
    assert report.manifest_path == (ws.job / "manifest.json").resolve()
    manifest = json.loads(report.manifest_path.read_text())
    assert [e["file"] for e in manifest] == [f"images/{i:04d}.png" for i in range(1, 13)]
    assert [e["source_name"] for e in manifest] == [f"img_{i:03d}.jpg" for i in range(12)]
    assert all(e["caption"] == "a photo of alice" and (e["width"], e["height"]) == (96, 96) for e in manifest)
    assert sorted(p.name for p in (ws.job / "images").iterdir()) == [f"{i:04d}.png" for i in range(1, 13)]
    assert report.summary() == "Accepted 12 images."


def test_default_caption_and_txt_overrides(ws):
    entries = photos(10)
    entries += [
        ("a.jpg", photo(50)),
        ("a.txt", "\ufeff  a photo of alice\n  smiling\t at the sea  \n".encode()),
        ("long.jpg", photo(51)),
        ("long.txt", ("word " * 600).encode()),
        ("empty.jpg", photo(52)),
        ("empty.txt", b"   \n"),
        ("sub/b.jpg", photo(53)),
        ("b.txt", b"not beside sub/b.jpg"),  # other folder: not its caption
        ("sub/c.jpg", photo(54)),
        ("sub/c.txt", "caf\u00e9 caption".encode()),
        ("README.txt", b"hello"),
    ]
    build_zip(ws.zip, entries)
    report = accept(ws, caption="ohwx woman")
    got = {src: entry["caption"] for src, (entry, _) in outputs(report).items()}
    assert got["a.jpg"] == "a photo of alice smiling at the sea"
    assert 990 < len(got["long.jpg"]) <= 1000 and got["long.jpg"].startswith("word word")
    assert got["empty.jpg"] == "ohwx woman"
    assert got["sub/b.jpg"] == "ohwx woman"
    assert got["sub/c.jpg"] == "caf\u00e9 caption"
    assert got["img_000.jpg"] == "ohwx woman"
    assert report.captions_from_files == 3
    assert sorted(report.skipped) == [
        ("README.txt", "text file without a matching image"),
        ("b.txt", "text file without a matching image"),
    ]


def test_formats_are_normalised_to_rgb(ws):
    cmyk = encode(Image.new("CMYK", (96, 96), (0, 255, 255, 0)), "JPEG", quality=95)  # red

    sixteen = Image.frombytes(
        "I;16", (100, 80), b"".join(struct.pack("<H", 65535 if x < 50 else 32896) for _ in range(80) for x in range(100))
    )
    rgba = Image.new("RGBA", (96, 96), (0, 0, 255, 0))  # transparent blue -> white
    rgba.paste((0, 255, 0, 255), (0, 0, 48, 96))  # opaque green left half
    rgba.paste((255, 0, 0, 128), (48, 0, 96, 48))  # half-transparent red -> pink
    palette = Image.new("P", (96, 96), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (48, 0, 96, 96))
    rotated = Image.new("RGB", (160, 80), (0, 0, 255))
    rotated.paste((255, 0, 0), (0, 0, 80, 80))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    gray = Image.new("L", (96, 96), 200)
    build_zip(
        ws.zip,
        [
            ("cmyk.jpg", cmyk),
            ("deep.png", encode(sixteen)),
            ("alpha.png", encode(rgba)),
            ("palette.png", encode(palette, transparency=1)),
            ("lossless.webp", encode(Image.new("RGB", (120, 90), (10, 200, 30)), "WEBP", lossless=True)),
            ("rotated.jpg", encode(rotated, "JPEG", quality=95, exif=exif.tobytes())),
            ("huge.png", encode(Image.new("RGB", (3000, 1500), (90, 90, 200)))),
            ("tall.jpg", encode(Image.new("RGB", (1100, 2200), (200, 90, 90)), "JPEG")),
            ("gray.jpg", encode(gray, "JPEG")),
            ("actually_png.jpg", encode(Image.new("RGB", (96, 96), (1, 2, 3)))),  # content decides, not the name
        ],
    )
    out = outputs(accept(ws))
    assert len(out) == 10
    assert all(im.mode == "RGB" for _, im in out.values())
    assert close(out["cmyk.jpg"][1].getpixel((48, 48)), (255, 0, 0))
    deep = out["deep.png"][1]
    assert deep.getpixel((10, 10)) == (255, 255, 255) and deep.getpixel((90, 10)) == (128, 128, 128)
    alpha = out["alpha.png"][1]
    assert alpha.getpixel((10, 10)) == (0, 255, 0)
    assert alpha.getpixel((80, 80)) == (255, 255, 255)
    assert close(alpha.getpixel((80, 10)), (255, 127, 127), tol=2)
    pal = out["palette.png"][1]
    assert pal.getpixel((10, 10)) == (255, 0, 0) and pal.getpixel((80, 10)) == (255, 255, 255)
    assert out["lossless.webp"][1].getpixel((5, 5)) == (10, 200, 30)
    turned = out["rotated.jpg"][1]
    assert turned.size == (80, 160)
    assert close(turned.getpixel((40, 20)), (255, 0, 0), tol=30) and close(turned.getpixel((40, 140)), (0, 0, 255), tol=30)
    assert out["huge.png"][1].size == (1024, 512) and (out["huge.png"][0]["width"], out["huge.png"][0]["height"]) == (1024, 512)
    assert out["tall.jpg"][1].size == (512, 1024)
    assert close(out["tall.jpg"][1].getpixel((256, 512)), (200, 90, 90), tol=6)
    assert close(out["gray.jpg"][1].getpixel((5, 5)), (200, 200, 200), tol=3)
    assert out["actually_png.jpg"][1].getpixel((5, 5)) == (1, 2, 3)


def test_small_images_are_never_upscaled(ws):
    build_zip(ws.zip, [("small.png", encode(Image.new("RGB", (300, 200), (5, 5, 5))))])
    ((entry, im),) = outputs(accept(ws, FEW)).values()
    assert im.size == (300, 200) == (entry["width"], entry["height"])


def test_heic_is_accepted(ws):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    heic = encode(Image.new("RGB", (128, 96), (220, 30, 30)), "HEIF", quality=90)
    assert heic[4:12] == b"ftypheic"
    build_zip(ws.zip, [("IMG_0001.HEIC", heic), ("disguised.jpg", heic)])
    report = accept(ws, FEW)
    out = outputs(report)
    assert report.accepted == 1 and report.duplicates == 1  # same pixels twice
    ((entry, im),) = out.values()
    assert im.size == (128, 96) and close(im.getpixel((64, 48)), (220, 30, 30), tol=20)


def test_heic_without_pillow_heif_is_skipped_with_reason(ws, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    heic = encode(Image.new("RGB", (96, 96), (0, 0, 0)), "HEIF")
    monkeypatch.setattr(images_mod, "HEIF_AVAILABLE", False)
    build_zip(ws.zip, [*photos(1), ("IMG_0002.heic", heic)])
    report = accept(ws, FEW)
    assert report.accepted == 1 and report.skipped == [("IMG_0002.heic", "HEIC support not installed")]
    assert "1 HEIC photo (HEIC support not installed)" in report.summary()


# --- skipped entries --------------------------------------------------------------------------


def test_junk_is_skipped_with_reasons(ws):
    good = photos(10)
    jpeg = photo(77)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", jpeg)
    re_encoded = encode(Image.open(io.BytesIO(good[0][1])), "PNG")  # same pixels, other bytes
    entries = good + [
        ("photos/", b""),
        ("__MACOSX/._img_000.jpg", b"\x00\x05\x16\x07" + bytes(100)),
        ("__MACOSX/photos/img.jpg", jpeg),
        ("._x.jpg", b"\x00\x05\x16\x07"),
        (".DS_Store", bytes(6148)),
        ("photos/Thumbs.db", b"\xd0\xcf\x11\xe0"),
        ("notes.md", b"# my photos\n"),
        ("fake.png", b"this is not a png at all"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("truncated.txt", b"the caption of a skipped image is not reported on its own"),
        ("corrupt.jpg", jpeg[:200] + bytes(range(256)) * 8),
        ("inner.zip", inner.getvalue()),
        ("zip_in_disguise.jpg", inner.getvalue()),
        ("anim.gif", encode(Image.new("RGB", (96, 96)), "GIF")),
        ("tiny.png", encode(Image.new("RGB", (10, 10), (1, 1, 1)))),
        ("x_copy_of_0.jpg", good[0][1]),
        ("x_reencoded_0.png", re_encoded),
        ("empty.jpg", b""),
    ]
    build_zip(ws.zip, entries)
    report = accept(ws)
    assert report.accepted == 10 and report.duplicates == 2
    reasons = dict(report.skipped)
    assert reasons == {
        "photos/": "folder",
        "__MACOSX/._img_000.jpg": "macOS metadata",
        "__MACOSX/photos/img.jpg": "macOS metadata",
        "._x.jpg": "macOS metadata",
        ".DS_Store": "system file",
        "photos/Thumbs.db": "system file",
        "notes.md": "not an image",
        "fake.png": "not an image",
        "empty.jpg": "not an image",
        "truncated.jpg": "corrupt or truncated image",
        "corrupt.jpg": "corrupt or truncated image",
        "inner.zip": "nested archive",
        "zip_in_disguise.jpg": "nested archive",
        "anim.gif": "unsupported image format",
        "tiny.png": "too small (under 64 px)",
        "x_copy_of_0.jpg": "duplicate",
        "x_reencoded_0.png": "duplicate",
    }
    summary = report.summary()
    assert summary.startswith("Accepted 10 images. Skipped 11: 3 not images, ")
    assert "2 corrupt or truncated images" in summary and "2 duplicates" in summary and "1 in an unsupported format" in summary
    assert "2 duplicates" in summary and "2 nested archives (not opened)" in summary and "1 too small (under 64 px)" in summary
    assert "Ignored 6 system files and folders." in summary
    assert "fake.png" not in summary and len(summary) < 1500


def test_decompression_bombs_are_skipped_without_touching_pillow_globals(ws):
    before = Image.MAX_IMAGE_PIXELS
    build_zip(
        ws.zip,
        [
            *photos(1),
            ("bomb_400mp.png", png_header_bomb(20000, 20000)),  # > 2x Pillow's limit: DecompressionBombError
            ("bomb_100mp.png", png_header_bomb(10000, 10000)),  # between 1x and 2x: Pillow only warns
            ("big_42mp.png", png_header_bomb(7000, 6000)),  # under Pillow's limit, over ours (40 MP)
        ],
    )
    assert ws.zip.stat().st_size < 200_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = accept(ws, FEW)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before
    assert report.accepted == 1
    assert sorted(report.skipped) == [
        ("big_42mp.png", "too large (over 40 megapixels)"),
        ("bomb_100mp.png", "too large (over 40 megapixels)"),
        ("bomb_400mp.png", "too large (over 40 megapixels)"),
    ]


def test_pixel_limit_is_per_call(ws):
    build_zip(ws.zip, [("a.png", encode(Image.new("RGB", (200, 200)))), ("b.png", encode(Image.new("RGB", (90, 90), "red")))])
    report = accept(ws, IntakeLimits(min_images=1, max_pixels=10_000))
    assert report.accepted == 1 and report.skipped == [("a.png", "too large (over 0.01 megapixels)")]


def test_more_than_max_images_keeps_the_first(ws):
    build_zip(ws.zip, list(reversed(photos(15))))  # sorted by name, not by zip order
    report = accept(ws, IntakeLimits(max_images=12))
    assert report.accepted == 12
    assert sorted(report.skipped) == [(f"img_{i:03d}.jpg", "over the limit") for i in (12, 13, 14)]
    assert [e["source_name"] for e, _ in outputs(report).values()] == [f"img_{i:03d}.jpg" for i in range(12)]
    assert "Skipped 3: 3 over the limit" in report.summary()


def test_natural_sort_order(ws):
    build_zip(ws.zip, [("p10.jpg", photo(10)), ("p9.jpg", photo(9)), ("p100.jpg", photo(100))])
    manifest = json.loads(accept(ws, FEW).manifest_path.read_text())
    assert [e["source_name"] for e in manifest] == ["p9.jpg", "p10.jpg", "p100.jpg"]
