"""A job's status line (queue position, "starting", progress) edited in the background, latest text wins.

Why: an edit is a Discord request that may wait seconds behind a rate-limit bucket. Awaited in a lane it
stalls the GPU; awaited in the position refresh it stalls the refresh. Here ``show`` only records the text
the job's message should say now and returns. One task per message sends it: at most one edit in flight
per message, at least ``min_interval`` seconds between two edits of it, and a newer text supersedes one
not sent yet. Before a job's final message (result, failure, cancel) the caller ``settle``s it: the
pending text is dropped and the edit in flight finishes first, so no stale status lands on a result.

Position texts (bot/jobs/positions.py) follow two more rules: they are ignored once the job has left the
queue (its lane showed something else), and a message is edited only when its position changed, at most
once per ``position_interval``. ``settle`` forgets everything about the job: a job put back in the queue
starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..db.models import Job
from .interfaces import JobMessages

log = logging.getLogger(__name__)

POSITION_INTERVAL = 3.0  # seconds between two position edits of one message


@dataclass
class _Slot:
    """What one job's message shows and is about to show."""

    pending: tuple[Job, str, dict[str, Any]] | None = None
    task: asyncio.Task[None] | None = None
    sending: bool = False  # the task is inside an edit (not waiting for min_interval)
    last_edit: float = float("-inf")  # monotonic time the last edit was sent
    left_queue: bool = False  # the lane took over: position texts are ignored
    position: object = None  # the position the message shows (or is about to), e.g. 3 or "paused"
    position_at: float = float("-inf")
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever no task runs


class StatusEdits:
    def __init__(self, messages: JobMessages, min_interval: float, position_interval: float = POSITION_INTERVAL):
        self.messages = messages
        self.min_interval = min_interval  # PROGRESS_INTERVAL: between any two edits of one message
        self.position_interval = position_interval
        self._slots: dict[int, _Slot] = {}

    def show(self, job: Job, content: str, **fields: Any) -> None:
        """The job's message should say `content` now (the lane's texts); returns at once."""
        slot = self._slot(job.id)
        slot.left_queue = True
        self._schedule(slot, job, content, fields)

    def show_position(self, job: Job, position: object, content: str, *, now: float | None = None) -> bool:
        """A queued job's position text, unless the job left the queue, already shows `position`, or had a position
        edit less than ``position_interval`` ago. True when it was scheduled (False: the caller may try later)."""
        slot = self._slot(job.id)
        if slot.left_queue or slot.position == position:
            return True
        now = time.monotonic() if now is None else now
        if now - slot.position_at < self.position_interval:
            return False
        slot.position, slot.position_at = position, now
        self._schedule(slot, job, content, {})
        return True

    def next_position_edit(self, job_id: int) -> float | None:
        """The monotonic time from which a position edit of the job may be sent (None: any time)."""
        slot = self._slots.get(job_id)
        return slot.position_at + self.position_interval if slot else None

    async def settle(self, job_id: int) -> None:
        """Before the job's final message: drop its pending text, let the edit in flight finish, forget the job."""
        slot = self._slots.pop(job_id, None)
        if slot is None or slot.task is None:
            return
        slot.pending = None
        if not slot.sending:
            slot.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(slot.done.wait())

    async def stop(self) -> None:
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._slots.clear()

    @property
    def busy_messages(self) -> int:
        """Messages with an edit pending or in flight (for tests and logs)."""
        return sum(1 for slot in self._slots.values() if slot.task is not None)

    def _slot(self, job_id: int) -> _Slot:
        slot = self._slots.get(job_id)
        if slot is None:
            slot = self._slots[job_id] = _Slot()
            slot.done.set()
        return slot

    def _schedule(self, slot: _Slot, job: Job, content: str, fields: dict[str, Any]) -> None:
        slot.pending = (job, content, fields)
        if slot.task is None:
            slot.done.clear()
            slot.task = asyncio.create_task(self._send(slot), name=f"status-{job.id}")

    async def _send(self, slot: _Slot) -> None:
        try:
            while slot.pending is not None:
                wait = slot.last_edit + self.min_interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if slot.pending is None:
                        break
                job, content, fields = slot.pending
                slot.pending = None
                slot.sending = True
                try:
                    await self.messages.edit_status(job, content, **fields)  # never raises for Discord errors
                except Exception:  # noqa: BLE001 - a status line is never worth a crashed task
                    log.exception("job %s: status edit failed", job.id)
                finally:
                    slot.sending = False
                    slot.last_edit = time.monotonic()
        finally:
            slot.task = None
            slot.done.set()
