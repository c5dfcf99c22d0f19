"""The one error reporter: what the member reads, and where (a fake interaction, no Discord)."""

from __future__ import annotations

from types import SimpleNamespace

import discord
from discord import app_commands

from bot.errors import UserFacingError
from bot.reporting import report_error


class FakeResponse:
    def __init__(self, kind: discord.InteractionResponseType | None):
        self.type, self.sent = kind, []

    def is_done(self) -> bool:
        return self.type is not None

    async def send_message(self, content: str, ephemeral: bool = False) -> None:
        self.sent.append((content, ephemeral))


class FakeInteraction:
    def __init__(self, kind: discord.InteractionResponseType | None = None):
        self.response = FakeResponse(kind)
        self.edits: list[str] = []
        self.followups: list[tuple[str, bool]] = []
        self.followup = self

    async def edit_original_response(self, content: str) -> None:
        self.edits.append(content)

    async def send(self, content: str, ephemeral: bool = False) -> None:
        self.followups.append((content, ephemeral))


async def test_a_refusal_before_answering_is_an_ephemeral_reply():
    ix = FakeInteraction()
    await report_error(ix, UserFacingError("Your prompt is empty."))
    assert ix.response.sent == [("Your prompt is empty.", True)] and ix.edits == [] == ix.followups


async def test_a_refusal_after_deferring_replaces_the_thinking_reply():
    ix = FakeInteraction(discord.InteractionResponseType.deferred_channel_message)
    wrapped = app_commands.CommandInvokeError(SimpleNamespace(name="train"),  # how tree.on_error gets it
                                              UserFacingError("The zip is 900 MiB; the limit is 512 MiB."))
    await report_error(ix, wrapped)
    assert ix.edits == ["❌ The zip is 900 MiB; the limit is 512 MiB."] and ix.response.sent == []


async def test_a_button_whose_update_was_deferred_gets_a_followup_not_an_edit_of_its_message():
    ix = FakeInteraction(discord.InteractionResponseType.deferred_message_update)
    await report_error(ix, UserFacingError("Only the person who asked for this image, or a moderator, can delete it."))
    assert ix.followups == [("Only the person who asked for this image, or a moderator, can delete it.", True)]
    assert ix.edits == []


async def test_checks_say_why_and_anything_else_is_logged_not_shown(caplog):
    ix = FakeInteraction()
    await report_error(ix, app_commands.NoPrivateMessage("LoRAs belong to a server: use /lora in a server channel."))
    await report_error(ix, KeyError("/secret/path"))
    assert ix.response.sent[0] == ("LoRAs belong to a server: use /lora in a server channel.", True)
    assert ix.response.sent[1] == ("Something went wrong on our side; the error was logged.", True)
    assert "/secret/path" in caplog.text
