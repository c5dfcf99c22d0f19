"""/queue and /cancel: a member's view of their own jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from ..db.models import JobKind, JobStatus
from ..errors import UserFacingError
from ..jobs import render

if TYPE_CHECKING:
    from ..client import ZImageBot


class QueueCog(commands.Cog):
    def __init__(self, bot: ZImageBot):
        self.bot = bot

    @app_commands.command(name="queue", description="Show your jobs and their places in the queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        jobs = await self.bot.store.active_jobs_of(interaction.user.id)
        if not jobs:
            await interaction.response.send_message("You have no jobs in the queue.", ephemeral=True)
            return
        places = await self.bot.store.positions()
        lines = []
        for job in jobs:
            if job.status == JobStatus.QUEUED and job.id in places:
                lane = "training queue" if job.kind == JobKind.TRAIN else "queue"
                state = f"position {places[job.id]} in the {lane}"
            elif job.status == JobStatus.QUEUED:
                state = "waiting: moderators paused the queue in this server"
            elif job.status == JobStatus.AWAITING_APPROVAL:
                state = "waiting for a moderator's approval"
            elif job.status == JobStatus.RUNNING:
                state = "generating now"
            else:
                state = "posting the result"
            lines.append(f"**#{job.id}** {state}: *{render.describe(job, 60)}*")
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs")
    @app_commands.describe(job="The job number (see /queue)")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        record = await self.bot.store.get(job)
        if record is None or record.user_id != interaction.user.id:
            raise UserFacingError(f"You have no job #{job}. See your jobs with `/queue`.")
        if record.status not in JobStatus.cancellable():
            raise UserFacingError(f"Job #{job} is already {record.status}; there is nothing to cancel.")
        if not await self.bot.runner.cancel(record):
            raise UserFacingError(f"Job #{job} could not be cancelled right now; it may have just finished.")
        await interaction.response.send_message(f"Job #{job} is cancelled.", ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        jobs = await self.bot.store.active_jobs_of(interaction.user.id)
        choices = [
            app_commands.Choice(name=f"#{job.id} ({job.status}) {render.describe(job, 60)}",
                                value=job.id)
            for job in jobs if job.status in JobStatus.cancellable() and str(job.id).startswith(current.strip("#"))
        ]
        return choices[:25]


async def setup(bot: ZImageBot) -> None:
    await bot.add_cog(QueueCog(bot))
