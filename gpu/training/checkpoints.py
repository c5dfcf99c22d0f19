"""Checkpoint folders of a training run: layout, writing, pruning, finding and reading them back.

Each checkpoint is ``output_dir/checkpoints/step-NNNNNN/`` holding the LoRA in diffusers format
(``pipe.load_lora_weights(folder)`` loads it), ``checkpoint.json`` (step, mean loss and seconds per
step since the previous checkpoint, config, the training adapter used) and, for the newest only, ``training_state.pt`` (trainee
weights, optimizer, RNG: what an exact resume needs). A folder is written as ``step-NNNNNN.tmp`` and
renamed when complete, so ``list_checkpoints`` never sees half a checkpoint. Kept apart from
gpu/training/trainer.py so that the on-disk format lives in one place, readable without a model (the bot lists
checkpoints; gpu/training/trainer.py only decides when to save and what to restore).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zimage_protocol.constants import LORA_FILE

from .config import TrainConfig, TrainerError

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
META_FILE = "checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")

__all__ = ["LORA_FILE", "META_FILE", "STATE_FILE", "Checkpoint", "check_compatible", "checkpoint_dirs", "latest_state",
           "list_checkpoints", "optimizer_class", "prune_checkpoints", "restore_training_state", "training_state",
           "write_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # the checkpoint folder: pipe.load_lora_weights(path) loads it
    lora_file: Path  # diffusers-format LoRA (safetensors)
    loss: float  # mean loss of the steps since the previous checkpoint
    seconds_per_step: float  # mean over the same steps


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Finished checkpoints in output_dir/checkpoints, oldest first."""
    found = []
    for folder in checkpoint_dirs(Path(output_dir)):
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append(Checkpoint(int(meta["step"]), folder, folder / LORA_FILE, float(meta["loss"]),
                                float(meta["seconds_per_step"])))
    return found


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """The step-NNNNNN folders in output_dir/checkpoints, oldest first (finished or not)."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    folders = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(folders)]


def training_state(transformer, trainee_params: list, optimizer, step: int, losses: list[float],
                   step_seconds: list[float], config: TrainConfig) -> dict:
    """What ``training_state.pt`` holds: enough to continue exactly where the run stopped."""
    import torch

    names = {id(param): name for name, param in transformer.named_parameters()}
    return {
        "step": step,
        "losses": list(losses),
        "step_seconds": list(step_seconds),
        "config": config.to_json(),
        "trainee": {names[id(param)]: param.detach().to("cpu").clone() for param in trainee_params},
        "optimizer": optimizer.state_dict(),
        "optimizer_class": optimizer_class(optimizer),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def optimizer_class(optimizer) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


# A checkpoint without ``optimizer_class`` tells its optimizer by the keys of its per-parameter state.
_TORCH_ADAM_LAYOUT, _BITSANDBYTES_LAYOUT = "torch Adam moments (exp_avg)", "bitsandbytes 8-bit states (state1)"


def _layout_of(optimizer_state: dict) -> str | None:
    """The moments' layout of a saved optimizer state, None when no step has made any."""
    per_parameter = next(iter(optimizer_state.get("state", {}).values()), None)
    if not per_parameter:
        return None
    if "state1" in per_parameter:
        return _BITSANDBYTES_LAYOUT
    return _TORCH_ADAM_LAYOUT if "exp_avg" in per_parameter else None


def _layout_of_optimizer(optimizer) -> str:
    return _BITSANDBYTES_LAYOUT if type(optimizer).__module__.startswith("bitsandbytes") else _TORCH_ADAM_LAYOUT


def restore_training_state(transformer, optimizer, state: dict) -> None:
    """The inverse of :func:`training_state` for the weights, optimizer and RNG (step and losses: the caller's)."""
    import torch

    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, value in state["trainee"].items():
            params[name].copy_(value)
    saved_class = state.get("optimizer_class") or _layout_of(state["optimizer"])  # absent before session 11
    if saved_class is not None and saved_class not in (optimizer_class(optimizer), _layout_of_optimizer(optimizer)):
        # The worker's optimizer changed between the runs (a new VRAM profile, bitsandbytes installed or removed,
        # or a checkpoint of a worker that trained with 8-bit AdamW by default): the LoRA weights carry over,
        # AdamW's moments start again. Loading the other layout would fail at the next step.
        log.warning("the checkpoint's optimizer was %s, this run's is %s: its moments start from zero",
                    saved_class, optimizer_class(optimizer))
    else:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def write_checkpoint(output_dir: Path, step: int, config: TrainConfig, losses: list[float], step_seconds: list[float],
                     write_lora: Callable[[Path], None], state: Callable[[], dict],
                     training_adapter: dict[str, str] | None = None) -> Checkpoint:
    """LoRA (written by ``write_lora(folder)``) + ``state()`` + metadata in output_dir/checkpoints/step-NNNNNN/;
    `training_adapter`: the adapter's source and sha256 (gpu/training/adapter.py), recorded as it was used."""
    import torch

    root = output_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    scratch = root / f"{final.name}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    write_lora(scratch)
    torch.save(state(), scratch / STATE_FILE)
    since = step % config.checkpoint_every or config.checkpoint_every
    recent_losses, recent_seconds = losses[-since:], step_seconds[-since:]
    loss = sum(recent_losses) / len(recent_losses) if recent_losses else float("nan")
    seconds = sum(recent_seconds) / len(recent_seconds) if recent_seconds else 0.0
    meta = {"step": step, "loss": loss, "seconds_per_step": seconds, "config": config.to_json(), "saved_at": time.time(),
            "training_adapter": training_adapter or {"source": "none", "sha256": "none"}}
    (scratch / META_FILE).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)
    return Checkpoint(step, final, final / LORA_FILE, loss, seconds)


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Keep the newest `keep` folders; only the newest keeps its (large) training state."""
    folders = checkpoint_dirs(output_dir)
    for stale in folders[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    for older in folders[-keep: -1]:
        (older / STATE_FILE).unlink(missing_ok=True)
    for scratch in (output_dir / "checkpoints").glob("*.tmp"):
        shutil.rmtree(scratch, ignore_errors=True)


def latest_state(output_dir: Path) -> tuple[Path, dict] | None:
    """(folder, training state) of the newest checkpoint that still has one, or None."""
    import torch

    candidates = [folder for folder in checkpoint_dirs(output_dir) if (folder / STATE_FILE).is_file()]
    if not candidates:
        return None
    folder = candidates[-1]
    return folder, torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)


def check_compatible(saved: dict, config: TrainConfig) -> None:
    """Refuse a checkpoint whose LoRA shape differs from `config`'s (saved: the checkpoint's config)."""
    for key in ("rank", "alpha", "target_modules"):
        mine = config.to_json()[key]
        if saved.get(key) != mine:
            raise TrainerError(f"the checkpoint was trained with {key}={saved.get(key)!r}, not {mine!r}")
