"""SQLite as the bot uses it: write-ahead logging, and a wait rather than an error when the file is busy.

In SQLite's default journal a reader holds the whole file against a writer's commit, so a page of
`/queue` being read could fail a job's state change with "database is locked" (it did, at shutdown,
when the bot's last write met a read still open). In WAL mode readers never block the writer and the
writer never blocks readers; writers still take turns, for which busy_timeout waits. WAL is kept in
the file, so a second bot process on the same file (one host) uses it too. PostgreSQL needs none of this.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

BUSY_TIMEOUT_MS = 15_000  # longer than any one write transaction of ours; a stuck writer still ends in an error


def tune_sqlite(engine: AsyncEngine) -> None:
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()
