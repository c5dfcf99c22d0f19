"""Live previews: the picture forming while it renders, decoded cheaply from the latents.

Not a VAE decode per step (tens of milliseconds and a large activation at 1024², every preview): a fixed
linear map of the 16 latent channels to RGB, plus a bias, gives a preview at latent resolution (1/8 of the
image: 128x128 for 1024x1024). Z-Image uses the Flux VAE, so the map is the one ComfyUI uses for Flux
latents (`LATENT_RGB_FACTORS`), applied to the latents as the transformer sees them (scaled and shifted,
what the pipeline hands its step callback).

**What is projected: the denoised estimate x0, not the noisy latent.** After step 2 of 8 the latent is
still mostly noise (sigma ~0.9 with Z-Image's shifted schedule), so projecting it would show grey static.
The step callback only sees the latents after each step; with the flow-matching Euler step
``x[k+1] = x[k] + (s[k+1] - s[k]) * v`` (diffusers' FlowMatchEulerDiscreteScheduler, no stochastic
sampling, as Z-Image runs it), two consecutive latents give the model's velocity exactly, and
``x0 = x[k+1] - s[k+1] * v``. So the latents of the step before a preview are kept (one small copy), and
the first step never has a preview (there is no earlier latent to compare with).

**What it costs the generation.** On the GPU thread: a clone, a few elementwise kernels and a tiny
matmul on a 16xHxW tensor, and an asynchronous copy to pinned host memory ordered by a CUDA event; never
a synchronisation, so the transformer's next step is queued at once. The JPEG is made on another thread
(the worker's encoder thread) once that event has passed. All of it runs outside the compiled
transformer: nothing recompiles. The benchmark measures it: ``python -m gpu.bench --variant PREVIEWS=off``
puts the same run without previews next to the default one.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from zimage_protocol.constants import MAX_PREVIEW_BYTES
from zimage_protocol.settings import PreviewSettings

log = logging.getLogger(__name__)

# The Flux VAE's latent -> RGB factors (16 rows: one per latent channel; columns R, G, B) and bias, from
# ComfyUI's comfy/latent_formats.py, class Flux (github.com/comfyanonymous/ComfyUI, commit 040a3243). They
# map a latent as the diffusion model sees it ((vae_latent - 0.1159) * 0.3611) to RGB in [-1, 1].
LATENT_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
LATENT_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
LATENT_CHANNELS = len(LATENT_RGB_FACTORS)
JPEG_QUALITY = 80  # a 128x128 preview is 3-6 KB


@dataclass(frozen=True)
class PreviewFrame:
    """One preview on its way to the host: ``pixels`` (H, W, 3) uint8 on the CPU, valid once ``ready`` passed."""

    step: int   # the request's step (across its images), as Progress counts them
    total: int
    pixels: Any  # torch.Tensor
    ready: Any = None  # torch.cuda.Event of the copy; None on the CPU (already there)

    def encode(self) -> bytes:
        """The preview as a JPEG; blocks until the copy is done: call it off the GPU thread."""
        if self.ready is not None:
            self.ready.synchronize()
        return encode_preview(self.pixels.numpy())


def encode_preview(pixels: Any) -> bytes:
    """(H, W, 3) uint8 array -> JPEG bytes, at most MAX_PREVIEW_BYTES (a lower quality if it would not fit)."""
    from PIL import Image

    image = Image.fromarray(pixels, mode="RGB")
    for quality in (JPEG_QUALITY, 50, 20):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        if len(data) <= MAX_PREVIEW_BYTES:
            return data
    return b""  # a preview is never worth a frame this big; latent sizes of the bot's images never get here


@lru_cache(maxsize=8)
def _projection(device: str) -> tuple[Any, Any]:
    """The factors and bias on `device`, made once: a host-to-device copy per preview would wait for the GPU."""
    import torch

    return (torch.tensor(LATENT_RGB_FACTORS, dtype=torch.float32, device=device),
            torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32, device=device))


def latent_rgb(latent: Any) -> Any:
    """(16, h, w) latent -> (h, w, 3) uint8 RGB on the same device (ComfyUI's Latent2RGB mapping)."""
    import torch

    factors, bias = _projection(str(latent.device))
    rgb = torch.einsum("chw,cr->hwr", latent.float(), factors) + bias
    rgb = torch.nan_to_num((rgb + 1.0) / 2.0, nan=0.5)
    return rgb.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def denoised_estimate(before: Any, after: Any, sigma_before: Any, sigma_after: Any) -> Any:
    """x0 from the latents before and after one flow-matching Euler step (see the module docstring).

    The sigmas may be 0-d tensors on the GPU (the scheduler keeps them there): no value is read on the host."""
    velocity = (after - before) / (sigma_after - sigma_before)
    return after - sigma_after * velocity


class PreviewTap:
    """One image's previews, fed from the pipeline's step callback (ImageEngine.generate)."""

    def __init__(self, settings: PreviewSettings, steps: int, done_before: int, total: int,
                 emit: Callable[[PreviewFrame], None]):
        self.settings, self.steps = settings, steps
        self.done_before, self.total = done_before, total
        self.emit = emit
        self._before: Any = None  # the latents after the step before a preview
        self._failed = False

    def wants(self, step: int) -> bool:
        """A preview after `step` (1-based, of this image): every PREVIEW_EVERY steps, from the second (x0 needs the
        latents of the step before), never after the last (the image itself follows at once)."""
        return self.settings.enabled and step >= 2 and step % self.settings.every == 0 and step < self.steps

    def after_step(self, scheduler: Any, index: int, latents: Any) -> None:
        """Called with the callback's loop index and the latents after that step. Never raises: a preview that
        fails is logged and the image goes on without previews."""
        if self._failed:
            return
        try:
            self._after_step(scheduler, index, latents)
        except Exception:  # noqa: BLE001 - a preview is never worth a failed image
            log.exception("live preview failed; this image goes on without previews")
            self._failed, self._before = True, None

    def _after_step(self, scheduler: Any, index: int, latents: Any) -> None:
        step = index + 1
        if self.wants(step) and self._before is not None:
            sigmas = scheduler.sigmas
            x0 = denoised_estimate(self._before, latents[0], sigmas[index], sigmas[index + 1])
            self._before = None
            self.emit(to_host(latent_rgb(x0), self.done_before + step, self.total))
        if self.wants(step + 1):
            self._before = latents[0].detach().clone()


def to_host(pixels: Any, step: int, total: int) -> PreviewFrame:
    """Start the copy of `pixels` to the host without waiting for it (on CUDA: pinned memory and an event)."""
    import torch

    if pixels.device.type != "cuda":
        return PreviewFrame(step, total, pixels.cpu())
    host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return PreviewFrame(step, total, host, ready)
