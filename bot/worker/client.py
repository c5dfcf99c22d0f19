"""Async client of the GPU worker protocol (zimage_protocol), over a unix socket or TCP with TLS.

One connection, kept open and re-opened (with back-off) whenever the worker restarts or the link
drops. A reader task routes every message to the request that its ``id`` names; when the
connection drops, every request in flight fails with ``WorkerUnavailable`` so the job runner can
retry it. The client pings every quarter of ``WORKER_HEARTBEAT_TIMEOUT`` and gives the connection
up when the worker is silent that long: a silent network drop is noticed in seconds. A malformed
frame is logged and skipped: one bad frame never ends the connection.

To a worker on another host (a ``tcp://`` endpoint) files go by content (bot/worker/files.py):
LoRAs and training sets are named by sha256 and fetched by the worker, checkpoints come back as bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from zimage_protocol.endpoints import Endpoint, TcpEndpoint, UnixEndpoint
from zimage_protocol.errors import ErrorCode, ProtocolError
from zimage_protocol.frames import PROTOCOL_VERSION, FrameTooLarge, read_frame
from zimage_protocol.messages import (
    Cancel,
    CheckpointReady,
    CountTokens,
    Done,
    Error,
    FetchFile,
    FileChunk,
    GenerateParams,
    Health,
    HealthReport,
    Hello,
    ImageReady,
    ImagineRequest,
    Message,
    Ping,
    Pong,
    TokenCount,
    TrainParams,
    TrainRequest,
    Welcome,
    decode,
    hello_mismatch,
)
from zimage_protocol.security import TLS_HANDSHAKE_TIMEOUT, WireSecurity, enable_keepalive

from .files import CheckpointReceiver, FileOffers
from .stats import WorkerStats

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
MAX_RECONNECT_DELAY = 5.0
REFUSED_RETRY_DELAY = 10.0  # a worker that refused us (token, version, certificate) is asked again this late


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
    def __init__(self, endpoint: Endpoint | Path, security: WireSecurity | None = None):
        self.endpoint = UnixEndpoint(endpoint) if isinstance(endpoint, Path) else endpoint
        self.security = security or WireSecurity()
        self.hello: Hello | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Queue[Message | _ConnectionLost]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task | None = None
        self._last_refusal: str | None = None
        self._offers = FileOffers()
        self._helpers: set[asyncio.Task] = set()
        self.stats = WorkerStats()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_refusal(self) -> str | None:
        """Why the worker answered but could not be used (token, version, certificate), if it did."""
        return self._last_refusal

    def holds_loras(self, names: Iterable[str]) -> bool:
        """Whether this worker was lately given all these LoRAs (so it likely has them in memory)."""
        return self.stats.holds_loras(names)

    def has_request(self, request_id: str) -> bool:
        """Whether a request of that id is in flight on this worker (the pool sends a cancel where it is)."""
        return request_id in self._pending

    @property
    def model_name(self) -> str:
        return self.hello.model if self.hello else ""

    @property
    def device(self) -> str:
        return self.hello.device if self.hello else ""

    @property
    def sends_files(self) -> bool:
        """Files go by content to a worker that may be on another host (tcp://), by path over a unix socket."""
        return self.endpoint.remote

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain_connection(), name=f"worker-client {self.endpoint}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer:
            self._writer.transport.abort()

    async def wait_connected(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            if self._last_refusal:
                raise WorkerUnavailable(f"the GPU worker at {self.endpoint} refused the connection: "
                                        f"{self._last_refusal}") from None
            raise WorkerUnavailable("the GPU worker is not running") from None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.endpoint, UnixEndpoint):
            return await asyncio.open_unix_connection(str(self.endpoint.path))
        context = self.security.client_context()  # certificate and hostname checked
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=context,
                                    server_hostname=self.endpoint.host, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT),
            TLS_HANDSHAKE_TIMEOUT + 5)
        enable_keepalive(writer.get_extra_info("socket"), self.security.heartbeat_timeout)
        return reader, writer

    async def _maintain_connection(self) -> None:
        delay = 0.1
        while True:
            try:
                reader, writer = await self._open()
            except ssl.SSLCertVerificationError as exc:
                self._refused(f"its TLS certificate is not trusted ({exc.verify_message}); set WORKER_TLS_CA to the "
                              f"CA that signed it, and connect by the name the certificate carries")
                await asyncio.sleep(REFUSED_RETRY_DELAY)
                continue
            except (OSError, TimeoutError) as exc:
                log.debug("worker %s not reachable yet: %s", self.endpoint, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY if isinstance(self.endpoint, TcpEndpoint) else 2.0)
                continue
            try:
                hello = await self._exchange_hello(reader, writer)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                reason = ("it closed the connection during the handshake" if isinstance(exc, asyncio.IncompleteReadError)
                          else str(exc) or type(exc).__name__)
                self._refused(reason)
                writer.transport.abort()
                await asyncio.sleep(REFUSED_RETRY_DELAY)
                continue
            delay = 0.1
            self.hello, self._writer, self._last_refusal = hello, writer, None
            self._connected.set()
            log.info("connected to GPU worker pid %s at %s (%s on %s)", hello.pid, self.endpoint, hello.model, hello.device)
            pinger = asyncio.create_task(self._ping(writer), name="worker-ping")
            try:
                await self._route_replies(reader)
            except TimeoutError:
                log.warning("the GPU worker at %s was silent for %.0f s: the link is gone, reconnecting",
                            self.endpoint, self.security.heartbeat_timeout)
            except (OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
                log.warning("lost the GPU worker connection: %r", exc)
            finally:
                pinger.cancel()
                self._connected.clear()
                self._writer = None
                writer.transport.abort()  # not close(): a dead link would hold close() on unsent bytes
                for queue in self._pending.values():
                    queue.put_nowait(_CONNECTION_LOST)

    async def _exchange_hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Hello:
        """Both sides say their protocol version first (a mismatch is refused by both); the worker answers
        Welcome, or an Error that says why it refuses us (another version, a wrong token)."""
        hello = decode(await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT))
        if not isinstance(hello, Hello):
            raise ProtocolError(f"the worker's first message was {hello.op.value!r}, not hello")
        mismatch = hello_mismatch(hello.version)
        if mismatch:
            raise ProtocolError(mismatch)
        token = self.security.token if isinstance(self.endpoint, TcpEndpoint) else ""
        writer.write(Hello(version=PROTOCOL_VERSION, token=token).encode())
        await writer.drain()
        answer = decode(await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT))
        if isinstance(answer, Error):
            raise ProtocolError(f"the worker refused us: {answer.message}")
        if not isinstance(answer, Welcome):
            raise ProtocolError(f"the worker answered our hello with {answer.op.value!r}")
        return hello

    def _refused(self, reason: str) -> None:
        """A worker that answers but cannot be used: said once at ERROR, not every retry."""
        if reason != self._last_refusal:
            log.error("cannot use the GPU worker at %s: %s", self.endpoint, reason)
            self._last_refusal = reason

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        """No drain: on a dead link the reader's deadline ends the connection, not a send."""
        while True:
            await asyncio.sleep(self.security.heartbeat_interval)
            writer.write(Ping().encode())

    async def _route_replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                message = decode(await read_frame(reader, idle_timeout=self.security.heartbeat_timeout))
            except FrameTooLarge:
                raise  # the stream is out of step after it: reconnect
            except ProtocolError as exc:
                log.warning("skipped a malformed message from the GPU worker: %s", exc)
                continue
            if isinstance(message, Pong):
                continue
            if isinstance(message, FetchFile):  # a remote worker wants a file a request of ours named
                task = asyncio.create_task(self._serve_file(message))
                self._helpers.add(task)
                task.add_done_callback(self._helpers.discard)
                continue
            request_id = getattr(message, "id", None)
            queue = self._pending.get(str(request_id)) if request_id is not None else None
            if queue is not None:
                queue.put_nowait(message)
            elif isinstance(message, Error):
                log.warning("the GPU worker reported %s: %s", message.code.value, message.message)

    async def _serve_file(self, request: FetchFile) -> None:
        try:
            await self._offers.serve(request, self._send)
        except WorkerUnavailable as exc:  # the connection went while sending: the worker's request fails there
            log.info("stopped sending a file to the GPU worker: %s", exc)

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

    async def generate(self, request_id: str, params: GenerateParams) -> AsyncIterator[Message]:
        """Accepted / Progress / ImageReady messages, ending with Done; raises WorkerError on an error."""
        if self.sends_files and params.loras:
            try:
                params = dataclasses.replace(params, loras=[await self._offers.lora(lora) for lora in params.loras])
            except OSError as exc:
                raise WorkerError(ErrorCode.LORA, f"a LoRA file is missing on the bot: {exc.strerror}") from None
        if self.sends_files and params.source is not None:
            try:
                params = await self._offers.source(params)
            except OSError as exc:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"the source picture is missing on the bot: {exc.strerror}") from None
        self.stats.loras_sent(lora.name for lora in params.loras)
        async for message in self._stream(ImagineRequest(id=request_id, params=params), request_id):
            if isinstance(message, ImageReady):
                self.stats.image_made()
            yield message

    async def train(self, request_id: str, params: TrainParams) -> AsyncIterator[Message]:
        """Accepted / TrainProgress / CheckpointReady messages, ending with Done; raises WorkerError on an error.

        A remote worker gets the training set by content and sends each checkpoint's files first: they are
        written into ``output_dir`` here, and the CheckpointReady yielded names those local files."""
        if not self.sends_files:
            async for message in self._stream(TrainRequest(id=request_id, params=params), request_id):
                yield message
            return
        try:
            remote = await self._offers.dataset(params)
        except (OSError, ProtocolError) as exc:
            raise WorkerError(ErrorCode.TRAINING, f"the training set cannot be sent: {exc}") from None
        receiver = CheckpointReceiver(Path(params.output_dir), keep=int(params.config.get("keep_checkpoints", 7)))
        try:
            async for message in self._stream(TrainRequest(id=request_id, params=remote), request_id):
                if isinstance(message, FileChunk):
                    await receiver.add(message)
                    continue
                if isinstance(message, CheckpointReady):
                    yield receiver.localize(message)
                    await receiver.prune()
                    continue
                yield message
        except (ProtocolError, OSError) as exc:
            await asyncio.gather(self.cancel(request_id), return_exceptions=True)  # the worker stops training
            raise WorkerError(ErrorCode.TRAINING, f"a checkpoint could not be received: {exc}") from None
        finally:
            await receiver.close()

    async def cancel(self, request_id: str) -> None:
        await self._send(Cancel(id=request_id))
