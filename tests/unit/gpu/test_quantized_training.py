"""LoRA training on a quantized worker (gpu/training/quantized.py), on the CPU with torchao int8 weight-only.

fp8 needs a CUDA GPU of compute capability 8.9 (torchao refuses it on the CPU); the int8 path here runs the same
code: the same frozen-linear backward, the same swaps, the same choice of eager checkpointed steps. The device run
is ``python -m gpu.bench --card 22`` / ``--card 15`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_helpers import tiny_image

pytest.importorskip("torchao")

from gpu.engine import ImageEngine  # noqa: E402
from gpu.training.config import TrainConfig  # noqa: E402
from gpu.training.quantized import QuantizedBase, frozen_linear, quantized_linears  # noqa: E402
from gpu.training.trainer import LoraTrainer  # noqa: E402


def config(**changes) -> TrainConfig:
    values = dict(rank=4, alpha=4, resolution=64, steps=4, checkpoint_every=4, learning_rate=2e-3, sample_steps=2,
                  sample_prompt="a red square")
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 noisy PNGs in two aspect ratios with their manifest.json."""
    from PIL import Image

    root = tmp_path_factory.mktemp("dataset")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for index, (width, height) in enumerate([(64, 64), (96, 64), (64, 96), (64, 64)]):
        pixels = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        entries.append({"file": f"{index}.png", "caption": f"a photo of sks thing {index}", "width": width,
                        "height": height, "source_name": f"{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def int8_engine(tiny_models_dir, tmp_path_factory, request):
    """The worker's engine with ZIMAGE_QUANT=int8: the transformer's block linears quantized as they are placed."""
    data = tmp_path_factory.mktemp("data")
    (data / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setenv("ZIMAGE_QUANT", "int8")
    engine = ImageEngine("tiny", data)
    engine.load()
    return engine


def test_frozen_linear_gives_the_input_gradient_of_the_dequantized_weight():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    quantize_(linear, Int8WeightOnlyConfig(version=2))
    assert quantized_linears(torch.nn.Sequential(linear)) == [linear]
    x = torch.randn(3, 5, 64, requires_grad=True)
    out = frozen_linear(linear, x)
    torch.testing.assert_close(out, linear(x.detach()))  # the forward is the quantized kernel's
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad @ linear.weight.dequantize())
    assert not linear.weight.requires_grad and linear.weight.grad is None


def test_the_swaps_come_and_go_with_training_steps():
    """enter(): quantized linears differentiable, compiled blocks eager; exit(): generation's exactly back."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    block = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 16))
    quantize_(block, Int8WeightOnlyConfig(version=2))
    compiled = object()
    block._compiled_call_impl = compiled  # as nn.Module.compile() leaves a block
    base = QuantizedBase.find(block)
    assert base is not None and len(base.linears) == 2 and base.blocks == [block]
    assert QuantizedBase.find(torch.nn.Linear(4, 4)) is None
    base.enter()
    assert block._compiled_call_impl is None and all("forward" in linear.__dict__ for linear in base.linears)
    base.exit()
    assert block._compiled_call_impl is compiled and not any("forward" in linear.__dict__ for linear in base.linears)


def test_a_quantized_engine_trains_a_lora_that_loads_in_a_full_precision_pipeline(int8_engine, dataset, tmp_path,
                                                                                    tiny_models_dir):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipe = int8_engine.pipe
    assert int8_engine.accel.quant == "int8" and int8_engine.trains
    linears = quantized_linears(pipe.transformer)
    assert linears, "ZIMAGE_QUANT=int8 quantized nothing"
    base = tiny_image(pipe, "a blue circle")
    trainer = LoraTrainer(pipe, dataset, tmp_path / "out", config(), "cpu", torch.float32)
    trainer.prepare()
    assert pipe.transformer.gradient_checkpointing  # on for a quantized base
    between = []
    while not trainer.done:
        loss = trainer.step()
        assert np.isfinite(loss)
        trainer.suspend()  # what the scheduler does around an /imagine between two steps
        assert not any("forward" in linear.__dict__ for linear in linears)
        between.append(tiny_image(pipe, "a blue circle"))
        trainer.resume()
    trainer_lora = trainer.lora_state_dict()
    assert any(key.endswith("lora_B.weight") and value.abs().sum() > 0 for key, value in trainer_lora.items())
    checkpoint = trainer.save_checkpoint()
    trainer.close()
    assert all(np.array_equal(image, base) for image in between)  # the base, clean, between steps
    assert np.array_equal(tiny_image(pipe, "a blue circle"), base)
    assert not pipe.transformer.gradient_checkpointing
    assert all(type(linear.weight).__name__ == "Int8Tensor" for linear in linears)  # the base stayed quantized

    full = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    full.set_progress_bar_config(disable=True)
    plain = tiny_image(full, "a blue circle")
    full.load_lora_weights(str(checkpoint.lora_file), adapter_name="trained")
    with_lora = tiny_image(full, "a blue circle")
    assert np.isfinite(with_lora).all() and not np.array_equal(with_lora, plain)


@pytest.fixture
async def int8_worker(data_dir):
    from bot.worker.client import WorkerClient

    socket_path = data_dir / "worker.sock"
    env = {**__import__("os").environ, "ZIMAGE_QUANT": "int8"}
    process = subprocess.Popen([sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir),
                                "--socket", str(socket_path)], env=env)
    client = WorkerClient(socket_path)
    client.start()
    try:
        await client.wait_connected(60)
        yield client
    finally:
        await client.close()
        process.kill()
        process.wait()


async def test_a_quantized_worker_accepts_train_and_serves_imagine_meanwhile(int8_worker, dataset, tmp_path):
    """The worker process with ZIMAGE_QUANT=int8 (its profile used to refuse /train): the run finishes with a LoRA
    file, and an /imagine sent while it trains is served between its steps."""
    from zimage_protocol import GenerateParams
    from zimage_protocol.messages import Accepted, CheckpointReady, Done, ImageReady, TrainParams, TrainProgress

    client = int8_worker
    params = TrainParams(str(dataset), str(tmp_path / "run"), config(steps=6, checkpoint_every=3).to_json())
    training: list = []
    imagined: list = []

    async def train():
        async for message in client.train("t1", params):
            training.append(message)

    async def imagine():
        while not any(isinstance(message, TrainProgress) for message in training):
            await asyncio.sleep(0.05)
        async for message in client.generate("g1", GenerateParams(prompt="a lighthouse", width=64, height=64,
                                                                  steps=2, seeds=[1])):
            imagined.append((message, sum(isinstance(m, TrainProgress) for m in training)))

    await asyncio.wait_for(asyncio.gather(train(), imagine()), 240)
    assert isinstance(training[0], Accepted) and isinstance(training[-1], Done)
    progress = [message for message in training if isinstance(message, TrainProgress)]
    assert [message.step for message in progress] == list(range(1, 7))
    assert all(np.isfinite(message.loss) for message in progress)
    checkpoints = [message for message in training if isinstance(message, CheckpointReady)]
    assert [message.step for message in checkpoints] == [3, 6] and Path(checkpoints[-1].lora_file).is_file()
    images = [(message, seen) for message, seen in imagined if isinstance(message, ImageReady)]
    assert len(images) == 1 and images[0][1] < 6  # served while the run was still going
