"""Safe intake of a member's zip of photos for LoRA training (`/train`).

`prepare_dataset` checks the whole archive before reading anything (size, entry count, declared
sizes and compression ratios, paths, links, encryption), then reads each entry through
`ZipFile.open` with the same limits enforced again on the bytes actually produced (headers can
lie), decodes the photos with `bot.training.images` and writes them under generated names:

    job_dir/images/0001.png ...
    job_dir/manifest.json     [{"file": "images/0001.png", "caption", "width", "height", "source_name"}]

Nothing is ever extracted by its own name. Work happens in a hidden staging folder inside job_dir
that is renamed to images/ only on success and removed on failure. Synchronous: call it through
`asyncio.to_thread`. Duplicates are found in two steps: byte-identical files by a SHA-256 of their
bytes, before anything is decoded; then re-encoded copies and copies with other metadata by a
SHA-256 of the final decoded pixels (after orientation, RGB conversion and resizing to the training
size). Decoding is bounded before it starts, per image (bot.training.images) and for the whole
archive (IntakeLimits.max_decoded_pixels). The PNGs carry no metadata (EXIF, GPS, ...).

This module sorts and converts the entries (photos, caption files, skipped files) and reports on
them; the zip-level checks and the bounded reader are in bot/training/archive.py, whose
`IntakeError` and `IntakeLimits` are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..i18n import CHINESE, LocaleLike, Text, language_of, tr
from . import images
from .archive import MIB as MIB  # MIB and display_name: re-exported, their old import path
from .archive import NOT_A_ZIP, BoundedReader, IntakeError, IntakeLimits, check_entries, format_size
from .archive import display_name as display_name
from .archive import precheck_directory as _precheck_directory  # called through this module's name (tests patch it)

__all__ = ["IntakeError", "IntakeLimits", "IntakeReport", "prepare_dataset"]

CAPTION_MAX_CHARS = 1000
_CAPTION_READ_BYTES = 64 * 1024  # a caption file is read this far at most

# Reasons for skipped entries (stable strings: the summary groups by them).
FOLDER = "folder"
MAC_METADATA = "macOS metadata"
SYSTEM_FILE = "system file"
ORPHAN_TEXT = "text file without a matching image"
DUPLICATE = "duplicate"
OVER_LIMIT = "over the limit"
UNSUPPORTED_COMPRESSION = "unsupported compression method"
IGNORED_REASONS = frozenset({FOLDER, MAC_METADATA, SYSTEM_FILE})

_SYSTEM_FILES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".localized", "icon\r"}
_MAC_FOLDERS = {"__macosx", ".trashes", ".spotlight-v100", ".fseventsd", ".temporaryitems"}
_NOUNS = {  # reason -> (singular, plural) for the summary
    images.NOT_IMAGE: ("not an image", "not images"),
    images.CORRUPT: ("corrupt or truncated image", "corrupt or truncated images"),
    images.UNSUPPORTED: (
        "in an unsupported format (use JPEG, PNG, WebP or HEIC)",
        "in unsupported formats (use JPEG, PNG, WebP or HEIC)",
    ),
    images.NESTED_ARCHIVE: ("nested archive (not opened)", "nested archives (not opened)"),
    images.NO_HEIC: ("HEIC photo (HEIC support not installed)", "HEIC photos (HEIC support not installed)"),
    images.BOMB: ("image with too many pixels for its file size", "images with too many pixels for their file size"),
    images.OVER_BUDGET: ("image over the archive's decoding budget", "images over the archive's decoding budget"),
    DUPLICATE: ("duplicate", "duplicates"),
    ORPHAN_TEXT: ("text file without a matching image", "text files without a matching image"),
    UNSUPPORTED_COMPRESSION: ("file with an unsupported compression method", "files with an unsupported compression method"),
    FOLDER: ("folder", "folders"),
    MAC_METADATA: ("macOS metadata file", "macOS metadata files"),
    SYSTEM_FILE: ("system file", "system files"),
}
_NOUNS_ZH = {  # the same reasons for a zh-CN member (Chinese nouns take no plural: "<reason> <n> 个")
    images.NOT_IMAGE: "不是图片",
    images.CORRUPT: "图片损坏或不完整",
    images.UNSUPPORTED: "图片格式不受支持（请用 JPEG、PNG、WebP 或 HEIC）",
    images.NESTED_ARCHIVE: "嵌套的压缩包（未打开）",
    images.NO_HEIC: "HEIC 照片（未安装 HEIC 支持）",
    images.BOMB: "图片像素数与文件大小不符",
    images.OVER_BUDGET: "图片超出压缩包的解码预算",
    DUPLICATE: "重复的图片",
    ORPHAN_TEXT: "没有对应图片的文本文件",
    UNSUPPORTED_COMPRESSION: "压缩方式不受支持的文件",
    FOLDER: "文件夹",
    MAC_METADATA: "macOS 元数据文件",
    SYSTEM_FILE: "系统文件",
}


@dataclass
class IntakeReport:
    accepted: int
    skipped: list[tuple[str, str]]  # (entry name in the zip, reason)
    duplicates: int
    manifest_path: Path
    images_dir: Path
    captions_from_files: int = 0  # images whose caption came from a .txt beside them
    entries: list[dict] = field(default_factory=list, repr=False)  # the manifest's content

    def summary(self, locale: LocaleLike = None) -> str:
        """A short text for a Discord message (< 1500 characters, no user-controlled text), in `locale`'s language."""
        chinese = language_of(locale) == CHINESE
        images = f"{self.accepted} 张图片" if chinese else _count(self.accepted, "image", "images")
        parts = [tr(locale, "intake.accepted", images=images)]
        if self.captions_from_files:
            parts.append(tr(locale, "intake.captions", count=self.captions_from_files))
        problems = [reason for _, reason in self.skipped if reason not in IGNORED_REASONS]
        if problems:
            parts.append(tr(locale, "intake.skipped", count=len(problems), reasons=Reasons(problems)))
        ignored = len(self.skipped) - len(problems)
        if ignored:
            parts.append(tr(locale, "intake.ignored_one" if ignored == 1 else "intake.ignored", count=ignored))
        text = ("" if chinese else " ").join(parts)  # Chinese sentences end in 。 and take no space
        return text if len(text) < 1500 else text[:1496] + "…"


