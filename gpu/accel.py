"""The worker's speed path: regional compile, attention backend, fp8, persistent compile cache.

``ImageEngine.load()`` calls :func:`apply` on the freshly loaded pipeline and
``ImageEngine.warm_up()`` calls :func:`warm_up_buckets` when the transformer was compiled, so
the code measured by ``python -m gpu.bench`` is the code the worker runs.

Settings (environment variables; all optional):

``ZIMAGE_COMPILE`` = ``auto`` | ``on`` | ``off`` (default ``auto``)
    ``auto`` compiles on CUDA and not on the CPU. ``on`` runs
    ``transformer.compile_repeated_blocks(fullgraph=True)``: torch.compile of the one repeated
    ``ZImageTransformerBlock`` (regional compile; the 34 blocks share one compiled graph). The
    first start compiles (tens of seconds); with compile on, the warm-up generates one image in
    every aspect bucket of the bot (``WARM_UP_SIZES``), one step each, with two prompt
    lengths, so the sequence length becomes a dynamic dimension before any user arrives and no
    request pays for a recompile.

``ZIMAGE_COMPILE_VAE`` = ``on`` | ``off`` (default ``off``)
    Also torch.compile the VAE decoder (``dynamic=True``: one graph for every image size). Its
    eager GroupNorms are slow on large images (one thread block per group); compiled, they
    become fused inductor reductions. Measured on an H100 (docs/BENCHMARKS.md): 34 ms less per
    1024x1024 image (0.888 -> 0.854 s), but the first start compiles about a minute longer and
    a restart with a warm cache takes about 20 s longer, hence off by default.

``ZIMAGE_COMPILE_CACHE`` = a folder (default ``DATA_DIR/compile-cache``)
    Where inductor and triton keep compiled kernels, FX graphs and autotuning results between
    runs (the worker points ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` at
    ``inductor/`` and ``triton/`` inside it; set this variable, not those). A restart with a
    populated cache skips most of the compile. Safe to delete at any time; it is rebuilt on the
    next start.

``ZIMAGE_ATTENTION`` = an attention backend name of diffusers (default: unset)
    Passed to ``transformer.set_attention_backend``, e.g. ``native`` (torch SDPA, diffusers'
    default), ``_native_cudnn`` (cuDNN attention via SDPA), ``_native_flash``, ``_flash_3`` (needs
    the FA3 package). Unset or empty leaves diffusers' default. An unknown name, or a backend
    whose package is missing, is logged as a warning and the default is kept.

``ZIMAGE_QUANT`` = ``none`` | ``fp8`` | ``int8`` (default ``none``)
    ``fp8`` quantizes the transformer blocks' linear layers (attention q/k/v/out and the
    feed-forward w1/w2/w3) to float8 with dynamic per-row scales (torchao
    ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``). Needs the ``torchao``
    package (``pip install torchao``, or the project's ``fp8`` extra) and a CUDA GPU of compute
    capability 8.9 or newer (Ada, Hopper, Blackwell); the worker refuses to start with one clear
    message otherwise. Slightly changes pixels; stores those weights in 8 bits instead of 16.
    ``int8``: int8 weight-only on the same linears (any CUDA GPU, and the CPU; saves memory, not time).
    Both are quantized block by block while the transformer moves to the GPU (gpu/quantize.py), so
    the bf16 transformer is never resident whole.

``ZIMAGE_VRAM`` = ``auto`` | ``full`` | ``16gb`` | ``12gb`` (default ``auto``)
    ``auto`` (or unset, with ZIMAGE_QUANT unset too): the worker picks the profile from the card's
    memory and compute capability (gpu/profiles.py) and logs the pick; on the CPU it means ``full``.
    ``16gb`` keeps the worker under 16 GiB of GPU memory (gpu/quantize.py): the transformer
    blocks in fp8 (int8 weight-only below compute capability 8.9), the text encoder int8
    weight-only, both quantized block by block while they move to the GPU, so the bf16 model is
    never resident. ``12gb``: the same transformer, the text encoder left on the CPU (prompts are
    encoded there; generation only, /train is refused). Both need torchao and CUDA. LoRA training
    on a quantized base: gpu/training/quantized.py.

``ZIMAGE_TRAIN_GRAPHS`` = ``auto`` | ``off`` (default ``auto``)
    LoRA training steps replay CUDA graphs of the compiled blocks (gpu/training/graphs.py): a 512 px
    step is host-bound; measured on an H100, 0.188 -> 0.094 s per step. ``auto`` uses them whenever
    the transformer is compiled on CUDA; each new image/caption shape costs ~10-14 s to record once,
    and generation warms up again after the run (freeing the graphs discards every compiled graph).

Always on CUDA (no setting): the pipeline's PNG-bound output is converted to 8-bit on the GPU
before it is copied to the host (the same arithmetic as diffusers' ``numpy_to_pil``, so the
same pixels), instead of copying the bf16 image and scaling it with numpy on the CPU.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import quantize

log = logging.getLogger(__name__)

# The bot's aspect buckets (bot/sizes.py), width x height. Every one is warmed up when compiled.
# A non-square size comes first: dynamo gives equal sizes one symbol ("duck sizing"), so a square
# first image would compile a VAE graph that only fits squares, and the next size a second one.
WARM_UP_SIZES: tuple[tuple[int, int], ...] = (
    (1152, 864),
    (1024, 1024),
    (864, 1152),
    (1248, 832),
    (832, 1248),
    (1344, 768),
    (768, 1344),
)
# One step per bucket: a compiled graph does not depend on the step count (the benchmark counts the
# graphs compiled during its timed 8-step runs: none), and 8 steps in each of 7 buckets cost ~5 s of start.
WARM_UP_STEPS = 1
# Two prompts whose token counts land in different multiples of 32 (the pipeline pads captions to
# multiples of 32): seeing two caption lengths makes dynamo compile the caption dimension dynamic.
WARM_UP_PROMPTS = (
    "warm-up",
    "a warm-up prompt long enough to cross the next caption bucket: a lighthouse on a rocky coast at "
    "dusk, waves breaking on the rocks, gulls in the wind, warm light from the lamp, film grain, 35mm",
)
# Dynamo keeps at most this many compiled variants per code object (torch's default is 8). Each
# (block kind, static/dynamic) pair is one; raising it keeps a bucket from falling back to eager.
RECOMPILE_LIMIT = 64

COMPILE_CHOICES = ("auto", "on", "off")
DEFAULT_TRAIN_ACTIVATION_BUDGET = 0.8  # ZIMAGE_TRAIN_ACTIVATION_BUDGET (train_activation_budget)
VRAM_CHOICES = ("full", "16gb", "12gb")
LOW_VRAM_CHOICES = ("16gb", "12gb")  # placed block by block, quantization chosen by the card


class AccelConfigError(ValueError):
    """A speed setting cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class AccelSettings:
    compile: bool
    attention: str | None
    quant: str
    cache_dir: Path
    compile_vae: bool = False
    vram: str = "full"
    train_graphs: bool = False
    train_activation_budget: float = DEFAULT_TRAIN_ACTIVATION_BUDGET

    @classmethod
    def from_env(cls, device: str, data_dir: Path, environ: Mapping[str, str] | None = None) -> AccelSettings:
        env = os.environ if environ is None else environ
        compile_mode = env.get("ZIMAGE_COMPILE", "auto").strip().lower() or "auto"
        if compile_mode not in COMPILE_CHOICES:
            raise AccelConfigError(f"ZIMAGE_COMPILE must be one of {'|'.join(COMPILE_CHOICES)}, not {compile_mode!r}")
        quant = env.get("ZIMAGE_QUANT", "none").strip().lower() or "none"
        if quant not in quantize.QUANT_CHOICES:
            raise AccelConfigError(f"ZIMAGE_QUANT must be one of {'|'.join(quantize.QUANT_CHOICES)}, not {quant!r}")
        vram = env.get("ZIMAGE_VRAM", "full").strip().lower() or "full"
        if vram == "auto":  # the engine resolves auto on a GPU (gpu/profiles.py); what is left means full
            vram = "full"
        if vram not in VRAM_CHOICES:
            raise AccelConfigError(f"ZIMAGE_VRAM must be one of auto|{'|'.join(VRAM_CHOICES)}, not {vram!r}")
        if vram in LOW_VRAM_CHOICES and (device != "cuda" or quant != "none"):
            raise AccelConfigError(f"ZIMAGE_VRAM={vram} needs a CUDA GPU and chooses its own quantization: "
                                   "leave ZIMAGE_QUANT unset")
        attention = env.get("ZIMAGE_ATTENTION", "").strip() or None
        cache = env.get("ZIMAGE_COMPILE_CACHE", "").strip()
        compile_vae = env.get("ZIMAGE_COMPILE_VAE", "off").strip().lower() or "off"
        if compile_vae not in ("on", "off"):
            raise AccelConfigError(f"ZIMAGE_COMPILE_VAE must be on|off, not {compile_vae!r}")
        train_graphs = env.get("ZIMAGE_TRAIN_GRAPHS", "auto").strip().lower() or "auto"
        if train_graphs not in ("auto", "off"):
            raise AccelConfigError(f"ZIMAGE_TRAIN_GRAPHS must be auto|off, not {train_graphs!r}")
        compiled = compile_mode == "on" or (compile_mode == "auto" and device == "cuda")
        return cls(
            compile=compiled,
            attention=attention,
            quant=quant,
            cache_dir=Path(cache) if cache else Path(data_dir) / "compile-cache",
            compile_vae=compile_vae == "on",
            vram=vram,
            train_graphs=train_graphs == "auto" and compiled and device == "cuda",
            train_activation_budget=train_activation_budget(env),
        )


