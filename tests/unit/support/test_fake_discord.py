"""Tests of the fake Discord itself, driven by an unmodified in-process discord.py bot.

Why in-process: it proves the fake speaks Discord well enough for discord.py
(login, gateway, command sync, interactions, webhooks, retries) without the real
bot, and lets the bot record the exceptions discord.py raises for injected failures.
"""

from __future__ import annotations

import asyncio
import io

import discord
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands
from PIL import Image

from fake_discord import FakeDiscord, get_validator


def png(color: str = "red", size: tuple = (8, 4)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


class AgainView(discord.ui.View):
    """A persistent view: survives restarts because of timeout=None + custom_id."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Again", custom_id="demo:again", style=discord.ButtonStyle.primary)
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_message(f"again for {interaction.user.name}", ephemeral=True)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text = discord.ui.TextInput(label="What do you think?", custom_id="feedback:text")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"thanks: {self.text.value}", ephemeral=True)


class DemoBot(commands.Bot):
    """One slash command of each shape the real bot uses; records what it saw."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.guild = discord.Object(guild_id)
        self.gate = asyncio.Event()  # tests open it to let /slow continue
        self.errors: list[Exception] = []
        self.seen: list = []
        self._define_commands()

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.data.get("custom_id") == "demo:update":  # a type-7 update of the clicked message
            await interaction.response.edit_message(content="updated", view=None)

    async def setup_hook(self) -> None:
        self.add_view(AgainView())
        await self.tree.sync(guild=self.guild)

    def _define_commands(self) -> None:
        tree, guild = self.tree, self.guild

        @tree.command(name="hello", description="defer, edit, follow up with a file", guild=guild)
        @app_commands.describe(prompt="what to draw", count="how many", photo="a reference image")
        async def hello(interaction: discord.Interaction, prompt: str, count: int = 1,
                        photo: discord.Attachment | None = None) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content=f"working on {prompt} x{count}")
            data = await photo.read() if photo else png("blue")
            self.seen.append((prompt, count, photo.filename if photo else None, photo.width if photo else None))
            await interaction.followup.send(f"done: {prompt}", file=discord.File(io.BytesIO(data), "out.png"),
                                            view=AgainView())

        @tree.command(name="slow", description="defer, wait for the test, then edit", guild=guild)
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await self.gate.wait()
            try:
                await interaction.edit_original_response(content="finished")
            except discord.HTTPException as exc:
                self.errors.append(exc)
                await interaction.channel.send(f"{interaction.user.mention} finished (token gone)")

        @tree.command(name="quick", description="ephemeral defer answered by a followup", guild=guild)
        async def quick(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Update", custom_id="demo:update"))
            self.seen.append(await interaction.followup.send("quick", view=view, wait=True))

        @tree.command(name="late", description="answers after 0.3 s", guild=guild)
        async def late(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.3)
            try:
                await interaction.response.send_message("late")
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command(name="feedback", description="opens a modal", guild=guild)
        async def feedback(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(FeedbackModal())

        @tree.command(name="purge", description="moderators only", guild=guild)
        @app_commands.default_permissions(manage_guild=True)
        async def purge(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"manage_guild={interaction.permissions.manage_guild}")

        @tree.command(name="spicy", description="age-restricted", guild=guild, nsfw=True)
        async def spicy(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"nsfw={interaction.channel.is_nsfw()}")

        lora = app_commands.Group(name="lora", description="LoRA adapters", guild_ids=[guild.id])

        @lora.command(name="use", description="use a LoRA")
        async def use(interaction: discord.Interaction, name: str, strength: float, target: discord.Member,
                      sharp: bool = False) -> None:
            self.seen.append((name, strength, target.id, type(target).__name__, sharp))
            await interaction.response.send_message(f"{name}|{strength}|{target.id}|{sharp}")

        @use.autocomplete("name")
        async def use_names(interaction: discord.Interaction, current: str) -> list:
            names = ["cat", "castle", "dog"]
            return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

        tree.add_command(lora)


@pytest_asyncio.fixture
async def env(monkeypatch):
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    bot = DemoBot(fake.guild_id)
    runner = asyncio.create_task(bot.start(fake.bot_token))
    try:
        await fake.wait_for(lambda: runner.done() or fake.gateway.ready, timeout=20, what="the demo bot")
        if runner.done():
            runner.result()  # the bot crashed: raise its exception
        await fake.wait_ready(timeout=5)
        yield fake, bot
        assert fake.response_violations == []  # the fake answers in the shapes the spec documents
    finally:
        await bot.close()
        await asyncio.wait_for(runner, 10)
        await fake.stop()


@pytest.mark.asyncio
async def test_slash_command_defer_edit_followup_and_button(env):
    fake, bot = env
    names = {c["name"]: c for c in fake.commands}
    assert {"hello", "slow", "lora"} <= set(names)
    assert names["hello"]["guild_id"] == str(fake.guild_id)
    # discord.py asks for zlib-stream, or zstd-stream when zstandard is importable; the fake honours either
    assert fake.gateway.conn.compress == discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE

    photo = png("green", (16, 8))
    ix = await fake.slash_command("hello", {"prompt": "a cat", "count": 2}, user=fake.alice,
                                  attachments={"photo": ("ref.png", photo)})
    assert (await ix.wait_response(3))["type"] == 5
    [followup] = await ix.wait_followups(1)
    assert bot.seen == [("a cat", 2, "ref.png", 16)]

    original = ix.original
    assert original.content == "working on a cat x2" and not original.loading and original.edits == 1
    assert [v["content"] for v in original.history] == ["", "working on a cat x2"]
    assert followup.id != original.id and followup.content == "done: a cat"
    assert [(a["filename"], a["data"]) for a in followup.attachments] == [("out.png", photo)]
    assert followup.custom_ids() == ["demo:again"]
    assert fake.channel_messages(fake.channel_id) == [original, followup]

    click = await fake.click_button(followup, "demo:again", user=fake.bob)
    answer = await click.wait_response()
    assert answer["type"] == 4 and answer["data"]["flags"] == 64
    assert click.original.ephemeral and click.original.content == "again for bob"

    assert fake.spec_violations == [] and fake.unhandled == []


@pytest.mark.asyncio
async def test_followup_after_defer_replaces_thinking_message_and_update(env):
    fake, bot = env
    ix = await fake.slash_command("quick", {}, user=fake.alice)
    await ix.wait_followups(1)
    [sent] = bot.seen
    assert sent.id == ix.original.id and ix.followups == [ix.original]  # same message, as on Discord
    assert ix.original.ephemeral and not ix.original.loading and ix.original.content == "quick"

    click = await fake.click_button(ix.original, "demo:update", user=fake.alice)
    assert (await click.wait_response())["type"] == 7
    assert click.original is ix.original and ix.original.content == "updated" and ix.original.components == []
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_attachment_edit_semantics_and_cdn(env):
    fake, bot = env
    channel = bot.get_channel(fake.channel_id)
    sent = await channel.send(files=[discord.File(io.BytesIO(png("red")), "a.png"),
                                     discord.File(io.BytesIO(b"zip!"), "b.zip")])
    assert [a.filename for a in sent.attachments] == ["a.png", "b.zip"]
    assert (sent.attachments[0].width, sent.attachments[0].height) == (8, 4)
    assert await sent.attachments[1].read() == b"zip!"  # served by the fake at the attachment URL

    kept = await sent.edit(attachments=[sent.attachments[1]])  # keep b.zip only
    assert [a.filename for a in kept.attachments] == ["b.zip"]
    added = await kept.edit(attachments=[kept.attachments[0], discord.File(io.BytesIO(b"c"), "c.txt")])
    assert [a["filename"] for a in fake.messages[sent.id].attachments] == ["b.zip", "c.txt"]
    assert [a.content_type for a in added.attachments] == ["application/zip", "text/plain"]
    replaced = await added.edit(content="text only", attachments=[])
    assert replaced.attachments == [] and fake.messages[sent.id].edits == 3
    assert len(fake.edit_times(sent.id)) == 3

    reply = await sent.reply("a reply")
    # five messages in the channel's 5-per-5-s bucket: discord.py read Remaining 0 and waited by itself
    assert fake.ratelimiter.emptied["channel_messages"] == 1 and not fake.sent_429
    assert fake.messages[reply.id].referenced_message_id == sent.id and reply.type == discord.MessageType.reply
    with pytest.raises(discord.HTTPException) as info:
        await channel.send(file=discord.File(io.BytesIO(b"x" * (fake.attachment_size_limit + 1)), "big.bin"))
    assert info.value.status == 413 and info.value.code == 40005
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_late_callback_and_modal(env):
    fake, bot = env
    fake.callback_deadline = 0.1
    ix = await fake.slash_command("late", {})
    await fake.wait_for(lambda: bot.errors, timeout=5, what="the late answer to fail")
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062
    assert ix.callbacks == [] and "answered after" in fake.spec_violations[0]
    fake.spec_violations.clear()

    fake.callback_deadline = 3.0
    opened = await fake.slash_command("feedback", {}, user=fake.bob)
    assert (await opened.wait_response())["type"] == 9
    submitted = await fake.submit_modal(opened, {"feedback:text": "nice"})
    answer = await submitted.wait_response()
    assert answer["data"]["content"] == "thanks: nice" and submitted.user_id == int(fake.bob["id"])
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_discord_client_rules_permissions_and_age_restriction(env):
    fake, bot = env
    with pytest.raises(PermissionError):
        await fake.slash_command("purge", {}, user=fake.alice)
    ix = await fake.slash_command("purge", {}, user=fake.mod)
    assert (await ix.wait_response())["data"]["content"] == "manage_guild=True"
    with pytest.raises(PermissionError):
        await fake.slash_command("spicy", {}, user=fake.alice)
    ix = await fake.slash_command("spicy", {}, user=fake.alice, channel_id=fake.nsfw_channel_id)
    assert (await ix.wait_response())["data"]["content"] == "nsfw=True"
    assert fake.channel_messages(fake.nsfw_channel_id) == [ix.original]
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_subcommand_typed_options_and_autocomplete(env):
    fake, bot = env
    choices = await fake.autocomplete("lora use", {"name": "ca"}, focused="name", user=fake.alice)
    assert [c["value"] for c in choices] == ["cat", "castle"]

    ix = await fake.slash_command("lora use", {"name": "cat", "strength": 0.5, "target": fake.bob})
    body = await ix.wait_response()
    assert body["data"]["content"] == f"cat|0.5|{fake.bob['id']}|False"
    assert bot.seen == [("cat", 0.5, int(fake.bob["id"]), "Member", False)]
    options = ix.payload["data"]["options"]
    assert options[0]["type"] == 1 and [o["type"] for o in options[0]["options"]] == [3, 10, 6]

    with pytest.raises(LookupError):
        await fake.slash_command("lora forget", {})
    with pytest.raises(ValueError):
        await fake.slash_command("lora use", {"name": "cat"})  # required options missing
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_expired_token_gives_50027_and_bot_falls_back_to_channel(env):
    fake, bot = env
    ix = await fake.slash_command("slow", {}, user=fake.alice)
    await ix.wait_response()
    fake.expire_token(ix.token)
    bot.gate.set()
    await fake.wait_for(lambda: bot.errors, timeout=5, what="the bot's failed edit")
    [error] = bot.errors
    assert isinstance(error, discord.HTTPException) and error.status == 401 and error.code == 50027
    fallback = await fake.wait_for(lambda: [m for m in fake.channel_messages(fake.channel_id)
                                           if "token gone" in m.content], timeout=5)
    assert f"<@{fake.alice['id']}>" in fallback[0].content
    assert fallback[0].mentioned_user_ids() == [int(fake.alice["id"])]
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_deleted_message_gives_10008(env):
    fake, bot = env
    ix = await fake.slash_command("slow", {}, user=fake.alice)
    await ix.wait_response()
    fake.delete_message(ix.original.id)
    bot.gate.set()
    await fake.wait_for(lambda: bot.errors, timeout=5, what="the bot's failed edit")
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10008

    channel = bot.get_channel(fake.channel_id)
    sent = await channel.send("to be deleted")
    fake.delete_message(sent.id)
    with pytest.raises(discord.NotFound) as info:
        await sent.edit(content="too late")
    assert info.value.code == 10008
    assert fake.messages[sent.id].deleted_by_user and fake.messages[sent.id].content == "to be deleted"
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_rate_limits_are_retried(env):
    fake, bot = env
    webhook_rule = fake.inject_rate_limit("PATCH", r"^/webhooks/\d+/[^/]+/messages/@original$", times=2,
                                          retry_after=0.1)
    channel_rule = fake.inject_rate_limit("POST", r"^/channels/\d+/messages$", times=1, retry_after=0.1)
    ix = await fake.slash_command("slow", {}, user=fake.alice)
    await ix.wait_response()
    bot.gate.set()
    await ix.wait_original(lambda m: m.content == "finished", timeout=5)
    assert webhook_rule.hits == 2 and bot.errors == []
    patches = [r.status for r in fake.requests if r.method == "PATCH"]
    assert patches == [429, 429, 200]

    sent = await bot.get_channel(fake.channel_id).send("after a 429")  # HTTPClient, not the webhook adapter
    assert channel_rule.hits == 1 and fake.messages[sent.id].content == "after a 429"
    assert fake.sent_429 == {"injected": 3}  # the buckets themselves never had to answer 429

    fake.inject_error("POST", r"^/channels/\d+/messages$", 403, 50013, "Missing Permissions")
    with pytest.raises(discord.Forbidden) as info:
        await bot.get_channel(fake.channel_id).send("nope")
    assert info.value.code == 50013
    assert fake.spec_violations == []


@pytest.mark.asyncio
async def test_invalid_bodies_are_spec_violations(env):
    fake, bot = env
    channel = bot.get_channel(fake.nsfw_channel_id)
    assert channel.is_nsfw() and not bot.get_channel(fake.channel_id).is_nsfw()
    with pytest.raises(discord.HTTPException) as info:
        await channel.send("x" * 2001)
    assert info.value.status == 400 and info.value.code == 50035
    assert any("/content" in v and "maxLength" in v for v in fake.spec_violations), fake.spec_violations

    fake.spec_violations.clear()
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=fake.channel_id)
    with pytest.raises(discord.HTTPException):
        await bot.http.request(route, json={"content": 5})
    assert any("is not of type" in v for v in fake.spec_violations), fake.spec_violations

    fake.spec_violations.clear()
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=fake.guild_id))
    assert fake.unhandled == [f"GET /guilds/{fake.guild_id}/bans"] and fake.spec_violations == []


