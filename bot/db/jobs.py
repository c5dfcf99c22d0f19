"""The job queue, stored in the database: every state change of a job goes through here.

Several bot processes may share one database (PostgreSQL): each JobStore is one process, named by
its ``instance_id``. A claimed job belongs to the process that claimed it (bot/db/claims.py) while
its lease holds (bot/db/leases.py renews it); changes a process makes to a job it ran are fenced
on that ownership, so a process that lost its lease cannot overwrite what the new owner does.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from ..jobs.scheduling import fair_order
from .claims import DEFAULT_LEASE, claim_first, lapsed, lease_deadline, owned_by, take_over
from .leases import LeaseKeeper, Undelivered
from .models import BotState, GuildSettings, Job, JobKind, JobStatus, utcnow
from .results import rowcount
from .sqlite import tune_sqlite
from .wakeups import QueueWakeups

log = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME = timedelta(minutes=15)


class JobStore:
    def __init__(self, database_url: str, *, instance_id: str | None = None, lease: timedelta = DEFAULT_LEASE):
        """``instance_id``: this bot process's name in ``jobs.claimed_by`` (bot/db/claims.py instance_id_for);
        by default one no other process has. ``lease``: how long a claim holds without renewal."""
        self.engine = create_async_engine(database_url)
        tune_sqlite(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.instance_id = instance_id or f"{socket.gethostname()[:100]}:{secrets.token_hex(6)}"
        self.lease = lease
        self.wakeups = QueueWakeups(self.engine)
        self._keeper: LeaseKeeper | None = None

    async def close(self) -> None:
        await self.stop_background()
        await self.engine.dispose()

    # --- running alongside other processes ---------------------------------------------------

    def start_background(self, on_work: Callable[[], None] | None = None,
                         on_undelivered: Undelivered | None = None) -> None:
        """Renew this process's leases and recover other processes' lapsed jobs (bot/db/leases.py), and
        call ``on_work`` whenever a job may have become runnable, in any process (bot/db/wakeups.py)."""
        if on_work is not None:
            self.wakeups.subscribe(on_work)
        self.wakeups.start()
        if self._keeper is None:
            self._keeper = LeaseKeeper(self, on_undelivered)
            self._keeper.start()

    async def stop_background(self) -> None:
        if self._keeper is not None:
            await self._keeper.stop()
            self._keeper = None
        await self.wakeups.stop()

    async def wait_for_work(self, timeout: float) -> bool:
        """Until a job may have become runnable (True), or the timeout (False); needs start_background()."""
        return await self.wakeups.wait(timeout)

    def session(self) -> AsyncSession:
        return self._sessions()

    # --- creating and reading ---------------------------------------------------------

    async def enqueue(self, *, user_id: int, guild_id: int | None, channel_id: int, params: dict[str, Any],
                      interaction_id: int | None = None, interaction_token: str | None = None,
                      kind: str = JobKind.IMAGINE, created_at: datetime | None = None,
                      status: JobStatus = JobStatus.QUEUED) -> Job:
        created = created_at or utcnow()
        job = Job(kind=kind, status=status, user_id=user_id, guild_id=guild_id,
                  channel_id=channel_id, interaction_id=interaction_id, interaction_token=interaction_token,
                  token_expires_at=created + INTERACTION_TOKEN_LIFETIME if interaction_token else None,
                  params=params, attempts=0, created_at=created)
        async with self.session() as session, session.begin():
            session.add(job)
        return job

    async def get(self, job_id: int) -> Job | None:
        async with self.session() as session:
            return await session.get(Job, job_id)

    async def active_jobs_of(self, user_id: int) -> list[Job]:
        async with self.session() as session:
            rows = await session.scalars(
                select(Job).where(Job.user_id == user_id, Job.status.in_(JobStatus.active())).order_by(Job.id))
            return list(rows)

    async def count_active_of(self, user_id: int) -> int:
        async with self.session() as session:
            return await session.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == user_id, Job.status.in_(JobStatus.active()))) or 0

    async def queued_jobs(self, kind: str = JobKind.IMAGINE) -> list[Job]:
        """Runnable waiting jobs of one lane in the order they will run (position 1 first); see scheduling.py.

        Generation and training are separate lanes, each with its own order, so training never
        holds up generation (the worker interleaves them between training steps)."""
        async with self.session() as session:
            return await self._fair_order(session, kind)

    async def _fair_order(self, session: AsyncSession, kind: str) -> list[Job]:
        queued = list(await session.scalars(select(Job).where(Job.status == JobStatus.QUEUED, Job.kind == kind)))
        users = {job.user_id for job in queued}
        last_served = dict((await session.execute(
            select(Job.user_id, func.max(Job.started_at)).where(Job.user_id.in_(users), Job.started_at.is_not(None))
            .group_by(Job.user_id))).all()) if users else {}
        paused = set(await session.scalars(select(GuildSettings.guild_id).where(GuildSettings.paused.is_(True))))
        return fair_order(queued, last_served, paused)

    async def position(self, job: Job) -> int | None:
        """1-based place in its lane; None when not waiting or its guild is paused."""
        order = [queued.id for queued in await self.queued_jobs(job.kind)]
        return order.index(job.id) + 1 if job.id in order else None

    async def positions(self) -> dict[int, int]:
        """Job id -> 1-based place in its lane, for every runnable waiting job."""
        places: dict[int, int] = {}
        for kind in JobKind:
            places.update({job.id: index for index, job in enumerate(await self.queued_jobs(kind), start=1)})
        return places

    async def count_recent(self, user_id: int, guild_id: int, kind: str, period: timedelta) -> int:
        """Jobs of a kind the member started in the guild within the period (cancelled ones too)."""
        async with self.session() as session:
            return await session.scalar(select(func.count()).select_from(Job).where(
                Job.user_id == user_id, Job.guild_id == guild_id, Job.kind == kind,
                Job.created_at >= utcnow() - period)) or 0

    async def guild_jobs(self, guild_id: int) -> list[Job]:
        """Every active job of a guild, oldest first (for moderators)."""
        async with self.session() as session:
            return list(await session.scalars(select(Job).where(
                Job.guild_id == guild_id, Job.status.in_(JobStatus.active())).order_by(Job.id)))

    async def jobs_in(self, status: JobStatus) -> list[Job]:
        async with self.session() as session:
            return list(await session.scalars(select(Job).where(Job.status == status).order_by(Job.id)))

    # --- state changes -----------------------------------------------------------------

    async def set_message(self, job_id: int, message_id: int) -> None:
        await self._update(job_id, message_id=message_id)

    async def claim_next(self, kind: str = JobKind.IMAGINE) -> Job | None:
        """Move the lane's next job in fair order to RUNNING, owned by this process, counting the attempt.

        Any number of processes and lanes may call this at once: each job is claimed by exactly one."""
        async with self.session() as session, session.begin():
            order = await self._fair_order(session, kind)
            return await claim_first(session, order, self.instance_id, self.lease)

    async def requeue(self, job_id: int, error: str | None = None) -> None:
        await self._fenced(job_id, status=JobStatus.QUEUED, error=error, claimed_by=None, lease_expires_at=None)

    async def release(self, job_id: int) -> None:
        """Back to the queue as if never claimed: the attempt is not counted (the worker was busy, not broken).

        A first attempt also gives back its start time, so the member's turn in the fair order is not used up."""
        async with self.session() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING or job.claimed_by not in (None, self.instance_id):
                return
            job.status = JobStatus.QUEUED
            job.attempts = max(job.attempts - 1, 0)
            job.claimed_by = job.lease_expires_at = None
            if job.attempts == 0:
                job.started_at = None

    async def mark_delivering(self, job_id: int, result: dict[str, Any]) -> None:
        await self._fenced(job_id, status=JobStatus.DELIVERING, result=result, error=None)

    async def finish(self, job_id: int, status: JobStatus, error: str | None = None) -> None:
        """The job's end; ``claimed_by`` stays, as the record of which process ran it."""
        await self._fenced(job_id, status=status, error=error, finished_at=utcnow(), lease_expires_at=None)

    async def cancel_if_queued(self, job_id: int) -> bool:
        """Atomically cancel a job that has not started; False when it already left the queue."""
        async with self.session() as session, session.begin():
            result = await session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_((JobStatus.QUEUED, JobStatus.AWAITING_APPROVAL)))
                .values(status=JobStatus.CANCELLED, finished_at=utcnow()))
            return rowcount(result) == 1

    async def approve(self, job_id: int) -> bool:
        """Awaiting approval -> queued; False when it was already decided (or cancelled)."""
        async with self.session() as session, session.begin():
            result = await session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.AWAITING_APPROVAL)
                .values(status=JobStatus.QUEUED))
            return rowcount(result) == 1

    # --- ownership: leases and recovery (bot/db/leases.py runs these periodically) ---------------

    async def recover_interrupted(self) -> list[Job]:
        """At start-up: RUNNING jobs this process held in its previous life (same instance id), or whose
        owner's lease lapsed, or that nobody owns, go back to the queue (they were never delivered).
        Jobs a live process is running are left to it."""
        return await self._requeue_orphans("interrupted by a restart", lambda session: or_(
            Job.claimed_by.is_(None), Job.claimed_by == self.instance_id, lapsed(session)))

    async def recover_expired(self) -> list[Job]:
        """While running: other processes' RUNNING jobs whose lease lapsed go back to the queue."""
        return await self._requeue_orphans("its bot process stopped", lambda session: and_(
            Job.claimed_by != self.instance_id, lapsed(session)))

    async def adopt_undelivered(self, mine: bool = True) -> list[Job]:
        """DELIVERING jobs nobody live owns (this process's previous life, a lapsed lease, no owner)
        become this process's, to post their saved results; a job is adopted by one process only.

        ``mine=False`` leaves this process's own jobs alone: the periodic upkeep of a live process passes it, as its
        own DELIVERING jobs are being posted by it at that moment (taking them again would post them twice)."""
        adopted = []
        async with self.session() as session, session.begin():
            owners = [Job.claimed_by.is_(None), lapsed(session)]
            if mine:
                owners.append(Job.claimed_by == self.instance_id)
            orphaned = or_(*owners)
            for job in await self._candidates(session, JobStatus.DELIVERING, orphaned):
                if await take_over(session, job.id, and_(Job.status == JobStatus.DELIVERING, orphaned),
                                   claimed_by=self.instance_id, lease_expires_at=lease_deadline(session, self.lease)):
                    adopted.append(await session.get(Job, job.id, populate_existing=True))
        return [job for job in adopted if job is not None]

    async def renew_leases(self) -> int:
        """Push forward the lease of every job this process runs or delivers; how many."""
        async with self.session() as session, session.begin():
            result = await session.execute(update(Job).where(
                Job.claimed_by == self.instance_id, Job.status.in_((JobStatus.RUNNING, JobStatus.DELIVERING)))
                .values(lease_expires_at=lease_deadline(session, self.lease)))
            return rowcount(result)

    async def hand_back(self) -> None:
        """A graceful stop: this process's RUNNING jobs go back to the queue now, and its DELIVERING ones'
        leases end, so another process takes them up without waiting a lease."""
        await self._requeue_orphans("its bot process stopped", lambda session: Job.claimed_by == self.instance_id)
        async with self.session() as session, session.begin():
            await session.execute(update(Job).where(
                Job.claimed_by == self.instance_id, Job.status == JobStatus.DELIVERING)
                .values(lease_expires_at=lease_deadline(session, -self.lease)))

    async def _requeue_orphans(self, error: str, condition: Callable[[AsyncSession], ColumnElement[bool]]) -> list[Job]:
        requeued = []
        async with self.session() as session, session.begin():
            orphaned = condition(session)
            for job in await self._candidates(session, JobStatus.RUNNING, orphaned):
                if await take_over(session, job.id, and_(Job.status == JobStatus.RUNNING, orphaned),
                                   status=JobStatus.QUEUED, error=error, claimed_by=None, lease_expires_at=None):
                    requeued.append(job)  # as it was: claimed_by still names the process that lost it
        return requeued

    @staticmethod
    async def _candidates(session: AsyncSession, status: JobStatus, condition: ColumnElement[bool]) -> list[Job]:
        rows = await session.scalars(select(Job).where(Job.status == status, condition).order_by(Job.id))
        jobs = list(rows)
        for job in jobs:
            session.expunge(job)  # keep them as read: the UPDATE that follows must not refresh them
        return jobs

    async def _fenced(self, job_id: int, **values: Any) -> None:
        """Change a job this process owns (or nobody does); a job another process took over is left alone."""
        async with self.session() as session, session.begin():
            if not await take_over(session, job_id, owned_by(self.instance_id), **values):
                log.warning("job %s: not changed (%s), another bot process owns it now",
                            job_id, ", ".join(f"{key}={value}" for key, value in values.items() if key != "result"))

    async def _update(self, job_id: int, **values: Any) -> None:
        async with self.session() as session, session.begin():
            await session.execute(update(Job).where(Job.id == job_id).values(**values))

    # --- small key/value state ---------------------------------------------------------

    async def get_state(self, key: str) -> str | None:
        async with self.session() as session:
            row = await session.get(BotState, key)
            return row.value if row else None

    async def set_state(self, key: str, value: str) -> None:
        async with self.session() as session, session.begin():
            await session.merge(BotState(key=key, value=value))
