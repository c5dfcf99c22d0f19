"""Two bot processes on one database: every job claimed once, a dead process's jobs recovered, a live one's
left alone, and a job queued by one wakes the other. On a real SQLite file and a real PostgreSQL server;
each JobStore (its own engine and connections) stands for one bot process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta

import pytest
from databases import BACKENDS, migrated_database
from sqlalchemy import select

from bot.db.jobs import JobStore
from bot.db.models import GuildSettings, Job, JobStatus

SHORT_LEASE = timedelta(seconds=3)  # long enough that a slow first connect of B still lands inside it


@pytest.fixture(params=BACKENDS)
async def url(request, tmp_path):
    async with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def stores(url):
    """Two processes' stores, A and B, with short leases so the tests need not wait long."""
    made = [JobStore(url, instance_id=name, lease=SHORT_LEASE) for name in ("bot-a", "bot-b")]
    yield made
    for store in made:
        await store.close()


async def enqueue(store: JobStore, user_id: int = 1, guild_id: int = 10):
    return await store.enqueue(user_id=user_id, guild_id=guild_id, channel_id=5, params={"prompt": "a fox"})


async def test_two_processes_claiming_at_once_take_every_job_exactly_once(stores):
    a, b = stores
    jobs = [await enqueue(a, user_id=1 + i % 7) for i in range(200)]
    claimed: list[tuple[str, int]] = []

    async def lane(store: JobStore) -> None:
        while (job := await store.claim_next("imagine")) is not None:
            assert job.status == JobStatus.RUNNING and job.claimed_by == store.instance_id and job.attempts == 1
            claimed.append((store.instance_id, job.id))
            await store.finish(job.id, JobStatus.DONE)

    # Four lanes per process, all claiming at once.
    await asyncio.gather(*(lane(store) for store in (a, b) for _ in range(4)))
    counts = Counter(job_id for _, job_id in claimed)
    assert sorted(counts) == [job.id for job in jobs] and set(counts.values()) == {1}
    assert {owner for owner, _ in claimed} == {"bot-a", "bot-b"}  # both really took part
    assert await a.jobs_in(JobStatus.QUEUED) == [] and len(await b.jobs_in(JobStatus.DONE)) == 200
    assert {job.claimed_by for job in await a.jobs_in(JobStatus.DONE)} == {"bot-a", "bot-b"}


async def test_claims_alternating_between_processes_keep_the_fair_order(stores):
    a, b = stores
    for user in (1, 1, 1, 2, 2, 3):
        await enqueue(a, user_id=user)
    expected = [job.id for job in await a.queued_jobs("imagine")]
    taken = [await (a if turn % 2 == 0 else b).claim_next("imagine") for turn in range(len(expected))]
    assert [job.id for job in taken] == expected
    assert [job.user_id for job in taken] == [1, 2, 3, 1, 2, 1]


async def test_a_dead_process_s_running_job_is_recovered_by_the_other(stores):
    a, b = stores
    job = await enqueue(a)
    assert (await a.claim_next("imagine")).id == job.id  # A claims, then dies: nobody renews its lease
    assert await b.recover_expired() == [] and await b.claim_next("imagine") is None  # the lease still holds
    await asyncio.sleep(SHORT_LEASE.total_seconds() + 0.3)
    [recovered] = await b.recover_expired()
    assert recovered.id == job.id and recovered.claimed_by == "bot-a"  # who lost it, for the log
    again = await b.claim_next("imagine")
    assert again.id == job.id and again.claimed_by == "bot-b" and again.attempts == 2
    # A comes back to life late: what it does to the job no longer counts.
    await a.finish(job.id, JobStatus.FAILED, error="late")
    await a.requeue(job.id)
    assert (await b.get(job.id)).status == JobStatus.RUNNING
    await b.finish(job.id, JobStatus.DONE)
    assert (await a.get(job.id)).status == JobStatus.DONE


async def test_a_live_process_keeps_its_jobs(stores):
    a, b = stores
    running, delivering = await enqueue(a), await enqueue(a)
    await a.claim_next("imagine")
    await a.claim_next("imagine")
    await a.mark_delivering(delivering.id, {"files": []})
    a.start_background()  # renews its leases every lease/3
    await asyncio.sleep(3 * SHORT_LEASE.total_seconds())
    assert await b.recover_expired() == []
    assert await b.recover_interrupted() == []  # B (re)starting does not take a live process's jobs
    assert await b.adopt_undelivered() == []
    assert (await b.get(running.id)).claimed_by == "bot-a" and (await b.get(delivering.id)).status == JobStatus.DELIVERING


