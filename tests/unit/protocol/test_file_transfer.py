"""Files by content: the bot's offers, the worker's cache, the bot's checkpoint receiver, against each other."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from bot.worker.files import CheckpointReceiver, FileOffers
from gpu.file_cache import FileCache, TransferFailed
from zimage_protocol import ProtocolError
from zimage_protocol.files import CHUNK_BYTES
from zimage_protocol.messages import CheckpointReady, Error, FetchFile, FileChunk, LoraRef, TrainParams


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wire(offers: FileOffers, calls: list[str]):
    """The worker's fetch, served by the bot's offers (what one connection does, minus the socket)."""

    async def fetch(sha256: str):
        calls.append(sha256)
        queue: asyncio.Queue = asyncio.Queue()
        serving = asyncio.create_task(offers.serve(FetchFile(id="f", sha256=sha256), queue.put))
        while True:
            message = await queue.get()
            if isinstance(message, Error):
                raise TransferFailed(message.message)
            yield message
            if message.last:
                break
        await serving

    return fetch


async def test_a_lora_goes_by_hash_and_arrives_whole_once(tmp_path):
    data = bytes(range(256)) * (CHUNK_BYTES // 64)  # four chunks
    (tmp_path / "bot").mkdir()
    lora_file = tmp_path / "bot" / "pytorch_lora_weights.safetensors"
    lora_file.write_bytes(data)
    offers = FileOffers()
    ref = await offers.lora(LoraRef(name="l1", path=str(lora_file.parent), scale=0.5))  # a folder: its diffusers file
    assert (ref.path, ref.sha256, ref.size) == ("", sha(data), len(data))
    cache, calls = FileCache(tmp_path / "worker" / "cache"), []
    paths = await asyncio.gather(*(cache.ensure(ref.sha256, ref.size, wire(offers, calls)) for _ in range(3)))
    assert calls == [ref.sha256]  # three requests at once, one transfer
    assert {path.read_bytes() for path in paths} == {data}
    assert await cache.ensure(ref.sha256, ref.size, wire(offers, calls)) == paths[0] and len(calls) == 1
    assert not list(cache.root.glob("*.part"))


async def test_a_worker_gets_only_files_the_bot_offered(tmp_path):
    secret = tmp_path / "zimage.db"
    secret.write_bytes(b"the bot's database")
    sent: list = []
    await FileOffers().serve(FetchFile(id="f", sha256=sha(secret.read_bytes())), _append(sent))
    assert len(sent) == 1 and isinstance(sent[0], Error) and sent[0].message == "no such file was offered"


async def test_a_damaged_or_changed_file_is_never_cached(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(b"original")
    offers = FileOffers()
    digest, size = await offers.describe(source)
    source.write_bytes(b"ORIGINAL")  # same size, other bytes: the hash no longer matches
    cache = FileCache(tmp_path / "cache")
    with pytest.raises(TransferFailed, match="arrived damaged"):
        await cache.ensure(digest, size, wire(offers, []))
    assert not any(cache.root.iterdir())


async def test_a_training_set_is_every_file_by_relative_name(tmp_path):
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    (tmp_path / "dataset" / "manifest.json").write_text("[]")
    (tmp_path / "dataset" / "images" / "a.png").write_bytes(b"png")
    (tmp_path / "dataset" / ".staging").write_text("not sent")
    params = await FileOffers().dataset(TrainParams(str(tmp_path / "dataset"), "/o", {}))
    assert [(ref.name, ref.sha256, ref.size) for ref in params.files] == [
        ("images/a.png", sha(b"png"), 3), ("manifest.json", sha(b"[]"), 2)]


def chunks_of(data: bytes, name: str, path: str, request_id: str = "t1") -> list[FileChunk]:
    return [FileChunk(id=request_id, sha256=sha(data), size=len(data), offset=offset, name=name, path=path,
                      data=data[offset:offset + 3]) for offset in range(0, max(len(data), 1), 3)]


async def test_checkpoint_files_land_in_the_jobs_output_folder_and_replace_the_workers_paths(tmp_path):
    receiver = CheckpointReceiver(tmp_path / "output", keep=1)
    for step in (2, 4):
        folder = f"checkpoints/step-{step:06d}"
        for name, data in (("pytorch_lora_weights.safetensors", b"weights%d" % step), ("sample.png", b"png"),
                           ("loss.png", b"")):
            for chunk in chunks_of(data, f"{folder}/{name}", f"/worker/{folder}/{name}"):
                await receiver.add(chunk)
        ready = receiver.localize(CheckpointReady(
            id="t1", step=step, total=4, loss=0.1, seconds_per_step=1.0,
            lora_file=f"/worker/{folder}/pytorch_lora_weights.safetensors", sample_png=f"/worker/{folder}/sample.png",
            loss_png=f"/worker/{folder}/loss.png"))
        await receiver.prune()
        assert ready.lora_file == str(tmp_path / "output" / folder / "pytorch_lora_weights.safetensors")
        assert open(ready.lora_file, "rb").read() == b"weights%d" % step
    assert [path.name for path in (tmp_path / "output" / "checkpoints").iterdir()] == ["step-000004"]


async def test_a_checkpoint_receiver_refuses_escapes_gaps_damage_and_unsent_files(tmp_path):
    receiver = CheckpointReceiver(tmp_path / "output", keep=3)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "link").symlink_to(tmp_path)
    with pytest.raises(ProtocolError, match="outside the output folder"):
        await receiver.add(chunks_of(b"x", "link/evil", "/w/evil")[0])
    _, second = chunks_of(b"abcdef", "a.bin", "/w/a.bin")
    with pytest.raises(ProtocolError, match="out of order"):
        await receiver.add(second)
    bad = FileChunk(id="t1", sha256=sha(b"abc"), size=3, offset=0, name="b.bin", path="/w/b.bin", data=b"abd")
    with pytest.raises(ProtocolError, match="arrived damaged"):
        await receiver.add(bad)
    assert not (tmp_path / "output" / "b.bin").exists()
    with pytest.raises(ProtocolError, match="did not send"):
        receiver.localize(CheckpointReady(id="t1", step=1, total=1, loss=0.0, seconds_per_step=0.0,
                                          lora_file="/w/x", sample_png="/w/y", loss_png="/w/z"))
    await receiver.close()
    assert sorted(path.name for path in (tmp_path / "output").iterdir()) == ["link"]


def _append(sent: list):
    async def send(message) -> None:
        sent.append(message)

    return send
