"""Training losses still on the GPU, read one step late so the host never waits for the step it just queued.

Why: the compiled training step is host-bound (docs/BENCHMARKS.md): between the GPU's work of two steps
the host has to draw the next step's noise, pad it and launch ~70 CUDA graphs and the optimizer. Reading a
step's loss right away (``float(loss)``) makes the host wait for that step to end, so the GPU then idles
while the host prepares the next one. Here each step's loss, and whether its loss or gradients were not
finite, are copied to pinned host memory behind an event; the trainer reads them during the next step,
once that step's forward and backward are queued, and before its optimizer update.

A bad step is still never saved and never goes unnoticed: reading it raises TrainerError, and checkpoints
read every pending step first. A fused AdamW also skips the bad step's update on the GPU (its
``found_inf``, as ``torch.amp.GradScaler`` uses it), so the weights stay as they were; bitsandbytes' 8-bit
AdamW has no such switch, so there the bad update lands in memory and the run ends one step later, before
anything is written. Kept apart from gpu/training/trainer.py, which decides when to read.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import TrainerError

__all__ = ["PendingLosses", "can_pipeline", "check", "not_finite", "skips_on_gpu"]


def can_pipeline(device) -> bool:
    """Whether steps may run ahead of their losses: on CUDA (elsewhere nothing runs asynchronously)."""
    return getattr(device, "type", None) == "cuda"


def skips_on_gpu(optimizer) -> bool:
    """Whether the optimizer takes ``found_inf`` and skips a bad step on the device (torch's fused Adam/AdamW)."""
    return bool(getattr(optimizer, "defaults", {}).get("fused"))


def not_finite(*values):
    """1.0 on the device when any of the tensors (None: left out) holds a NaN or an infinity, else 0.0."""
    import torch

    checks = [torch.isfinite(value.detach().float()).all() for value in values if value is not None]
    return (~torch.stack(checks).all()).float()


def check(step: int, loss: float, bad: float) -> float:
    """`loss`, unless the step went bad: TrainerError naming the step (the run cannot go on from there)."""
    if not math.isfinite(loss):
        raise TrainerError(f"the loss became {loss} at step {step}; try a lower learning rate")
    if bad:
        raise TrainerError(f"the gradients became infinite or NaN at step {step}; try a lower learning rate")
    return loss


@dataclass
class _Pending:
    step: int
    host: Any  # pinned CPU tensor [loss, bad], filled by a non-blocking copy
    ready: Any  # CUDA event recorded after the copy (None: a CPU tensor)


class PendingLosses:
    """Steps whose loss has not been read yet, oldest first."""

    def __init__(self) -> None:
        self._queue: deque[_Pending] = deque()

    def add(self, step: int, loss, bad) -> None:
        """Queue `step`'s loss and its bad-step flag (0-dim CUDA tensors) without waiting for the GPU."""
        import torch

        pair = torch.stack([loss.detach().float(), bad.float()])
        if not pair.is_cuda:  # nothing to wait for (the tests' CPU runs of this path)
            self._queue.append(_Pending(step, pair, None))
            return
        host = torch.empty(2, dtype=torch.float32, pin_memory=True)
        host.copy_(pair, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(pair.device))
        self._queue.append(_Pending(step, host, ready))

    def settle(self, keep: int = 0) -> list[float]:
        """Read all but the newest `keep` steps (waiting only for their own copies), oldest first.

        Raises TrainerError at the first bad one (the rest are dropped: the run ends there)."""
        read = []
        while len(self._queue) > keep:
            pending = self._queue.popleft()
            if pending.ready is not None:
                pending.ready.synchronize()
            loss, bad = pending.host.tolist()
            try:
                read.append(check(pending.step, loss, bad))
            except TrainerError:
                self._queue.clear()
                raise
        return read

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
