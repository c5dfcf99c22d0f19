"""The job runner: takes queued jobs from the database to the GPU worker, one lane per kind.

submit -> queued -> running (progress) -> delivering (files on disk) -> done
                                      \\-> failed | cancelled
Generation and training are separate lanes that run side by side: the worker interleaves
them between training steps, so a long training never blocks /imagine. Generation is pipelined
(bot/jobs/pipeline.py: one job ahead on the worker, results posted beside the lane); training
runs one job at a time from start to end. Whatever a lane raises is mapped to the job's state in
one place (bot/jobs/outcomes.py), so no error leaves a job running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from .. import metrics
from ..db.models import Job
from ..worker.client import WorkerUnavailable
from .deliveries import Deliveries
from .interfaces import WorkerLink
from .lane import Lane, LaneContext, PipelinedLane
from .outcomes import JobOutcomes, Outcome
from .pipeline import PREFETCH, GenerationPipeline
from .requests import request_id

log = logging.getLogger(__name__)

WORKER_WAIT = 5.0        # how long to wait for the worker before looking at the queue again
BUSY_RETRY_DELAY = 5.0   # how long a lane waits after the worker said it is busy before claiming again


class JobRunner:
    def __init__(self, context: LaneContext, lanes: Iterable[Lane | PipelinedLane], *, max_attempts: int,
                 workers: Sequence[WorkerLink] = (), busy_retry_delay: float = BUSY_RETRY_DELAY,
                 prefetch: int = PREFETCH, deliveries: Deliveries | None = None):
        """`workers`: the links generation loops run on, one loop each (default: the context's one worker).
        Serial lanes (training) go through the context's worker: the pool picks where a training runs."""
        self.store, self.worker = context.store, context.worker
        self.outcomes = JobOutcomes(context, max_attempts)
        self.lanes: dict[str, Lane | PipelinedLane] = {lane.kind: lane for lane in lanes}
        self.busy_retry_delay = busy_retry_delay
        self.deliveries = deliveries or Deliveries()
        self.on_worker: dict[int, tuple[Job, WorkerLink]] = {}  # job id -> the job and the worker that has it
        # One generation loop per worker, each handed its worker link; the loops of one lane know each other.
        self.pipelines: list[GenerationPipeline] = []
        for lane in self.lanes.values():
            if not isinstance(lane, PipelinedLane):
                continue
            loops = [GenerationPipeline(lane, link, store=self.store, outcomes=self.outcomes,
                                        positions=context.positions, deliveries=self.deliveries,
                                        on_worker=self.on_worker, ahead=prefetch, idle_wait=WORKER_WAIT)
                     for link in (workers or (context.worker,))]
            for loop in loops:
                loop.peers = [peer for peer in loops if peer is not loop]
            self.pipelines += loops
        self._serial = {kind: lane for kind, lane in self.lanes.items() if not isinstance(lane, PipelinedLane)}
        self._wake = {kind: asyncio.Event() for kind in self._serial}
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._serve(kind), name=f"lane-{kind}") for kind in self._serial]
        self._tasks += [asyncio.create_task(pipeline.serve(), name=f"pipeline-{pipeline.lane.kind}-{number}")
                        for number, pipeline in enumerate(self.pipelines)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliveries.stop()

    def wake(self) -> None:
        """A job was queued (or a guild resumed): look at the queue now rather than at the next poll."""
        for event in self._wake.values():
            event.set()
        for pipeline in self.pipelines:
            pipeline.wake.set()

    async def recover(self) -> None:
        """At start-up: re-queue interrupted jobs and re-post finished ones never delivered."""
        for job in await self.store.recover_interrupted():
            log.info("job %s was interrupted by a restart; queued again", job.id)
        for job in await self.store.adopt_undelivered():  # not those another live bot process is posting
            await self.resume_delivery(job)

    async def resume_delivery(self, job: Job) -> None:
        """Post the saved result of a DELIVERING job this process took over (see recover)."""
        await self._run(job, self.lanes[job.kind].resume)

    def jobs_on(self, worker: WorkerLink) -> list[Job]:
        """The jobs a worker has now (generating, or waiting there behind the one that is), for /workers."""
        return [job for job, link in self.on_worker.values() if link is worker]

    async def cancel(self, job: Job) -> bool:
        """Cancel a queued job, or ask the worker that has it to stop it (its lane then ends it)."""
        if await self.store.cancel_if_queued(job.id):
            await self.outcomes.cancelled_while_queued(job)
            return True
        held = self.on_worker.get(job.id)
        if held is None:
            return False
        running, worker = held
        try:
            await worker.cancel(request_id(running))
        except WorkerUnavailable:
            return False
        return True

    async def _serve(self, kind: str) -> None:
        """A serial lane's loop: claim the next job in fair order, run it, and never die of one job."""
        wake = self._wake[kind]
        lane = self._serial[kind]
        while True:
            try:
                await self.worker.wait_connected(WORKER_WAIT)
                wake.clear()
                job = await self.store.claim_next(kind)
                if job is None:
                    try:
                        await asyncio.wait_for(wake.wait(), WORKER_WAIT)
                    except TimeoutError:
                        pass
                    continue
                metrics.job_started(job)
                self.on_worker[job.id] = (job, self.worker)
                try:
                    outcome = await self._run(job, lane.run)
                finally:
                    self.on_worker.pop(job.id, None)
                if outcome is Outcome.BUSY:
                    await asyncio.sleep(self.busy_retry_delay)
            except WorkerUnavailable:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the runner must outlive any one bad job
                log.exception("%s lane error; continuing", kind)
                await asyncio.sleep(1)

    async def _run(self, job: Job, step: Callable[[Job], Awaitable[None]]) -> Outcome:
        """Run one step of a lane for a job; whatever it raises becomes the job's state."""
        try:
            await step(job)
            return Outcome.FINISHED
        except asyncio.CancelledError:
            raise  # the bot is stopping: the job stays RUNNING and is queued again at the next start
        except Exception as error:  # noqa: BLE001 - every error of a job ends the job, never the lane
            return await self.outcomes.settle(job, error)
