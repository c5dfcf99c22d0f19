"""Alembic's migrations up and down, on a real SQLite file and a real PostgreSQL server: every revision
downgrades and upgrades again, and 0006 (job claims) adds and removes its columns and, on PostgreSQL,
the NOTIFY triggers."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from databases import BACKENDS, migrated_database
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.db.migrate import alembic_config

TRIGGERS = {"jobs_runnable_notify", "guild_resumed_notify"}


@pytest.fixture(params=BACKENDS)
async def url(request, tmp_path):
    async with migrated_database(request.param, tmp_path) as url:
        yield url


async def schema(url: str) -> tuple[set[str], set[str], set[str]]:
    """The tables, the jobs table's columns, and (PostgreSQL) the triggers."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
            columns = ({column["name"] for column in await connection.run_sync(
                lambda sync: inspect(sync).get_columns("jobs"))} if "jobs" in tables else set())
            triggers = set()
            if engine.dialect.name == "postgresql":
                triggers = set((await connection.execute(
                    text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))).scalars())
            return tables, columns, triggers
    finally:
        await engine.dispose()


async def migrate(url: str, direction: str, revision: str) -> None:
    await asyncio.to_thread(getattr(command, direction), alembic_config(url), revision)


async def test_claims_migration_down_and_up(url):
    tables, columns, triggers = await schema(url)
    assert {"claimed_by", "lease_expires_at"} <= columns
    assert triggers == (TRIGGERS if url.startswith("postgresql") else set())
    await migrate(url, "downgrade", "0005")  # through 0007 (member settings) first
    tables, columns, triggers = await schema(url)
    assert "jobs" in tables and not {"claimed_by", "lease_expires_at"} & columns and triggers == set()
    await migrate(url, "upgrade", "head")
    assert {"claimed_by", "lease_expires_at"} <= (await schema(url))[1]


async def test_every_revision_downgrades_to_nothing_and_upgrades_again(url):
    await migrate(url, "downgrade", "base")
    tables, _, triggers = await schema(url)
    assert tables <= {"alembic_version"} and triggers == set()
    await migrate(url, "upgrade", "head")
    tables, columns, _ = await schema(url)
    assert {"jobs", "bot_state", "guild_settings", "bans", "loras", "lora_selections", "member_settings"} <= tables
    assert "claimed_by" in columns


async def test_member_settings_migration_down_and_up(url):
    assert "member_settings" in (await schema(url))[0]
    await migrate(url, "downgrade", "0006")
    tables, columns, _ = await schema(url)
    assert "member_settings" not in tables and "claimed_by" in columns
    await migrate(url, "upgrade", "head")
    assert "member_settings" in (await schema(url))[0]


async def guild_settings_columns(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return {column["name"] for column in await connection.run_sync(
                lambda sync: inspect(sync).get_columns("guild_settings"))}
    finally:
        await engine.dispose()


async def test_content_check_migration_down_and_up(url):
    """0009: /mod content's mode and age_restricted_channels; NULL in existing rows (off, allow: today's behaviour)."""
    assert {"content_mode", "content_age_restricted", "seed_variance"} <= await guild_settings_columns(url)
    await migrate(url, "downgrade", "0008")
    columns = await guild_settings_columns(url)
    assert not {"content_mode", "content_age_restricted"} & columns and "seed_variance" in columns
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:  # a server's row from before the check existed
            await connection.execute(text(
                "INSERT INTO guild_settings (guild_id, paused, approve_training, allow_blocklisted_in_nsfw, "
                "spoiler_images) VALUES (5, false, false, false, true)"))
        await migrate(url, "upgrade", "head")
        async with engine.connect() as connection:
            row = (await connection.execute(text(
                "SELECT content_mode, content_age_restricted, spoiler_images FROM guild_settings WHERE guild_id = 5"
            ))).one()
        assert tuple(row) == (None, None, True)
    finally:
        await engine.dispose()
