"""A worker on "another host": a real `python -m gpu --listen tcp://…` process with the tiny model, TLS with a test
CA, a shared token, heartbeats, and a data dir of its own (files reach it only through the protocol)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from remote_helpers import CuttableProxy, free_port, make_pki, start_remote_worker, write_dataset

from bot.worker.client import WorkerClient, WorkerUnavailable
from zimage_protocol import GenerateParams
from zimage_protocol.endpoints import TcpEndpoint
from zimage_protocol.frames import PROTOCOL_VERSION, read_frame
from zimage_protocol.messages import CheckpointReady, Done, Hello, ImageReady, LoraRef, Progress, TrainParams
from zimage_protocol.security import WireSecurity

TOKEN = "test-token-0123456789abcdef"
HEARTBEAT = 3.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def remote(tmp_path_factory, tiny_models_dir, pki):
    """One worker process for the module (starting one is the slow part); each test brings its own clients."""
    worker_dir = tmp_path_factory.mktemp("worker-host") / "data"
    port = free_port()
    process, log = start_remote_worker(worker_dir, tiny_models_dir, pki, TOKEN, HEARTBEAT, port)
    try:
        yield port, worker_dir, log, process
    finally:
        process.kill()
        process.wait()


def security(pki, **changes) -> WireSecurity:
    values = {"tls_ca": pki.ca, "token": TOKEN, "heartbeat_timeout": HEARTBEAT, **changes}
    return WireSecurity(**values)


async def connected(port: int, sec: WireSecurity, host: str = "localhost") -> WorkerClient:
    client = WorkerClient(TcpEndpoint(host, port), sec)
    client.start()
    await client.wait_connected(90)
    return client


def params(**overrides) -> GenerateParams:
    values = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seeds": [7]}
    values.update(overrides)
    return GenerateParams(**values)


async def wait_for_log(log: Path, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in the worker's log:\n{log.read_text(errors='replace')[-3000:]}")


async def test_the_bot_generates_over_tls_with_its_token(remote, pki):
    port, _, _, process = remote
    client = await connected(port, security(pki))
    try:
        assert client.hello.pid == process.pid and client.hello.model == "tiny"
        assert (await client.health()).device == "cpu"
        messages = [message async for message in client.generate("tls-1", params())]
        assert isinstance(messages[-1], Done)
        images = [message for message in messages if isinstance(message, ImageReady)]
        assert len(images) == 1 and images[0].png.startswith(b"\x89PNG")
    finally:
        await client.close()


async def test_a_wrong_token_is_refused_clearly_on_both_sides(remote, pki):
    port, _, log, _ = remote
    client = WorkerClient(TcpEndpoint("localhost", port), security(pki, token="not-the-token-at-all"))
    client.start()
    try:
        with pytest.raises(WorkerUnavailable, match="wrong WORKER_TOKEN"):
            await client.wait_connected(30)
        assert not client.connected
    finally:
        await client.close()
    await wait_for_log(log, "refusing a client from 127.0.0.1")


async def test_a_plain_tcp_client_is_refused(remote):
    port, _, log, _ = remote
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(Hello(version=PROTOCOL_VERSION, token=TOKEN).encode())  # our protocol, but not inside TLS
    await writer.drain()
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await asyncio.wait_for(read_frame(reader), 20)  # no Hello for it: the worker hangs up
    writer.close()
    await wait_for_log(log, "no TLS handshake")


async def test_a_certificate_the_bot_does_not_trust_is_refused(remote, pki):
    port, _, _, _ = remote
    client = WorkerClient(TcpEndpoint("localhost", port), security(pki, tls_ca=None))  # the system CAs only
    client.start()
    try:
        with pytest.raises(WorkerUnavailable, match="certificate is not trusted"):
            await client.wait_connected(15)
    finally:
        await client.close()


async def test_the_hostname_is_checked(remote, pki):
    port, _, _, _ = remote
    proxy = CuttableProxy(port)
    await proxy.start(host="127.0.0.2")  # the same worker, at an address its certificate does not name
    client = WorkerClient(TcpEndpoint("127.0.0.2", proxy.port), security(pki))
    client.start()
    try:
        with pytest.raises(WorkerUnavailable, match="not trusted.*mismatch"):
            await client.wait_connected(15)
    finally:
        await client.close()
        await proxy.close()


async def test_a_silent_network_drop_is_noticed_in_seconds(remote, pki):
    port, _, log, _ = remote
    proxy = CuttableProxy(port)
    await proxy.start()
    client = await connected(proxy.port, security(pki), host="127.0.0.1")
    try:
        stream = client.generate("dropped", params(steps=40, seeds=[1, 2, 3]))
        with pytest.raises(WorkerUnavailable):
            async for message in stream:
                if isinstance(message, Progress) and not proxy.cuts:
                    proxy.cut()
                    cut_at = time.monotonic()
        noticed = time.monotonic() - cut_at
        assert noticed < HEARTBEAT + 3, f"the bot noticed the drop after {noticed:.1f} s"
        assert not client.connected
        await wait_for_log(log, "was silent", timeout=HEARTBEAT + 10)  # and the worker dropped its end
    finally:
        await client.close()
        await proxy.close()


async def test_the_worker_does_not_listen_on_tcp_without_tls_and_a_token(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("WORKER_")}
    result = subprocess.run([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(tmp_path),
                             "--listen", f"tcp://127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "WORKER_TLS_CERT, WORKER_TLS_KEY, WORKER_TOKEN" in result.stderr


async def test_a_training_set_and_a_lora_travel_to_a_worker_with_its_own_disk(remote, pki, tmp_path):
    """The bot's files are named by sha256; the worker fetches them into DATA_DIR/cache/files; the checkpoints
    come back as bytes into the bot's output folder; the trained LoRA then goes back out for a generation."""
    from gpu.training.config import TrainConfig

    port, worker_dir, _, _ = remote
    bot_dir = tmp_path / "bot-host"
    dataset = write_dataset(bot_dir / "training" / "job1" / "dataset")
    output = bot_dir / "training" / "job1" / "output"
    config = TrainConfig(rank=4, alpha=4, resolution=64, steps=4, checkpoint_every=2, keep_checkpoints=1,
                         learning_rate=1e-3, sample_steps=2, sample_prompt="a red square").to_json()
    client = await connected(port, security(pki))
    try:
        messages = [message async for message in client.train("train-1", TrainParams(str(dataset), str(output),
                                                                                     config))]
        assert isinstance(messages[-1], Done)
        checkpoints = [message for message in messages if isinstance(message, CheckpointReady)]
        assert [checkpoint.step for checkpoint in checkpoints] == [2, 4]
        last = checkpoints[-1]
        for path in (last.lora_file, last.sample_png, last.loss_png):
            assert Path(path).is_relative_to(output) and Path(path).stat().st_size > 0
        assert Path(last.sample_png).read_bytes().startswith(b"\x89PNG")
        # the bot's copy holds exactly what came over the wire (the worker's trainer state stayed on the worker)
        assert sorted(path.name for path in output.rglob("*") if path.is_file()) == [
            "loss.png", "pytorch_lora_weights.safetensors", "sample.png"]
        assert [folder.name for folder in (output / "checkpoints").iterdir()] == ["step-000004"]  # KEEP_CHECKPOINTS
        cache = worker_dir / "cache" / "files"
        for image in (dataset / "images").iterdir():
            assert (cache / hashlib.sha256(image.read_bytes()).hexdigest()).is_file()

        lora_sha = hashlib.sha256(Path(last.lora_file).read_bytes()).hexdigest()
        assert not (cache / lora_sha).exists()
        generation = params(loras=[LoraRef(name="trained-1", path=last.lora_file, scale=1.0)])
        messages = [message async for message in client.generate("with-lora", generation)]
        assert isinstance(messages[-1], Done) and any(isinstance(message, ImageReady) for message in messages)
        assert (cache / lora_sha).read_bytes() == Path(last.lora_file).read_bytes()  # fetched, hash-checked
    finally:
        await client.close()


