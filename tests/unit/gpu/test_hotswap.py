"""LoRA hot-swap slots (gpu/lora/hotswap.py) on the tiny pipeline: same pixels as peft's own adapters, no disk
reads when switching, a byte-bounded cache, clear errors, and — compiled — no recompilation on a switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_adapters import generate, images_before_and_after_replacing, make_lora

from gpu import accel
from gpu.lora.common import AdapterError
from gpu.lora.hotswap import HotswapAdapters
from gpu.lora.peft import AdapterManager


def fresh_pipe(tiny_models_dir):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipeline = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def loras(tiny_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hotswap-loras")
    return {
        "a": str(make_lora(tiny_models_dir, root / "a", seed=1)),
        "b": str(make_lora(tiny_models_dir, root / "b", seed=2, targets=("to_q", "to_v", "w2"))),
        "c": str(make_lora(tiny_models_dir, root / "c", seed=3, ai_toolkit=True)),
    }


@pytest.fixture(scope="module")
def reference(tiny_models_dir, loras):
    """Images made with peft's own adapters (AdapterManager) on an untouched pipeline."""
    pipe = fresh_pipe(tiny_models_dir)
    manager = AdapterManager(pipe)
    images = {"base": generate(pipe)}
    for key, request in REQUESTS.items():
        manager.activate([(name, loras[name], scale) for name, scale in request])
        images[key] = generate(pipe)
    return images


REQUESTS = {
    "a": [("a", 1.0)],
    "b": [("b", 1.0)],
    "c": [("c", 1.0)],
    "a weak": [("a", 0.3)],
    "a+b": [("a", 0.7), ("b", 0.5)],
    "b+a+c": [("b", 0.5), ("a", 0.7), ("c", 0.2)],
}


def test_same_pixels_as_peft_adapters_and_no_disk_reads(tiny_models_dir, loras, reference):
    pipe = fresh_pipe(tiny_models_dir)
    slots = HotswapAdapters(pipe, slots=3, rank=8)
    assert np.array_equal(generate(pipe), reference["base"])  # disabled slots: the base model, bit for bit
    for _ in range(2):  # the second round comes from the GPU cache
        for key, request in REQUESTS.items():
            slots.activate([(name, loras[name], scale) for name, scale in request])
            image = generate(pipe)
            # Padding rank 4 to 8 changes only the summation order: float32 rounding.
            np.testing.assert_allclose(image, reference[key], atol=2e-5, err_msg=key)
    assert slots.loads == 3 and slots.cached == ["b", "a", "c"]
    images = [reference[key] for key in REQUESTS]
    assert all(not np.array_equal(x, y) for i, x in enumerate(images) for y in images[i + 1:])
    slots.activate([])
    assert np.array_equal(generate(pipe), reference["base"]) and slots.active == []


def test_cache_is_bounded_in_bytes_and_replaced_files_are_read_again(tiny_models_dir, loras, tmp_path):
    pipe = fresh_pipe(tiny_models_dir)
    one = HotswapAdapters(pipe, slots=2, rank=4)
    one.activate([("a", loras["a"], 1.0)])
    size_a = one._cache["a"].nbytes
    one.cache_bytes = size_a + 1  # room for one LoRA: the least recently used goes
    one.activate([("b", loras["b"], 1.0)])
    assert one.cached == ["b"]
    one.activate([("a", loras["a"], 1.0), ("b", loras["b"], 1.0)])  # both requested: both stay for now
    assert set(one.cached) == {"a", "b"} and one.loads == 3

    first, second = images_before_and_after_replacing(one, pipe, tiny_models_dir, loras["a"], tmp_path / "mine")
    assert one.loads == 5 and not np.array_equal(second, first)


def test_errors_are_clear_and_leave_the_base_model(tiny_models_dir, loras, tmp_path):
    pipe = fresh_pipe(tiny_models_dir)
    base = generate(pipe)
    slots = HotswapAdapters(pipe, slots=2, rank=2)  # below the test LoRAs' rank 4
    with pytest.raises(AdapterError, match=r"rank 4 is above the worker's LoRA slot rank 2 \(LORA_MAX_RANK\)"):
        slots.activate([("a", loras["a"], 1.0)])
    with pytest.raises(AdapterError, match="at most 2 LoRAs"):
        slots.activate([("a", loras["a"], 1.0), ("b", loras["b"], 1.0), ("c", loras["c"], 1.0)])
    with pytest.raises(AdapterError, match="does not exist"):
        slots.activate([("gone", str(tmp_path / "gone.safetensors"), 1.0)])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(AdapterError, match="could not be loaded"):
        slots.activate([("junk", str(junk), 1.0)])
    assert slots.active == [] and np.array_equal(generate(pipe), base)


