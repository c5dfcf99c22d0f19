"""The job runner against small fakes of its store, worker and messages: no Discord, no worker process.

Every way a lane can end maps to one job state (bot/jobs/outcomes.py); these tests pin each of them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from bot.db.models import Job, JobKind, JobStatus, utcnow
from bot.jobs.lane import LaneContext
from bot.jobs.outcomes import BOT_ERROR_MESSAGE, JobFailed, ResultNotHere, worker_crashed_message
from bot.jobs.positions import Positions
from bot.jobs.runner import JobRunner
from bot.jobs.status_edits import StatusEdits
from bot.settings import Settings
from bot.worker.client import WorkerError, WorkerUnavailable
from zimage_protocol.errors import ErrorCode


def make_job(job_id: int, kind: str = JobKind.IMAGINE, status: JobStatus = JobStatus.QUEUED) -> Job:
    params = {"name": "ada"} if kind == JobKind.TRAIN else {"prompt": f"prompt {job_id}"}
    return Job(id=job_id, kind=kind, status=status, user_id=100 + job_id, guild_id=1, channel_id=5, message_id=900 + job_id,
               interaction_token="token", token_expires_at=utcnow() + timedelta(minutes=15), params=params, attempts=0,
               created_at=utcnow())


class FakeStore:
    """The JobQueue interface over a dict; claims in id order, like one user's jobs in the fair order."""

    def __init__(self, *jobs: Job):
        self.jobs = {job.id: job for job in jobs}
        self.claimed_at: list[tuple[int, float]] = []

    async def claim_next(self, kind: str) -> Job | None:
        queued = sorted((job for job in self.jobs.values() if job.kind == kind and job.status == JobStatus.QUEUED),
                        key=lambda job: job.id)
        if not queued:
            return None
        job = queued[0]
        job.status, job.attempts = JobStatus.RUNNING, job.attempts + 1
        self.claimed_at.append((job.id, time.monotonic()))
        return job

    async def requeue(self, job_id: int, error: str | None = None) -> None:
        self.jobs[job_id].status, self.jobs[job_id].error = JobStatus.QUEUED, error

    async def release(self, job_id: int) -> None:
        job = self.jobs[job_id]
        job.status, job.attempts = JobStatus.QUEUED, job.attempts - 1

    async def mark_delivering(self, job_id: int, result: dict) -> None:
        self.jobs[job_id].status, self.jobs[job_id].result = JobStatus.DELIVERING, result

    async def finish(self, job_id: int, status: JobStatus, error: str | None = None) -> None:
        self.jobs[job_id].status, self.jobs[job_id].error = status, error

    async def cancel_if_queued(self, job_id: int) -> bool:
        job = self.jobs[job_id]
        if job.status not in (JobStatus.QUEUED, JobStatus.AWAITING_APPROVAL):
            return False
        job.status = JobStatus.CANCELLED
        return True

    async def recover_interrupted(self) -> list[Job]:
        interrupted = await self.jobs_in(JobStatus.RUNNING)
        for job in interrupted:
            await self.requeue(job.id, "interrupted by a restart")
        return interrupted

    async def adopt_undelivered(self) -> list[Job]:
        return await self.jobs_in(JobStatus.DELIVERING)  # one process: every undelivered job is its own

    async def jobs_in(self, status: JobStatus) -> list[Job]:
        return [job for job in self.jobs.values() if job.status == status]

    async def queued_jobs(self, kind: str) -> list[Job]:
        return sorted((job for job in self.jobs.values() if job.kind == kind and job.status == JobStatus.QUEUED),
                      key=lambda job: job.id)

    async def guild_jobs(self, guild_id: int) -> list[Job]:
        return [job for job in self.jobs.values() if job.guild_id == guild_id and job.status in JobStatus.active()]


class FakeWorker:
    """The WorkerLink interface: always connected; remembers what it was asked to cancel."""

    model_name = "fake"

    def __init__(self):
        self.cancelled: list[str] = []

    async def wait_connected(self, timeout: float) -> None:
        return None

    def generate(self, request_id, params):
        raise AssertionError("the fake lanes never ask the worker")

    train = generate

    async def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)


class FakeMessages:
    """The JobMessages interface: every status edit and final post, by job."""

    def __init__(self):
        self.statuses: list[tuple[int, str]] = []
        self.finals: list[tuple[int, str]] = []

    async def edit_status(self, job: Job, content: str, **fields) -> bool:
        self.statuses.append((job.id, content))
        return True

    async def post_final(self, job: Job, content: str, make_files=None, **fields) -> bool:
        self.finals.append((job.id, content))
        return True

    async def post_extra(self, job: Job, content: str, make_files) -> bool:
        return True


