"""The job queue, stored in the database: every state change of a job goes through here."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from ..jobs.scheduling import fair_order
from .models import BotState, GuildSettings, Job, JobKind, JobStatus, utcnow
from .results import rowcount

INTERACTION_TOKEN_LIFETIME = timedelta(minutes=15)


class JobStore:
    def __init__(self, database_url: str):
        self.engine = create_async_engine(database_url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()

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
        """Move the lane's next job in fair order to RUNNING, counting the attempt. One consumer per lane."""
        async with self.session() as session, session.begin():
            order = await self._fair_order(session, kind)
            if not order:
                return None
            job = order[0]
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.started_at = utcnow()
        return job

    async def requeue(self, job_id: int, error: str | None = None) -> None:
        await self._update(job_id, status=JobStatus.QUEUED, error=error)

    async def release(self, job_id: int) -> None:
        """Back to the queue as if never claimed: the attempt is not counted (the worker was busy, not broken).

        A first attempt also gives back its start time, so the member's turn in the fair order is not used up."""
        async with self.session() as session, session.begin():
            job = await session.get(Job, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return
            job.status = JobStatus.QUEUED
            job.attempts = max(job.attempts - 1, 0)
            if job.attempts == 0:
                job.started_at = None

    async def mark_delivering(self, job_id: int, result: dict[str, Any]) -> None:
        await self._update(job_id, status=JobStatus.DELIVERING, result=result, error=None)

    async def finish(self, job_id: int, status: JobStatus, error: str | None = None) -> None:
        await self._update(job_id, status=status, error=error, finished_at=utcnow())

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

    async def recover_interrupted(self) -> list[Job]:
        """After a restart, jobs caught RUNNING go back to the queue (they were never delivered)."""
        interrupted = await self.jobs_in(JobStatus.RUNNING)
        for job in interrupted:
            await self.requeue(job.id, error="interrupted by a restart")
        return interrupted

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
