"""Result buttons. DynamicItems keep their state in the custom_id, so they survive restarts."""

from __future__ import annotations

import re
from typing import Any, Self

import discord

from .buttons import ReportingButton
from .db.models import Job
from .services import services_of


class _JobButton(ReportingButton):
    """Mixin for a DynamicItem button bound to one job id; subclasses set ACTION, LABEL, EMOJI, STYLE."""

    ACTION = ""
    LABEL = ""
    EMOJI = ""
    STYLE = discord.ButtonStyle.secondary

    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label=self.LABEL, emoji=self.EMOJI, style=self.STYLE,  # type: ignore[call-arg]
                                           custom_id=f"zimage:{self.ACTION}:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> Self:
        return cls(int(match["job_id"]))


class RerollButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:reroll:(?P<job_id>[0-9]+)"):
    """Same prompt, size, steps and count; a new random seed."""

    ACTION, LABEL, EMOJI = "reroll", "Reroll", "🎲"

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.reroll(interaction, self.job_id)


class VariationsButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:vary:(?P<job_id>[0-9]+)"):
    """Same prompt and settings, `count` images with independent new seeds."""

    ACTION, LABEL, EMOJI = "vary", "Variations", "🔀"

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.vary(interaction, self.job_id)


class DeleteButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:delete:(?P<job_id>[0-9]+)"):
    """Remove the result message: the requester or a moderator only."""

    ACTION, LABEL, EMOJI, STYLE = "delete", "Delete", "🗑️", discord.ButtonStyle.danger

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.check_delete(interaction, self.job_id)
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()


BUTTONS = (RerollButton, VariationsButton, DeleteButton)


def result_view(job: Job) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in BUTTONS:
        view.add_item(button(job.id))
    return view
