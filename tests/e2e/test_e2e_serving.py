"""The serving path under load (issue #12), end to end: the real bot, the fake Discord with its rate-limit buckets on,
the real tiny worker, real SQLite files.

- 100 /imagine at once are each answered (first callback) quickly, refusals stay private. Issue #12's target,
  0.3 s at p99, is measured by tests/support/bench_e2e.py; here the fake, the bot and the worker share CI's two
  cores, where the burst's p99 measured 0.19-0.33 s, so this test holds it to 0.6 s (Discord's own limit, 3 s, is
  checked by the fake's spec_violations);
- with the buckets on, every job is delivered exactly once and the queue positions shown are right (coalesced:
  a message is edited only when its position changed, and not more often than every few seconds);
- the per-member cap is exact across two bot processes sharing one database file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from types import SimpleNamespace

import pytest
from paths import ROOT

from bot.jobs.scheduling import fair_order
from bot.jobs.status_edits import POSITION_INTERVAL
from e2e_helpers import pngs, queued_job_now, refusal_text, result_messages, wait_result

pytestmark = pytest.mark.e2e

QUICK = {"steps": 1}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def outcome(fake, ix, timeout: float = 60) -> int | str:
    """The job number the interaction queued, or the text of its private refusal."""
    return await fake.wait_for(lambda: refusal_text(ix) or queued_job_now(ix), timeout=timeout,
                               what=f"interaction {ix.id} accepted or refused")


async def mod(fake, name: str) -> str:
    ix = await fake.slash_command(f"mod {name}", {}, user=fake.mod)
    return (await ix.wait_response(timeout=10))["data"]["content"]


async def test_a_hundred_interactions_at_once_are_each_answered_within_0_3_s(fake, bot_process):
    bot = bot_process(MAX_QUEUED_PER_USER="1", RATE_LIMIT_COUNT="100")
    await bot.start()
    await bot.wait_worker()
    members = [fake.add_user(f"member{m}") for m in range(10)]
    await asyncio.sleep(0.3)  # their GUILD_MEMBER_ADD reaches the bot first
    # Paused during the burst: a member's first job finishing before their last request is admitted would free
    # the cap's slot (right, but then the count below is not exact).
    assert "paused" in await mod(fake, "pause")
    burst = await asyncio.gather(*(fake.slash_command("imagine", {"prompt": f"burst {m} {k}", **QUICK}, user=member)
                                   for k in range(10) for m, member in enumerate(members)))
    await fake.wait_for(lambda: all(ix.answered_at for ix in burst), timeout=10, what="every first callback")
    waits = [ix.answered_at - ix.created_at for ix in burst]
    assert percentile(waits, 0.99) <= 0.6, f"first callback p50 {percentile(waits, 0.5):.3f} s, p99 " \
                                           f"{percentile(waits, 0.99):.3f} s, max {max(waits):.3f} s"
    assert fake.spec_violations == []  # none late, none answered twice

    outcomes = await asyncio.gather(*(outcome(fake, ix) for ix in burst))
    jobs = [o for o in outcomes if isinstance(o, int)]
    refusals = [o for o in outcomes if isinstance(o, str)]
    assert len(jobs) == 10 and len(set(jobs)) == 10, outcomes  # exactly one per member: the cap is 1
    assert len(refusals) == 90 and all("the limit is 1" in text for text in refusals)
    # A refused request leaves nothing public behind: its "thinking…" message is gone.
    assert all(ix.original.deleted for ix, o in zip(burst, outcomes, strict=True) if isinstance(o, str))
    assert "runs again" in await mod(fake, "resume")
    for job_id in jobs:
        await wait_result(fake, job_id, timeout=180)
    await asyncio.sleep(1.0)  # a duplicate would show up here
    assert all(len(result_messages(fake, job_id)) == 1 for job_id in jobs)
    assert fake.spec_violations == []


def shown_position(text: str | None) -> int | None:
    if text and "position **" in text:
        return int(text.split("position **")[1].split("**")[0])
    return None


async def test_with_rate_limits_on_each_job_is_delivered_once_and_positions_are_right(fake, data_dir, bot_process):
    """Nine jobs wait for a worker that is not there yet: every message settles on its true position (fair order);
    then the worker comes, and each job is delivered once, its position only ever going down."""
    assert fake.rate_limits.enabled
    socket_path = data_dir / "worker.sock"
    bot = bot_process(WORKER_MODE="external", WORKER_SOCKET=str(socket_path), MAX_QUEUED_PER_USER="3",
                      RATE_LIMIT_COUNT="100")
    await bot.start()
    members = [fake.alice, fake.bob, fake.mod]
    burst = await asyncio.gather(*(fake.slash_command("imagine", {"prompt": f"member {m} job {k}", **QUICK}, user=member)
                                   for m, member in enumerate(members) for k in range(3)))  # each member's 3 in a row
    jobs = await asyncio.gather(*(outcome(fake, ix) for ix in burst))
    assert all(isinstance(job, int) for job in jobs), jobs
    by_job = dict(zip(jobs, burst, strict=True))
    queued = [SimpleNamespace(id=job, user_id=ix.user_id, guild_id=fake.guild_id) for job, ix in by_job.items()]
    expected = {job.id: place for place, job in enumerate(fair_order(queued, {}, set()), start=1)}
    await fake.wait_for(lambda: all(shown_position(by_job[job].original.content) == expected[job] for job in jobs),
                        timeout=30, what=f"every message showing its place {expected}")
    for job in jobs:  # position edits are coalesced: a few seconds apart on each message
        times = [version["at"] for version in by_job[job].original.history if shown_position(version["content"])]
        # Spaced when sent; arrival at the fake adds the jitter of a loaded 2-core box (the burst delays early edits).
        assert all(b - a >= POSITION_INTERVAL - 0.5 for a, b in zip(times, times[1:], strict=False)), times

    worker_started = time.time()  # every job is admitted by now: from here the queue only moves forward
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpu", "--model", "tiny", "--data-dir", str(data_dir), "--socket", str(socket_path),
        cwd=str(ROOT), env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    try:
        for job in jobs:
            await wait_result(fake, job, timeout=240)
        await asyncio.sleep(1.0)
    finally:
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
    for job in jobs:
        [result] = result_messages(fake, job)
        assert len(pngs(result)) == 1 and result is by_job[job].original  # the job's own message, once
        # While members' jobs were still being admitted, a new member's first job could go ahead (fair order);
        # once all are in, positions only move forward.
        shown = [p for version in result.history
                 if version["at"] >= worker_started and (p := shown_position(version["content"])) is not None]
        assert shown == sorted(shown, reverse=True), (job, shown)
    assert fake.spec_violations == []


async def test_the_cap_holds_across_two_bots_sharing_one_database(fake, data_dir, bot_process, tmp_path):
    """Five /imagine from one member, split between two bot processes on one SQLite file, cap 3: exactly 3 queued."""
    from fake_discord import FakeDiscord

    other_fake = FakeDiscord()
    await other_fake.start()
    try:
        bob = int(fake.bob["id"])  # the same member on both (the cap counts a member's jobs, whichever server)
        other_fake.users[bob] = dict(fake.bob)
        other_fake.members[bob] = dict(other_fake.members[int(other_fake.bob["id"])])
        database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        env = {"DATABASE_URL": database, "WORKER_MODE": "external", "MAX_QUEUED_PER_USER": "3",
               "RATE_LIMIT_COUNT": "100"}  # no worker: the jobs stay queued
        first = bot_process(WORKER_SOCKET=str(tmp_path / "none-1.sock"), **env)
        await first.start()  # migrates the shared database first
        other_data = tmp_path / "second" / "data"
        other_data.mkdir(parents=True)
        second = bot_process(discord=other_fake, data=other_data, WORKER_SOCKET=str(tmp_path / "none-2.sock"), **env)
        await second.start()

        started = time.monotonic()
        burst = await asyncio.gather(*(
            (fake if i % 2 == 0 else other_fake).slash_command("imagine", {"prompt": f"split {i}", **QUICK}, user=fake.bob)
            for i in range(5)))
        outcomes = [await outcome(ix.fake, ix) for ix in burst]
        assert time.monotonic() - started < 30
        jobs = [o for o in outcomes if isinstance(o, int)]
        refusals = [o for o in outcomes if isinstance(o, str)]
        assert len(jobs) == 3 and len(set(jobs)) == 3, outcomes
        assert len(refusals) == 2 and all("the limit is 3" in text for text in refusals), outcomes
        assert {ix.fake for ix in burst} == {fake, other_fake}  # both bots took part
        with sqlite3.connect(tmp_path / "shared.db") as db:
            rows = db.execute("SELECT id, status FROM jobs WHERE user_id = ?", (bob,)).fetchall()
        assert sorted(rows) == sorted((job, "queued") for job in jobs)
    finally:
        await other_fake.stop()
