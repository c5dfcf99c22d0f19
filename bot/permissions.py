"""Who may do what beyond their own jobs. Checked server-side on every command and button."""

from __future__ import annotations

import discord
from discord import app_commands

from .db.models import GuildSettings


class NotModerator(app_commands.CheckFailure):
    """Raised by moderator-only commands and buttons; its text is shown to the member."""


def has_mod_role(interaction: discord.Interaction, settings: GuildSettings) -> bool:
    roles = getattr(interaction.user, "roles", [])
    return settings.mod_role_id is not None and any(role.id == settings.mod_role_id for role in roles)


def is_moderator(interaction: discord.Interaction, settings: GuildSettings) -> bool:
    """Members with Manage Server (or Administrator), or the role set with /mod role."""
    if interaction.guild_id is None:
        return False
    permissions = interaction.permissions
    return bool(permissions.manage_guild or permissions.administrator or has_mod_role(interaction, settings))


def can_delete_results(interaction: discord.Interaction, settings: GuildSettings) -> bool:
    """Moderators, and members who may manage messages in this channel anyway."""
    return is_moderator(interaction, settings) or bool(interaction.permissions.manage_messages)