def prepare_dataset(
    zip_path: Path,
    job_dir: Path,
    *,
    name: str,
    default_caption: str | None,
    limits: IntakeLimits | None = None,
) -> IntakeReport:
    """Check and unpack a photo archive into job_dir; raise IntakeError if it is refused.

    Writes only inside job_dir: images/NNNN.png and manifest.json, neither of which may exist yet
    (FileExistsError otherwise: that is a caller bug, not a user error).
    """
    limits = limits or IntakeLimits()
    zip_path, job_dir = Path(zip_path), Path(job_dir)
    if not name or not name.strip():
        raise ValueError("name must not be empty")
    caption = _clean_caption(default_caption or "") or f"a photo of {name.strip()}"

    try:
        archive_size = zip_path.stat().st_size
    except OSError:
        raise IntakeError(Text("intake.unreadable")) from None
    if archive_size > limits.max_archive_bytes:
        raise IntakeError(Text("intake.archive_too_big", size=format_size(archive_size),
                                 limit=format_size(limits.max_archive_bytes)))

    job_dir.mkdir(parents=True, exist_ok=True)
    root = job_dir.resolve()
    images_dir, manifest_path = root / "images", root / "manifest.json"
    for path in (images_dir, manifest_path):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists")

    _precheck_directory(zip_path, limits)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise IntakeError(NOT_A_ZIP) from None

    staging = Path(tempfile.mkdtemp(prefix=".intake-", dir=root))
    try:
        with zf:
            infos = zf.infolist()
            check_entries(infos, limits, archive_size)
            report = _unpack(zf, infos, staging, root, caption, name.strip(), limits)
        _inside(root, images_dir)
        os.rename(staging / "images", images_dir)
        tmp_manifest = _inside(root, staging / "manifest.json")
        tmp_manifest.write_text(json.dumps(report.entries, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp_manifest, _inside(root, manifest_path))
    except BaseException:
        if os.path.lexists(images_dir) and not os.path.lexists(staging / "images"):
            shutil.rmtree(images_dir, ignore_errors=True)  # renamed but the manifest failed
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.manifest_path, report.images_dir = manifest_path, images_dir
    return report


# --- unpacking --------------------------------------------------------------------------------


def _unpack(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    staging: Path,
    root: Path,
    default_caption: str,
    name: str,
    limits: IntakeLimits,
) -> IntakeReport:
    skipped: list[tuple[str, str]] = []
    captions: dict[tuple[str, str], zipfile.ZipInfo] = {}
    candidates: list[zipfile.ZipInfo] = []
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        base = path.name.casefold()
        folders = {part.casefold() for part in path.parts[:-1]}
        if info.is_dir() or info.filename.endswith(("/", "\\")):
            skipped.append((info.filename, FOLDER))
        elif folders & _MAC_FOLDERS or base.startswith("._"):
            skipped.append((info.filename, MAC_METADATA))
        elif base in _SYSTEM_FILES:
            skipped.append((info.filename, SYSTEM_FILE))
        elif path.suffix.casefold() == ".txt":
            if _caption_key(path) in captions:  # a.txt and A.txt: the first one wins
                skipped.append((info.filename, ORPHAN_TEXT))
            else:
                captions[_caption_key(path)] = info
        else:
            candidates.append(info)
    candidates.sort(key=lambda info: _natural_key(info.filename))

    reader = BoundedReader(zf, limits)
    out_dir = _inside(root, staging / "images")
    out_dir.mkdir()
    entries: list[dict] = []
    seen: set[str] = set()  # digests of the decoded pixels of accepted images
    verdicts: dict[bytes, str] = {}  # a file's bytes (digest) -> what a copy of it gets, without decoding
    budget = limits.max_decoded_pixels
    claimed = {_caption_key(PurePosixPath(info.filename.replace("\\", "/"))) for info in candidates}
    duplicates = from_files = 0
    for info in candidates:
        if len(entries) >= limits.max_images:
            skipped.append((info.filename, OVER_LIMIT))
            continue
        path = PurePosixPath(info.filename.replace("\\", "/"))
        try:
            data = reader.read(info)
        except NotImplementedError:
            skipped.append((info.filename, UNSUPPORTED_COMPRESSION))
            continue
        file_digest = hashlib.sha256(data).digest()
        if file_digest in verdicts:  # a byte-identical copy: the first one's verdict, not decoded again
            duplicates += verdicts[file_digest] == DUPLICATE
            skipped.append((info.filename, verdicts[file_digest]))
            continue
        try:
            photo = images.load_photo(data, ext=path.suffix.casefold(), max_pixels=limits.max_pixels,
                                      longest_edge=limits.longest_edge, min_edge=limits.min_edge,
                                      stored_size=info.compress_size, pixel_budget=budget)
        except images.Rejected as rejected:
            budget -= rejected.decoded_pixels
            verdicts[file_digest] = rejected.reason  # the budget only shrinks: a copy gets the same verdict
            skipped.append((info.filename, rejected.reason))
            continue
        budget -= photo.decoded_pixels
        verdicts[file_digest] = DUPLICATE
        if photo.digest in seen:
            duplicates += 1
            skipped.append((info.filename, DUPLICATE))
            continue
        seen.add(photo.digest)

        caption, key = default_caption, _caption_key(path)
        if key in captions:
            try:
                text = _clean_caption(reader.read(captions[key], at_most=_CAPTION_READ_BYTES).decode("utf-8-sig", "replace"))
            except NotImplementedError:
                text = ""
            if text:
                caption, from_files = text, from_files + 1

        file_name = f"{len(entries) + 1:04d}.png"
        _write_png(photo, _inside(root, out_dir / file_name))
        entries.append(
            {
                "file": f"images/{file_name}",
                "caption": caption,
                "width": photo.image.width,
                "height": photo.image.height,
                "source_name": info.filename,
            }
        )

    for key, info in captions.items():
        if key not in claimed:  # a caption of a skipped image is not reported again
            skipped.append((info.filename, ORPHAN_TEXT))

    if len(entries) < limits.min_images:
        problems = [reason for _, reason in skipped if reason not in IGNORED_REASONS]
        message = "intake.too_few_one" if len(entries) == 1 else "intake.too_few" if entries else "intake.none_usable"
        skipped_text = Text("intake.skipped_suffix", reasons=Reasons(problems)) if problems else ""
        raise IntakeError(Text(message, count=len(entries), min=limits.min_images, skipped=skipped_text))
    return IntakeReport(
        accepted=len(entries),
        skipped=skipped,
        duplicates=duplicates,
        manifest_path=root / "manifest.json",
        images_dir=root / "images",
        captions_from_files=from_files,
        entries=entries,
    )


def _write_png(photo: images.Photo, path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "wb") as fh:
        photo.image.save(fh, format="PNG", compress_level=1)


def _inside(root: Path, path: Path) -> Path:
    """`path` if it resolves inside `root`; refuses anything else (defence in depth)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise RuntimeError(f"refusing to write outside the job folder: {path}")
    return resolved


# --- text helpers -----------------------------------------------------------------------------


def _caption_key(path: PurePosixPath) -> tuple[str, str]:
    return str(path.parent).casefold(), path.stem.casefold()


def _clean_caption(text: str) -> str:
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf") or ch in "\t\n\r ")
    return " ".join(text.split())[:CAPTION_MAX_CHARS].strip()



def _natural_key(name: str) -> list:
    """img2 before img10. The odd parts of the split are the digit runs: compared by value as (length
    without leading zeros, digits), never through int(), which refuses '²' (isdigit but not a decimal)
    and runs of over 4300 digits. Every key alternates str and tuple, so any two keys compare."""
    parts = re.split(r"(\d+)", name)
    return [(len(part.lstrip("0")), part.lstrip("0"), part) if index % 2 else part.casefold()
            for index, part in enumerate(parts)]


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _group(reasons: list[str], top: int = 8, language: str = "en") -> str:
    counts = Counter(reasons).most_common()
    if language == CHINESE:
        phrases = [f"{_NOUNS_ZH.get(reason, reason)} {n} 个" for reason, n in counts[:top]]
    else:
        phrases = [_count(n, *_NOUNS.get(reason, (reason, reason))) for reason, n in counts[:top]]
    if len(counts) > top:
        phrases.append(tr(language, "intake.other_reasons", count=sum(n for _, n in counts[top:])))
    return ("、" if language == CHINESE else ", ").join(phrases)


class Reasons(str):
    """Why files were skipped, grouped: reads as English (the message an IntakeError carries), and is written again
    in the member's language when its message is (bot/i18n/text.py calls `localised`)."""

    reasons: list[str]

    def __new__(cls, reasons: list[str]) -> Reasons:
        text = super().__new__(cls, _group(reasons))
        text.reasons = list(reasons)
        return text

    def localised(self, where: LocaleLike) -> str:
        return _group(self.reasons, language=language_of(where))
