"""Two bot processes on one PostgreSQL share one queue: a burst from several members is delivered exactly
once, both processes take part, and when one is SIGKILLed mid-job the other recovers its job after the lease.

Each bot is a real `python -m bot` with its own DATA_DIR and its own tiny worker. Like two shards of one
bot, they share the Discord REST API (the test's fake) and have a gateway each: members' commands reach
bot A only, so whatever bot B runs it found in the shared queue, woken by PostgreSQL's NOTIFY.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from databases import migrated_database

from bot.db.claims import instance_id_for
from bot.db.jobs import JobStore
from bot.db.models import JobStatus
from bot_process import BotProcess
from e2e_helpers import queued_job, result_messages, wait_result

pytestmark = pytest.mark.e2e

ENV = {"RATE_LIMIT_COUNT": "100", "MAX_QUEUED_PER_USER": "10"}
JOB = {"prompt": "a lighthouse at dusk", "steps": 6}


@pytest.fixture
async def database(tmp_path):
    async with migrated_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
async def second_gateway(fake):
    """Bot B's own gateway, for the same bot account as the test's fake (its REST API is the fake's)."""
    from fake_discord import FakeDiscord

    gateway = FakeDiscord()
    gateway.bot_token, gateway.application_id, gateway.bot_user = fake.bot_token, fake.application_id, fake.bot_user
    await gateway.start()
    yield gateway
    await gateway.stop()


async def test_two_bot_processes_share_a_burst_and_recover_each_other(fake, second_gateway, data_dir, tmp_path,
                                                                      bot_process, database):
    bot_a = bot_process(DATABASE_URL=database, **ENV)
    data_b = tmp_path / "b" / "data"
    data_b.mkdir(parents=True)
    (data_b / "models").symlink_to((data_dir / "models").resolve(), target_is_directory=True)
    bot_b = BotProcess(second_gateway, data_b, DATABASE_URL=database, DISCORD_TOKEN=fake.bot_token,
                       DISCORD_API_BASE=fake.api_base, DEV_GUILD_ID=str(fake.guild_id), **ENV)
    store = JobStore(database)
    try:
        await asyncio.gather(bot_a.start(), bot_b.start(require_commands=False))
        await asyncio.gather(bot_a.wait_worker(), bot_b.wait_worker())
        members = [fake.alice, fake.bob, *(fake.add_user(f"member{i}") for i in range(3))]
        burst = await asyncio.gather(*(fake.slash_command("imagine", {**JOB, "seed": i}, user=members[i % len(members)])
                                       for i in range(20)))
        jobs = await asyncio.gather(*(queued_job(ix, timeout=60) for ix in burst))
        assert len(set(jobs)) == 20

        # Bot B takes part; once it has a job on its worker, it is killed (no clean shutdown).
        b_id = instance_id_for(data_b)

        async def b_running():
            return [job for job in await store.jobs_in(JobStatus.RUNNING) if job.claimed_by == b_id]
        for _ in range(600):
            if b_done := [job for job in await store.jobs_in(JobStatus.DONE) if job.claimed_by == b_id]:
                if await b_running():
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("bot B never ran a job of the shared queue")
        await bot_b.kill()
        orphans = await b_running()  # the job on B's GPU, and the one sent ahead of it
        assert orphans

        # Bot A delivers every job, B's interrupted one once its lease lapsed (about 30-40 s).
        for job_id in jobs:
            await wait_result(fake, job_id, timeout=180)
        delivered = Counter(job_id for job_id in jobs for _ in result_messages(fake, job_id))
        assert set(delivered) == set(jobs) and set(delivered.values()) == {1}, delivered
        for _ in range(300):  # a result is on Discord a moment before its job is marked done
            ended = {job.id: job for job in await store.jobs_in(JobStatus.DONE)}
            if set(ended) == set(jobs):
                break
            await asyncio.sleep(0.1)
        assert set(ended) == set(jobs), {job.id: (job.status, job.error) for job in await store.guild_jobs(fake.guild_id)}
        for orphan in orphans:
            assert ended[orphan.id].claimed_by == instance_id_for(data_dir) and ended[orphan.id].attempts == 2
        assert {job.id for job in b_done} <= set(jobs) and all(ended[job.id].claimed_by == b_id for job in b_done)
        assert fake.spec_violations == []
    finally:
        await store.close()
        await bot_b.stop()
        print("bot B:", bot_b.log()[-4000:])
