"""Async client of the GPU worker protocol (zimage_protocol).

One connection, kept open and re-opened whenever the worker restarts. A reader task routes
every message to the request that its ``id`` names; when the connection drops, every request
in flight fails with ``WorkerUnavailable`` so the job runner can retry it. A malformed frame
is logged and skipped: one bad frame never ends the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from zimage_protocol.errors import ErrorCode, ProtocolError
from zimage_protocol.frames import PROTOCOL_VERSION, FrameTooLarge, read_frame
from zimage_protocol.messages import (
    Cancel,
    CountTokens,
    Done,
    Error,
    GenerateParams,
    Health,
    HealthReport,
    Hello,
    ImagineRequest,
    Message,
    TokenCount,
    TrainParams,
    TrainRequest,
    decode,
    hello_mismatch,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0


class WorkerUnavailable(Exception):
    """The worker is not connected, or the connection broke while a request was in flight."""


class WorkerError(Exception):
    """The worker answered a request with an Error message."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


class _ConnectionLost:
    """Put in every pending queue when the connection drops."""


_CONNECTION_LOST = _ConnectionLost()


class WorkerClient:
    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.hello: Hello | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Queue[Message | _ConnectionLost]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task | None = None
        self._last_refusal: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def model_name(self) -> str:
        return self.hello.model if self.hello else ""

    @property
    def device(self) -> str:
        return self.hello.device if self.hello else ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain_connection(), name="worker-client")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer:
            self._writer.close()

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise WorkerUnavailable("the GPU worker is not running") from None

    async def _maintain_connection(self) -> None:
        delay = 0.1
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError as exc:
                log.debug("worker not reachable yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                hello = await self._exchange_hello(reader, writer)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                self._refused(str(exc))
                writer.close()
                await asyncio.sleep(max(delay, 2.0))
                continue
            delay = 0.1
            self.hello, self._writer, self._last_refusal = hello, writer, None
            self._connected.set()
            log.info("connected to GPU worker pid %s (%s on %s)", hello.pid, hello.model, hello.device)
            try:
                await self._route_replies(reader)
            except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
                log.warning("lost the GPU worker connection: %r", exc)
            finally:
                self._connected.clear()
                self._writer = None
                writer.close()
                for queue in self._pending.values():
                    queue.put_nowait(_CONNECTION_LOST)

    @staticmethod
    async def _exchange_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Hello:
        """Both sides say their protocol version first; a mismatch is refused here and by the worker."""
        hello = decode(await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT))
        if not isinstance(hello, Hello):
            raise ProtocolError(f"the worker's first message was {hello.op.value!r}, not hello")
        mismatch = hello_mismatch(hello.version)
        if mismatch:
            raise ProtocolError(mismatch)
        writer.write(Hello(version=PROTOCOL_VERSION).encode())
        await writer.drain()
        return hello

    def _refused(self, reason: str) -> None:
        """A worker that answers but cannot be used: said once at ERROR, not every retry."""
        if reason != self._last_refusal:
            log.error("cannot use the GPU worker at %s: %s", self.socket_path, reason)
            self._last_refusal = reason

    async def _route_replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                message = decode(await read_frame(reader))
            except FrameTooLarge:
                raise  # the stream is out of step after it: reconnect
            except ProtocolError as exc:
                log.warning("skipped a malformed message from the GPU worker: %s", exc)
                continue
            request_id = getattr(message, "id", None)
            queue = self._pending.get(str(request_id)) if request_id is not None else None
            if queue is not None:
                queue.put_nowait(message)
            elif isinstance(message, Error):
                log.warning("the GPU worker reported %s: %s", message.code.value, message.message)

    async def _send(self, message: Message) -> None:
        if self._writer is None:
            raise WorkerUnavailable("the GPU worker is not running")
        try:
            self._writer.write(message.encode())
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            raise WorkerUnavailable(f"could not reach the GPU worker: {exc}") from exc

    def new_id(self) -> str:
        return f"r{next(self._ids)}"

    async def _stream(self, request: Message, request_id: str) -> AsyncIterator[Message]:
        """Send a request and yield its replies until Done; raises WorkerError on an Error reply."""
        queue: asyncio.Queue[Message | _ConnectionLost] = asyncio.Queue()
        self._pending[request_id] = queue
        try:
            await self._send(request)
            while True:
                message = await queue.get()
                if isinstance(message, _ConnectionLost):
                    raise WorkerUnavailable("the GPU worker stopped while working on this request")
                if isinstance(message, Error):
                    raise WorkerError(message.code, message.message)
                yield message
                if isinstance(message, Done):
                    return
        finally:
            self._pending.pop(request_id, None)

    async def _ask(self, request: Message, request_id: str, timeout: float) -> Message:
        async def first() -> Message:
            async for message in self._stream(request, request_id):
                return message
            raise WorkerUnavailable("no answer")

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            raise WorkerUnavailable(f"the GPU worker did not answer {request.op.value!r} in {timeout:.0f} s") from None

    async def health(self, timeout: float = 5.0) -> HealthReport:
        request_id = self.new_id()
        report = await self._ask(Health(id=request_id), request_id, timeout)
        if not isinstance(report, HealthReport):
            raise ProtocolError(f"health answered with {report.op.value!r}")
        return report

    async def count_tokens(self, prompt: str, timeout: float = 5.0) -> tuple[int, int]:
        request_id = self.new_id()
        answer = await self._ask(CountTokens(id=request_id, prompt=prompt), request_id, timeout)
        if not isinstance(answer, TokenCount):
            raise ProtocolError(f"count_tokens answered with {answer.op.value!r}")
        return answer.count, answer.limit

    def generate(self, request_id: str, params: GenerateParams) -> AsyncIterator[Message]:
        """Accepted / Progress / ImageReady messages, ending with Done; raises WorkerError on an error."""
        return self._stream(ImagineRequest(id=request_id, params=params), request_id)

    def train(self, request_id: str, params: TrainParams) -> AsyncIterator[Message]:
        """Accepted / TrainProgress / CheckpointReady messages, ending with Done; raises WorkerError on an error."""
        return self._stream(TrainRequest(id=request_id, params=params), request_id)

    async def cancel(self, request_id: str) -> None:
        await self._send(Cancel(id=request_id))
