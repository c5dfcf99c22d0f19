"""The warm Z-Image pipeline: load once, then generate image after image with progress.

Everything here is synchronous and runs on the worker's single GPU thread; gpu/scheduler.py
decides what runs there and when, gpu/server.py owns the socket.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimage_protocol.constants import MAX_LORA_STACK, MAX_SEQUENCE_LENGTH
from zimage_protocol.errors import Cancelled
from zimage_protocol.messages import GenerateParams
from zimage_protocol.settings import PreviewSettings

from . import accel, profiles, quantize, seed_variance
from .enhancer import Enhanced, PromptEnhancer
from .lora.backend import AdapterBackend
from .lora.common import LoraSettings
from .previews import PreviewFrame, PreviewTap

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 64


class GenerationCancelled(Cancelled):
    """Raised from the step callback to stop the denoising loop at once."""


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    image: Image.Image
    prompt: str = ""  # the rewritten prompt it was made from (enhance), else empty


def device_and_dtype() -> tuple[str, object]:
    """Where the worker runs and in which precision: bf16 on CUDA, else float32 on the CPU."""
    import torch

    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def load_pipeline(path: str, dtype, device: str | None):
    """``ZImagePipeline.from_pretrained``; with a CUDA `device`, each file's tensors go straight to the GPU.

    ``device_map="cuda"`` (a device, not a placement strategy: the pipeline stays movable) makes safetensors
    put each tensor on the GPU as it is read, instead of reading the 19.6 GB to the host and copying them over.
    Measured on an H100 (docs/BENCHMARKS.md, session 9): no faster there (8.5 s either way, bound by reading the
    files), and no slower; it never holds a second host copy of the weights. On the CPU, and for the quantized
    profiles that place blocks themselves, the plain load.
    """
    from diffusers import ZImagePipeline

    if device is not None and device.startswith("cuda"):
        return ZImagePipeline.from_pretrained(path, dtype=dtype, device_map=device)
    return ZImagePipeline.from_pretrained(path, dtype=dtype)


def resolve_model_path(model: str, data_dir: Path) -> str:
    """`tiny` -> a locally built random pipeline; a folder or hub id is passed through."""
    if model == "tiny":
        from .tiny import ensure_tiny_model

        return str(ensure_tiny_model(data_dir / "models"))
    return model


class ImageEngine:
    def __init__(self, model: str, data_dir: Path):
        self.model_name = model
        self.data_dir = data_dir
        # diffusers' ZImagePipeline and transformers' tokenizer, once loaded. Any: both libraries type
        # their call results as unions (output or tuple, fast or slow tokenizer) this code never meets.
        self.pipe: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self._prompt_cache: OrderedDict[str, list] = OrderedDict()
        self._adapters: AdapterBackend | None = None  # chosen by _new_adapters()
        self.lora_settings = LoraSettings(hotswap=False)  # read from the environment in load()
        self.profile = profiles.BF16  # the speed profile, set by load() (picked from the card by default)
        self.profile_line = ""  # the log line of that pick (GPU only)
        self.previews = PreviewSettings()  # PREVIEWS / PREVIEW_EVERY, read in load()
        self._variants: Any = None  # img2img / outpainting on the same weights (gpu/variants.py), on first use
        self._enhancer: PromptEnhancer | None = None  # built on first use (gpu/enhancer.py)

    def load(self, pipe=None) -> None:
        """Load the pipeline (or take `pipe`, already built: the benchmark injects one) and apply
        the speed path configured by ZIMAGE_COMPILE[_VAE] / ZIMAGE_ATTENTION / ZIMAGE_QUANT (gpu/accel.py),
        in the profile ZIMAGE_VRAM sets or, by default, the one picked from the card (gpu/profiles.py)."""
        self.device, dtype = device_and_dtype()
        started = time.perf_counter()
        environ = self._pick_profile()
        settings = accel.AccelSettings.from_env(self.device, self.data_dir, environ)  # bad settings fail before loading
        self.previews = PreviewSettings.from_env(environ)
        self.lora_settings = LoraSettings.from_env(compiled=settings.compile,
                                                   low_vram=settings.vram in accel.LOW_VRAM_CHOICES)
        # Quantized profiles place the transformer block by block from the CPU: the bf16 model never resident whole.
        placed = settings.vram in accel.LOW_VRAM_CHOICES or settings.quant != "none"
        if pipe is None:
            pipe = load_pipeline(resolve_model_path(self.model_name, self.data_dir), dtype,
                                 None if placed else self.device)
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        if self.tokenizer is None:  # load_tokenizer() not called first (an injected pipe, the benchmark)
            self.tokenizer = self.pipe.tokenizer
        # LoRA hot-swap slots must exist before the transformer is quantized and compiled.
        if placed:  # never the whole bf16 transformer on the GPU: quantized block by block as it moves there
            self._add_lora_slots()
            if settings.vram in accel.LOW_VRAM_CHOICES:
                notes = quantize.place_low_vram(self.pipe, self.device, settings.vram)
            else:
                notes = quantize.place_transformer(self.pipe, self.device, settings.quant)
            if self._adapters is not None:
                self._adapters.follow_device()
        else:
            notes = []
            self.pipe.to(self.device)
            self._add_lora_slots()
        self.accel = accel.apply(self.pipe, settings, placed=placed)
        self.accel.notes.extend(notes)
        self.warm_up_timings: list[dict] = []
        log.info("loaded %s on %s in %.1f s", self.model_name, self.device, time.perf_counter() - started)

    def _pick_profile(self) -> dict[str, str]:
        """The worker's settings with the speed profile resolved: on a GPU, ZIMAGE_VRAM unset or ``auto`` (and
        ZIMAGE_QUANT unset) picks it from the card; one log line says which and why. On the CPU the settings
        stand as they are (unset: the full model)."""
        environ = dict(os.environ)
        if self.device != "cuda":
            self.profile = profiles.configured_profile(environ)
            return environ
        import torch

        pick, line = profiles.pick_for_device(environ)
        log.info("%s", line)
        self.profile = pick.profile
        self.profile_line = line
        if pick.profile.vram != "full" and "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:
            # The worker and the bench set it for every profile before torch starts (gpu/process_env.py); an engine
            # used without them turns it on here for a low-VRAM pick (from now on: all of the model).
            torch.cuda.memory._set_allocator_settings(quantize.LOW_VRAM_ALLOC_CONF)
        return pick.worker_env(environ)

    @property
    def trains(self) -> bool:
        """/train works on this worker's profile (all but 12gb: gpu/profiles.py)."""
        return self.profile.trains

    def warm_up(self) -> None:
        """Pay lazy initialisation (and, when compiled, every compile) before the first user.

        Compiled: one image (one step) in every aspect bucket of the bot, so no
        request triggers a recompile. Not compiled (CPU, tests): one small generation."""
        report = getattr(self, "accel", None)
        if report is not None and (report.compiled or report.compiled_vae):
            self.warm_up_timings = accel.warm_up_buckets(
                lambda width, height, steps, prompt: self.generate(
                    GenerateParams(prompt=prompt, width=width, height=height, steps=steps, seeds=[0])))
            return
        self.generate(GenerateParams(prompt="warm-up", width=256, height=256, steps=1, seeds=[0]))

    def _add_lora_slots(self) -> None:
        if self.lora_settings.hotswap:  # the slots must exist before the transformer is quantized and compiled
            self._adapters = self._new_adapters()

    def _new_adapters(self) -> AdapterBackend:
        """The one place the LoRA implementation is chosen: hot-swap slots when LORA_HOTSWAP resolves on (by
        default: when compiled, gpu/lora/hotswap.py), else a peft adapter per LoRA (gpu/lora/peft.py)."""
        if self.lora_settings.hotswap:
            from .lora.hotswap import HotswapAdapters

            return HotswapAdapters(self.pipe, self.lora_settings.max_stack, self.lora_settings.max_rank,
                                   self.lora_settings.cache_bytes, init_device=self.device)
        from .lora.peft import AdapterManager

        # An LRU of up to MAX_LORA_STACK adapters (and LORA_CACHE_MB); the bot keeps requests to LORA_MAX_STACK.
        return AdapterManager(self.pipe, MAX_LORA_STACK, self.lora_settings.cache_bytes)

    @property
    def uses_adapters(self) -> bool:
        """True once LoRAs are in play: then every generation sets the adapter state first."""
        return self._adapters is not None

    def adapters(self) -> AdapterBackend:
        """The LoRA backend (:meth:`_new_adapters`); peft's is created on first use: plain generation never imports peft."""
        if self._adapters is None:
            self._adapters = self._new_adapters()
        return self._adapters

    def warm_up_adapters(self) -> None:
        """Compile the LoRA graph variants ahead when the transformer is compiled (the hot-swap slots have some;
        peft's adapters none: every new state would compile anyway)."""
        if self._adapters is not None and self.accel.compiled:
            started = time.perf_counter()
            graphs_before = accel.compiled_graph_count()
            self._adapters.warm_up(lambda: self.generate(GenerateParams(
                prompt=accel.WARM_UP_PROMPTS[0], width=1024, height=1024, steps=1, seeds=[0])))
            log.info("LoRA warm-up: %.1f s, %d graph(s) compiled", time.perf_counter() - started,
                     accel.compiled_graph_count() - graphs_before)

    def warm_up_variants(self) -> None:
        """When compiled: the picture-based paths (2x upscale, outpainting) too, so a first Vary/Upscale/Zoom meets
        no lazy compile. The worker runs this after "ready" (gpu/scheduler.py): a restart's first image need not
        wait for paths most first requests do not take."""
        report = getattr(self, "accel", None)
        if report is not None and (report.compiled or report.compiled_vae):
            self.variants().warm_up_from(self)

    def variants(self) -> Any:
        """The img2img / inpaint pipelines sharing this pipeline's weights (gpu/variants.py)."""
        if self._variants is None:
            from .variants import Variants

            self._variants = Variants(self.pipe)
        return self._variants

    def load_tokenizer(self) -> None:
        """Just the tokenizer (seconds, not minutes): prompts can be checked while the pipeline loads."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.model_name, self.data_dir),
                                                       subfolder="tokenizer")

    def count_tokens(self, prompt: str) -> int:
        """Tokens the text encoder would see, chat template included (the pipeline's limit)."""
        templated = self._templated(prompt)
        return len(self.tokenizer(templated, truncation=False).input_ids)

    def _templated(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    def _prompt_embeds(self, prompt: str) -> list:
        """Prompt embeddings, cached: rerolls and variations skip the text encoder."""
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            self._prompt_cache.move_to_end(prompt)
            return cached
        import torch

        with torch.inference_mode():
            if self.pipe.text_encoder.device.type == torch.device(self.device).type:
                embeds, _ = self.pipe.encode_prompt(
                    prompt, device=self.device, do_classifier_free_guidance=False,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                )
            else:
                # The encoder is on the host: a LoRA is training (its layers stream through the GPU,
                # gpu/streamed_encoder.py) or the 12gb profile keeps it there (the CPU computes). Unpadded either way.
                embeds = [self.encode_unpadded(prompt).to(self.device)]
        self._prompt_cache[prompt] = embeds
        if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.popitem(last=False)
        return embeds

    def encode_unpadded(self, prompt: str):
        """The pipeline's prompt embedding without its padding to 512 tokens.

        The pipeline pads every prompt to 512 tokens and then keeps only the real ones. The text
        encoder is causal and the padding comes last, so the real tokens' hidden states do not
        depend on it: encoding just them gives the same embedding for a fraction of the work,
        which matters while a LoRA trains and the encoder's weights stream from the host.

        Weights pinned on the host by a training run, on a CUDA engine: computed on the GPU, the weights streamed
        layer by layer. The 12gb profile's encoder (host memory, not pinned) computes on the CPU."""
        import torch

        from .streamed_encoder import pinned_on_host, streamed_hidden_states

        encoder = self.pipe.text_encoder
        tokens = self.tokenizer(self._templated(prompt), max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.bool()
        with torch.inference_mode():
            if torch.device(self.device).type == "cuda" and pinned_on_host(encoder):
                states = streamed_hidden_states(encoder, tokens.input_ids, mask, torch.device(self.device))
            else:
                states = encoder(input_ids=tokens.input_ids.to(encoder.device), attention_mask=mask.to(encoder.device),
                                 output_hidden_states=True).hidden_states
        return states[-2][0]

    def enhance(self, prompt: str, seed: int | None, should_stop: Callable[[], bool] = lambda: False) -> Enhanced:
        """The prompt rewritten in detail by the text encoder as a language model (gpu/enhancer.py)."""
        if self._enhancer is None:
            self._enhancer = PromptEnhancer(self.pipe.text_encoder, self.tokenizer)
        return self._enhancer.enhance(prompt, seed, should_stop)

    def generate(
        self,
        params: GenerateParams,
        on_step: Callable[[int, int], None] = lambda step, total: None,
        should_stop: Callable[[], bool] = lambda: False,
        on_image: Callable[[GeneratedImage], None] = lambda image: None,
        on_preview: Callable[[PreviewFrame], None] | None = None,
        prompts: list[str] | None = None,
    ) -> list[GeneratedImage]:
        """Make one image per seed. Progress counts steps across all images of the request.

        ``on_preview``: live previews (gpu/previews.py) every PREVIEW_EVERY steps, unless PREVIEWS=off; the
        frames are on their way to the host when it is called, and it encodes them off this thread.
        ``prompts``: one rewritten prompt per seed (enhance), used instead of ``params.prompt``.
        ``params.seed_variance`` > 0 adds the seed's noise to each image's embedding (gpu/seed_variance.py)."""
        import torch

        if params.source is not None:  # from a picture: img2img or outpainting (gpu/variants.py)
            return self.variants().generate(params, self._prompt_embeds(params.prompt), on_step, should_stop, on_image)
        total = params.steps * len(params.seeds)
        results = []
        for index, seed in enumerate(params.seeds):
            embeds = self._prompt_embeds(prompts[index] if prompts else params.prompt)
            if params.seed_variance:  # 0: not even a copy, today's embedding bit for bit
                embeds = seed_variance.perturb(embeds, seed, params.seed_variance)
            done_before = index * params.steps
            tap = (PreviewTap(self.previews, params.steps, done_before, total, on_preview)
                   if on_preview is not None and self.previews.enabled else None)

            def step_end(pipe, step, timestep, tensors, done_before=done_before, tap=tap):
                if should_stop():
                    raise GenerationCancelled()
                if tap is not None:
                    tap.after_step(pipe.scheduler, step, tensors["latents"])
                on_step(done_before + step + 1, total)
                return tensors

            # A CPU generator gives the same noise on every device: same seed, same pixels.
            generator = torch.Generator("cpu").manual_seed(seed)
            with torch.inference_mode():
                image = self.pipe(
                    prompt_embeds=embeds,
                    height=params.height,
                    width=params.width,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance_scale,
                    generator=generator,
                    callback_on_step_end=step_end,
                ).images[0]
            result = GeneratedImage(index=index, seed=seed, image=image, prompt=prompts[index] if prompts else "")
            on_image(result)
            results.append(result)
        return results
