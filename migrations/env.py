"""Alembic environment: runs migrations through the bot's own driver, sync or async.

An async URL (sqlite+aiosqlite, postgresql+asyncpg) is migrated through an async engine, so a
PostgreSQL deployment needs no second, synchronous driver.
"""

import asyncio

from alembic import context
from sqlalchemy import engine_from_config, make_url, pool
from sqlalchemy.ext.asyncio import async_engine_from_config

from bot.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def migrate(connection) -> None:
    # Batch mode lets later migrations alter columns on SQLite.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = async_engine_from_config(config.get_section(config.config_ini_section, {}),
                                      prefix="sqlalchemy.", poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(migrate)
    await engine.dispose()


def run_migrations_online() -> None:
    if make_url(config.get_main_option("sqlalchemy.url")).get_dialect().is_async:
        asyncio.run(run_async_migrations())
        return
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        migrate(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
