"""All the GPU workers the bot drives: one WorkerClient per endpoint (a local socket per GPU, remote hosts).

Generation does not go through the pool: the job runner runs one pipelined loop per client
(bot/jobs/pipeline.py), and each loop claims the next job in fair order when its worker has room, so a
free worker takes the next job and a worker that dies only loses what it held (retried elsewhere).
The pool is what the rest of the bot sees as "the worker": any connected worker counts prompt tokens
and reports its health; trainings go to one worker, and a cancel goes to the worker holding the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

from zimage_protocol.messages import GenerateParams, HealthReport, Hello, Message, TrainParams

from .client import WorkerClient, WorkerUnavailable


class WorkerPool:
    def __init__(self, clients: Sequence[WorkerClient]):
        if not clients:
            raise ValueError("a worker pool needs at least one worker")
        self.clients = tuple(clients)
        self.trainings: dict[str, WorkerClient] = {}  # request id -> the worker training it

    def start(self) -> None:
        for client in self.clients:
            client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients))

    @property
    def connected(self) -> bool:
        return any(client.connected for client in self.clients)

    @property
    def primary(self) -> WorkerClient:
        """The first connected worker in the order they are listed (the first listed when none is)."""
        return next((client for client in self.clients if client.connected), self.clients[0])

    @property
    def hello(self) -> Hello | None:
        return self.primary.hello

    @property
    def model_name(self) -> str:
        return self.primary.model_name

    @property
    def device(self) -> str:
        return self.primary.device

    def holds_loras(self, names: Iterable[str]) -> bool:
        return self.primary.holds_loras(names)

    async def wait_connected(self, timeout: float) -> None:
        """Until any worker is connected; WorkerUnavailable (the first listed worker's reason) after `timeout`."""
        if self.connected:
            return
        waits = [asyncio.ensure_future(client.wait_connected(timeout)) for client in self.clients]
        try:
            pending = set(waits)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not task.exception() for task in done):
                    return
            waits[0].result()  # every one timed out: raise the first one's reason
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def health(self, timeout: float = 5.0) -> HealthReport:
        return await self.primary.health(timeout)

    async def count_tokens(self, prompt: str, timeout: float = 5.0) -> tuple[int, int]:
        return await self.primary.count_tokens(prompt, timeout)

    def generate(self, request_id: str, params: GenerateParams) -> AsyncIterator[Message]:
        """A generation outside the runner's loops (they use the clients themselves): on the primary worker."""
        return self.primary.generate(request_id, params)

    def training_worker(self) -> WorkerClient:
        """Where the next training runs: the first connected worker. One training lane runs trainings one at a
        time, so every other worker keeps generating at full speed meanwhile."""
        if not self.connected:
            raise WorkerUnavailable("no GPU worker is connected")
        return self.primary

    async def train(self, request_id: str, params: TrainParams) -> AsyncIterator[Message]:
        worker = self.training_worker()
        self.trainings[request_id] = worker
        try:
            async for message in worker.train(request_id, params):
                yield message
        finally:
            self.trainings.pop(request_id, None)

    async def cancel(self, request_id: str) -> None:
        """Cancel the request on the worker that has it in flight; WorkerUnavailable when none has it."""
        for client in self.clients:
            if client.has_request(request_id):
                await client.cancel(request_id)
                return
        raise WorkerUnavailable(f"no connected GPU worker has request {request_id}")
