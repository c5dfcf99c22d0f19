"""Result buttons. DynamicItems keep their state in the custom_id, so they survive restarts.

The labels are in the language of the member who asked for the result (the ``locale`` in its job's params)."""

from __future__ import annotations

import re
from typing import Any, Self

import discord

from .buttons import ReportingButton
from .db.models import Job
from .i18n import tr
from .services import services_of
from .variants import VARIANTS


class _JobButton(ReportingButton):
    """Mixin for a DynamicItem button bound to one job id; subclasses set ACTION, LABEL (a catalog id), EMOJI, STYLE."""

    ACTION = ""
    LABEL = ""
    EMOJI = ""
    STYLE = discord.ButtonStyle.secondary
    ROW = 0

    def __init__(self, job_id: int, locale: str | None = None):
        super().__init__(discord.ui.Button(label=tr(locale, self.LABEL), emoji=self.EMOJI,  # type: ignore[call-arg]
                                           style=self.STYLE, custom_id=f"zimage:{self.ACTION}:{job_id}", row=self.ROW))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> Self:
        return cls(int(match["job_id"]))


class RerollButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:reroll:(?P<job_id>[0-9]+)"):
    """Same prompt, size, steps and count; a new random seed."""

    ACTION, LABEL, EMOJI = "reroll", "button.reroll", "🎲"

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.reroll(interaction, self.job_id)


class VariationsButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:vary:(?P<job_id>[0-9]+)"):
    """Same prompt and settings, `count` images with independent new seeds."""

    ACTION, LABEL, EMOJI = "vary", "button.variations", "🔀"

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.vary(interaction, self.job_id)


class DeleteButton(_JobButton, discord.ui.DynamicItem[discord.ui.Button], template=r"zimage:delete:(?P<job_id>[0-9]+)"):
    """Remove the result message: the requester or a moderator only."""

    ACTION, LABEL, EMOJI, STYLE = "delete", "button.delete", "🗑️", discord.ButtonStyle.danger

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).imagine.check_delete(interaction, self.job_id)
        await interaction.response.defer()
        if interaction.message is None:
            return
        if interaction.message.flags.ephemeral:  # a private result (/settings private): not reachable by the channel
            await interaction.delete_original_response()
        else:
            await interaction.message.delete()


class VariantButton(ReportingButton, discord.ui.DynamicItem[discord.ui.Button],
                    template=rf"zimage:variant:(?P<key>{'|'.join(VARIANTS)}):(?P<job_id>[0-9]+)"):
    """A new image from this result's picture: Vary, Upscale, Zoom Out, Pan (bot/variants.py); ``key`` names which."""

    EMOJIS = {"subtle": "🌱", "strong": "🌪️", "upscale": "🔍", "zoom15": "🔭", "zoom2": "🔭",
              "left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}

    def __init__(self, key: str, job_id: int, locale: str | None = None):
        row = 2 if key in ("left", "right", "up", "down") else 1
        super().__init__(discord.ui.Button(label=tr(locale, f"button.{key}"), emoji=self.EMOJIS[key],  # type: ignore[call-arg]
                                           style=discord.ButtonStyle.secondary, row=row,
                                           custom_id=f"zimage:variant:{key}:{job_id}"))
        self.key, self.job_id = key, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]) -> Self:
        return cls(match["key"], int(match["job_id"]))

    async def handle(self, interaction: discord.Interaction) -> None:
        await services_of(interaction).variants.request(interaction, self.job_id, self.key)


BUTTONS = (RerollButton, VariationsButton, DeleteButton, VariantButton)


def result_view(job: Job) -> discord.ui.View:
    locale = (job.params or {}).get("locale")
    view = discord.ui.View(timeout=None)
    for button in (RerollButton, VariationsButton, DeleteButton):
        view.add_item(button(job.id, locale))
    for key in VARIANTS:
        view.add_item(VariantButton(key, job.id, locale))
    return view
