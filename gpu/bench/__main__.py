"""The benchmark's command line and the order of its phases (see gpu/bench/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ..process_env import apply_process_env_defaults
from . import __doc__ as PACKAGE_DOC
from . import enhancer as en
from . import latency as lat
from . import lora as lr
from . import training as tr
from .build import build_pipeline, environment_info
from .children import HOST_LOAD_ENV, phase_child, spawn_child
from .common import error_text, free_memory, log, timed
from .engine_phases import engine_phases
from .inference import (
    FULL,
    TIMING_PROMPT,
    TINY,
    attention_microbench,
    image_difference,
    make_queue,
    postprocess_microbench,
    profile_one,
    run_ours,
    run_stock,
)
from .report import render_report

SECTIONS = ("inference", "lora", "training", "latency", "enhancer")
# --restart-baseline: the second --from-disk restart, {name: (results key, environment, title)}
RESTART_BASELINES = {
    # Session 11 measured HF_ENABLE_PARALLEL_LOADING=yes against this (no gain; not the worker's default).
    "parallel-shards": ("warm_start_parallel_shards", {"HF_ENABLE_PARALLEL_LOADING": "yes"},
                        "a sharded component's files read in parallel (HF_ENABLE_PARALLEL_LOADING=yes)"),
    "host-load": ("warm_start_host_load", {HOST_LOAD_ENV: "1"}, "the folder read to the host, then moved to the GPU"),
}
TRAINING_COLUMNS = ("stock", "ours", "ours_compiled_no_graphs", "ours_compiled_sync")  # --skip-columns


def phase_main(args) -> dict:
    started = time.perf_counter()

    def left() -> float:
        return args.deadline_s - (time.perf_counter() - started)

    sections = set(args.sections)
    tiny = args.tiny
    cfg = TINY if tiny else FULL
    results: dict = {"info": environment_info(tiny), "sections": [s for s in SECTIONS if s in sections],
                     "config": {"command": "python -m gpu.bench " + " ".join(sys.argv[1:])}}
    work_dir = Path(tempfile.mkdtemp(prefix="zimage-bench-train-"))
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    if "training" in sections:
        tcfg = tr.TINY_TRAIN if tiny else tr.FULL_TRAIN
        results["training"] = {"config": {**tcfg, "target_modules": list(tr.TARGET_MODULES),
                                          "skipped_columns": sorted(args.skip_columns)}, "columns": {}}
    if "latency" in sections:
        results["latency"] = {"config": dict(lat.TINY_LATENCY if tiny else lat.FULL_LATENCY)}

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    log(f"{results['info']['mode']} on {results['info']['device']}; sections {results['sections']}")
    holder: dict = {}
    results["build_s"] = round(timed(lambda: holder.__setitem__("pipe", build_pipeline(tiny))), 2)
    pipe = holder.pop("pipe")
    log(f"built the pipeline in {results['build_s']:.1f} s")

    # Training on the pipeline as built (not compiled yet): the baseline loop and ours eager.
    if "training" in sections:
        tr.run_section(pipe, results["training"]["config"], work_dir, results["training"], left)
        save()

    engine = None
    if "inference" in sections:
        queue = make_queue(cfg, tiny)
        results["config"].update({**cfg, "queue_requests": queue})
        results["columns"] = {}
        if not tiny:
            results["attention_microbench"] = attention_microbench()
            log(f"attention micro-bench: {results['attention_microbench']}")
        log("stock diffusers (eager)")
        results["columns"]["stock"], stock_run_one = run_stock(pipe, cfg, queue, tiny)
        reference = first_image(stock_run_one, cfg)  # before ours compiles and changes the shared pipe
        if args.profile and not tiny:
            results["profile"] = {"stock": profile_one(stock_run_one, cfg)}
        if not tiny:
            results["postprocess_microbench"] = postprocess_microbench(pipe)
            log(f"postprocess micro-bench: {results['postprocess_microbench']}")
        save()
        log(f"ours (ImageEngine, DATA_DIR={data_dir}, env {results['info']['env']})")
        try:
            results["columns"]["ours"], ours_run_one, engine = run_ours(pipe, cfg, queue, data_dir, "bench")
            results["columns"]["ours"]["vs_stock_image"] = image_difference(reference, first_image(ours_run_one, cfg))
            log(f"  same seed as stock: {results['columns']['ours']['vs_stock_image']}")
            if args.profile and not tiny:
                results["profile"]["ours"] = profile_one(ours_run_one, cfg)
        except Exception as exc:  # noqa: BLE001 - keep the stock numbers and the other columns
            log(f"ours failed: {error_text(exc)}")
            results["columns"]["ours"] = {"error": error_text(exc)}
        save()
        if "lora" in sections and engine is not None:
            log("LoRA hot-swap on the worker's engine")
            try:
                results["lora"] = lr.run_section(engine, lr.TINY_LORA if tiny else lr.FULL_LORA, work_dir, left)
            except Exception as exc:  # noqa: BLE001 - keep what was measured
                log(f"LoRA section failed: {error_text(exc)}")
                results["lora"] = {"error": error_text(exc)}
            save()

    if "enhancer" in sections:
        results["enhancer"] = enhancer_section(pipe, engine, tiny, data_dir)
        save()

    if sections & {"training", "latency"}:
        try:
            engine_phases(pipe, engine, results, tiny, work_dir, data_dir, left, save, profile=args.profile)
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            log(f"training/latency phases failed: {error_text(exc)}")
            results["engine_phases_error"] = error_text(exc)
        save()

    if "training" in sections:
        columns, tcfg = results["training"]["columns"], results["training"]["config"]
        results["training"]["target"] = {name: tr.assess(columns[name], tcfg) for name in
                                         ("ours", "ours_compiled_no_graphs", "ours_compiled")
                                         if name in columns and "error" not in columns[name]}
    if "inference" in sections:
        inference_children(args, pipe, cfg, results, data_dir, left, save, reference)
    results["total_s"] = round(time.perf_counter() - started, 1)
    save()
    return results


def enhancer_section(pipe, engine, tiny: bool, data_dir: Path) -> dict:
    """The enhancer on the inference section's engine, or on one loaded here (not warmed: it needs no transformer)."""
    log("prompt enhancer: tokens/s of a rewrite")
    try:
        if engine is None:
            from ..engine import ImageEngine

            engine = ImageEngine("bench", data_dir)
            engine.load(pipe=pipe)
        return en.run_section(engine, en.TINY_ENHANCER if tiny else en.FULL_ENHANCER)
    except Exception as exc:  # noqa: BLE001 - keep what the other sections measured
        log(f"enhancer section failed: {error_text(exc)}")
        return {"error": error_text(exc)}


