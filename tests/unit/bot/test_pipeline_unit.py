"""The pipelined generation lane (bot/jobs/pipeline.py) with the real ImagineLane, a real SQLite job queue,
a fake GPU worker that queues requests like the real one, and recorded Discord calls.

What must hold: the worker always has the next job waiting behind the running one (never more), so the
GPU never idles between jobs while results are posted; status edits never hold up the lane; a cancelled
job that waits on the worker never reaches the GPU; a crash sends the waiting job back to its fair place
with its attempt not counted; a bot restart finishes every job once.
"""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace

from pipeline_fakes import FakeGpuWorker, RecordingMessages, fake_preview

from bot.db.jobs import JobStore
from bot.db.models import JobStatus
from bot.imagine import build_params
from bot.jobs.imagine_lane import ImagineLane
from bot.jobs.lane import LaneContext
from bot.jobs.positions import Positions
from bot.jobs.runner import JobRunner
from bot.jobs.status_edits import StatusEdits
from bot.settings import Settings
from zimage_protocol.settings import PreviewSettings

GUILD, CHANNEL = 10, 20


class Moderation:
    async def settings(self, guild_id):
        return SimpleNamespace(spoiler_images=False)


class Bot:
    """The runner and what it is built with, as bot/composition.py builds them (one worker)."""

    def __init__(self, store: JobStore, worker: FakeGpuWorker, messages: RecordingMessages, data_dir,
                 progress_interval: float = 0.05, previews: PreviewSettings = PreviewSettings()):
        settings = Settings(discord_token="t", data_dir=data_dir, progress_interval=progress_interval, previews=previews)
        self.store, self.worker, self.messages = store, worker, messages
        self.status = StatusEdits(messages, min_interval=progress_interval, position_interval=0.0)
        self.positions = Positions(store, self.status, pass_interval=0.02)
        context = LaneContext(settings=settings, store=store, worker=worker, messages=messages,
                              positions=self.positions, status=self.status)
        self.runner = JobRunner(context, [ImagineLane(context, Moderation(), lambda job: None)], max_attempts=2)

    async def start(self) -> None:
        await self.runner.recover()
        self.positions.start()
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.positions.stop()
        await self.status.stop()


async def queue(store: JobStore, *users: int) -> list[int]:
    ids = []
    for user in users:
        job = await store.enqueue(user_id=user, guild_id=GUILD, channel_id=CHANNEL, interaction_token="token",
                                  params=build_params(f"prompt of {user}", "1:1", 4, [user], 10 << 20))
        await store.set_message(job.id, 1000 + job.id)
        ids.append(job.id)
    return ids


