"""gpu/rope.py: the rotary embedding on (cos, sin) pairs gives what diffusers' complex one gives."""

from __future__ import annotations

import pytest
import torch

from gpu.rope import RealRopeAttnProcessor, RealRopeEmbedder, rotate, set_real_rope


def _complex_rotation(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb (ZSingleStreamAttnProcessor, 0.42)."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs_cis.unsqueeze(2)
    return torch.view_as_real(rotated).flatten(3).type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_real_rotation_is_the_complex_one(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, 16, generator=generator).to(dtype)
    angles = torch.randn(2, 9, 8, generator=generator)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    ours = rotate(x, torch.view_as_real(freqs_cis))
    theirs = _complex_rotation(x, freqs_cis)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=1e-6)


def test_the_transformer_gives_the_same_output_with_either_rope_and_switches_back():
    from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

    from gpu.tiny import build_tiny_pipeline

    transformer = build_tiny_pipeline().transformer.eval()
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(16, 1, 8, 8, generator=generator)
    caption = torch.randn(11, transformer.config.cap_feat_dim, generator=generator)
    timestep = torch.tensor([0.5])

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return transformer([latent], timestep, [caption], return_dict=False)[0][0]

    stock = forward()
    attention = [module for module in transformer.modules() if isinstance(getattr(module, "processor", None),
                                                                          ZSingleStreamAttnProcessor)]
    assert set_real_rope(transformer, True) == len(attention) > 0
    assert all(isinstance(module.processor, RealRopeAttnProcessor) for module in attention)
    assert isinstance(transformer.rope_embedder, RealRopeEmbedder)
    torch.testing.assert_close(forward(), stock, rtol=1e-5, atol=1e-6)
    assert set_real_rope(transformer, True) == 0  # already on
    assert set_real_rope(transformer, False) == len(attention)
    assert not isinstance(transformer.rope_embedder, RealRopeEmbedder)
    assert all(type(module.processor) is ZSingleStreamAttnProcessor for module in attention)
    assert torch.equal(forward(), stock)


def test_the_setting_is_checked():
    from gpu.accel import AccelConfigError, AccelSettings

    assert AccelSettings.from_env("cpu", "/tmp", {}).real_rope is True
    assert AccelSettings.from_env("cpu", "/tmp", {"ZIMAGE_ROPE": "complex"}).real_rope is False
    with pytest.raises(AccelConfigError, match="ZIMAGE_ROPE"):
        AccelSettings.from_env("cpu", "/tmp", {"ZIMAGE_ROPE": "imaginary"})
