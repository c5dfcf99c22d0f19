"""Which AdamW trains a LoRA (gpu/lora/trainee.py's optimizer_kind) and what a checkpoint written with another
optimizer restores (gpu/training/checkpoints.py)."""

from __future__ import annotations

import pytest
import torch

from gpu.lora.trainee import make_optimizer, optimizer_kind
from gpu.training.checkpoints import optimizer_class, restore_training_state, training_state
from gpu.training.config import TrainConfig


@pytest.mark.parametrize(("setting", "device", "memory_saving", "have_bnb", "expected"), [
    ("auto", "cuda", False, True, "adamw"),  # a full-size card: the fused AdamW, faster (docs/BENCHMARKS.md)
    ("auto", "cuda", True, True, "adamw8bit"),  # a quantized base or checkpointing: memory first
    ("auto", "cuda", True, False, "adamw"),  # no bitsandbytes installed
    ("adamw8bit", "cuda", False, True, "adamw8bit"),
    ("adamw8bit", "cuda", False, False, "adamw"),
    ("adamw8bit", "cpu", True, True, "adamw"),  # bitsandbytes' 8-bit states are CUDA-only
    ("adamw", "cuda", True, True, "adamw"),
])
def test_optimizer_kind(setting, device, memory_saving, have_bnb, expected):
    config = TrainConfig(optimizer=setting)
    assert optimizer_kind(config, device, memory_saving, have_bnb) == expected


def test_optimizer_setting_is_validated_and_travels_as_json():
    assert TrainConfig.from_json({"optimizer": "adamw8bit"}).optimizer == "adamw8bit"
    assert TrainConfig.from_json({}).optimizer == "auto"
    with pytest.raises(ValueError, match="optimizer must be one of auto, adamw, adamw8bit"):
        TrainConfig.from_json({"optimizer": "lion"})


def test_cpu_trains_with_torch_adamw():
    layer = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(list(layer.parameters()), TrainConfig(optimizer="adamw8bit"), torch.device("cpu"), True)
    assert type(optimizer) is torch.optim.AdamW


def _trained(optimizer_type):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    params = list(model.parameters())
    optimizer = optimizer_type(params, lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return model, params, optimizer


def test_a_checkpoint_restores_its_moments_into_the_same_optimizer():
    model, params, optimizer = _trained(torch.optim.AdamW)
    state = training_state(model, params, optimizer, 1, [0.5], [0.1], TrainConfig())
    assert state["optimizer_class"] == "torch.optim.adamw.AdamW" == optimizer_class(optimizer)
    fresh_model, fresh_params, _ = _trained(torch.optim.AdamW)
    with torch.no_grad():
        for param in fresh_params:
            param.zero_()
    fresh_optimizer = torch.optim.AdamW(fresh_params, lr=0.1)
    restore_training_state(fresh_model, fresh_optimizer, state)
    assert torch.equal(fresh_model.weight, model.weight)
    saved = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], saved)


def test_a_checkpoint_of_another_optimizer_keeps_the_weights_and_starts_the_moments_again(caplog):
    model, params, optimizer = _trained(torch.optim.AdamW)
    state = training_state(model, params, optimizer, 1, [0.5], [0.1], TrainConfig())
    other_model = torch.nn.Linear(4, 4)
    other_optimizer = torch.optim.SGD(list(other_model.parameters()), lr=0.1, momentum=0.9)
    with caplog.at_level("WARNING"):
        restore_training_state(other_model, other_optimizer, state)  # AdamW's state would not fit SGD's
    assert torch.equal(other_model.weight, model.weight)
    assert other_optimizer.state_dict()["state"] == {}
    assert "its moments start from zero" in caplog.text


def test_a_checkpoint_from_before_the_optimizer_was_recorded_is_told_by_its_state():
    """Workers with bitsandbytes trained with 8-bit AdamW by default until session 11; their checkpoints have no
    ``optimizer_class``. Resumed with torch's AdamW, the LoRA weights carry over and the step after works."""
    model, params, optimizer = _trained(torch.optim.AdamW)
    state = training_state(model, params, optimizer, 1, [0.5], [0.1], TrainConfig())
    del state["optimizer_class"]
    torch_layout = {**state, "optimizer": optimizer.state_dict()}
    eight_bit = optimizer.state_dict()
    eight_bit["state"] = {index: {"step": entry["step"], "state1": entry["exp_avg"].to(torch.uint8),
                                  "state2": entry["exp_avg_sq"].to(torch.uint8), "absmax1": torch.ones(1)}
                          for index, entry in eight_bit["state"].items()}
    bnb_layout = {**state, "optimizer": eight_bit}

    fresh_model, fresh_params, _ = _trained(torch.optim.AdamW)
    fresh_optimizer = torch.optim.AdamW(fresh_params, lr=0.1)
    restore_training_state(fresh_model, fresh_optimizer, bnb_layout)
    assert torch.equal(fresh_model.weight, model.weight) and fresh_optimizer.state_dict()["state"] == {}
    fresh_model(torch.ones(2, 4)).sum().backward()
    fresh_optimizer.step()  # would raise KeyError('exp_avg') with the 8-bit state loaded

    same_optimizer = torch.optim.AdamW(fresh_params, lr=0.1)
    restore_training_state(fresh_model, same_optimizer, torch_layout)  # torch's own layout: its moments load
    assert torch.equal(same_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
