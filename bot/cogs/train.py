"""/train: a character LoRA from a zip of photos, checkpoints posted back to the channel."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from ..db.models import JobKind, JobStatus
from ..jobs import render
from ..lora_library import clean_name
from .approval import approval_text, approval_view

if TYPE_CHECKING:
    from ..client import ZImageBot

log = logging.getLogger(__name__)

# Rough seconds per training step by device, for the estimate in the intake reply.
SECONDS_PER_STEP = {"cuda": 0.2, "cpu": 2.0}


class TrainCog(commands.Cog):
    def __init__(self, bot: ZImageBot):
        self.bot = bot

    @app_commands.command(name="train", description="Train a LoRA of a person or style from a zip of photos")
    @app_commands.describe(name="Name of the LoRA (lowercase, digits, - and _)", photos="A .zip of 10+ photos",
                           caption="Caption for every image (default: 'a photo of <name>'); a .txt beside an image overrides it",
                           steps="Training steps (default from the server settings, usually 4000)",
                           url="https https link to a zip, for archives over the upload limit")
    async def train(self, interaction: discord.Interaction, name: app_commands.Range[str, 2, 32],
                    photos: discord.Attachment | None = None, caption: app_commands.Range[str, 1, 300] | None = None,
                    steps: app_commands.Range[int, 1, 20000] | None = None, url: str | None = None) -> None:
        service = self.bot.train_service
        name = clean_name(name)
        await service.check_request(interaction, name, photos, url)
        # Intake can take a while: answer now (privately: bad archives are the member's business).
        await interaction.response.defer(ephemeral=True, thinking=True)
        job_dir = self.bot.settings.training_dir / f"ix-{interaction.id}"
        summary = await service.prepare(name, photos, url, caption, job_dir)
        config = service.config(name, caption, steps)
        lora = await self.bot.library.create(guild_id=interaction.guild_id, owner_id=interaction.user.id, name=name,
                                             rank=config["rank"])
        params = {"name": name, "lora_id": lora.id, "dataset_dir": str(job_dir / "dataset"),
                  "output_dir": str(job_dir / "output"), "config": config, "upload_limit": interaction.filesize_limit}
        guild = await self.bot.moderation.settings(interaction.guild_id)
        job = await self.bot.store.enqueue(
            kind=JobKind.TRAIN, user_id=interaction.user.id, guild_id=interaction.guild_id,
            channel_id=interaction.channel_id, params=params, interaction_id=interaction.id,
            interaction_token=interaction.token,
            status=JobStatus.AWAITING_APPROVAL if guild.approve_training else JobStatus.QUEUED)
        device = self.bot.worker.device or "cuda"
        estimate = config["steps"] * SECONDS_PER_STEP.get(device, 0.5)
        await interaction.edit_original_response(
            content=f"✅ {summary}\nTraining job #{job.id} for `{name}`: {config['steps']} steps, "
                    f"roughly {render.duration(estimate)} on this worker ({device}).")
        position = await self.bot.store.position(job)
        message = await interaction.followup.send(render.queued_text(job, position), ephemeral=False, wait=True)
        await self.bot.store.set_message(job.id, message.id)
        if job.status == JobStatus.AWAITING_APPROVAL:
            await self._ask_approval(job, guild.mod_channel_id or interaction.channel_id)
        self.bot.runner.wake()

    async def _ask_approval(self, job, channel_id: int) -> None:
        try:
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
            await channel.send(approval_text(job), view=approval_view(job),
                               allowed_mentions=discord.AllowedMentions(users=False))
        except discord.HTTPException as exc:
            log.warning("job %s: could not post the approval request in %s: %s", job.id, channel_id, exc)


async def setup(bot: ZImageBot) -> None:
    await bot.add_cog(TrainCog(bot))
