"""LoRA training: a plain peft loop (the baseline) vs gpu/training/trainer.py's LoraTrainer, eager and compiled.

Both train on the same synthetic dataset, batch 1, at the same rank, alpha and target modules: the realistic
photo set of photo_set.py (ten sizes, both orientations, captions of 5-60 words). Each
trainer column reports its step shapes (what a compiled step records graphs for: padded by
gpu/training/shapes.py when compiled, unpadded otherwise) and the unpadded count.

Seconds per step are the median of ``timed_steps`` steps after one epoch of warm-up steps (every
image seen once, so a compiled transformer has met every shape before the timing starts; two with
CUDA graphs, since a shape is recorded on its second step). The warm-up's compile and recording
time is reported apart (``warm_up_overhead_s``: what its steps took beyond the steady median), and
the projected minutes for ``projected_steps`` both without it (steps only, as in earlier runs) and
with it. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps, after
``reset_peak_memory_stats``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .. import accel
from ..training.pending import can_pipeline
from .common import (
    GIB,
    error_text,
    free_memory,
    log,
    memory_breakdown,
    peak_gib,
    peak_reserved_gib,
    reset_peak,
    stats,
    sync,
    timed,
)
from .photo_set import describe_dataset, write_dataset

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
FULL_TRAIN: dict[str, Any] = {"resolution": 512, "rank": 64, "alpha": 64, "images": 75, "timed_steps": 20,
              "projected_steps": 4000, "target_minutes": 5.0, "target_peak_gib": 20.0}
TINY_TRAIN: dict[str, Any] = {"resolution": 64, "rank": 4, "alpha": 4, "images": 10, "timed_steps": 3,
              "projected_steps": 4000, "target_minutes": 5.0, "target_peak_gib": 20.0}
LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 2e-4, 1e-4, 1.0  # the trainer's defaults, for both loops
def train_config(tcfg: dict):
    from ..training.config import TrainConfig

    return TrainConfig(rank=tcfg["rank"], alpha=tcfg["alpha"], resolution=tcfg["resolution"], steps=10**6,
                       checkpoint_every=10**6, keep_checkpoints=1, learning_rate=LEARNING_RATE,
                       weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, target_modules=TARGET_MODULES)


def _summary(warm: list[float], times: list[float], tcfg: dict) -> dict:
    """Steady s/step (the timed steps), and the warm-up apart: its compile and recording time is what its steps
    took beyond the steady median. Projected minutes: steps only (as earlier runs), and with that warm-up."""
    step = stats(times)
    median = step.get("median_s")
    overhead = sum(max(0.0, t - median) for t in warm) if median else None
    slowest = sorted(range(len(warm)), key=lambda i: -warm[i])[:5]
    out = {"s_per_step": step, "warm_up_steps_s": [round(t, 3) for t in warm], "warm_up_steps": len(warm),
           "warm_up_s": round(sum(warm), 2), "warm_up_overhead_s": round(overhead, 2) if overhead is not None else None,
           "slowest_warm_up_steps": [[i + 1, round(warm[i], 2)] for i in sorted(slowest)],
           "projected_minutes": round(median * tcfg["projected_steps"] / 60.0, 2) if median else None}
    if median and overhead is not None:
        out["projected_minutes_with_warm_up"] = round((median * tcfg["projected_steps"] + overhead) / 60.0, 2)
    return out


def shape_facts(shapes: list, unpadded: list) -> dict:
    """How many step shapes the run has (what a compiled step records graphs for) and how many unpadded."""
    from ..training.graphs import distinct_shapes

    return {"step_shapes": distinct_shapes(shapes), "unpadded_shapes": distinct_shapes(unpadded),
            "padded": shapes != unpadded, "shapes": sorted({str(shape) for shape in shapes})[:8]}


def run_stock_training(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict) -> dict:
    """A plain loop as a diffusers user writes it: peft LoraConfig via transformer.add_adapter, torch AdamW
    (foreach, not fused), LoRA weights in the model's dtype (bf16 on CUDA), text encoder left on the
    GPU, eager, no autocast. Latents and caption embeddings are encoded once, before the loop."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    from ..lora.common import remove_peft_if_empty
    from ..training.data import load_or_build
    from ..training.shapes import unpadded_shapes

    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    samples = load_or_build(pipe, dataset_dir, work_dir / "cache.pt", tcfg["resolution"])
    latents = [sample.latent.to(device, dtype) for sample in samples]
    embeds = [sample.embeds.to(device, dtype) for sample in samples]
    shapes = unpadded_shapes(latents, embeds)  # the stock forward: every image size and caption length as it comes
    flags = {param: param.requires_grad for param in transformer.parameters()}
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=tcfg["rank"], lora_alpha=tcfg["alpha"], init_lora_weights=True,
                                       target_modules=list(TARGET_MODULES)), adapter_name="stock")
    params = [param for name, param in transformer.named_parameters() if ".stock." in name]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    held: dict[str, Any] = {"optimizer": optimizer, "params": params}  # dropped before the adapter is deleted
    generator = torch.Generator().manual_seed(0)
    losses: list[float] = []

    def step(index: int) -> None:
        clean = latents[index % len(latents)]
        noise = torch.randn(clean.shape, generator=generator).to(device, dtype)
        sigma = min(max(float(torch.sigmoid(torch.randn(1, generator=generator))), 1e-3), 1.0)
        noisy = (1.0 - sigma) * clean + sigma * noise
        timestep = torch.tensor([1.0 - sigma], device=device)
        out = transformer([noisy.unsqueeze(1)], timestep, [embeds[index % len(embeds)]], return_dict=False)[0]
        loss = F.mse_loss(out[0].float().squeeze(1), (clean - noise).float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(held["params"], MAX_GRAD_NORM)
        held["optimizer"].step()
        held["optimizer"].zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    try:
        warm = [timed(lambda i=i: step(i)) for i in range(len(latents))]
        reset_peak()
        times = [timed(lambda i=i: step(i)) for i in range(tcfg["timed_steps"])]
        result = _summary(warm, times, tcfg)
        result.update({
            "peak_gib": peak_gib(), "optimizer": f"torch.optim.AdamW (fused={optimizer.defaults.get('fused')}, "
                                                 f"foreach={optimizer.defaults.get('foreach')})",
            "lora_dtype": str(params[0].dtype).replace("torch.", ""), "autocast": False,
            "text_encoder_device": str(pipe.text_encoder.device), "trainable_params": sum(p.numel() for p in params),
            "losses_finite": all(map(_finite, losses)), "compiled": False, **shape_facts(shapes, shapes),
        })
    finally:
        held.clear()
        del optimizer, params
        transformer.delete_adapters("stock")
        remove_peft_if_empty(transformer)  # plain nn.Linear layers back, as before the loop
        for param, flag in flags.items():
            param.requires_grad_(flag)
        free_memory()
    log(f"  stock peft loop: {result['s_per_step'].get('median_s')} s/step, peak {result['peak_gib']} GiB")
    return result


def _finite(value: float) -> bool:
    import math

    return math.isfinite(value)


def start_trainer(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict, label: str, graphs: bool = False,
                  pipelined: bool = True):
    """A prepared LoraTrainer after its warm-up steps: (trainer, facts about the warm-up).

    Warm-up: one epoch (every image, so a compiled transformer has met every step shape); with CUDA
    graphs (`graphs`: ZIMAGE_TRAIN_GRAPHS, gpu/training/graphs.py) two, since a shape is recorded on its second step."""
    import torch

    from ..training.graphs import TrainingGraphs
    from ..training.shapes import unpadded_shapes
    from ..training.trainer import LoraTrainer

    output = work_dir / label
    output.mkdir(parents=True, exist_ok=True)
    if (work_dir / "cache.pt").is_file():  # the stock loop encoded the same data: skip encoding again
        shutil.copy(work_dir / "cache.pt", output / "cache.pt")
    cuda = torch.cuda.is_available()
    reserved_before = torch.cuda.memory_reserved() / GIB if cuda else None
    trainer = LoraTrainer(pipe, dataset_dir, output, train_config(tcfg),
                          graphs=TrainingGraphs.for_transformer(pipe.transformer) if graphs else None,
                          pipelined=pipelined)
    reset_peak()
    graphs_before = accel.compiled_graph_count()
    try:
        prepare_s = timed(trainer.prepare)
        memory_after_prepare = memory_breakdown()
        # Prepare starts from whatever the engine held (its generation cache, the text encoder on the GPU) and
        # ends after the text encoder's offload; the warm-up's peak is training's own.
        peaks_prepare = {"peak_gib_prepare": peak_gib(), "peak_reserved_gib_prepare": peak_reserved_gib()}
        reset_peak()
        epochs = 2 if trainer.uses_training_graphs else 1
        warm = [timed(trainer.step) for _ in range(epochs * len(trainer.samples))]
    except BaseException:
        trainer.close()
        raise
    facts = {"prepare_s": round(prepare_s, 2), "warm": warm, "cuda_graphs": trainer.uses_training_graphs,
             **shape_facts(trainer.step_shapes, unpadded_shapes(trainer._latents, trainer._embeds)),
             "graphs_compiled_in_warm_up": accel.compiled_graph_count() - graphs_before,
             **peaks_prepare, "peak_gib_warm_up": peak_gib(), "peak_reserved_gib_warm_up": peak_reserved_gib(),
             "reserved_gib_before": round(reserved_before, 2) if reserved_before is not None else None,
             "caption_tokens": token_counts(trainer._embeds),
             "activation_budget": trainer._graphs.activation_budget if trainer.uses_training_graphs else None,
             "memory_after_prepare": memory_after_prepare, "memory_after_warm_up": memory_breakdown()}
    return trainer, facts


def token_counts(embeds) -> dict:
    """The dataset's caption lengths in tokens (the chat template included), before padding."""
    lengths = sorted(int(embed.shape[0]) for embed in embeds)
    return {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]} if lengths else {}


