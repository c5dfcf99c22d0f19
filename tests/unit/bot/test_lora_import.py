"""LoRA import (bot/lora_import.py): the three formats in the wild give the pixels of the original; bad files are refused."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_helpers import tiny_image

from bot import lora_import
from bot.lora_import import REAL_CONFIG, LoraImportError, SafeTensors, expected_layers, transformer_config
from bot.settings import Settings
from gpu.lora.peft import AdapterManager

HEADER = Settings.lora_max_header_bytes
LIMITS = {"max_bytes": Settings.lora_max_bytes, "max_header": HEADER, "max_rank": Settings.lora.max_rank}


def convert(source: Path, dest: Path, layers: dict, **limits) -> lora_import.ImportResult:
    """lora_import.convert with the default settings' limits, unless a test passes its own."""
    return lora_import.convert(source, dest, layers, **{**LIMITS, **limits})


def describe(path: Path) -> dict:
    return lora_import.describe(path, max_header=HEADER)


def export_comfyui(source: Path, dest: Path) -> int:
    return lora_import.export_comfyui(source, dest, max_header=HEADER)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3",
           *(f"{block}.adaLN_modulation.0" for block in ("layers.0", "layers.1", "noise_refiner.0"))]


@pytest.fixture(scope="module")
def layers(tiny_models_dir) -> dict:
    return expected_layers(transformer_config("tiny", tiny_models_dir.parent))


@pytest.fixture(scope="module")
def original(tiny_models_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A real peft adapter (rank 4, alpha 8) on the tiny transformer, saved the way the trainer saves."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = ZImageTransformer2DModel.from_pretrained(tiny_models_dir / "tiny-v1", subfolder="transformer")
    torch.manual_seed(7)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=TARGETS), "x")
    state = {key: value * 0.5 for key, value in get_peft_model_state_dict(transformer, adapter_name="x").items()}
    folder = tmp_path_factory.mktemp("original")
    ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=state,
                                     transformer_lora_adapter_metadata=transformer.peft_config["x"].to_dict())
    return folder / "pytorch_lora_weights.safetensors", state


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    from diffusers import ZImagePipeline

    pipeline = ZImagePipeline.from_pretrained(tiny_models_dir / "tiny-v1")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe) -> np.ndarray:
    return tiny_image(pipe, "a green hill")


def image_with(pipe, path: Path, scale: float = 1.0, counter=[0]) -> np.ndarray:  # noqa: B006 - a unique adapter name per call
    counter[0] += 1
    manager = AdapterManager(pipe)
    manager.activate([(f"t{counter[0]}", str(path), scale)])
    try:
        return generate(pipe)
    finally:
        manager.unload_all()


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    import safetensors.torch

    safetensors.torch.save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def module_of(key: str) -> str:
    return key.removeprefix("transformer.").rsplit(".lora_", 1)[0]


# Two files meaning the same LoRA give the same pixels only up to float rounding: diffusers loads a
# ComfyUI file through its own converter, peft applies a metadata alpha where another file has the
# scale baked in, and the rounding of those paths differs between torch/peft versions (1-ulp
# differences with torch 2.14.1 + peft 0.21.0). What our converter guarantees exactly is the file:
# the same lora_A and the same lora_B x alpha/r, checked bit for bit by assert_same_lora.
# test_the_pixel_tolerance_catches_a_mis_scaled_lora shows the tolerance still sees a 1 % scale error.
PIXEL_TOLERANCE = 1e-4