class ScriptedLane:
    """Raises the scripted errors, one per run, then finishes its jobs as done."""

    def __init__(self, store: FakeStore, kind: str = JobKind.IMAGINE, errors: list[BaseException] | None = None,
                 resume_error: Exception | None = None):
        self.kind, self.store = kind, store
        self.errors = list(errors or [])
        self.resume_error = resume_error
        self.runs: list[int] = []
        self.resumed: list[int] = []

    async def run(self, job: Job) -> None:
        self.runs.append(job.id)
        if self.errors:
            raise self.errors.pop(0)
        await self.store.finish(job.id, JobStatus.DONE)

    async def resume(self, job: Job) -> None:
        self.resumed.append(job.id)
        if self.resume_error:
            raise self.resume_error
        await self.store.finish(job.id, JobStatus.DONE)


def build(*jobs: Job, errors=None, max_attempts: int = 2, busy_retry_delay: float = 0.01, resume_error=None):
    store, worker, messages = FakeStore(*jobs), FakeWorker(), FakeMessages()
    status = StatusEdits(messages, min_interval=0.0, position_interval=0.0)
    context = LaneContext(settings=Settings(discord_token="t"), store=store, worker=worker, messages=messages,
                          positions=Positions(store, status, pass_interval=0.01), status=status)
    imagine = ScriptedLane(store, JobKind.IMAGINE, errors, resume_error)
    training = ScriptedLane(store, JobKind.TRAIN)
    runner = JobRunner(context, [imagine, training], max_attempts=max_attempts, busy_retry_delay=busy_retry_delay)
    return runner, store, worker, messages, imagine


async def run_until(runner: JobRunner, done, timeout: float = 5.0, settle: float = 0.1) -> None:
    """Run the lanes (and the position refresh) until `done()` holds (or fail after `timeout`), then `settle` s more
    for the background edits."""
    positions = runner.outcomes.positions
    positions.start()
    runner.start()
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the runner did not get there in time"
            await asyncio.sleep(0.01)
        await asyncio.sleep(settle)
    finally:
        await runner.stop()
        await positions.stop()


def finished(store: FakeStore, *job_ids: int):
    return lambda: all(store.jobs[job_id].status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
                       for job_id in job_ids)


@pytest.mark.parametrize("code, detail, message", [
    (ErrorCode.OUT_OF_MEMORY, "CUDA out of memory at /home/x", "The GPU ran out of memory on this request."),
    (ErrorCode.LORA, "`ink` does not fit this model", "A LoRA could not be used: `ink` does not fit this model"),
    (ErrorCode.INTERNAL, "Traceback ...", "The GPU worker failed on this request; the error was logged."),
])
async def test_a_worker_error_fails_the_job_with_its_message(code, detail, message):
    runner, store, worker, messages, _ = build(make_job(1), errors=[WorkerError(code, detail)])
    await run_until(runner, finished(store, 1))
    job = store.jobs[1]
    assert job.status == JobStatus.FAILED and job.error.startswith(message)
    assert "Traceback" not in job.error and "/home/x" not in job.error
    [(job_id, text)] = messages.finals
    assert job_id == 1 and f"Job #1 failed: {message}" in text
    assert worker.cancelled == []  # the worker ended the request itself


@pytest.mark.parametrize("locale, expected", [
    ("en-US", "<@101> ❌ Job #1 failed: the training adapter could not be used (the training adapter "
              "ostris/x@main/a.safetensors is not in the Hugging Face cache and HF_HUB_OFFLINE is set). "
              "Nothing was trained. An admin can set `TRAINING_ADAPTER=none`"),
    ("zh-CN", "<@101> ❌ 任务 #1 失败：训练适配器无法使用（the training adapter ostris/x@main/a.safetensors is not in "
              "the Hugging Face cache and HF_HUB_OFFLINE is set）。本次没有进行任何训练。管理员可以设置 "
              "`TRAINING_ADAPTER=none`"),
])
async def test_a_training_adapter_failure_tells_the_member_what_the_admin_can_set(locale, expected):
    """TRAINING_ADAPTER could not be fetched on the worker: the member reads, in their language, what to ask for."""
    detail = "the training adapter ostris/x@main/a.safetensors is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    job = make_job(1)
    job.params["locale"] = locale
    runner, store, worker, messages, _ = build(job, errors=[WorkerError(ErrorCode.TRAINING_ADAPTER, detail)])
    await run_until(runner, finished(store, 1))
    assert store.jobs[1].status == JobStatus.FAILED and "TRAINING_ADAPTER=none" in store.jobs[1].error
    [(_, text)] = messages.finals
    assert text.startswith(expected) and "/path/to/adapter.safetensors" in text


async def test_a_cancelled_request_cancels_the_job():
    runner, store, _, messages, _ = build(make_job(1), errors=[WorkerError(ErrorCode.CANCELLED, "cancelled")])
    await run_until(runner, finished(store, 1))
    assert store.jobs[1].status == JobStatus.CANCELLED and store.jobs[1].error is None
    assert (1, "🚫 Job #1 was cancelled: *prompt 1*") in messages.statuses and messages.finals == []


