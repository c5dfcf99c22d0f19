"""Safe intake of a member's zip of photos for LoRA training (`/train`).

`prepare_dataset` checks the whole archive before reading anything (size, entry count, declared
sizes and compression ratios, paths, links, encryption), then reads each entry through
`ZipFile.open` with the same limits enforced again on the bytes actually produced (headers can
lie), decodes the photos with `bot.training.images` and writes them under generated names:

    job_dir/images/0001.png ...
    job_dir/manifest.json     [{"file": "images/0001.png", "caption", "width", "height", "source_name"}]

Nothing is ever extracted by its own name. Work happens in a hidden staging folder inside job_dir
that is renamed to images/ only on success and removed on failure. Synchronous: call it through
`asyncio.to_thread`. Duplicates are found by a SHA-256 of the final decoded pixels (after
orientation, RGB conversion and resizing), so re-encoded copies and copies with other metadata
are dropped too. The PNGs carry no metadata (EXIF, GPS, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import images

__all__ = ["IntakeError", "IntakeLimits", "IntakeReport", "prepare_dataset"]

MIB = 1024 * 1024
CAPTION_MAX_CHARS = 1000
_CAPTION_READ_BYTES = 64 * 1024  # a caption file is read this far at most
_CHUNK = MIB
_CD_BYTES_PER_ENTRY = 1024  # generous bound on one central-directory record, for the pre-check

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
    DUPLICATE: ("duplicate", "duplicates"),
    ORPHAN_TEXT: ("text file without a matching image", "text files without a matching image"),
    UNSUPPORTED_COMPRESSION: ("file with an unsupported compression method", "files with an unsupported compression method"),
    FOLDER: ("folder", "folders"),
    MAC_METADATA: ("macOS metadata file", "macOS metadata files"),
    SYSTEM_FILE: ("system file", "system files"),
}


class IntakeError(Exception):
    """The archive is refused as a whole; str(error) is a user-facing message."""


@dataclass(frozen=True)
class IntakeLimits:
    max_archive_bytes: int = 512 * MIB
    max_entries: int = 2000
    max_total_uncompressed: int = 2048 * MIB
    max_file_uncompressed: int = 64 * MIB
    max_ratio: float = 100  # per entry, uncompressed / compressed
    ratio_min_bytes: int = MIB  # the ratio applies only to entries bigger than this (.DS_Store & co. compress >100:1)
    min_images: int = 10
    max_images: int = 500
    max_pixels: int = 40_000_000  # per image, checked on the header before decoding
    longest_edge: int = 1024
    min_edge: int = 64  # shorter edge below this: skipped as too small


@dataclass
class IntakeReport:
    accepted: int
    skipped: list[tuple[str, str]]  # (entry name in the zip, reason)
    duplicates: int
    manifest_path: Path
    images_dir: Path
    captions_from_files: int = 0  # images whose caption came from a .txt beside them
    entries: list[dict] = field(default_factory=list, repr=False)  # the manifest's content

    def summary(self) -> str:
        """A short text for a Discord message (< 1500 characters, no user-controlled text)."""
        parts = [f"Accepted {_count(self.accepted, 'image', 'images')}."]
        if self.captions_from_files:
            parts.append(f"{self.captions_from_files} with their own caption file.")
        problems = [reason for _, reason in self.skipped if reason not in IGNORED_REASONS]
        if problems:
            parts.append(f"Skipped {len(problems)}: {_group(problems)}.")
        ignored = len(self.skipped) - len(problems)
        if ignored:
            parts.append(f"Ignored {ignored} system {'file or folder' if ignored == 1 else 'files and folders'}.")
        text = " ".join(parts)
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
        raise IntakeError("The uploaded file could not be read.") from None
    if archive_size > limits.max_archive_bytes:
        raise IntakeError(f"The archive is {_size(archive_size)}; the limit is {_size(limits.max_archive_bytes)}.")

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
        raise IntakeError(_NOT_A_ZIP) from None

    staging = Path(tempfile.mkdtemp(prefix=".intake-", dir=root))
    try:
        with zf:
            infos = zf.infolist()
            _check_entries(infos, limits)
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


# --- archive checks ---------------------------------------------------------------------------

_NOT_A_ZIP = "That file is not a zip archive, or it is damaged. Zip your photos and upload the .zip."


def _precheck_directory(zip_path: Path, limits: IntakeLimits) -> None:
    """Refuse a huge central directory before zipfile parses all of it into memory."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # private helper gone in some future Python: rely on the checks after opening
        return
    try:
        with open(zip_path, "rb") as fp:
            record = end_record(fp)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        raise IntakeError(_NOT_A_ZIP) from None
    if record is None:
        raise IntakeError(_NOT_A_ZIP)
    entries, directory_size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]
    if entries > limits.max_entries or directory_size > limits.max_entries * _CD_BYTES_PER_ENTRY:
        raise IntakeError(f"The archive has too many files (the limit is {limits.max_entries}).")


