"""The generation lane: one /imagine job through a worker, its PNGs saved, then posted.

It is a PipelinedLane (bot/jobs/lane.py): the runner calls ``generate`` on the worker it serves
(bot/jobs/pipeline.py), then ``keep`` and ``resume`` in a background task beside the next job's
generation. ``generate`` never waits for Discord: its status lines go through StatusEdits.

Live previews: the worker sends a small JPEG of the image forming every PREVIEW_EVERY steps (a Progress
with a preview). The latest one is attached to every progress edit from then on, so whichever edit
StatusEdits sends (at most one per PROGRESS_INTERVAL, the newest) carries it: no extra Discord request.
The result's edit replaces the message's attachments, and a failure's or a cancel's edit empties them,
so no preview outlives the job's run.

The guild's /mod content check (bot/jobs/screening.py) runs in ``resume``, between the saved PNGs and their post:
a flagged result is withheld (mode block) or posted as a spoiler (mode spoiler).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import discord

from zimage_protocol.constants import MAX_PREVIEW_BYTES
from zimage_protocol.messages import Done, GenerateParams, ImageReady, Progress

from .. import metrics
from ..db.models import GuildSettings, Job, JobKind, JobStatus
from ..db.moderation import ModerationStore
from ..i18n import tr
from ..safety import Action, ContentMode, Verdict
from . import render
from .delivery import is_private
from .interfaces import FileMaker, WorkerLink
from .lane import LaneContext
from .outcomes import ResultNotHere
from .requests import request_id
from .screening import Screening


@dataclass(frozen=True)
class Generated:
    """What the worker made for a job: {index: (seed, png)}, its own seconds, and its model."""

    images: dict[int, tuple[int, bytes]]
    seconds: float
    model: str
    prompts: dict[int, str] = field(default_factory=dict)  # {index: the worker's rewrite} with enhance


PREVIEW_NAME = "preview.jpg"


class ImagineLane:
    """Images are written to DATA_DIR/outputs before they are posted, so a crash between
    generation and delivery re-posts them at the next start instead of rendering again."""

    kind = JobKind.IMAGINE

    def __init__(self, context: LaneContext, moderation: ModerationStore, make_view: Callable[[Job], discord.ui.View],
                 screening: Screening | None = None):
        self.settings, self.store = context.settings, context.store
        self.messages, self.positions, self.status = context.messages, context.positions, context.status
        self.moderation = moderation  # the guild's spoiler setting
        self.make_view = make_view    # the result buttons (bot/views.py)
        self.screening = screening    # the guild's /mod content check (bot/jobs/screening.py); None: never checks

    async def generate(self, job: Job, worker: WorkerLink) -> Generated:
        """Stream the job through `worker`; progress goes to the job's message in the background."""
        self.status.show(job, render.starting_text(job))
        params = GenerateParams.from_json(job.params)
        images: dict[int, tuple[int, bytes]] = {}
        prompts: dict[int, str] = {}
        seconds = 0.0
        shown = 0  # a preview's Progress follows its step's own, possibly after the next step's: never step back
        preview: FileMaker | None = None
        preview_name = ""
        async for message in worker.generate(request_id(job), params):
            match message:
                case Progress(step=step, total=total, preview=picture) if step < total:
                    if picture and self.settings.previews.enabled and len(picture) <= MAX_PREVIEW_BYTES:
                        preview_name = preview_name or await self._preview_name(job)
                        preview = partial(_as_files, [(preview_name, picture)])
                    shown = max(shown, step)
                    # StatusEdits sends at most one edit per PROGRESS_INTERVAL, the newest text; the last
                    # step is not shown: the result replaces it a moment later.
                    self.status.show(job, render.progress_text(job, shown, total), make_files=preview)
                case ImageReady(index=index, seed=seed, png=png, prompt=rewritten):
                    images[index] = (seed, png)
                    if rewritten:
                        prompts[index] = rewritten
                case Done(seconds=done_seconds):
                    seconds = done_seconds
        metrics.generated(job, seconds)
        return Generated(images, seconds, worker.model_name, prompts)

    async def _preview_name(self, job: Job) -> str:
        """A preview is hidden like the result (the guild's spoiler setting); under a content check too, since the
        check only sees the finished picture."""
        if job.guild_id:
            settings = await self.moderation.settings(job.guild_id)
            if settings.spoiler_images or (self.screening and ContentMode.of(settings.content_mode) is not ContentMode.OFF):
                return f"SPOILER_{PREVIEW_NAME}"
        return PREVIEW_NAME

    async def keep(self, job: Job, made: Generated) -> None:
        job.result = result = await asyncio.to_thread(self._save_images, job, made)
        await self.store.mark_delivering(job.id, result)
        job.status = JobStatus.DELIVERING

    def _save_images(self, job: Job, made: Generated) -> dict:
        """Blocking file I/O: runs in a thread."""
        folder = self.settings.outputs_dir / str(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for index in sorted(made.images):
            seed, png = made.images[index]
            path = folder / f"zimage_{job.id}_{index + 1}_{seed}.png"
            path.write_bytes(png)
            files.append(path.name)
        result: dict = {"files": files, "seconds": made.seconds, "model": made.model}
        if made.prompts:  # shown under the result (render.result_embed); the PNGs carry them too
            result["enhanced_prompts"] = [made.prompts.get(index, "") for index in sorted(made.images)]
        return result

    async def resume(self, job: Job) -> None:
        """Post the saved images; also what a restart does for a job it caught DELIVERING."""
        folder = self.settings.outputs_dir / str(job.id)
        images = await asyncio.to_thread(_read_files, folder, (job.result or {}).get("files", []))
        if not images:  # saved by another bot process (or lost with a disk): make them again rather than fail
            raise ResultNotHere("the finished images are not on this host")
        if job.guild_id:
            settings = await self.moderation.settings(job.guild_id)
            action = await self._screen(job, settings, images)
            if action is Action.BLOCK:
                return
            if settings.spoiler_images or action is Action.SPOILER:
                images = [(f"SPOILER_{name}", data) for name, data in images]
        groups = _upload_groups(images, int(job.params.get("upload_limit", 10 << 20)))
        await self.status.settle(job.id)  # the result lands after the last status edit, never under one
        delivered = await self.messages.post_final(
            job, render.done_text(job, 0, len(groups)), lambda: _as_files(groups[0]),
            embed=render.result_embed(job), view=self.make_view(job))
        for part, group in enumerate(groups[1:], start=1):
            delivered &= await self.messages.post_extra(
                job, render.done_text(job, part, len(groups)), partial(_as_files, group))
        metrics.delivered(job, delivered, len(images))
        if delivered:
            await self.store.finish(job.id, JobStatus.DONE)
        else:
            await self.store.finish(job.id, JobStatus.FAILED, error="could not post the result to Discord")

    async def _screen(self, job: Job, settings: GuildSettings, images: list[tuple[str, bytes]]) -> Action:
        """The guild's content check; a blocked result is withheld here and its job ended (BLOCK)."""
        if self.screening is None:
            return Action.POST
        screened = await self.screening.screen(job, settings, images)
        if screened.action is Action.BLOCK:
            await self._withhold(job, screened.verdict)
        return screened.action

    async def _withhold(self, job: Job, verdict: Verdict | None) -> None:
        """No image is posted: the job's message says so (no prompt, no picture), its member hears why privately
        while the interaction lives, and the job ends done, its record naming what the check found. The PNGs stay
        on disk (DATA_DIR/outputs), like every result's."""
        locale = str(job.params.get("locale") or "")
        await self.status.settle(job.id)
        posted = await self.messages.post_final(job, tr(locale, "safety.withheld", job=job.id, user=job.user_id),
                                                embed=None, view=None)
        if not is_private(job):  # a private job's message above already went to its member alone
            await self.messages.post_ephemeral(job, tr(locale, "safety.withheld_private", job=job.id))
        metrics.delivered(job, posted, 0)
        why = verdict.describe() if verdict else "flagged"
        await self.store.finish(job.id, JobStatus.DONE, error=f"withheld by the server's content check: {why}")


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
