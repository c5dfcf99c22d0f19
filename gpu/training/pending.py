"""Training losses still on the GPU, read one step late so the host never waits for the step it just queued.

Why: the compiled training step is host-bound (docs/BENCHMARKS.md): between the GPU's work of two steps
the host has to draw the next step's noise, pad it and launch ~70 CUDA graphs and the optimizer. Reading a
step's loss right away (``float(loss)``) makes the host wait for that step to end, so the GPU then idles
while the host prepares the next one. Here each loss is copied to pinned host memory behind an event,
and the trainer reads it one step later, after the next step is queued: the host waits for the step
before, while the GPU still has the newest one to run.

A step whose loss or gradients are not finite must still leave the weights alone, though the host learns
of it only later: the fused AdamW skips it on the GPU (its ``found_inf``, as ``torch.amp.GradScaler``
uses it), and the trainer raises when it reads the loss. Kept apart from gpu/training/trainer.py, which
decides when to read.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from .config import TrainerError

__all__ = ["PendingLosses", "can_pipeline", "not_finite"]


def can_pipeline(optimizer, device) -> bool:
    """Steps may run ahead of their losses: CUDA and an optimizer that skips a step on the GPU (fused AdamW)."""
    return getattr(device, "type", None) == "cuda" and bool(getattr(optimizer, "defaults", {}).get("fused"))


def not_finite(*values):
    """1.0 on the GPU when any of the scalar tensors is NaN or infinite, else 0.0 (the optimizer's found_inf)."""
    import torch

    finite = torch.stack([torch.isfinite(value.detach().float()).all() for value in values]).all()
    return (~finite).float()


@dataclass
class _Pending:
    step: int
    value: object  # the loss: a pinned CPU copy (pipelined) or the CPU/GPU scalar itself
    ready: Any  # a CUDA event recorded after the copy, or None


class PendingLosses:
    """Losses of finished optimizer steps, in step order, until :meth:`settle` reads them."""

    def __init__(self) -> None:
        self._queue: deque[_Pending] = deque()

    def add(self, step: int, loss, pipelined: bool) -> None:
        """Queue `step`'s loss (a scalar tensor); pipelined: copied to pinned memory without waiting."""
        import torch

        loss = loss.detach()
        if pipelined and loss.is_cuda:
            host = torch.empty((), dtype=loss.dtype, pin_memory=True)
            host.copy_(loss, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            self._queue.append(_Pending(step, host, ready))
        else:
            self._queue.append(_Pending(step, loss, None))

    def settle(self, keep: int = 0) -> list[float]:
        """Read all but the newest `keep` losses (waiting only for their own steps), oldest first.

        Raises TrainerError at the first that is not finite (the rest are dropped: the run ends there)."""
        read = []
        while len(self._queue) > keep:
            pending = self._queue.popleft()
            if pending.ready is not None:
                pending.ready.synchronize()
            value = float(pending.value)  # type: ignore[arg-type]
            if not math.isfinite(value):
                self._queue.clear()
                raise TrainerError(f"the loss became {value} at step {pending.step}; try a lower learning rate")
            read.append(value)
        return read

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
