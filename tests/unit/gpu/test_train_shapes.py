"""Training steps padded to a few fixed shapes (gpu/training/shapes.py), on the tiny model (CPU).

A real photo set (issue #17: ten sizes, both orientations, captions of 5-60 words) gave 36 step shapes
and trained without CUDA graphs. Padded, any dataset has at most ``len(CAPTION_LENGTHS)`` shapes, and
the padding is masked out: the same outputs, losses and gradients as the unpadded forward.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu import accel
from gpu.training.config import TrainConfig
from gpu.training.data import MAX_ASPECT, load_or_build, make_buckets, pick_bucket
from gpu.training.flow_matching import flow_matching_loss
from gpu.training.graphs import MAX_SHAPES, TrainingGraphs, distinct_shapes
from gpu.training.shapes import (
    CAPTION_LENGTHS,
    caption_length,
    image_tokens,
    padded_forward,
    step_shapes,
    unpadded_shapes,
)
from gpu.training.trainer import LoraTrainer

# Ten photo sizes, both orientations and squares (phone 4:3 and 16:9, DSLR 3:2, 4:5, screenshots).
PHOTO_SIZES = ((4032, 3024), (3024, 4032), (1920, 1080), (1080, 1920), (6000, 4000), (4000, 6000),
               (1080, 1350), (1350, 1080), (1024, 1024), (2400, 1080))
WORDS = ("a", "dog", "on", "the", "beach", "at", "sunset", "with", "soft", "golden", "light", "and", "waves",
         "portrait", "of", "woman", "in", "red", "coat", "city", "street", "rain", "reflections", "wide", "angle")
TEMPLATE_TOKENS = 9  # Qwen3's chat template around the caption (<|im_start|>user ... <|im_start|>assistant)


def captions(count: int, seed: int = 0) -> list[str]:
    """Captions of 5 to 60 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) for _ in range(count)]


@pytest.fixture(scope="module")
def transformer():
    from gpu.tiny import build_tiny_pipeline

    return build_tiny_pipeline().transformer


def test_padded_forward_matches_the_transformer(transformer):
    torch.manual_seed(0)
    timestep = torch.tensor([0.3])
    cases = [((10, 6), 37), ((8, 8), 5), ((6, 10), 64), ((4, 12), 100)]  # latent sizes x caption tokens
    latents = [torch.randn(16, 1, h, w) for (h, w), _ in cases]
    embeds = [torch.randn(tokens, transformer.config.cap_feat_dim) for _, tokens in cases]
    image = max(image_tokens(latent) for latent in latents)
    with torch.no_grad():
        for latent, embed in zip(latents, embeds, strict=True):
            reference = transformer([latent], timestep, [embed], return_dict=False)[0][0]
            for shape in ((image, caption_length(len(embed))), (image + 64, 512)):
                out = padded_forward(transformer, latent, timestep, embed, shape)[0]
                assert out.shape == reference.shape
                torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_padding_is_masked_not_just_appended(transformer, monkeypatch):
    """Without the mask the extra tokens would change the output: the equality above is not vacuous."""
    import gpu.training.shapes as shapes

    real = shapes._padded_sequence

    def unmasked(*args, **kwargs):
        feats, freqs, mask = real(*args, **kwargs)
        return feats, freqs, torch.ones_like(mask)

    torch.manual_seed(1)
    latent, embed, timestep = torch.randn(16, 1, 8, 8), torch.randn(20, transformer.config.cap_feat_dim), torch.tensor([0.5])
    with torch.no_grad():
        reference = transformer([latent], timestep, [embed], return_dict=False)[0][0]
        monkeypatch.setattr(shapes, "_padded_sequence", unmasked)
        out = padded_forward(transformer, latent, timestep, embed, (64, 128))[0]
    assert (out - reference).abs().max() > 1e-3


