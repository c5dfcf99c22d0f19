"""The training adapter on the worker (gpu/training/adapter.py): resolving TRAINING_ADAPTER, checking the file
against the transformer, and the record of what a run used in each checkpoint. No network: the hub is offline
(HF_HUB_OFFLINE=1) and its cache a folder made here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from gpu.training.adapter import (
    NO_ADAPTER,
    check_adapter_file,
    resolve_training_adapter,
    transformer_layers,
)
from gpu.training.config import TrainConfig, TrainingAdapterError
from zimage_protocol import ErrorCode

FAKE_REPO = "zimage-bot-tests/no-such-adapter"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and no network."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory):
    from gpu.engine import ImageEngine

    data = tmp_path_factory.mktemp("data")
    (data / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    engine = ImageEngine("tiny", data)
    engine.load()
    return engine


def make_adapter(layers: dict, path: Path, rank: int = 2, names=("layers.0.attention.to_q", "layers.1.feed_forward.w2"),
                 prefix: str = "diffusion_model.") -> Path:
    """An ai-toolkit style de-distillation LoRA for the given layers (name -> (out, in)), made here."""
    import safetensors.torch
    import torch

    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for name in names:
        out, inputs = layers[name]
        tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, inputs, generator=generator) * 0.1
        tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(out, rank, generator=generator) * 0.1
    safetensors.torch.save_file(tensors, str(path))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- resolving the setting ----------------------------------------------------------------------------------------

def test_none_and_the_default_on_the_tiny_model_train_without_an_adapter(caplog):
    assert resolve_training_adapter(None, "tiny") is NO_ADAPTER
    assert resolve_training_adapter("none", "Tongyi-MAI/Z-Image-Turbo") is NO_ADAPTER
    with caplog.at_level(logging.INFO, logger="gpu.training.adapter"):
        assert resolve_training_adapter("default", "tiny") is NO_ADAPTER
    assert "ZIMAGE_MODEL=tiny" in caplog.text and "does not fit the tiny model" in caplog.text
    assert NO_ADAPTER.record() == {"source": "none", "sha256": "none"} and NO_ADAPTER.describe() == "none"


def test_a_local_file_is_used_as_it_is(tmp_path):
    path = tmp_path / "dedistill.safetensors"
    path.write_bytes(b"anything: checked against the model later")
    adapter = resolve_training_adapter(str(path), "tiny")
    assert adapter.path == path and adapter.source == str(path) and adapter.sha256 == sha256(path)
    assert adapter.describe() == f"dedistill.safetensors (sha256 {sha256(path)[:12]})"  # no folder of the worker
    with pytest.raises(TrainingAdapterError, match="'gone.safetensors' is not usable"):
        resolve_training_adapter(str(tmp_path / "gone.safetensors"), "tiny")


def test_offline_without_the_file_fails_clearly(offline_hub):
    spec = f"hf:{FAKE_REPO}/adapter.safetensors@main"
    with pytest.raises(TrainingAdapterError) as caught:
        resolve_training_adapter(spec, "tiny")
    assert caught.value.code == ErrorCode.TRAINING_ADAPTER
    assert str(caught.value) == (f"the training adapter {FAKE_REPO}@main/adapter.safetensors is not in the "
                                 "Hugging Face cache and HF_HUB_OFFLINE is set")
    # The published default on the real model: the same clear failure, naming the adapter it wanted.
    with pytest.raises(TrainingAdapterError, match="ostris/zimage_turbo_training_adapter@main/"
                                                   "zimage_turbo_training_adapter_v2.safetensors is not in the"):
        resolve_training_adapter("default", "Tongyi-MAI/Z-Image-Turbo")


def test_a_cached_hub_file_records_the_commit_it_resolved_to(offline_hub):
    """hf_hub_download's own cache layout (refs/<revision> -> snapshots/<commit>/file): found offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / f"models--{FAKE_REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "adapter.safetensors").write_bytes(b"adapter bytes")
    adapter = resolve_training_adapter(f"hf:{FAKE_REPO}/adapter.safetensors@main", "tiny")
    assert adapter.source == f"{FAKE_REPO}@{commit}/adapter.safetensors" and adapter.from_hub
    assert adapter.sha256 == hashlib.sha256(b"adapter bytes").hexdigest()
    assert adapter.describe().startswith(f"{FAKE_REPO}@{commit}/adapter.safetensors (sha256 ")


# -- checking the file against the transformer --------------------------------------------------------------------

def test_an_adapter_that_fits_passes_in_each_key_layout(engine, tmp_path):
    layers = transformer_layers(engine.pipe.transformer)
    assert layers["layers.0.attention.to_q"] == (engine.pipe.transformer.config.dim,) * 2
    for prefix in ("diffusion_model.", "transformer.", ""):
        check_adapter_file(make_adapter(layers, tmp_path / f"{prefix or 'plain'}.safetensors", prefix=prefix), layers)


