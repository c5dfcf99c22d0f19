"""Seed variance: a little noise on the prompt embedding, drawn from the image's seed, so seeds differ more.

Z-Image-Turbo is distilled to a few steps and follows its prompt closely: different seeds of one prompt
often give nearly the same composition, so Reroll and Variations look alike. Adding Gaussian noise to the
prompt embedding moves each image's conditioning a little, and a different seed moves it elsewhere.

Per image: ``noise ~ N(0, 1)`` from a CPU generator seeded by the image's seed (salted, so it is not the
latent noise's stream), scaled by ``strength × std(embedding)``, added to every real token of the prompt's
embedding (the pipeline's embeddings are unpadded: padding never gets any). Hence:

- the same prompt, seed and strength give the same embedding, hence the same pixels, on every device;
- two seeds' embeddings differ by about ``strength × std × √2`` per element (each is ``strength × std`` away
  from the clean one);
- strength 0 leaves the embedding untouched: the caller skips this module, today's images bit for bit.

The strength is a server's setting (``/mod variety``), sent with each job (GenerateParams.seed_variance).
"""

from __future__ import annotations

from typing import Any

SEED_SALT = 0x5EED_7A21  # decorrelates this stream from the latent noise drawn with the same seed
MAX_STRENGTH = 1.0


def noise_seed(seed: int) -> int:
    return (seed ^ SEED_SALT) & 0xFFFF_FFFF_FFFF_FFFF


def perturb(embeds: list[Any], seed: int, strength: float) -> list[Any]:
    """``embeds`` (the pipeline's list of [tokens, hidden] tensors) with this seed's noise; new tensors,
    the cached ones are left as they are. ``strength`` 0 returns ``embeds`` itself."""
    import torch

    if strength == 0:
        return embeds
    generator = torch.Generator("cpu").manual_seed(noise_seed(seed))
    noisy = []
    for embed in embeds:
        # Drawn in float32 on the CPU and then moved: the same numbers on every device and dtype.
        noise = torch.randn(tuple(embed.shape), generator=generator, dtype=torch.float32)
        scale = strength * float(embed.float().std())
        noisy.append((embed.float() + noise.to(embed.device) * scale).to(embed.dtype))
    return noisy
