"""Members' /settings rows: read, changed field by field, forgotten. The checks of the values are bot/member_settings.py's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from .jobs import JobStore
from .models import MemberSettings, utcnow

FIELDS = ("aspect", "steps", "count", "private")


class MemberSettingsStore:
    """Shares the job store's engine: one database, one connection pool."""

    def __init__(self, jobs: JobStore):
        self.session = jobs.session

    async def get(self, user_id: int) -> MemberSettings | None:
        async with self.session() as session:
            return await session.get(MemberSettings, user_id)

    async def update(self, user_id: int, **values: Any) -> MemberSettings:
        """Set the given fields (None: back to the bot's default; `private` False), keep the others; the row after."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"not a member setting: {sorted(unknown)}")
        try:
            return await self._update(user_id, values)
        except IntegrityError:  # the same member's other /settings inserted the row first: change that one
            return await self._update(user_id, values)

    async def _update(self, user_id: int, values: dict[str, Any]) -> MemberSettings:
        async with self.session() as session, session.begin():
            row = await session.get(MemberSettings, user_id, with_for_update=True)
            if row is None:
                row = MemberSettings(user_id=user_id, private=False)
                session.add(row)
            for key, value in values.items():
                setattr(row, key, bool(value) if key == "private" else value)
            row.updated_at = utcnow()
        return row

    async def reset(self, user_id: int) -> None:
        async with self.session() as session, session.begin():
            await session.execute(delete(MemberSettings).where(MemberSettings.user_id == user_id))
