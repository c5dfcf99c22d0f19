"""How a job that did not simply finish ends: the one mapping of errors to job states and messages.

    WorkerError(cancelled)   -> cancelled
    WorkerError(busy)        -> back in the queue, the attempt not counted (the worker is still busy
                                with the last training: the lane waits a little and asks again)
    WorkerError(other code)  -> failed, with the code's message (worker_error_message)
    WorkerUnavailable        -> back in the queue until JOB_MAX_ATTEMPTS, then failed (worker_crashed_message)
    WorkerUnavailable, for a job that waited behind another one on the worker (prefetched: it never
                             reached the GPU) -> back in the queue in its fair place, the attempt not counted
    JobFailed                -> failed, with its reason
    ResultNotHere            -> back in the queue to render again (its images were saved by another bot
                                process, on its disk, and that process died before posting them)
    anything else            -> failed, logged, and the worker told to drop the request, so no job
                                is left RUNNING until the next restart
"""

from __future__ import annotations

import enum
import logging

from zimage_protocol.errors import ErrorCode

from .. import metrics
from ..db.models import Job, JobKind, JobStatus
from ..i18n import Text
from ..worker.client import WorkerError, WorkerUnavailable
from . import render
from .lane import LaneContext
from .requests import request_id

log = logging.getLogger(__name__)

# The reasons are Texts: stored in English (the job's `error`), posted in the requester's language (render.failed_text).
WORKER_ERROR_MESSAGES = {
    ErrorCode.PROMPT_TOO_LONG: Text("jobfail.prompt_too_long"),
    ErrorCode.OUT_OF_MEMORY: Text("jobfail.out_of_memory"),
    ErrorCode.BAD_REQUEST: Text("jobfail.bad_request"),
    ErrorCode.CANCELLED: Text("jobfail.cancelled"),
    ErrorCode.VERSION_MISMATCH: Text("jobfail.version"),
    ErrorCode.INTERNAL: Text("jobfail.internal"),
}
# The worker's UserError messages are written for users (gpu/: AdapterError, TrainerError, DatasetError):
# they are shown as they are (in English: the worker has no member), after what they are about.
USER_ERROR_PREFIXES = {
    ErrorCode.LORA: "jobfail.lora",
    ErrorCode.TRAINING: "jobfail.training",
    ErrorCode.UNSUPPORTED: "jobfail.unsupported",
    ErrorCode.BUSY: "jobfail.busy",
}
BOT_ERROR_MESSAGE = Text("error.bot")


def worker_error_message(code: ErrorCode, detail: str) -> str:
    if code == ErrorCode.TRAINING_ADAPTER:  # the admin's setting: the member is told what to ask for (en and zh-CN)
        return Text("train.adapter_failed", detail=detail[:400])
    if code in USER_ERROR_PREFIXES:
        return Text(USER_ERROR_PREFIXES[code], detail=detail[:400])
    return WORKER_ERROR_MESSAGES.get(code, WORKER_ERROR_MESSAGES[ErrorCode.INTERNAL])


def worker_crashed_message(kind: str, attempts: int) -> str:
    """A job whose worker died on every one of its attempts (JOB_MAX_ATTEMPTS)."""
    what = Text("jobfail.what_train" if kind == JobKind.TRAIN else "jobfail.what_image")
    times = {1: Text("jobfail.once"), 2: Text("jobfail.twice")}.get(attempts) or Text("jobfail.times", count=attempts)
    retried = Text("jobfail.not_retried_again" if attempts > 1 else "jobfail.not_retried")
    return Text("jobfail.crashed", what=what, times=times, retried=retried)


class JobFailed(Exception):
    """A lane's own reason to fail a job; the message is shown to the user."""


class ResultNotHere(Exception):
    """A DELIVERING job adopted from another bot process whose saved result is not on this host's disk."""


class Outcome(enum.Enum):
    FINISHED = "finished"  # the lane ran to its end (done, or failed to post: the lane set that)
    CANCELLED = "cancelled"
    FAILED = "failed"
    RETRY = "retry"        # back in the queue, the attempt counted
    BUSY = "busy"          # back in the queue, the attempt not counted; wait before claiming again
    RELEASED = "released"  # a prefetched job back in the queue, the attempt not counted


class JobOutcomes:
    def __init__(self, context: LaneContext, max_attempts: int):
        self.store, self.worker, self.messages = context.store, context.worker, context.messages
        self.positions, self.status = context.positions, context.status
        self.max_attempts = max_attempts

    async def settle(self, job: Job, error: Exception, *, prefetched: bool = False) -> Outcome:
        """Put a job whose lane raised `error` in the state that error means. `prefetched`: the job waited on the
        worker behind another one that was lost with it (bot/jobs/pipeline.py)."""
        await self.status.settle(job.id)  # no status edit lands after what is said below
        match error:
            case WorkerUnavailable() if prefetched:
                log.info("job %s: the worker went away before it started; back in the queue", job.id)
                await self.store.release(job.id)
                await self.positions.refresh()
                return Outcome.RELEASED
            case WorkerError(code=ErrorCode.CANCELLED):
                await self.store.finish(job.id, JobStatus.CANCELLED)
                # attachments=[]: a live preview of the cancelled image does not stay on its message
                await self.messages.edit_status(job, render.cancelled_text(job), view=None, attachments=[])
                return Outcome.CANCELLED
            case WorkerError(code=ErrorCode.BUSY):
                log.info("job %s: the worker is busy (%s); back in the queue", job.id, error)
                await self.store.release(job.id)
                await self.positions.refresh()
                return Outcome.BUSY
            case WorkerError():
                metrics.job_failed(job, error.code.value)
                await self.fail(job, worker_error_message(error.code, str(error)))
            case WorkerUnavailable() if job.attempts < self.max_attempts:
                log.warning("job %s: %s; retrying", job.id, error)
                await self.store.requeue(job.id, error=str(error))
                await self.positions.refresh()
                return Outcome.RETRY
            case WorkerUnavailable():
                metrics.job_failed(job, "worker_crashed")
                await self.fail(job, worker_crashed_message(job.kind, job.attempts))
            case ResultNotHere():
                log.warning("job %s: %s; rendering it again", job.id, error)
                await self.store.requeue(job.id, error=str(error))
                await self.positions.refresh()
                return Outcome.RETRY
            case JobFailed():
                metrics.job_failed(job, "job_failed")
                await self.fail(job, str(error))
            case _:
                metrics.job_failed(job, "bot_error")
                log.error("job %s failed in its lane", job.id, exc_info=error)
                await self.fail(job, BOT_ERROR_MESSAGE)
                await self._drop_request(job)
        return Outcome.FAILED

    async def fail(self, job: Job, reason: str) -> None:
        await self.store.finish(job.id, JobStatus.FAILED, error=str(reason))  # English; the post is localised
        await self.messages.post_final(job, render.failed_text(job, reason), embed=None, view=None)

    async def cancelled_while_queued(self, job: Job) -> None:
        await self.status.settle(job.id)
        await self.messages.edit_status(job, render.cancelled_text(job), view=None)
        await self.positions.refresh()

    async def _drop_request(self, job: Job) -> None:
        """The worker may still be working for a job the bot gave up on: free it for the next one."""
        try:
            await self.worker.cancel(request_id(job))
        except WorkerUnavailable:
            pass  # no worker, nothing to free
