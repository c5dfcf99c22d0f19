"""The shared protocol package: typed messages on the wire, and a client that survives a bad peer."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from bot.worker.client import WorkerClient
from zimage_protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError
from zimage_protocol.files import FileRef
from zimage_protocol.frames import FrameTooLarge, encode_frame, read_frame
from zimage_protocol.messages import (
    MESSAGES,
    CheckpointReady,
    Error,
    FetchFile,
    FileChunk,
    GenerateParams,
    Health,
    HealthReport,
    Hello,
    ImageReady,
    ImagineRequest,
    LoraRef,
    Ping,
    Pong,
    Progress,
    TrainParams,
    TrainRequest,
    Welcome,
    decode,
)

SHA = "ab" * 32

EXAMPLES = [
    Hello(version=PROTOCOL_VERSION, model="tiny", device="cpu", pid=7, ready=True),
    Health(id="h"),
    HealthReport(id="h", ready=True, busy=False, model="tiny", device="cpu", pid=7),
    ImagineRequest(id="g", params=GenerateParams("a fox", 64, 48, 2, [1, 2], loras=[LoraRef("l1", "/x.safetensors", 0.8)])),
    TrainRequest(id="t", params=TrainParams("/d", "/o", {"steps": 10})),
    Progress(id="g", step=1, total=8),
    Progress(id="g", step=2, total=8, preview=b"\xff\xd8\xff\xe0 a small JPEG"),
    ImageReady(id="g", index=0, seed=1, png=b"\x89PNG..."),
    ImagineRequest(id="g", params=GenerateParams("一只狐狸", 64, 48, 2, [1, 2], enhance=True, seed_variance=0.25)),
    ImageReady(id="g", index=1, seed=2, png=b"\x89PNG...", prompt="一只红色的狐狸站在雪地里，黄昏的光"),
    CheckpointReady(id="t", step=5, total=10, loss=0.25, seconds_per_step=0.5, lora_file="/o/a", sample_png="/o/s",
                    loss_png="/o/l"),
    Error(id=None, code=ErrorCode.BUSY, message="a LoRA is already training"),
    Hello(version=PROTOCOL_VERSION, token="s3cret-token-0123456789"),
    Welcome(),
    Ping(),
    Pong(),
    ImagineRequest(id="g", params=GenerateParams("a fox", 64, 48, 2, [1], loras=[LoraRef("l1", "", 0.8, SHA, 1234)])),
    TrainRequest(id="t", params=TrainParams("/d", "/o", {}, files=[FileRef("images/a.png", SHA, 10),
                                                                   FileRef("manifest.json", SHA, 0)])),
    FetchFile(id="f1", sha256=SHA),
    FileChunk(id="f1", sha256=SHA, size=5, offset=2, data=b"abc"),
    FileChunk(id="t", sha256=SHA, size=0, offset=0, name="checkpoints/step-000005/sample.png", path="/w/o/s.png"),
]


async def read_back(data: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_frame(reader)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda message: message.op.value)
async def test_every_message_survives_the_wire(message):
    assert decode(await read_back(message.encode())) == message


def test_every_op_has_one_message_class():
    assert len(MESSAGES) == len({cls.op for cls in MESSAGES.values()})


@pytest.mark.parametrize("op, fields, problem", [
    ("progress", {"id": "p", "step": "3", "total": 8}, "'step' must be int"),
    ("progress", {"id": "p", "step": True, "total": 8}, "'step' must be int"),
    ("progress", {"id": "p", "total": 8}, "missing 'step'"),
    ("train_progress", {"id": "p", "step": 1, "total": 2, "loss": "NaN", "seconds_per_step": 1}, "'loss' must be float"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 100, "height": 64, "steps": 1, "seeds": [1]}},
     "multiples of 16"),
    ("generate", {"id": "g", "params": ["not", "an", "object"]}, "must be an object"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                        "loras": [{"name": "a", "path": "b", "scale": float("inf")}]}}, "finite"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                        "seed_variance": 1.5}}, "seed_variance must be between"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                        "seed_variance": float("nan")}}, "seed_variance must be between"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                        "enhance": "yes"}}, "enhance must be true or false"),
    ("teleport", {"id": "x"}, "unknown op"),
    ("fetch_file", {"id": "f", "sha256": "../../etc/passwd"}, "64 lowercase hex"),
    ("file_chunk", {"id": "f", "sha256": SHA, "size": 2, "offset": 1, "name": "../../x"}, "plain relative path"),
    ("file_chunk", {"id": "f", "sha256": SHA, "size": 2, "offset": 1, "name": "/abs"}, "plain relative path"),
    ("file_chunk", {"id": "f", "sha256": SHA, "size": -1, "offset": 0}, "0 to"),
    ("train", {"id": "t", "params": {"dataset_dir": "d", "output_dir": "o", "config": {},
                                     "files": [{"name": "a/../../b", "sha256": SHA, "size": 1}]}}, "plain relative"),
    ("train", {"id": "t", "params": {"dataset_dir": "d", "output_dir": "o", "config": {},
                                     "files": [{"name": ".hidden", "sha256": SHA, "size": 1}]}}, "plain relative"),
    ("generate", {"id": "g", "params": {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                        "loras": [{"name": "a", "scale": 1.0, "sha256": "xyz", "size": 1}]}}, "hex"),
])
async def test_malformed_messages_are_protocol_errors(op, fields, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode(await read_back(encode_frame(op, **fields)))


async def test_a_header_that_is_not_json_is_a_protocol_error_not_a_crash():
    with pytest.raises(ProtocolError, match="not JSON"):
        await read_back(struct.pack(">II", 4, 0) + b"\xff\xfe{]")


async def test_a_file_chunk_beyond_its_size_is_refused():
    with pytest.raises(ProtocolError, match="overruns"):
        decode(await read_back(encode_frame("file_chunk", b"abcd", id="f", sha256=SHA, size=3, offset=0)))


async def test_before_the_hello_only_a_small_frame_is_read():
    """The worker reads a stranger's first frame with these limits: the body of a big one is never read."""
    with pytest.raises(FrameTooLarge):
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">II", 1 << 20, 0))
        await read_frame(reader, max_header=16 << 10, max_blob=0)


