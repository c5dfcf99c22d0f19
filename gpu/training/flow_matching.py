"""The training objective and its reproducible randomness, as pure functions of (seed, step).

Flow matching as the pipeline samples it: ``x_t = (1 - s) x0 + s eps``, the transformer sees time
``1 - s`` and predicts ``x0 - eps`` (the pipeline negates the output before the Euler step
``x += (s_next - s) * (eps - x0)``). The image of step k and its noise derive from (seed, k) alone,
never from a running generator, so a resumed run repeats exactly what an uninterrupted run would
have done. Kept apart from gpu/training/trainer.py, which owns the adapters, the optimizer and the loop.
"""

from __future__ import annotations

import contextlib
import hashlib

__all__ = ["autocast", "derived_seed", "flow_matching_loss", "sample_index", "sample_sigma"]


def derived_seed(seed: int, kind: str, index: int) -> int:
    """A 63-bit seed for (kind, index) of a run, independent of every other (kind, index)."""
    digest = hashlib.sha256(f"{seed}:{kind}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_index(seed: int, step: int, count: int) -> int:
    """The image of `step`: each epoch visits all `count` images in an order drawn from (seed, epoch)."""
    import torch

    epoch, position = divmod(step, count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(derived_seed(seed, "order", epoch)))
    return int(order[position])


def sample_sigma(mode: str, generator, pipe) -> float:
    """The noise level s of one step (mode: a ``TIMESTEP_SAMPLING``); "shift" reads the pipeline's scheduler."""
    import torch

    if mode == "sigmoid":
        sigma = float(torch.sigmoid(torch.randn(1, generator=generator)))
    else:
        sigma = float(torch.rand(1, generator=generator))
        if mode == "shift":
            shift = float(pipe.scheduler.config.get("shift", 3.0))
            sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return min(max(sigma, 1e-3), 1.0)


def flow_matching_loss(transformer, pipe, clean, embeds, generator, mode: str, device, dtype,
                       shape: tuple[int, int] | None = None):
    """MSE between the transformer's prediction on a noised `clean` latent and ``clean - noise`` (batch 1).

    With `shape` (image tokens, caption tokens) the step runs padded to it (gpu/training/shapes.py): the same
    loss up to float rounding, in one of a few fixed shapes."""
    import torch
    import torch.nn.functional as F

    from .shapes import padded_forward

    noise = torch.randn(clean.shape, generator=generator)
    if torch.device(device).type == "cuda":
        # Pinned and non-blocking: a pageable copy would wait for the GPU's queue (gpu/training/pending.py).
        noise = noise.pin_memory()
    noise = noise.to(device, clean.dtype, non_blocking=True)
    sigma = sample_sigma(mode, generator, pipe)
    noisy = (1.0 - sigma) * clean + sigma * noise
    target = clean - noise
    timestep = torch.full((1,), 1.0 - sigma, device=device, dtype=torch.float32)  # filled there: no copy
    with autocast(device, dtype):
        if shape is None:
            out = transformer([noisy.to(dtype).unsqueeze(1)], timestep, [embeds], return_dict=False)[0]
        else:
            out = padded_forward(transformer, noisy.to(dtype).unsqueeze(1), timestep, embeds, shape)
    return F.mse_loss(out[0].float().squeeze(1), target.float())


def autocast(device, dtype):
    """bf16/fp16 autocast on CUDA (the trainee's weights are fp32 masters); elsewhere a no-op context."""
    import torch

    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
