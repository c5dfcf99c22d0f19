"""`enhance` and `seed_variance` through a real worker process and its socket (tiny model)."""

from __future__ import annotations

import os
import subprocess
import sys
from io import BytesIO

import pytest
from PIL import Image

from bot.worker.client import WorkerClient, WorkerError
from gpu.png import read_png_text
from zimage_protocol import ErrorCode, GenerateParams
from zimage_protocol.messages import Done, ImageReady


async def start_worker(data_dir, **env: str):
    socket_path = data_dir / "worker.sock"
    process = subprocess.Popen([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir),
                                "--socket", str(socket_path)], env={**os.environ, **env})
    client = WorkerClient(socket_path)
    client.start()
    await client.wait_connected(60)
    return client, process


@pytest.fixture
async def worker(data_dir):
    client, process = await start_worker(data_dir)
    try:
        yield client
    finally:
        await client.close()
        process.kill()
        process.wait()


def params(**overrides) -> GenerateParams:
    values: dict = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seeds": [7, 8],
                    "enhance": True}
    values.update(overrides)
    return GenerateParams(**values)


async def images(client, request_id, generate_params) -> list[ImageReady]:
    messages = [message async for message in client.generate(request_id, generate_params)]
    assert isinstance(messages[-1], Done)
    return sorted((message for message in messages if isinstance(message, ImageReady)), key=lambda m: m.index)


def pixels(png: bytes) -> bytes:
    return Image.open(BytesIO(png)).convert("RGB").tobytes()


async def test_each_image_names_its_rewrite_in_the_reply_and_the_png(worker):
    made = await images(worker, "e1", params())
    assert [image.seed for image in made] == [7, 8]
    assert all(image.prompt for image in made) and made[0].prompt != made[1].prompt  # one rewrite per seed
    for image in made:
        text = read_png_text(image.png)
        assert text["prompt"] == "a lighthouse at dusk" and text["enhanced_prompt"] == image.prompt
        assert "seed_variance" not in text
    # The member's prompt, its seed and enhance make the same image again.
    again = await images(worker, "e2", params(seeds=[8]))
    assert again[0].prompt == made[1].prompt and pixels(again[0].png) == pixels(made[1].png)
    plain = await images(worker, "e3", params(seeds=[8], enhance=False))
    assert plain[0].prompt == "" and "enhanced_prompt" not in read_png_text(plain[0].png)


async def test_seed_variance_is_stored_and_reproducible(worker):
    first = await images(worker, "v1", params(enhance=False, seeds=[3], seed_variance=0.4))
    again = await images(worker, "v2", params(enhance=False, seeds=[3], seed_variance=0.4))
    clean = await images(worker, "v3", params(enhance=False, seeds=[3]))
    assert read_png_text(first[0].png)["seed_variance"] == "0.4"
    assert pixels(first[0].png) == pixels(again[0].png) != pixels(clean[0].png)


async def test_a_worker_with_the_enhancer_off_refuses_it_clearly(data_dir):
    client, process = await start_worker(data_dir, PROMPT_ENHANCER="off")
    try:
        with pytest.raises(WorkerError) as refused:
            await images(client, "off", params())
        assert refused.value.code == ErrorCode.UNSUPPORTED and "PROMPT_ENHANCER=off" in str(refused.value)
        assert len(await images(client, "plain", params(enhance=False))) == 2  # the rest works as before
    finally:
        await client.close()
        process.kill()
        process.wait()
