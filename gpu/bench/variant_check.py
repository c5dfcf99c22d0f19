"""The result buttons on a warm worker (issue #16): after the worker's warm-up, does any Vary / Upscale / Zoom / Pan
compile a new graph, how long does each take, and how much GPU memory does it reach?

    python -m gpu.bench.variant_check                          # full-size random weights on the GPU, compiled
    ZIMAGE_VRAM=16gb python -m gpu.bench.variant_check --cap-gib 15   # the 16 GB profile: Upscale to 2048x2048
    python -m gpu.bench.variant_check --tiny                   # the plumbing, on the tiny model (CPU)

Each button's job is made exactly as the bot makes it (bot/variants.py variant_params) from a parent in the square
and the 16:9 bucket, and run through ImageEngine.generate like the worker runs it. ``--cap-gib`` caps this process's
GPU memory (torch's per-process fraction) before anything is loaded, as a smaller card would, and then loads the
random full-size pipeline from a model folder with from_pretrained, as the worker does (gpu/bench/card.py saves it
first when missing); an out-of-memory is reported, not raised. Without a cap the pipeline is built in the process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from .. import accel
from .common import log

PARENT_SIZES = ((1024, 1024), (1344, 768))


def run(tiny: bool, cap_gib: float | None, steps: int, sizes: tuple[tuple[int, int], ...]) -> dict:
    import torch

    from bot.variants import VARIANTS, variant_params
    from zimage_protocol.messages import GenerateParams

    from ..engine import ImageEngine
    from ..png import encode_png
    from .build import build_full_pipeline
    from .card import DEFAULT_MODEL_DIR, ensure_model, set_cap

    cuda = torch.cuda.is_available()
    folder = Path(tempfile.mkdtemp(prefix="variant-check-"))
    if cap_gib:
        model = ensure_model(DEFAULT_MODEL_DIR, tiny)["model_dir"]  # saved by a child: this process stays empty
        set_cap(cap_gib)
    else:
        model = "tiny" if tiny else "full"
    engine = ImageEngine(model, folder)
    started = time.perf_counter()
    engine.load(pipe=build_full_pipeline() if model == "full" else None)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    engine.warm_up()
    engine.warm_up_variants()  # the worker runs it right after "ready" (gpu/scheduler.py)
    warm_up_s = time.perf_counter() - started
    graphs_after_warm_up = accel.compiled_graph_count()
    log(f"load {load_s:.1f} s, warm-up {warm_up_s:.1f} s, {graphs_after_warm_up} graph(s); profile "
        f"{engine.profile.name}, compiled {engine.accel.compiled}, cap {cap_gib or 'none'} GiB")
    rows = []
    for width, height in sizes:
        [parent] = engine.generate(GenerateParams(prompt="a lighthouse at dusk", width=width, height=height,
                                                  steps=steps, seeds=[1]))
        source = folder / f"parent-{width}x{height}.png"
        source.write_bytes(encode_png(parent.image, {}))
        old = {"prompt": "a lighthouse at dusk", "width": width, "height": height, "steps": steps}
        for key, variant in VARIANTS.items():
            params = GenerateParams.from_json(variant_params(old, variant, 1, source, [], 10 * 2**20))
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            graphs = accel.compiled_graph_count()
            started = time.perf_counter()
            error = ""
            try:
                [made] = engine.generate(params)
                size = made.image.size
            except torch.OutOfMemoryError as exc:
                error, size = f"out of memory: {str(exc).splitlines()[0][:120]}", (0, 0)
            if cuda:
                torch.cuda.synchronize()
            row = {"parent": f"{width}x{height}", "button": key, "output": f"{params.width}x{params.height}",
                   "made": f"{size[0]}x{size[1]}", "seconds": round(time.perf_counter() - started, 3),
                   "new_graphs": accel.compiled_graph_count() - graphs,
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                   "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
                   "error": error}
            rows.append(row)
            log(f"  {row['parent']:>9} {key:<8} -> {row['output']:>9}: {row['seconds']:7.3f} s, "
                f"{row['new_graphs']} new graph(s), peak {row['peak_gib']} GiB (reserved {row['reserved_gib']})"
                f"{'  ' + error if error else ''}")
    recompiles = accel.compiled_graph_count() - graphs_after_warm_up
    log(f"graphs compiled after the warm-up: {recompiles}; out of memory: {sum(bool(r['error']) for r in rows)}")
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "load_s": round(load_s, 1),
            "warm_up_s": round(warm_up_s, 1), "cap_gib": cap_gib, "profile": engine.profile.name,
            "compiled": engine.accel.compiled, "graphs_after_warm_up": recompiles, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.bench.variant_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (CPU): the plumbing only")
    parser.add_argument("--cap-gib", type=float, default=None, help="cap this process's GPU memory, as a smaller card")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--square-only", action="store_true", help="only the 1024x1024 parent")
    parser.add_argument("--parent", default=None, metavar="WxH", help="one parent of this size instead (a quick run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = PARENT_SIZES[:1] if args.square_only else PARENT_SIZES
    if args.parent:
        width, _, height = args.parent.partition("x")
        sizes = ((int(width), int(height)),)
    result = run(args.tiny, args.cap_gib, args.steps, sizes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if any(row["error"] for row in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
