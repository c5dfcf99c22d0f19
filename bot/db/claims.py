"""Claiming a job and owning it: the SQL that keeps two bot processes from running one job twice.

The fair order (bot/jobs/scheduling.py) decides which job is next; the database decides who gets it:

- PostgreSQL: the candidates are tried in fair order with ``SELECT … FOR UPDATE SKIP LOCKED``;
  the first row this transaction can lock, still queued, is the claim. A job another process is
  claiming at that instant is skipped, not waited for, and the claimer takes the next in order.
- SQLite has one writer at a time: the claim is ``UPDATE … WHERE id = ? AND status = 'queued'``,
  and a row count of 0 means another process (or connection) took it first, so the next candidate
  is tried.

A claimed job records its owner (``claimed_by``, the bot process's instance id) and a lease
(``lease_expires_at``). Lease times come from the database's clock on PostgreSQL, so bot hosts
whose clocks disagree still agree on whose lease lapsed; SQLite is one host, its clock is ours.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from hashlib import sha256
from typing import Any

from sqlalchemy import DateTime, Interval, and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from .models import Job, JobStatus, utcnow
from .results import rowcount

DEFAULT_LEASE = timedelta(seconds=30)


def instance_id_for(data_dir: os.PathLike[str] | str) -> str:
    """A bot process's id that survives its restarts: its host and its DATA_DIR.

    A restarted bot therefore recognises the jobs it held before it stopped and takes them back at
    once, without waiting for their lease to lapse. Two bots on one host need two DATA_DIRs anyway
    (each has its own worker socket and files), so two live processes never share an id."""
    folder = sha256(os.fsencode(os.path.abspath(data_dir))).hexdigest()[:12]
    return f"{socket.gethostname()[:100]}:{folder}"


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def db_now(session: AsyncSession) -> ColumnElement[datetime]:
    """Now, as naive UTC: the database server's clock on PostgreSQL, ours on SQLite."""
    if is_postgres(session):
        return func.timezone("UTC", func.clock_timestamp(), type_=DateTime)
    return literal(utcnow(), DateTime)


def lease_deadline(session: AsyncSession, lease: timedelta) -> ColumnElement[datetime]:
    if is_postgres(session):
        return db_now(session) + literal(lease, Interval)
    return literal(utcnow() + lease, DateTime)


def owned_by(instance_id: str) -> ColumnElement[bool]:
    """The job is this process's, or nobody's (queued, awaiting approval, or from before claims existed)."""
    return or_(Job.claimed_by.is_(None), Job.claimed_by == instance_id)


def lapsed(session: AsyncSession) -> ColumnElement[bool]:
    return and_(Job.lease_expires_at.is_not(None), Job.lease_expires_at < db_now(session))


async def claim_first(session: AsyncSession, order: list[Job], instance_id: str, lease: timedelta) -> Job | None:
    """Claim the first job of ``order`` (the fair order, computed in this transaction) nobody else has claimed."""
    claim: dict[str, Any] = {"status": JobStatus.RUNNING, "attempts": Job.attempts + 1, "started_at": utcnow(),
                             "claimed_by": instance_id, "lease_expires_at": lease_deadline(session, lease)}
    for candidate in order:
        if is_postgres(session):
            locked = await session.scalar(
                select(Job.id).where(Job.id == candidate.id, Job.status == JobStatus.QUEUED)
                .with_for_update(skip_locked=True))
            if locked is None:
                continue  # another process holds it or already took it: the next in fair order
            await session.execute(update(Job).where(Job.id == candidate.id).values(**claim))
        else:
            result = await session.execute(
                update(Job).where(Job.id == candidate.id, Job.status == JobStatus.QUEUED).values(**claim))
            if rowcount(result) != 1:
                continue
        return await session.get(Job, candidate.id, populate_existing=True)
    return None


async def take_over(session: AsyncSession, job_id: int, condition: ColumnElement[bool], **values: Any) -> bool:
    """Change one job only while ``condition`` holds for it: the other process may be changing it too."""
    result = await session.execute(update(Job).where(Job.id == job_id, condition).values(**values))
    return rowcount(result) == 1
