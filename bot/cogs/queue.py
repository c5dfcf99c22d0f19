"""/queue and /cancel: a member's view of their own jobs."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..db.jobs import JobStore
from ..db.models import JobKind, JobStatus
from ..errors import UserFacingError
from ..jobs import render
from ..jobs.runner import JobRunner
from ..listing import fit_lines
from ..services import services_of


class QueueCog(commands.Cog):
    def __init__(self, store: JobStore, runner: JobRunner):
        self.store = store
        self.runner = runner  # cancels

    @app_commands.command(name="queue", description="Show your jobs and their places in the queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        jobs = await self.store.active_jobs_of(interaction.user.id)
        if not jobs:
            await interaction.response.send_message("You have no jobs in the queue.", ephemeral=True)
            return
        places = await self.store.positions()
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
        await interaction.response.send_message(fit_lines(lines), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs")
    @app_commands.describe(job="The job number (see /queue)")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        record = await self.store.get(job)
        if record is None or record.user_id != interaction.user.id:
            raise UserFacingError(f"You have no job #{job}. See your jobs with `/queue`.")
        if record.status not in JobStatus.cancellable():
            raise UserFacingError(f"Job #{job} is already {record.status}; there is nothing to cancel.")
        if not await self.runner.cancel(record):
            raise UserFacingError(f"Job #{job} could not be cancelled right now; it may have just finished.")
        await interaction.response.send_message(f"Job #{job} is cancelled.", ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        jobs = await self.store.active_jobs_of(interaction.user.id)
        choices = [
            app_commands.Choice(name=f"#{job.id} ({job.status}) {render.describe(job, 60)}",
                                value=job.id)
            for job in jobs if job.status in JobStatus.cancellable() and str(job.id).startswith(current.strip("#"))
        ]
        return choices[:25]


async def setup(bot: commands.Bot) -> None:
    services = services_of(bot)
    await bot.add_cog(QueueCog(services.store, services.runner))