async def test_a_lost_worker_retries_until_the_last_attempt_then_fails():
    lost = [WorkerUnavailable("the GPU worker stopped while working on this request") for _ in range(3)]
    runner, store, _, messages, lane = build(make_job(1), errors=lost, max_attempts=3)
    await run_until(runner, finished(store, 1))
    job = store.jobs[1]
    assert lane.runs == [1, 1, 1] and job.attempts == 3
    assert job.status == JobStatus.FAILED and job.error == worker_crashed_message(JobKind.IMAGINE, 3)
    assert "crashed while making this image, 3 times" in messages.finals[0][1]


async def test_a_lost_worker_on_the_first_attempt_is_retried_and_the_job_done():
    runner, store, _, messages, lane = build(make_job(1), errors=[WorkerUnavailable("gone")], max_attempts=2)
    await run_until(runner, finished(store, 1))
    assert lane.runs == [1, 1] and store.jobs[1].status == JobStatus.DONE and messages.finals == []


async def test_any_other_error_fails_the_job_drops_the_request_and_the_lane_goes_on():
    runner, store, worker, messages, lane = build(make_job(1), make_job(2), errors=[KeyError("width")])
    await run_until(runner, finished(store, 1, 2))
    assert store.jobs[1].status == JobStatus.FAILED and store.jobs[1].error == BOT_ERROR_MESSAGE
    assert "width" not in messages.finals[0][1]
    assert worker.cancelled == ["job-1-1"]  # the worker is told to stop whatever it still does for it
    assert store.jobs[2].status == JobStatus.DONE and lane.runs == [1, 2]


async def test_a_busy_worker_puts_the_job_back_without_counting_an_attempt_and_the_lane_waits():
    busy = WorkerError(ErrorCode.BUSY, "a LoRA is already training")
    runner, store, worker, messages, lane = build(make_job(1), errors=[busy, busy], busy_retry_delay=0.2)
    await run_until(runner, finished(store, 1))
    job = store.jobs[1]
    assert job.status == JobStatus.DONE and job.error is None and job.attempts == 1
    assert lane.runs == [1, 1, 1] and messages.finals == [] and worker.cancelled == []
    claims = [at for _, at in store.claimed_at]
    assert all(later - earlier >= 0.2 for earlier, later in zip(claims, claims[1:], strict=False)), claims
    assert (1, "⏳ Job #1 is position **1** in the queue: *prompt 1*") in messages.statuses  # shown waiting again


async def test_a_busy_worker_never_uses_up_the_attempts():
    busy = [WorkerError(ErrorCode.BUSY, "a LoRA is already training") for _ in range(4)]
    runner, store, *_ = build(make_job(1), errors=busy, max_attempts=1)
    await run_until(runner, finished(store, 1))
    assert store.jobs[1].status == JobStatus.DONE


async def test_recover_requeues_running_jobs_and_finishes_delivering_ones():
    running, delivering = make_job(1, status=JobStatus.RUNNING), make_job(2, status=JobStatus.DELIVERING)
    runner, store, _, _, lane = build(running, delivering)
    await runner.recover()
    assert store.jobs[1].status == JobStatus.QUEUED and lane.resumed == [2] and store.jobs[2].status == JobStatus.DONE


async def test_a_failing_redelivery_fails_the_job_with_its_reason():
    lost = JobFailed("the finished images were lost before they could be posted")
    runner, store, _, messages, _ = build(make_job(2, status=JobStatus.DELIVERING), resume_error=lost)
    await runner.recover()
    assert store.jobs[2].status == JobStatus.FAILED and store.jobs[2].error == str(lost)
    assert "Job #2 failed: the finished images were lost" in messages.finals[0][1]


async def test_a_result_saved_by_another_bot_process_is_rendered_again():
    elsewhere = ResultNotHere("the finished images are not on this host")
    runner, store, _, messages, _ = build(make_job(2, status=JobStatus.DELIVERING), resume_error=elsewhere)
    await runner.recover()
    assert store.jobs[2].status == JobStatus.QUEUED and not messages.finals


async def test_cancel_a_queued_job_and_the_running_one():
    runner, store, worker, messages, _ = build(make_job(1), make_job(2))
    assert await runner.cancel(store.jobs[1])
    assert store.jobs[1].status == JobStatus.CANCELLED and (1, "🚫 Job #1 was cancelled: *prompt 1*") in messages.statuses
    running = await store.claim_next(JobKind.IMAGINE)
    runner.on_worker[running.id] = (running, worker)
    assert await runner.cancel(running) and worker.cancelled == ["job-2-1"]
    runner.on_worker.clear()
    assert not await runner.cancel(running)  # neither queued nor running any more: nothing to cancel
