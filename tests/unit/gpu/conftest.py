"""Fixtures of the LoRA trainer's tests: the tiny pipeline, a 12-image dataset of mixed aspect ratios, its encoded
cache, and an uninterrupted reference run (helpers: tests/support/training_helpers.py). A test module that defines a
fixture of the same name uses its own."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import SIZES, STEPS, fresh_output, run, small_config

from gpu.training.trainer import LoraTrainer


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipeline = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 noisy coloured PNGs of mixed aspect ratios and their manifest.json."""
    from PIL import Image

    root = tmp_path_factory.mktemp("dataset")
    (root / "images").mkdir()
    rng = random.Random(0)
    numpy_rng = np.random.default_rng(0)
    entries = []
    for index in range(12):
        width, height = SIZES[index % len(SIZES)]
        colour = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        pixels = np.clip(colour + numpy_rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"img{index:02d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        entries.append({"file": name, "caption": f"a photo in colour {index}", "width": width, "height": height,
                        "source_name": f"upload-{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def cache_file(pipe, dataset, tmp_path_factory) -> Path:
    """Latents and embeddings encoded once; other runs copy the cache instead of encoding again."""
    output = tmp_path_factory.mktemp("encode")
    trainer = LoraTrainer(pipe, dataset, output, small_config(), "cpu", torch.float32)
    trainer.prepare()
    trainer.close()
    return output / "cache.pt"


@pytest.fixture(scope="module")
def reference_losses(pipe, dataset, cache_file, tmp_path_factory) -> list[float]:
    """An uninterrupted 12-step run: the interrupted, resumed run below must match it exactly."""
    trainer = LoraTrainer(pipe, dataset, fresh_output(tmp_path_factory.mktemp("ref"), cache_file, "out"), small_config(),
                          "cpu", torch.float32)
    trainer.prepare()
    run(trainer, STEPS)
    losses = trainer.losses
    trainer.close()
    return losses
