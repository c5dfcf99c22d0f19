"""/train: from an uploaded (or linked) zip to a queued training job.

Everything slow happens after deferring and off the event loop: streaming the zip to disk,
the intake (bombs, traversal, corrupt images...), and only then is a job queued, so a bad
archive never reaches the queue.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import discord

from ..attachments import save_attachment
from ..db.models import JobKind
from ..errors import UserFacingError
from ..lora_library import check_name
from . import DownloadError, IntakeError, IntakeLimits, download_zip, prepare_dataset

if TYPE_CHECKING:
    from ..client import ZImageBot

log = logging.getLogger(__name__)

class TrainService:
    def __init__(self, bot: ZImageBot):
        self.bot = bot

    async def check_request(self, interaction: discord.Interaction, name: str, photos, url: str | None) -> None:
        """Cheap checks before deferring; each failure is an ephemeral reply."""
        if interaction.guild_id is None:
            raise UserFacingError("LoRAs belong to a server: use /train in a server channel.")
        check_name(name)
        if (photos is None) == (url is None):
            raise UserFacingError("Attach a zip of photos as `photos`, or give an https `url` to one (not both).")
        if photos is not None and not photos.filename.lower().endswith(".zip"):
            raise UserFacingError(f"`{photos.filename}` is not a .zip file.")
        await self.bot.library.check_new_name(interaction.guild_id, name)
        await self.bot.rules.check_not_banned(interaction.guild_id, interaction.user.id)
        guild = await self.bot.moderation.settings(interaction.guild_id)
        if guild.trainings_per_day:
            recent = await self.bot.store.count_recent(interaction.user.id, interaction.guild_id, JobKind.TRAIN,
                                                       timedelta(days=1))
            if recent >= guild.trainings_per_day:
                raise UserFacingError(f"This server allows {guild.trainings_per_day} training(s) per member per day.")
        await self.bot.limits.check_queue(interaction.user.id, guild)
        await self.bot.limits.take_request(interaction.user.id, guild)

    def config(self, name: str, caption: str | None, steps: int | None) -> dict:
        settings = self.bot.settings
        return {
            "rank": settings.train_rank, "alpha": settings.train_rank, "steps": steps or settings.train_steps,
            "learning_rate": settings.train_learning_rate, "weight_decay": settings.train_weight_decay,
            "timestep_sampling": settings.train_timesteps, "resolution": settings.train_resolution,
            "checkpoint_every": settings.checkpoint_every, "keep_checkpoints": settings.keep_checkpoints,
            "training_adapter": str(settings.training_adapter) if settings.training_adapter else None,
            "sample_prompt": caption or f"a photo of {name}", "sample_seed": 42, "sample_steps": 8,
        }

    async def prepare(self, name: str, photos, url: str | None, caption: str | None, job_dir: Path) -> str:
        """Download and check the zip into job_dir; returns the intake summary. Raises UserFacingError."""
        settings = self.bot.settings
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        archive = job_dir / "upload.zip"
        try:
            if photos is not None:
                if photos.size > settings.max_zip_bytes:
                    raise UserFacingError(f"The zip is {photos.size >> 20} MiB; the limit is {settings.max_zip_bytes >> 20} MiB.")
                await save_attachment(photos.url, archive, settings.max_zip_bytes, what="zip")
            else:
                await download_zip(url, archive, max_bytes=settings.max_zip_bytes)
            limits = IntakeLimits(max_archive_bytes=settings.max_zip_bytes, min_images=settings.train_min_images,
                                  max_images=settings.train_max_images)
            report = await asyncio.to_thread(prepare_dataset, archive, job_dir / "dataset", name=name,
                                             default_caption=caption, limits=limits)
        except (IntakeError, DownloadError, UserFacingError, aiohttp.ClientError, OSError) as exc:
            # Nothing of a refused upload stays on disk.
            await asyncio.to_thread(shutil.rmtree, job_dir, True)
            if isinstance(exc, (aiohttp.ClientError, OSError)):
                raise UserFacingError(f"Could not fetch the zip: {exc}") from None
            raise UserFacingError(str(exc)) from None
        finally:
            await asyncio.to_thread(archive.unlink, True)
        return report.summary()
