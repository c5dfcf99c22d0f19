"""LoRA training: a plain peft loop (the baseline) vs gpu/training/trainer.py's LoraTrainer, eager and compiled.

Both train on the same synthetic dataset (random images written in the manifest format that
gpu/training/data.py reads), batch 1, at the same rank, alpha and target modules. Seconds per step
are the median of ``timed_steps`` steps after one epoch of warm-up steps (every image seen once,
so a compiled transformer has met every caption length before the timing starts); peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps, after ``reset_peak_memory_stats``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from .. import accel
from .common import GIB, error_text, free_memory, log, peak_gib, peak_reserved_gib, reset_peak, stats, timed

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
FULL_TRAIN: dict[str, Any] = {"resolution": 512, "rank": 64, "alpha": 64, "images": 8, "timed_steps": 20,
              "projected_steps": 4000, "target_minutes": 8.0, "target_peak_gib": 24.0}
TINY_TRAIN: dict[str, Any] = {"resolution": 64, "rank": 4, "alpha": 4, "images": 4, "timed_steps": 3,
              "projected_steps": 4000, "target_minutes": 8.0, "target_peak_gib": 24.0}
LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 2e-4, 1e-4, 1.0  # the trainer's defaults, for both loops
_SUBJECTS = ("sks dog", "a ceramic teapot", "an old lighthouse", "a red bicycle", "a bowl of ramen",
             "a knitted scarf", "a mountain cabin", "a vintage camera")
_DETAILS = ("on a wooden table", "in soft morning light", "photographed from a low angle with a wide lens",
            "surrounded by autumn leaves, shallow depth of field, warm colours",
            "in a minimalist studio with a grey backdrop and a single softbox from the left",
            "at night under neon signs in the rain, reflections on the wet street, cinematic grade, film grain")


def write_dataset(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` random size x size PNGs + manifest.json ({file, caption, width, height, source_name})."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    entries = []
    for index in range(count):
        colour = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        pixels = np.clip(colour + noise.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f"images/{index + 1:04d}.png"
        Image.fromarray(pixels).save(root / name)
        caption = f"{_SUBJECTS[index % len(_SUBJECTS)]} {_DETAILS[index % len(_DETAILS)]}"
        entries.append({"file": name, "caption": caption, "width": size, "height": size,
                        "source_name": f"upload-{index + 1}.png"})
    (root / "manifest.json").write_text(json.dumps(entries, indent=1))
    return root


def train_config(tcfg: dict):
    from ..training.config import TrainConfig

    return TrainConfig(rank=tcfg["rank"], alpha=tcfg["alpha"], resolution=tcfg["resolution"], steps=10**6,
                       checkpoint_every=10**6, keep_checkpoints=1, learning_rate=LEARNING_RATE,
                       weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, target_modules=TARGET_MODULES)


def _summary(warm: list[float], times: list[float], tcfg: dict) -> dict:
    step = stats(times)
    median = step.get("median_s")
    return {"s_per_step": step, "warm_up_steps_s": [round(t, 3) for t in warm],
            "warm_up_s": round(sum(warm), 2),
            "projected_minutes": round(median * tcfg["projected_steps"] / 60.0, 2) if median else None}


def run_stock_training(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict) -> dict:
    """A plain loop as a diffusers user writes it: peft LoraConfig via transformer.add_adapter, torch AdamW
    (foreach, not fused), LoRA weights in the model's dtype (bf16 on CUDA), text encoder left on the
    GPU, eager, no autocast. Latents and caption embeddings are encoded once, before the loop."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    from ..lora.common import remove_peft_if_empty
    from ..training.data import load_or_build

    transformer = pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    samples = load_or_build(pipe, dataset_dir, work_dir / "cache.pt", tcfg["resolution"])
    latents = [sample.latent.to(device, dtype) for sample in samples]
    embeds = [sample.embeds.to(device, dtype) for sample in samples]
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
            "losses_finite": all(map(_finite, losses)), "compiled": False,
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


