"""The GPU worker as a real separate process, spoken to over its real unix socket."""

import asyncio
import os
import signal
import stat
import subprocess
import sys

import pytest

from bot.worker.client import WorkerClient, WorkerError, WorkerUnavailable
from gpu import protocol
from gpu.png import read_png_text


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
    return protocol.GenerateParams(**values)


async def collect(client, request_id, generate_params):
    frames = [frame async for frame in client.generate(request_id, generate_params)]
    return frames, {frame.header["index"]: frame.blob for frame in frames if frame.op == "image"}


async def test_health_hello_and_owner_only_socket(worker):
    client, process, socket_path = worker
    assert client.hello["version"] == protocol.PROTOCOL_VERSION and client.hello["pid"] == process.pid
    health = await client.health()
    assert health["ok"] is True and health["model"] == "tiny" and health["device"] == "cpu"
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600


async def test_generate_streams_progress_and_tagged_pngs(worker):
    client, _, _ = worker
    frames, images = await collect(client, "g1", params())
    ops = [frame.op for frame in frames]
    assert ops[0] == "accepted" and ops[-1] == "done"
    steps = [frame.header["step"] for frame in frames if frame.op == "progress"]
    assert steps == list(range(1, 7)) and {frame.header["total"] for frame in frames if frame.op == "progress"} == {6}
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
    assert refused.value.code == protocol.ERROR_PROMPT_TOO_LONG


async def test_cancel_stops_a_generation_midway(worker):
    client, _, _ = worker
    steps_seen = []
    with pytest.raises(WorkerError) as cancelled:
        async for frame in client.generate("slow", params(steps=16, seeds=[1, 2, 3, 4])):
            if frame.op == "progress":
                steps_seen.append(frame.header["step"])
                if frame.header["step"] == 2:
                    await client.cancel("slow")
    assert cancelled.value.code == protocol.ERROR_CANCELLED
    assert max(steps_seen) < 64
    # The worker is free again afterwards.
    frames, images = await collect(client, "after", params(seeds=[1]))
    assert frames[-1].op == "done" and len(images) == 1


async def test_bad_params_are_refused_not_fatal(worker):
    client, _, _ = worker
    with pytest.raises(WorkerError) as refused:
        async for _ in client._stream("generate", "bad", params={"prompt": "x", "width": 100}):
            pass
    assert refused.value.code == protocol.ERROR_BAD_REQUEST
    assert (await client.health())["ok"]


async def test_killed_worker_fails_the_request_in_flight(worker):
    client, process, _ = worker
    with pytest.raises(WorkerUnavailable):
        async for frame in client.generate("doomed", params(steps=16, seeds=[1, 2, 3])):
            if frame.op == "progress":
                os.kill(process.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert not client.connected


async def test_a_second_worker_refuses_a_live_socket(worker, data_dir):
    _, _, socket_path = worker
    result = subprocess.run([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir),
                             "--socket", str(socket_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "already serves" in result.stderr
