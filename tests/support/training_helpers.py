"""Shared by the LoRA trainer's tests (tests/unit/gpu/test_trainer.py, test_training_pending.py): a small training
config, an output folder with the encoded cache copied in, a tiny generation, a training loop. Their fixtures (the
tiny pipeline, the 12-image dataset, its cache, an uninterrupted reference run) are in tests/unit/gpu/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from gpu.training.config import TrainConfig
from gpu.training.trainer import LoraTrainer

STEPS = 12
SIZES = [(64, 64), (96, 64), (64, 96), (128, 64), (80, 80), (64, 128)]  # mixed aspect ratios


def small_config(**changes) -> TrainConfig:
    values = dict(rank=4, alpha=4, resolution=64, steps=STEPS, checkpoint_every=4, keep_checkpoints=2,
                  learning_rate=1e-3, sample_steps=4, sample_prompt="a red square")
    values.update(changes)
    return TrainConfig(**values)


def fresh_output(tmp_path: Path, cache_file: Path, name: str) -> Path:
    output = tmp_path / name
    output.mkdir()
    shutil.copy(cache_file, output / "cache.pt")
    return output


def generate(pipe, seed: int = 7, size: int = 64) -> np.ndarray:
    embeds, _ = pipe.encode_prompt("a blue circle", device="cpu", do_classifier_free_guidance=False)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        return pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=4, guidance_scale=0.0,
                    generator=generator, output_type="np").images[0]


def run(trainer: LoraTrainer, until: int, between=None) -> list:
    checkpoints = []
    while trainer.step_count < until:
        trainer.step()
        if between is not None:
            between(trainer)
        if trainer.checkpoint_due:
            checkpoints.append(trainer.save_checkpoint())
    return checkpoints
