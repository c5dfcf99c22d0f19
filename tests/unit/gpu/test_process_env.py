"""gpu/process_env.py: the GPU process's environment defaults leave an admin's values alone."""

from __future__ import annotations

from gpu.process_env import PROCESS_ENV_DEFAULTS, apply_process_env_defaults


def test_process_env_defaults_keep_an_admins_values():
    environ = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    apply_process_env_defaults(environ)
    assert environ == {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    empty: dict[str, str] = {}
    apply_process_env_defaults(empty)
    assert empty == PROCESS_ENV_DEFAULTS == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
