"""Caps are exact: the check and the insert are one atomic step, on SQLite and on PostgreSQL,
within one event loop and across processes sharing one database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from databases import BACKENDS, migrated_database
from paths import ROOT
from sqlalchemy import func, select

from bot.db.admission import AdmissionRefused, Caps, NewJob, admit
from bot.db.jobs import JobStore
from bot.db.models import Ban, Job, JobKind, JobStatus, utcnow

CAPS = Caps(max_active=3, rate_count=100, rate_period=timedelta(minutes=1))


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    async with migrated_database(request.param, tmp_path) as url:
        store = JobStore(url)
        yield store
        await store.close()


def new_job(user_id=1, guild_id=10, prompt="a fox") -> NewJob:
    return NewJob(user_id=user_id, guild_id=guild_id, channel_id=5, params={"prompt": prompt},
                  interaction_token="tok")


async def try_admit(store: JobStore, job: NewJob, caps: Caps = CAPS) -> int | str:
    try:
        async with store.session() as session, session.begin():
            return await admit(session, job, caps)
    except AdmissionRefused as refused:
        return refused.reason


async def active_count(store: JobStore, user_id: int = 1) -> int:
    async with store.session() as session:
        return await session.scalar(select(func.count()).select_from(Job).where(
            Job.user_id == user_id, Job.status.in_(JobStatus.active())))


async def test_five_at_once_with_a_cap_of_three_admit_exactly_three(store):
    outcomes = await asyncio.gather(*(try_admit(store, new_job(prompt=f"p{i}")) for i in range(5)))
    admitted = [outcome for outcome in outcomes if isinstance(outcome, int)]
    assert len(admitted) == 3 and sorted(o for o in outcomes if isinstance(o, str)) == ["queue_full"] * 2
    assert await active_count(store) == 3
    job = await store.get(admitted[0])
    assert job.status == JobStatus.QUEUED and job.params["prompt"].startswith("p") and job.token_expires_at > utcnow()
    # Another member is not affected by the first one's cap, and a finished job frees a place.
    assert isinstance(await try_admit(store, new_job(user_id=2)), int)
    await store.finish(admitted[0], JobStatus.DONE)
    assert isinstance(await try_admit(store, new_job()), int)


async def test_the_rate_limit_counts_recent_requests_in_the_same_guild(store):
    caps = Caps(max_active=100, rate_count=2, rate_period=timedelta(minutes=1))
    outcomes = await asyncio.gather(*(try_admit(store, new_job(), caps) for _ in range(4)))
    assert sorted(map(str, outcomes)).count("rate_limited") == 2
    assert isinstance(await try_admit(store, new_job(guild_id=11), caps), int)  # another guild: its own allowance


async def test_a_ban_holds_inside_the_insert(store):
    async with store.session() as session, session.begin():
        session.add(Ban(guild_id=10, user_id=1, moderator_id=9, expires_at=utcnow() + timedelta(hours=1)))
        session.add(Ban(guild_id=10, user_id=3, moderator_id=9, expires_at=utcnow() - timedelta(hours=1)))  # expired
    assert await try_admit(store, new_job()) == "banned"
    assert isinstance(await try_admit(store, new_job(guild_id=11)), int)  # banned in one guild only
    assert isinstance(await try_admit(store, new_job(user_id=3)), int)


CHILD = """
import asyncio, json, sys
from datetime import timedelta
from bot.db.admission import AdmissionRefused, Caps, NewJob, admit
from bot.db.jobs import JobStore

async def main(url):
    store = JobStore(url)
    async def one(i):
        try:
            async with store.session() as session, session.begin():
                await admit(session, NewJob(user_id=1, guild_id=10, channel_id=5, params={"i": i}),
                            Caps(max_active=3, rate_count=100, rate_period=timedelta(minutes=1)))
            return "admitted"
        except AdmissionRefused as refused:
            return refused.reason
    print(json.dumps(await asyncio.gather(*(one(i) for i in range(5)))))
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


async def test_two_processes_on_one_database_still_admit_exactly_three(store):
    root = ROOT
    children = [await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(store.engine.url.render_as_string(
        hide_password=False)), stdout=subprocess.PIPE, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        for _ in range(2)]
    outputs = [json.loads((await child.communicate())[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sum(output.count("admitted") for output in outputs) == 3
    assert await active_count(store) == 3


async def test_trainings_per_day_hold_inside_the_insert(store):
    """/train's daily cap is checked again when the job is inserted: parallel requests all passed the first check."""
    caps = Caps(max_active=10, rate_count=100, rate_period=timedelta(minutes=1), kind_per_day=2)
    train = NewJob(user_id=1, guild_id=10, channel_id=5, params={}, kind=JobKind.TRAIN)
    outcomes = await asyncio.gather(*(try_admit(store, train, caps) for _ in range(4)))
    assert sorted(map(str, outcomes)).count("daily_limit") == 2
    assert isinstance(await try_admit(store, new_job(), caps), int)  # an /imagine is not a training