async def until(predicate, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        await asyncio.sleep(0.01)


def statuses_of(store: JobStore, ids: list[int], *wanted: JobStatus):
    async def check() -> bool:
        return all([(await store.get(job_id)).status in wanted for job_id in ids])
    return check


async def test_the_worker_holds_the_next_job_and_never_waits_for_delivery(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.2)
    messages = RecordingMessages(final_delay=0.5)  # a slow upload: longer than a generation
    bot = Bot(store, worker, messages, tmp_path / "data")
    ids = await queue(store, 1, 2, 3, 4)
    await bot.start()
    try:
        await until(statuses_of(store, ids, JobStatus.DONE), what="every job done")
    finally:
        await bot.stop()
    assert [r.id for r in sorted(worker.history, key=lambda r: r.started)] == [f"job-{i}-1" for i in ids]
    assert worker.on_gpu_at_once() == 2  # the running job and one ahead, never more
    gaps = worker.gaps()
    assert len(gaps) == 3 and max(gaps) < 0.1, gaps  # delivering (0.5 s each) never kept the GPU idle
    for job_id in ids:
        request = worker.requests[f"job-{job_id}-1"]
        [final] = messages.of(job_id, "final")
        assert final.at >= request.finished and f"here is job #{job_id}" in final.content
        assert all(status.ended <= final.at for status in messages.of(job_id, "status"))  # none lands on a result
    finals = [c.job_id for c in messages.calls if c.what == "final"]
    assert finals == ids  # one channel: results in the order the jobs finished
    files = [(await store.get(i)).result["files"] for i in ids]
    assert files == [[f"zimage_{i}_1_{user}.png"] for i, user in zip(ids, (1, 2, 3, 4), strict=True)]


async def test_progress_edits_are_coalesced_and_never_hold_up_the_lane(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.6, steps=30)
    messages = RecordingMessages(status_delay=0.25)  # each edit is slow (a spent bucket)
    bot = Bot(store, worker, messages, tmp_path / "data", progress_interval=0.2)
    [job_id] = await queue(store, 1)
    await bot.start()
    try:
        await until(statuses_of(store, [job_id], JobStatus.DONE), what="the job done")
    finally:
        await bot.stop()
    request = worker.requests[f"job-{job_id}-1"]
    assert request.finished - request.started < 0.9  # 30 progress messages, none awaited an edit
    edits = messages.of(job_id, "status")
    assert 2 <= len(edits) <= 5, [e.content for e in edits]  # ~0.6 s / (0.25 s edit + 0.2 s apart), not 30
    assert all(later.at - earlier.ended >= 0.19 for earlier, later in zip(edits, edits[1:], strict=False))
    assert "is starting" in edits[0].content and "step" in edits[-1].content
    [final] = messages.of(job_id, "final")
    assert final.at >= edits[-1].ended  # the result came after the edit in flight, and replaced what was pending


async def test_a_cancelled_job_waiting_on_the_worker_never_reaches_the_gpu(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.4)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data")
    first, second, third = await queue(store, 1, 2, 3)
    await bot.start()
    try:
        async def second_waits_on_the_worker() -> bool:
            request = worker.requests.get(f"job-{second}-1")
            return request is not None and request.started is None and worker.requests[f"job-{first}-1"].started is not None
        await until(second_waits_on_the_worker, what="job 2 sent ahead while job 1 runs")
        assert await bot.runner.cancel(await store.get(second))
        await until(statuses_of(store, [first, third], JobStatus.DONE), what="jobs 1 and 3 done")
        await until(statuses_of(store, [second], JobStatus.CANCELLED), what="job 2 cancelled")
    finally:
        await bot.stop()
    assert worker.requests[f"job-{second}-1"].started is None and worker.cancels == [f"job-{second}-1"]
    assert messages.of(second, "final") == [] and "was cancelled" in messages.of(second, "status")[-1].content
    assert [len(messages.of(i, "final")) for i in (first, third)] == [1, 1]
    assert not bot.runner.on_worker


async def test_a_crash_retries_the_running_job_and_puts_the_waiting_one_back_in_its_place(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.5)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data")
    running, waiting, later = await queue(store, 1, 2, 3)
    await bot.start()
    try:
        async def both_on_the_worker() -> bool:
            return f"job-{waiting}-1" in worker.requests and worker.requests[f"job-{running}-1"].started is not None
        await until(both_on_the_worker, what="job 1 running, job 2 waiting on the worker")
        worker.crash()
        await until(statuses_of(store, [running, waiting], JobStatus.QUEUED), what="both back in the queue")
        crashed, released = await store.get(running), await store.get(waiting)
        assert crashed.attempts == 1 and crashed.error  # its attempt counts: it was on the GPU
        assert released.attempts == 0 and released.started_at is None  # never started: as if never claimed
        # Member 2 keeps the turn it had before member 3; member 1 was served, so its retry comes after them.
        assert [job.id for job in await store.queued_jobs()] == [waiting, later, running]
        worker.restart()
        await until(statuses_of(store, [running, waiting, later], JobStatus.DONE), what="all done after the restart")
    finally:
        await bot.stop()
    assert [len(messages.of(i, "final")) for i in (running, waiting, later)] == [1, 1, 1]
    started = [r.id for r in worker.history if r.started is not None]
    assert started.count(f"job-{waiting}-1") == 1 and started.count(f"job-{later}-1") == 1
    assert started.count(f"job-{running}-1") == 1 and started.count(f"job-{running}-2") == 1
    assert (await store.get(running)).attempts == 2 and (await store.get(waiting)).attempts == 1


async def test_a_bot_restart_finishes_the_running_and_the_waiting_job_once(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.5)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data")
    first, second = await queue(store, 1, 2)
    await bot.start()
    try:
        async def both_on_the_worker() -> bool:
            return f"job-{second}-1" in worker.requests and worker.requests[f"job-{first}-1"].started is not None
        await until(both_on_the_worker, what="job 1 running, job 2 waiting on the worker")
    finally:
        await bot.stop()
    assert [(await store.get(i)).status for i in (first, second)] == [JobStatus.RUNNING, JobStatus.RUNNING]
    worker.crash()  # the bot's connection closed: the worker drops what it asked for
    worker.restart()
    again = Bot(store, worker, messages, tmp_path / "data")
    await again.start()
    try:
        await until(statuses_of(store, [first, second], JobStatus.DONE), what="both done after the restart")
    finally:
        await again.stop()
    assert [len(messages.of(i, "final")) for i in (first, second)] == [1, 1]
    assert [r.id for r in worker.history if r.outcome == "done"] == [f"job-{first}-2", f"job-{second}-2"]


STEP = re.compile(r"step (\d+)/")


async def test_live_previews_ride_on_the_coalesced_progress_edits_and_the_result_replaces_them(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.8, steps=16, preview_every=2)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data", progress_interval=0.1)
    [job_id] = await queue(store, 1)
    await bot.start()
    try:
        await until(statuses_of(store, [job_id], JobStatus.DONE), what="the job done")
    finally:
        await bot.stop()
    edits = messages.of(job_id, "status")
    assert len(edits) <= 0.8 / 0.1 + 2  # one edit per PROGRESS_INTERVAL at most: previews add no request
    with_preview = [edit for edit in edits if edit.files]
    assert with_preview, [edit.content for edit in edits]
    first = edits.index(with_preview[0])
    assert all(edit.files for edit in edits[first:])  # once shown, every later edit keeps the latest
    for edit in with_preview:
        [(name, data)] = edit.files
        step = int(STEP.search(edit.content).group(1))
        previewed = int(data.rsplit(b" ", 1)[1])
        assert name == "preview.jpg" and data == fake_preview(previewed)
        assert previewed <= step  # never a picture from a later step than the text says
    steps = [int(found.group(1)) for edit in edits if (found := STEP.search(edit.content))]
    assert steps == sorted(steps)  # a preview's Progress (after its step's) never moves the text back
    [final] = messages.of(job_id, "final")
    assert [name for name, _ in final.files] == [f"zimage_{job_id}_1_1.png"]  # the preview is gone with the result


async def test_previews_off_at_the_bot_attaches_nothing(store, tmp_path):
    worker = FakeGpuWorker(seconds=0.4, steps=8, preview_every=2)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data", previews=PreviewSettings(enabled=False))
    [job_id] = await queue(store, 1)
    await bot.start()
    try:
        await until(statuses_of(store, [job_id], JobStatus.DONE), what="the job done")
    finally:
        await bot.stop()
    assert any("step" in edit.content for edit in messages.of(job_id, "status"))
    assert not any(edit.files for edit in messages.of(job_id, "status"))


async def test_a_cancel_mid_run_takes_the_preview_off_the_message(store, tmp_path):
    worker = FakeGpuWorker(seconds=2.0, steps=40, preview_every=2)
    messages = RecordingMessages()
    bot = Bot(store, worker, messages, tmp_path / "data")
    [job_id] = await queue(store, 1)
    await bot.start()
    try:
        async def previewed() -> bool:
            return any(edit.files for edit in messages.of(job_id, "status"))
        await until(previewed, what="a progress edit with a preview")
        assert await bot.runner.cancel(await store.get(job_id))
        await until(statuses_of(store, [job_id], JobStatus.CANCELLED), what="the job cancelled")
    finally:
        await bot.stop()
    last = messages.of(job_id, "status")[-1]
    assert "was cancelled" in last.content and last.files == []


async def test_a_preview_is_a_spoiler_where_the_results_are():
    class Spoilers:
        async def settings(self, guild_id):
            return SimpleNamespace(spoiler_images=guild_id == GUILD)

    context = SimpleNamespace(settings=None, store=None, messages=None, positions=None, status=None)
    lane = ImagineLane(context, Spoilers(), lambda job: None)
    assert await lane._preview_name(SimpleNamespace(guild_id=GUILD)) == "SPOILER_preview.jpg"
    assert await lane._preview_name(SimpleNamespace(guild_id=GUILD + 1)) == "preview.jpg"
    assert await lane._preview_name(SimpleNamespace(guild_id=None)) == "preview.jpg"  # a DM
