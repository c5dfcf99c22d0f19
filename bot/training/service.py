"""/train: from an uploaded (or linked) zip to a queued training job.

Everything slow happens after deferring and off the event loop: streaming the zip to disk,
the intake (bombs, traversal, corrupt images...), and only then is a job queued, so a bad
archive never reaches the queue.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import discord

from ..attachments import save_attachment
from ..db.admission import AdmissionRefused, NewJob, admit
from ..db.jobs import JobStore
from ..db.models import Job, JobKind, JobStatus
from ..db.moderation import ModerationStore
from ..errors import UserFacingError
from ..i18n import Text, tr
from ..interaction_ids import channel_id_of, guild_id_of
from ..jobs import render
from ..jobs.runner import JobRunner
from ..limits import UserLimits
from ..lora_library import LoraLibrary, Upload, check_name
from ..moderation import RequestRules
from ..settings import Settings
from ..worker.pool import WorkerPool
from . import DownloadError, IntakeError, IntakeLimits, download_zip, prepare_dataset
from .approvals import TrainingApprovals

log = logging.getLogger(__name__)

# Rough seconds per training step by device, for the estimate in the intake reply.
SECONDS_PER_STEP = {"cuda": 0.2, "cpu": 2.0}


@dataclass(frozen=True)
class QueuedTraining:
    job: Job
    summary: str  # the intake report and the estimate, for the member's private reply
    status: str   # the job's public message: its place in the queue


class TrainService:
    def __init__(self, settings: Settings, store: JobStore, moderation: ModerationStore, rules: RequestRules,
                 limits: UserLimits, library: LoraLibrary, worker: WorkerPool, runner: JobRunner,
                 approvals: TrainingApprovals):
        self.settings = settings
        self.store = store
        self.moderation = moderation
        self.rules = rules
        self.limits = limits
        self.library = library      # the LoRA's name and record
        self.worker = worker        # its device, for the estimate
        self.runner = runner        # woken when a job is queued
        self.approvals = approvals

    async def check_request(self, interaction: discord.Interaction, name: str, photos: Upload | None,
                            url: str | None) -> None:
        """Cheap checks before deferring; each failure is an ephemeral reply."""
        if interaction.guild_id is None:
            raise UserFacingError(Text("train.dm"))
        check_name(name)
        if (photos is None) == (url is None):
            raise UserFacingError(Text("train.zip_or_url"))
        if photos is not None and not photos.filename.lower().endswith(".zip"):
            raise UserFacingError(Text("train.not_zip", filename=photos.filename))
        await self.library.check_new_name(interaction.guild_id, name, interaction.user.id)
        await self.rules.check_not_banned(interaction.guild_id, interaction.user.id)
        guild = await self.moderation.settings(interaction.guild_id)
        if guild.trainings_per_day:
            recent = await self.store.count_recent(interaction.user.id, interaction.guild_id, JobKind.TRAIN,
                                                   timedelta(days=1))
            if recent >= guild.trainings_per_day:
                raise UserFacingError(Text("limits.daily_trainings", count=guild.trainings_per_day))
        await self.limits.check_queue(interaction.user.id, guild)
        await self.limits.take_request(interaction.user.id, guild)

    async def enqueue(self, interaction: discord.Interaction, name: str, photos: Upload | None, url: str | None,
                      caption: str | None, steps: int | None) -> QueuedTraining:
        """After deferring: the dataset checked into its job folder, the LoRA's record made, the job queued
        (or set to wait for a moderator). Raises UserFacingError, leaving nothing behind."""
        job_dir = self.settings.training_dir / f"ix-{interaction.id}"
        summary = await self.prepare(name, photos, url, caption, job_dir, interaction.locale)
        config = self.config(name, caption, steps)
        lora = await self.library.create(guild_id=guild_id_of(interaction), owner_id=interaction.user.id, name=name,
                                         rank=config["rank"])
        params = {"name": name, "lora_id": lora.id, "dataset_dir": str(job_dir / "dataset"),
                  "output_dir": str(job_dir / "output"), "config": config, "upload_limit": interaction.filesize_limit,
                  "locale": str(interaction.locale)}  # its messages' language (bot/jobs/render.py)
        guild = await self.moderation.settings(interaction.guild_id)
        # The caps checked before the download are checked again inside the INSERT (bot/db/admission.py): a
        # member's parallel /train requests all passed the first check minutes ago.
        caps = self.limits.caps(guild, trainings=True)
        new = NewJob(kind=JobKind.TRAIN, user_id=interaction.user.id, guild_id=interaction.guild_id,
                     channel_id=channel_id_of(interaction), params=params, interaction_id=interaction.id,
                     interaction_token=interaction.token,
                     status=JobStatus.AWAITING_APPROVAL if guild.approve_training else JobStatus.QUEUED)
        try:
            async with self.store.session() as session, session.begin():
                job_id = await admit(session, new, caps)
        except AdmissionRefused as refused:
            await self.library.loras.delete(lora.id)
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            raise self.limits.refusal(refused, caps) from None
        job = await self.store.get(job_id)
        if job is None:  # rows are never deleted; this only narrows the type
            raise UserFacingError(Text("train.vanished"))
        device = self.worker.device or "cuda"
        estimate = config["steps"] * SECONDS_PER_STEP.get(device, 0.5)
        return QueuedTraining(
            job=job,
            summary=tr(interaction, "train.queued", summary=summary, job=job.id, name=name, steps=config["steps"],
                       estimate=render.duration(estimate, interaction.locale), device=device),
            status=render.queued_text(job, await self.store.position(job)))

    async def announce(self, queued: QueuedTraining, message_id: int, channel_id: int) -> None:
        """The job's public message is up: remember it, ask the moderators when they decide, and start."""
        job = queued.job
        await self.store.set_message(job.id, message_id)
        if job.status == JobStatus.AWAITING_APPROVAL:
            guild = await self.moderation.settings(job.guild_id)
            await self.approvals.ask(job, guild.mod_channel_id or channel_id)
        self.runner.wake()

    def config(self, name: str, caption: str | None, steps: int | None) -> dict:
        settings = self.settings
        return {
            "rank": settings.train_rank, "alpha": settings.train_rank, "steps": steps or settings.train_steps,
            "learning_rate": settings.train_learning_rate, "weight_decay": settings.train_weight_decay,
            "timestep_sampling": settings.train_timesteps, "resolution": settings.train_resolution,
            "checkpoint_every": settings.checkpoint_every, "keep_checkpoints": settings.keep_checkpoints,
            "training_adapter": settings.training_adapter,  # resolved by the worker (gpu/training/adapter.py)
            "sample_prompt": caption or f"a photo of {name}", "sample_seed": 42, "sample_steps": 8,
        }

    async def prepare(self, name: str, photos: Upload | None, url: str | None, caption: str | None,
                      job_dir: Path, locale: discord.Locale | None = None) -> str:
        """Download and check the zip into job_dir; returns the intake summary. Raises UserFacingError."""
        settings = self.settings
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        archive = job_dir / "upload.zip"
        try:
            if photos is not None:
                if photos.size > settings.max_zip_bytes:
                    raise UserFacingError(Text("train.zip_too_big", size=photos.size >> 20,
                                                   limit=settings.max_zip_bytes >> 20))
                await save_attachment(photos.url, archive, settings.max_zip_bytes, what="zip")
            elif url is not None:
                await download_zip(url, archive, max_bytes=settings.max_zip_bytes)
            else:  # check_request() refused this before deferring
                raise UserFacingError(Text("train.zip_or_url"))
            limits = IntakeLimits(max_archive_bytes=settings.max_zip_bytes, min_images=settings.train_min_images,
                                  max_images=settings.train_max_images)
            report = await asyncio.to_thread(prepare_dataset, archive, job_dir / "dataset", name=name,
                                             default_caption=caption, limits=limits)
        except (IntakeError, DownloadError, UserFacingError, aiohttp.ClientError, OSError) as exc:
            # Nothing of a refused upload stays on disk. The intake's and the download's errors are
            # written for users: they become the reply here, at the boundary.
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            if isinstance(exc, (aiohttp.ClientError, OSError)):
                raise UserFacingError(Text("train.fetch_failed", error=exc)) from None
            raise UserFacingError(exc.args[0] if exc.args else str(exc)) from None  # a Text stays one
        finally:
            await asyncio.to_thread(archive.unlink, True)
        return report.summary(locale)