def _check_entries(infos: list[zipfile.ZipInfo], limits: IntakeLimits) -> None:
    if len(infos) > limits.max_entries:
        raise IntakeError(f"The archive has {len(infos)} files; the limit is {limits.max_entries}.")
    total = 0
    for info in infos:
        shown = display_name(info.filename)
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", info.filename):
            raise IntakeError(f"The archive contains an absolute path ({shown}). Zip the photos with relative paths.")
        if ".." in parts:
            raise IntakeError(f"The archive contains a path that climbs out of its folder ({shown}).")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise IntakeError(f"The archive contains a symbolic link ({shown}). Zip the photos themselves.")
        if info.flag_bits & 0x1:
            raise IntakeError(f"{shown} is password-protected. Upload an archive without a password.")
        if info.file_size > limits.max_file_uncompressed:
            raise IntakeError(
                f"{shown} unpacks to {_size(info.file_size)}; files may be at most {_size(limits.max_file_uncompressed)}."
            )
        if info.file_size > max(limits.ratio_min_bytes, info.compress_size * limits.max_ratio):
            ratio = info.file_size / max(1, info.compress_size)
            raise IntakeError(
                f"{shown} is compressed {ratio:.0f}:1 (the limit is {limits.max_ratio:g}:1); "
                "the archive looks like a zip bomb and was refused."
            )
        total += info.file_size
    if total > limits.max_total_uncompressed:
        raise IntakeError(f"The archive unpacks to {_size(total)}; the limit is {_size(limits.max_total_uncompressed)}.")


class _Reader:
    """Reads entries while enforcing the limits on the bytes actually decompressed."""

    def __init__(self, zf: zipfile.ZipFile, limits: IntakeLimits) -> None:
        self.zf, self.limits, self.total = zf, limits, 0

    def read(self, info: zipfile.ZipInfo, *, at_most: int | None = None) -> bytes:
        """The entry's bytes (only the first `at_most` if given). Raises IntakeError, NotImplementedError."""
        limits, shown = self.limits, display_name(info.filename)
        cap = min(limits.max_file_uncompressed, max(limits.ratio_min_bytes, int(info.compress_size * limits.max_ratio)))
        chunks, size = [], 0
        try:
            with self.zf.open(info) as fh:
                while True:
                    want = _CHUNK if at_most is None else min(_CHUNK, at_most - size)
                    chunk = fh.read(want) if want > 0 else b""
                    if not chunk:
                        break
                    size += len(chunk)
                    self.total += len(chunk)
                    if size > info.file_size:
                        raise IntakeError(f"{shown} is larger than its header says; the archive was refused.")
                    if size > cap:
                        raise IntakeError(f"{shown} unpacks to more than {_size(cap)} (zip bomb?); the archive was refused.")
                    if self.total > limits.max_total_uncompressed:
                        raise IntakeError(
                            f"The archive unpacks to more than {_size(limits.max_total_uncompressed)}; it was refused."
                        )
                    chunks.append(chunk)
        except (IntakeError, NotImplementedError):  # NotImplementedError: a compression method zipfile lacks
            raise
        except Exception:  # BadZipFile (bad CRC, bad local header), zlib.error, EOFError, lzma.LZMAError, ...
            raise IntakeError(f"The archive is damaged: {shown} could not be unpacked.") from None
        return b"".join(chunks)


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

    reader = _Reader(zf, limits)
    out_dir = _inside(root, staging / "images")
    out_dir.mkdir()
    entries: list[dict] = []
    seen: set[str] = set()
    claimed = {_caption_key(PurePosixPath(info.filename.replace("\\", "/"))) for info in candidates}
    duplicates = from_files = 0
    for info in candidates:
        if len(entries) >= limits.max_images:
            skipped.append((info.filename, OVER_LIMIT))
            continue
        path = PurePosixPath(info.filename.replace("\\", "/"))
        try:
            photo = _load(reader, info, path, limits)
        except NotImplementedError:
            skipped.append((info.filename, UNSUPPORTED_COMPRESSION))
            continue
        except images.Rejected as rejected:
            skipped.append((info.filename, rejected.reason))
            continue
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
        usable = f"Only {len(entries)} usable" if entries else "No usable"
        message = (
            f"{usable} {'image' if len(entries) == 1 else 'images'} in the archive; at least {limits.min_images} are needed."
        )
        if problems:
            message += f" Skipped: {_group(problems)}."
        raise IntakeError(message)
    return IntakeReport(
        accepted=len(entries),
        skipped=skipped,
        duplicates=duplicates,
        manifest_path=root / "manifest.json",
        images_dir=root / "images",
        captions_from_files=from_files,
        entries=entries,
    )


def _load(reader: _Reader, info: zipfile.ZipInfo, path: PurePosixPath, limits: IntakeLimits) -> images.Photo:
    return images.load_photo(
        reader.read(info),
        ext=path.suffix.casefold(),
        max_pixels=limits.max_pixels,
        longest_edge=limits.longest_edge,
        min_edge=limits.min_edge,
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


def display_name(name: str, limit: int = 80) -> str:
    """An entry name safe to show on Discord: no control/format characters or backticks, shortened, in `code`."""
    clean = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf")).replace("`", "'")
    if len(clean) > limit:
        clean = "…" + clean[-(limit - 1) :]
    return f"`{clean or '?'}`"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", name)]


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _group(reasons: list[str], top: int = 8) -> str:
    counts = Counter(reasons).most_common()
    phrases = [_count(n, *_NOUNS.get(reason, (reason, reason))) for reason, n in counts[:top]]
    if len(counts) > top:
        phrases.append(f"{sum(n for _, n in counts[top:])} for other reasons")
    return ", ".join(phrases)


def _size(n: int) -> str:
    if n >= 1024 * MIB:
        return f"{n / (1024 * MIB):.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"
