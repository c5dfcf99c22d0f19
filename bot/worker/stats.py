"""What one worker did lately, as the bot saw it: images/min for /workers, recent LoRAs for job affinity."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterable


class WorkerStats:
    """What one worker did lately, as its client saw it pass: the images it sent back (for images/min) and the
    LoRAs it was last given (so a job goes to a worker that already holds its LoRAs: bot/jobs/pipeline.py)."""

    WINDOW = 300.0    # images/min is counted over the last five minutes
    LORAS_KEPT = 16   # the LoRA names remembered per worker (about what its cache holds)

    def __init__(self) -> None:
        self._images: deque[float] = deque()
        self._loras: OrderedDict[str, None] = OrderedDict()

    def image_made(self, now: float | None = None) -> None:
        self._images.append(time.monotonic() if now is None else now)
        self._forget_old(self._images[-1])

    def images_per_minute(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._forget_old(now)
        return len(self._images) * 60.0 / self.WINDOW

    def _forget_old(self, now: float) -> None:
        while self._images and self._images[0] < now - self.WINDOW:
            self._images.popleft()

    def loras_sent(self, names: Iterable[str]) -> None:
        for name in names:
            self._loras[name] = None
            self._loras.move_to_end(name)
        while len(self._loras) > self.LORAS_KEPT:
            self._loras.popitem(last=False)

    def holds_loras(self, names: Iterable[str]) -> bool:
        return all(name in self._loras for name in names)
