"""The worker's socket transport: accept clients, check their protocol version, decode, dispatch, reply.

Each request runs as its own task, so a cancel or a health check is read while a generation runs.
What runs on the GPU, and when, is gpu/scheduler.py's; this module only turns requests into its calls
and their outcomes into replies. :func:`error_reply` is the one place an exception becomes an Error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from zimage_protocol.constants import MAX_SEQUENCE_LENGTH
from zimage_protocol.errors import ErrorCode, ProtocolError, UserError
from zimage_protocol.frames import PROTOCOL_VERSION, FrameTooLarge, read_frame
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
    decode,
    hello_mismatch,
)

from .scheduler import GpuScheduler

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # a client says its protocol version first

Send = Callable[[Message], Awaitable[None]]


class WorkerServer:
    def __init__(self, scheduler: GpuScheduler, socket_path: Path):
        self.scheduler = scheduler
        self.engine = scheduler.engine
        self.socket_path = socket_path
        self._server: asyncio.AbstractServer | None = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def listen(self) -> None:
        """Bind the socket. Health and token counts work from here on; generate waits for the model."""
        path = str(self.socket_path)
        if len(path.encode()) > 100:
            raise SystemExit(f"socket path too long for a unix socket: {path}")
        self.socket_path.unlink(missing_ok=True)
        # Owner-only from the first moment: the umask applies to bind(), chmod makes it explicit.
        old_umask = os.umask(0o077)
        try:
            server = await asyncio.start_unix_server(self._serve_client, path=path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._server = server
        log.info("worker listening on %s", path)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send_lock = asyncio.Lock()

        async def send(message: Message) -> None:
            async with send_lock:
                writer.write(message.encode())
                await writer.drain()

        tasks: set[asyncio.Task[None]] = set()
        try:
            await send(Hello(version=PROTOCOL_VERSION, model=self.engine.model_name, device=self.engine.device,
                             pid=os.getpid(), ready=self.scheduler.ready))
            if not await self._accept_hello(reader, send):
                return
            while True:
                try:
                    frame = await read_frame(reader)
                except FrameTooLarge:
                    raise  # its body was not read: the stream is out of step, the connection ends
                except ProtocolError as exc:  # a header that is not JSON: refused, the next frame is read
                    await send(Error(id=None, code=ErrorCode.BAD_REQUEST, message=str(exc)[:500]))
                    continue
                try:
                    message = decode(frame)
                except ProtocolError as exc:  # one bad request is refused; the connection goes on
                    await send(Error(id=frame.id, code=ErrorCode.BAD_REQUEST, message=str(exc)[:500]))
                    continue
                # Each request runs as its own task so a cancel is read while a generate runs.
                task = asyncio.create_task(self._handle(message, send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("dropping client: %s", exc)
        finally:
            # The bot went away: cancel whatever it asked for, nobody will read the result.
            for task in tasks:
                task.cancel()
            writer.close()

    @staticmethod
    async def _accept_hello(reader: asyncio.StreamReader, send: Send) -> bool:
        """The client's first frame is its Hello; another version is refused with a message both sides log."""
        try:
            hello = decode(await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT))
        except (TimeoutError, ProtocolError):
            hello = None
        version = hello.version if isinstance(hello, Hello) else "1 or unknown"
        mismatch = hello_mismatch(version)
        if mismatch is None:
            return True
        log.error("refusing a client: %s", mismatch)
        await send(Error(id=None, code=ErrorCode.VERSION_MISMATCH, message=mismatch))
        return False

    async def _handle(self, message: Message, send: Send) -> None:
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
                await self._generate(message, send)
            case TrainRequest(id=request_id, params=params):
                # The scheduler says Accepted itself: only once the run holds the trainer (else: busy).
                await self._until_done(request_id, self.scheduler.train(request_id, params, send), send)
            case _:
                await send(Error(id=getattr(message, "id", None), code=ErrorCode.BAD_REQUEST,
                                 message=f"a worker does not take {message.op.value!r}"))

    async def _generate(self, request: ImagineRequest, send: Send) -> None:
        request_id, params = request.id, request.params
        if self.engine.count_tokens(params.prompt) > MAX_SEQUENCE_LENGTH:
            await send(Error(id=request_id, code=ErrorCode.PROMPT_TOO_LONG,
                             message=f"the prompt is longer than {MAX_SEQUENCE_LENGTH} tokens"))
            return
        await send(Accepted(id=request_id))

        async def on_step(step: int, total: int) -> None:
            await send(Progress(id=request_id, step=step, total=total))

        async def on_image(index: int, seed: int, png: bytes) -> None:
            await send(ImageReady(id=request_id, index=index, seed=seed, png=png))

        await self._until_done(request_id, self.scheduler.generate(request_id, params, on_step, on_image), send)

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
