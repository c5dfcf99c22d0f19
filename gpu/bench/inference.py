"""Image generation: stock diffusers vs the worker's ImageEngine, plus micro-benchmarks and a profile."""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .. import accel
from .common import log, peak_gib, peak_reserved_gib, reset_peak, sync, timed

# Timing prompt: ~100 characters, i.e. ~120 caption tokens with the byte-level bench tokenizer
# (gpu/tiny.py), the caption length of the baseline measurements.
TIMING_PROMPT = ("a red fox sitting in fresh snow at golden hour, soft rim light, shallow depth of field, "
                 "detailed fur")
# Queue prompts of different lengths (none is a warm-up prompt): other caption lengths than the
# warm-up saw, as real traffic has. A recompile in the queue would show as a graph and a slow image.
QUEUE_PROMPTS = (
    "a cat",
    TIMING_PROMPT,
    "an isometric illustration of a tiny floating island with a windmill, a vegetable garden, a stone "
    "bridge over a waterfall and clouds below, pastel colours, clean lines, soft shadows, 4k render",
    "a crowded night market in the rain, neon signs reflected in puddles, steam rising from food stalls, "
    "people with umbrellas, a cyclist passing through, cinematic lighting, anamorphic lens flare, "
    "high detail, wide shot, moody teal and orange grade, photographed on a 35mm film camera with grain",
)
FULL = {"timing_sizes": [(1024, 1024), (1344, 768)], "steps": 8, "repeats": 5, "queue": 20, "warm_runs": 2}
TINY = {"timing_sizes": [(128, 128), (160, 96)], "steps": 2, "repeats": 3, "queue": 3, "warm_runs": 1}
TINY_QUEUE_SIZES = [(128, 128), (160, 96), (96, 160)]


def make_queue(cfg: dict, tiny: bool) -> list[tuple[int, int, str]]:
    """`queue` mixed-aspect requests, the same for every column (seeded shuffle of the buckets)."""
    sizes = TINY_QUEUE_SIZES if tiny else list(accel.WARM_UP_SIZES)
    order = [sizes[i % len(sizes)] for i in range(cfg["queue"])]
    random.Random(0).shuffle(order)
    return [(width, height, QUEUE_PROMPTS[i % len(QUEUE_PROMPTS)]) for i, (width, height) in enumerate(order)]


def measure(run_one, cfg: dict, queue: list[tuple[int, int, str]], warm: bool = True) -> dict:
    """run_one(width, height, prompt, seed) makes one image. Medians, queue throughput, recompiles."""
    result: dict = {"per_size": {}}
    if warm:
        for width, height in cfg["timing_sizes"]:
            for run in range(cfg["warm_runs"]):
                run_one(width, height, TIMING_PROMPT, 1000 + run)
    graphs_before = accel.compiled_graph_count()
    for width, height in cfg["timing_sizes"]:
        times = [timed(lambda w=width, h=height, s=seed: run_one(w, h, TIMING_PROMPT, s))
                 for seed in range(cfg["repeats"])]
        result["per_size"][f"{width}x{height}"] = {
            "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs_s": [round(t, 4) for t in times],
        }
        log(f"  {width}x{height}: median {statistics.median(times):.3f} s over {len(times)}")
    queue_times = []
    sync()
    queue_started = time.perf_counter()
    for index, (width, height, prompt) in enumerate(queue):
        queue_times.append(timed(lambda w=width, h=height, p=prompt, s=index: run_one(w, h, p, 5000 + s)))
    queue_total = time.perf_counter() - queue_started
    result["queue"] = {
        "requests": len(queue), "total_s": round(queue_total, 3),
        "images_per_min": round(60.0 * len(queue) / queue_total, 2),
        "max_image_s": round(max(queue_times), 3), "image_s": [round(t, 3) for t in queue_times],
    }
    result["graphs_compiled_during_timing"] = accel.compiled_graph_count() - graphs_before
    log(f"  queue of {len(queue)}: {result['queue']['images_per_min']} images/min, "
        f"slowest {result['queue']['max_image_s']} s, graphs compiled {result['graphs_compiled_during_timing']}")
    return result


