"""Async client of the GPU worker protocol (gpu/protocol.py).

One connection, kept open and re-opened whenever the worker restarts. A reader task routes
every frame to the request that its ``id`` names; when the connection drops, every request
in flight fails with ``WorkerUnavailable`` so the job runner can retry it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from gpu import protocol

log = logging.getLogger(__name__)


class WorkerUnavailable(Exception):
    """The worker is not connected, or the connection broke while a request was in flight."""


class WorkerError(Exception):
    """The worker answered a request with an error frame."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


_CONNECTION_LOST = protocol.Frame(op="__connection_lost__")


class WorkerClient:
    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.hello: dict = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Queue[protocol.Frame]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

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
                hello = await asyncio.wait_for(protocol.read_frame(reader), 10)
                if hello.op != "hello" or hello.header.get("version") != protocol.PROTOCOL_VERSION:
                    raise protocol.ProtocolError(f"worker speaks {hello.header!r}, we speak v{protocol.PROTOCOL_VERSION}")
            except (OSError, TimeoutError, asyncio.IncompleteReadError, protocol.ProtocolError) as exc:
                log.debug("worker not reachable yet: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            self.hello, self._writer = hello.header, writer
            self._connected.set()
            log.info("connected to GPU worker pid %s (%s on %s)", hello.header.get("pid"),
                     hello.header.get("model"), hello.header.get("device"))
            try:
                while True:
                    frame = await protocol.read_frame(reader)
                    queue = self._pending.get(str(frame.id))
                    if queue is not None:
                        queue.put_nowait(frame)
            except (OSError, asyncio.IncompleteReadError, protocol.ProtocolError) as exc:
                log.warning("lost the GPU worker connection: %r", exc)
            finally:
                self._connected.clear()
                self._writer = None
                writer.close()
                for queue in self._pending.values():
                    queue.put_nowait(_CONNECTION_LOST)

    async def _send(self, op: str, **fields) -> None:
        if self._writer is None:
            raise WorkerUnavailable("the GPU worker is not running")
        try:
            self._writer.write(protocol.encode_frame(op, **fields))
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            raise WorkerUnavailable(f"could not reach the GPU worker: {exc}") from exc

    async def _stream(self, op: str, request_id: str | None = None, **fields) -> AsyncIterator[protocol.Frame]:
        request_id = request_id or f"r{next(self._ids)}"
        queue: asyncio.Queue[protocol.Frame] = asyncio.Queue()
        self._pending[request_id] = queue
        try:
            await self._send(op, id=request_id, **fields)
            while True:
                frame = await queue.get()
                if frame is _CONNECTION_LOST:
                    raise WorkerUnavailable("the GPU worker stopped while working on this request")
                if frame.op == "error":
                    raise WorkerError(frame.header.get("code", protocol.ERROR_INTERNAL),
                                      frame.header.get("message", "unknown error"))
                yield frame
        finally:
            self._pending.pop(request_id, None)

    async def _request(self, op: str, timeout: float, **fields) -> protocol.Frame:
        async def first() -> protocol.Frame:
            async for frame in self._stream(op, **fields):
                return frame
            raise WorkerUnavailable("no answer")

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            raise WorkerUnavailable(f"the GPU worker did not answer {op!r} in {timeout:.0f} s") from None

    async def health(self, timeout: float = 5.0) -> dict:
        return (await self._request("health", timeout)).header

    async def count_tokens(self, prompt: str, timeout: float = 5.0) -> tuple[int, int]:
        frame = await self._request("count_tokens", timeout, prompt=prompt)
        return int(frame.header["count"]), int(frame.header["limit"])

    def generate(self, request_id: str, params: protocol.GenerateParams) -> AsyncIterator[protocol.Frame]:
        """Stream accepted / progress / image frames; ends after ``done``, raises on error."""

        async def frames() -> AsyncIterator[protocol.Frame]:
            async for frame in self._stream("generate", request_id, params=params.to_json()):
                yield frame
                if frame.op == "done":
                    return

        return frames()

    def train(self, request_id: str, params: protocol.TrainParams) -> AsyncIterator[protocol.Frame]:
        """Stream accepted / train_progress / checkpoint frames; ends after ``done``, raises on error."""

        async def frames() -> AsyncIterator[protocol.Frame]:
            async for frame in self._stream("train", request_id, params=params.to_json()):
                yield frame
                if frame.op == "done":
                    return

        return frames()

    async def cancel(self, request_id: str) -> None:
        await self._send("cancel", id=request_id)
