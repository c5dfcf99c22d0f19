"""The job runner: takes queued jobs from the database to the GPU worker, one lane per kind.

submit -> queued -> running (progress) -> delivering (files on disk) -> done
                                      \\-> failed | cancelled
Generation and training are separate lanes that run side by side: the worker interleaves
them between training steps, so a long training never blocks /imagine. A job whose worker
dies is retried (training resumes from its last checkpoint), then failed with a clear message.
"""

from __future__ import annotations

import asyncio
import logging

from zimage_protocol.errors import ErrorCode

from ..db.jobs import JobStore
from ..db.loras import LoraStore
from ..db.models import Job, JobKind, JobStatus
from ..db.moderation import ModerationStore
from ..errors import worker_crashed_message, worker_error_message
from ..settings import Settings
from ..worker.client import WorkerClient, WorkerError, WorkerUnavailable
from . import render
from .delivery import Delivery
from .imagine_lane import ImagineLane
from .training_lane import TrainingLane

log = logging.getLogger(__name__)

WORKER_WAIT = 5.0            # how long to wait for the worker before looking at the queue again
POSITION_UPDATES = 10        # queued jobs per lane whose position message is refreshed when the queue moves


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, moderation: ModerationStore, loras: LoraStore,
                 worker: WorkerClient, delivery: Delivery, make_view, signer=None):
        self.settings = settings
        self.store = store
        self.moderation = moderation
        self.loras = loras
        self.worker = worker
        self.delivery = delivery
        self.make_view = make_view  # job -> discord.ui.View with the result buttons
        self.signer = signer        # LinkSigner for files too big for Discord (set by the client)
        self.lanes = {JobKind.IMAGINE: ImagineLane(self), JobKind.TRAIN: TrainingLane(self)}
        self.current: dict[str, Job] = {}
        self._wake = {kind: asyncio.Event() for kind in self.lanes}
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run_forever(kind), name=f"lane-{kind}") for kind in self.lanes]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    async def recover(self) -> None:
        """At start-up: re-queue interrupted jobs and re-post finished ones never delivered."""
        for job in await self.store.recover_interrupted():
            log.info("job %s was interrupted by a restart; queued again", job.id)
        for job in await self.store.jobs_in(JobStatus.DELIVERING):
            await self.lanes[JobKind.IMAGINE].deliver(job)

    async def cancel(self, job: Job) -> bool:
        """Cancel a queued job, or ask the worker to stop the running one."""
        if await self.store.cancel_if_queued(job.id):
            await self.delivery.edit_status(job, render.cancelled_text(job), view=None)
            await self.refresh_positions()
            return True
        running = self.current.get(job.kind)
        if running is not None and running.id == job.id:
            try:
                await self.worker.cancel(self.request_id(running))
            except WorkerUnavailable:
                return False
            return True
        return False

    async def _run_forever(self, kind: str) -> None:
        wake = self._wake[kind]
        while True:
            try:
                await self.worker.wait_connected(WORKER_WAIT)
                job = await self.store.claim_next(kind)
                if job is None:
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), WORKER_WAIT)
                    except TimeoutError:
                        pass
                    continue
                await self._run(job)
            except WorkerUnavailable:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the runner must outlive any one bad job
                log.exception("%s lane error; continuing", kind)
                await asyncio.sleep(1)

    @staticmethod
    def request_id(job: Job) -> str:
        return f"job-{job.id}-{job.attempts}"

    async def _run(self, job: Job) -> None:
        """Run a job in its lane; worker failures are mapped to job states here, in one place."""
        self.current[job.kind] = job
        try:
            await self.lanes[job.kind].run(job)
        except WorkerError as exc:
            if exc.code == ErrorCode.CANCELLED:
                await self.store.finish(job.id, JobStatus.CANCELLED)
                await self.delivery.edit_status(job, render.cancelled_text(job), view=None)
            else:
                await self.fail(job, worker_error_message(exc.code, str(exc)))
        except WorkerUnavailable as exc:
            if job.attempts < self.settings.max_attempts:
                log.warning("job %s: %s; retrying", job.id, exc)
                await self.store.requeue(job.id, error=str(exc))
            else:
                await self.fail(job, worker_crashed_message(job.kind, job.attempts))
        finally:
            self.current.pop(job.kind, None)

    async def fail(self, job: Job, reason: str) -> None:
        await self.store.finish(job.id, JobStatus.FAILED, error=reason)
        await self.delivery.post_final(job, render.failed_text(job, reason), embed=None, view=None)

    async def refresh_positions(self, paused_guild: int | None = None) -> None:
        """Re-show queue positions after the queue moved; a paused guild's jobs say they wait."""
        for kind in self.lanes:
            for position, job in enumerate((await self.store.queued_jobs(kind))[:POSITION_UPDATES], start=1):
                await self.delivery.edit_status(job, render.queued_text(job, position))
        if paused_guild is not None:
            for job in await self.store.guild_jobs(paused_guild):
                if job.status == JobStatus.QUEUED:
                    await self.delivery.edit_status(job, render.queued_text(job, None, paused=True))
