"""The server and channel an interaction came from, for code that cannot do without them.

discord.py types ``Interaction.guild_id`` and ``channel_id`` as optional: a direct message has no
server, and not every kind of interaction names a channel. Commands and buttons that only make
sense in a server take the id from here rather than pass None on to a store: a direct message gets
a failed check, which bot/reporting.py shows the member like any other.
"""

from __future__ import annotations

import discord
from discord import app_commands

from .errors import UserFacingError
from .i18n import Text


def guild_id_of(interaction: discord.Interaction) -> int:
    """The interaction's server; in a direct message, NoPrivateMessage (its text is the member's reply)."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage("This only works in a server, not in direct messages.")
    return interaction.guild_id


def channel_id_of(interaction: discord.Interaction) -> int:
    """The channel of a command or a button (Discord always sends it for those)."""
    if interaction.channel_id is None:
        raise UserFacingError(Text("channel.unknown"))
    return interaction.channel_id
