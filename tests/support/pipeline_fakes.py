"""Fakes for the pipelined generation lane's unit tests (tests/unit/bot/test_pipeline_unit.py).

FakeGpuWorker behaves like gpu/scheduler.py behind gpu/server.py, as the bot's WorkerLink sees it: a
request is sent when its stream is first read; requests wait for the one GPU in the order they came
(a FIFO lock); a cancel is a flag read before the request starts and between steps; a crash fails
every open stream with WorkerUnavailable. It records when each request was sent, started and finished.
RecordingMessages is the JobMessages interface with optional delays, recording every call in order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bot.worker.client import WorkerError, WorkerUnavailable
from zimage_protocol.errors import ErrorCode
from zimage_protocol.messages import Accepted, Done, ImageReady, Progress


@dataclass
class Request:
    id: str
    sent: float
    started: float | None = None
    finished: float | None = None
    outcome: str = "waiting"  # waiting, running, done, cancelled, lost


class FakeGpuWorker:
    model_name = "fake-model"

    def __init__(self, seconds: float = 0.1, steps: int = 4, preview_every: int = 0):
        self.seconds = seconds  # GPU time per request
        self.steps = steps
        self.preview_every = preview_every  # a Progress with a preview after every so many steps (0: none)
        self.requests: dict[str, Request] = {}  # the latest request of each id
        self.history: list[Request] = []  # every request, in the order sent
        self.flags: set[str] = set()
        self.cancels: list[str] = []
        self._up = asyncio.Event()
        self._up.set()
        self._gpu = asyncio.Lock()
        self._open: dict[str, asyncio.Queue] = {}
        self._work: set[asyncio.Task] = set()
        self.loras_given: set[str] = set()  # the LoRA names of every request sent (a real worker keeps them cached)

    # -- WorkerLink ------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def holds_loras(self, names) -> bool:
        return all(name in self.loras_given for name in names)

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            raise WorkerUnavailable("the fake worker is down") from None

    def generate(self, request_id: str, params):
        return self._stream(request_id, params)

    def train(self, request_id: str, params):
        raise AssertionError("no training here")

    async def cancel(self, request_id: str) -> None:
        self.cancels.append(request_id)
        self.flags.add(request_id)

    # -- what a test does to it ------------------------------------------------------------------------
    def crash(self) -> None:
        """The worker process died: every open stream ends with WorkerUnavailable; it stays down until restart()."""
        self._up.clear()
        for task in self._work:
            task.cancel()
        for replies in self._open.values():
            replies.put_nowait(WorkerUnavailable("the GPU worker stopped while working on this request"))
        self._open.clear()
        for request in self.history:
            if request.outcome in ("waiting", "running"):
                request.outcome, request.finished = "lost", time.monotonic()
        self._gpu = asyncio.Lock()

    def restart(self) -> None:
        self._up.set()

    def on_gpu_at_once(self) -> int:
        """The most requests sent and not finished at one moment (the GPU's queue plus the one running)."""
        events = sorted([(r.sent, 1) for r in self.history]
                        + [(r.finished or r.started or r.sent, -1) for r in self.history
                           if r.outcome in ("done", "cancelled", "lost")])
        most = now = 0
        for _, delta in events:
            now += delta
            most = max(most, now)
        return most

    def gaps(self) -> list[float]:
        """Idle GPU time between one finished request and the next start (requests done, in start order)."""
        ran = sorted((r for r in self.history if r.outcome == "done"), key=lambda r: r.started or 0)
        return [later.started - earlier.finished for earlier, later in zip(ran, ran[1:], strict=False)
                if later.started is not None and earlier.finished is not None]

    # -- inside --------------------------------------------------------------------------------------------
    async def _stream(self, request_id: str, params):
        if not self._up.is_set():
            raise WorkerUnavailable("the GPU worker is not running")
        self.loras_given.update(lora.name for lora in params.loras)
        replies: asyncio.Queue = asyncio.Queue()
        self._open[request_id] = replies
        self.requests[request_id] = request = Request(request_id, time.monotonic())
        self.history.append(request)
        task = asyncio.create_task(self._run(request_id, params, replies))
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        try:
            while True:
                message = await replies.get()
                if isinstance(message, Exception):
                    raise message
                yield message
                if isinstance(message, Done):
                    return
        finally:
            self._open.pop(request_id, None)

    async def _run(self, request_id: str, params, replies: asyncio.Queue) -> None:
        request = self.requests[request_id]
        replies.put_nowait(Accepted(id=request_id))
        async with self._gpu:
            if request_id in self.flags:
                request.outcome, request.finished = "cancelled", time.monotonic()
                replies.put_nowait(WorkerError(ErrorCode.CANCELLED, "cancelled"))
                return
            if not self._up.is_set():
                return
            request.started, request.outcome = time.monotonic(), "running"
            total = self.steps * len(params.seeds)
            for step in range(1, total + 1):
                await asyncio.sleep(self.seconds / total)
                if request_id in self.flags:
                    request.outcome, request.finished = "cancelled", time.monotonic()
                    replies.put_nowait(WorkerError(ErrorCode.CANCELLED, "cancelled"))
                    return
                replies.put_nowait(Progress(id=request_id, step=step, total=total))
                if self.preview_every and step % self.preview_every == 0 and step < total:
                    replies.put_nowait(Progress(id=request_id, step=step, total=total, preview=fake_preview(step)))
            for index, seed in enumerate(params.seeds):
                replies.put_nowait(ImageReady(id=request_id, index=index, seed=seed, png=b"\x89PNG fake " + bytes([index])))
            request.outcome, request.finished = "done", time.monotonic()
            replies.put_nowait(Done(id=request_id, seconds=self.seconds))


def fake_preview(step: int) -> bytes:
    return b"\xff\xd8 fake preview of step " + str(step).encode()


@dataclass
class Call:
    what: str  # "status", "final", "extra"
    job_id: int
    content: str
    at: float
    ended: float = 0.0
    files: list[tuple[str, bytes]] | None = None  # what the call set as the message's attachments; None: unchanged


@dataclass
class RecordingMessages:
    """JobMessages: every call, in the order made; each status edit or final post takes `*_delay` seconds."""

    status_delay: float = 0.0
    final_delay: float = 0.0
    calls: list[Call] = field(default_factory=list)

    async def edit_status(self, job, content: str, make_files=None, **fields) -> bool:
        files = _made(make_files) if make_files else fields.get("attachments")
        return await self._record("status", job, content, self.status_delay, files)

    async def post_final(self, job, content: str, make_files=None, **fields) -> bool:
        return await self._record("final", job, content, self.final_delay, _made(make_files) if make_files else [])

    async def post_extra(self, job, content: str, make_files) -> bool:
        return await self._record("extra", job, content, 0.0)

    async def post_ephemeral(self, job, content: str) -> bool:
        return await self._record("ephemeral", job, content, 0.0)

    async def _record(self, what: str, job, content: str, delay: float, files=None) -> bool:
        call = Call(what, job.id, content, time.monotonic(), files=files)
        self.calls.append(call)
        await asyncio.sleep(delay)
        call.ended = time.monotonic()
        return True

    def of(self, job_id: int, what: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.job_id == job_id and (what is None or c.what == what)]


def _made(make_files) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of the discord.File objects a FileMaker makes."""
    return [(file.filename, file.fp.read()) for file in make_files()]
