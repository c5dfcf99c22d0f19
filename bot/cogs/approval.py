"""Approve / Deny buttons for /train jobs when a guild requires approval (/mod approve-training on)."""

from __future__ import annotations

import re
from typing import Any, Self

import discord

from ..buttons import ReportingButton
from ..db.models import Job
from ..i18n import tr
from ..jobs.render import locale_of
from ..services import services_of


def approval_view(job: Job) -> discord.ui.View:
    """The buttons under a request, in the language of its text (the requester's: bot/jobs/render.py)."""
    view = discord.ui.View(timeout=None)
    view.add_item(ApproveButton(job.id, locale_of(job)))
    view.add_item(DenyButton(job.id, locale_of(job)))
    return view


class _Decision(ReportingButton):
    """Mixin for the two approval buttons; the decision itself is bot/training/approvals.py."""

    APPROVE = True

    def __init__(self, job_id: int, locale: str | None = None):
        action = "approve" if self.APPROVE else "deny"
        super().__init__(discord.ui.Button(  # type: ignore[call-arg]
            label=tr(locale, f"train.{action}"), custom_id=f"zimage:{action}:{job_id}",
            style=discord.ButtonStyle.success if self.APPROVE else discord.ButtonStyle.danger))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> Self:
        return cls(int(match["job_id"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        content = await services_of(interaction).approvals.decide(interaction, self.job_id, self.APPROVE)
        await interaction.response.edit_message(content=content, view=None)


class ApproveButton(_Decision, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:approve:(?P<job_id>[0-9]+)"):
    APPROVE = True


class DenyButton(_Decision, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:deny:(?P<job_id>[0-9]+)"):
    APPROVE = False


APPROVAL_BUTTONS = (ApproveButton, DenyButton)
