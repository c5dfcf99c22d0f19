"""#18's low findings: DMs, mentions and markdown in echoed prompts, import URLs' secrets, other members' private LoRA
names, the token in reprs and in the worker's environment, the database password in errors, over-long listings."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import discord
import pytest
from security_helpers import ALICE, BOB, GUILD, MOD, interaction, make_world

from bot.db.models import Ban, Job, JobKind, JobStatus, utcnow
from bot.errors import UserFacingError
from bot.moderation import RequestRules
from bot.settings import Settings, load_settings


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


class Response:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    async def send_message(self, content: str, **fields) -> None:
        self.sent.append((content, fields))


def answered(user_id: int, guild_id: int | None = GUILD, **extra):
    ix = interaction(user_id, guild_id, permissions=discord.Permissions(manage_guild=True), **extra)
    ix.response = Response()
    return ix


# -- /imagine in DMs ----------------------------------------------------------------------------------------------

PARAMS = {"prompt": "a fox", "seeds": [1], "steps": 8}


async def test_dms_are_refused_unless_allowed(world):
    with pytest.raises(UserFacingError, match="server"):
        await RequestRules(world.moderation).check(interaction(ALICE, None), dict(PARAMS))
    await RequestRules(world.moderation, allow_dms=True).check(interaction(ALICE, None), dict(PARAMS))


async def test_allowed_dms_still_refuse_a_member_banned_in_any_server(world):
    rules = RequestRules(world.moderation, allow_dms=True)
    await world.moderation.ban(GUILD, BOB, MOD, "spam", None)
    with pytest.raises(UserFacingError, match="banned"):
        await rules.check(interaction(BOB, None), dict(PARAMS))
    await world.moderation.ban(GUILD, ALICE, MOD, None, utcnow() - timedelta(minutes=1))  # an expired ban
    await rules.check(interaction(ALICE, None), dict(PARAMS))


# -- mentions and markdown ----------------------------------------------------------------------------------------

def test_the_client_never_pings_everyone_or_roles():
    from bot.client import ZImageBot

    mentions = ZImageBot(Settings(discord_token="x")).allowed_mentions
    assert (mentions.everyone, mentions.roles, mentions.users) == (False, False, True)


def test_echoed_prompts_can_neither_ping_nor_format():
    from bot.jobs import render

    prompt = "@everyone look **here** <@123456789012345678> <@&456789012345678901> @here `code` ~~x~~ _y_"
    job = Job(id=5, kind=JobKind.IMAGINE, status=JobStatus.QUEUED, user_id=ALICE, params={"prompt": prompt})
    for text in (render.queued_text(job, 2), render.progress_text(job, 1, 8), render.starting_text(job),
                 render.cancelled_text(job), render.describe(job)):
        for raw in ("@everyone", "@here", "<@123456789012345678>", "<@&456789012345678901>", "**here**", "`code`",
                    "~~x~~", "_y_"):
            assert raw not in text, (raw, text)


# -- /lora info: the origin of an import --------------------------------------------------------------------------

@pytest.mark.parametrize("origin, shown", [
    ("https://user:pass@files.example.com/a/ink.safetensors?token=SECRET&x=1#frag", "https://files.example.com/a/ink.safetensors"),
    ("https://example.com/ink.safetensors", "https://example.com/ink.safetensors"),
    ("ink.safetensors", "ink.safetensors"),
])
async def test_lora_info_never_shows_an_import_urls_secrets(world, origin, shown):
    from bot.cogs.lora import LoraCog

    lora = await world.lora("ink", ALICE)
    async with world.store.session() as session, session.begin():
        (await session.get(type(lora), lora.id)).origin = origin
    ix = answered(ALICE)
    cog = LoraCog(world.settings, world.library, None, world.moderation)
    await cog.info.callback(cog, ix, "ink")
    [(text, _)] = ix.response.sent
    assert f"imported from `{shown}`" in text
    assert all(secret not in text for secret in ("SECRET", "pass", "user", "frag"))


# -- names ----------------------------------------------------------------------------------------------------------

async def test_a_taken_name_does_not_reveal_another_members_private_lora(world):
    await world.lora("ink", ALICE)
    await world.lora("oil", ALICE, shared=True)
    with pytest.raises(UserFacingError) as bobs:
        await world.library.check_new_name(GUILD, "ink", BOB)
    assert "not available" in str(bobs.value) and "exists" not in str(bobs.value)
    with pytest.raises(UserFacingError, match="already exists"):
        await world.library.check_new_name(GUILD, "oil", BOB)  # shared: bob sees it anyway
    with pytest.raises(UserFacingError, match="already exists"):
        await world.library.check_new_name(GUILD, "ink", ALICE)  # her own
    await world.lora("dye", BOB)
    with pytest.raises(UserFacingError) as renamed:
        await world.library.rename(BOB, GUILD, "dye", "ink")
    assert "not available" in str(renamed.value) and "exists" not in str(renamed.value)


# -- secrets in reprs, the worker's environment and errors --------------------------------------------------------

def test_the_token_is_not_in_the_settings_repr():
    settings = load_settings({"DISCORD_TOKEN": "MTIz.secret-token", "DATABASE_URL": "postgresql+asyncpg://u:hunter2@db/z"},
                             dotenv_path=None)
    assert "secret-token" not in repr(settings) and "hunter2" not in repr(settings)
    assert settings.discord_token == "MTIz.secret-token" and "hunter2" in settings.database_url


async def test_the_worker_gets_neither_the_token_nor_the_database_url(monkeypatch, tmp_path):
    from bot.worker import supervisor as module

    seen = {}

    async def spawn(*command, env, **kwargs):
        seen.update(env)
        return SimpleNamespace(pid=1)

    monkeypatch.setattr(module.asyncio, "create_subprocess_exec", spawn)
    monkeypatch.setenv("DISCORD_TOKEN", "MTIz.secret-token")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:hunter2@db/z")
    monkeypatch.setenv("HF_HOME", "/models")
    await module.WorkerSupervisor(Settings(discord_token="MTIz.secret-token", data_dir=tmp_path))._spawn()
    assert "DISCORD_TOKEN" not in seen and "DATABASE_URL" not in seen and seen["HF_HOME"] == "/models"
    assert not any("secret-token" in value or "hunter2" in value for value in seen.values())


def test_a_database_error_line_never_shows_the_password():
    from bot.startup_errors import database_line

    url = "postgresql+asyncpg://zimage:hunter2@db.example/zimage"
    line = database_line(url, OSError(f"could not connect to {url}"))
    assert "hunter2" not in line and "zimage:***@db.example" in line


# -- listings within Discord's 2,000 characters -------------------------------------------------------------------

async def test_queue_listing_fits_a_message(world):
    from bot.cogs.queue import QueueCog

    for index in range(60):
        await world.store.enqueue(user_id=ALICE, guild_id=GUILD, channel_id=1, params={"prompt": f"{index} " + "x" * 100})
    ix = answered(ALICE)
    cog = QueueCog(world.store, None)
    await cog.queue.callback(cog, ix)
    [(text, _)] = ix.response.sent
    assert len(text) <= 2000 and text.rstrip().endswith("more.") and "… and " in text


async def test_ban_listing_fits_a_message(world):
    from bot.cogs.mod import ModCog

    async with world.store.session() as session, session.begin():
        for index in range(40):
            session.add(Ban(guild_id=GUILD, user_id=10_000 + index, moderator_id=MOD, reason="r" * 1000))
    ix = answered(MOD)
    cog = ModCog(world.settings, world.moderation, world.store, None, None, lambda _: [])
    await cog.bans.callback(cog, ix)
    [(text, _)] = ix.response.sent
    assert len(text) <= 2000 and "… and " in text and "more" in text


async def test_blocklist_listing_ends_on_a_whole_line(world):
    from bot.cogs.mod import ModCog

    for index in range(40):
        await world.moderation.add_blocked(GUILD, f"{index:03d}" + "w" * 150, MOD)
    ix = answered(MOD)
    cog = ModCog(world.settings, world.moderation, world.store, None, None, lambda _: [])
    await cog.blocklist_list.callback(cog, ix)
    [(text, _)] = ix.response.sent
    assert len(text) <= 2000 and all(line.startswith("`") and line.endswith("`") for line in text.splitlines()[:-1])
    assert "… and " in text.splitlines()[-1]