@pytest.mark.asyncio
async def test_gateway_reconnect_resumes(env):
    fake, bot = env
    await fake.force_reconnect()
    await fake.wait_for(lambda: fake.gateway.resumes == 1 and fake.gateway.connected, timeout=10)
    ix = await fake.slash_command("lora use", {"name": "dog", "strength": 1, "target": fake.mod})
    assert (await ix.wait_response())["data"]["content"].startswith("dog|1.0|")
    assert fake.spec_violations == []


def test_validator_accepts_good_and_rejects_bad_bodies():
    validator = get_validator()
    good = {"type": 4, "data": {"content": "hi", "flags": 64, "attachments": [{"id": 0, "filename": "a.png"}],
                                "allowed_mentions": {"parse": [], "users": [123]},
                                "components": [{"type": 1, "components": [
                                    {"type": 2, "style": 1, "label": "Go", "custom_id": "go"}]}]}}
    path = "/interactions/1/tok/callback"
    assert validator.validate("POST", path, good, content_type="application/json", has_body=True) == []
    assert validator.validate("POST", path, good, content_type="multipart/form-data", has_body=True) == []
    bad = {"type": 4, "data": {"components": [{"type": 1, "components": [
        {"type": 2, "style": 1, "label": "Go", "custom_id": "c" * 101}]}]}}
    [problem] = validator.validate("POST", path, bad, content_type="application/json", has_body=True)
    assert "/data/components/0/components/0/custom_id" in problem and "too long" in problem
    assert validator.match("PATCH", "/webhooks/1/t/messages/@original").template.endswith("@original")
    assert validator.validate("GET", "/nope") == ["GET /nope: no such operation in Discord's OpenAPI spec"]