def assert_same_pixels(image: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(image, expected, rtol=0, atol=PIXEL_TOLERANCE)


def lora_weights(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (lora_A, lora_B x alpha / r): the update a LoRA file adds to each layer, read independently of
    bot/lora_import.py (peft metadata for diffusers keys, `.alpha` tensors for ComfyUI keys, else alpha = r)."""
    import safetensors

    with safetensors.safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        meta = json.loads((handle.metadata() or {}).get("lora_adapter_metadata") or "{}")
    meta = {key.removeprefix("transformer."): value for key, value in meta.items()}
    weights = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        stem = key.removesuffix(".lora_A.weight")
        rank = down.shape[0]
        alpha = float(tensors[stem + ".alpha"]) if stem + ".alpha" in tensors else float(meta.get("lora_alpha", rank))
        module = stem.removeprefix("transformer.").removeprefix("diffusion_model.")
        weights[module] = (down, tensors[stem + ".lora_B.weight"] * (alpha / rank))
    return weights


def assert_same_lora(path: Path, expected: Path) -> None:
    """Bit for bit: every scale here is a power of two, so baking it into lora_B rounds nothing."""
    mine, theirs = lora_weights(path), lora_weights(expected)
    assert mine.keys() == theirs.keys()
    for module, (down, up) in mine.items():
        assert torch.equal(down, theirs[module][0]) and torch.equal(up, theirs[module][1]), module


def test_expected_layers_match_the_transformers(tiny_models_dir, layers):
    from diffusers import ZImageTransformer2DModel

    def linears(model) -> dict:
        return {name: tuple(m.weight.shape) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    tiny = ZImageTransformer2DModel.from_pretrained(tiny_models_dir / "tiny-v1", subfolder="transformer")
    assert linears(tiny) == layers
    config = {**REAL_CONFIG, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}
    with torch.device("meta"):
        real = ZImageTransformer2DModel(**config)
    real_layers = expected_layers(REAL_CONFIG)
    assert linears(real) == real_layers
    assert real_layers["layers.29.feed_forward.w1"] == (10240, 3840) and "context_refiner.1.attention.to_out.0" in real_layers


def variants(original: tuple[Path, dict], root: Path) -> dict[str, Path]:
    """The original adapter in each format in the wild, all meaning the same weights."""
    _, state = original
    modules = sorted({module_of(key) for key in state})
    ab = {m: (state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"]) for m in modules}
    alpha = torch.tensor(8.0)
    files = {"diffusers": original[0]}
    files["ai-toolkit"] = save(root / "toolkit.safetensors", {
        **{f"diffusion_model.{m}.lora_A.weight": a for m, (a, _) in ab.items()},
        **{f"diffusion_model.{m}.lora_B.weight": b for m, (_, b) in ab.items()},
        **{f"diffusion_model.{m}.alpha": alpha for m in modules}})
    files["ai-toolkit-no-alpha"] = save(root / "toolkit_noalpha.safetensors", {  # alpha = rank: scale 2 baked into B
        **{f"diffusion_model.{m}.lora_A.weight": a for m, (a, _) in ab.items()},
        **{f"diffusion_model.{m}.lora_B.weight": b * 2 for m, (_, b) in ab.items()}})
    kohya = {}
    for m, (a, b) in ab.items():
        stem = "lora_unet_" + m.replace(".", "_")
        kohya.update({f"{stem}.lora_down.weight": a, f"{stem}.lora_up.weight": b, f"{stem}.alpha": alpha})
    files["kohya"] = save(root / "kohya.safetensors", kohya)
    return files


@pytest.mark.parametrize("fmt", ["diffusers", "ai-toolkit", "ai-toolkit-no-alpha", "kohya"])
def test_each_format_gives_the_original_pixels(fmt, original, layers, pipe, tmp_path):
    files = variants(original, tmp_path)
    converted = tmp_path / "out" / "pytorch_lora_weights.safetensors"
    result = convert(files[fmt], converted, layers)
    assert result.rank == 4 and result.layers == 4 * 7 + 3  # 4 blocks; context_refiner has no adaLN
    assert result.format == {"ai-toolkit": "comfyui", "ai-toolkit-no-alpha": "comfyui"}.get(fmt, fmt)
    assert describe(converted)["rank"] == 4
    assert_same_lora(converted, original[0])
    base, reference, mine = generate(pipe), image_with(pipe, original[0]), image_with(pipe, converted)
    assert not np.allclose(reference, base, atol=1e-3)
    assert_same_pixels(mine, reference)

    comfy = tmp_path / "comfy.safetensors"
    export_comfyui(converted, comfy)
    with SafeTensors(comfy, 1 << 20) as exported:
        assert all(key.startswith("diffusion_model.") for key in exported.tensors)
        assert sum(key.endswith(".alpha") for key in exported.tensors) == result.layers
    assert_same_lora(comfy, converted)
    assert_same_pixels(image_with(pipe, comfy), mine)
    again = tmp_path / "again.safetensors"
    convert(comfy, again, layers)
    assert_same_lora(again, converted)
    assert_same_pixels(image_with(pipe, again), mine)


def test_the_pixel_tolerance_catches_a_mis_scaled_lora(original, pipe):
    """The tolerance of the format tests is meaningful: the LoRA at a scale off by 1 % moves pixels by more
    than 10x it, and at half its scale (a converter ignoring alpha = 2 x rank) by more than 100x."""
    reference = image_with(pipe, original[0])
    for scale, factor in ((0.99, 10), (1.01, 10), (0.5, 100)):
        moved = float(np.abs(image_with(pipe, original[0], scale) - reference).max())
        assert moved > factor * PIXEL_TOLERANCE, (scale, moved)


def test_bf16_mixed_ranks_and_fused_qkv_match_diffusers_own_loading(original, layers, pipe, tmp_path):
    """Mixed ranks and alphas (padded, scale baked in), bf16 kept, and ComfyUI's fused qkv + out split exactly."""
    _, state = original
    kohya = {}
    for index, m in enumerate(sorted({module_of(key) for key in state})):
        a, b = state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"]
        rank = 2 if index % 3 == 0 else 4
        stem = "lora_unet_" + m.replace(".", "_")
        kohya.update({f"{stem}.lora_down.weight": a[:rank].bfloat16(), f"{stem}.lora_up.weight": b[:, :rank].bfloat16(),
                      f"{stem}.alpha": torch.tensor(float(1 + index % 4))})
    raw = save(tmp_path / "mixed.safetensors", kohya)
    converted = tmp_path / "mixed_converted.safetensors"
    assert convert(raw, converted, layers).rank == 4
    with SafeTensors(converted, 1 << 20) as st:
        assert {info.dtype for info in st.tensors.values()} == {"BF16"}
    np.testing.assert_allclose(image_with(pipe, converted), image_with(pipe, raw), atol=2e-3)

    fused, reference = {}, {}
    for block in ("layers.0", "layers.1", "noise_refiner.0", "context_refiner.0"):
        a = state[f"{block}.attention.to_q.lora_A.weight"]
        parts = [state[f"{block}.attention.{n}.lora_B.weight"] for n in ("to_q", "to_k", "to_v")]
        fused[f"diffusion_model.{block}.attention.qkv.lora_A.weight"] = a
        fused[f"diffusion_model.{block}.attention.qkv.lora_B.weight"] = torch.cat(parts)
        out = f"{block}.attention.to_out.0"
        out_a, out_b = state[f"{out}.lora_A.weight"], state[f"{out}.lora_B.weight"]
        fused[f"diffusion_model.{block}.attention.out.lora_A.weight"] = out_a
        fused[f"diffusion_model.{block}.attention.out.lora_B.weight"] = out_b
        for name, b in zip(("to_q", "to_k", "to_v"), parts, strict=True):
            reference[f"transformer.{block}.attention.{name}.lora_A.weight"] = a
            reference[f"transformer.{block}.attention.{name}.lora_B.weight"] = b
        reference[f"transformer.{out}.lora_A.weight"], reference[f"transformer.{out}.lora_B.weight"] = out_a, out_b
    save(tmp_path / "reference.safetensors", reference)
    convert(save(tmp_path / "fused.safetensors", fused), tmp_path / "fused_converted.safetensors", layers)
    assert_same_lora(tmp_path / "fused_converted.safetensors", tmp_path / "reference.safetensors")
    assert_same_pixels(image_with(pipe, tmp_path / "fused_converted.safetensors"),
                       image_with(pipe, tmp_path / "reference.safetensors"))


def header_file(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("case, fragment", [
    ("torch.save", "pickle"),
    ("pickle", "pickle"),
    ("shape", "`diffusion_model.layers.0.attention.to_q.lora_A.weight` has shape [4, 31]"),
    ("unknown layer", "`diffusion_model.layers.9.attention.to_q.lora_A.weight` does not match any layer"),
    ("not lora", "`layers.0.attention.to_q.weight` is not a LoRA weight"),
    ("lycoris", "LyCORIS"),
    ("missing up", "has no matching lora_B"),
    ("nan", "NaN"),
    ("alpha", "`diffusion_model.layers.0.attention.to_q.alpha` must be one positive number"),
    ("qkv twice", "repeats the layer `layers.0.attention.to_q`"),
    ("huge header", "header is 2,097,152 bytes; the limit is 1,048,576"),
    ("truncated", "truncated"),
    ("json", "not a safetensors file"),
    ("empty", "no LoRA weights"),
])
def test_malformed_files_are_refused_with_a_clear_message(case, fragment, original, layers, tmp_path):
    path = tmp_path / "bad.safetensors"
    a, b = torch.zeros(4, 32), torch.zeros(32, 4)
    q = "diffusion_model.layers.0.attention.to_q"
    if case == "torch.save":
        buffer = io.BytesIO()
        torch.save({"x": torch.zeros(2)}, buffer)
        path.write_bytes(buffer.getvalue())
    elif case == "pickle":
        path.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    elif case == "shape":
        save(path, {f"{q}.lora_A.weight": torch.zeros(4, 31), f"{q}.lora_B.weight": b})
    elif case == "unknown layer":
        save(path, {"diffusion_model.layers.9.attention.to_q.lora_A.weight": a,
                    "diffusion_model.layers.9.attention.to_q.lora_B.weight": b})
    elif case == "not lora":
        save(path, {"layers.0.attention.to_q.weight": a})
    elif case == "lycoris":
        save(path, {"lora_unet_layers_0_attention_to_q.hada_w1_a": a})
    elif case == "missing up":
        save(path, {f"{q}.lora_A.weight": a})
    elif case == "nan":
        save(path, {f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": torch.full((32, 4), float("nan"))})
    elif case == "alpha":
        save(path, {f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b, f"{q}.alpha": torch.tensor(0.0)})
    elif case == "qkv twice":
        save(path, {f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b, "diffusion_model.layers.0.attention.qkv.lora_A.weight": a,
                    "diffusion_model.layers.0.attention.qkv.lora_B.weight": torch.zeros(96, 4)})
    elif case == "huge header":
        path.write_bytes(struct.pack("<Q", 2 << 20) + b"{" * 64)
    elif case == "truncated":
        path.write_bytes(original[0].read_bytes()[:-100])
    elif case == "json":
        header_file(path, {})
        path.write_bytes(struct.pack("<Q", 4) + b"nope")
    elif case == "empty":
        header_file(path, {"__metadata__": {"format": "pt"}})
    with pytest.raises(LoraImportError) as error:
        convert(path, tmp_path / "out.safetensors", layers, max_header=1 << 20)
    assert fragment in str(error.value)
    assert list(tmp_path.glob("*out.safetensors*")) == []


def test_size_cap_and_overlapping_ranges(layers, tmp_path):
    path = save(tmp_path / "ok.safetensors", {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 32),
                                              "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(32, 4)})
    with pytest.raises(LoraImportError, match="larger than the 0 MiB limit"):
        convert(path, tmp_path / "out.safetensors", layers, max_bytes=100)
    mixed = save(tmp_path / "mixed.safetensors", {  # rank 1 everywhere but one rank-32 layer: padding would bloat it
        **{f"diffusion_model.{m}.lora_A.weight": torch.zeros(1, shape[1]) for m, shape in layers.items()},
        **{f"diffusion_model.{m}.lora_B.weight": torch.zeros(shape[0], 1) for m, shape in layers.items()},
        "diffusion_model.t_embedder.mlp.0.lora_A.weight": torch.zeros(32, 256),
        "diffusion_model.t_embedder.mlp.0.lora_B.weight": torch.zeros(1024, 32)})
    mixed_size = mixed.stat().st_size
    with pytest.raises(LoraImportError, match="very different ranks"):
        convert(mixed, tmp_path / "out.safetensors", layers, max_bytes=mixed_size * 2)
    overlapping = header_file(tmp_path / "overlap.safetensors", {
        "a.lora_A.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "a.lora_B.weight": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(LoraImportError, match="overlap"):
        convert(overlapping, tmp_path / "out.safetensors", layers)


def test_a_rank_above_the_limit_is_refused(layers, tmp_path):
    """LORA_MAX_RANK: the converted rank (the highest layer's; lower ones are padded to it) must fit."""
    q, k = "diffusion_model.layers.0.attention.to_q", "diffusion_model.layers.0.attention.to_k"
    path = save(tmp_path / "rank6.safetensors", {
        f"{q}.lora_A.weight": torch.ones(2, 32), f"{q}.lora_B.weight": torch.ones(32, 2),
        f"{k}.lora_A.weight": torch.ones(6, 32), f"{k}.lora_B.weight": torch.ones(32, 6)})
    with pytest.raises(LoraImportError) as error:
        convert(path, tmp_path / "out.safetensors", layers, max_rank=4)
    assert str(error.value) == "Its rank is 6; this bot accepts LoRAs up to rank 4 (the LORA_MAX_RANK setting raises the limit)."
    assert list(tmp_path.glob("*out.safetensors*")) == []
    assert convert(path, tmp_path / "out.safetensors", layers, max_rank=6).rank == 6


def test_a_header_length_that_looks_like_a_pickle_opcode_is_still_safetensors(original, layers, tmp_path):
    """A 640-byte header starts the file with 0x80 0x02, like pickle protocol 2: it must still import."""
    import safetensors.torch

    q = "diffusion_model.layers.0.attention.to_q"
    tensors = {f"{q}.lora_A.weight": torch.ones(4, 32), f"{q}.lora_B.weight": torch.ones(32, 4)}
    for pad in range(600):
        data = safetensors.torch.save(tensors, metadata={"pad": "x" * pad})
        if struct.unpack("<Q", data[:8])[0] == 640:
            break
    assert data[:2] == b"\x80\x02"
    path = tmp_path / "tricky.safetensors"
    path.write_bytes(data)
    assert convert(path, tmp_path / "out.safetensors", layers).layers == 1


def test_info_reads_the_sample_beside_a_trained_checkpoint(original, tmp_path):
    """/lora info shows rank, alpha and size from the header and the checkpoint's sample.png."""
    import shutil

    from bot.lora_library.files import read_details

    folder = tmp_path / "step-000030"
    folder.mkdir()
    shutil.copy(original[0], folder / "pytorch_lora_weights.safetensors")
    (folder / "sample.png").write_bytes(b"\x89PNG fake")
    details, sample = read_details(str(folder / "pytorch_lora_weights.safetensors"), HEADER)
    assert (details["rank"], details["alpha"], details["layers"]) == (4, 8, 31) and details["size"] > 0
    assert sample == b"\x89PNG fake"
    assert read_details(None, HEADER) == ({}, None)