def run_ours_training(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict, label: str, keep: bool = False,
                      graphs: bool = False, profile: bool = False, pipelined: bool = True):
    """gpu/training/trainer.py's LoraTrainer on `pipe` as it is (compiled or not): (result, trainer or None).

    With keep=True the prepared trainer is returned open (the latency phase reuses it); else closed.
    With profile=True three more steps run under torch.profiler (step_profile.py) after the timing."""
    import torch

    trainer, facts = start_trainer(pipe, dataset_dir, work_dir, tcfg, label, graphs, pipelined)
    try:
        reset_peak()
        graphs_before = accel.compiled_graph_count()
        times = step_times(trainer, tcfg["timed_steps"])
        result = _summary(facts.pop("warm"), times, tcfg)
        result["pipelined"] = pipelined and can_pipeline(trainer.device)
        result["syncs_per_step"] = syncs_per_step(trainer)
        params = trainer._trainee_params
        result.update(facts)
        result.update({
            "peak_gib": peak_gib(), "peak_reserved_gib": peak_reserved_gib(), "memory_after_timing": memory_breakdown(),
            "graphs_compiled_during_timing": accel.compiled_graph_count() - graphs_before,
            "optimizer": f"{type(trainer.optimizer).__module__}.{type(trainer.optimizer).__name__}"
                         f" (fused={trainer.optimizer.defaults.get('fused')})",
            "lora_dtype": str(params[0].dtype).replace("torch.", ""),
            "autocast": trainer._autocast().__class__.__name__ == "autocast",
            "text_encoder_device": str(pipe.text_encoder.device), "trainable_params": sum(p.numel() for p in params),
            "losses_finite": all(map(_finite, trainer.losses)), "compiled": accel.has_compiled_modules(pipe.transformer),
        })
        if profile:
            from .step_profile import profile_steps

            result["profile"] = profile_steps(trainer.step)
            log(f"  profile: {result['profile']['wall_ms_per_step']} ms wall, GPU busy "
                f"{result['profile']['gpu_busy_ms_per_step']} ms, {result['profile']['kernels_per_step']} kernels per step")
    except BaseException:
        trainer.close()
        free_memory()
        raise
    if not keep:
        trainer.close()
        trainer = None
        free_memory()
        if torch.cuda.is_available():  # what training left behind (CUDA graphs keep their memory pool)
            result["reserved_gib_after_close"] = round(torch.cuda.memory_reserved() / GIB, 2)
    log(f"  {label}: {result['s_per_step'].get('median_s')} s/step, peak {result['peak_gib']} GiB allocated, "
        f"{result.get('peak_reserved_gib_warm_up')} GiB reserved in warm-up ({result.get('peak_reserved_gib_prepare')} "
        f"in prepare, from {result.get('reserved_gib_before')} before); warm-up {result['warm_up_s']} s "
        f"over {result['warm_up_steps']} steps, {result['warm_up_overhead_s']} s beyond steady steps "
        f"({result['graphs_compiled_in_warm_up']} graph(s)), CUDA graphs {result['cuda_graphs']}, "
        f"{result['step_shapes']} step shape(s) ({result['unpadded_shapes']} unpadded), caption tokens "
        f"{result['caption_tokens']}; memory after prepare {result['memory_after_prepare']}, after warm-up "
        f"{result['memory_after_warm_up']}, after timing {result['memory_after_timing']}")
    return result, trainer


