"""A remote worker's side of files by content: requests in, checkpoints out.

A request from a bot on another host names its files by sha256 (zimage_protocol.files). Before
the scheduler sees it, :func:`localize_generate` / :func:`localize_train` swap those names for
paths in this worker's cache (fetching what is missing), so the engine and the trainer read local
paths as they always did. A remote training runs in ``DATA_DIR/remote/training/<key>`` (the key is
a hash of the bot's output folder, so a retried job on this worker resumes), and
:func:`checkpoint_sender` sends each checkpoint's files back before the CheckpointReady naming them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from zimage_protocol.errors import ErrorCode, UserError
from zimage_protocol.files import CHUNK_BYTES
from zimage_protocol.messages import CheckpointReady, FileChunk, GenerateParams, Message, TrainParams

from .file_cache import Fetch, FileCache, TransferFailed, sha256_of

Send = Callable[[Message], Awaitable[None]]


async def localize_generate(params: GenerateParams, cache: FileCache, fetch: Fetch) -> GenerateParams:
    """LoRAs (and a source picture) named by sha256 become files in the cache."""
    if params.source is not None and params.source.sha256:
        try:
            path = await cache.ensure(params.source.sha256, params.source.size, fetch)
        except TransferFailed as exc:
            raise UserError(f"the source picture could not be fetched from the bot: {exc}") from None
        params = dataclasses.replace(params, source=dataclasses.replace(params.source, path=str(path)))
    if not any(lora.sha256 for lora in params.loras):
        return params
    loras = []
    for lora in params.loras:
        if lora.sha256:
            try:
                path = await cache.ensure(lora.sha256, lora.size, fetch)
            except TransferFailed as exc:
                raise UserError(f"the LoRA {lora.name!r} could not be fetched from the bot: {exc}", ErrorCode.LORA) from None
            lora = dataclasses.replace(lora, path=str(path))
        loras.append(lora)
    return dataclasses.replace(params, loras=loras)


def training_folder(data_dir: Path, bot_output_dir: str) -> Path:
    return data_dir / "remote" / "training" / hashlib.sha256(bot_output_dir.encode()).hexdigest()[:32]


async def localize_train(params: TrainParams, data_dir: Path, cache: FileCache, fetch: Fetch) -> TrainParams:
    """The training set, fetched into the cache, linked into a dataset folder of this worker's own."""
    if not params.remote:
        return params
    folder = training_folder(data_dir, params.output_dir)
    sources = []
    for ref in params.files:
        try:
            sources.append((ref.name, await cache.ensure(ref.sha256, ref.size, fetch)))
        except TransferFailed as exc:
            raise UserError(f"the training set could not be fetched from the bot: {exc}", ErrorCode.TRAINING) from None
    dataset = await asyncio.to_thread(_link_dataset, folder, sources)
    return dataclasses.replace(params, dataset_dir=str(dataset), output_dir=str(folder / "output"))


def _link_dataset(folder: Path, sources: list[tuple[str, Path]]) -> Path:
    """Rebuilt on every attempt (links are cheap); the output folder beside it survives for a resume."""
    dataset = folder / "dataset"
    staging = folder / "dataset.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for name, source in sources:  # names were checked (zimage_protocol.files.check_relative_name)
        target = staging / name
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.rmtree(dataset, ignore_errors=True)
    os.replace(staging, dataset)
    (folder / "output").mkdir(mode=0o700, exist_ok=True)
    return dataset


def checkpoint_sender(params: TrainParams, send: Send) -> Send:
    """For a remote training: each CheckpointReady is preceded by its files' bytes (FileChunks of the request)."""
    if not params.remote:
        return send
    output = Path(params.output_dir)

    async def send_with_files(message: Message) -> None:
        if isinstance(message, CheckpointReady):
            for path in (message.lora_file, message.sample_png, message.loss_png):
                await send_file(message.id, Path(path), output, send)
        await send(message)

    return send_with_files


async def send_file(request_id: str, path: Path, output: Path, send: Send) -> None:
    name = path.resolve().relative_to(output.resolve()).as_posix()
    sha256 = await asyncio.to_thread(sha256_of, path)
    with open(path, "rb") as handle:  # noqa: ASYNC230 - reads below run in a thread
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while True:
            data = await asyncio.to_thread(handle.read, CHUNK_BYTES)
            if offset + len(data) > size:
                raise UserError("a checkpoint file grew while it was sent", ErrorCode.TRAINING)
            await send(FileChunk(id=request_id, sha256=sha256, size=size, offset=offset, name=name, path=str(path),
                                 data=data))
            offset += len(data)
            if offset == size:
                return
            if not data:
                raise UserError("a checkpoint file shrank while it was sent", ErrorCode.TRAINING)
