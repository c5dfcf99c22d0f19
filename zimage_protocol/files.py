"""Files by content: a request names each file by sha256 and size, never by a path on the peer's disk.

A remote worker has its own disk. It keeps what it received in ``DATA_DIR/cache/files/<sha256>``
and asks the bot for a file it lacks (``FetchFile`` -> ``FileChunk``s on the same connection).
Training checkpoints come back the same way (``FileChunk``s of the train request before its
``CheckpointReady``). Names inside a file set are relative paths, checked here for both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import ProtocolError

CHUNK_BYTES = 1 << 20  # one FileChunk's data at most
MAX_FILE_BYTES = 8 << 30  # one transferred file at most (a LoRA, a training image, a checkpoint)
MAX_FILES_PER_SET = 2048  # files in one training set (TRAIN_MAX_IMAGES + manifest, with room)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ProtocolError("a file's sha256 must be 64 lowercase hex digits")
    return value


def check_relative_name(name: str) -> str:
    """A relative POSIX path with no '..', no absolute start, no hidden or empty parts: safe under any folder."""
    path = PurePosixPath(name)
    if (not name or len(name) > 255 or "\\" in name or "\0" in name or path.is_absolute()
            or any(part in ("", ".", "..") or part.startswith(".") for part in name.split("/"))):
        raise ProtocolError(f"bad file name {name[:80]!r}: must be a plain relative path")
    return name


def check_size(size: int) -> int:
    if not 0 <= size <= MAX_FILE_BYTES:
        raise ProtocolError(f"a transferred file must be 0 to {MAX_FILE_BYTES} bytes, got {size}")
    return size


@dataclass(frozen=True)
class FileRef:
    """One file of a request's file set: where it goes (relative), what it is (sha256), how big."""

    name: str
    sha256: str
    size: int

    @classmethod
    def from_json(cls, data: object) -> FileRef:
        if not isinstance(data, dict):
            raise ProtocolError("a file reference must be an object")
        try:
            name, sha256, size = str(data["name"]), str(data["sha256"]), data["size"]
        except KeyError as exc:
            raise ProtocolError(f"a file reference lacks {exc}") from None
        if not isinstance(size, int) or isinstance(size, bool):
            raise ProtocolError("a file reference's size must be a whole number")
        return cls(check_relative_name(name), check_sha256(sha256), check_size(size))
