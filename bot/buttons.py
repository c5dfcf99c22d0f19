"""What every button of the bot shares: its errors go to the same reporter as the commands'.

The buttons are DynamicItems (their state is in the custom_id, so they survive restarts), and
discord.py only logs what a DynamicItem's callback raises: it never reaches tree.on_error.
"""

from __future__ import annotations

import discord

from .reporting import report_error


class ReportingButton:
    """Mixin before discord.ui.DynamicItem: subclasses write handle(); callback() reports what it raises."""

    async def handle(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.handle(interaction)
        except Exception as error:  # noqa: BLE001 - every error ends as the member's reply
            await report_error(interaction, error)