def train_activation_budget(environ: Mapping[str, str] | None = None) -> float:
    """``ZIMAGE_TRAIN_ACTIVATION_BUDGET`` (0 < b <= 1, default 0.8): the share of a compiled training step's
    activations kept for the backward pass; below 1, AOTAutograd's partitioner recomputes the cheapest of the
    rest (``torch._functorch.config.activation_memory_budget``), while training steps compile (gpu/training/graphs.py).

    Measured on an H100 (docs/BENCHMARKS.md, session 11; 512 px, rank 64, the 75-photo set, same machine): 1.0 kept
    a 6.15 GiB graph pool, 20.87 GiB reserved at 0.0771 s/step; 0.8 a 4.5 GiB pool, 19.22 GiB at 0.0795 s/step.
    The 1.65 GiB are room for the /imagine requests that run between training steps; 1 trades them for 3 % faster
    steps."""
    env = os.environ if environ is None else environ
    text = env.get("ZIMAGE_TRAIN_ACTIVATION_BUDGET", "").strip() or str(DEFAULT_TRAIN_ACTIVATION_BUDGET)
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not 0.0 < budget <= 1.0:
        raise AccelConfigError(f"ZIMAGE_TRAIN_ACTIVATION_BUDGET must be a number above 0 and at most 1, not {text!r}")
    return budget


