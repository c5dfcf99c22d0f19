"""Result buttons. DynamicItems keep their state in the custom_id, so they survive restarts."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from .buttons import ReportingButton
from .db.models import Job
from .errors import UserFacingError
from .imagine import build_params, consecutive_seeds, random_seed
from .permissions import can_delete_results

if TYPE_CHECKING:
    from .client import ZImageBot


class _JobButton(ReportingButton):
    """Mixin for a DynamicItem button bound to one job id; subclasses set ACTION, LABEL, EMOJI, STYLE."""

    ACTION = ""
    LABEL = ""
    EMOJI = ""
    STYLE = discord.ButtonStyle.secondary

    def __init__(self, job_id: int):
        super().__init__(discord.ui.Button(label=self.LABEL, emoji=self.EMOJI, style=self.STYLE,
                                           custom_id=f"zimage:{self.ACTION}:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(int(match["job_id"]))

    async def _job(self, interaction: discord.Interaction) -> Job:
        bot: ZImageBot = interaction.client  # type: ignore[assignment]
        job = await bot.store.get(self.job_id)
        if job is None:
            raise UserFacingError("This image's job is no longer known to the bot.")
        return job


class RerollButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:reroll:(?P<job_id>[0-9]+)"):
    """Same prompt, size, steps and count; a new random seed."""

    ACTION, LABEL, EMOJI = "reroll", "Reroll", "🎲"

    async def handle(self, interaction: discord.Interaction) -> None:
        job = await self._job(interaction)
        old = job.params
        params = build_params(old["prompt"], old["aspect"], old["steps"],
                              consecutive_seeds(random_seed(), len(old["seeds"])), interaction.filesize_limit,
                              old.get("loras"))
        await interaction.client.imagine.submit(interaction, params)  # type: ignore[attr-defined]


class VariationsButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:vary:(?P<job_id>[0-9]+)"):
    """Same prompt and settings, `count` images with independent new seeds."""

    ACTION, LABEL, EMOJI = "vary", "Variations", "🔀"

    async def handle(self, interaction: discord.Interaction) -> None:
        job = await self._job(interaction)
        old = job.params
        seeds = [random_seed() for _ in old["seeds"]]
        params = build_params(old["prompt"], old["aspect"], old["steps"], seeds, interaction.filesize_limit,
                              old.get("loras"))
        await interaction.client.imagine.submit(interaction, params)  # type: ignore[attr-defined]


class DeleteButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:delete:(?P<job_id>[0-9]+)"):
    """Remove the result message: the requester or a moderator only."""

    ACTION, LABEL, EMOJI, STYLE = "delete", "Delete", "🗑️", discord.ButtonStyle.danger

    async def handle(self, interaction: discord.Interaction) -> None:
        job = await self._job(interaction)
        bot: ZImageBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != job.user_id:
            if not can_delete_results(interaction, await bot.moderation.settings(interaction.guild_id)):
                raise UserFacingError("Only the person who asked for this image, or a moderator, can delete it.")
            await bot.moderation.audit(interaction.guild_id or 0, interaction.user.id, "delete-image",
                                       f"job #{job.id} of <@{job.user_id}>")
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()


BUTTONS = (RerollButton, VariationsButton, DeleteButton)


def result_view(job: Job) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for button in BUTTONS:
        view.add_item(button(job.id))
    return view
