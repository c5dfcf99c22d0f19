"""LoRA training on the tiny pipeline (CPU): losses, checkpoints, exact resume, sampling, clean base model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import STEPS, fresh_output, generate, run, small_config

from gpu.lora.common import TRAINEE_ADAPTER, TRAINING_ADAPTER, adapter_names
from gpu.lora.peft import AdapterManager
from gpu.training.checkpoints import list_checkpoints
from gpu.training.config import TrainConfig, TrainerError
from gpu.training.data import DatasetError, make_buckets, pick_bucket
from gpu.training.loss_curve import render_loss_curve
from gpu.training.trainer import LoraTrainer


def optimizer_snapshot(trainer: LoraTrainer) -> dict:
    state = trainer.optimizer.state[trainer.optimizer.param_groups[0]["params"][0]]
    return {key: value.clone() for key, value in state.items()}


def test_buckets_follow_the_resolution():
    buckets = make_buckets(512)
    assert (512, 512) in buckets
    assert all(w % 32 == 0 and h % 32 == 0 and w * h <= 512 * 512 and max(w, h) <= 2 * min(w, h) for w, h in buckets)
    assert min(w * h for w, h in buckets) > 0.85 * 512 * 512
    wide = pick_bucket(1920, 1080, buckets)
    assert wide[0] > wide[1] and pick_bucket(1080, 1920, buckets) == (wide[1], wide[0])
    assert make_buckets(64) == [(48, 80), (64, 64), (80, 48)]


def test_config_json_round_trip_and_errors():
    config = small_config(timestep_sampling="shift", training_adapter="/x/y.safetensors")
    data = json.loads(json.dumps(config.to_json()))
    assert TrainConfig.from_json(data) == config
    for bad in ({"rank": 0}, {"timestep_sampling": "cosine"}, {"resolution": 50}, {"bogus": 1}, {"steps": "many"}):
        with pytest.raises(ValueError):
            TrainConfig.from_json(bad)


def test_train_suspend_checkpoint_resume_sample_close(pipe, dataset, cache_file, reference_losses, tmp_path):
    base = generate(pipe)
    flags = [p.requires_grad for p in pipe.transformer.parameters()]
    output = fresh_output(tmp_path, cache_file, "out")
    manager = AdapterManager(pipe)

    # First run: 8 steps, with generations in between (base model, and the step-4 checkpoint as a user LoRA).
    first = LoraTrainer(pipe, dataset, output, small_config(), "cpu", torch.float32)
    first.prepare()
    assert [(s.width, s.height) for s in first.samples[:6]] == [(64, 64), (80, 48), (48, 80), (80, 48), (64, 64), (48, 80)]
    base_images, lora_images = [], []

    def generate_between(trainer):
        if trainer.step_count == 1:
            trainer.suspend()
            base_images.append(generate(pipe))
            trainer.resume()
        if trainer.step_count == 5:  # the worker's order: suspend, activate, generate, resume
            trainer.suspend()
            manager.activate([("early", str(output / "checkpoints" / "step-000004"), 0.8)])
            lora_images.append(generate(pipe))
            manager.activate([])
            base_images.append(generate(pipe))
            trainer.resume()
        if trainer.step_count == 6:  # without suspend/resume: step() restores its own state
            manager.activate([("early", str(output / "checkpoints" / "step-000004"), 0.8)])
            lora_images.append(generate(pipe))

    run(first, 8, between=generate_between)
    assert len(base_images) == 2 and all(np.array_equal(image, base) for image in base_images)
    assert len(lora_images) == 2 and np.array_equal(lora_images[0], lora_images[1])
    assert not np.array_equal(lora_images[0], base) and manager.loads == 1
    assert all(np.isfinite(first.losses))
    assert first.losses == pytest.approx(reference_losses[:8], rel=1e-5)  # generations did not disturb training
    saved_state = optimizer_snapshot(first)
    saved_lora = {key: value.clone() for key, value in first.lora_state_dict().items()}
    manager.unload_all()
    assert adapter_names(pipe.transformer) == [TRAINEE_ADAPTER]
    first.close()
    assert np.array_equal(generate(pipe), base)
    assert adapter_names(pipe.transformer) == []
    assert [p.requires_grad for p in pipe.transformer.parameters()] == flags

    # Second run on the same output_dir: continues from step 8 with the same optimizer state.
    second = LoraTrainer(pipe, dataset, output, small_config(), "cpu", torch.float32)
    second.prepare()
    assert second.step_count == 8
    assert second.losses == first.losses
    resumed_state = optimizer_snapshot(second)
    assert resumed_state.keys() == saved_state.keys() and "exp_avg" in resumed_state
    assert all(torch.equal(resumed_state[key], saved_state[key]) for key in saved_state)
    assert all(torch.equal(value, saved_lora[key]) for key, value in second.lora_state_dict().items())
    checkpoints = run(second, STEPS)
    assert [c.step for c in checkpoints] == [12]
    assert second.losses == pytest.approx(reference_losses, rel=1e-5)  # exactly the uninterrupted run

    # Checkpoints: pruned to the newest two, only the newest keeps the optimizer state.
    kept = list_checkpoints(output)
    assert [c.step for c in kept] == [8, 12]
    assert not (kept[0].path / "training_state.pt").exists() and (kept[1].path / "training_state.pt").exists()
    assert kept[1].lora_file.is_file() and np.isfinite(kept[1].loss) and kept[1].seconds_per_step > 0

    # Sampling: only the trainee, and training goes on afterwards.
    image = second.sample()
    assert image.size == (64, 64)
    assert second.sample() == image  # fixed seed
    png = second.loss_curve_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size == (480, 240)
    second.close()
    assert np.array_equal(generate(pipe), base)

    # The checkpoint is a diffusers LoRA: it loads and changes the image; deleting it restores the base.
    pipe.load_lora_weights(str(kept[1].path), adapter_name="trained")
    with_lora = generate(pipe)
    assert not np.array_equal(with_lora, base)
    manager.activate([])
    assert np.array_equal(generate(pipe), base)
    pipe.delete_adapters("trained")
    pipe.transformer.unload_lora()


def ai_toolkit_lora(pipe, path: Path) -> Path:
    """A random LoRA saved the way ai-toolkit does: diffusion_model.* keys, no alpha."""
    import safetensors.torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v", "w2"])
    pipe.transformer.add_adapter(config, adapter_name="scratch")
    state = get_peft_model_state_dict(pipe.transformer, adapter_name="scratch")
    pipe.transformer.delete_adapters("scratch")
    pipe.transformer.unload_lora()
    safetensors.torch.save_file({f"diffusion_model.{k}": v * 0.5 for k, v in state.items()}, str(path))
    return path


def test_training_adapter_is_active_in_steps_only(pipe, dataset, cache_file, reference_losses, tmp_path):
    base = generate(pipe)
    adapter = ai_toolkit_lora(pipe, tmp_path / "dedistill.safetensors")
    output = fresh_output(tmp_path, cache_file, "out")
    trainer = LoraTrainer(pipe, dataset, output, small_config(training_adapter=str(adapter)), "cpu", torch.float32)
    trainer.prepare()
    assert set(adapter_names(pipe.transformer)) == {TRAINEE_ADAPTER, TRAINING_ADAPTER}
    # The untrained trainee is a no-op (lora_B = 0): sampling must equal the plain model, training adapter off.
    image = np.asarray(trainer.sample(), dtype=np.float32)
    assert image.shape == (64, 64, 3)
    embeds = trainer.encode_prompt("a red square")
    trainer.suspend()  # the plain model; the next step() resumes by itself
    with torch.inference_mode():
        expected = pipe(prompt_embeds=embeds, height=64, width=64, num_inference_steps=4, guidance_scale=0.0,
                        generator=torch.Generator("cpu").manual_seed(42)).images[0]
    assert np.array_equal(image, np.asarray(expected, dtype=np.float32))
    # During a step it is on (the loss differs from the run without it) and it takes no gradient.
    loss = trainer.step()
    assert loss != pytest.approx(reference_losses[0], rel=1e-6)
    training_params = [p for n, p in pipe.transformer.named_parameters() if f".{TRAINING_ADAPTER}." in n]
    assert training_params and all(p.grad is None and not p.requires_grad for p in training_params)
    trainer.close()
    assert adapter_names(pipe.transformer) == []
    assert np.array_equal(generate(pipe), base)


def test_missing_dataset_and_bad_training_adapter(pipe, dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="manifest.json"):
        LoraTrainer(pipe, empty, tmp_path / "a", small_config(), "cpu", torch.float32).prepare()
    trainer = LoraTrainer(pipe, dataset, tmp_path / "b", small_config(training_adapter=str(tmp_path / "nope.safetensors")),
                          "cpu", torch.float32)
    with pytest.raises(TrainerError, match="training adapter"):
        trainer.prepare()
    assert adapter_names(pipe.transformer) == []


def test_loss_curve_handles_empty_and_long_histories():
    from PIL import Image

    assert Image.open(io.BytesIO(render_loss_curve([]))).format == "PNG"
    curve = render_loss_curve([1.0 / (1 + i) + 0.01 * (i % 7) for i in range(4000)] + [float("nan")])
    assert Image.open(io.BytesIO(curve)).size == (480, 240)


def test_training_beside_hotswap_slots(tiny_models_dir, dataset, cache_file, reference_losses, tmp_path):
    """A compiled worker's slots (gpu/lora/hotswap.py) and a training run share the transformer: the run's losses
    are those of a plain run, a slotted LoRA gives the same image during and after the run."""
    from diffusers import ZImagePipeline

    from gpu.lora.hotswap import HotswapAdapters
    from gpu.tiny import ensure_tiny_model

    slotted = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    slotted.set_progress_bar_config(disable=True)
    slots = HotswapAdapters(slotted, slots=2, rank=4)
    base = generate(slotted)
    trainer = LoraTrainer(slotted, dataset, fresh_output(tmp_path, cache_file, "out"), small_config(), "cpu", torch.float32)
    trainer.prepare()
    run(trainer, 2)
    checkpoint = trainer.save_checkpoint()
    images = []

    def generate_between(trainer):
        trainer.suspend()
        slots.activate([("early", str(checkpoint.path), 0.8)])
        images.append(generate(slotted))
        slots.activate([])
        assert np.array_equal(generate(slotted), base)
        trainer.resume()

    run(trainer, 4, between=generate_between)
    assert trainer.losses == pytest.approx(reference_losses[:4], rel=1e-5)
    trainer.close()
    slots.activate([("early", str(checkpoint.path), 0.8)])
    images.append(generate(slotted))
    assert slots.loads == 1 and not np.array_equal(images[0], base)
    assert all(np.array_equal(image, images[0]) for image in images)


def test_out_of_memory_turns_gradient_checkpointing_on(pipe, dataset, cache_file, reference_losses, tmp_path):
    """Checkpointing only when memory requires it: a step that runs out of memory is run again with it on."""
    trainer = LoraTrainer(pipe, dataset, fresh_output(tmp_path, cache_file, "out"), small_config(), "cpu", torch.float32)
    trainer.prepare()
    real_loss, calls = trainer._loss, []

    def loss_that_does_not_fit_once(step):
        calls.append(step)
        if len(calls) == 2:  # the second step, once
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(step)

    trainer._loss = loss_that_does_not_fit_once
    run(trainer, 3)
    assert calls == [0, 1, 1, 2] and pipe.transformer.gradient_checkpointing
    assert trainer.losses == pytest.approx(reference_losses[:3], rel=1e-5)  # same step, same noise, same loss
    trainer.close()
    assert not pipe.transformer.gradient_checkpointing
