"""Fixtures shared by the bot's unit tests."""

from __future__ import annotations

import pytest
from databases import migrated_database

from bot.db.jobs import JobStore


@pytest.fixture
async def store(tmp_path):
    """A JobStore on a fresh SQLite file migrated to head."""
    async with migrated_database("sqlite", tmp_path) as url:
        store = JobStore(url)
        yield store
        await store.close()
