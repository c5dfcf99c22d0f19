"""Waking the lanes of every bot process when a job becomes runnable, without busy polling.

PostgreSQL: one connection LISTENs on ``zimage_jobs``; a trigger (migration 0006) NOTIFYs it at the
commit of every job that becomes queued and of every guild resumed, whichever process did it. The
connection is re-opened after a drop (and checked every PING_EVERY seconds, so a silent network
drop is noticed), and a re-connect wakes everyone once, for what may have been missed meanwhile.

SQLite has no notifications: a cheap fingerprint of the queue is polled, every POLL_MIN seconds
after a change, backing off to POLL_MAX while nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .models import GuildSettings, Job, JobStatus

log = logging.getLogger(__name__)

CHANNEL = "zimage_jobs"
POLL_MIN, POLL_MAX = 0.25, 5.0
PING_EVERY = 30.0
RECONNECT_MAX = 30.0


class QueueWakeups:
    def __init__(self, engine: AsyncEngine, *, poll_min: float = POLL_MIN, poll_max: float = POLL_MAX):
        self.engine = engine
        self.poll_min, self.poll_max = poll_min, poll_max
        self._subscribers: list[Callable[[], None]] = []
        self._event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.listening = asyncio.Event()  # PostgreSQL: set while the LISTEN connection is up

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def start(self) -> None:
        if self._task is None:
            watch = self._listen if self.engine.dialect.name == "postgresql" else self._poll
            self._task = asyncio.create_task(watch(), name="queue-wakeups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def fire(self) -> None:
        """Something may be runnable now: wake whoever waits (this process's lanes)."""
        event, self._event = self._event, asyncio.Event()
        event.set()
        for callback in self._subscribers:
            callback()

    async def wait(self, timeout: float) -> bool:
        """Until the next wake-up (True) or the timeout (False)."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # --- PostgreSQL ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while; keep trying
                log.warning("queue notifications: %s; listening again in %.0f s", exc, delay)
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen_once(self) -> None:
        async with self.engine.connect() as connection:
            try:
                raw = (await connection.get_raw_connection()).driver_connection
                if raw is None:
                    raise RuntimeError("no asyncpg connection under the pool's connection")
                closed = asyncio.Event()
                raw.add_termination_listener(lambda _conn: closed.set())
                await raw.add_listener(CHANNEL, self._notified)
                self.listening.set()
                self.fire()  # whatever was queued while nobody listened
                while not closed.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), PING_EVERY)
                        continue
                    await raw.execute("SELECT 1", timeout=10)  # a silent network drop raises here
            finally:
                # Never hand a LISTENing connection back to the pool: close it.
                await connection.invalidate()

    def _notified(self, _connection: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.fire()

    # --- SQLite ----------------------------------------------------------------------------------

    async def _poll(self) -> None:
        interval, last = self.poll_min, None
        while True:
            try:
                seen = await self._fingerprint()
                if last is not None and seen != last:
                    self.fire()
                    interval = self.poll_min
                else:
                    interval = min(interval * 2, self.poll_max)
                last = seen
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a locked or missing database: try again later
                log.warning("queue poll: %s", exc)
                interval = self.poll_max
            await asyncio.sleep(interval)

    async def _fingerprint(self) -> tuple:
        """Changes whenever a job is queued, re-queued or taken, or a guild is paused or resumed."""
        async with self.engine.connect() as connection:
            queued = (await connection.execute(
                select(func.count(), func.max(Job.id), func.sum(Job.attempts)).where(Job.status == JobStatus.QUEUED)
            )).one()
            paused = await connection.scalar(
                select(func.count()).select_from(GuildSettings).where(GuildSettings.paused.is_(True)))
            return (*queued, paused)
