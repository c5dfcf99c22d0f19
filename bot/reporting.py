"""The one place where an error of a command or a button becomes the member's reply.

A UserFacingError (or a failed check) is shown as it is; anything else is logged and the member
is told it was. The reply goes where the member is looking: an unanswered interaction gets an
ephemeral message; a deferred "thinking…" reply is edited into "❌ <message>" and keeps the
deferral's visibility (private for /train and /lora import); a button whose update was deferred
gets an ephemeral follow-up, never an edit of the message it sits on. /imagine answers with a public
"thinking…" before its checks: its refusals go through refuse_privately.

The reply is in the member's language (bot/i18n): an error raised with a `Text` message is rendered
again for their locale; a plain message is shown as it was written.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from .errors import UserFacingError
from .i18n import LocaleLike, localised_message, tr

log = logging.getLogger(__name__)


def user_message(error: Exception, locale: LocaleLike = None) -> str:
    """What the member reads for an error, in their locale's language; logs the ones they cannot act on."""
    original = getattr(error, "original", error)  # app_commands wraps errors raised in a command
    if isinstance(original, (UserFacingError, app_commands.CheckFailure)):
        return localised_message(original, locale) or str(original) or tr(locale, "error.not_allowed")
    log.error("command failed", exc_info=original)
    return tr(locale, "error.bot")


async def report_error(interaction: discord.Interaction, error: Exception) -> None:
    """tree.on_error, and the error path of every button (bot/buttons.py)."""
    message = user_message(error, interaction)
    try:
        if interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            await interaction.edit_original_response(content=f"❌ {message}")
        elif interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not tell the user about an error: %s", exc)


async def refuse_privately(interaction: discord.Interaction, error: Exception) -> None:
    """After a public "thinking…" answer: delete it, and tell the member alone why (an ephemeral follow-up; after a
    deferral Discord turns the first follow-up into the deferred message, so it is deleted first)."""
    message = user_message(error, interaction)
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:
        log.warning("could not delete the answer to a refused request: %s", exc)
    try:
        await interaction.followup.send(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not tell the user about a refusal: %s", exc)
