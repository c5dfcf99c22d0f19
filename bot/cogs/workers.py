"""/workers: the moderators' view of the GPU workers (state, device, jobs, images/min); bot/workers_overview.py.

Moderators only, checked server-side as /mod does (bot/permissions.py); Discord offers it to Manage Server
members by default, and a server admin can let the moderator role see it too. The workers serve every
server, so a moderator sees their own server's job numbers only (bot/workers_overview.py says why).
"""

from __future__ import annotations

from collections.abc import Callable

import discord
from discord import app_commands
from discord.ext import commands

from ..db.moderation import ModerationStore
from ..i18n import Text
from ..permissions import NotModerator, is_moderator
from ..services import services_of
from ..workers_overview import WorkerRow, render_rows, worker_rows

RowsOf = Callable[[int | None], list[WorkerRow]]  # a guild id -> the rows its moderators see


class WorkersCog(commands.Cog):
    def __init__(self, moderation: ModerationStore, rows_of: RowsOf):
        self.moderation = moderation
        self.rows_of = rows_of

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise NotModerator(Text("workers.dm"))
        if not is_moderator(interaction, await self.moderation.settings(interaction.guild_id)):
            raise NotModerator(Text("workers.only"))
        return True

    @app_commands.command(name="workers", description="The GPU workers: state, jobs and speed (moderators)")
    @app_commands.guild_only()  # Discord hides it in DMs; interaction_check still refuses them
    @app_commands.default_permissions(manage_guild=True)
    async def workers(self, interaction: discord.Interaction) -> None:
        text = render_rows(self.rows_of(interaction.guild_id), interaction)
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())


def rows_source(source: discord.Client | discord.Interaction) -> RowsOf:
    """What /workers and /mod queue (and its page buttons) read: the pool, health monitor, runner and supervisors
    of the bot's services."""
    services = services_of(source)

    def rows_of(guild_id: int | None) -> list[WorkerRow]:
        return worker_rows(services.worker, services.monitor, services.runner, services.supervisors, guild_id)

    return rows_of


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(WorkersCog(services_of(bot).moderation, rows_source(bot)))
