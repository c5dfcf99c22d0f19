"""The bot's side of files by content, for a worker on another host (zimage_protocol.files).

:class:`FileOffers` names the bot's files by sha256 (hashed off the event loop, remembered by
path, size, mtime and inode so a LoRA is hashed once) and serves a worker's ``FetchFile`` for
exactly the files the bot named on that connection, nothing else on its disk.
:class:`CheckpointReceiver` writes a remote training's checkpoint files into the job's own output
folder (chunks checked for order, size and sha256, renamed into place only when whole) and maps
the worker's paths in its CheckpointReady to those local files, so the training lane reads local
files as it does with a local worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from zimage_protocol.constants import LORA_FILE
from zimage_protocol.errors import ErrorCode, ProtocolError
from zimage_protocol.files import CHUNK_BYTES, MAX_FILES_PER_SET, FileRef
from zimage_protocol.messages import CheckpointReady, Error, FetchFile, FileChunk, GenerateParams, LoraRef, Message, TrainParams

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]
_Key = tuple[str, int, int, int]  # path, size, mtime_ns, inode


class FileOffers:
    def __init__(self) -> None:
        self._offered: dict[str, Path] = {}  # sha256 -> the file the bot named by it
        self._hashes: dict[_Key, str] = {}

    async def describe(self, path: Path) -> tuple[str, int]:
        """(sha256, size) of a file, which the worker may then fetch."""
        key, sha256 = await asyncio.to_thread(self._hash, path)
        self._offered[sha256] = path
        return sha256, key[1]

    def _hash(self, path: Path) -> tuple[_Key, str]:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        sha256 = self._hashes.get(key)
        if sha256 is None:
            sha256 = self._hashes[key] = _sha256(path)
        return key, sha256

    async def lora(self, lora: LoraRef) -> LoraRef:
        """A LoRA by content: the worker has no use for a path on the bot's disk."""
        file = await asyncio.to_thread(_lora_file, Path(lora.path))
        sha256, size = await self.describe(file)
        return dataclasses.replace(lora, path="", sha256=sha256, size=size)

    async def source(self, params: GenerateParams) -> GenerateParams:
        """The source picture of an img2img / outpainting request by content, like a LoRA."""
        if params.source is None:
            return params
        sha256, size = await self.describe(Path(params.source.path))
        return dataclasses.replace(params, source=dataclasses.replace(params.source, path="", sha256=sha256, size=size))

    async def dataset(self, params: TrainParams) -> TrainParams:
        """A training set by content: every file under dataset_dir, by its relative name."""
        root = Path(params.dataset_dir)
        names = await asyncio.to_thread(_list_files, root)
        if len(names) > MAX_FILES_PER_SET:
            raise ProtocolError(f"a training set of more than {MAX_FILES_PER_SET} files cannot be sent")
        files = []
        for name in names:
            sha256, size = await self.describe(root / name)
            files.append(FileRef(name=name, sha256=sha256, size=size))
        return dataclasses.replace(params, files=files)

    async def serve(self, request: FetchFile, send: Send) -> None:
        path = self._offered.get(request.sha256)
        if path is None:
            log.warning("the GPU worker asked for a file the bot never offered (%s)", request.sha256[:12])
            await send(Error(id=request.id, code=ErrorCode.BAD_REQUEST, message="no such file was offered"))
            return
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            await send(Error(id=request.id, code=ErrorCode.BAD_REQUEST, message=f"the bot cannot read it: {exc.strerror}"))
            return
        try:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while True:
                data = await asyncio.to_thread(handle.read, CHUNK_BYTES)
                if offset + len(data) > size or (not data and offset < size):
                    # the file changed since it was hashed: the worker would refuse it anyway
                    await send(Error(id=request.id, code=ErrorCode.BAD_REQUEST, message="the file changed"))
                    return
                await send(FileChunk(id=request.id, sha256=request.sha256, size=size, offset=offset, data=data))
                offset += len(data)
                if offset == size:
                    return
        finally:
            await asyncio.to_thread(handle.close)


class CheckpointReceiver:
    """One remote training's incoming checkpoint files, under the bot's output folder of that job."""

    def __init__(self, output_dir: Path, keep: int):
        self.output_dir = output_dir.resolve()
        self.keep = keep
        self._local: dict[str, Path] = {}  # the worker's path -> the file here
        self._partial: tuple[FileChunk, Path, BinaryIO, Any, int] | None = None

    async def add(self, chunk: FileChunk) -> None:
        if not chunk.name:
            raise ProtocolError("a checkpoint file chunk without a name")
        target = (self.output_dir / chunk.name).resolve()
        if not target.is_relative_to(self.output_dir):
            raise ProtocolError(f"a checkpoint file outside the output folder: {chunk.name!r}")
        if chunk.offset == 0:
            await self._abandon()
            partial = target.with_name(f".{target.name}.part")
            handle = await asyncio.to_thread(_open_for_write, partial)
            self._partial = (chunk, partial, handle, hashlib.sha256(), 0)
        if self._partial is None:
            raise ProtocolError("a checkpoint file chunk out of order")
        first, partial, handle, digest, received = self._partial
        if (chunk.name, chunk.sha256, chunk.size, chunk.offset) != (first.name, first.sha256, first.size, received):
            raise ProtocolError("a checkpoint file chunk out of order")
        await asyncio.to_thread(_write, handle, digest, chunk.data)
        self._partial = (first, partial, handle, digest, received + len(chunk.data))
        if chunk.last:
            self._partial = None
            await asyncio.to_thread(handle.close)
            if digest.hexdigest() != chunk.sha256:
                await asyncio.to_thread(partial.unlink, True)
                raise ProtocolError(f"the checkpoint file {chunk.name!r} arrived damaged")
            await asyncio.to_thread(os.replace, partial, target)
            self._local[chunk.path] = target

    def localize(self, checkpoint: CheckpointReady) -> CheckpointReady:
        """The same checkpoint, naming the files received here."""
        try:
            return dataclasses.replace(checkpoint, lora_file=str(self._local.pop(checkpoint.lora_file)),
                                       sample_png=str(self._local.pop(checkpoint.sample_png)),
                                       loss_png=str(self._local.pop(checkpoint.loss_png)))
        except KeyError as exc:
            raise ProtocolError(f"the worker announced a checkpoint file it did not send: {exc}") from None

    async def prune(self) -> None:
        """Keep the newest ``keep`` checkpoint folders here, as the worker does on its side."""
        await asyncio.to_thread(_prune, self.output_dir / "checkpoints", self.keep)

    async def _abandon(self) -> None:
        if self._partial is not None:
            _, partial, handle, _, _ = self._partial
            self._partial = None
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(partial.unlink, True)

    async def close(self) -> None:
        await self._abandon()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _lora_file(path: Path) -> Path:
    """The file the worker would load (gpu/lora/common.py resolve_lora_file): a folder's diffusers file."""
    if path.is_dir():
        candidates = [path / LORA_FILE] if (path / LORA_FILE).is_file() else sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
    return path


def _list_files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*")
                  if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts))


def _open_for_write(path: Path) -> BinaryIO:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return open(path, "wb")  # noqa: SIM115 - closed by the receiver


def _write(handle: BinaryIO, digest: Any, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def _prune(root: Path, keep: int) -> None:
    folders = sorted(path for path in root.glob("step-*") if path.is_dir())
    for stale in folders[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
