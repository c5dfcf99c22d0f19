"""A background job run now and then every few seconds, stopped between runs rather than in the middle of one.

Cancelling a task half-way through a database transaction leaves its connection to the garbage
collector, still inside the transaction (on SQLite: still holding the file), and the bot's last
writes on the way out failed behind it. So a stop lets the run in progress finish, and cancels it
only after ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, body: Callable[[], Awaitable[None]], interval: float, *, grace: float = 10.0):
        self.name = name
        self.body = body  # its own errors are its own business: one that escapes is logged and the loop goes on
        self.interval = interval
        self.grace = grace
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.grace)
        except TimeoutError:
            log.warning("%s did not finish its run within %.0f s; cancelled", self.name, self.grace)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        except Exception:  # noqa: BLE001 - the loop logs its own errors; nothing else can escape it
            pass

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.body()
            except Exception:  # noqa: BLE001 - e.g. the database away for a while: the next run tries again
                log.exception("%s failed; trying again in %.0f s", self.name, self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