@dataclass
class AccelReport:
    """What apply() did, for logs and the benchmark."""

    compiled: bool = False
    compiled_vae: bool = False
    gpu_postprocess: bool = False
    attention: str = "default"
    quant: str = "none"
    train_graphs: bool = False  # LoRA training replays CUDA graphs (gpu/training/graphs.py)
    train_activation_budget: float = DEFAULT_TRAIN_ACTIVATION_BUDGET  # for those graphs' compiles
    cache_dir: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def configure_compile_cache(cache_dir: Path) -> None:
    """Point inductor/triton at a persistent folder and turn on every on-disk compile cache.

    Must run before the first compile. Overrides TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR:
    torch writes its default (/tmp/torchinductor_USER) into the environment the first time it
    asks, so an inherited value cannot be told from a chosen one; ZIMAGE_COMPILE_CACHE is the knob.
    """
    import torch

    cache_dir = Path(cache_dir).absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir / "triton")
    inductor = torch._inductor.config
    inductor.fx_graph_cache = True  # compiled FX graphs (the bulk of the compile time)
    _set_if_present(inductor, "autotune_local_cache", True)  # autotuning results
    _set_if_present(torch._functorch.config, "enable_autograd_cache", True)  # AOTAutograd graphs
    # Dynamo remembers which dimensions turned out dynamic (profile-guided), so the next start
    # compiles the dynamic graph directly instead of a static one first.
    _set_if_present(torch._dynamo.config, "automatic_dynamic_local_pgo", True)


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    import torch

    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name) and getattr(dynamo, name) < limit:
            setattr(dynamo, name, limit)


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled so far in this process (a recompile adds one)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


def has_compiled_modules(model) -> bool:
    """Whether any submodule runs a torch.compile'd forward (regional compile sets ``_compiled_call_impl``)."""
    return any(getattr(module, "_compiled_call_impl", None) is not None for module in model.modules())


def set_attention(transformer, name: str) -> str | None:
    """Set the attention backend if the name is known and usable here; return the name set."""
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName
    except ImportError:
        log.warning("ZIMAGE_ATTENTION=%s ignored: this diffusers has no attention backends", name)
        return None
    valid = sorted(member.value for member in AttentionBackendName)
    if name.lower() not in valid:
        log.warning("ZIMAGE_ATTENTION=%s is not a diffusers attention backend (one of: %s); keeping the default",
                    name, ", ".join(valid))
        return None
    try:
        transformer.set_attention_backend(name.lower())
    except (RuntimeError, ImportError, ValueError) as exc:
        log.warning("ZIMAGE_ATTENTION=%s is not usable here (%s); keeping the default", name, exc)
        return None
    return name.lower()


