"""One authenticated client of the worker: its reader loop, its sends, its heartbeats and its file fetches.

Requests are handed to the server's handler as tasks of their own, so a cancel, a ping or a file
chunk is read while a generation runs. The connection is dead when the client is silent for
``WORKER_HEARTBEAT_TIMEOUT`` (it pings every quarter of that): then, as when it hangs up, every
request it asked for is cancelled and every file fetch in progress fails.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from zimage_protocol.errors import ErrorCode, ProtocolError
from zimage_protocol.frames import FrameTooLarge, read_frame
from zimage_protocol.messages import Error, FetchFile, FileChunk, Message, Ping, Pong, decode

from .file_cache import TransferFailed

log = logging.getLogger(__name__)

FETCH_CHUNK_TIMEOUT = 60.0  # a live bot that sends no next chunk (a chunk it sent was refused as malformed)
FETCH_QUEUE_CHUNKS = 8  # file chunks read ahead of the disk, per fetch: the socket waits beyond that

Handler = Callable[[Message, "ClientConnection"], Awaitable[None]]


class _Lost:
    """Put in every fetch queue when the connection ends."""


_LOST = _Lost()


class ClientConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, idle_timeout: float):
        self.reader, self.writer, self.peer = reader, writer, peer
        self.idle_timeout = idle_timeout
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetches: dict[str, asyncio.Queue[Message | _Lost]] = {}
        self._fetch_ids = itertools.count(1)

    async def send(self, message: Message) -> None:
        async with self._send_lock:
            self.writer.write(message.encode())
            await self.writer.drain()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, handle: Handler) -> None:
        """Read until the client hangs up, goes silent, or breaks the framing; then clean up."""
        try:
            while True:
                try:
                    frame = await read_frame(self.reader, idle_timeout=self.idle_timeout)
                except FrameTooLarge:
                    raise  # its body was not read: the stream is out of step, the connection ends
                except ProtocolError as exc:  # a header that is not JSON: refused, the next frame is read
                    self._spawn(self.send(Error(id=None, code=ErrorCode.BAD_REQUEST, message=str(exc)[:500])))
                    continue
                try:
                    message = decode(frame)
                except ProtocolError as exc:  # one bad request is refused; the connection goes on
                    self._spawn(self.send(Error(id=frame.id, code=ErrorCode.BAD_REQUEST, message=str(exc)[:500])))
                    continue
                await self._dispatch(message, handle)
        except TimeoutError:
            log.warning("client %s was silent for %.0f s: dropping it", self.peer, self.idle_timeout)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except ProtocolError as exc:
            log.warning("dropping client %s: %s", self.peer, exc)
        finally:
            # The client went away: cancel whatever it asked for, nobody will read the result.
            for task in self._tasks:
                task.cancel()
            for queue in self._fetches.values():
                queue.put_nowait(_LOST)
            self.writer.transport.abort()  # not close(): a dead link would hold close() on unsent bytes

    async def _dispatch(self, message: Message, handle: Handler) -> None:
        if isinstance(message, Ping):
            self._spawn(self.send(Pong()))  # a task: the reader goes on timing silence even if the send waits
            return
        request_id = getattr(message, "id", None)
        queue = self._fetches.get(str(request_id)) if isinstance(message, FileChunk | Error) else None
        if queue is not None:
            await queue.put(message)  # bounded: a fast bot waits for the disk here, through TCP
            return
        if isinstance(message, FileChunk | Error):
            log.warning("client %s sent %s for no fetch in progress", self.peer, message.op.value)
            return
        self._spawn(handle(message, self))

    async def fetch(self, sha256: str) -> AsyncGenerator[FileChunk, None]:
        """The file's chunks from the client, in order, ending with the last; TransferFailed if it cannot send it."""
        fetch_id = f"f{next(self._fetch_ids)}"
        queue: asyncio.Queue[Message | _Lost] = asyncio.Queue(FETCH_QUEUE_CHUNKS)
        self._fetches[fetch_id] = queue
        try:
            await self.send(FetchFile(id=fetch_id, sha256=sha256))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), FETCH_CHUNK_TIMEOUT)
                except TimeoutError:
                    raise TransferFailed(f"no part of the file came for {FETCH_CHUNK_TIMEOUT:.0f} s") from None
                if isinstance(message, _Lost):
                    raise TransferFailed("the bot's connection ended")
                if isinstance(message, Error):
                    raise TransferFailed(message.message)
                assert isinstance(message, FileChunk)
                yield message
                if message.last:
                    return
        finally:
            del self._fetches[fetch_id]
            while not queue.empty():  # a reader waiting to put into a full queue goes on
                queue.get_nowait()
