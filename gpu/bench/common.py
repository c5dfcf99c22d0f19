"""Small helpers shared by the benchmark's modules: logging, timing, peak memory, formatting."""

from __future__ import annotations

import statistics
import sys
import time

GIB = 1024**3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Wall seconds of fn(), with the device synchronised before and after."""
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - started


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    """torch.cuda.max_memory_allocated since the last reset_peak(), in GiB (None on the CPU)."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / GIB, 2)
    return None


def memory_breakdown() -> dict | None:
    """What the caching allocator holds now, by pool: the default pool and CUDA graphs' private pools, each as
    reserved / allocated GiB and its segment count, plus the default pool's largest free block (None on the CPU).
    Reserved minus allocated in a private pool is memory a recorded graph keeps for its replays."""
    import torch

    if not torch.cuda.is_available():
        return None
    pools: dict[str, dict] = {}
    largest_free = 0
    for segment in torch.cuda.memory_snapshot():
        name = "default" if tuple(segment.get("segment_pool_id", (0, 0))) == (0, 0) else "graph_pools"
        pool = pools.setdefault(name, {"reserved_gib": 0.0, "allocated_gib": 0.0, "segments": 0})
        pool["reserved_gib"] += segment["total_size"] / GIB
        pool["allocated_gib"] += segment["allocated_size"] / GIB
        pool["segments"] += 1
        if name == "default":
            free = [block["size"] for block in segment.get("blocks", ()) if block.get("state") == "inactive"]
            largest_free = max([largest_free, *free])
    for pool in pools.values():
        pool["reserved_gib"], pool["allocated_gib"] = round(pool["reserved_gib"], 2), round(pool["allocated_gib"], 2)
    return {**pools, "largest_free_block_gib": round(largest_free / GIB, 2)}


def peak_reserved_gib() -> float | None:
    """torch.cuda.max_memory_reserved (what the caching allocator held: the process's real need, minus
    the CUDA context) since the last reset_peak(), in GiB (None on the CPU)."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_reserved() / GIB, 2)
    return None


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stats(values: list[float], digits: int = 4) -> dict:
    """Median, mean, min, max and the values themselves, rounded."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_s": round(statistics.median(values), digits),
            "mean_s": round(statistics.fmean(values), digits), "min_s": round(min(values), digits),
            "max_s": round(max(values), digits), "runs_s": [round(v, digits) for v in values]}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