def generate_size(pipe, width: int, height: int) -> None:
    embeds, _ = pipe.encode_prompt("a red door", device="cpu", do_classifier_free_guidance=False)
    with torch.inference_mode():
        pipe(prompt_embeds=embeds, height=height, width=width, num_inference_steps=1, guidance_scale=0.0,
             generator=torch.Generator("cpu").manual_seed(0), output_type="np")


@pytest.mark.parametrize("manager", ["hotswap", "peft"])
def test_compiled_switching(tiny_models_dir, loras, manager):
    """Compiled (dynamo, eager backend: the guards are what decide recompiles), hot-swap switches LoRAs,
    stacks and scales without a single new graph once warmed up; peft's adapters recompile (the control)."""
    accel.raise_recompile_limit()
    pipe = fresh_pipe(tiny_models_dir)
    adapters = HotswapAdapters(pipe, slots=3, rank=4) if manager == "hotswap" else AdapterManager(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        for width, height in ((64, 48), (48, 64), (64, 64)):  # as the worker's warm-up: the shapes go dynamic
            generate_size(pipe, width, height)
        if manager == "hotswap":
            adapters.warm_up(lambda: generate_size(pipe, 64, 64))
        else:
            adapters.activate([("a", loras["a"], 1.0)])
            generate_size(pipe, 64, 64)
        graphs = accel.compiled_graph_count()
        for key in ("b", "a weak", "a+b", "c", "b+a+c", "a"):
            adapters.activate([(name, loras[name], scale) for name, scale in REQUESTS[key]])
            generate_size(pipe, 48, 64)
        adapters.activate([])
        generate_size(pipe, 64, 48)
        new_graphs = accel.compiled_graph_count() - graphs
    finally:
        torch._dynamo.reset()
    if manager == "hotswap":
        assert new_graphs == 0
    else:
        assert new_graphs > 0


def test_worker_lora_settings():
    from gpu.lora.common import LoraSettings
    from zimage_protocol.settings import SettingsError

    assert LoraSettings.from_env(compiled=True, environ={}) == LoraSettings(True, 3, 64, 2048 << 20)
    assert not LoraSettings.from_env(compiled=False, environ={}).hotswap
    chosen = LoraSettings.from_env(compiled=False, environ={"LORA_HOTSWAP": "on", "LORA_MAX_STACK": "2",
                                                          "LORA_MAX_RANK": "128", "LORA_CACHE_MB": "512"})
    assert chosen == LoraSettings(True, 2, 128, 512 << 20)
    assert not LoraSettings.from_env(compiled=True, environ={"LORA_HOTSWAP": "off"}).hotswap
    assert LoraSettings.from_env(compiled=True, environ={}, low_vram=True).cache_bytes == 256 << 20  # 16 GB profile
    assert LoraSettings.from_env(compiled=True, environ={"TRAIN_RANK": "128"}).max_rank == 128  # trained LoRAs fit
    for bad, name in (({"LORA_HOTSWAP": "yes"}, "LORA_HOTSWAP"), ({"LORA_MAX_STACK": "9"}, "LORA_MAX_STACK"),
                      ({"LORA_MAX_RANK": "0"}, "LORA_MAX_RANK"), ({"LORA_CACHE_MB": "lots"}, "LORA_CACHE_MB")):
        with pytest.raises(SettingsError, match=name):
            LoraSettings.from_env(compiled=True, environ=bad)


def test_lowered_limits_are_explained_before_the_worker_is_asked():
    """A stack picked before LORA_MAX_STACK / LORA_MAX_RANK were lowered gets a clear reply, not a worker error."""
    from types import SimpleNamespace

    from bot.errors import UserFacingError
    from bot.lora_library import check_stack
    from bot.settings import load_settings

    settings = load_settings({"DISCORD_TOKEN": "t", "LORA_MAX_STACK": "2", "LORA_MAX_RANK": "64"}, dotenv_path=None)
    small, big = SimpleNamespace(name="ink", rank=16), SimpleNamespace(name="oil", rank=128)
    check_stack([(small, 0.8), (small, 0.5)], settings)
    with pytest.raises(UserFacingError, match="allows 2 at once"):
        check_stack([(small, 0.8)] * 3, settings)
    with pytest.raises(UserFacingError, match="`oil` has rank 128; .* up to rank 64. .*`/lora clear oil`"):
        check_stack([(small, 0.8), (big, 0.8)], settings)


def test_rank_and_alpha_patterns_match_literally():
    from gpu.lora.hotswap import _pattern_value

    patterns = {"to_q": 8, "layers.1.attention.to_k": 2, "w.*": 99}
    assert _pattern_value(patterns, "layers.0.attention.to_q", 4) == 8
    assert _pattern_value(patterns, "layers.1.attention.to_k", 4) == 2
    assert _pattern_value(patterns, "layers.0.attention.to_k", 4) == 4
    assert _pattern_value(patterns, "layers.0.feed_forward.w1", 4) == 4  # never a regular expression