def set_vae_compiled(vae, enabled: bool) -> None:
    """torch.compile the VAE decoder (one dynamic-shape graph for all sizes), or undo it."""
    if enabled:
        vae.decoder.compile(dynamic=True)
    else:
        vae.decoder._compiled_call_impl = None  # what nn.Module.compile sets; None is eager again


def gpu_postprocess(processor, image, output_type: str = "pil", do_denormalize=None):
    """VaeImageProcessor.postprocess for output_type="pil" with the 8-bit conversion on the GPU.

    diffusers copies the bf16 image to the host, then numpy does ``(x * 255).round()`` in float32
    and casts to uint8. The same float32 multiply and round-half-to-even on the GPU give the
    same bytes, and a third of the data crosses to the host.
    """
    import torch
    from PIL import Image

    if output_type != "pil" or not isinstance(image, torch.Tensor) or image.device.type != "cuda":
        return type(processor).postprocess(processor, image, output_type=output_type, do_denormalize=do_denormalize)
    image = processor._denormalize_conditionally(image, do_denormalize)
    pixels = (image.permute(0, 2, 3, 1).float() * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(frame.squeeze(), mode="L") for frame in pixels]
    return [Image.fromarray(frame) for frame in pixels]


def apply(pipe, settings: AccelSettings, placed: bool = False) -> AccelReport:
    """Apply the configured speed path to a loaded pipeline, in place. Compile itself is lazy.

    `placed`: the transformer was already quantized while it moved to the GPU (ImageEngine.load)."""
    started = time.perf_counter()
    report = AccelReport()
    transformer = pipe.transformer
    if settings.quant != "none":
        if not placed:
            count = quantize.quantize_transformer(transformer, settings.quant, f"ZIMAGE_QUANT={settings.quant}")
            report.notes.append(f"{settings.quant} on {count} linears")
        report.quant = settings.quant
    elif settings.vram in LOW_VRAM_CHOICES:
        report.quant = settings.vram  # quantized while placed on the GPU (ImageEngine.load, gpu/quantize.py)
    if settings.attention:
        chosen = set_attention(transformer, settings.attention)
        if chosen:
            report.attention = chosen
    if settings.compile:
        configure_compile_cache(settings.cache_dir)
        raise_recompile_limit()
        transformer.compile_repeated_blocks(fullgraph=True)
        report.compiled = True
        report.cache_dir = str(settings.cache_dir)
        report.train_graphs = settings.train_graphs
        report.train_activation_budget = settings.train_activation_budget
    if getattr(pipe, "vae", None) is not None:
        if settings.compile_vae:
            configure_compile_cache(settings.cache_dir)
            raise_recompile_limit()
        set_vae_compiled(pipe.vae, settings.compile_vae)
        report.compiled_vae = settings.compile_vae
    processor = getattr(pipe, "image_processor", None)
    if processor is not None:
        on_cuda = pipe.transformer.device.type == "cuda"
        if on_cuda:
            processor.postprocess = functools.partial(gpu_postprocess, processor)
        else:
            processor.__dict__.pop("postprocess", None)
        report.gpu_postprocess = on_cuda
    report.seconds = time.perf_counter() - started
    log.info("speed path: compile=%s vae=%s attention=%s quant=%s gpu_postprocess=%s cache=%s", report.compiled,
             report.compiled_vae, report.attention, report.quant, report.gpu_postprocess, report.cache_dir)
    return report


def warm_up_buckets(
    generate: Callable[[int, int, int, str], object],
    sizes: tuple[tuple[int, int], ...] = WARM_UP_SIZES,
    steps: int = WARM_UP_STEPS,
    prompts: tuple[str, ...] = WARM_UP_PROMPTS,
) -> list[dict]:
    """Generate one image per size so every bucket is compiled; return per-size seconds/graphs.

    ``generate(width, height, steps, prompt)`` makes one image. The prompts alternate, so the
    caption length varies too.
    """
    import torch

    timings = []
    for index, (width, height) in enumerate(sizes):
        graphs_before = compiled_graph_count()
        started = time.perf_counter()
        generate(width, height, steps, prompts[index % len(prompts)])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        graphs = compiled_graph_count() - graphs_before
        timings.append({"width": width, "height": height, "seconds": round(seconds, 3), "graphs_compiled": graphs})
        log.info("warm-up %dx%d: %.2f s, %d graph(s) compiled", width, height, seconds, graphs)
    return timings


def _set_if_present(namespace, name: str, value) -> None:
    if hasattr(namespace, name):
        setattr(namespace, name, value)
