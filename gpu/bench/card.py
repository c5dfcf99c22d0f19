"""A consumer card on the big GPU: one process under a hard allocator cap, the worker's own path end to end.

``python -m gpu.bench --card 22`` stands in for a 24 GB card, ``--card 15`` for a 16 GB card
(``torch.cuda.set_per_process_memory_fraction``: the caching allocator may hold no more than that;
``--card 0``: no cap, the H200 itself). In that one process, in order:

1. **load**: ImageEngine.load from a model folder on disk (``--model``, default /tmp/zimage-random: the
   full-size architecture with random weights, saved by a child process first if missing), the profile
   picked from the card (gpu/profiles.py: the cap counts as the card's memory) and logged;
2. **warm-up**: the worker's warm-up (every aspect bucket when compiled);
3. **images**: ``--images`` images (default 30) at 1024x1024, 8 steps, fresh prompts: s/image;
4. **training**: ``--train-steps`` steps (default 200) of the recipe (512 px, rank 64) on the realistic
   75-photo set (gpu/bench/training.py), with an /imagine at 1024x1024 every ``--imagine-every`` steps
   run between two steps as gpu/scheduler.py does (suspend, generate, resume): s/step and the projected
   minutes for 4000 steps, /imagine latency while training;
5. **lora image**: the trained LoRA saved (the worker's checkpoint format) and used in one 1024x1024 image
   through the worker's LoRA backend.

Each phase reports its seconds, the peak reserved and allocated memory, and "no OOM" or the error; an
out-of-memory in one phase is recorded and the next phases still run where they can.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import GIB, error_text, free_memory, log, peak_gib, peak_reserved_gib, reset_peak, stats, sync
from .photo_set import write_dataset

DEFAULT_MODEL_DIR = Path("/tmp/zimage-random")
SIZE, STEPS = (1024, 1024), 8
TINY_SIZE, TINY_STEPS = (128, 128), 2
PROJECTED_STEPS = 4000


def ensure_model(model_dir: Path, tiny: bool) -> dict:
    """The random full-size pipeline as a model folder (built and saved by a child process when missing)."""
    if (model_dir / "model_index.json").is_file():
        return {"model_dir": str(model_dir), "built": False}
    log(f"saving the random pipeline to {model_dir} (child process)")
    started = time.perf_counter()
    command = [sys.executable, "-m", "gpu.bench", "--phase", "save", "--data-dir", str(model_dir.parent),
               "--model-dir", str(model_dir), "--child-json", os.devnull, "--spawned-at", repr(time.time())]
    subprocess.run(command + (["--tiny"] if tiny else []), check=True)
    return {"model_dir": str(model_dir), "built": True, "build_and_save_s": round(time.perf_counter() - started, 1)}


def set_cap(cap_gib: float) -> dict:
    import torch

    if cap_gib <= 0 or not torch.cuda.is_available():
        return {"cap_gib": None}
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
    return {"cap_gib": cap_gib, "device_gib": round(total / GIB, 1)}


def _phase(results: dict, name: str, fn) -> dict:
    """Run one phase: its seconds, peak memory, and "no OOM" or what went wrong."""
    import torch

    log(f"card: {name}")
    reset_peak()
    started = time.perf_counter()
    entry: dict = {}
    try:
        entry.update(fn() or {})
        entry["oom"] = "no OOM"
    except torch.OutOfMemoryError as exc:
        entry["oom"] = "OOM"
        entry["error"] = error_text(exc)
    except Exception as exc:  # noqa: BLE001 - the next phases still run
        entry["oom"] = "no OOM" if "out of memory" not in str(exc).lower() else "OOM"
        entry["error"] = error_text(exc)
    sync()
    entry["seconds"] = round(time.perf_counter() - started, 2)
    entry["peak_reserved_gib"], entry["peak_allocated_gib"] = peak_reserved_gib(), peak_gib()
    results["phases"][name] = entry
    log(f"  {name}: {json.dumps({k: v for k, v in entry.items() if not isinstance(v, (list, dict))})}")
    return entry


def _generate(engine, prompt: str, seed: int, size, steps: int, loras=()) -> float:
    """One /imagine as gpu/scheduler.py runs it (LoRA state first when LoRAs are in play); its seconds."""
    from zimage_protocol.messages import GenerateParams

    sync()
    started = time.perf_counter()
    if loras or engine.uses_adapters:
        engine.adapters().activate(list(loras))
    engine.generate(GenerateParams(prompt=prompt, width=size[0], height=size[1], steps=steps, seeds=[seed]))
    sync()
    return time.perf_counter() - started


def run_card(args) -> dict:
    from ..engine import ImageEngine
    from . import training as tr

    tiny = args.tiny
    size, steps = (TINY_SIZE, TINY_STEPS) if tiny else (SIZE, STEPS)
    tcfg = dict(tr.TINY_TRAIN if tiny else tr.FULL_TRAIN)
    model_dir = Path(args.model or DEFAULT_MODEL_DIR)
    work = Path(args.data_dir or f"/tmp/zimage-card-{args.card:g}")
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"card": {"model": ensure_model(model_dir, tiny), **set_cap(args.card)}, "phases": {},
                     "config": {"images": args.images, "train_steps": args.train_steps, "size": list(size),
                                "steps": steps, "imagine_every": args.imagine_every, **tcfg}}
    if not tiny:
        import torch

        results["card"]["gpu"] = torch.cuda.get_device_name(0)
    engine = ImageEngine(str(model_dir), work)

    def load():
        engine.load_tokenizer()
        engine.load()
        return {"profile": engine.profile.name, "pick": engine.profile_line, "quant": engine.accel.quant,
                "compiled": engine.accel.compiled, "notes": engine.accel.notes}

    if "error" in _phase(results, "load", load):
        return results
    results["card"]["profile"] = engine.profile.name
    _phase(results, "warm-up", engine.warm_up)

    def images():
        times = [_generate(engine, f"a card benchmark photo number {index}, a red fox in snow", index, size, steps)
                 for index in range(args.images)]
        return {"s_per_image": stats(times[1:] if len(times) > 1 else times)}

    _phase(results, "images", images)
    holder: dict = {}
    _phase(results, "training", lambda: _train(engine, tcfg, work, args, size, steps, holder))
    if "lora" in holder:
        _phase(results, "lora image", lambda: {"s": round(_generate(
            engine, "a photo of sks dog in a garden", 5, size, steps, [("trained", holder["lora"], 1.0)]), 3)})
    free_memory()
    return results


def _train(engine, tcfg: dict, work: Path, args, size, steps: int, holder: dict) -> dict:
    """The recipe on the realistic set, /imagine interleaved between steps as the scheduler does."""
    import shutil

    from ..training.trainer import LoraTrainer
    from . import training as tr

    dataset = work / "dataset"
    if not (dataset / "manifest.json").is_file():
        write_dataset(dataset, tcfg["images"], tcfg["resolution"])
    output = work / "training"
    shutil.rmtree(output / "checkpoints", ignore_errors=True)  # a fresh run, not a resumed one
    config = tr.train_config(tcfg)
    config.steps = config.checkpoint_every = args.train_steps
    trainer = LoraTrainer(engine.pipe, dataset, output, config)
    started = time.perf_counter()
    step_s, imagine_s = [], []
    try:
        trainer.prepare()
        prepare_s = time.perf_counter() - started
        sync()
        last = time.perf_counter()
        for step in range(args.train_steps):
            # From one step's return to the next: a pipelined step returns before the GPU has finished it
            # (gpu/training/pending.py), so timing each call between two syncs would undo what it gains.
            trainer.step()
            step_s.append(time.perf_counter() - last)
            last = time.perf_counter()
            if args.imagine_every and (step + 1) % args.imagine_every == 0:
                trainer.suspend()  # gpu/scheduler.py around a generation
                try:
                    imagine_s.append(_generate(engine, f"an /imagine while training, request {step}", step, size, steps))
                finally:
                    trainer.resume()
                sync()
                last = time.perf_counter()
        checkpoint = trainer.save_checkpoint()
        holder["lora"] = str(checkpoint.lora_file)
        losses = trainer.losses
    finally:
        trainer.close()
    steady = step_s[len(step_s) // 5:] or step_s  # the first fifth: allocator and kernel warm-up
    median = stats(steady)["median_s"]
    return {"prepare_s": round(prepare_s, 2), "s_per_step": stats(steady), "first_steps_s": [round(t, 3) for t in step_s[:5]],
            "projected_min_4000": round(median * PROJECTED_STEPS / 60, 1), "imagine_while_training_s": stats(imagine_s, 3),
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)], "lora_file": holder["lora"]}


def render_card(results: dict) -> str:
    card = results["card"]
    cap = f"{card['cap_gib']:g} GiB cap" if card.get("cap_gib") else "no cap"
    lines = [f"### Card run: {cap} on {card.get('gpu', 'CPU')}, profile {card.get('profile', '?')}",
             "", "| phase | seconds | figure | peak reserved GiB | peak allocated GiB | OOM |", "|---|---|---|---|---|---|"]
    for name, entry in results["phases"].items():
        figure = entry.get("error", "")
        if "s_per_image" in entry:
            figure = f"{entry['s_per_image'].get('median_s')} s/image"
        elif "s_per_step" in entry:
            figure = (f"{entry['s_per_step'].get('median_s')} s/step = {entry['projected_min_4000']} min for 4000; "
                      f"/imagine while training {entry['imagine_while_training_s'].get('median_s')} s")
        elif name == "load":
            figure = entry.get("pick", figure)
        lines.append(f"| {name} | {entry['seconds']} | {figure} | {entry['peak_reserved_gib']} | "
                     f"{entry['peak_allocated_gib']} | {entry['oom']} |")
    return "\n".join(lines)
