"""The worker's content-addressed file cache: ``DATA_DIR/cache/files/<sha256>``.

A remote worker receives the files a request names by sha256 (LoRAs, training images) from the
bot over the request's own connection and keeps them here. A file is written to a temporary name,
its size and sha256 checked as it arrives, and only then renamed into place: a name in the cache
is always a whole, verified file. Two requests that need the same file wait for one transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path

from zimage_protocol.errors import ProtocolError
from zimage_protocol.files import check_sha256
from zimage_protocol.messages import FileChunk

Fetch = Callable[[str], AsyncGenerator[FileChunk, None]]  # the chunks of the file with this sha256, from the bot


class TransferFailed(Exception):
    """The bot could not send a file, or what arrived was not the file asked for."""


class FileCache:
    def __init__(self, root: Path):
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    async def ensure(self, sha256: str, size: int, fetch: Fetch) -> Path:
        """The cached file, fetched first if this worker has no copy."""
        path = self.path_for(sha256)
        async with self._locks.setdefault(sha256, asyncio.Lock()):  # one lock per file ever asked for: small
            if not await asyncio.to_thread(_has_size, path, size):
                await self._receive(sha256, size, fetch(sha256), path)
            return path

    async def _receive(self, sha256: str, size: int, chunks: AsyncGenerator[FileChunk, None], path: Path) -> None:
        await asyncio.to_thread(self.root.mkdir, mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f"{sha256}.{os.getpid()}.{id(chunks)}.part")
        handle = await asyncio.to_thread(open, partial, "wb")
        digest, received = hashlib.sha256(), 0
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if chunk.sha256 != sha256 or chunk.size != size or chunk.offset != received:
                        raise TransferFailed(f"the bot sent a chunk out of order for {sha256[:12]}")
                    await asyncio.to_thread(_write, handle, digest, chunk.data)
                    received += len(chunk.data)
                    if chunk.last:
                        break
            if received != size or digest.hexdigest() != sha256:
                raise TransferFailed(f"the file {sha256[:12]} arrived damaged ({received} of {size} bytes, "
                                     f"sha256 {digest.hexdigest()[:12]})")
            await asyncio.to_thread(_finish, handle, partial, path)
        except ProtocolError as exc:
            raise TransferFailed(str(exc)) from None
        finally:
            await asyncio.to_thread(_discard, handle, partial)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _write(handle, digest, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def _finish(handle, partial: Path, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(partial, path)


def _discard(handle, partial: Path) -> None:
    handle.close()
    partial.unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    """Blocking: call it off the event loop."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
