"""Admitting a job: the member's caps are checked and the job inserted as one atomic step.

A check in Python followed by an insert lets a burst through: five requests read "2 active"
before any of them inserts. Here the caps are conditions of the INSERT itself
(``INSERT … SELECT … WHERE active < cap AND recent < rate AND NOT banned``). SQLite runs a
write statement under its database write lock, so the counts it reads cannot change before the
row lands, whichever process or connection sends the next one; PostgreSQL additionally takes a
per-member advisory lock for the transaction, because under READ COMMITTED two concurrent
INSERT … SELECTs could both count the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, and_, exists, func, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from .jobs import INTERACTION_TOKEN_LIFETIME
from .models import Ban, Job, JobKind, JobStatus, utcnow

RefusalReason = Literal["banned", "queue_full", "rate_limited", "daily_limit"]


@dataclass(frozen=True)
class Caps:
    """What one member may have at the moment of a request (a guild's /mod limits, else the settings)."""

    max_active: int  # jobs waiting, running or being delivered
    rate_count: int  # requests admitted ...
    rate_period: timedelta  # ... within this period
    kind_per_day: int | None = None  # jobs of the new job's kind per member and guild in 24 hours (/mod limits trainings_per_day)


class AdmissionRefused(Exception):
    """The job was not inserted; ``reason`` says which cap held, ``count`` what the member had."""

    def __init__(self, reason: RefusalReason, count: int = 0):
        super().__init__(reason)
        self.reason: RefusalReason = reason
        self.count = count


@dataclass(frozen=True)
class NewJob:
    user_id: int
    guild_id: int | None
    channel_id: int
    params: dict[str, Any]
    kind: str = JobKind.IMAGINE
    status: JobStatus = JobStatus.QUEUED
    interaction_id: int | None = None
    interaction_token: str | None = None
    message_id: int | None = None  # the interaction's "thinking…" message, when it was answered first


def _active_of(user_id: int):
    return (select(func.count()).select_from(Job)
            .where(Job.user_id == user_id, Job.status.in_(JobStatus.active())).scalar_subquery())


def _recent_of(user_id: int, guild_id: int | None, since: datetime, kind: str | None = None):
    same_guild = Job.guild_id.is_(None) if guild_id is None else Job.guild_id == guild_id
    same_kind = [Job.kind == kind] if kind is not None else []
    return (select(func.count()).select_from(Job)
            .where(Job.user_id == user_id, same_guild, Job.created_at >= since, *same_kind).scalar_subquery())


def _banned(user_id: int, guild_id: int | None, now: datetime):
    if guild_id is None:
        return literal(False)
    return exists().where(Ban.user_id == user_id, Ban.guild_id == guild_id,
                          or_(Ban.expires_at.is_(None), Ban.expires_at > now))


async def admit(session: AsyncSession, new: NewJob, caps: Caps) -> int:
    """Insert the job if the member is within ``caps`` at this instant; its id, or AdmissionRefused.

    Call inside ``session.begin()``: the refusal's counts are read in the same transaction."""
    now = utcnow()
    since = now - caps.rate_period
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(new.user_id)))
    values: dict[str, ColumnElement[Any]] = {
        "kind": literal(str(new.kind), String), "status": literal(str(new.status), String),
        "user_id": literal(new.user_id, BigInteger), "guild_id": literal(new.guild_id, BigInteger),
        "channel_id": literal(new.channel_id, BigInteger), "interaction_id": literal(new.interaction_id, BigInteger),
        "interaction_token": literal(new.interaction_token, String), "message_id": literal(new.message_id, BigInteger),
        "token_expires_at": literal(now + INTERACTION_TOKEN_LIFETIME if new.interaction_token else None, DateTime),
        "params": literal(new.params, JSON), "attempts": literal(0, Integer), "created_at": literal(now, DateTime),
    }
    conditions = [_active_of(new.user_id) < caps.max_active,
                  _recent_of(new.user_id, new.guild_id, since) < caps.rate_count,
                  ~_banned(new.user_id, new.guild_id, now)]
    day_ago = now - timedelta(days=1)
    if caps.kind_per_day:
        conditions.append(_recent_of(new.user_id, new.guild_id, day_ago, str(new.kind)) < caps.kind_per_day)
    admitted = and_(*conditions)
    statement = (insert(Job).from_select(list(values), select(*values.values()).where(admitted))
                 .returning(Job.id))
    job_id = (await session.execute(statement)).scalar_one_or_none()
    if job_id is not None:
        return job_id
    if await session.scalar(select(_banned(new.user_id, new.guild_id, now))):
        raise AdmissionRefused("banned")
    active = await session.scalar(select(_active_of(new.user_id))) or 0
    if active >= caps.max_active:
        raise AdmissionRefused("queue_full", active)
    if caps.kind_per_day:
        today = await session.scalar(select(_recent_of(new.user_id, new.guild_id, day_ago, str(new.kind)))) or 0
        if today >= caps.kind_per_day:
            raise AdmissionRefused("daily_limit", today)
    raise AdmissionRefused("rate_limited", await session.scalar(select(_recent_of(new.user_id, new.guild_id, since))) or 0)
