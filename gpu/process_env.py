"""Environment defaults of a GPU process (the worker and the benchmark), set before torch allocates. An admin's own
value wins (``setdefault``)."""

from __future__ import annotations

from collections.abc import MutableMapping

__all__ = ["PROCESS_ENV_DEFAULTS", "apply_process_env_defaults"]

PROCESS_ENV_DEFAULTS = {
    # One growable segment per stream instead of many fixed ones: measured on an H100 (docs/BENCHMARKS.md, session
    # 11), a 512 px rank-64 LoRA training held 20.9 instead of 23.0 GiB (CUDA graphs' pool 6.2 instead of 8.0 GiB)
    # at the same step time. The low-VRAM profiles needed it already.
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}
# Tried and left out: HF_ENABLE_PARALLEL_LOADING=yes (diffusers reads a sharded component's files in parallel).
# Same H100 run, restart from disk: loading 11.6 s with it vs 11.7 s without (session 11).


def apply_process_env_defaults(environ: MutableMapping[str, str]) -> None:
    for key, value in PROCESS_ENV_DEFAULTS.items():
        environ.setdefault(key, value)
