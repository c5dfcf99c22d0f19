"""AdapterManager on the tiny pipeline (CPU): switching, scales, LRU, errors, exact base pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpu.lora.common import TRAINING_ADAPTER, AdapterError, adapter_names
from gpu.lora.peft import AdapterManager


@pytest.fixture
def pipe(tiny_models_dir):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipeline = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_lora(tiny_models_dir: Path, folder: Path, seed: int, targets=("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"),
              ai_toolkit: bool = False) -> Path:
    """A random rank-4 LoRA built with peft on a scratch copy of the tiny transformer, saved like the trainer saves."""
    import safetensors.torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from gpu.tiny import ensure_tiny_model

    transformer = ZImageTransformer2DModel.from_pretrained(ensure_tiny_model(tiny_models_dir), subfolder="transformer")
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=list(targets))
    transformer.add_adapter(config, adapter_name="x")
    state = {key: value * 0.5 for key, value in get_peft_model_state_dict(transformer, adapter_name="x").items()}
    if ai_toolkit:
        folder.mkdir(parents=True)
        file = folder / "lora.safetensors"
        safetensors.torch.save_file({f"diffusion_model.{key}": value for key, value in state.items()}, str(file))
        return file
    ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=state,
                                     transformer_lora_adapter_metadata=transformer.peft_config["x"].to_dict())
    return folder


@pytest.fixture(scope="module")
def loras(tiny_models_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(tiny_models_dir, root / "a", seed=1),
        "b": make_lora(tiny_models_dir, root / "b", seed=2, targets=("to_q", "to_v", "w2")),
        "c": make_lora(tiny_models_dir, root / "c", seed=3, ai_toolkit=True),
    }


def generate(pipe, seed: int = 11) -> np.ndarray:
    embeds, _ = pipe.encode_prompt("a green hill", device="cpu", do_classifier_free_guidance=False)
    with torch.inference_mode():
        image = pipe(prompt_embeds=embeds, height=64, width=64, num_inference_steps=4, guidance_scale=0.0,
                     generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    assert np.isfinite(image).all()
    return image


def test_switching_scales_and_exact_base(pipe, loras):
    base = generate(pipe)
    manager = AdapterManager(pipe)
    manager.activate([("a", str(loras["a"]), 1.0)])
    image_a = generate(pipe)
    manager.activate([("b", str(loras["b"]), 1.0)])
    image_b = generate(pipe)
    manager.activate([("a", str(loras["a"]), 0.7), ("b", str(loras["b"]), 0.5)])
    image_ab = generate(pipe)
    manager.activate([("a", str(loras["a"]), 0.3)])
    image_a_weak = generate(pipe)
    images = [base, image_a, image_b, image_ab, image_a_weak]
    assert all(not np.array_equal(x, y) for i, x in enumerate(images) for y in images[i + 1:])
    assert manager.loads == 2

    for _ in range(2):  # back and forth: no disk loads, same pixels
        manager.activate([("b", str(loras["b"]), 1.0)])
        assert np.array_equal(generate(pipe), image_b)
        manager.activate([("a", str(loras["a"]), 1.0)])
        assert np.array_equal(generate(pipe), image_a)
    assert manager.loads == 2 and manager.active == [("a", 1.0)]

    manager.activate([])
    assert np.array_equal(generate(pipe), base)
    manager.activate([("a", str(loras["a"]), 1.0)])
    manager.unload_all()
    assert adapter_names(pipe.transformer) == [] and np.array_equal(generate(pipe), base)
    # no empty LoRA wrappers left behind: the plain layers are back
    assert type(pipe.transformer.layers[0].attention.to_q) is torch.nn.Linear


def test_ai_toolkit_file_and_lru(pipe, loras):
    base = generate(pipe)
    manager = AdapterManager(pipe, max_loaded=2)
    for name in ("a", "b", "c"):
        manager.activate([(name, str(loras[name]), 1.0)])
    assert manager.loads == 3 and manager.loaded == ["b", "c"]  # "a" was least recently used
    assert set(adapter_names(pipe.transformer)) == {"b", "c"}
    image_c = generate(pipe)
    assert not np.array_equal(image_c, base)
    manager.activate([("b", str(loras["b"]), 1.0)])
    manager.activate([("a", str(loras["a"]), 1.0)])  # evicts "c", the least recently used now
    assert manager.loads == 4 and manager.loaded == ["b", "a"]
    with pytest.raises(AdapterError, match="at most 2"):
        manager.activate([(n, str(loras[n]), 1.0) for n in ("a", "b", "c")])
    manager.activate([])
    assert np.array_equal(generate(pipe), base)


def images_before_and_after_replacing(manager, pipe, tiny_models_dir, source: Path, folder: Path):
    """Activate a copy of `source` as "mine", replace its file with another LoRA, activate again: both images."""
    import shutil

    shutil.copytree(source, folder)
    manager.activate([("mine", str(folder), 1.0)])
    first = generate(pipe)
    shutil.rmtree(folder)
    make_lora(tiny_models_dir, folder, seed=9)
    manager.activate([("mine", str(folder), 1.0)])
    return first, generate(pipe)


def test_reloads_a_replaced_file(pipe, loras, tiny_models_dir, tmp_path):
    manager = AdapterManager(pipe)
    first, second = images_before_and_after_replacing(manager, pipe, tiny_models_dir, loras["a"], tmp_path / "mine")
    assert manager.loads == 2 and not np.array_equal(second, first)


def test_errors_are_clear_and_leave_the_base_model(pipe, loras, tmp_path):
    base = generate(pipe)
    manager = AdapterManager(pipe)
    manager.activate([("a", str(loras["a"]), 1.0)])
    with pytest.raises(AdapterError, match="does not exist"):
        manager.activate([("gone", str(tmp_path / "gone.safetensors"), 1.0)])
    assert np.array_equal(generate(pipe), base)

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" * 4)
    with pytest.raises(AdapterError, match="'broken' could not be loaded"):
        manager.activate([("a", str(loras["a"]), 1.0), ("broken", str(corrupt), 1.0)])
    assert "broken" not in adapter_names(pipe.transformer) and manager.active == []
    assert np.array_equal(generate(pipe), base)

    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for name, path in ((TRAINING_ADAPTER, loras["a"]), ("has.dot", loras["a"]), ("fine", empty)):
        with pytest.raises(AdapterError):
            manager.activate([(name, str(path), 1.0)])
    with pytest.raises(AdapterError, match="twice"):
        manager.activate([("a", str(loras["a"]), 1.0), ("a", str(loras["a"]), 0.5)])
    assert manager.loads == 1


def test_never_enables_or_deletes_the_training_adapter(pipe, loras):
    base = generate(pipe)
    reference = AdapterManager(pipe)
    reference.activate([("a", str(loras["a"]), 1.0)])
    image_a = generate(pipe)
    reference.unload_all()

    pipe.load_lora_weights(str(loras["c"]), adapter_name=TRAINING_ADAPTER)
    manager = AdapterManager(pipe, max_loaded=1)
    manager.activate([("a", str(loras["a"]), 1.0)])
    assert np.array_equal(generate(pipe), image_a)  # the training adapter stays off
    manager.activate([("b", str(loras["b"]), 1.0)])  # evicts "a" only
    manager.activate([])
    assert np.array_equal(generate(pipe), base)
    manager.unload_all()
    assert adapter_names(pipe.transformer) == [TRAINING_ADAPTER]
    assert np.array_equal(generate(pipe), base)
