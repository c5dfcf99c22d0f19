"""The worker's start-up failures: one line on stderr each, and an exit code of its own.

The bot's supervisor restarts a worker that exits, with back-off, and the worker's stderr is the
bot's: an operator reads these lines in the bot's log (README, "Troubleshooting").
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator
from enum import IntEnum

from zimage_protocol.constants import DEFAULT_MODEL


class WorkerExit(IntEnum):
    SOCKET = 2  # the socket is served by another worker, or cannot be bound
    MODEL = 3  # the model cannot be loaded: a broken folder, bad worker settings, ...
    DOWNLOAD = 4  # the model is not on disk and cannot be downloaded
    OUT_OF_MEMORY = 5  # out of GPU (or host) memory while loading


DEFAULT_MODEL_SIZE = {DEFAULT_MODEL: "~20 GB"}


def _download_hint(model: str) -> str:
    size = f" ({DEFAULT_MODEL_SIZE[model]})" if model in DEFAULT_MODEL_SIZE else ""
    return f"download it first with `hf download {model}`{size} on a machine that reaches the hub, into the same HF_HOME"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it: transformers and diffusers wrap the hub's errors in an OSError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def explain_load_error(model: str, exc: BaseException) -> tuple[WorkerExit, str]:
    chain = list(_chain(exc))
    if any(_is_gpu_oom(error) for error in chain):
        return WorkerExit.OUT_OF_MEMORY, (
            f"out of GPU memory loading {model!r}{_gpu_name()}: `python -m bot check` names the speed profile that "
            "fits this GPU (ZIMAGE_QUANT=fp8, ZIMAGE_VRAM=16gb); or another process holds GPU memory (nvidia-smi)")
    if any(isinstance(error, MemoryError) for error in chain):
        return WorkerExit.OUT_OF_MEMORY, f"out of memory (RAM) loading {model!r}: {one_line(exc)}"
    reason = _download_problem(model, chain)
    if reason:
        return WorkerExit.DOWNLOAD, f"cannot download model {model!r}: {reason}"
    return WorkerExit.MODEL, f"cannot load model {model!r}: {type(exc).__name__}: {one_line(exc)}"


def _is_gpu_oom(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch here just to classify an error
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def _download_problem(model: str, chain: list[BaseException]) -> str | None:
    from huggingface_hub import errors as hub

    hint = _download_hint(model)
    for error in chain:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            where = getattr(error, "filename", None) or "the Hugging Face cache"
            return f"the disk is full ({where}); free some space or move HF_HOME"
        if isinstance(error, hub.GatedRepoError):
            return "the repository is gated: accept its terms on huggingface.co and log in here (hf auth login)"
        if isinstance(error, hub.RepositoryNotFoundError):
            return "no such model on the hub (a typo in ZIMAGE_MODEL, or a private repository: hf auth login)"
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    missing = any(isinstance(error, hub.LocalEntryNotFoundError | hub.OfflineModeIsEnabled) for error in chain)
    if missing and offline:
        return f"it is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {hint}"
    for error in chain:  # OfflineModeIsEnabled is a ConnectionError too: handled above
        if isinstance(error, socket.gaierror | ConnectionError | TimeoutError):
            return f"the hub cannot be reached ({one_line(error)}) and it is not in the Hugging Face cache: {hint}"
        if isinstance(error, hub.HfHubHTTPError):
            return f"the hub answered {one_line(error)}"
    if missing:
        return f"it is not in the Hugging Face cache and the hub cannot be reached: {hint}"
    return None


def _gpu_name() -> str:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            device = torch.cuda.get_device_properties(0)
            return f" on {device.name} ({device.total_memory / (1 << 30):.1f} GiB)"
    except Exception:  # noqa: BLE001 - the name is a nicety; the line must come out regardless
        pass
    return ""