def first_image(run_one, cfg: dict):
    """The timing prompt at the first timing size, seed 0: the image compared across columns."""
    width, height = cfg["timing_sizes"][0]
    made = run_one(width, height, TIMING_PROMPT, 0)[0]
    return getattr(made, "image", made)  # ours: a GeneratedImage; stock: the PIL image


def inference_children(args, pipe, cfg: dict, results: dict, data_dir: Path, left, save, reference=None) -> None:
    """--variant columns (same process), then the warm-start and fp8 child processes."""
    queue = results["config"]["queue_requests"]
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
            results["columns"][column], run_one, _ = run_ours(pipe, cfg, queue, data_dir, "bench")
            if reference is not None:
                results["columns"][column]["vs_stock_image"] = image_difference(reference, first_image(run_one, cfg))
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
            results["columns"][column] = {"error": error_text(exc)}
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved
        save()
    del pipe
    free_memory()
    model_dir = None
    if args.from_disk:
        model_dir = Path(tempfile.mkdtemp(prefix="zimage-bench-model-"))
        log(f"saving the random pipeline to {model_dir} (child process)")
        results["saved_model"] = spawn_child(args, "save", data_dir, {}, left() - 60, model_dir=model_dir)
        log(f"  {results['saved_model']}")
    log("warm start: a new process with the compile cache populated" + (", loading from disk" if model_dir else ""))
    results["warm_start"] = spawn_child(args, "warm-start", data_dir, {}, left() - 15, model_dir=model_dir)
    log(f"  {results['warm_start']}")
    save()
    if model_dir is not None and left() > 90:  # the baseline: the same restart, loaded another way
        key, env, title = RESTART_BASELINES[args.restart_baseline]
        log(f"warm start, baseline: {title}")
        results[key] = spawn_child(args, "warm-start", data_dir, env, left() - 15, model_dir=model_dir)
        log(f"  {results[key]}")
        save()
    # Child processes with a cold cache each; 16gb hands the pipeline over on the CPU, under a 16 GiB cap.
    for wanted, column, env in ((args.fp8, "ours fp8", {"ZIMAGE_QUANT": "fp8"}),
                                (args.vram16, "ours 16gb", {"ZIMAGE_VRAM": "16gb"})):
        if not wanted:
            continue
        if left() < 150:
            results["columns"][column] = {"error": "skipped: out of time"}
        else:
            child_dir = Path(tempfile.mkdtemp(prefix="zimage-bench-child-"))
            log(f"{column}: {env} (child process, cold cache in {child_dir})")
            results["columns"][column] = spawn_child(args, "ours", child_dir, env, left() - 5)
        save()


