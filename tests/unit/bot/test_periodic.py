"""bot/periodic.py: a stop waits for the run in progress (a transaction is never cut off), and cancels only a run
that outlives the grace."""

from __future__ import annotations

import asyncio

from bot.periodic import Periodic


async def test_a_stop_lets_the_run_in_progress_finish():
    events: list[str] = []
    started = asyncio.Event()

    async def body() -> None:
        events.append("begin")
        started.set()
        await asyncio.sleep(0.2)  # a transaction's commit, say
        events.append("commit")

    runs = Periodic("test", body, interval=60)
    runs.start()
    await started.wait()
    await runs.stop()
    assert events == ["begin", "commit"] and not runs.running


async def test_runs_again_after_the_interval_and_survives_an_error():
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the database is away")

    runs = Periodic("test", body, interval=0.01)
    runs.start()
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    await runs.stop()
    assert calls >= 3


async def test_a_run_that_outlives_the_grace_is_cancelled():
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def body() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runs = Periodic("test", body, interval=60, grace=0.05)
    runs.start()
    await started.wait()
    await asyncio.wait_for(runs.stop(), 5)
    assert cancelled.is_set()
