"""One worker's generation loop, pipelined: the GPU never waits for Discord, nor for the queue.

    claim job N -> send to the worker -> ... -> N's images back -> N saved and posted (background task)
          claim job N+1 -> send to the worker (it waits there behind N) -> ...

- **Prefetch.** The loop keeps ``1 + ahead`` jobs on its worker: the one generating and ``ahead`` more
  already sent, waiting in the worker's own queue (gpu/scheduler.py runs generations one at a time, in
  the order they came), so the worker starts job N+1 the moment job N ends, without a round trip to
  the bot and the database in between.
- **Delivery beside the lane.** When a job's generation ends, its PNGs are saved, posted and the job
  ended in a background task (bot/jobs/deliveries.py); the loop immediately sends the next job.
- **Nothing lost, nothing run twice.** A job is RUNNING in the database from its claim. If the worker
  goes away, the job at the head of the loop (the one on the GPU) is retried like any lost job, and
  those sent behind it go back to the queue in their fair place with their attempt not counted
  (``JobStore.release``; JobOutcomes.settle(prefetched=True)). A cancel of a job waiting on the worker
  is a cancel on the worker: it skips the job when it gets there and answers "cancelled". A bot that
  stops leaves the jobs RUNNING, and the next start queues them again (``recover_interrupted``); the
  worker drops what a departed bot asked for.

The loop is given its worker link, and the runner runs one loop per worker, all on one queue: a worker
with room claims the next job in fair order, so the fair order decides *which* job runs next and
whichever worker is free runs it. **LoRA affinity:** a loop that claims a job with LoRAs its worker was
not lately given hands it to an idle peer whose worker was (it has them in memory; loading them costs
seconds), if there is one; the job stays RUNNING in between and is released if that peer's worker goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from .. import metrics
from ..db.models import Job
from ..worker.client import WorkerUnavailable
from .deliveries import Deliveries
from .interfaces import JobQueue, WorkerLink
from .lane import PipelinedLane
from .outcomes import JobOutcomes
from .positions import Positions

log = logging.getLogger(__name__)

PREFETCH = 1  # jobs sent to the worker ahead of the one it generates
IDLE_WAIT = 5.0  # seconds between looks at the queue when nothing woke the loop


@dataclass
class _OnWorker:
    job: Job
    task: asyncio.Task[Any]  # the job's generation stream
    behind_lost: bool = False  # a job ahead of it on the worker was lost with the worker


class GenerationPipeline:
    def __init__(self, lane: PipelinedLane, worker: WorkerLink, *, store: JobQueue, outcomes: JobOutcomes,
                 positions: Positions, deliveries: Deliveries, on_worker: dict[int, tuple[Job, WorkerLink]],
                 ahead: int = PREFETCH, idle_wait: float = IDLE_WAIT):
        self.lane, self.worker = lane, worker
        self.store, self.outcomes, self.positions, self.deliveries = store, outcomes, positions, deliveries
        self.on_worker = on_worker  # shared with the runner: which worker has which job (for cancels)
        self.ahead = ahead
        self.idle_wait = idle_wait
        self.wake = asyncio.Event()  # set when a job was queued
        self.peers: list[GenerationPipeline] = []  # the loops of the other workers, on the same queue
        self._window: deque[_OnWorker] = deque()
        self._handed: deque[Job] = deque()  # claimed by a peer, handed to us for our worker's LoRAs

    @property
    def idle(self) -> bool:
        """Nothing on this loop's worker, nothing handed to it, and the worker connected."""
        return not self._window and not self._handed and self.worker.connected

    def take(self, job: Job) -> None:
        """A peer claimed `job` (RUNNING) and hands it over: it goes to this loop's worker next."""
        self._handed.append(job)
        self.wake.set()

    async def serve(self) -> None:
        window = self._window
        try:
            while True:
                try:
                    await self._fill(window)
                    if not window:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), self.idle_wait)
                        continue
                    await self._wait(window)
                    while window and window[0].task.done():
                        await self._finished(window.popleft(), window)
                except WorkerUnavailable:
                    await self._release_handed()  # no worker here: a peer's loop runs them instead
                    continue  # no worker to send to yet: _fill waited for it
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the loop must outlive any one bad job
                    log.exception("%s pipeline error; continuing", self.lane.kind)
                    await asyncio.sleep(1)
        finally:
            await self._abandon(window)

    async def _fill(self, window: deque[_OnWorker]) -> None:
        """Claim and send jobs until the worker holds 1 + ahead of them, or the queue is empty."""
        while len(window) <= self.ahead:
            if not window:
                if not self.worker.connected:
                    await self._release_handed()  # not held while we wait: a peer's worker runs them now
                await self.worker.wait_connected(self.idle_wait)
            self.wake.clear()  # before the claim: a job queued after it wakes the loop again
            if self._handed:
                job = self._handed.popleft()
            else:
                claimed = await self.store.claim_next(self.lane.kind)
                if claimed is None:
                    return
                job = claimed
                metrics.job_started(job)
                peer = self._peer_holding_loras(job)
                if peer is not None:
                    peer.take(job)
                    continue
            self.on_worker[job.id] = (job, self.worker)
            task = asyncio.create_task(self.lane.generate(job, self.worker), name=f"generate-{job.id}")
            task.add_done_callback(partial(self._off_worker, job.id))
            window.append(_OnWorker(job, task))
            await self.positions.refresh()  # the queue moved

    def _peer_holding_loras(self, job: Job) -> GenerationPipeline | None:
        """An idle peer whose worker holds the job's LoRAs, when ours does not (see the module's docstring)."""
        names = lora_names(job)
        if not names or self.worker.holds_loras(names):
            return None
        return next((peer for peer in self.peers if peer.idle and peer.worker.holds_loras(names)), None)

    async def _release_handed(self) -> None:
        if not self._handed:
            return
        while self._handed:
            job = self._handed.popleft()
            await self.store.release(job.id)
            log.info("job %s: its worker went before it started; back in the queue", job.id)
        for peer in self.peers:
            peer.wake.set()

    def _off_worker(self, job_id: int, _done: asyncio.Task[Any]) -> None:
        self.on_worker.pop(job_id, None)

    async def _wait(self, window: deque[_OnWorker]) -> None:
        """Until the head's generation ends or, while there is room on the worker, a job is queued."""
        head = window[0].task
        if len(window) > self.ahead:
            await asyncio.wait([head])
            return
        woken = asyncio.create_task(self.wake.wait())
        try:
            await asyncio.wait([head, woken], timeout=self.idle_wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _finished(self, done: _OnWorker, behind: deque[_OnWorker]) -> None:
        job, task = done.job, done.task
        error = RuntimeError("the generation was cancelled inside the bot") if task.cancelled() else task.exception()
        if error is None:
            made = task.result()
            self.deliveries.start(job, lambda: self._deliver(job, made))
            return
        if isinstance(error, WorkerUnavailable):
            for waiting in behind:  # they were queued on the worker behind this one: they never ran
                waiting.behind_lost = True
        if not isinstance(error, Exception):  # a BaseException other than a cancel: let it end the loop
            raise error
        await self.outcomes.settle(job, error, prefetched=done.behind_lost)
        if isinstance(error, WorkerUnavailable):
            for peer in self.peers:  # it is queued again: a live worker takes it now, not at its next poll
                peer.wake.set()

    async def _deliver(self, job: Job, made: Any) -> None:
        try:
            await self.lane.keep(job, made)
            await self.lane.resume(job)
        except asyncio.CancelledError:
            raise  # the bot is stopping: the job stays as it is and a restart finishes it
        except Exception as error:  # noqa: BLE001 - every error of a job ends the job
            await self.outcomes.settle(job, error)

    async def _abandon(self, window: deque[_OnWorker]) -> None:
        """The bot is stopping: stop reading the streams. The jobs stay RUNNING (those handed to this loop and not
        sent yet too); the next start queues them again."""
        for entry in window:
            entry.task.cancel()
        await asyncio.gather(*(entry.task for entry in window), return_exceptions=True)
        for entry in window:
            self.on_worker.pop(entry.job.id, None)


def lora_names(job: Job) -> list[str]:
    """The cache names of the LoRAs a generation job asks for (its stored params, as bot/imagine.py wrote them)."""
    params = job.params if isinstance(job.params, dict) else {}
    return [str(lora.get("name")) for lora in params.get("loras", ()) if isinstance(lora, dict)]
