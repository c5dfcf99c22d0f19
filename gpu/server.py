"""The worker's transport: listen (unix socket, or TCP with TLS), authenticate clients, dispatch, reply.

A client is let in only after its Hello: the same protocol version and, over TCP, after a TLS
handshake, the worker's ``WORKER_TOKEN`` (compared in constant time). Until then it may send only
a small frame, within a deadline, and only a few strangers are handled at once. Each request then
runs as its own task (gpu/connection.py). What runs on the GPU, and when, is gpu/scheduler.py's;
this module only turns requests into its calls and their outcomes into replies. :func:`error_reply`
is the one place an exception becomes an Error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from zimage_protocol.constants import MAX_SEQUENCE_LENGTH
from zimage_protocol.endpoints import Endpoint, TcpEndpoint, UnixEndpoint
from zimage_protocol.errors import ErrorCode, ProtocolError, UserError
from zimage_protocol.frames import PRE_AUTH_HEADER_BYTES, PROTOCOL_VERSION, read_frame
from zimage_protocol.messages import (
    Accepted,
    Cancel,
    CountTokens,
    Done,
    Error,
    Health,
    HealthReport,
    Hello,
    ImageReady,
    ImagineRequest,
    Message,
    Progress,
    TokenCount,
    TrainRequest,
    Welcome,
    decode,
    hello_mismatch,
)
from zimage_protocol.security import TLS_HANDSHAKE_TIMEOUT, WireSecurity, enable_keepalive

from .connection import ClientConnection
from .file_cache import FileCache
from .remote_files import checkpoint_sender, localize_generate, localize_train
from .scheduler import GpuScheduler

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # a client says its protocol version (and token) first
MAX_STRANGERS = 16  # connections not yet through TLS and Hello, at once; more are closed at once

Send = Callable[[Message], Awaitable[None]]


class WorkerServer:
    def __init__(self, scheduler: GpuScheduler, endpoint: Endpoint | Path, security: WireSecurity | None = None,
                 data_dir: Path | None = None):
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.endpoint = UnixEndpoint(endpoint) if isinstance(endpoint, Path) else endpoint
        self.security = security or WireSecurity()
        self._data_dir = data_dir
        self._files: FileCache | None = None
        self._strangers = asyncio.Semaphore(MAX_STRANGERS)
        self._tls: ssl.SSLContext | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def data_dir(self) -> Path:
        return self._data_dir or Path(self.engine.data_dir)

    @property
    def files(self) -> FileCache:
        """DATA_DIR/cache/files: what remote bots sent this worker, by sha256."""
        if self._files is None:
            self._files = FileCache(self.data_dir / "cache" / "files")
        return self._files

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def listen(self) -> None:
        """Bind. Health and token counts work from here on; generate waits for the model."""
        if isinstance(self.endpoint, TcpEndpoint):
            self.security.require_server_tls()  # SettingsError: no TCP without TLS and a token
            self._tls = self.security.server_context()
            self._server = await asyncio.start_server(self._accept, self.endpoint.host, self.endpoint.port)
            port = self._server.sockets[0].getsockname()[1]
            log.info("worker listening on tcp://%s:%s (TLS, token required)", self.endpoint.host, port)
            return
        path = str(self.endpoint.path)
        if len(path.encode()) > 100:
            raise SystemExit(f"socket path too long for a unix socket: {path}")
        self.endpoint.path.unlink(missing_ok=True)
        # Owner-only from the first moment: the umask applies to bind(), chmod makes it explicit.
        old_umask = os.umask(0o077)
        try:
            server = await asyncio.start_unix_server(self._accept, path=path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._server = server
        log.info("worker listening on %s", path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tcp = isinstance(self.endpoint, TcpEndpoint)
        peer = _peer_name(writer) if tcp else "unix socket"
        if self._strangers.locked():
            log.warning("refusing a client from %s: %d connections are already authenticating", peer, MAX_STRANGERS)
            writer.transport.abort()
            return
        async with self._strangers:
            connection = await self._authenticate(reader, writer, peer, tcp)
        if connection is None:
            writer.transport.abort()
            return
        await connection.serve(self._handle)

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                            tcp: bool) -> ClientConnection | None:
        """TLS (over TCP), then Hello: version, and the token over TCP. Refusals are logged and said to the client."""
        if tcp:
            enable_keepalive(writer.get_extra_info("socket"), self.security.heartbeat_timeout)
            assert self._tls is not None
            try:
                await writer.start_tls(self._tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
                log.warning("refusing a client from %s: no TLS handshake (%s); a client must speak TLS and trust "
                            "this worker's certificate", peer, str(exc) or type(exc).__name__)
                return None
        connection = ClientConnection(reader, writer, peer, self.security.heartbeat_timeout)
        try:
            await connection.send(Hello(version=PROTOCOL_VERSION, model=self.engine.model_name,
                                        device=self.engine.device, pid=os.getpid(), ready=self.scheduler.ready))
            refusal = await self._hello_refusal(reader, tcp)
            if refusal is not None:
                code, reason = refusal
                log.error("refusing a client from %s: %s", peer, reason)
                await asyncio.wait_for(connection.send(Error(id=None, code=code, message=reason)), HELLO_TIMEOUT)
                return None
            await connection.send(Welcome())
        except (OSError, TimeoutError, asyncio.IncompleteReadError):  # it hung up, or went silent, mid-handshake
            log.info("a client from %s left during the handshake", peer)
            return None
        log.info("client from %s connected", peer)
        return connection

    async def _hello_refusal(self, reader: asyncio.StreamReader, tcp: bool) -> tuple[ErrorCode, str] | None:
        """Why the client's Hello is refused, or None. Only a small frame is read from a client not yet known."""
        try:
            hello = decode(await asyncio.wait_for(read_frame(reader, max_header=PRE_AUTH_HEADER_BYTES, max_blob=0),
                                                  HELLO_TIMEOUT))
        except (TimeoutError, ProtocolError):  # silence: a v1 client, which never said hello
            hello = None
        version = hello.version if isinstance(hello, Hello) else "1 or unknown"
        mismatch = hello_mismatch(version)
        if mismatch is not None:
            return ErrorCode.VERSION_MISMATCH, mismatch
        assert isinstance(hello, Hello)
        if tcp and not self.security.token_matches(hello.token):
            return ErrorCode.UNAUTHORIZED, "wrong WORKER_TOKEN: the bot's token is not this worker's"
        return None

    async def _handle(self, message: Message, connection: ClientConnection) -> None:
        send = connection.send
        match message:
            case Health(id=request_id):
                await send(HealthReport(id=request_id, ready=self.scheduler.ready, busy=self.scheduler.busy,
                                        model=self.engine.model_name, device=self.engine.device, pid=os.getpid(),
                                        **self.scheduler.gpu_stats()._asdict()))
            case CountTokens(id=request_id, prompt=prompt):
                await send(TokenCount(id=request_id, count=self.engine.count_tokens(prompt), limit=MAX_SEQUENCE_LENGTH))
            case Cancel(id=request_id):
                self.scheduler.cancel(request_id)
            case ImagineRequest():
                await self._generate(message, connection)
            case TrainRequest(id=request_id):
                await self._until_done(request_id, self._train(message, connection), send)
            case _:
                await send(Error(id=getattr(message, "id", None), code=ErrorCode.BAD_REQUEST,
                                 message=f"a worker does not take {message.op.value!r}"))

    async def _train(self, request: TrainRequest, connection: ClientConnection) -> float:
        """A remote bot's training set is fetched first; its checkpoints go back as bytes (gpu/remote_files.py)."""
        params = await localize_train(request.params, self.data_dir, self.files, connection.fetch)
        # The scheduler says Accepted itself: only once the run holds the trainer (else: busy).
        return await self.scheduler.train(request.id, params, checkpoint_sender(params, connection.send))

    async def _generate(self, request: ImagineRequest, connection: ClientConnection) -> None:
        request_id, params, send = request.id, request.params, connection.send
        if self.engine.count_tokens(params.prompt) > MAX_SEQUENCE_LENGTH:
            await send(Error(id=request_id, code=ErrorCode.PROMPT_TOO_LONG,
                             message=f"the prompt is longer than {MAX_SEQUENCE_LENGTH} tokens"))
            return
        await send(Accepted(id=request_id))

        async def on_step(step: int, total: int) -> None:
            await send(Progress(id=request_id, step=step, total=total))

        async def on_image(index: int, seed: int, png: bytes, prompt: str) -> None:
            await send(ImageReady(id=request_id, index=index, seed=seed, png=png, prompt=prompt))

        async def on_preview(step: int, total: int, jpeg: bytes) -> None:
            # Its own Progress, after the step's plain one (the JPEG is made off the GPU thread meanwhile).
            await send(Progress(id=request_id, step=step, total=total, preview=jpeg))

        async def work() -> float:
            local = await localize_generate(params, self.files, connection.fetch)  # a remote bot's LoRAs, by hash
            return await self.scheduler.generate(request_id, local, on_step, on_image, on_preview)

        await self._until_done(request_id, work(), send)

    @staticmethod
    async def _until_done(request_id: str, work: Awaitable[float], send: Send) -> None:
        """Done with the seconds `work` reports, or the Error its exception maps to."""
        try:
            seconds = await work
        except Exception as exc:  # noqa: BLE001 - every failure must reach the bot as a reply
            await send(error_reply(request_id, exc))
            return
        await send(Done(id=request_id, seconds=round(seconds, 3)))


def error_reply(request_id: str, exc: BaseException) -> Error:
    """Map an exception to an Error reply by its type: the one place the worker does so.

    A UserError's message is meant for users and goes as it is; anything else is internal (or out of
    memory) and only its type and message travel, for the bot's log."""
    if isinstance(exc, UserError):
        return Error(id=request_id, code=exc.code, message=str(exc)[:500])
    if _is_out_of_memory(exc):
        return Error(id=request_id, code=ErrorCode.OUT_OF_MEMORY, message=str(exc)[:500])
    log.error("request %s failed", request_id, exc_info=exc)
    return Error(id=request_id, code=ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"[:500])


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch  # already loaded in a worker; not imported by the protocol tests

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def socket_is_live(path: Path) -> bool:
    """True when something already answers on the socket (a second worker must not steal it)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