def start_trainer(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict, label: str, graphs: bool = False):
    """A prepared LoraTrainer after its warm-up steps: (trainer, facts about the warm-up).

    Warm-up: one epoch (every image, so a compiled transformer has met every caption length); with CUDA
    graphs (`graphs`: ZIMAGE_TRAIN_GRAPHS, gpu/training/graphs.py) two, since a shape is recorded on its second step."""
    import torch

    from ..training.graphs import TrainingGraphs
    from ..training.trainer import LoraTrainer

    output = work_dir / label
    output.mkdir(parents=True, exist_ok=True)
    if (work_dir / "cache.pt").is_file():  # the stock loop encoded the same data: skip encoding again
        shutil.copy(work_dir / "cache.pt", output / "cache.pt")
    cuda = torch.cuda.is_available()
    reserved_before = torch.cuda.memory_reserved() / GIB if cuda else None
    trainer = LoraTrainer(pipe, dataset_dir, output, train_config(tcfg),
                          graphs=TrainingGraphs.for_transformer(pipe.transformer) if graphs else None)
    reset_peak()
    graphs_before = accel.compiled_graph_count()
    try:
        prepare_s = timed(trainer.prepare)
        epochs = 2 if trainer.uses_training_graphs else 1
        warm = [timed(trainer.step) for _ in range(epochs * len(trainer.samples))]
    except BaseException:
        trainer.close()
        raise
    facts = {"prepare_s": round(prepare_s, 2), "warm": warm, "cuda_graphs": trainer.uses_training_graphs,
             "graphs_compiled_in_warm_up": accel.compiled_graph_count() - graphs_before,
             "peak_gib_prepare_and_warm_up": peak_gib(), "peak_reserved_gib_prepare_and_warm_up": peak_reserved_gib(),
             "reserved_gib_before": round(reserved_before, 2) if reserved_before is not None else None}
    return trainer, facts


def run_ours_training(pipe, dataset_dir: Path, work_dir: Path, tcfg: dict, label: str, keep: bool = False,
                      graphs: bool = False, profile: bool = False):
    """gpu/training/trainer.py's LoraTrainer on `pipe` as it is (compiled or not): (result, trainer or None).

    With keep=True the prepared trainer is returned open (the latency phase reuses it); else closed.
    With profile=True three more steps run under torch.profiler (step_profile.py) after the timing."""
    import torch

    trainer, facts = start_trainer(pipe, dataset_dir, work_dir, tcfg, label, graphs)
    try:
        reset_peak()
        graphs_before = accel.compiled_graph_count()
        times = [timed(trainer.step) for _ in range(tcfg["timed_steps"])]
        result = _summary(facts.pop("warm"), times, tcfg)
        params = trainer._trainee_params
        result.update(facts)
        result.update({
            "peak_gib": peak_gib(), "peak_reserved_gib": peak_reserved_gib(),
            "graphs_compiled_during_timing": accel.compiled_graph_count() - graphs_before,
            "optimizer": f"{type(trainer.optimizer).__module__}.{type(trainer.optimizer).__name__}"
                         f" (fused={trainer.optimizer.defaults.get('fused')})",
            "lora_dtype": str(params[0].dtype).replace("torch.", ""),
            "autocast": trainer._autocast().__class__.__name__ == "autocast",
            "text_encoder_device": str(pipe.text_encoder.device), "trainable_params": sum(p.numel() for p in params),
            "losses_finite": all(map(_finite, trainer.losses)), "compiled": _is_compiled(pipe.transformer),
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
        f"{result.get('peak_reserved_gib_prepare_and_warm_up')} GiB reserved in warm-up; warm-up {result['warm_up_s']} s "
        f"({result['graphs_compiled_in_warm_up']} graph(s)), CUDA graphs {result['cuda_graphs']}")
    return result, trainer


def _is_compiled(transformer) -> bool:
    return any(getattr(module, "_compiled_call_impl", None) is not None for module in transformer.modules())


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
    # CUDA graphs are recorded there and keep their memory pool).
    peaks = [value for key in ("peak_gib", "peak_reserved_gib", "peak_reserved_gib_prepare_and_warm_up")
             if (value := column.get(key)) is not None]
    if peaks:
        out.update({"peak_gib": max(peaks), "memory_met": max(peaks) <= tcfg["target_peak_gib"]})
    return out


def run_section(pipe, tcfg: dict, work_dir: Path, results: dict, left) -> None:
    """The baseline and ours (eager) on the pipeline as built; fills results['training']['columns']."""
    columns = results.setdefault("columns", {})
    dataset_dir = write_dataset(work_dir / "dataset", tcfg["images"], tcfg["resolution"])
    results["dataset_dir"] = str(dataset_dir)
    log(f"training: stock peft loop ({tcfg['images']} images at {tcfg['resolution']} px, rank {tcfg['rank']})")
    try:
        columns["stock"] = run_stock_training(pipe, dataset_dir, work_dir, tcfg)
    except Exception as exc:  # noqa: BLE001 - keep going: ours is still worth measuring
        log(f"stock training failed: {error_text(exc)}")
        columns["stock"] = {"error": error_text(exc)}
        free_memory()
    if left() < 60:
        columns["ours"] = {"error": "skipped: out of time"}
        return
    log("training: ours (LoraTrainer, eager)")
    try:
        columns["ours"], _ = run_ours_training(pipe, dataset_dir, work_dir, tcfg, "ours-eager")
    except Exception as exc:  # noqa: BLE001
        log(f"ours (eager) training failed: {error_text(exc)}")
        columns["ours"] = {"error": error_text(exc)}
