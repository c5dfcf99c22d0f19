"""Queue positions on the job messages, coalesced: re-shown in the background after the queue moved.

``refresh()`` only marks the positions stale and returns, so no lane and no command ever waits for it. A
background task recomputes them at most once per ``pass_interval`` and hands each of the first
``first`` queued jobs of each lane its position text (bot/jobs/status_edits.py: a message is edited only
when its shown position changed, at most once per few seconds, never after its job left the queue).
A message that could not be edited yet because its last position edit is too recent is looked at again
when it may be. A paused guild's queued jobs say they wait (all of them, once).

The lanes call refresh when they take a job or put one back, /imagine when it queued one, /cancel when
one left, and the moderators' pause / resume when a guild's jobs stop or start waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..db.models import Job, JobKind, JobStatus
from . import render
from .interfaces import JobQueue
from .status_edits import StatusEdits

log = logging.getLogger(__name__)

POSITION_UPDATES = 10  # queued jobs per lane whose position message is refreshed when the queue moves
PASS_INTERVAL = 1.0  # seconds between two recomputations of the positions (a burst is one pass, not a hundred)


class Positions:
    def __init__(self, store: JobQueue, status: StatusEdits, *, first: int = POSITION_UPDATES,
                 pass_interval: float = PASS_INTERVAL):
        self.store = store
        self.status = status
        self.first = first
        self.pass_interval = pass_interval
        self._stale = asyncio.Event()
        self._paused: set[int] = set()  # guilds whose jobs must say they wait
        self._retry_at: float | None = None  # a position edit was held back until then
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # recomputations so far (tests: a burst is coalesced)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="positions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self, paused_guild: int | None = None) -> None:
        """The queue moved (or a guild paused): re-show positions soon. Returns at once."""
        if paused_guild is not None:
            self._paused.add(paused_guild)
        self._stale.set()

    async def _run(self) -> None:
        while True:
            timeout = None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), timeout)
            self._stale.clear()
            try:
                await self._update()
                self.passes += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - positions are cosmetic: never let them end the task
                log.exception("could not refresh queue positions")
            await asyncio.sleep(self.pass_interval)

    async def _update(self) -> None:
        # Every read first, then every edit scheduled without an await in between: a job the lane takes
        # meanwhile has already said "starting", and its position text is ignored (StatusEdits).
        queued = {kind: (await self.store.queued_jobs(kind))[:self.first] for kind in JobKind}
        paused, self._paused = self._paused, set()
        waiting = [job for guild in paused for job in await self.store.guild_jobs(guild)
                   if job.status == JobStatus.QUEUED]
        now = time.monotonic()
        self._retry_at = None
        for jobs in queued.values():
            for position, job in enumerate(jobs, start=1):
                self._show(job, position, render.queued_text(job, position), now)
        for job in waiting:
            if not self._show(job, "paused", render.queued_text(job, None, paused=True), now) and job.guild_id:
                self._paused.add(job.guild_id)  # its guild is looked at again in the retry pass

    def _show(self, job: Job, position: object, text: str, now: float) -> bool:
        if self.status.show_position(job, position, text, now=now):
            return True
        # Edited too recently: come back when it may be edited again.
        due = self.status.next_position_edit(job.id) or now
        self._retry_at = due if self._retry_at is None else min(self._retry_at, due)
        return False