def step_times(trainer, count: int) -> list[float]:
    """Seconds per step as the loop runs them: no synchronisation between steps (a pipelined trainer's host runs
    a step ahead of the GPU), one before the first and after the last, when every loss has been read."""
    sync()
    marks = [time.perf_counter()]
    for _ in range(count - 1):
        trainer.step()
        marks.append(time.perf_counter())
    trainer.step()
    trainer.losses  # noqa: B018 - waits for the newest step's loss
    sync()
    marks.append(time.perf_counter())
    return [later - earlier for earlier, later in zip(marks, marks[1:], strict=False)]


def syncs_per_step(trainer, steps: int = 3) -> float | None:
    """How often a training step makes the host wait for the GPU, per step: the calls torch.cuda.set_sync_debug_mode
    flags (a pipelined step's wait for the step before's loss, an event, is not among them)."""
    import warnings

    import torch

    if not torch.cuda.is_available():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]
    if found:
        log(f"  synchronising calls (where): {sorted(set(found))[:6]}")
    return round(len(found) / steps, 2)


def assess(column: dict, tcfg: dict) -> dict | None:
    """The column against the issue's target: projected minutes and peak memory, met or missed by how much."""
    median = (column.get("s_per_step") or {}).get("median_s")
    if not median:
        return None
    minutes = median * tcfg["projected_steps"] / 60.0
    target_s = tcfg["target_minutes"] * 60.0 / tcfg["projected_steps"]
    out = {"s_per_step": median, "target_s_per_step": round(target_s, 4), "minutes": round(minutes, 2),
           "target_minutes": tcfg["target_minutes"], "time_met": minutes <= tcfg["target_minutes"],
           "time_over_pct": round(100.0 * (minutes / tcfg["target_minutes"] - 1.0), 1),
           "target_peak_gib": tcfg["target_peak_gib"]}
    # The stricter of what tensors used (allocated) and what the process held (reserved, warm-up included:
    # CUDA graphs are recorded there and keep their memory pool). Not prepare's: it starts from the engine's own
    # generation cache and holds the text encoder until the captions are encoded (reported beside it).
    peaks = [value for key in ("peak_gib", "peak_reserved_gib", "peak_reserved_gib_warm_up")
             if (value := column.get(key)) is not None]
    if peaks:
        out.update({"peak_gib": max(peaks), "memory_met": max(peaks) <= tcfg["target_peak_gib"]})
    return out