async def test_a_restarted_process_takes_back_its_own_jobs_at_once(url):
    before = JobStore(url, instance_id="bot-a", lease=timedelta(minutes=5))
    other = JobStore(url, instance_id="bot-b")
    after = JobStore(url, instance_id="bot-a")
    try:
        mine, theirs, undelivered = [await enqueue(before, user_id=user) for user in (1, 2, 3)]
        assert (await before.claim_next("imagine")).id == mine.id
        assert (await other.claim_next("imagine")).id == theirs.id
        assert (await before.claim_next("imagine")).id == undelivered.id
        await before.mark_delivering(undelivered.id, {"files": []})
        # "bot-a" restarts: its jobs come back without waiting for the 5-minute lease; "bot-b"'s stay with it.
        assert [job.id for job in await after.recover_interrupted()] == [mine.id]
        assert [job.id for job in await after.adopt_undelivered()] == [undelivered.id]
        assert (await after.get(theirs.id)).status == JobStatus.RUNNING
        assert (await after.get(mine.id)).claimed_by is None
    finally:
        for store in (before, other, after):
            await store.close()


async def test_a_dead_process_s_undelivered_result_is_posted_by_the_other(stores):
    a, b = stores
    job = await enqueue(a)
    await a.claim_next("imagine")
    await a.mark_delivering(job.id, {"files": ["x.png"]})  # then A dies
    adopted = asyncio.Queue()

    async def post(job):
        await adopted.put(job)

    b.start_background(on_undelivered=post)
    taken = await asyncio.wait_for(adopted.get(), 5 * SHORT_LEASE.total_seconds())
    assert taken.id == job.id and taken.claimed_by == "bot-b" and taken.result == {"files": ["x.png"]}
    assert adopted.empty() and await a.adopt_undelivered() == []  # adopted once, by one process


async def test_the_upkeep_leaves_the_results_this_process_is_posting_alone(stores):
    """A live process's own DELIVERING job is being posted by it: its periodic upkeep must not adopt it again (that
    posted it twice, a bug the three-worker e2e burst showed); a restart still takes it back (test above)."""
    a, _ = stores
    job = await enqueue(a)
    await a.claim_next("imagine")
    await a.mark_delivering(job.id, {"files": ["x.png"]})
    adopted: list[int] = []

    async def post(job):
        adopted.append(job.id)

    a.start_background(on_undelivered=post)
    await asyncio.sleep(3 * SHORT_LEASE.total_seconds())  # several rounds of upkeep
    assert adopted == [] and (await a.get(job.id)).status == JobStatus.DELIVERING


async def test_a_graceful_stop_hands_jobs_back_at_once(stores):
    a, b = stores
    job, undelivered = await enqueue(a), await enqueue(a, user_id=2)
    await a.claim_next("imagine")
    await a.claim_next("imagine")
    await a.mark_delivering(undelivered.id, {"files": []})
    await a.hand_back()
    assert (await b.claim_next("imagine")).id == job.id
    assert [adopted.id for adopted in await b.adopt_undelivered()] == [undelivered.id]


async def test_a_job_queued_by_one_process_wakes_the_other(stores, url):
    a, b = stores
    b.start_background()
    if url.startswith("postgresql"):
        await asyncio.wait_for(b.wakeups.listening.wait(), 5)
        within = 1.0  # NOTIFY
    else:
        within = 5.0 + 1  # the poll's longest back-off, POLL_MAX
    await asyncio.sleep(0.3)  # let the first wake-up (the listener starting) pass

    async def woken_by(change) -> float:
        waiting = asyncio.create_task(b.wait_for_work(within + 2))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await change()
        assert await waiting, "B was not woken"
        return time.monotonic() - started

    job = await enqueue(a)
    assert await woken_by(lambda: enqueue(a)) < within
    await a.claim_next("imagine")
    assert await woken_by(lambda: a.requeue(job.id)) < within

    async def pause(paused: bool) -> None:
        async with a.session() as session, session.begin():
            await session.merge(GuildSettings(guild_id=10, paused=paused, approve_training=False,
                                              allow_blocklisted_in_nsfw=False, spoiler_images=False))
    await pause(True)
    await asyncio.sleep(0.3)
    assert await woken_by(lambda: pause(False)) < within  # /mod resume


async def test_postgresql_skips_a_job_another_process_is_claiming_rather_than_waiting(stores, url):
    if not url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    a, b = stores
    first, second = await enqueue(a, user_id=1), await enqueue(a, user_id=2)
    async with a.session() as session, session.begin():
        # A is in the middle of claiming the first job (its row locked, its transaction open) ...
        await session.execute(select(Job.id).where(Job.id == first.id).with_for_update())
        started = time.monotonic()
        taken = await asyncio.wait_for(b.claim_next("imagine"), 5)
        assert taken.id == second.id and time.monotonic() - started < 1  # ... B takes the next one, without waiting
    assert (await a.claim_next("imagine")).id == first.id
