"""Generations that start from a picture: img2img (Vary, Upscale, an image prompt) and outpainting (Zoom Out, Pan).

diffusers' ``ZImageImg2ImgPipeline`` and ``ZImageInpaintPipeline`` are built once from the components of the
engine's warm pipeline (not ``from_pipe``, which casts them: ``Variants._derive``): they hold the same transformer,
VAE and scheduler objects, so no second copy of the weights exists and the LoRAs activated on the transformer (and
its compiled blocks) apply to them as well. The denoising calls the same transformer at the same latent sizes as a
text-to-image request (an upscale at four times the pixels: the compiled blocks' sequence length is dynamic after
the warm-up, gpu/accel.py), so no request of these kinds recompiles; :meth:`Variants.warm_up_from` pays the
remaining lazy parts (the VAE encoder, the 2x size), right after the worker is ready
(``ImageEngine.warm_up_variants``).

Outpainting keeps the canvas at the requested size (an aspect bucket, so no new shape): Zoom Out shrinks the
picture into the middle and draws the border; Pan shifts the view by :data:`PAN_FRACTION` of the canvas and draws
the strip that comes into view. A large output (an upscale to 2048x2048) decodes with the VAE tiled, which keeps
its activations within the 16 GB profile.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimage_protocol.errors import UserError
from zimage_protocol.messages import GenerateParams, SourceImage

if TYPE_CHECKING:
    from PIL import Image

    from .engine import GeneratedImage

log = logging.getLogger(__name__)

PAN_FRACTION = 0.25  # of the canvas's width (or height) that a pan brings into view
SEAM = 16  # px of the old picture redrawn along each new border, so the seam blends (one latent patch)
TILED_DECODE_PIXELS = 1536 * 1536  # outputs larger than this decode (and encode) the VAE in tiles
MAX_SOURCE_PIXELS = 4096 * 4096  # the bot sends at most 2048x2048; anything bigger is not decoded


class SourceRefused(UserError):
    """The source picture cannot be used (not a PNG/JPEG/WebP, too large): the request fails with this message."""


def load_source(path: Path) -> Image.Image:
    """The source picture as RGB. The bot made it (a result PNG, or an upload it decoded safely and re-encoded);
    the worker still refuses what it would not decode itself: other formats, more than MAX_SOURCE_PIXELS."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceRefused(f"the source picture cannot be read: {exc.strerror}") from None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as opened:
            if opened.width * opened.height > MAX_SOURCE_PIXELS:
                raise SourceRefused(f"the source picture is {opened.width}x{opened.height}, over the limit")
            return opened.convert("RGB")
    except SourceRefused:
        raise
    except Exception as exc:  # Pillow raises many types for bad files
        raise SourceRefused(f"the source picture cannot be decoded: {type(exc).__name__}") from None


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps an img2img call runs (diffusers' get_timesteps: the last ``steps * strength`` of them)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


def outpaint_canvas(picture: Image.Image, width: int, height: int, source: SourceImage) -> tuple[Image.Image, Image.Image]:
    """(the start image, the mask: white where the model draws) for a zoom-out or a pan on a width x height canvas."""
    from PIL import Image, ImageDraw

    fill = picture.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))  # the picture's mean colour
    canvas = Image.new("RGB", (width, height), fill)  # type: ignore[arg-type]
    mask = Image.new("L", (width, height), 255)
    if source.direction:
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
        dx = _snap(width * PAN_FRACTION)
        dy = _snap(height * PAN_FRACTION)
        # The view moves that way: the picture moves the other way, and a strip of new canvas opens.
        offset = {"left": (dx, 0), "right": (-dx, 0), "up": (0, dy), "down": (0, -dy)}[source.direction]
        canvas.paste(picture, offset)
        kept = (max(offset[0], 0), max(offset[1], 0), width + min(offset[0], 0), height + min(offset[1], 0))
    else:
        inner = (_snap(width / source.zoom), _snap(height / source.zoom))
        left, top = _snap((width - inner[0]) / 2), _snap((height - inner[1]) / 2)
        canvas.paste(picture.resize(inner, Image.Resampling.LANCZOS), (left, top))
        kept = (left, top, left + inner[0], top + inner[1])
    # Keep the old picture except a SEAM along each edge that borders new canvas.
    box = (kept[0] + (SEAM if kept[0] > 0 else 0), kept[1] + (SEAM if kept[1] > 0 else 0),
           kept[2] - (SEAM if kept[2] < width else 0), kept[3] - (SEAM if kept[3] < height else 0))
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=0)
    return canvas, mask


def _snap(value: float) -> int:
    """To the latent grid (16 px: the VAE's 8 times the transformer's 2x2 patches), at least one cell."""
    return max(16, int(round(value / 16)) * 16)


