"""Queue positions on the job messages: re-shown whenever the queue moves.

The lanes call it when they take a job, the runner when a job is cancelled or bounced back,
and the moderators' pause / resume when a guild's jobs stop or start waiting.
"""

from __future__ import annotations

from ..db.models import JobKind, JobStatus
from . import render
from .interfaces import JobMessages, JobQueue

POSITION_UPDATES = 10  # queued jobs per lane whose position message is refreshed when the queue moves


class Positions:
    def __init__(self, store: JobQueue, messages: JobMessages):
        self.store = store
        self.messages = messages

    async def refresh(self, paused_guild: int | None = None) -> None:
        """Re-show queue positions after the queue moved; a paused guild's jobs say they wait."""
        for kind in JobKind:
            for position, job in enumerate((await self.store.queued_jobs(kind))[:POSITION_UPDATES], start=1):
                await self.messages.edit_status(job, render.queued_text(job, position))
        if paused_guild is not None:
            for job in await self.store.guild_jobs(paused_guild):
                if job.status == JobStatus.QUEUED:
                    await self.messages.edit_status(job, render.queued_text(job, None, paused=True))
