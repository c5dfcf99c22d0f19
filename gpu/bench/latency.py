"""/imagine latency while a LoRA trains, the way gpu/scheduler.py interleaves the two on one GPU thread.

The worker runs everything on a single-thread executor. A TrainingSession submits one training
step at a time and submits the next only when the previous one is done, so a generation submitted
meanwhile runs after the step in progress (gpu/training/session.py). ``_generate_on_gpu`` calls
``trainer.suspend()`` before the generation and ``trainer.resume()`` after it. Here a driver thread
plays the TrainingSession, the main thread plays the bot: it submits a generation every
``interval_s`` (+- ``jitter_s``, seeded; never sooner than half an interval after the previous one
finished) and measures submit -> done. Every request has a prompt not seen before, as users send,
so its text encoding is part of the latency; while training, the trainer keeps the text encoder on
the CPU, so that encoding runs there (``ImageEngine._prompt_embeds``).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import accel
from .common import error_text, log, peak_gib, peak_reserved_gib, reset_peak, stats, sync

FULL_LATENCY: dict[str, Any] = {"size": (1024, 1024), "steps": 8, "interval_s": 2.0, "jitter_s": 0.5, "idle_requests": 5,
                "training_requests": 6, "min_requests": 3, "training_budget_s": 120.0, "target_ratio": 1.3}
TINY_LATENCY: dict[str, Any] = {"size": (64, 64), "steps": 2, "interval_s": 0.25, "jitter_s": 0.05, "idle_requests": 3,
                "training_requests": 3, "min_requests": 3, "training_budget_s": 30.0, "target_ratio": 1.3}
_PROMPT_SUBJECTS = ("a lighthouse on a cliff", "a bowl of ramen", "a fox in the snow", "a robot gardener",
                    "a street market at dusk", "a glass teapot", "an astronaut on a beach", "a koi pond",
                    "a vintage motorbike", "a paper lantern festival", "a desert canyon", "a cosy library")
_PROMPT_STYLES = ("watercolour", "35mm photograph, natural light", "isometric 3d render, soft shadows",
                  "oil painting with thick brush strokes and a warm palette")
PROMPT_TEXTS = (*_PROMPT_SUBJECTS, *_PROMPT_STYLES, "request idle train")  # what fresh_prompts() is made of


def fresh_prompts(count: int, tag: str) -> list[str]:
    """Prompts no cache has seen (the tag keeps idle and training requests apart)."""
    return [f"{_PROMPT_SUBJECTS[i % len(_PROMPT_SUBJECTS)]}, {_PROMPT_STYLES[i % len(_PROMPT_STYLES)]}, "
            f"request {tag}-{i}" for i in range(count)]


def load_engine(pipe, data_dir, lcfg: dict):
    """The worker's ImageEngine on `pipe` (its speed path applied), warmed at the measured size with the
    worker's two warm-up prompts (so the caption length is already dynamic when compiled)."""
    from zimage_protocol.messages import GenerateParams

    from ..engine import ImageEngine

    engine = ImageEngine("bench", data_dir)
    engine.load(pipe=pipe)
    width, height = lcfg["size"]
    started, graphs_before = time.perf_counter(), accel.compiled_graph_count()
    accel.warm_up_buckets(lambda w, h, steps, prompt: engine.generate(
        GenerateParams(prompt=prompt, width=w, height=h, steps=steps, seeds=[0])),
        sizes=((width, height), (width, height)), steps=lcfg["steps"])
    info = {"accel": vars(engine.accel).copy(), "warm_up_s": round(time.perf_counter() - started, 2),
            "graphs_compiled_in_warm_up": accel.compiled_graph_count() - graphs_before}
    log(f"  engine for the latency test: compiled={engine.accel.compiled}, warm-up {info['warm_up_s']} s")
    return engine, info


