"""Where a training step's time goes: GPU busy time against wall time, kernels by category, host ops.

A step whose GPU is busy for much less than its wall time is bound by the host (launch overhead),
which is what made CUDA graphs the answer for training (gpu/training/graphs.py); one whose GPU is busy
throughout can only get faster by doing less GPU work.
"""

from __future__ import annotations

import time

from .inference import kernel_category


def _busy_us(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels overlap on several streams)."""
    busy, current = 0.0, None  # current: the (start, end) being merged
    for span_start, span_end in sorted(spans):
        if current is None or span_start > current[1]:
            if current is not None:
                busy += current[1] - current[0]
            current = (span_start, span_end)
        else:
            current = (current[0], max(current[1], span_end))
    return busy + (current[1] - current[0] if current is not None else 0.0)


def profile_steps(step, steps: int = 3) -> dict:
    """torch.profiler over `steps` calls of step(): per-step wall, GPU busy, kernel count and the top items."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / steps
    kernels = [event for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    categories: dict[str, float] = {}
    by_name: dict[str, list] = {}
    for event in kernels:
        ms = (event.time_range.end - event.time_range.start) / 1000.0
        label = kernel_category(event.name)
        categories[label] = categories.get(label, 0.0) + ms
        entry = by_name.setdefault(event.name[:120], [0.0, 0])
        entry[0] += ms
        entry[1] += 1
    host = sorted(((event.key[:100], event.self_cpu_time_total / 1000.0, event.count) for event in prof.key_averages()),
                  key=lambda item: -item[1])
    top = sorted(by_name.items(), key=lambda item: -item[1][0])
    return {
        "steps": steps,
        "wall_ms_per_step": round(wall * 1000.0, 1),
        "gpu_busy_ms_per_step": round(_busy_us([(k.time_range.start, k.time_range.end) for k in kernels]) / 1000 / steps, 1),
        "kernels_per_step": round(len(kernels) / steps),
        "by_category_ms_per_step": {k: round(v / steps, 2) for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [[name, round(ms / steps, 2), count // steps] for name, (ms, count) in top[:12]],
        "top_host_ops_ms_per_step": [[name, round(ms / steps, 2), count // steps] for name, ms, count in host[:12]],
    }
