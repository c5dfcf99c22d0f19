"""Zip-level defences of the photo intake: the archive is judged before anything is read from it.

`precheck_directory` refuses a huge central directory before zipfile parses it; `check_entries` refuses
the archive for any entry with a bad declared size or compression ratio, an absolute or climbing path,
a symbolic link or encryption; `BoundedReader` reads entries while enforcing the same limits again on
the bytes actually produced (headers can lie). Kept apart from bot/training/intake.py, which decides
what to do with the entries (photos, captions, skipped files), so the security checks read in one
place. `IntakeError` and `IntakeLimits` live here because these checks raise and apply them; both are
re-exported by bot.training.intake and bot.training.
"""

from __future__ import annotations

import re
import stat
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..i18n import Text

__all__ = ["MIB", "NOT_A_ZIP", "BoundedReader", "IntakeError", "IntakeLimits", "check_entries", "display_name", "format_size",
           "precheck_directory"]

MIB = 1024 * 1024
_CHUNK = MIB
_CD_BYTES_PER_ENTRY = 1024  # generous bound on one central-directory record, for the pre-check
NOT_A_ZIP = Text("intake.not_a_zip")


class IntakeError(Exception):
    """The archive is refused as a whole; str(error) is a user-facing message, a Text (bot/i18n) that the reporter
    writes in the member's language."""


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
    # Pixels decoded for the whole archive (a JPEG counts at its reduced draft size): about 330 full
    # 12 MP HEIC photos or 1,300 camera JPEGs. Images past it are skipped and named in the report.
    max_decoded_pixels: int = 4_000_000_000
    longest_edge: int = 1024
    min_edge: int = 64  # shorter edge below this: skipped as too small



def precheck_directory(zip_path: Path, limits: IntakeLimits) -> None:
    """Refuse a huge central directory before zipfile parses all of it into memory."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:  # private helper gone in some future Python: rely on the checks after opening
        return
    try:
        with open(zip_path, "rb") as fp:
            record = end_record(fp)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        raise IntakeError(NOT_A_ZIP) from None
    if record is None:
        raise IntakeError(NOT_A_ZIP)
    private: Any = zipfile  # typeshed leaves out zipfile's private names, such as the indices into that record
    entries, directory_size = record[private._ECD_ENTRIES_TOTAL], record[private._ECD_SIZE]
    if entries > limits.max_entries or directory_size > limits.max_entries * _CD_BYTES_PER_ENTRY:
        raise IntakeError(Text("intake.too_many_files", limit=limits.max_entries))


def check_entries(infos: list[zipfile.ZipInfo], limits: IntakeLimits, archive_size: int | None = None) -> None:
    if len(infos) > limits.max_entries:
        raise IntakeError(Text("intake.file_count", count=len(infos), limit=limits.max_entries))
    # Entries whose compressed bytes add up to more than the archive share bytes (the overlapping-entries
    # zip bomb; Python before 3.12 does not detect it). It also keeps compress_size honest for the
    # pixels-per-byte bomb check of the images.
    if archive_size is not None and sum(info.compress_size for info in infos) > archive_size:
        raise IntakeError(Text("intake.overlap"))
    total = 0
    for info in infos:
        if not info.filename:  # a zero-length name (or one cut at a NUL byte): nothing sane can hold it
            raise IntakeError(Text("intake.no_name"))
        shown = display_name(info.filename)
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", info.filename):
            raise IntakeError(Text("intake.absolute", name=shown))
        if ".." in parts:
            raise IntakeError(Text("intake.climbs", name=shown))
        if stat.S_ISLNK(info.external_attr >> 16):
            raise IntakeError(Text("intake.symlink", name=shown))
        if info.flag_bits & 0x1:
            raise IntakeError(Text("intake.password", name=shown))
        if info.file_size > limits.max_file_uncompressed:
            raise IntakeError(Text("intake.file_too_big", name=shown, size=format_size(info.file_size),
                                   limit=format_size(limits.max_file_uncompressed)))
        if info.file_size > max(limits.ratio_min_bytes, info.compress_size * limits.max_ratio):
            ratio = info.file_size / max(1, info.compress_size)
            raise IntakeError(Text("intake.ratio", name=shown, ratio=ratio, limit=limits.max_ratio))
        total += info.file_size
    if total > limits.max_total_uncompressed:
        raise IntakeError(Text("intake.total_too_big", size=format_size(total),
                               limit=format_size(limits.max_total_uncompressed)))


class BoundedReader:
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
                        raise IntakeError(Text("intake.larger_than_header", name=shown))
                    if size > cap:
                        raise IntakeError(Text("intake.entry_bomb", name=shown, limit=format_size(cap)))
                    if self.total > limits.max_total_uncompressed:
                        raise IntakeError(Text("intake.total_bomb", limit=format_size(limits.max_total_uncompressed)))
                    chunks.append(chunk)
        except (IntakeError, NotImplementedError):  # NotImplementedError: a compression method zipfile lacks
            raise
        except Exception:  # BadZipFile (bad CRC, bad local header), zlib.error, EOFError, lzma.LZMAError, ...
            raise IntakeError(Text("intake.damaged", name=shown)) from None
        return b"".join(chunks)


def display_name(name: str, limit: int = 80) -> str:
    """An entry name safe to show on Discord: no control/format characters or backticks, shortened, in `code`."""
    clean = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf")).replace("`", "'")
    if len(clean) > limit:
        clean = "…" + clean[-(limit - 1) :]
    return f"`{clean or '?'}`"


def format_size(n: int) -> str:
    if n >= 1024 * MIB:
        return f"{n / (1024 * MIB):.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"
