"""Moderators' approval of /train jobs, when a guild asks for it (/mod approve-training on).

The request is posted with Approve / Deny buttons (bot/cogs/approval.py) in the moderators'
channel; a decision is checked, applied to the job and written to the audit log here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import discord

from ..db.jobs import JobStore
from ..db.models import Job, JobStatus
from ..db.moderation import ModerationStore
from ..errors import UserFacingError
from ..i18n import Text, tr
from ..interaction_ids import guild_id_of
from ..jobs import render
from ..jobs.delivery import Delivery
from ..jobs.runner import JobRunner
from ..permissions import NotModerator, is_moderator

log = logging.getLogger(__name__)


class TrainingApprovals:
    def __init__(self, store: JobStore, moderation: ModerationStore, delivery: Delivery, runner: JobRunner,
                 make_view: Callable[[Job], discord.ui.View]):
        self.store = store
        self.moderation = moderation
        self.delivery = delivery
        self.runner = runner
        self.make_view = make_view  # the Approve / Deny buttons

    async def ask(self, job: Job, channel_id: int) -> None:
        """Post the request for moderators; a channel the bot cannot post in is logged, the job keeps waiting."""
        if not await self.delivery.send(channel_id, render.approval_text(job), view=self.make_view(job),
                                        allowed_mentions=discord.AllowedMentions(users=False)):
            log.warning("job %s: could not post the approval request in %s", job.id, channel_id)

    async def decide(self, interaction: discord.Interaction, job_id: int, approve: bool) -> str:
        """Approve or deny a waiting job; returns the request's new text."""
        if not is_moderator(interaction, await self.moderation.settings(interaction.guild_id)):
            raise NotModerator(Text("train.approval_only"))
        job = await self.store.get(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            raise UserFacingError(Text("train.approval_unknown"))
        if approve:
            if not await self.store.approve(job.id):
                raise UserFacingError(Text("train.already_decided", job=job.id, status=Text(f"status.{job.status}")))
            job.status = JobStatus.QUEUED
            verdict = tr(render.locale_of(job), "train.approved", moderator=interaction.user.mention)
            self.runner.wake()
            await self.delivery.edit_status(job, render.queued_text(job, await self.store.position(job)))
        else:
            if not await self.store.cancel_if_queued(job.id):
                raise UserFacingError(Text("train.already_decided", job=job.id, status=Text(f"status.{job.status}")))
            verdict = tr(render.locale_of(job), "train.denied", moderator=interaction.user.mention)
            await self.delivery.edit_status(job, tr(render.locale_of(job), "train.denied_status", job=job.id,
                                                    name=job.params["name"]))
        await self.moderation.audit(guild_id_of(interaction), interaction.user.id, "approve" if approve else "deny",
                                    f"job #{job.id} of <@{job.user_id}>")
        return f"{render.approval_text(job)}\n{verdict}"
