"""Who may do what beyond their own jobs."""

from __future__ import annotations

import discord


def is_moderator(interaction: discord.Interaction) -> bool:
    """Members who can manage the server or its messages moderate the bot's output."""
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.manage_messages or permissions.administrator)