def _training_columns(text: str) -> set[str]:
    names = set(filter(None, text.split(",")))
    unknown = names - set(TRAINING_COLUMNS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown training column(s) {sorted(unknown)}; known: {list(TRAINING_COLUMNS)}")
    return names


def _sections(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are a comma-separated subset of {','.join(SECTIONS)}")
    if "lora" in chosen and "inference" not in chosen:
        raise argparse.ArgumentTypeError("the lora section runs on the inference section's engine: add inference")
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench", description=PACKAGE_DOC.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny pipeline (automatic without CUDA)")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--sections", type=_sections, default=list(SECTIONS),
                        help="comma-separated subset of inference,lora,training,latency,enhancer "
                             "(default: all; lora needs inference)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="DATA_DIR for ours (its compile-cache/ is reused); default: a fresh temporary folder")
    parser.add_argument("--variant", action="append", metavar="KEY=VALUE",
                        help="extra inference column: ours with this environment setting, e.g. "
                             "ZIMAGE_COMPILE_VAE=on (repeatable; same process, same compile cache)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one image of stock and of ours (GPU kernel time by category) and three "
                             "compiled training steps (GPU busy vs wall time)")
    parser.add_argument("--fp8", action="store_true", help="extra column: ours with ZIMAGE_QUANT=fp8 (needs torchao)")
    parser.add_argument("--vram16", action="store_true",
                        help="extra column: ours with ZIMAGE_VRAM=16gb, loaded from the CPU (needs torchao)")
    parser.add_argument("--deadline-s", type=float, default=560.0,
                        help="skip optional phases that would not fit in this many seconds")
    parser.add_argument("--skip-columns", type=_training_columns, default=set(),
                        metavar="NAMES", help="training columns to leave out when device time is short: "
                                              "stock,ours,ours_compiled_no_graphs,ours_compiled_sync")
    parser.add_argument("--from-disk", action="store_true",
                        help="warm start loads the random pipeline with from_pretrained from a saved folder (as the "
                             "worker loads a model) instead of building it in the new process")
    parser.add_argument("--restart-baseline", choices=sorted(RESTART_BASELINES), default="host-load",
                        help="--from-disk: the second restart, loaded another way (default: host-load)")
    card = parser.add_argument_group("card run (gpu/bench/card.py): a consumer card under a hard allocator cap")
    card.add_argument("--card", type=float, default=None, metavar="GIB",
                      help="instead of the sections: one process capped at GIB (22: a 24 GB card, 15: a 16 GB card, "
                           "0: no cap): load from --model, warm-up, --images images, --train-steps training steps "
                           "with /imagine interleaved, an image with the trained LoRA")
    card.add_argument("--model", type=Path, default=None,
                      help="model folder for --card (default /tmp/zimage-random; the random full-size pipeline is "
                           "saved there first if missing)")
    card.add_argument("--images", type=int, default=30, help="--card: 1024x1024 images timed (default 30)")
    card.add_argument("--train-steps", type=int, default=200, help="--card: training steps (default 200)")
    card.add_argument("--imagine-every", type=int, default=25,
                      help="--card: an /imagine between two training steps every N steps (default 25; 0: none)")
    parser.add_argument("--phase", choices=["main", "warm-start", "ours", "save"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    apply_process_env_defaults(os.environ)  # as the worker does (gpu/__main__.py), before torch allocates
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
    if args.card is not None:
        from .card import render_card, run_card

        if args.tiny:  # the CPU smoke run of the card path: the quantized worker that runs there (int8)
            os.environ.setdefault("ZIMAGE_QUANT", "int8")
        card_results = run_card(args)
        if args.json:
            Path(args.json).write_text(json.dumps(card_results, indent=2, default=str))
        print(render_card(card_results), flush=True)
        return 0
    results = phase_main(args)
    print(render_report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