def attention_microbench(seq: int = 4224) -> dict:
    """One attention call at the 1024x1024 main-block shape under each SDPA backend (ms)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict = {"shape": [1, 30, seq, 128]}
    q, k, v = (torch.randn(1, 30, seq, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("default", None)):
        try:
            def call(backend=backend):
                if backend is None:
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            for _ in range(3):
                call()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                call()
            end.record()
            torch.cuda.synchronize()
            out[name + "_ms"] = round(start.elapsed_time(end) / 20, 3)
        except Exception as exc:  # noqa: BLE001 - a backend missing here is a result, not a failure
            out[name + "_ms"] = None
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


KERNEL_CATEGORIES = (  # first match wins: inductor names kernels after the ops they fuse (e.g.
    # "..._scaled_dot_product_cudnn_attention_..."), cuDNN attention says "fprop", convolutions "gemm"
    ("inductor (triton)", ("triton_",)),
    ("attention", ("sdpa", "fmha", "flash", "attention")),
    ("group norm (eager)", ("rowwisemoments", "groupnorm")),
    ("convolution", ("conv", "fprop", "dgrad", "implicit", "winograd", "nchwtonhwc", "nhwctonchw")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "sm90_", "f8f8", "scaled_mm")),
    ("complex (eager)", ("complex",)),
    ("memcpy", ("memcpy", "memset")),
)


def kernel_category(name: str, default: str = "other") -> str:
    """The KERNEL_CATEGORIES label of a CUDA kernel's name."""
    lowered = name.lower()
    return next((label for label, keys in KERNEL_CATEGORIES if any(key in lowered for key in keys)), default)


def profile_one(run_one, cfg: dict) -> dict:
    """GPU kernel time of one image at the first timing size, by category, plus the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    width, height = cfg["timing_sizes"][0]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = timed(lambda: run_one(width, height, TIMING_PROMPT, 99))
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us and getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels.append((event.key, device_us / 1000.0, event.count))
    categories: dict[str, float] = {}
    for name, ms, _ in kernels:
        label = kernel_category(name, "other (eager elementwise)")
        categories[label] = categories.get(label, 0.0) + ms
    total = sum(ms for _, ms, _ in kernels)
    kernels.sort(key=lambda item: -item[1])
    result = {
        "size": f"{width}x{height}", "wall_ms_profiled": round(wall * 1000, 1), "kernel_ms": round(total, 1),
        "by_category_ms": {k: round(v, 1) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": n[:140], "ms": round(ms, 2), "count": c} for n, ms, c in kernels[:15]],
    }
    log(f"  profile: {result['by_category_ms']} (kernels {result['kernel_ms']} ms, wall {result['wall_ms_profiled']} ms)")
    return result


def postprocess_microbench(pipe, width: int = 1024, height: int = 1024) -> dict:
    """diffusers' postprocess (host copy of bf16 + numpy) vs accel.gpu_postprocess, same bytes?"""
    import numpy as np
    import torch

    processor = pipe.image_processor
    image = (torch.randn(1, 3, height, width, device="cuda") * 0.6).to(torch.bfloat16)

    def stock():
        return type(processor).postprocess(processor, image, output_type="pil")

    def ours():
        return accel.gpu_postprocess(processor, image, output_type="pil")

    result = {}
    for name, fn in (("stock", stock), ("gpu", ours)):
        fn()
        result[f"{name}_ms"] = round(statistics.median(timed(fn) for _ in range(5)) * 1000, 2)
    result["identical_pixels"] = bool(np.array_equal(np.asarray(stock()[0]), np.asarray(ours()[0])))
    return result