def test_an_adapter_for_another_model_is_refused_before_use(engine, tmp_path):
    layers = transformer_layers(engine.pipe.transformer)
    wider = {name: (out * 2, inputs * 2) for name, (out, inputs) in layers.items()}  # "the real model's" shapes
    with pytest.raises(TrainingAdapterError, match=r"has shape \[2, \d+\], the layer `layers.0.attention.to_q` needs"):
        check_adapter_file(make_adapter(wider, tmp_path / "wide.safetensors"), layers)
    deeper = {**layers, "layers.99.attention.to_q": layers["layers.0.attention.to_q"]}
    with pytest.raises(TrainingAdapterError, match="`diffusion_model.layers.99.attention.to_q.lora_A.weight` is not a "
                                                   "LoRA weight of one of its layers"):
        check_adapter_file(make_adapter(deeper, tmp_path / "deep.safetensors", names=("layers.99.attention.to_q",)),
                           layers)


@pytest.mark.parametrize("content, fragment", [
    (struct.pack("<Q", 1 << 40) + b"{}", "its header claims 1,099,511,627,776 bytes"),
    (b"PK\x03\x04 a torch.save zip", "PyTorch pickle"),
    (struct.pack("<Q", 2) + b"[]", "bad header"),
    (struct.pack("<Q", 2) + b"{}", "holds no LoRA weights"),
    (b"tiny", "too short"),
])
def test_a_broken_file_is_refused_from_its_header(engine, tmp_path, content, fragment):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(TrainingAdapterError, match=fragment):
        check_adapter_file(path, transformer_layers(engine.pipe.transformer))


# -- a run records the adapter it used (the worker's scheduler, as a /train runs) ---------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("dataset")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    entries = []
    for index in range(2):
        pixels = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        entries.append({"file": f"{index}.png", "caption": f"a photo of sks thing {index}", "width": 64, "height": 64,
                        "source_name": f"{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


def train_params(dataset: Path, output: Path, adapter: str | None):
    from zimage_protocol.messages import TrainParams

    config = TrainConfig(rank=2, alpha=2, resolution=64, steps=2, checkpoint_every=2, sample_steps=1,
                         sample_prompt="a red square", training_adapter=adapter)
    return TrainParams(str(dataset), str(output), config.to_json())


async def test_each_checkpoint_records_the_adapter_and_a_failed_fetch_fails_only_that_training(
        engine, dataset, tmp_path, offline_hub):
    import safetensors

    from gpu.scheduler import GpuScheduler
    from zimage_protocol import GenerateParams
    from zimage_protocol.messages import CheckpointReady

    scheduler = GpuScheduler(engine)
    await scheduler.load(warm_up=False)
    sent: list = []

    async def emit(message):
        sent.append(message)

    async def train(name: str, adapter: str | None) -> tuple[CheckpointReady, dict, dict]:
        sent.clear()
        await scheduler.train(name, train_params(dataset, tmp_path / name, adapter), emit)
        await closed(scheduler)
        [ready] = [message for message in sent if isinstance(message, CheckpointReady)]
        meta = json.loads((Path(ready.lora_file).parent / "checkpoint.json").read_text())
        with safetensors.safe_open(ready.lora_file, "pt") as lora:
            metadata = lora.metadata()
        return ready, meta, metadata

    # Offline and not cached: that training fails with its own code; the worker goes on.
    with pytest.raises(TrainingAdapterError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        await scheduler.train("offline", train_params(dataset, tmp_path / "offline", f"hf:{FAKE_REPO}/a.safetensors"),
                              emit)
    await closed(scheduler)
    [image] = engine.generate(GenerateParams(prompt="still here", width=64, height=64, steps=1, seeds=[1]))
    assert image.image.size == (64, 64)

    # The default on the tiny model: none, and that is what is recorded.
    ready, meta, metadata = await train("default", "default")
    assert ready.training_adapter == "none"
    assert meta["training_adapter"] == {"source": "none", "sha256": "none"}
    assert metadata["zimage_bot.training_adapter"] == "none" and metadata["zimage_bot.training_adapter_sha256"] == "none"

    # A file made for the tiny model: merged during the steps, its path and sha256 recorded.
    adapter = make_adapter(transformer_layers(engine.pipe.transformer), tmp_path / "dedistill.safetensors")
    ready, meta, metadata = await train("local", str(adapter))
    assert ready.training_adapter == f"dedistill.safetensors (sha256 {sha256(adapter)[:12]})"
    assert meta["training_adapter"] == {"source": str(adapter), "sha256": sha256(adapter)}
    assert metadata["zimage_bot.training_adapter"] == str(adapter)
    assert metadata["zimage_bot.training_adapter_sha256"] == sha256(adapter)
    # The LoRA file is still the diffusers one: its peft metadata (rank, alpha) is there and it loads.
    assert json.loads(metadata["lora_adapter_metadata"])["transformer.r"] == 2 and metadata["format"] == "pt"
    engine.pipe.load_lora_weights(str(Path(ready.lora_file).parent), adapter_name="check")
    engine.pipe.delete_adapters(["check"])
    engine.pipe.transformer.unload_lora()


async def closed(scheduler) -> None:
    """The run's session is closed after train() returns (on the GPU thread); the next run waits for that."""
    for _ in range(400):
        if scheduler._training_id is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the training session was not closed")
