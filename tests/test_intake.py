"""bot.training.intake: every archive is built here, in the test (no binary fixtures)."""

from __future__ import annotations

import io
import json
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from bot.training import images as images_mod
from bot.training import intake
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


# --- fixture: every test checks that nothing was written outside job_dir ----------------------


@pytest.fixture
def ws(tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    job = tmp_path / "job"
    space = SimpleNamespace(zip=upload / "photos.zip", job=job, tmp=tmp_path)
    yield space
    for path in tmp_path.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        assert path == space.zip or job in path.parents, f"written outside job_dir: {path}"
    if job.exists():
        assert not list(job.glob(".intake-*")), "staging folder left behind"
    assert not Path("/abs.png").exists()


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


# --- refusals ---------------------------------------------------------------------------------


def test_too_few_images(ws):
    build_zip(ws.zip, [*photos(3), ("notes.md", b"x"), ("b.gif", encode(Image.new("RGB", (96, 96)), "GIF")), ("c.md", b"y")])
    message = refused(ws)
    assert message.startswith("Only 3 usable images in the archive; at least 10 are needed.")
    assert "Skipped: 2 not images, 1 in an unsupported format" in message


def test_no_images_at_all(ws):
    build_zip(ws.zip, [("a.txt", b"x"), ("__MACOSX/._a", b"")])
    assert (
        refused(ws) == "No usable images in the archive; at least 10 are needed. Skipped: 1 text file without a matching image."
    )


@pytest.mark.parametrize("content", [b"", b"not a zip at all" * 100, b"PK\x03\x04" + bytes(60)])
def test_not_a_zip(ws, content):
    ws.zip.write_bytes(content)
    assert "not a zip archive" in refused(ws)


def test_truncated_zip(ws):
    data = build_zip(ws.zip, photos(12)).read_bytes()
    ws.zip.write_bytes(data[: len(data) // 2])
    assert "not a zip archive" in refused(ws)


def test_archive_too_big(ws):
    build_zip(ws.zip, photos(12))
    assert "the limit is 1 KiB" in refused(ws, IntakeLimits(max_archive_bytes=1024))


def test_too_many_entries(ws):
    build_zip(ws.zip, photos(12))
    assert "too many files (the limit is 5)" in refused(ws, IntakeLimits(max_entries=5))


def test_too_many_entries_after_opening(ws, monkeypatch):
    monkeypatch.setattr(intake, "_precheck_directory", lambda *args: None)  # the count after opening still holds
    build_zip(ws.zip, photos(12))
    assert refused(ws, IntakeLimits(max_entries=5)) == "The archive has 12 files; the limit is 5."


def test_total_uncompressed_too_big(ws):
    import os

    build_zip(ws.zip, [(f"r{i}.bin", os.urandom(40_000)) for i in range(3)])
    assert "unpacks to 117 KiB; the limit is 98 KiB" in refused(ws, IntakeLimits(max_total_uncompressed=100_000))


def test_file_over_the_per_file_cap(ws):
    import os

    build_zip(ws.zip, [*photos(10), ("big.png", os.urandom(60_000))])
    assert refused(ws, IntakeLimits(max_file_uncompressed=50_000)).startswith(
        "`big.png` unpacks to 59 KiB; files may be at most 49 KiB"
    )


def test_zip_bomb_ratio(ws):
    build_zip(ws.zip, [*photos(10), ("bomb.png", bytes(5 * MIB))])
    message = refused(ws)
    assert "`bomb.png` is compressed" in message and "zip bomb" in message


def test_zip_bomb_over_64_mib(ws):
    with zipfile.ZipFile(ws.zip, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.jpg", "w") as fh:
        for _ in range(70):
            fh.write(bytes(MIB))
    assert ws.zip.stat().st_size < 200_000
    assert refused(ws).startswith("`zeros.jpg` unpacks to 70 MiB; files may be at most 64 MiB")


def test_lying_header_size_is_caught(ws):
    def lie(zf):
        zf.getinfo("liar.png").file_size = 4000  # the central directory now claims 4000 bytes

    build_zip(ws.zip, [*photos(10), ("liar.png", bytes(5 * MIB))], after=lie)
    assert zipfile.ZipFile(ws.zip).getinfo("liar.png").file_size == 4000
    assert "The archive is damaged: `liar.png` could not be unpacked." in refused(ws)


def test_streaming_limit_holds_even_if_the_reader_returns_more_than_declared(ws, monkeypatch):
    real_open = zipfile.ZipFile.open

    def open_(self, name, mode="r", pwd=None, **kwargs):
        if getattr(name, "filename", name) == "liar.png":
            return io.BytesIO(bytes(3 * MIB))
        return real_open(self, name, mode, pwd, **kwargs)

    build_zip(ws.zip, [*photos(10), ("liar.png", b"tiny")])
    monkeypatch.setattr(zipfile.ZipFile, "open", open_)
    assert "`liar.png` is larger than its header says" in refused(ws)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../evil.png", "climbs out of its folder"),
        ("photos/../../evil.png", "climbs out of its folder"),
        ("..\\evil.png", "climbs out of its folder"),
        ("/abs.png", "absolute path"),
        ("\\abs.png", "absolute path"),
        ("C:/abs.png", "absolute path"),
    ],
)
def test_traversal_and_absolute_paths(ws, name, expected):
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # ZipInfo() would normalise some of these; a hostile tool doesn't
    build_zip(ws.zip, [*photos(10), (info, photo(99))])
    assert zipfile.ZipFile(ws.zip).namelist()[-1] == name
    assert expected in refused(ws)
    assert not (ws.tmp / "evil.png").exists()


def test_symlink_entry(ws):
    link = zipfile.ZipInfo("photos/link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    build_zip(ws.zip, [*photos(10), (link, "/etc/passwd")])
    assert refused(ws) == "The archive contains a symbolic link (`photos/link.jpg`). Zip the photos themselves."


def test_encrypted_entry(ws):
    def encrypt(zf):
        zf.getinfo("secret.jpg").flag_bits |= 0x1

    build_zip(ws.zip, [*photos(10), ("secret.jpg", photo(99))], after=encrypt)
    assert zipfile.ZipFile(ws.zip).getinfo("secret.jpg").flag_bits & 0x1
    assert refused(ws) == "`secret.jpg` is password-protected. Upload an archive without a password."


def test_entry_names_are_sanitised_in_messages(ws):
    info = zipfile.ZipInfo("x")
    info.filename = "../\u202e`@everyone`\nx.png"
    build_zip(ws.zip, [(info, b"")])
    message = refused(ws)
    assert message == "The archive contains a path that climbs out of its folder (`../'@everyone'x.png`)."
    info.filename = "../" + "y" * 200 + ".png"
    build_zip(ws.zip, [(info, b"")])
    assert refused(ws) == f"The archive contains a path that climbs out of its folder (`…{'y' * 75}.png`)."


def test_failure_after_writing_leaves_no_images(ws):
    build_zip(
        ws.zip,
        [*photos(12), ("zz_liar.png", bytes(5 * MIB))],
        after=lambda zf: setattr(zf.getinfo("zz_liar.png"), "file_size", 10),
    )
    refused(ws)
    assert sorted(p.name for p in ws.job.iterdir()) == []


def test_existing_output_is_not_overwritten(ws):
    build_zip(ws.zip, photos(12))
    (ws.job / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        accept(ws)


def test_summary_is_bounded():
    reasons = [f"reason number {i} " + "x" * 100 for i in range(40)]
    report = IntakeReport(
        accepted=10,
        skipped=[(f"f{i}", r) for i, r in enumerate(reasons)],
        duplicates=0,
        manifest_path=Path("m"),
        images_dir=Path("i"),
    )
    text = report.summary()
    assert len(text) < 1500 and "32 for other reasons" in text


def test_concurrent_intakes_in_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> IntakeReport:
        zip_path = build_zip(tmp_path / f"u{i}.zip", [*photos(10, start=i * 10), ("bomb.png", png_header_bomb(10000, 10000))])
        return prepare_dataset(zip_path, tmp_path / f"job{i}", name=f"n{i}", default_caption=None)

    with warnings.catch_warnings(record=True) as caught, ThreadPoolExecutor(4) as pool:
        warnings.simplefilter("always")
        reports = list(pool.map(one, range(4)))
    assert [r.accepted for r in reports] == [10] * 4
    assert all(r.skipped == [("bomb.png", "too large (over 40 megapixels)")] for r in reports)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