async def test_bot_check_probes_each_listed_worker(remote, pki):
    from bot.worker.probe import probe_worker

    port, _, _, _ = remote
    ok, line = await probe_worker(TcpEndpoint("localhost", port), security(pki))
    assert ok and line.startswith(f"tcp://localhost:{port}: worker pid") and "tiny on cpu" in line
    ok, line = await probe_worker(TcpEndpoint("localhost", port), security(pki, token="x" * 20), timeout=5)
    assert not ok and "wrong WORKER_TOKEN" in line
    ok, line = await probe_worker(TcpEndpoint("127.0.0.1", free_port()), security(pki), timeout=1)
    assert not ok and "nothing answers" in line


async def test_a_source_picture_travels_by_content_to_a_worker_with_its_own_disk(remote, pki, tmp_path):
    """An img2img request to a remote worker names its picture by sha256: the worker fetches it, and the result's PNG
    says where it came from."""
    import io

    from PIL import Image

    from gpu.png import read_png_text
    from zimage_protocol.messages import SourceImage

    port, worker_dir, _, _ = remote
    picture = tmp_path / "parent.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    client = await connected(port, security(pki))
    try:
        source = SourceImage(path=str(picture), strength=0.7, mode="vary_strong", parent="41")
        messages = [message async for message in client.generate("src-1", params(source=source))]
        assert isinstance(messages[-1], Done), messages[-1]
        [image] = [message for message in messages if isinstance(message, ImageReady)]
        text = read_png_text(image.png)
        assert (text["parent_job"], text["source_mode"], text["strength"]) == ("41", "vary_strong", "0.7")
        assert Image.open(io.BytesIO(image.png)).size == (64, 64)
        digest = hashlib.sha256(picture.read_bytes()).hexdigest()
        assert any(digest in str(path) for path in (worker_dir / "cache").rglob("*"))  # fetched, kept by content
    finally:
        await client.close()
