"""Settings of a LoRA training run (``TrainConfig``) and the trainer's user-facing error.

Kept apart from gpu/training/trainer.py because the settings travel without torch: they are validated and
read from JSON (a job's parameters, a checkpoint's ``checkpoint.json``) long before a model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from zimage_protocol import ErrorCode, UserError

TIMESTEP_SAMPLING = ("sigmoid", "shift", "uniform")
OPTIMIZERS = ("auto", "adamw", "adamw8bit")  # auto: gpu/lora/trainee.py's optimizer_kind

__all__ = ["OPTIMIZERS", "TIMESTEP_SAMPLING", "TrainConfig", "TrainerError", "TrainingAdapterError"]


class TrainerError(UserError):
    """Training cannot go on; the message can be shown to the user."""

    code = ErrorCode.TRAINING


class TrainingAdapterError(TrainerError):
    """The training adapter (TRAINING_ADAPTER) cannot be had or used: the bot tells the member what the admin can
    set instead (gpu/training/adapter.py)."""

    code = ErrorCode.TRAINING_ADAPTER


@dataclass
class TrainConfig:
    rank: int = 64
    alpha: int = 64
    steps: int = 4000
    learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    timestep_sampling: str = "sigmoid"  # also "shift", "uniform"
    resolution: int = 512  # aspect buckets around resolution**2 pixels
    checkpoint_every: int = 250
    keep_checkpoints: int = 7
    seed: int = 0
    target_modules: tuple = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
    # de-distillation LoRA: a spec of zimage_protocol/training_adapter.py ("default", "hf:…", a file; None: none),
    # resolved by gpu/training/adapter.py before the run
    training_adapter: str | None = None
    sample_prompt: str = ""  # empty: the first caption of the dataset
    sample_seed: int = 42
    sample_steps: int = 8
    max_grad_norm: float = 1.0  # 0 turns clipping off
    gradient_checkpointing: bool = False  # less memory, about 2x slower steps
    optimizer: str = "auto"  # "adamw" (torch, fused on CUDA), "adamw8bit" (bitsandbytes), "auto": 8-bit where memory is short

    def validate(self) -> None:
        problems = []
        if self.rank < 1 or self.alpha <= 0:
            problems.append("rank and alpha must be positive")
        if self.steps < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1 or self.sample_steps < 1:
            problems.append("steps, checkpoint_every, keep_checkpoints and sample_steps must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)) or self.weight_decay < 0:
            problems.append("learning_rate must be positive and weight_decay not negative")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            problems.append(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}")
        if self.resolution < 16 or self.resolution % 16 or self.resolution > 2048:
            problems.append("resolution must be a multiple of 16 between 16 and 2048")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if not self.target_modules:
            problems.append("target_modules is empty")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = {}
        for name, value in data.items():
            default = getattr(cls, name, None) if name != "target_modules" else ()
            values[name] = _coerce(name, value, default)
        config = cls(**values)
        config.validate()
        return config


def _coerce(name: str, value, default):
    try:
        if name == "target_modules":
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise TypeError("expected a list of module names")
            return tuple(value)
        if name == "training_adapter":
            return None if value in (None, "") else str(value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if isinstance(default, int) and not isinstance(value, bool):
            if float(value) != int(value):
                raise ValueError("expected a whole number")
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad value {value!r} for {name}: {exc}") from exc
