"""``python -m gpu.bench``: stock diffusers vs the worker's own path, side by side, in one run.

On CUDA it builds the FULL-SIZE Z-Image-Turbo architecture (6.15 B DiT, Qwen3-4B text encoder,
FLUX-layout VAE) with random weights directly on the GPU in bf16 (timings do not depend on the
weights; nothing is downloaded or saved), then measures

* stock: ``pipe(prompt_embeds=..., guidance_scale=0, num_inference_steps=8)``, eager, as
  diffusers ships it;
* ours: ``gpu.engine.ImageEngine`` with that same pipeline injected into ``load()``, so the speed
  path of ``gpu/accel.py`` (ZIMAGE_COMPILE / ZIMAGE_ATTENTION / ZIMAGE_QUANT) and the warm-up are
  exactly the worker's code;
* a second process started with a populated compile cache (cold start to first image);
* optionally ``--variant KEY=VALUE`` (ours with another setting, e.g. ``ZIMAGE_COMPILE_VAE=on``),
  ``--fp8`` (ours with ZIMAGE_QUANT=fp8, in a child process with its own cold cache) and
  ``--profile`` (GPU kernel time of one image by category, stock and ours).

Prints a markdown table (and writes JSON with ``--json PATH``). ``--tiny`` (automatic without
CUDA) runs the same code on the CPU with gpu/tiny.py's pipeline at small sizes, for CI.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import accel

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
TINY = {"timing_sizes": [(256, 256), (320, 192)], "steps": 2, "repeats": 5, "queue": 3, "warm_runs": 1}
TINY_QUEUE_SIZES = [(256, 256), (320, 192), (192, 320)]
GIB = 1024**3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- building the pipeline

def build_full_pipeline(device: str = "cuda", scale: float = 0.5, transformer_layers: int = 30,
                        text_layers: int = 36):
    """The real Z-Image-Turbo architecture with random weights, built in place on `device` in bf16.

    Configs from docs/zimage.md. Weights are scaled by `scale` so activations stay finite through
    30 random blocks. The layer counts are parameters only so a dry run can build a shallow copy.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from .tiny import build_tokenizer

    torch.manual_seed(0)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = ZImageTransformer2DModel(
                all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840,
                n_layers=transformer_layers, n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5,
                qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
                axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
            )
            text_encoder = Qwen3Model(Qwen3Config(
                vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=text_layers,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=True,
            ))
            vae = AutoencoderKL(
                in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False,
            )
    finally:
        torch.set_default_dtype(previous_dtype)
    with torch.no_grad():
        for module in (transformer, text_encoder, vae):
            if any(p.dtype != torch.bfloat16 for p in module.parameters()):
                module.to(dtype=torch.bfloat16)
            module.eval()
            for parameter in module.parameters():
                parameter.mul_(scale)
        transformer.x_pad_token.fill_(0.1)
        transformer.cap_pad_token.fill_(0.1)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(),
                          transformer=transformer)


def build_pipeline(tiny: bool):
    if tiny:
        from .tiny import build_tiny_pipeline

        return build_tiny_pipeline()
    return build_full_pipeline()


# --------------------------------------------------------------------------- measuring

def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    started = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - started


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / GIB, 2)
    return None


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
        times = [_timed(lambda w=width, h=height, s=seed: run_one(w, h, TIMING_PROMPT, s))
                 for seed in range(cfg["repeats"])]
        result["per_size"][f"{width}x{height}"] = {
            "median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs_s": [round(t, 4) for t in times],
        }
        log(f"  {width}x{height}: median {statistics.median(times):.3f} s over {len(times)}")
    queue_times = []
    _sync()
    queue_started = time.perf_counter()
    for index, (width, height, prompt) in enumerate(queue):
        queue_times.append(_timed(lambda w=width, h=height, p=prompt, s=index: run_one(w, h, p, 5000 + s)))
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


