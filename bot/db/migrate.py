"""Apply Alembic migrations at start-up, so a fresh or old database is always current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(sync_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sync_url)
    return config


def upgrade_to_head(sync_url: str) -> None:
    """Blocking: call it through asyncio.to_thread from the bot."""
    command.upgrade(alembic_config(sync_url), "head")