def image_difference(reference, image) -> dict:
    """How far `image` is from `reference` (PIL, same size): mean and largest absolute difference of 8-bit values,
    and PSNR in dB (inf when identical). Same seed, same prompt: two bf16 runs with different kernels differ by
    rounding noise, which grows over the steps; a wrong computation differs like unrelated pictures (PSNR ~10 dB)."""
    import numpy as np

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(image, dtype=np.float64)
    difference = np.abs(a - b)
    mse = float((difference ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return {"mean_abs": round(float(difference.mean()), 3), "max_abs": int(difference.max()),
            "psnr_db": round(psnr, 2) if mse else "inf"}


def run_stock(pipe, cfg: dict, queue, tiny: bool) -> tuple[dict, object]:
    import torch

    device = "cpu" if tiny else "cuda"
    embeds: dict[str, list] = {}
    with torch.inference_mode():
        for prompt in {TIMING_PROMPT, *QUEUE_PROMPTS}:
            embeds[prompt], _ = pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=False,
                                                   max_sequence_length=512)
    result: dict = {"caption_tokens": {p[:24]: int(e[0].shape[0]) for p, e in embeds.items()}}
    pipe.set_progress_bar_config(disable=True)  # as the worker does; keeps the log readable

    def run_one(width, height, prompt, seed, output_type="pil"):
        with torch.inference_mode():
            return pipe(prompt_embeds=embeds[prompt], height=height, width=width,
                        num_inference_steps=cfg["steps"], guidance_scale=0.0, output_type=output_type,
                        generator=torch.Generator("cpu").manual_seed(seed)).images

    width, height = cfg["timing_sizes"][0]
    latents = run_one(width, height, TIMING_PROMPT, 0, output_type="latent")
    result["latents_finite"] = bool(torch.isfinite(latents).all())
    reset_peak()
    result.update(measure(run_one, cfg, queue))
    result["peak_gib"] = peak_gib()
    return result, run_one


def _remove_lora_slots(transformer) -> None:
    """The LoRA slots an earlier ImageEngine added to this pipe (a --variant column reuses the pipe)."""
    from ..lora.common import SLOT_PREFIX, adapter_names, remove_peft_if_empty

    slots = [name for name in adapter_names(transformer) if name.startswith(SLOT_PREFIX)]
    if slots:
        transformer.delete_adapters(slots)
        remove_peft_if_empty(transformer)


def run_ours(pipe, cfg: dict, queue, data_dir: Path, model_name: str) -> tuple[dict, object, object]:
    """The worker's own path: ImageEngine.load(pipe) (accel applied) + warm_up + generate.

    Live previews as the worker makes them (PREVIEWS, PREVIEW_EVERY; on by default): projected on the GPU thread,
    encoded on a second thread, all encoded before the image counts as done (the worker sends them before Done).
    ``--variant PREVIEWS=off`` is the same run without them: the cost of previews is the difference.
    Returns the numbers, the engine-backed run_one(width, height, prompt, seed) and the engine."""
    from zimage_protocol.messages import GenerateParams

    from ..engine import ImageEngine

    engine = ImageEngine(model_name, data_dir)
    _remove_lora_slots(pipe.transformer)
    reset_peak()
    graphs_before = accel.compiled_graph_count()
    load_s = timed(lambda: engine.load(pipe=pipe))
    warm_up_s = timed(engine.warm_up)
    result: dict = {
        "accel": vars(engine.accel).copy(), "load_s": round(load_s, 3), "warm_up_s": round(warm_up_s, 3),
        "warm_up_per_size": engine.warm_up_timings,
        "graphs_compiled_in_warm_up": accel.compiled_graph_count() - graphs_before,
    }
    log(f"  load {load_s:.2f} s, warm-up {warm_up_s:.2f} s, {result['graphs_compiled_in_warm_up']} graph(s)")
    for prompt in {TIMING_PROMPT, *QUEUE_PROMPTS}:
        engine._prompt_embeds(prompt)  # prime the engine's prompt cache, as stock gets embeddings given

    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")  # the worker's encoder thread
    previews: list[int] = []

    def run_one(width, height, prompt, seed):
        encoded: list[Future[bytes]] = []
        images = engine.generate(GenerateParams(prompt=prompt, width=width, height=height, steps=cfg["steps"],
                                                seeds=[seed]),
                                 on_preview=lambda frame: encoded.append(encoder.submit(frame.encode)))
        for future in encoded:
            future.result()
        previews.append(len(encoded))
        return images

    result.update(measure(run_one, cfg, queue))
    result["previews"] = {"enabled": engine.previews.enabled, "every": engine.previews.every,
                          "per_image": max(previews, default=0)}
    result["peak_gib"] = peak_gib()
    result["peak_reserved_gib"] = peak_reserved_gib()
    return result, run_one, engine

