"""The job runner: takes queued jobs from the database, one at a time, to the GPU worker.

submit -> queued -> running (progress step k/N) -> delivering (PNGs on disk) -> done
                                              \\-> failed | cancelled
A job whose worker dies is retried once. Images are written to DATA_DIR/outputs before they
are posted, so a crash between generation and delivery re-posts them instead of re-rendering.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import discord

from gpu import protocol

from . import render
from .db.jobs import JobStore
from .db.models import Job, JobStatus
from .db.moderation import ModerationStore
from .delivery import Delivery
from .errors import WORKER_CRASHED_MESSAGE, worker_error_message
from .settings import Settings
from .worker.client import WorkerClient, WorkerError, WorkerUnavailable

log = logging.getLogger(__name__)

WORKER_WAIT = 5.0            # how long to wait for the worker before looking at the queue again
POSITION_UPDATES = 10        # queued jobs whose position message is refreshed when the queue moves


class JobRunner:
    def __init__(self, settings: Settings, store: JobStore, moderation: ModerationStore, worker: WorkerClient,
                 delivery: Delivery, make_view):
        self.settings = settings
        self.store = store
        self.moderation = moderation
        self.worker = worker
        self.delivery = delivery
        self.make_view = make_view  # job -> discord.ui.View with the result buttons
        self.current: Job | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="job-runner")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def recover(self) -> None:
        """At start-up: re-queue interrupted jobs and re-post finished ones never delivered."""
        for job in await self.store.recover_interrupted():
            log.info("job %s was interrupted by a restart; queued again", job.id)
        for job in await self.store.jobs_in(JobStatus.DELIVERING):
            await self._deliver(job)

    async def cancel(self, job: Job) -> bool:
        """Cancel a queued job, or ask the worker to stop the running one."""
        if await self.store.cancel_if_queued(job.id):
            await self.delivery.edit_status(job, render.cancelled_text(job), view=None)
            await self.refresh_positions()
            return True
        if self.current is not None and self.current.id == job.id:
            try:
                await self.worker.cancel(self._request_id(self.current))
            except WorkerUnavailable:
                return False
            return True
        return False

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.worker.wait_connected(WORKER_WAIT)
                job = await self.store.claim_next()
                if job is None:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), WORKER_WAIT)
                    except TimeoutError:
                        pass
                    continue
                await self._run(job)
            except WorkerUnavailable:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the runner must outlive any one bad job
                log.exception("job runner error; continuing")
                await asyncio.sleep(1)

    @staticmethod
    def _request_id(job: Job) -> str:
        return f"job-{job.id}-{job.attempts}"

    async def _run(self, job: Job) -> None:
        self.current = job
        try:
            await self.delivery.edit_status(job, render.starting_text(job))
            await self.refresh_positions()
            images, seconds = await self._generate(job)
        except WorkerError as exc:
            if exc.code == protocol.ERROR_CANCELLED:
                await self.store.finish(job.id, JobStatus.CANCELLED)
                await self.delivery.edit_status(job, render.cancelled_text(job), view=None)
            else:
                await self._fail(job, worker_error_message(exc.code, str(exc)))
            return
        except WorkerUnavailable as exc:
            if job.attempts < self.settings.max_attempts:
                log.warning("job %s: %s; retrying", job.id, exc)
                await self.store.requeue(job.id, error=str(exc))
            else:
                await self._fail(job, WORKER_CRASHED_MESSAGE)
            return
        finally:
            self.current = None
        job.result = await asyncio.to_thread(self._save_images, job, images, seconds)
        await self.store.mark_delivering(job.id, job.result)
        await self._deliver(job)

    async def _generate(self, job: Job) -> tuple[dict[int, tuple[int, bytes]], float]:
        """Stream the job through the worker; returns {index: (seed, png)} and GPU seconds."""
        params = protocol.GenerateParams.from_json(job.params)
        images: dict[int, tuple[int, bytes]] = {}
        seconds = 0.0
        last_edit = 0.0
        async for frame in self.worker.generate(self._request_id(job), params):
            if frame.op == "progress":
                now = time.monotonic()
                step, total = frame.header["step"], frame.header["total"]
                # Discord rate-limits edits: at most one per interval, but always show the last step.
                if now - last_edit >= self.settings.progress_interval or step == total:
                    last_edit = now
                    await self.delivery.edit_status(job, render.progress_text(job, step, total))
            elif frame.op == "image":
                images[frame.header["index"]] = (frame.header["seed"], frame.blob)
            elif frame.op == "done":
                seconds = float(frame.header.get("seconds", 0.0))
        return images, seconds

    def _save_images(self, job: Job, images: dict[int, tuple[int, bytes]], seconds: float) -> dict:
        """Blocking file I/O: runs in a thread."""
        folder = self.settings.outputs_dir / str(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for index in sorted(images):
            seed, png = images[index]
            path = folder / f"zimage_{job.id}_{index + 1}_{seed}.png"
            path.write_bytes(png)
            files.append(path.name)
        return {"files": files, "seconds": seconds, "model": self.worker.hello.get("model")}

    async def _deliver(self, job: Job) -> None:
        folder = self.settings.outputs_dir / str(job.id)
        images = await asyncio.to_thread(_read_files, folder, (job.result or {}).get("files", []))
        if not images:
            await self._fail(job, "the finished images were lost before they could be posted")
            return
        if job.guild_id and (await self.moderation.settings(job.guild_id)).spoiler_images:
            images = [(f"SPOILER_{name}", data) for name, data in images]
        groups = _upload_groups(images, int(job.params.get("upload_limit", 10 << 20)))
        delivered = await self.delivery.post_final(
            job, render.done_text(job, 0, len(groups)), lambda: _as_files(groups[0]),
            embed=render.result_embed(job), view=self.make_view(job))
        for part, group in enumerate(groups[1:], start=1):
            delivered &= await self.delivery.post_extra(
                job, render.done_text(job, part, len(groups)), lambda group=group: _as_files(group))
        if delivered:
            await self.store.finish(job.id, JobStatus.DONE)
        else:
            await self.store.finish(job.id, JobStatus.FAILED, error="could not post the result to Discord")

    async def _fail(self, job: Job, reason: str) -> None:
        await self.store.finish(job.id, JobStatus.FAILED, error=reason)
        await self.delivery.post_final(job, render.failed_text(job, reason), embed=None, view=None)

    async def refresh_positions(self, paused_guild: int | None = None) -> None:
        """Re-show queue positions after the queue moved; a paused guild's jobs say they wait."""
        for position, job in enumerate((await self.store.queued_jobs())[:POSITION_UPDATES], start=1):
            await self.delivery.edit_status(job, render.queued_text(job, position))
        if paused_guild is not None:
            for job in await self.store.guild_jobs(paused_guild):
                if job.status == JobStatus.QUEUED:
                    await self.delivery.edit_status(job, render.queued_text(job, None, paused=True))


def _read_files(folder: Path, names: list[str]) -> list[tuple[str, bytes]]:
    """Blocking: runs in a thread. Empty when any file is missing."""
    paths = [folder / name for name in names]
    if not all(path.is_file() for path in paths):
        return []
    return [(path.name, path.read_bytes()) for path in paths]


def _as_files(images: list[tuple[str, bytes]]) -> list[discord.File]:
    # New File objects on every call: a retried upload must not reuse a consumed buffer.
    return [discord.File(io.BytesIO(data), filename=name) for name, data in images]


def _upload_groups(images: list[tuple[str, bytes]], limit: int) -> list[list[tuple[str, bytes]]]:
    """Split images into messages that each fit Discord's upload limit (10 files at most)."""
    groups: list[list[tuple[str, bytes]]] = [[]]
    used = 0
    for image in images:
        size = len(image[1])
        if groups[-1] and (used + size > limit or len(groups[-1]) == 10):
            groups.append([])
            used = 0
        groups[-1].append(image)
        used += size
    return groups