def test_padded_loss_and_gradients_equal_the_unpadded_ones(transformer):
    torch.manual_seed(2)
    clean = torch.randn(16, 6, 10)
    embed = torch.randn(45, transformer.config.cap_feat_dim)
    results = []
    for shape in (None, (64, 256)):
        transformer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(1234)  # the same noise and timestep for both
        loss = flow_matching_loss(transformer, None, clean, embed, generator, "sigmoid", torch.device("cpu"),
                                  torch.float32, shape)
        loss.backward()
        grads = {name: param.grad.clone() for name, param in transformer.named_parameters() if param.grad is not None}
        results.append((float(loss.detach()), grads))
    (loss, grads), (padded_loss, padded_grads) = results
    assert padded_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == padded_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    transformer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_a_realistic_mixed_set_has_few_shapes(resolution):
    """30 photos in ten sizes, captions of 5-60 words: 2 step shapes padded, more than MAX_SHAPES unpadded."""
    buckets = make_buckets(resolution)
    latents, embeds = [], []
    for index, caption in enumerate(captions(30)):
        width, height = pick_bucket(*PHOTO_SIZES[index % len(PHOTO_SIZES)], buckets)
        latents.append(torch.empty(16, height // 8, width // 8))
        tokens = TEMPLATE_TOKENS + math.ceil(len(caption.split()) * 4 / 3)  # ~4/3 tokens a word
        embeds.append(torch.empty(tokens, 8))
    shapes = step_shapes(latents, embeds)
    assert distinct_shapes(shapes) == 2  # (one image length) x (64, 128 caption tokens)
    assert {image for image, _ in shapes} == {math.ceil((resolution // 16) ** 2 / 32) * 32}
    assert distinct_shapes(unpadded_shapes(latents, embeds)) > MAX_SHAPES  # what turned CUDA graphs off


def test_any_dataset_is_bounded_by_the_caption_lengths():
    rng = random.Random(3)
    for resolution in (64, 256, 512, 768, 1024):
        buckets = make_buckets(resolution)
        latents = [torch.empty(16, h // 8, w // 8) for w, h in buckets for _ in range(3)]
        embeds = [torch.empty(rng.randint(1, 512), 4) for _ in latents]
        shapes = step_shapes(latents, embeds)
        assert distinct_shapes(shapes) <= len(CAPTION_LENGTHS)
        for (image, caption), latent, embed in zip(shapes, latents, embeds, strict=True):
            assert image >= image_tokens(latent) and caption >= embed.shape[0]
            assert image <= 1.07 * image_tokens(latent) + 32  # buckets hold about the same pixel count
    assert [caption_length(n) for n in (1, 32, 33, 64, 65, 129, 300, 512)] == [64, 64, 64, 64, 128, 256, 512, 512]
    assert caption_length(600) == 608  # beyond the ladder (a longer text encoder limit): its own multiple of 32


@pytest.mark.parametrize("resolution", [512, 1024])
def test_bucket_assignment_keeps_the_aspect_close(resolution):
    buckets = make_buckets(resolution)
    for width, height in [*PHOTO_SIZES, (1000, 1999), (1999, 1000), (1234, 987)]:
        bucket_width, bucket_height = pick_bucket(width, height, buckets)
        if max(width, height) / min(width, height) > MAX_ASPECT:  # wider than 2:1: the widest bucket, cropped
            assert max(bucket_width, bucket_height) / min(bucket_width, bucket_height) == max(
                max(w, h) / min(w, h) for w, h in buckets)
        else:
            error = abs(math.log((bucket_width / bucket_height) / (width / height)))
            assert error < math.log(1.07), (width, height, bucket_width, bucket_height)
        assert (bucket_width > bucket_height) == (width > height) or width == height
        assert 0.9 * resolution**2 <= bucket_width * bucket_height <= resolution**2


# -- the trainer on a mixed dataset -----------------------------------------------------------------------------

TINY_SIZES = ((128, 96), (96, 128), (160, 90), (90, 160), (120, 80), (80, 120), (80, 100), (100, 80), (96, 96),
              (150, 68))


def config(**changes) -> TrainConfig:
    values = dict(rank=4, alpha=4, resolution=64, steps=100, checkpoint_every=100, learning_rate=1e-3, sample_steps=2,
                  sample_prompt="a red square")
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory) -> Path:
    """30 PNGs in ten sizes, both orientations, captions of 5-60 words."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    (root / "images").mkdir()
    rng = np.random.default_rng(4)
    entries = []
    for index, caption in enumerate(captions(30, seed=5)):
        width, height = TINY_SIZES[index % len(TINY_SIZES)]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{index}.png")
        entries.append({"file": f"{index}.png", "caption": caption, "width": width, "height": height,
                        "source_name": f"{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def mixed_cache(tiny_models_dir, mixed_dataset, tmp_path_factory) -> Path:
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    output = tmp_path_factory.mktemp("mixed-cache")
    load_or_build(pipe, mixed_dataset, output / "cache.pt", 64)
    return output / "cache.pt"


def output_with_cache(tmp_path: Path, cache: Path, name: str) -> Path:
    import shutil

    output = tmp_path / name
    output.mkdir()
    shutil.copy(cache, output / "cache.pt")
    return output


def test_compiled_trainer_keeps_cuda_graphs_on_a_mixed_set_with_the_same_losses(
        tiny_models_dir, mixed_dataset, mixed_cache, tmp_path, monkeypatch):
    """Unpadded (eager) and padded (training's own compiled blocks) runs give the same losses; the padded run
    has at most len(CAPTION_LENGTHS) shapes where the unpadded one had more than MAX_SHAPES, and reads the
    cache the eager run wrote (the cache keeps unpadded embeddings: its format did not change)."""
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("gpu.training.data.encode_image", no_encoding)
    monkeypatch.setattr("gpu.training.data.encode_caption", no_encoding)

    plain_pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    plain = LoraTrainer(plain_pipe, mixed_dataset, output_with_cache(tmp_path, mixed_cache, "plain"), config(), "cpu",
                        torch.float32)
    plain.prepare()
    assert plain.step_shapes == unpadded_shapes(plain._latents, plain._embeds)  # eager: unpadded, as before
    assert distinct_shapes(plain.step_shapes) > MAX_SHAPES
    plain_losses = [plain.step() for _ in range(5)]
    plain.close()

    accel.raise_recompile_limit()
    pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        graphs = TrainingGraphs.for_transformer(pipe.transformer, {"fullgraph": True, "backend": "aot_eager"})
        trainer = LoraTrainer(pipe, mixed_dataset, output_with_cache(tmp_path, mixed_cache, "padded"), config(), "cpu",
                              torch.float32, graphs)
        trainer.prepare()
        assert trainer.uses_training_graphs
        assert 1 < distinct_shapes(trainer.step_shapes) <= len(CAPTION_LENGTHS)
        losses = [trainer.step() for _ in range(5)]
        trainer.close()
    finally:
        torch._dynamo.reset()
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)


def test_unmasked_attention_backend_trains_unpadded(tiny_models_dir, mixed_dataset, mixed_cache, tmp_path,
                                                    monkeypatch):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    monkeypatch.setattr("gpu.training.shapes.attention_backend", lambda transformer: "_flash_3")
    pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    try:
        graphs = TrainingGraphs.for_transformer(pipe.transformer, {"fullgraph": True, "backend": "aot_eager"})
        trainer = LoraTrainer(pipe, mixed_dataset, output_with_cache(tmp_path, mixed_cache, "flash"), config(), "cpu",
                              torch.float32, graphs)
        trainer.prepare()
        assert trainer.step_shapes == unpadded_shapes(trainer._latents, trainer._embeds)
        assert not trainer.uses_training_graphs  # too many shapes unpadded: no graphs, as before
        trainer.close()
    finally:
        torch._dynamo.reset()


def test_the_cache_is_rebuilt_when_a_caption_or_the_resolution_changes(tiny_models_dir, tmp_path, monkeypatch):
    from diffusers import ZImagePipeline
    from PIL import Image

    import gpu.training.data as data
    from gpu.tiny import ensure_tiny_model

    pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    entries = []
    for index, (width, height) in enumerate(TINY_SIZES[:3]):
        Image.new("RGB", (width, height), (index * 80, 40, 200)).save(root / "images" / f"{index}.png")
        entries.append({"file": f"{index}.png", "caption": f"photo {index}", "width": width, "height": height})
    (root / "manifest.json").write_text(json.dumps(entries))
    encoded: list[str] = []
    real_caption = data.encode_caption
    monkeypatch.setattr(data, "encode_caption", lambda pipe, caption: encoded.append(caption) or real_caption(pipe, caption))
    cache = tmp_path / "out" / "cache.pt"

    first = load_or_build(pipe, root, cache, 64)
    assert len(encoded) == 3
    again = load_or_build(pipe, root, cache, 64)
    assert len(encoded) == 3  # reused
    assert [s.embeds.shape for s in again] == [s.embeds.shape for s in first]  # unpadded, as encoded
    entries[1]["caption"] = "a new caption for photo 1"
    (root / "manifest.json").write_text(json.dumps(entries))
    changed = load_or_build(pipe, root, cache, 64)
    assert len(encoded) == 6 and changed[1].caption == "a new caption for photo 1"
    assert changed[1].embeds.shape[0] > first[1].embeds.shape[0]
    load_or_build(pipe, root, cache, 128)
    assert len(encoded) == 9  # another resolution: other buckets, encoded again
    monkeypatch.setattr(data, "CACHE_VERSION", data.CACHE_VERSION + 1)
    load_or_build(pipe, root, cache, 128)
    assert len(encoded) == 12  # a new cache format: encoded again