def gpu_thread() -> ThreadPoolExecutor:
    """The worker's GPU thread (scheduler.GpuScheduler._gpu). Everything that touches the model runs on it:
    torch keeps dynamo/inductor settings per thread, and the worker applies them on this thread."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")


def on_thread_settings(engine) -> None:
    """What ImageEngine.load -> accel.apply set on the thread it ran on, for an engine loaded elsewhere."""
    if engine.accel.compiled or engine.accel.compiled_vae:
        accel.configure_compile_cache(engine.accel.cache_dir or engine.data_dir / "compile-cache")
        accel.raise_recompile_limit()


def measure_latency(gpu: ThreadPoolExecutor, engine, trainer, lcfg: dict, prompts: list[str], budget_s: float,
                    warm_prompt: str | None = None) -> dict:
    """Generations submitted to the one GPU thread `gpu`; with `trainer`, training steps run in between."""
    from zimage_protocol.messages import GenerateParams

    width, height = lcfg["size"]
    stop = threading.Event()
    step_seconds: list[float] = []
    failures: list[str] = []

    def job(prompt: str, seed: int) -> tuple[float, float, float]:  # scheduler._generate_on_gpu
        started = time.perf_counter()
        if trainer is not None:
            trainer.suspend()
        try:
            engine._prompt_embeds(prompt)  # what generate() does first; timed apart
            sync()
            encoded = time.perf_counter()
            engine.generate(GenerateParams(prompt=prompt, width=width, height=height, steps=lcfg["steps"],
                                           seeds=[seed]))
            sync()
        finally:
            if trainer is not None:
                trainer.resume()
        return started, encoded - started, time.perf_counter()

    def one_step() -> None:
        started = time.perf_counter()
        trainer.step()
        step_seconds.append(time.perf_counter() - started)

    def drive() -> None:  # TrainingSession.run: the next step is submitted when the previous one is done
        while not stop.is_set():
            try:
                gpu.submit(one_step).result()
            except Exception as exc:  # noqa: BLE001 - reported, and the generations go on
                failures.append(error_text(exc))
                return

    def request(prompt: str, seed: int) -> dict:
        submitted = time.perf_counter()
        started, encode_s, finished = gpu.submit(job, prompt, seed).result()
        done = time.perf_counter()
        return {"latency_s": done - submitted, "wait_s": started - submitted, "encode_s": encode_s,
                "generate_s": finished - started - encode_s}

    driver = threading.Thread(target=drive, name="training-session", daemon=True) if trainer is not None else None
    result: dict = {"training": trainer is not None, "size": f"{width}x{height}", "steps": lcfg["steps"]}
    reset_peak()
    phase_started, graphs_before = time.perf_counter(), accel.compiled_graph_count()
    try:
        if driver is not None:
            driver.start()
            time.sleep(lcfg["interval_s"])
        if warm_prompt is not None:  # a prompt cached before: this one measures graph changes only
            first = request(warm_prompt, 99)
            result["first_request"] = {k: round(v, 3) for k, v in first.items()}
            log(f"  first request while training (cached prompt): {first['latency_s']:.2f} s")
        rng, records = random.Random(0), []
        next_submit = measure_started = time.perf_counter()  # the budget counts from here
        for index, prompt in enumerate(prompts):
            elapsed = time.perf_counter() - measure_started
            if (index >= lcfg["min_requests"] and elapsed > budget_s) or (index and elapsed > 1.5 * budget_s):
                break
            time.sleep(max(0.0, next_submit - time.perf_counter()))
            submitted = time.perf_counter()
            records.append(request(prompt, 1000 + index))
            next_submit = max(submitted + lcfg["interval_s"] + rng.uniform(-lcfg["jitter_s"], lcfg["jitter_s"]),
                              time.perf_counter() + lcfg["interval_s"] / 2)
    finally:
        stop.set()
        if driver is not None:
            driver.join()
    for key in ("latency_s", "wait_s", "encode_s", "generate_s"):
        result[key] = stats([record[key] for record in records], 3)
    result["peak_gib"] = peak_gib()
    result["peak_reserved_gib"] = peak_reserved_gib()
    result["phase_s"] = round(time.perf_counter() - phase_started, 2)
    result["graphs_compiled"] = accel.compiled_graph_count() - graphs_before
    if trainer is not None:
        result["training_steps_during"] = len(step_seconds)
        result["training_step_s"] = stats(step_seconds, 4)
        result["training_error"] = failures[0] if failures else None
    log(f"  {'while training' if trainer is not None else 'idle'}: median {result['latency_s'].get('median_s')} s "
        f"over {len(records)} (encode {result['encode_s'].get('median_s')} s, wait {result['wait_s'].get('median_s')} s)")
    return result


def assess(idle: dict, training: dict, target_ratio: float) -> dict | None:
    base = (idle.get("latency_s") or {}).get("median_s")
    loaded = (training.get("latency_s") or {}).get("median_s")
    if not base or loaded is None:
        return None
    ratio = loaded / base
    return {"idle_median_s": base, "training_median_s": loaded, "ratio": round(ratio, 2),
            "target_ratio": target_ratio, "met": ratio <= target_ratio,
            "over_target_s": round(loaded - target_ratio * base, 3)}


def compare_encodings(engine, prompts: list[str]) -> dict:
    """While a LoRA trains (its trainer moved the text encoder to the host): a new prompt's encoding streamed through
    the GPU (gpu/streamed_encoder.py, what the worker does) against the same encoding on the CPU (what it did before),
    and the streamed embedding's largest difference from the one the encoder made while on the GPU (the prompts were
    encoded in the idle phase), relative to that embedding's largest magnitude. Run on the GPU thread."""
    import torch

    encoder = engine.pipe.text_encoder
    rows: list[dict] = []
    for prompt in prompts:
        reference = engine._prompt_cache.get(prompt)
        started = time.perf_counter()
        streamed = engine.encode_unpadded(prompt)
        sync()
        streamed_s = time.perf_counter() - started
        tokens = engine.tokenizer(engine._templated(prompt), return_tensors="pt")
        started = time.perf_counter()
        with torch.inference_mode():
            encoder(input_ids=tokens.input_ids.to(encoder.device), attention_mask=tokens.attention_mask.bool().to(
                encoder.device), output_hidden_states=True)
        cpu_s = time.perf_counter() - started
        row = {"tokens": int(tokens.input_ids.shape[1]), "streamed_s": round(streamed_s, 3), "cpu_s": round(cpu_s, 3),
               "encoder_device": str(encoder.device)}
        if reference is not None:
            expected = reference[0].float()
            row["relative_max_diff"] = float((streamed.float().to(expected.device) - expected).abs().max()
                                             / expected.abs().max())
        rows.append(row)
    return {"prompts": rows, "streamed_s": stats([row["streamed_s"] for row in rows], 3),
            "cpu_s": stats([row["cpu_s"] for row in rows], 3)}
