"""The trainer's adapters on the shared transformer: adding, switching to training state, removing.

``TRAINEE_ADAPTER`` is the LoRA being trained, ``TRAINING_ADAPTER`` the optional de-distillation LoRA
active during training steps only (names and the contract with generation: gpu/lora/common.py). These
functions hold no state: gpu/training/trainer.py's ``LoraTrainer`` keeps the trainee's parameters and decides
when the state must be set again. Kept apart from the trainer so its peft handling reads in one place.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..training.config import TrainConfig, TrainerError, TrainingAdapterError
from ..training.flow_matching import derived_seed
from .common import (
    TRAINEE_ADAPTER,
    TRAINING_ADAPTER,
    adapter_names,
    apply_adapters,
    describe_load_error,
    quiet_peft,
    remove_peft_if_empty,
)

log = logging.getLogger(__name__)

__all__ = ["add_trainee", "adapter_signature", "find_trainee_layer", "make_optimizer", "optimizer_kind",
           "remove_trainer_adapters", "set_training_state", "trainee_state_dict", "write_trainee"]


def _load_training_adapter(pipe, file: Path) -> None:
    try:
        pipe.load_lora_weights(str(file), adapter_name=TRAINING_ADAPTER)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainingAdapterError(f"the training adapter could not be loaded: {describe_load_error(exc)}") from exc


def add_trainee(pipe, transformer, config: TrainConfig, device, adapter_file: Path | None = None) -> list:
    """Add the trainee (initialised from config.seed) and the training adapter `adapter_file` (resolved and checked
    by gpu/training/adapter.py) if there is one.

    Returns the trainee's parameters, turned into fp32 master weights (the forward autocasts on CUDA)."""
    import torch
    from peft import LoraConfig

    lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights=True,
                             target_modules=list(config.target_modules))
    devices = [device] if device.type == "cuda" else []
    with quiet_peft(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(config.seed, "init", 0))  # lora_A's init: same seed, same run
        try:
            transformer.add_adapter(lora_config, adapter_name=TRAINEE_ADAPTER)
        except ValueError as exc:
            raise TrainerError(f"the LoRA cannot be added: {exc}") from exc
        if adapter_file is not None:
            _load_training_adapter(pipe, adapter_file)
    marker = f".{TRAINEE_ADAPTER}."
    params = [param for name, param in transformer.named_parameters() if marker in name]
    for param in params:
        param.data = param.data.to(torch.float32)
    return params


def find_trainee_layer(transformer, cached=None):
    """One LoRA layer holding the trainee (`cached` if it still does): its state stands for every layer
    (set_adapters sets all)."""
    if cached is not None and TRAINEE_ADAPTER in cached.lora_A:
        return cached
    for module in transformer.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and TRAINEE_ADAPTER in lora_a:
            return module
    raise TrainerError("the LoRA being trained was removed from the model")


def adapter_signature(transformer, layer, trainee_params: list) -> tuple:
    """What the adapter state looks like now, to notice a change made by a generation in between."""
    return (tuple(adapter_names(transformer)), tuple(layer.active_adapters), bool(layer.disable_adapters),
            trainee_params[0].requires_grad)


def set_training_state(transformer, trainee_params: list, with_training_adapter: bool) -> None:
    """Trainee (+ training adapter) active; only the trainee's parameters take gradients."""
    names = [TRAINEE_ADAPTER] + ([TRAINING_ADAPTER] if with_training_adapter else [])
    apply_adapters(transformer, names, [1.0] * len(names))
    trainee = {id(param) for param in trainee_params}
    for param in transformer.parameters():
        param.requires_grad_(id(param) in trainee)


def remove_trainer_adapters(pipe, transformer) -> None:
    """Delete the trainer's adapters; user LoRAs stay loaded, switched off; peft goes if nothing is left."""
    mine = [name for name in (TRAINEE_ADAPTER, TRAINING_ADAPTER) if name in adapter_names(transformer)]
    with quiet_peft():
        if mine:
            pipe.delete_adapters(mine)
        if adapter_names(transformer):
            apply_adapters(transformer, [], [])  # user LoRAs stay loaded, switched off
        remove_peft_if_empty(transformer)


def trainee_state_dict(transformer, dtype) -> dict:
    """The trainee's LoRA in diffusers/peft naming, in `dtype`, on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=TRAINEE_ADAPTER)
    return {key: value.detach().to("cpu", dtype).contiguous() for key, value in state.items()}


def write_trainee(pipe, transformer, dtype, folder: Path, extra_metadata: dict[str, str] | None = None) -> None:
    """The trainee as a diffusers LoRA file in `folder`, with its rank/alpha metadata (loaders need it) and
    `extra_metadata` (the training adapter used: gpu/training/adapter.py) in the safetensors header.

    diffusers writes no metadata of the caller's, so the file is written here as its writer does it: the weights
    packed under ``transformer.``, ``format: pt`` and the peft config (prefixed, sets as lists) as JSON."""
    import safetensors.torch
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    config = transformer.peft_config[TRAINEE_ADAPTER].to_dict()
    packed = {f"transformer.{key}": sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    metadata = {**(extra_metadata or {}), "format": "pt",
                LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}

    def save(weights: dict, filename: str) -> None:
        safetensors.torch.save_file(weights, filename, metadata=metadata)

    type(pipe).save_lora_weights(folder, transformer_lora_layers=trainee_state_dict(transformer, dtype),
                                 save_function=save)


def optimizer_kind(config: TrainConfig, device_type: str, memory_saving: bool, have_bitsandbytes: bool) -> str:
    """Which AdamW trains the LoRA: ``"adamw8bit"`` (bitsandbytes) or ``"adamw"`` (torch's; fused on CUDA).

    ``config.optimizer`` ``"auto"`` takes the 8-bit one only where memory is what limits the run (a quantized base,
    the low-VRAM profiles, or gradient checkpointing configured) and bitsandbytes is installed. Chosen once, in
    ``prepare()``: checkpointing turned on later by an out-of-memory step keeps the optimizer. Measured on an H100
    (docs/BENCHMARKS.md, session 11): 8-bit AdamW's unfused per-tensor kernels cost 0.121 vs 0.085 s/step over
    the 476 LoRA tensors of a rank-64 run, to save ~1 GiB of optimizer state; a full-size card has that GiB.
    """
    if device_type != "cuda":
        return "adamw"  # bitsandbytes' 8-bit states are CUDA-only
    if config.optimizer == "adamw8bit" or (config.optimizer == "auto" and memory_saving):
        return "adamw8bit" if have_bitsandbytes else "adamw"
    return "adamw"


def make_optimizer(params: list, config: TrainConfig, device, memory_saving: bool = False):
    """The trainee's AdamW, as :func:`optimizer_kind` picks it."""
    import importlib.util

    import torch

    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if optimizer_kind(config, device.type, memory_saving, have_bnb) == "adamw8bit":
        try:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        except Exception as exc:  # noqa: BLE001 - installed but unusable here (its CUDA library): train anyway
            log.warning("bitsandbytes' 8-bit AdamW is unavailable (%s): training with torch's AdamW", exc)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                             fused=device.type == "cuda")
