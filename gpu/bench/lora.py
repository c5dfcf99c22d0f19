"""LoRA switching on the worker's engine (``--sections inference,lora``): hot-swap slots under compile.

Runs on the inference section's ImageEngine (compiled and warmed, every bucket). Three random LoRAs of
different ranks and targets are written as diffusers files; then: the slot warm-up (graph variants),
base vs 1 / 2 / 3 stacked LoRAs per image, the time of a switch (from disk, and between LoRAs already
on the GPU), and how many graphs dynamo compiled meanwhile (the point: none). The control, if time
allows: the same LoRA loaded the plain peft way (``AdapterManager``) on the same compiled transformer.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .. import accel
from ..quantize import BLOCK_LINEARS, BLOCK_LISTS
from .common import error_text, log, sync, timed

FULL_LORA = {"size": (1024, 1024), "steps": 8, "repeats": 3, "switch_cycles": 3,
             "loras": {"r64-all": (64, BLOCK_LINEARS), "r32-attn": (32, BLOCK_LINEARS[:4]),
                       "r16-ffn": (16, BLOCK_LINEARS[4:])}}
TINY_LORA = {"size": (128, 128), "steps": 2, "repeats": 2, "switch_cycles": 2,
             "loras": {"r4-all": (4, BLOCK_LINEARS), "r2-attn": (2, BLOCK_LINEARS[:4]), "r1-ffn": (1, BLOCK_LINEARS[4:])}}
PROMPT = "a lighthouse on a cliff, oil painting"


def write_loras(engine, folder: Path, cfg: dict) -> dict[str, str]:
    """Random LoRAs (diffusers format, as /lora import and the trainer store them) for the engine's model."""
    import torch

    transformer = engine.pipe.transformer
    layers = {}
    for name, module in transformer.named_modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if name.startswith(BLOCK_LISTS) and name.endswith(BLOCK_LINEARS) and isinstance(base, torch.nn.Linear):
            layers[name] = (base.in_features, base.out_features)
    paths = {}
    generator = torch.Generator("cpu").manual_seed(0)
    for lora_name, (rank, targets) in cfg["loras"].items():
        state = {}
        for module, (inputs, outputs) in layers.items():
            if module.endswith(targets):
                state[f"{module}.lora_A.weight"] = (torch.randn(rank, inputs, generator=generator) * inputs ** -0.5).bfloat16()
                state[f"{module}.lora_B.weight"] = (torch.randn(outputs, rank, generator=generator) * 0.02).bfloat16()
        target = folder / lora_name
        type(engine.pipe).save_lora_weights(target, transformer_lora_layers=state, transformer_lora_adapter_metadata={
            "r": rank, "lora_alpha": rank, "target_modules": list(targets)})
        paths[lora_name] = str(target)
    return paths


def run_section(engine, cfg: dict, work_dir: Path, left) -> dict:
    from zimage_protocol.messages import GenerateParams

    result: dict = {"config": {k: v for k, v in cfg.items() if k != "loras"},
                    "loras": {name: {"rank": rank, "targets": list(targets)} for name, (rank, targets) in cfg["loras"].items()}}
    adapters = engine.adapters()
    result["manager"] = type(adapters).__name__
    result["compiled"] = engine.accel.compiled
    paths = write_loras(engine, work_dir / "bench-loras", cfg)
    names = list(paths)
    width, height = cfg["size"]

    def image() -> None:
        engine.generate(GenerateParams(prompt=PROMPT, width=width, height=height, steps=cfg["steps"], seeds=[3]))
        sync()

    def activate(picked: list[str], scale: float = 0.8) -> float:
        return timed(lambda: adapters.activate([(name, paths[name], scale) for name in picked]))

    graphs = accel.compiled_graph_count()
    result["slot_warm_up_s"] = round(timed(engine.warm_up_adapters), 2)
    result["graphs_in_slot_warm_up"] = accel.compiled_graph_count() - graphs
    log(f"  LoRA slot warm-up {result['slot_warm_up_s']} s, {result['graphs_in_slot_warm_up']} graph(s)")
    image()  # the prompt's embedding is cached from here on
    graphs = accel.compiled_graph_count()
    result["first_activation_s"] = {name: round(activate([name]), 4) for name in names}  # read from disk
    per_image: dict[str, float] = {}
    for label, picked in (("base", []), ("1 LoRA", names[:1]), ("2 LoRAs", names[:2]), ("3 LoRAs", names)):
        activate(picked)
        image()
        per_image[label] = round(statistics.median(timed(image) for _ in range(cfg["repeats"])), 4)
        log(f"  {label}: {per_image[label]:.3f} s/image")
    result["s_per_image"] = per_image
    switches = []
    for cycle in range(cfg["switch_cycles"]):
        for picked, scale in (([names[0]], 0.8), ([names[1]], 0.8), ([names[0]], 0.5 + 0.1 * cycle),
                              ([names[1], names[2]], 1.0), ([names[2], names[0]], 0.7), ([], 1.0)):
            switches.append(activate(picked, scale))
            image()
    result["switch_s"] = {"median": round(statistics.median(switches), 4), "max": round(max(switches), 4),
                          "count": len(switches)}
    result["graphs_compiled_while_switching"] = accel.compiled_graph_count() - graphs
    result["disk_reads"] = getattr(adapters, "loads", None)
    log(f"  switch median {result['switch_s']['median'] * 1000:.1f} ms; graphs compiled while switching: "
        f"{result['graphs_compiled_while_switching']}; disk reads {result['disk_reads']}")
    if left() > 90:
        result["control_peft"] = _control(engine, paths[names[0]], image)
    adapters.activate([])
    return result


def _control(engine, path: str, image) -> dict:
    """What hot-swap avoids: the LoRA as a plain peft adapter on the same compiled transformer."""
    from ..adapters import AdapterManager

    manager = AdapterManager(engine.pipe)
    graphs = accel.compiled_graph_count()
    try:
        started = time.perf_counter()
        manager.activate([("control", path, 0.8)])
        image()
        first = time.perf_counter() - started
        manager.activate([("control", path, 0.5)])  # a new scale: a new float in the guards
        second = timed(image)
        out = {"first_image_s": round(first, 2), "image_after_scale_change_s": round(second, 2),
               "graphs_compiled": accel.compiled_graph_count() - graphs}
    except Exception as exc:  # noqa: BLE001 - the control is context, not the result
        out = {"error": error_text(exc)}
    finally:
        manager.unload_all()
    log(f"  control (peft adapters on the compiled transformer): {out}")
    return out
