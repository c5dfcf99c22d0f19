"""Pipelined training steps (gpu/training/pending.py) on the CPU: losses read one step late, a bad step skipped by the
fused optimizer and stopping the run at the next step; the synchronous path stopping before the update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import fresh_output, small_config

from gpu.training.config import TrainerError
from gpu.training.trainer import LoraTrainer


def pipelined_trainer(pipe, dataset, cache_file, tmp_path, monkeypatch, name: str) -> LoraTrainer:
    """The CUDA path of gpu/training/pending.py on the CPU: losses read a step late, a fused AdamW skipping bad steps."""
    import gpu.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "can_pipeline", lambda device: True)
    monkeypatch.setattr(trainer_module, "make_optimizer", lambda params, config, device, memory_saving=False: torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True))
    trainer = LoraTrainer(pipe, dataset, fresh_output(tmp_path, cache_file, name), small_config(), "cpu", torch.float32)
    trainer.prepare()
    return trainer


def test_pipelined_steps_report_each_loss_one_step_late_and_checkpoint_them_all(pipe, dataset, cache_file,
                                                                                reference_losses, tmp_path, monkeypatch):
    trainer = pipelined_trainer(pipe, dataset, cache_file, tmp_path, monkeypatch, "pipelined")
    returned = [trainer.step() for _ in range(4)]
    assert returned[0] is None and len(trainer._losses) == 3  # the newest loss is still pending
    assert returned[1:] == trainer._losses
    checkpoint = trainer.save_checkpoint()  # reads the pending one first
    assert len(trainer.losses) == 4 and checkpoint.loss == pytest.approx(np.mean(trainer.losses[-4:]))
    # The same steps as the synchronous run (a fused AdamW instead of foreach: equal up to rounding).
    assert trainer.losses == pytest.approx(reference_losses[:4], rel=1e-4)
    trainer.step()
    trainer.close()  # reads the newest loss too
    assert len(trainer.losses) == 5


def spoil_steps(trainer, monkeypatch, *, loss: bool):
    """From now on each step's gradients are NaN, and its loss too when `loss`."""
    real_forward_backward = trainer._forward_backward

    def spoiled():
        value = real_forward_backward()
        for param in trainer._trainee_params:
            param.grad.fill_(float("nan"))
        return value * float("nan") if loss else value

    monkeypatch.setattr(trainer, "_forward_backward", spoiled)
    return real_forward_backward


@pytest.mark.parametrize("loss", [True, False], ids=["nan-loss", "nan-gradients-only"])
def test_a_bad_pipelined_step_leaves_the_weights_alone_and_the_next_step_stops_the_run(
        pipe, dataset, cache_file, tmp_path, monkeypatch, loss):
    trainer = pipelined_trainer(pipe, dataset, cache_file, tmp_path, monkeypatch, "bad")
    trainer.step()
    trainer.step()
    before = [param.detach().clone() for param in trainer._trainee_params]
    real_forward_backward = spoil_steps(trainer, monkeypatch, loss=loss)
    trainer.step()  # step 3: not read yet, but the fused optimizer skipped it
    assert all(torch.equal(a, b) for a, b in zip(before, trainer._trainee_params, strict=True))
    monkeypatch.setattr(trainer, "_forward_backward", real_forward_backward)
    with pytest.raises(TrainerError, match=("loss became nan" if loss else "gradients became") + ".* at step 3"):
        trainer.step()  # reads step 3 before its own update
    assert all(torch.equal(a, b) for a, b in zip(before, trainer._trainee_params, strict=True))
    trainer.close()


def test_a_step_with_nan_gradients_stops_a_synchronous_run_before_its_update(pipe, dataset, cache_file, tmp_path,
                                                                             monkeypatch):
    trainer = LoraTrainer(pipe, dataset, fresh_output(tmp_path, cache_file, "sync"), small_config(), "cpu",
                          torch.float32)
    trainer.prepare()
    trainer.step()
    before = [param.detach().clone() for param in trainer._trainee_params]
    spoil_steps(trainer, monkeypatch, loss=False)
    with pytest.raises(TrainerError, match="gradients became infinite or NaN at step 2"):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer._trainee_params, strict=True))
    assert trainer.step_count == 1 and len(trainer.losses) == 1
    trainer.close()
