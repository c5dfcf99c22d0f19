"""/queue and /cancel: a member's view of their own jobs."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..db.jobs import JobStore
from ..db.models import JobKind, JobStatus
from ..errors import UserFacingError
from ..i18n import Text, tr
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
            await interaction.response.send_message(tr(interaction, "queue.empty"), ephemeral=True)
            return
        places = await self.store.positions()
        lines = []
        for job in jobs:
            if job.status == JobStatus.QUEUED and job.id in places:
                lane = "queue.position_training" if job.kind == JobKind.TRAIN else "queue.position"
                state = tr(interaction, lane, position=places[job.id])
            elif job.status == JobStatus.QUEUED:
                state = tr(interaction, "queue.paused")
            elif job.status == JobStatus.AWAITING_APPROVAL:
                state = tr(interaction, "queue.awaiting_approval")
            elif job.status == JobStatus.RUNNING:
                state = tr(interaction, "queue.running")
            else:
                state = tr(interaction, "queue.delivering")
            lines.append(tr(interaction, "queue.line", job=job.id, state=state,
                            what=render.describe(job, 60, interaction)))
        await interaction.response.send_message(fit_lines(lines), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs")
    @app_commands.describe(job="The job number (see /queue)")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        record = await self.store.get(job)
        if record is None or record.user_id != interaction.user.id:
            raise UserFacingError(Text("cancel.no_such_job", job=job))
        if record.status not in JobStatus.cancellable():
            raise UserFacingError(Text("cancel.already", job=job, status=Text(f"status.{record.status}")))
        if not await self.runner.cancel(record):
            raise UserFacingError(Text("cancel.not_now", job=job))
        await interaction.response.send_message(tr(interaction, "cancel.done", job=job), ephemeral=True)

    @cancel.autocomplete("job")
    async def cancel_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
        jobs = await self.store.active_jobs_of(interaction.user.id)
        choices = [
            app_commands.Choice(name=f"#{job.id} ({job.status}) {render.describe(job, 60, interaction)}",
                                value=job.id)
            for job in jobs if job.status in JobStatus.cancellable() and str(job.id).startswith(current.strip("#"))
        ]
        return choices[:25]


async def setup(bot: commands.Bot) -> None:
    services = services_of(bot)
    await bot.add_cog(QueueCog(services.store, services.runner))
