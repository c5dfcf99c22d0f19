"""/settings: a member's /imagine defaults and private results (the rules are bot/member_settings.py's).

With no option it shows the member's settings; options set those given (`reset:True` first forgets them
all). Every reply is ephemeral: a member's settings are their own business.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..db.models import MemberSettings
from ..i18n import tr
from ..member_settings import COUNT_RANGE, DEFAULT_COUNT, DEFAULT_STEPS, STEPS_RANGE, MemberDefaults
from ..services import services_of
from ..sizes import ASPECT_SIZES, DEFAULT_ASPECT
from .imagine import ASPECT_CHOICES


def describe(interaction: discord.Interaction, saved: MemberSettings | None) -> list[str]:
    """One line per setting; those left unset say the bot's default."""
    def value(mine: object, default: object) -> str:
        return str(mine) if mine is not None else tr(interaction, "settings.bot_default", value=default)

    aspect = saved.aspect if saved is not None and saved.aspect in ASPECT_SIZES else None
    width, height = ASPECT_SIZES[aspect or DEFAULT_ASPECT]
    return [
        tr(interaction, "settings.aspect", value=value(aspect and f"{aspect} ({width}×{height})",
                                                       f"{DEFAULT_ASPECT} ({width}×{height})")),
        tr(interaction, "settings.steps", value=value(saved.steps if saved else None, DEFAULT_STEPS)),
        tr(interaction, "settings.count", value=value(saved.count if saved else None, DEFAULT_COUNT)),
        tr(interaction, "settings.private_on" if saved is not None and saved.private else "settings.private_off"),
    ]


class MemberSettingsCog(commands.Cog):
    def __init__(self, members: MemberDefaults):
        self.members = members

    @app_commands.command(name="settings", description="Your /imagine defaults and private results")
    @app_commands.describe(
        aspect="Aspect ratio when /imagine leaves it out",
        steps="Steps when /imagine leaves them out (1-16)",
        count="Images per /imagine when it leaves count out (1-4)",
        private="Results seen by you alone (an ephemeral message, or a DM), not posted in the channel",
        reset="Forget all your settings first (back to the bot's defaults)",
    )
    @app_commands.choices(aspect=ASPECT_CHOICES)
    async def settings(
        self,
        interaction: discord.Interaction,
        aspect: str | None = None,
        steps: app_commands.Range[int, STEPS_RANGE[0], STEPS_RANGE[1]] | None = None,
        count: app_commands.Range[int, COUNT_RANGE[0], COUNT_RANGE[1]] | None = None,
        private: bool | None = None,
        reset: bool = False,
    ) -> None:
        changing = reset or any(option is not None for option in (aspect, steps, count, private))
        saved = await self.members.change(interaction.user.id, reset=reset, aspect=aspect, steps=steps, count=count,
                                          private=private)
        if reset and saved is None:
            lines = [tr(interaction, "settings.reset")]
        else:
            lines = [tr(interaction, "settings.saved" if changing else "settings.title"), *describe(interaction, saved)]
        lines.append(tr(interaction, "settings.footer"))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(MemberSettingsCog(services_of(bot).member_settings))