async def test_an_idle_timeout_measures_silence_not_frame_size():
    reader = asyncio.StreamReader()
    reader.feed_data(Ping().encode()[:5])  # half a frame, then nothing
    with pytest.raises(TimeoutError):
        await read_frame(reader, idle_timeout=0.2)


def test_unknown_error_codes_from_a_newer_worker_read_as_internal():
    assert ErrorCode.parse("meteor_strike") is ErrorCode.INTERNAL
    assert ErrorCode.parse("busy") is ErrorCode.BUSY


async def fake_worker(tmp_path, hello_version: int, after_hello: bytes = b""):
    """A unix server that speaks only the first lines of the protocol."""
    path = tmp_path / "fake.sock"

    async def serve(reader, writer):
        writer.write(Hello(version=hello_version, model="fake", device="cpu", pid=1).encode())
        await writer.drain()
        try:
            decode(await read_frame(reader))  # the client's hello
            writer.write(Welcome().encode() + after_hello)
            await writer.drain()
            while True:
                request = decode(await read_frame(reader))
                if isinstance(request, Health):
                    writer.write(HealthReport(id=request.id, ready=True, busy=False, model="fake", device="cpu",
                                              pid=1).encode())
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_unix_server(serve, path=str(path))
    return server, path


async def test_the_client_refuses_a_worker_of_another_version_and_says_so(tmp_path, caplog):
    server, path = await fake_worker(tmp_path, hello_version=1)
    client = WorkerClient(path)
    def refused() -> bool:
        return any("protocol version mismatch" in record.message and "v1" in record.message for record in caplog.records)

    with caplog.at_level(logging.ERROR, logger="bot.worker.client"):
        client.start()
        deadline = asyncio.get_running_loop().time() + 10
        while not refused() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    assert not client.connected
    assert refused()
    await client.close()
    server.close()


async def test_the_client_skips_a_malformed_frame_and_stays_connected(tmp_path):
    junk = struct.pack(">II", 5, 0) + b"{oops" + encode_frame("progress", id="nobody", step="x", total=1)
    server, path = await fake_worker(tmp_path, hello_version=PROTOCOL_VERSION, after_hello=junk)
    client = WorkerClient(path)
    client.start()
    await client.wait_connected(5)
    report = await client.health()
    assert report.model == "fake" and client.connected
    await client.close()
    server.close()


async def test_a_progress_preview_needs_no_version_bump():
    """A worker that predates previews sends no blob; a bot that predates them decodes a Progress without one."""
    plain = decode(await read_back(encode_frame("progress", id="g", step=3, total=8)))
    assert plain == Progress(id="g", step=3, total=8) and plain.preview == b""
    with_preview = Progress(id="g", step=4, total=8, preview=b"\xff\xd8jpeg").encode()
    frame = await read_back(with_preview)
    assert frame.header == {"id": "g", "step": 4, "total": 8} and frame.blob == b"\xff\xd8jpeg"  # the header is v3's
    assert "jpeg" not in repr(decode(frame))  # a logged Progress does not dump the picture


def test_stored_params_without_the_variety_fields_keep_todays_behaviour():
    """A job queued before enhance and seed_variance existed (or from an older bot) reads as neither."""
    old = GenerateParams.from_json({"prompt": "x", "width": 64, "height": 64, "steps": 1, "seeds": [1],
                                    "upload_limit": 1, "aspect": "1:1"})
    assert (old.enhance, old.seed_variance) == (False, 0.0)
    assert GenerateParams.from_json({**old.to_json(), "seed_variance": None}).seed_variance == 0.0
