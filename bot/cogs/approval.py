"""Approve / Deny buttons for /train jobs when a guild requires approval (/mod approve-training on)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from ..buttons import ReportingButton
from ..db.models import Job, JobStatus
from ..errors import UserFacingError
from ..jobs import render
from ..permissions import NotModerator, is_moderator

if TYPE_CHECKING:
    from ..client import ZImageBot


def approval_view(job: Job) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ApproveButton(job.id))
    view.add_item(DenyButton(job.id))
    return view


def approval_text(job: Job) -> str:
    config = job.params["config"]
    return (f"🔔 <@{job.user_id}> asks to train LoRA `{job.params['name']}` (job #{job.id}, {config['steps']} steps, "
            f"rank {config['rank']}) in <#{job.channel_id}>. A moderator may approve or deny it.")


class _Decision(ReportingButton):
    """Mixin for the two approval buttons: the moderator check and the audit in one place."""

    APPROVE = True

    def __init__(self, job_id: int):
        action = "approve" if self.APPROVE else "deny"
        super().__init__(discord.ui.Button(  # type: ignore[call-arg]
            label="Approve" if self.APPROVE else "Deny", custom_id=f"zimage:{action}:{job_id}",
            style=discord.ButtonStyle.success if self.APPROVE else discord.ButtonStyle.danger))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["job_id"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        bot: ZImageBot = interaction.client  # type: ignore[assignment]
        if not is_moderator(interaction, await bot.moderation.settings(interaction.guild_id)):
            raise NotModerator("Only moderators can approve or deny training jobs.")
        job = await bot.store.get(self.job_id)
        if job is None or job.guild_id != interaction.guild_id:
            raise UserFacingError("That training job is unknown here.")
        if self.APPROVE:
            if not await bot.store.approve(job.id):
                raise UserFacingError(f"Job #{job.id} was already decided or cancelled ({job.status}).")
            job.status = JobStatus.QUEUED
            verdict = f"✅ Approved by {interaction.user.mention}."
            bot.runner.wake()
            await bot.delivery.edit_status(job, render.queued_text(job, await bot.store.position(job)))
        else:
            if not await bot.store.cancel_if_queued(job.id):
                raise UserFacingError(f"Job #{job.id} was already decided or cancelled ({job.status}).")
            verdict = f"🚫 Denied by {interaction.user.mention}."
            await bot.delivery.edit_status(job, f"🚫 Job #{job.id}: a moderator denied training `{job.params['name']}`.")
        await bot.moderation.audit(interaction.guild_id, interaction.user.id, "approve" if self.APPROVE else "deny",
                                   f"job #{job.id} of <@{job.user_id}>")
        await interaction.response.edit_message(content=f"{approval_text(job)}\n{verdict}", view=None)


class ApproveButton(_Decision, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:approve:(?P<job_id>[0-9]+)"):
    APPROVE = True


class DenyButton(_Decision, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:deny:(?P<job_id>[0-9]+)"):
    APPROVE = False


APPROVAL_BUTTONS = (ApproveButton, DenyButton)
