"""Shared pieces of the end-to-end benchmark (``bench_e2e.py``): the repository root on sys.path, constants, the log,
summary statistics, the jobs every side runs (same prompts and seeds), and the environment its processes inherit.

Import it before the bot's or the worker's packages: importing it puts the repository root on sys.path."""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

from paths import ROOT

# Run as a script: its own folder (tests/support, the helpers) is already first on sys.path; the repository
# root is added so the bot's and the worker's packages import without an installed copy (the GPU machine).
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_OVERHEAD_S = 0.15  # issue #12: a lone /imagine within 0.15 s of the worker's own time
# Environment the bot (and so its worker) and the baseline worker inherit from this process.
PASS_PREFIXES = ("ZIMAGE_", "LORA_", "CUDA_", "PYTORCH_", "TORCH", "TRITON_", "NVIDIA_", "OMP_", "MKL_", "HF_")
PASS_NAMES = ("LD_LIBRARY_PATH", "HOME", "TMPDIR", "PYTHONUNBUFFERED")


def log(message: str) -> None:
    print(f"[bench-e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = math.floor(k), math.ceil(k)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (k - low), 4)


def summary(values: list[float], *quantiles: float) -> dict:
    out: dict = {"n": len(values)}
    if values:
        out.update({f"p{round(q * 100)}": percentile(values, q) for q in quantiles})
        out.update({"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                    "max": round(max(values), 4)})
    return out


def per_min(images: int, seconds: float | None) -> float | None:
    return round(images * 60.0 / seconds, 2) if images and seconds and seconds > 0 else None


# -- the jobs --------------------------------------------------------------------------------------------


def burst_jobs(members: int, per_member: int) -> list[tuple[int, int, str, int]]:
    """(member, index, prompt, seed), round-robin over members (every member's first, then seconds, ...)."""
    return [(m, j, f"bench burst member {m} image {j}", 1000 + m * per_member + j)
            for j in range(per_member) for m in range(members)]


def baseline_jobs(members: int, per_member: int, cap: int) -> list[tuple[int, int, str, int]]:
    """The jobs the burst should have accepted: each member's first min(per_member, cap)."""
    return [job for job in burst_jobs(members, per_member) if job[1] < min(per_member, cap)]


def lone_prompts(kind: str, count: int) -> list[tuple[str, int]]:
    return [(f"bench {kind} image {k}", 7 + k) for k in range(count)]



def pass_through_env() -> dict:
    """What the bot and the workers inherit from here; PYTHONPATH keeps the repository root first and any
    entries set here after it (e.g. wheels unpacked into /tmp/site on a machine without the project's venv)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASS_PREFIXES) or k in PASS_NAMES}
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *extra])
    return env
