"""bot.training.intake, refused archives: size, entry and ratio caps, zip bombs, traversal, symlinks,
encryption, truncation. Every archive is built in the test (no binary fixtures)."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
from intake_helpers import (
    MIB,
    accept,
    build_zip,
    encode,
    photo,
    photos,
    png_header_bomb,
    refused,
)
from PIL import Image

from bot.training import intake
from bot.training.intake import IntakeLimits, IntakeReport, prepare_dataset

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
