"""Several workers on one queue (bot/worker/pool.py, bot/jobs/runner.py, bot/jobs/pipeline.py): the real runner,
ImagineLane and SQLite queue, with fake GPU workers that queue requests like the real one.

What must hold: every worker takes jobs from the one queue (a free worker runs the next job in fair order); a worker
that dies loses nothing (its jobs run on another) and nothing runs twice; a job whose LoRAs one idle worker already
holds goes there; the pool waits for any worker and cancels where the request is.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pipeline_fakes import FakeGpuWorker, RecordingMessages
from test_pipeline_unit import Moderation, queue, statuses_of, until

from bot.db.jobs import JobStore
from bot.db.models import JobStatus
from bot.imagine import build_params
from bot.jobs.imagine_lane import ImagineLane
from bot.jobs.lane import LaneContext
from bot.jobs.positions import Positions
from bot.jobs.runner import JobRunner
from bot.jobs.status_edits import StatusEdits
from bot.settings import Settings
from bot.worker.client import WorkerClient, WorkerUnavailable
from bot.worker.pool import WorkerPool
from zimage_protocol.endpoints import UnixEndpoint

GUILD, CHANNEL = 10, 20


class Bot:
    """The runner as bot/composition.py builds it, one generation loop per worker."""

    def __init__(self, store: JobStore, workers: list[FakeGpuWorker], data_dir):
        settings = Settings(discord_token="t", data_dir=data_dir, progress_interval=0.05)
        self.messages = RecordingMessages()
        self.status = StatusEdits(self.messages, min_interval=0.05, position_interval=0.0)
        self.positions = Positions(store, self.status, pass_interval=0.02)
        context = LaneContext(settings=settings, store=store, worker=workers[0], messages=self.messages,
                              positions=self.positions, status=self.status)
        self.runner = JobRunner(context, [ImagineLane(context, Moderation(), lambda job: None)], workers=workers,
                                max_attempts=2)

    async def __aenter__(self) -> Bot:
        await self.runner.recover()
        self.positions.start()
        self.runner.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.stop()
        await self.positions.stop()
        await self.status.stop()


def ran_on(worker: FakeGpuWorker) -> set[str]:
    return {request.id for request in worker.history if request.outcome == "done"}


async def test_every_worker_takes_jobs_from_the_one_queue_in_fair_order(store, tmp_path):
    workers = [FakeGpuWorker(seconds=0.15), FakeGpuWorker(seconds=0.15)]
    ids = await queue(store, 1, 1, 1, 2, 2, 2, 3, 3, 3)
    async with Bot(store, workers, tmp_path / "data") as bot:
        await until(statuses_of(store, ids, JobStatus.DONE), what="every job done")
    done = [ran_on(worker) for worker in workers]
    assert all(len(each) >= 3 for each in done), done  # both GPUs worked
    assert done[0].isdisjoint(done[1]) and len(done[0] | done[1]) == len(ids)  # each job once
    starts = sorted((r.started, r.id) for worker in workers for r in worker.history)
    first_three = {int(request_id.split("-")[1]) for _, request_id in starts[:3]}
    assert {(await store.get(job_id)).user_id for job_id in first_three} == {1, 2, 3}  # round robin across members
    assert Counter(c.job_id for c in bot.messages.calls if c.what == "final") == Counter(ids)  # delivered once


async def test_a_dead_worker_loses_nothing_its_jobs_run_on_another(store, tmp_path):
    doomed, healthy = FakeGpuWorker(seconds=0.3), FakeGpuWorker(seconds=0.1)
    ids = await queue(store, 1, 2, 3, 4, 5, 6)
    async with Bot(store, [doomed, healthy], tmp_path / "data") as bot:
        await until(lambda: _started(doomed), what="the first worker busy")
        doomed.crash()  # the job on its GPU and the one waiting behind it are lost with it
        await until(statuses_of(store, ids, JobStatus.DONE), timeout=15, what="every job done on the other worker")
    lost = {r.id for r in doomed.history if r.outcome == "lost"}
    assert lost and ran_on(doomed).isdisjoint(lost)
    finished = {int(r.split("-")[1]) for r in ran_on(doomed) | ran_on(healthy)}
    assert finished == set(ids)
    assert Counter(c.job_id for c in bot.messages.calls if c.what == "final") == Counter(ids)
    for request_id in lost:  # the one on the GPU is retried (attempt 2), the prefetched one keeps its attempt
        job_id = int(request_id.split("-")[1])
        assert any(r.id.startswith(f"job-{job_id}-") for r in healthy.history)


async def _started(worker: FakeGpuWorker) -> bool:
    return any(r.started for r in worker.history)


async def test_a_job_goes_to_the_idle_worker_that_holds_its_loras(store, tmp_path):
    plain, warm = FakeGpuWorker(seconds=0.05), FakeGpuWorker(seconds=0.05)
    warm.loras_given.add("lora-7")  # it ran a job with that LoRA before
    lora = {"name": "lora-7", "path": "/loras/7.safetensors", "scale": 0.8}
    job = await store.enqueue(user_id=1, guild_id=GUILD, channel_id=CHANNEL, interaction_token="token",
                              params=build_params("a knight", "1:1", 4, [1], 10 << 20, loras=[lora]))
    await store.set_message(job.id, 1000 + job.id)
    async with Bot(store, [plain, warm], tmp_path / "data"):
        await until(statuses_of(store, [job.id], JobStatus.DONE), what="the LoRA job done")
    assert ran_on(warm) == {f"job-{job.id}-1"} and not plain.history


async def test_a_handed_job_goes_back_to_the_queue_when_that_worker_is_gone(store, tmp_path):
    plain, warm = FakeGpuWorker(seconds=0.05), FakeGpuWorker(seconds=0.05)
    warm.loras_given.add("lora-7")
    lora = {"name": "lora-7", "path": "/loras/7.safetensors", "scale": 0.8}
    job = await store.enqueue(user_id=1, guild_id=GUILD, channel_id=CHANNEL, interaction_token="token",
                              params=build_params("a knight", "1:1", 4, [1], 10 << 20, loras=[lora]))
    bot = Bot(store, [plain, warm], tmp_path / "data")
    [loop_plain, loop_warm] = bot.runner.pipelines
    claimed = await store.claim_next("imagine")
    assert claimed is not None and claimed.id == job.id
    loop_warm.take(claimed)
    warm.crash()  # before its loop sent it
    bot.positions.start()
    bot.runner.start()  # (no recover(): that would queue the RUNNING job again by itself)
    try:
        await until(statuses_of(store, [job.id], JobStatus.DONE), what="the job done on the other worker")
    finally:
        await bot.__aexit__()
    assert ran_on(plain) == {f"job-{job.id}-1"}  # released, not retried: its attempt was not counted


# -- the pool as the rest of the bot sees it ------------------------------------------------------------------------


def pool_of(tmp_path, count: int) -> WorkerPool:
    return WorkerPool([WorkerClient(UnixEndpoint(tmp_path / f"w{n}.sock")) for n in range(count)])


async def test_the_pool_waits_for_any_worker_and_says_why_none_came(tmp_path):
    pool = pool_of(tmp_path, 2)
    with pytest.raises(WorkerUnavailable, match="not running"):
        await pool.wait_connected(0.2)
    pool.clients[1]._connected.set()  # the second one connects
    await asyncio.wait_for(pool.wait_connected(5), 1)
    assert pool.connected and pool.primary is pool.clients[1] and pool.training_worker() is pool.clients[1]


async def test_a_cancel_goes_to_the_worker_holding_the_request(tmp_path):
    pool = pool_of(tmp_path, 2)
    sent: list[tuple[int, str]] = []
    for number, client in enumerate(pool.clients):
        async def cancel(request_id: str, number: int = number) -> None:
            sent.append((number, request_id))
        client.cancel = cancel  # type: ignore[method-assign]
    pool.clients[1]._pending["job-5-1"] = asyncio.Queue()
    await pool.cancel("job-5-1")
    assert sent == [(1, "job-5-1")]
    with pytest.raises(WorkerUnavailable):
        await pool.cancel("job-6-1")  # no worker has it: the runner says it could not cancel


def test_worker_stats_count_images_over_five_minutes_and_remember_recent_loras():
    from bot.worker.stats import WorkerStats

    stats = WorkerStats()
    for second in range(10):
        stats.image_made(now=1000.0 + second)
    assert stats.images_per_minute(now=1010.0) == 10 * 60 / WorkerStats.WINDOW
    assert stats.images_per_minute(now=1000.0 + WorkerStats.WINDOW + 5) == 5 * 60 / WorkerStats.WINDOW
    stats.loras_sent(["a", "b"])
    assert stats.holds_loras(["a", "b"]) and stats.holds_loras([]) and not stats.holds_loras(["a", "c"])
    stats.loras_sent(f"x{n}" for n in range(WorkerStats.LORAS_KEPT))
    assert not stats.holds_loras(["a"])  # the oldest are forgotten, as a worker's cache would drop them
