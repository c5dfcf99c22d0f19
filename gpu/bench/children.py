"""Child processes of the benchmark: cold start with a warm compile cache, and 'ours' in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import accel
from ..quantize import LOW_VRAM_ALLOC_CONF
from .build import build_pipeline
from .common import free_memory, peak_gib, sync
from .inference import FULL, TIMING_PROMPT, TINY, make_queue, run_ours


def phase_child(args) -> dict:
    """A fresh process: build, ImageEngine.load + warm_up, first image (warm-start); or full 'ours'."""
    spawned_at = args.spawned_at
    marks = {"imports_s": time.time() - spawned_at}
    import torch

    marks["imports_s"] = round(time.time() - spawned_at, 3)
    import diffusers  # noqa: F401 - apart from the build: slow from a --no-compile wheel folder
    import transformers  # noqa: F401

    marks["libraries_s"] = round(time.time() - spawned_at, 3)
    cfg = TINY if args.tiny else FULL
    if args.phase == "save":  # the random pipeline as a model folder, for a warm start that really loads
        pipe = build_pipeline(args.tiny)
        pipe.save_pretrained(args.model_dir)
        size = sum(f.stat().st_size for f in Path(args.model_dir).rglob("*") if f.is_file())
        return {"saved_s": round(time.time() - spawned_at, 3), "mib": round(size / 2**20, 1)}
    if args.phase == "warm-start" and args.model_dir:
        return _warm_start(args, cfg, marks, pipe=None)
    pipe = build_pipeline(args.tiny)
    sync()
    marks["built_s"] = round(time.time() - spawned_at, 3)
    if args.phase == "ours":
        if os.environ.get("ZIMAGE_VRAM") == "16gb":  # as from_pretrained hands it over: on the CPU
            pipe.to("cpu")
            free_memory()
            marks["moved_to_cpu_s"] = round(time.time() - spawned_at, 3)
            if torch.cuda.is_available():  # a 16 GiB card: the caching allocator may hold no more than that
                total = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, (16 << 30) / total))
                marks["memory_cap_gib"] = 16
        queue = make_queue(cfg, args.tiny)
        result, _, _ = run_ours(pipe, cfg, queue, args.data_dir, "bench")
        result["process_marks"] = marks
        return result
    return _warm_start(args, cfg, marks, pipe)


# Set in a warm-start child: load the folder as stock diffusers does (host first), the baseline of the worker's load.
HOST_LOAD_ENV = "ZIMAGE_BENCH_HOST_LOAD"


def _warm_start(args, cfg: dict, marks: dict, pipe) -> dict:
    """ImageEngine.load (of `pipe`, or from --model-dir as the worker loads) + warm_up + first image."""
    from zimage_protocol.messages import GenerateParams

    from ..engine import ImageEngine

    spawned_at = args.spawned_at
    engine = ImageEngine(str(args.model_dir) if pipe is None else "bench", args.data_dir)
    graphs_before = accel.compiled_graph_count()
    if pipe is None and os.environ.get(HOST_LOAD_ENV) == "1":  # the baseline: read to the host, then .to("cuda")
        from ..engine import device_and_dtype, load_pipeline

        engine.load_tokenizer()
        engine.load(pipe=load_pipeline(str(args.model_dir), device_and_dtype()[1], device=None))
        marks["from_pretrained"] = "to the host, then moved"
    elif pipe is None:  # the worker's order: tokenizer first, then from_pretrained + the speed path
        engine.load_tokenizer()
        engine.load()
        marks["from_pretrained"] = "the worker's load (gpu/engine.py load_pipeline)"
    else:
        engine.load(pipe=pipe)
    marks["loaded_s"] = round(time.time() - spawned_at, 3)
    engine.warm_up()
    sync()
    marks["ready_s"] = round(time.time() - spawned_at, 3)
    width, height = cfg["timing_sizes"][0]
    engine.generate(GenerateParams(prompt=TIMING_PROMPT, width=width, height=height, steps=cfg["steps"], seeds=[7]))
    sync()
    marks["first_image_s"] = round(time.time() - spawned_at, 3)
    return {"process_marks": marks, "warm_up_per_size": engine.warm_up_timings,
            "graphs_compiled": accel.compiled_graph_count() - graphs_before, "peak_gib": peak_gib(),
            "accel": vars(engine.accel).copy()}


def spawn_child(args, phase: str, data_dir: Path, env_extra: dict, timeout_s: float, model_dir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "child.json"
        command = [sys.executable, "-m", "gpu.bench", "--phase", phase, "--data-dir", str(data_dir),
                   "--child-json", str(out)]
        if model_dir is not None:
            command += ["--model-dir", str(model_dir)]
        if args.tiny:
            command.append("--tiny")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        if env.get("ZIMAGE_VRAM") == "16gb":
            env.setdefault("PYTORCH_CUDA_ALLOC_CONF", LOW_VRAM_ALLOC_CONF)  # as gpu/__main__.py does
        command += ["--spawned-at", repr(time.time())]  # taken last: the child's clock starts here
        try:
            completed = subprocess.run(command, env=env, timeout=max(timeout_s, 1), check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if completed.returncode != 0 or not out.exists():
            return {"error": f"child exited with {completed.returncode}"}
        return json.loads(out.read_text())
