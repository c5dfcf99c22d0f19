"""The store's background upkeep: this process's leases renewed, other processes' lapsed jobs recovered.

Every lease/3 seconds: the leases of the jobs this process runs or delivers are pushed forward;
RUNNING jobs whose owner stopped renewing (a bot process that died or lost the database) go back
to the queue, which wakes every process's lanes; DELIVERING ones are adopted and handed to
``on_undelivered`` (the runner posts their saved result). So a dead process's jobs are taken up by
a live one within about one lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..periodic import Periodic
from .models import Job

if TYPE_CHECKING:
    from .jobs import JobStore

log = logging.getLogger(__name__)

Undelivered = Callable[[Job], Coroutine[Any, Any, None]]


class LeaseKeeper:
    def __init__(self, store: JobStore, on_undelivered: Undelivered | None = None):
        self.store = store
        self.on_undelivered = on_undelivered
        self.interval = store.lease.total_seconds() / 3
        self._rounds = Periodic("job-leases", self.run_once, self.interval)
        self._deliveries: set[asyncio.Task] = set()

    def start(self) -> None:
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()  # a round in progress finishes: its transaction must not be cut off
        for task in self._deliveries:
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        self._deliveries.clear()

    async def run_once(self) -> None:
        await self.store.renew_leases()
        requeued = await self.store.recover_expired()
        for job in requeued:
            log.warning("job %s: its bot process (%s) stopped renewing its lease; queued again", job.id, job.claimed_by)
        if requeued:
            self.store.wakeups.fire()  # this process's lanes too (SQLite has no NOTIFY)
        if self.on_undelivered is None:
            return
        for job in await self.store.adopt_undelivered(mine=False):  # ours are being posted by us now
            log.warning("job %s: its bot process stopped before posting its result; posting it here", job.id)
            task = asyncio.create_task(self.on_undelivered(job), name=f"deliver-{job.id}")
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