@contextlib.contextmanager
def tiled_vae(vae: Any, on: bool) -> Iterator[None]:
    """The VAE encodes and decodes in tiles for this call only (the pipelines share the VAE with text-to-image)."""
    if not on or not hasattr(vae, "enable_tiling"):
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()


class Variants:
    """The img2img and inpaint pipelines of one engine's warm pipeline, built on first use."""

    def __init__(self, pipe: Any):
        self.base = pipe
        self._img2img: Any = None
        self._inpaint: Any = None

    def img2img(self) -> Any:
        if self._img2img is None:
            from diffusers import ZImageImg2ImgPipeline

            self._img2img = self._derive(ZImageImg2ImgPipeline)
        return self._img2img

    def inpaint(self) -> Any:
        if self._inpaint is None:
            from diffusers import ZImageInpaintPipeline

            self._inpaint = self._derive(ZImageInpaintPipeline)
        return self._inpaint

    def _derive(self, cls: Any) -> Any:
        # The same module objects: no weights are copied, moved or cast. Not `cls.from_pipe(base)`: diffusers 0.42's
        # from_pipe ends with `.to(dtype)`, float32 unless told, which casts the shared modules in place (the warm
        # bf16 transformer, text encoder and VAE became float32 at the first Vary click, and the compiled warm-up's
        # 2x upscale failed on a float32 VAE fed a bf16 picture); no dtype is right for all of them either (a
        # quantized transformer keeps float32 scales).
        accepted = inspect.signature(cls.__init__).parameters
        pipe = cls(**{name: module for name, module in self.base.components.items() if name in accepted})
        pipe.set_progress_bar_config(disable=True)
        if "postprocess" in self.base.image_processor.__dict__:  # gpu/accel.py put postprocessing on the GPU
            import functools

            from .accel import gpu_postprocess

            pipe.image_processor.postprocess = functools.partial(gpu_postprocess, pipe.image_processor)
        return pipe

    def generate(self, params: GenerateParams, embeds: list, on_step: Callable[[int, int], None],
                 should_stop: Callable[[], bool], on_image: Callable[[GeneratedImage], None]) -> list[GeneratedImage]:
        """One image per seed from ``params.source``; progress counts the steps these calls actually run."""
        import torch
        from PIL import Image

        from .engine import GeneratedImage, GenerationCancelled

        source = params.source
        if source is None:
            raise ValueError("a generation from a picture needs params.source")
        picture = load_source(Path(source.path))
        if source.outpaints:
            pipe = self.inpaint()
            start, mask = outpaint_canvas(picture, params.width, params.height, source)
            inputs: dict[str, Any] = {"image": start, "mask_image": mask}
        else:
            pipe = self.img2img()
            if picture.size != (params.width, params.height):
                picture = picture.resize((params.width, params.height), Image.Resampling.LANCZOS)
            inputs = {"image": picture}
        per_image = steps_run(params.steps, source.strength)
        total = per_image * len(params.seeds)
        results = []
        for index, seed in enumerate(params.seeds):
            done_before = index * per_image

            def step_end(pipe: Any, step: int, timestep: Any, tensors: dict, done_before: int = done_before) -> dict:
                if should_stop():
                    raise GenerationCancelled()
                on_step(done_before + step + 1, total)
                return tensors

            generator = torch.Generator("cpu").manual_seed(seed)  # same seed, same pixels on every device
            with torch.inference_mode(), tiled_vae(pipe.vae, params.width * params.height > TILED_DECODE_PIXELS):
                image = pipe(
                    prompt_embeds=embeds, height=params.height, width=params.width, strength=source.strength,
                    num_inference_steps=params.steps, guidance_scale=params.guidance_scale, generator=generator,
                    callback_on_step_end=step_end, **inputs,
                ).images[0]
            result = GeneratedImage(index=index, seed=seed, image=image)
            on_image(result)
            results.append(result)
        return results

    def warm_up_from(self, engine: Any, width: int = 1024, height: int = 1024) -> None:
        """One short run of each new path (img2img at 2x: the tiled VAE and the 4x sequence; outpainting: the
        inpaint pipeline) so a compiled worker meets no lazy first call with a member waiting."""
        import tempfile

        from .png import encode_png

        [made] = engine.generate(GenerateParams(prompt="warm-up", width=width, height=height, steps=1, seeds=[0]))
        with tempfile.TemporaryDirectory() as folder:
            source_png = Path(folder) / "source.png"
            source_png.write_bytes(encode_png(made.image, {}))
            for source, size in (
                (SourceImage(path=str(source_png), strength=0.5, mode="upscale"), (width * 2, height * 2)),
                (SourceImage(path=str(source_png), strength=1.0, mode="zoom", zoom=2.0), (width, height)),
            ):
                engine.generate(GenerateParams(prompt="warm-up", width=size[0], height=size[1], steps=2, seeds=[0],
                                               source=source))