def profile_one(run_one, cfg: dict) -> dict:
    """GPU kernel time of one image at the first timing size, by category, plus the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    width, height = cfg["timing_sizes"][0]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = _timed(lambda: run_one(width, height, TIMING_PROMPT, 99))
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us and getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            kernels.append((event.key, device_us / 1000.0, event.count))
    categories: dict[str, float] = {}
    for name, ms, _ in kernels:
        lowered = name.lower()
        label = next((cat for cat, keys in KERNEL_CATEGORIES if any(k in lowered for k in keys)),
                     "other (eager elementwise)")
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
        result[f"{name}_ms"] = round(statistics.median(_timed(fn) for _ in range(5)) * 1000, 2)
    result["identical_pixels"] = bool(np.array_equal(np.asarray(stock()[0]), np.asarray(ours()[0])))
    return result


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
    _reset_peak()
    result.update(measure(run_one, cfg, queue))
    result["peak_gib"] = _peak_gib()
    return result, run_one


def run_ours(pipe, cfg: dict, queue, data_dir: Path, model_name: str) -> tuple[dict, object]:
    """The worker's own path: ImageEngine.load(pipe) (accel applied) + warm_up + generate.

    Returns the numbers and the engine-backed run_one(width, height, prompt, seed)."""
    from .engine import ImageEngine
    from .protocol import GenerateParams

    engine = ImageEngine(model_name, data_dir)
    _reset_peak()
    graphs_before = accel.compiled_graph_count()
    load_s = _timed(lambda: engine.load(pipe=pipe))
    warm_up_s = _timed(engine.warm_up)
    result: dict = {
        "accel": vars(engine.accel).copy(), "load_s": round(load_s, 3), "warm_up_s": round(warm_up_s, 3),
        "warm_up_per_size": engine.warm_up_timings,
        "graphs_compiled_in_warm_up": accel.compiled_graph_count() - graphs_before,
    }
    log(f"  load {load_s:.2f} s, warm-up {warm_up_s:.2f} s, {result['graphs_compiled_in_warm_up']} graph(s)")
    for prompt in {TIMING_PROMPT, *QUEUE_PROMPTS}:
        engine._prompt_embeds(prompt)  # prime the engine's prompt cache, as stock gets embeddings given

    def run_one(width, height, prompt, seed):
        return engine.generate(GenerateParams(prompt=prompt, width=width, height=height, steps=cfg["steps"],
                                              seeds=[seed]))

    result.update(measure(run_one, cfg, queue))
    result["peak_gib"] = _peak_gib()
    return result, run_one


# --------------------------------------------------------------------------- phases

def environment_info(tiny: bool) -> dict:
    import diffusers
    import torch
    import transformers

    info = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "tiny (CPU smoke run, not a benchmark)" if tiny else "full-size architecture, random weights",
        "device": torch.cuda.get_device_name() if (torch.cuda.is_available() and not tiny) else "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "env": {k: os.environ.get(k) for k in ("ZIMAGE_COMPILE", "ZIMAGE_ATTENTION", "ZIMAGE_QUANT")},
    }
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except ImportError:
        info["torchao"] = None
    return info


def phase_child(args) -> dict:
    """A fresh process: build, ImageEngine.load + warm_up, first image (warm-start); or full 'ours'."""
    spawned_at = args.spawned_at
    marks = {"imports_s": time.time() - spawned_at}
    import torch  # noqa: F401 - counted in the import time

    marks["imports_s"] = round(time.time() - spawned_at, 3)
    cfg = TINY if args.tiny else FULL
    pipe = build_pipeline(args.tiny)
    _sync()
    marks["built_s"] = round(time.time() - spawned_at, 3)
    if args.phase == "ours":
        queue = make_queue(cfg, args.tiny)
        result, _ = run_ours(pipe, cfg, queue, args.data_dir, "bench")
        result["process_marks"] = marks
        return result
    from .engine import ImageEngine
    from .protocol import GenerateParams

    engine = ImageEngine("bench", args.data_dir)
    graphs_before = accel.compiled_graph_count()
    engine.load(pipe=pipe)
    marks["loaded_s"] = round(time.time() - spawned_at, 3)
    engine.warm_up()
    _sync()
    marks["ready_s"] = round(time.time() - spawned_at, 3)
    width, height = cfg["timing_sizes"][0]
    engine.generate(GenerateParams(prompt=TIMING_PROMPT, width=width, height=height, steps=cfg["steps"], seeds=[7]))
    _sync()
    marks["first_image_s"] = round(time.time() - spawned_at, 3)
    return {"process_marks": marks, "warm_up_per_size": engine.warm_up_timings,
            "graphs_compiled": accel.compiled_graph_count() - graphs_before, "peak_gib": _peak_gib(),
            "accel": vars(engine.accel).copy()}


def spawn_child(args, phase: str, data_dir: Path, env_extra: dict, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "child.json"
        command = [sys.executable, "-m", "gpu.bench", "--phase", phase, "--data-dir", str(data_dir),
                   "--child-json", str(out)]
        if args.tiny:
            command.append("--tiny")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        command += ["--spawned-at", repr(time.time())]  # taken last: the child's clock starts here
        try:
            completed = subprocess.run(command, env=env, timeout=max(timeout_s, 1), check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if completed.returncode != 0 or not out.exists():
            return {"error": f"child exited with {completed.returncode}"}
        return json.loads(out.read_text())


def phase_main(args) -> dict:
    started = time.perf_counter()

    def left() -> float:
        return args.deadline_s - (time.perf_counter() - started)

    cfg = TINY if args.tiny else FULL
    queue = make_queue(cfg, args.tiny)
    results: dict = {"info": environment_info(args.tiny), "config": {**cfg, "queue_requests": queue},
                     "columns": {}}
    results["config"]["command"] = "python -m gpu.bench " + " ".join(sys.argv[1:])

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    log(f"{results['info']['mode']} on {results['info']['device']}")
    build_s = _timed(lambda: results.__setitem__("_pipe", build_pipeline(args.tiny)))
    pipe = results.pop("_pipe")
    results["build_s"] = round(build_s, 2)
    log(f"built the pipeline in {build_s:.1f} s")
    if not args.tiny:
        results["attention_microbench"] = attention_microbench()
        log(f"attention micro-bench: {results['attention_microbench']}")

    log("stock diffusers (eager)")
    results["columns"]["stock"], stock_run_one = run_stock(pipe, cfg, queue, args.tiny)
    if args.profile and not args.tiny:
        results["profile"] = {"stock": profile_one(stock_run_one, cfg)}
    if not args.tiny:
        results["postprocess_microbench"] = postprocess_microbench(pipe)
        log(f"postprocess micro-bench: {results['postprocess_microbench']}")
    save()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    log(f"ours (ImageEngine, DATA_DIR={data_dir}, env {results['info']['env']})")
    try:
        results["columns"]["ours"], ours_run_one = run_ours(pipe, cfg, queue, data_dir, "bench")
    except Exception as exc:  # noqa: BLE001 - keep the stock numbers and the other columns
        log(f"ours failed: {type(exc).__name__}: {exc}")
        results["columns"]["ours"], ours_run_one = {"error": f"{type(exc).__name__}: {exc}"[:300]}, None
    save()

    if args.profile and not args.tiny and ours_run_one is not None:
        results["profile"]["ours"] = profile_one(ours_run_one, cfg)
        save()

    for variant in args.variant or []:
        key, _, value = variant.partition("=")
        column = f"ours, {key}={value}"
        if left() < 120:
            results["columns"][column] = {"error": "skipped: out of time"}
            continue
        log(f"ours with {key}={value}")
        saved = os.environ.get(key)
        os.environ[key] = value
        try:
            results["columns"][column], _ = run_ours(pipe, cfg, queue, data_dir, "bench")
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
            results["columns"][column] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved
        save()

    del ours_run_one, stock_run_one, pipe
    gc.collect()
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass

    log("warm start: a new process with the compile cache populated")
    results["warm_start"] = spawn_child(args, "warm-start", data_dir, {}, left() - 15)
    log(f"  {results['warm_start']}")
    save()

    if args.fp8:
        if left() < 150:
            results["columns"]["ours fp8"] = {"error": "skipped: out of time"}
        else:
            fp8_dir = Path(tempfile.mkdtemp(prefix="zimage-bench-fp8-"))
            log(f"ours with ZIMAGE_QUANT=fp8 (child process, cold cache in {fp8_dir})")
            results["columns"]["ours fp8"] = spawn_child(args, "ours", fp8_dir, {"ZIMAGE_QUANT": "fp8"}, left() - 5)
        save()
    results["total_s"] = round(time.perf_counter() - started, 1)
    save()
    return results


# --------------------------------------------------------------------------- report

def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_table(results: dict) -> str:
    info, columns = results["info"], results["columns"]
    stock = columns.get("stock", {})
    names = list(columns)
    sizes = list(stock.get("per_size", {}))
    header = "| metric | " + " | ".join(_column_title(n) for n in names) + " |"
    lines = [f"GPU: {info['device']} | torch {info['torch']} | diffusers {info['diffusers']} | "
             f"{info['date_utc']} | {info['mode']}", "", header, "|---" * (len(names) + 1) + "|"]

    def row(label, getter, speed=None):
        cells = []
        for name in names:
            column = columns[name]
            if "error" in column:
                cells.append(f"error: {column['error']}")
                continue
            value = getter(column)
            cell = _fmt(value)
            if speed and name != "stock" and value:
                base = getter(stock)
                if base:
                    ratio = base / value if speed == "time" else value / base
                    cell += f" ({ratio:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    repeats = results["config"]["repeats"]
    for size in sizes:
        row(f"s/image {size} (median of {repeats})", lambda c, s=size: c.get("per_size", {}).get(s, {}).get("median_s"),
            speed="time")
    queue_n = results["config"]["queue"]
    row(f"images/min, queue of {queue_n} mixed-aspect requests",
        lambda c: c.get("queue", {}).get("images_per_min"), speed="rate")
    row("slowest image in the queue (s)", lambda c: c.get("queue", {}).get("max_image_s"))
    row("graphs compiled during timed runs (recompiles)", lambda c: c.get("graphs_compiled_during_timing"))
    row("compile + warm-up of all buckets, cold cache (s)", lambda c: c.get("warm_up_s"))
    row("graphs compiled in warm-up", lambda c: c.get("graphs_compiled_in_warm_up"))
    row("peak GPU memory (GiB)", lambda c: c.get("peak_gib"))
    warm = results.get("warm_start")
    if warm is not None:
        lines.append("")
        if "error" in warm:
            lines.append(f"Cold start with a warm compile cache: error: {warm['error']}")
        else:
            marks = warm["process_marks"]
            lines.append(
                f"Cold start with a warm compile cache (ours, new process): first image after "
                f"{_fmt(marks.get('first_image_s'), 1)} s (imports {_fmt(marks.get('imports_s'), 1)} s, "
                f"pipeline built {_fmt(marks.get('built_s'), 1)} s, loaded {_fmt(marks.get('loaded_s'), 1)} s, "
                f"warm-up done {_fmt(marks.get('ready_s'), 1)} s; {warm.get('graphs_compiled')} graph(s) compiled)")
    for name, prof in (results.get("profile") or {}).items():
        lines.append("")
        lines.append(f"GPU kernel time of one {prof['size']} image, {name}: {prof['kernel_ms']} ms of "
                     f"{prof['wall_ms_profiled']} ms wall (profiled): " + ", ".join(
                         f"{k} {v}" for k, v in prof["by_category_ms"].items()))
    post = results.get("postprocess_microbench")
    if post:
        lines.append("")
        lines.append(f"Image to PIL, 1024x1024: diffusers {post['stock_ms']} ms, on-GPU 8-bit {post['gpu_ms']} ms, "
                     f"identical pixels: {post['identical_pixels']}")
    micro = results.get("attention_microbench")
    if micro:
        lines.append("")
        lines.append("Attention alone, " + "x".join(map(str, micro["shape"])) + " bf16 (ms): " + ", ".join(
            f"{k[:-3]} {_fmt(v)}" for k, v in micro.items() if k.endswith("_ms")))
    return "\n".join(lines)


def _column_title(name: str) -> str:
    return {"stock": "stock diffusers (eager)", "ours": "ours (worker path)"}.get(name, name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny pipeline (automatic without CUDA)")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="DATA_DIR for ours (its compile-cache/ is reused); default: a fresh temporary folder")
    parser.add_argument("--variant", action="append", metavar="KEY=VALUE",
                        help="extra column: ours with this environment setting, e.g. ZIMAGE_ATTENTION=_native_cudnn "
                             "or ZIMAGE_COMPILE_VAE=on (repeatable; same process, same compile cache)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one image of stock and of ours (GPU kernel time by category)")
    parser.add_argument("--fp8", action="store_true", help="extra column: ours with ZIMAGE_QUANT=fp8 (needs torchao)")
    parser.add_argument("--deadline-s", type=float, default=560.0,
                        help="skip optional phases that would not fit in this many seconds")
    parser.add_argument("--phase", choices=["main", "warm-start", "ours"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.spawned_at is None:
        args.spawned_at = time.time()
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            log("no CUDA device: running the tiny CPU smoke benchmark")
            args.tiny = True
    if args.phase != "main":
        if args.data_dir is None:
            raise SystemExit("--data-dir is required for a child phase")
        result = phase_child(args)
        args.child_json.write_text(json.dumps(result, default=str))
        return 0
    results = phase_main(args)
    print(render_table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
