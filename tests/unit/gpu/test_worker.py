"""The GPU worker as a real separate process, spoken to over its real unix socket."""

import asyncio
import os
import signal
import stat
import struct
import subprocess
import sys

import pytest

from bot.worker.client import WorkerClient, WorkerError, WorkerUnavailable
from gpu.__main__ import CPU_WORKER_NICENESS
from gpu.png import read_png_text
from zimage_protocol import PROTOCOL_VERSION, ErrorCode, GenerateParams
from zimage_protocol.frames import encode_frame, read_frame
from zimage_protocol.messages import (
    Accepted,
    Done,
    Error,
    Health,
    HealthReport,
    Hello,
    ImageReady,
    Progress,
    Welcome,
    decode,
)


@pytest.fixture
async def worker(data_dir):
    socket_path = data_dir / "worker.sock"
    process = subprocess.Popen([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir),
                                "--socket", str(socket_path)])
    client = WorkerClient(socket_path)
    client.start()
    try:
        await client.wait_connected(60)
        yield client, process, socket_path
    finally:
        await client.close()
        process.kill()
        process.wait()


def params(**overrides):
    values = {"prompt": "a lighthouse at dusk", "width": 128, "height": 96, "steps": 3, "seeds": [7, 8]}
    values.update(overrides)
    return GenerateParams(**values)


async def collect(client, request_id, generate_params):
    messages = [message async for message in client.generate(request_id, generate_params)]
    return messages, {message.index: message.png for message in messages if isinstance(message, ImageReady)}


async def test_health_hello_and_owner_only_socket(worker):
    client, process, socket_path = worker
    assert client.hello.version == PROTOCOL_VERSION and client.hello.pid == process.pid
    health = await client.health()
    assert health.pid == process.pid and health.model == "tiny" and health.device == "cpu"
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600


async def test_a_worker_without_a_gpu_runs_below_the_bots_priority(worker):
    """On CPU it shares the bot's cores: lowered, it cannot starve the bot's answers (gpu/__main__.py)."""
    _, process, _ = worker
    assert os.getpriority(os.PRIO_PROCESS, process.pid) == os.getpriority(os.PRIO_PROCESS, 0) + CPU_WORKER_NICENESS


async def test_generate_streams_progress_and_tagged_pngs(worker):
    client, _, _ = worker
    messages, images = await collect(client, "g1", params())
    assert isinstance(messages[0], Accepted) and isinstance(messages[-1], Done)
    progress = [message for message in messages if isinstance(message, Progress) and not message.preview]
    assert [message.step for message in progress] == list(range(1, 7)) and {message.total for message in progress} == {6}
    # Live previews (PREVIEWS on, PREVIEW_EVERY 2 by default): step 2 of each image, a small JPEG at 1/8 size, the
    # first one before the first PNG.
    previews = [message for message in messages if isinstance(message, Progress) and message.preview]
    assert [(message.step, message.total) for message in previews] == [(2, 6), (5, 6)]
    assert all(message.preview.startswith(b"\xff\xd8") for message in previews)
    first_png = min(index for index, message in enumerate(messages) if isinstance(message, ImageReady))
    assert messages.index(previews[0]) < first_png
    assert sorted(images) == [0, 1]
    text = read_png_text(images[1])
    assert text["prompt"] == "a lighthouse at dusk" and text["seed"] == "8" and text["steps"] == "3"
    assert (text["width"], text["height"], text["model"]) == ("128", "96", "tiny")


async def test_same_prompt_seed_and_size_give_the_same_pixels(worker):
    from io import BytesIO

    from PIL import Image

    client, _, _ = worker

    def pixels(png):
        return Image.open(BytesIO(png)).convert("RGB").tobytes()

    _, first = await collect(client, "a", params(seeds=[42]))
    _, again = await collect(client, "b", params(seeds=[42]))
    _, other_seed = await collect(client, "c", params(seeds=[43]))
    assert pixels(first[0]) == pixels(again[0])
    assert pixels(first[0]) != pixels(other_seed[0])


async def test_token_count_and_too_long_prompt(worker):
    client, _, _ = worker
    count, limit = await client.count_tokens("hello")
    assert 5 <= count < limit == 512
    with pytest.raises(WorkerError) as refused:
        await collect(client, "long", params(prompt="x" * 600))
    assert refused.value.code == ErrorCode.PROMPT_TOO_LONG


async def test_cancel_stops_a_generation_midway(worker):
    client, _, _ = worker
    steps_seen = []
    with pytest.raises(WorkerError) as cancelled:
        async for message in client.generate("slow", params(steps=16, seeds=[1, 2, 3, 4])):
            if isinstance(message, Progress):
                steps_seen.append(message.step)
                if message.step == 2:
                    await client.cancel("slow")
    assert cancelled.value.code == ErrorCode.CANCELLED
    assert max(steps_seen) < 64
    # The worker is free again afterwards.
    messages, images = await collect(client, "after", params(seeds=[1]))
    assert isinstance(messages[-1], Done) and len(images) == 1


async def raw_connection(socket_path, version=PROTOCOL_VERSION):
    """A client below WorkerClient: the tests write frames the real client never would."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    assert isinstance(decode(await read_frame(reader)), Hello)
    writer.write(Hello(version=version).encode())
    await writer.drain()
    if version == PROTOCOL_VERSION:
        assert isinstance(decode(await read_frame(reader)), Welcome)
    return reader, writer


async def test_bad_requests_are_refused_and_the_connection_goes_on(worker):
    client, _, socket_path = worker
    reader, writer = await raw_connection(socket_path)
    writer.write(encode_frame("generate", id="bad", params={"prompt": "x", "width": 100}))  # no height, no seeds
    writer.write(struct.pack(">II", 9, 0) + b"{not json")
    writer.write(encode_frame("progress", id="p", step="three", total=8))  # a reply's op, a wrong type
    writer.write(encode_frame("no_such_op", id="n"))
    writer.write(Health(id="still-here").encode())
    await writer.drain()
    replies = [decode(await asyncio.wait_for(read_frame(reader), 30)) for _ in range(5)]
    errors = [reply for reply in replies if isinstance(reply, Error)]
    assert [error.id for error in errors] == ["bad", None, "p", "n"]
    assert {error.code for error in errors} == {ErrorCode.BAD_REQUEST}
    assert isinstance(replies[-1], HealthReport) and replies[-1].id == "still-here"
    writer.close()
    assert (await client.health()).model == "tiny"  # the bot's own connection never noticed


async def test_a_client_of_another_protocol_version_is_refused_clearly(worker):
    _, _, socket_path = worker
    reader, writer = await raw_connection(socket_path, version=1)
    refusal = decode(await asyncio.wait_for(read_frame(reader), 30))
    assert isinstance(refusal, Error) and refusal.code == ErrorCode.VERSION_MISMATCH
    assert "v1" in refusal.message and f"v{PROTOCOL_VERSION}" in refusal.message
    with pytest.raises(asyncio.IncompleteReadError):
        await asyncio.wait_for(read_frame(reader), 30)  # and the worker hung up
    writer.close()


async def test_killed_worker_fails_the_request_in_flight(worker):
    client, process, _ = worker
    with pytest.raises(WorkerUnavailable):
        async for message in client.generate("doomed", params(steps=16, seeds=[1, 2, 3])):
            if isinstance(message, Progress):
                os.kill(process.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert not client.connected


async def test_a_second_worker_refuses_a_live_socket(worker, data_dir):
    _, _, socket_path = worker
    result = subprocess.run([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir),
                             "--socket", str(socket_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "already serves" in result.stderr
