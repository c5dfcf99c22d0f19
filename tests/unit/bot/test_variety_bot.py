"""The bot's side of variety: PROMPT_ENHANCER, the guild's seed_variance column (migration
0008 (guild seed variance), on SQLite and PostgreSQL) and the result embed's rewrites within Discord's limits."""

from __future__ import annotations

import asyncio

import discord
import pytest
from alembic import command
from databases import BACKENDS, migrated_database
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from bot.db.migrate import alembic_config
from bot.jobs.render import add_enhanced_prompts
from bot.settings import SettingsError, load_settings

REVISION = "0008"


def test_the_enhancer_is_on_by_default_and_can_be_turned_off(tmp_path):
    base = {"DISCORD_TOKEN": "t", "DATA_DIR": str(tmp_path)}
    assert load_settings(base, dotenv_path=None).enhancer.enabled
    assert not load_settings({**base, "PROMPT_ENHANCER": "off"}, dotenv_path=None).enhancer.enabled
    with pytest.raises(SettingsError, match="PROMPT_ENHANCER must be on or off"):
        load_settings({**base, "PROMPT_ENHANCER": "maybe"}, dotenv_path=None)


async def guild_columns(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return {column["name"] for column in await connection.run_sync(
                lambda sync: inspect(sync).get_columns("guild_settings"))}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_seed_variance_column_migrates_down_and_up(backend, tmp_path):
    async with migrated_database(backend, tmp_path) as url:
        assert "seed_variance" in await guild_columns(url)
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0007")
        assert "seed_variance" not in await guild_columns(url)
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        assert "seed_variance" in await guild_columns(url)


def embed_size(embed: discord.Embed) -> int:
    return len(embed.description or "") + sum(len(field.name or "") + len(field.value or "") for field in embed.fields)


@pytest.mark.parametrize("prompt_chars", [10, 2500, 4000])
def test_the_rewrites_fit_in_the_embed(prompt_chars):
    embed = discord.Embed(description="p" * prompt_chars)
    embed.add_field(name="Size", value="1024×1024 (1:1)")
    add_enhanced_prompts(embed, ["a *very* long rewrite " * 100] * 4)
    assert embed_size(embed) <= 6000 and all(len(field.value or "") <= 1024 for field in embed.fields)
    if prompt_chars < 4000:
        assert [field.name for field in embed.fields][1:] == [f"Enhanced prompt {n}" for n in range(1, 5)]


def test_no_rewrites_no_fields():
    embed = discord.Embed(description="p")
    add_enhanced_prompts(embed, [])
    add_enhanced_prompts(embed, ["", ""])
    assert embed.fields == []
