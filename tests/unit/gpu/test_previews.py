"""Live previews (gpu/previews.py): the latent -> RGB projection, the x0 estimate, the JPEG, and the engine's hook."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from gpu.previews import (
    LATENT_CHANNELS,
    LATENT_RGB_BIAS,
    PreviewFrame,
    PreviewTap,
    denoised_estimate,
    encode_preview,
    latent_rgb,
)
from zimage_protocol.constants import MAX_PREVIEW_BYTES
from zimage_protocol.messages import GenerateParams
from zimage_protocol.settings import PreviewSettings, SettingsError


def test_the_projection_maps_16_channels_to_rgb_at_latent_resolution():
    latent = torch.randn(LATENT_CHANNELS, 12, 20, generator=torch.Generator().manual_seed(1))
    rgb = latent_rgb(latent)
    assert rgb.shape == (12, 20, 3) and rgb.dtype == torch.uint8
    assert torch.equal(rgb, latent_rgb(latent.clone()))  # deterministic
    # A zero latent is the bias alone, mapped from [-1, 1] to 0..255.
    flat = latent_rgb(torch.zeros(LATENT_CHANNELS, 2, 2))
    expected = [round((bias + 1) / 2 * 255) for bias in LATENT_RGB_BIAS]
    assert flat[0, 0].tolist() == expected
    # Out of range and NaN values are clamped, not wrapped around.
    wild = latent_rgb(torch.full((LATENT_CHANNELS, 1, 2), 1e6).index_fill_(2, torch.tensor([1]), float("nan")))
    assert wild.min() >= 0 and wild.max() <= 255


def test_x0_is_exact_for_a_flow_matching_euler_step():
    generator = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(16, 8, 8, generator=generator), torch.randn(16, 8, 8, generator=generator)
    velocity = noise - x0  # the flow-matching target: x_s = (1 - s) * x0 + s * noise
    s_before, s_after = torch.tensor(0.9), torch.tensor(0.75)
    before = (1 - s_before) * x0 + s_before * noise
    after = before + (s_after - s_before) * velocity  # FlowMatchEulerDiscreteScheduler.step
    torch.testing.assert_close(denoised_estimate(before, after, s_before, s_after), x0, rtol=1e-4, atol=1e-4)


def test_the_jpeg_is_small_bounded_and_deterministic():
    pixels = np.random.default_rng(3).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    data = encode_preview(pixels)
    assert data.startswith(b"\xff\xd8") and len(data) <= MAX_PREVIEW_BYTES
    assert data == encode_preview(pixels.copy())
    assert Image.open(io.BytesIO(data)).size == (128, 128)
    smooth = np.zeros((128, 128, 3), dtype=np.uint8)
    assert len(encode_preview(smooth)) < 4096
    # Never over the bound, whatever the input (noise this size does not fit at any quality: nothing is sent).
    assert len(encode_preview(np.random.default_rng(4).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))) \
        <= MAX_PREVIEW_BYTES


def test_a_frame_encodes_on_the_cpu_without_an_event():
    frame = PreviewFrame(step=2, total=8, pixels=latent_rgb(torch.zeros(LATENT_CHANNELS, 4, 6)))
    assert Image.open(io.BytesIO(frame.encode())).size == (6, 4)


@pytest.mark.parametrize("settings, steps, expected", [
    (PreviewSettings(), 8, [2, 4, 6]),  # the default: three previews in 8 steps, none after the last
    (PreviewSettings(every=1), 4, [2, 3]),  # never after the first step: x0 needs the latents before
    (PreviewSettings(every=3), 8, [3, 6]),
    (PreviewSettings(enabled=False), 8, []),
])
def test_which_steps_get_a_preview(settings, steps, expected):
    tap = PreviewTap(settings, steps, 0, steps, lambda frame: None)
    assert [step for step in range(1, steps + 1) if tap.wants(step)] == expected


def test_settings_are_checked():
    assert PreviewSettings.from_env({}) == PreviewSettings(enabled=True, every=2)
    assert PreviewSettings.from_env({"PREVIEWS": "OFF", "PREVIEW_EVERY": "3"}) == PreviewSettings(False, 3)
    with pytest.raises(SettingsError, match="PREVIEWS"):
        PreviewSettings.from_env({"PREVIEWS": "sometimes"})
    with pytest.raises(SettingsError, match="PREVIEW_EVERY"):
        PreviewSettings.from_env({"PREVIEW_EVERY": "0"})


def test_a_failing_preview_never_fails_the_image(caplog):
    class Broken:
        sigmas = None  # indexing it raises

    emitted: list = []
    tap = PreviewTap(PreviewSettings(every=1), 4, 0, 4, emitted.append)
    latents = torch.zeros(1, LATENT_CHANNELS, 2, 2)
    for index in range(4):
        tap.after_step(Broken(), index, latents)
    assert emitted == [] and "live preview failed" in caplog.text


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory):
    from gpu.engine import ImageEngine

    data = tmp_path_factory.mktemp("previews") / "data"
    data.mkdir()
    (data / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    engine = ImageEngine("tiny", data)
    engine.load()
    return engine


def test_the_engine_sends_previews_and_they_change_no_pixel(engine):
    params = GenerateParams(prompt="a lighthouse", width=128, height=96, steps=8, seeds=[5, 6])
    frames: list[PreviewFrame] = []
    steps: list[int] = []
    with_previews = engine.generate(params, on_step=lambda step, total: steps.append(step), on_preview=frames.append)
    without = engine.generate(params)
    assert steps == list(range(1, 17))
    assert [(frame.step, frame.total) for frame in frames] == [(2, 16), (4, 16), (6, 16), (10, 16), (12, 16), (14, 16)]
    for frame in frames:
        assert frame.pixels.shape == (96 // 8, 128 // 8, 3)
        assert Image.open(io.BytesIO(frame.encode())).size == (128 // 8, 96 // 8)
    for made, plain in zip(with_previews, without, strict=True):
        assert made.image.tobytes() == plain.image.tobytes()


def test_previews_off_in_the_engine_sends_none(engine):
    saved = engine.previews
    engine.previews = PreviewSettings(enabled=False)
    try:
        frames: list[PreviewFrame] = []
        engine.generate(GenerateParams(prompt="a lighthouse", width=64, height=64, steps=4, seeds=[1]),
                        on_preview=frames.append)
    finally:
        engine.previews = saved
    assert frames == []


def test_the_estimate_is_much_closer_to_the_final_latents_than_the_noisy_latents_are(engine):
    """Why x0 and not the latents after the step: early on the latents are mostly noise."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (latents after the step, x0 estimate), per step
    previous: list[torch.Tensor] = []

    def step_end(pipe, index, timestep, tensors):
        latents = tensors["latents"][0].clone()
        if previous:
            sigmas = pipe.scheduler.sigmas
            seen.append((latents, denoised_estimate(previous[-1], latents, sigmas[index], sigmas[index + 1])))
        previous.append(latents)
        return tensors

    embeds = engine._prompt_embeds("a lighthouse")
    with torch.inference_mode():
        final = engine.pipe(prompt_embeds=embeds, height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
                            generator=torch.Generator("cpu").manual_seed(3), output_type="latent",
                            callback_on_step_end=step_end).images[0]
    noisy, estimate = seen[0]  # after step 2 of 8
    assert (estimate - final).norm() < 0.5 * (noisy - final).norm()
