"""Finished jobs posted beside the lane: one background task per job, in order within a channel.

Why: saving PNGs, uploading them and ending the job take a Discord round trip or more (seconds when a
bucket is spent); the GPU must not wait for that. Each job gets its own task, so no job's delivery
waits behind another's, except that results in one channel are posted in the order their jobs finished
(a job's task starts posting once the previous one in its channel is done). The tasks are tracked:
``stop`` lets them finish for a grace period, then cancels the rest (those jobs stay DELIVERING, or
RUNNING before their files were kept, and a restart finishes them: recover()).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..db.models import Job

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds a stopping bot gives deliveries in progress to finish


class Deliveries:
    def __init__(self, stop_grace: float = STOP_GRACE):
        self.stop_grace = stop_grace
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_in_channel: dict[int, asyncio.Task[None]] = {}

    def start(self, job: Job, deliver: Callable[[], Awaitable[object]]) -> asyncio.Task[None]:
        """Run `deliver` (which settles its own errors) for `job` in the background, after the channel's previous one."""
        before = self._last_in_channel.get(job.channel_id)
        task = asyncio.create_task(self._after(before, deliver), name=f"deliver-{job.id}")
        self._tasks.add(task)
        self._last_in_channel[job.channel_id] = task
        task.add_done_callback(lambda done: self._forget(job.channel_id, done))
        return task

    @property
    def in_progress(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        if not self._tasks:
            return
        try:
            await asyncio.wait_for(self.wait_idle(), self.stop_grace)
        except TimeoutError:
            log.warning("%d deliveries still running at stop: cancelled; a restart posts them", len(self._tasks))
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    async def _after(before: asyncio.Task[None] | None, deliver: Callable[[], Awaitable[object]]) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])  # its outcome is its own; only the order matters here
        try:
            await deliver()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - `deliver` settles job errors; anything else is only logged
            log.exception("a delivery failed")

    def _forget(self, channel_id: int, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._last_in_channel.get(channel_id) is task:
            del self._last_in_channel[channel_id]