class SkippedColumn(Exception):
    pass


def run_section(pipe, tcfg: dict, work_dir: Path, results: dict, left) -> None:
    """The baseline and ours (eager) on the pipeline as built; fills results['training']['columns']."""
    columns = results.setdefault("columns", {})
    dataset_dir = write_dataset(work_dir / "dataset", tcfg["images"], tcfg["resolution"])
    results["dataset_dir"] = str(dataset_dir)
    results["dataset"] = describe_dataset(dataset_dir)
    log(f"training: stock peft loop ({tcfg['images']} images in {len(results['dataset']['sizes'])} sizes, captions of "
        f"{results['dataset']['caption_words']} words, at {tcfg['resolution']} px, rank {tcfg['rank']})")
    skipped = set(tcfg.get("skipped_columns", ()))
    try:
        if "stock" in skipped:
            raise SkippedColumn()
        columns["stock"] = run_stock_training(pipe, dataset_dir, work_dir, tcfg)
    except SkippedColumn:
        columns["stock"] = {"error": "skipped (--skip-columns)"}
    except Exception as exc:  # noqa: BLE001 - keep going: ours is still worth measuring
        log(f"stock training failed: {error_text(exc)}")
        columns["stock"] = {"error": error_text(exc)}
        free_memory()
    if left() < 60 or "ours" in skipped:
        columns["ours"] = {"error": "skipped: out of time" if left() < 60 else "skipped (--skip-columns)"}
        return
    log("training: ours (LoraTrainer, eager)")
    try:
        columns["ours"], _ = run_ours_training(pipe, dataset_dir, work_dir, tcfg, "ours-eager")
    except Exception as exc:  # noqa: BLE001
        log(f"ours (eager) training failed: {error_text(exc)}")
        columns["ours"] = {"error": error_text(exc)}
