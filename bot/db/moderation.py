"""Moderation state: guild settings, bans, the prompt blocklist, and the audit log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from .. import blocklist
from ..blocklist import prompt_matches as prompt_matches  # re-exported: their old import path
from ..blocklist import valid_pattern as valid_pattern
from .jobs import JobStore
from .models import AuditEntry, Ban, BlockedPattern, GuildSettings, utcnow
from .results import rowcount

LIMIT_FIELDS = ("max_queued_per_user", "requests_per_minute", "trainings_per_day", "max_count", "max_steps",
                "lora_import_max_count", "lora_import_max_mb")


@dataclass(frozen=True)
class BlockMatch:
    pattern: str


class ModerationStore:
    """Shares the job store's engine: one database, one connection pool."""

    def __init__(self, jobs: JobStore):
        self.session = jobs.session

    # --- guild settings ------------------------------------------------------------------

    async def settings(self, guild_id: int | None) -> GuildSettings:
        """The guild's row, or an unsaved default row (no guild: DMs get the defaults)."""
        if guild_id is not None:
            async with self.session() as session:
                row = await session.get(GuildSettings, guild_id)
                if row is not None:
                    return row
        return GuildSettings(guild_id=guild_id or 0, paused=False, approve_training=False,
                             allow_blocklisted_in_nsfw=False, spoiler_images=False)

    async def update_settings(self, guild_id: int, **values) -> GuildSettings:
        async with self.session() as session, session.begin():
            row = await session.get(GuildSettings, guild_id)
            if row is None:
                row = GuildSettings(guild_id=guild_id, paused=False, approve_training=False,
                                    allow_blocklisted_in_nsfw=False, spoiler_images=False)
                session.add(row)
            for key, value in values.items():
                setattr(row, key, value)
        return row

    # --- bans ------------------------------------------------------------------------------

    async def ban(self, guild_id: int, user_id: int, moderator_id: int, reason: str | None,
                  expires_at: datetime | None) -> None:
        async with self.session() as session, session.begin():
            await session.execute(delete(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id))
            session.add(Ban(guild_id=guild_id, user_id=user_id, moderator_id=moderator_id, reason=reason,
                            expires_at=expires_at))

    async def unban(self, guild_id: int, user_id: int) -> bool:
        async with self.session() as session, session.begin():
            result = await session.execute(delete(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id))
            return rowcount(result) > 0

    async def active_ban(self, guild_id: int | None, user_id: int) -> Ban | None:
        if guild_id is None:
            return None
        async with self.session() as session:
            ban = await session.scalar(select(Ban).where(Ban.guild_id == guild_id, Ban.user_id == user_id))
        if ban is not None and ban.expires_at is not None and ban.expires_at <= utcnow():
            return None  # expired bans simply stop applying; /mod bans hides them too
        return ban

    async def ban_anywhere(self, user_id: int) -> Ban | None:
        """An active ban of the member in any guild (what applies to them in DMs)."""
        async with self.session() as session:
            rows = await session.scalars(select(Ban).where(Ban.user_id == user_id))
            now = utcnow()
            return next((ban for ban in rows if ban.expires_at is None or ban.expires_at > now), None)

    async def bans(self, guild_id: int) -> list[Ban]:
        async with self.session() as session:
            rows = await session.scalars(select(Ban).where(Ban.guild_id == guild_id).order_by(Ban.created_at))
        now = utcnow()
        return [ban for ban in rows if ban.expires_at is None or ban.expires_at > now]

    # --- blocklist -------------------------------------------------------------------------

    async def add_blocked(self, guild_id: int, pattern: str, moderator_id: int) -> bool:
        async with self.session() as session, session.begin():
            exists = await session.scalar(select(BlockedPattern).where(
                BlockedPattern.guild_id == guild_id, BlockedPattern.pattern == pattern))
            if exists:
                return False
            session.add(BlockedPattern(guild_id=guild_id, pattern=pattern, added_by=moderator_id))
            return True

    async def remove_blocked(self, guild_id: int, pattern: str) -> bool:
        async with self.session() as session, session.begin():
            result = await session.execute(delete(BlockedPattern).where(
                BlockedPattern.guild_id == guild_id, BlockedPattern.pattern == pattern))
            return rowcount(result) > 0

    async def blocklist(self, guild_id: int) -> list[str]:
        async with self.session() as session:
            rows = await session.scalars(select(BlockedPattern.pattern).where(BlockedPattern.guild_id == guild_id)
                                         .order_by(BlockedPattern.id))
            return list(rows)

    async def blocked_match(self, guild_id: int | None, prompt: str) -> BlockMatch | None:
        if guild_id is None:
            return None
        patterns = await self.blocklist(guild_id)
        if not patterns:
            return None
        # In a worker thread: moderators' regexes are bounded in time (bot/blocklist.py), not free.
        pattern = await asyncio.to_thread(blocklist.first_match, patterns, prompt)
        return BlockMatch(pattern) if pattern is not None else None

    # --- audit -------------------------------------------------------------------------------

    async def audit(self, guild_id: int, moderator_id: int, action: str, target: str | None = None,
                    details: str | None = None) -> None:
        async with self.session() as session, session.begin():
            session.add(AuditEntry(guild_id=guild_id, moderator_id=moderator_id, action=action, target=target,
                                   details=details))

    async def audit_log(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        async with self.session() as session:
            rows = await session.scalars(select(AuditEntry).where(AuditEntry.guild_id == guild_id)
                                         .order_by(AuditEntry.id.desc()).limit(limit))
            return list(rows)

