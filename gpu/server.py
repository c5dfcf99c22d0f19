"""The worker's socket server: one GPU thread, many short-lived requests.

Generation runs on a single executor thread (the GPU does one job at a time); the event loop
stays free to answer health checks, token counts and cancels while an image is being made.
PNG encoding runs on a second thread so image k+1 starts on the GPU while image k is encoded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    GenerateParams,
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

from .engine import GeneratedImage, ImageEngine
from .png import encode_png

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # a client says its protocol version first


class WorkerServer:
    def __init__(self, engine: ImageEngine, socket_path: Path):
        self.engine = engine
        self.socket_path = socket_path
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png")
        self._gpu_lock = asyncio.Lock()
        self._cancelled: set[str] = set()
        self._busy_with: str | None = None
        self._warming = False  # the LoRA slot warm-up after "ready"
        self._ready = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._training = None  # the TrainingSession in progress, if any

    async def load_model(self, warm_up: bool) -> None:
        """Load (and warm) the pipeline on the GPU thread while the socket already answers."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._gpu, self.engine.load)
        if warm_up:
            await loop.run_in_executor(self._gpu, self.engine.warm_up)
        self._ready.set()
        log.info("worker ready")
        if warm_up:
            # LoRA graph variants compile after "ready": a first request waits at most for this, nobody
            # waits for it at start-up. Its failure is logged; a request would compile on its own.
            self._warm_up_in_background("LoRA warm-up", self.engine.warm_up_adapters)

    def _warm_up_in_background(self, what: str, *steps) -> None:
        """Run warm-up steps on the GPU thread after "ready" (health says busy meanwhile); failures are logged."""

        def run() -> None:
            self._warming = True
            try:
                for step in steps:
                    step()
            finally:
                self._warming = False

        warming = asyncio.get_running_loop().run_in_executor(self._gpu, run)
        warming.add_done_callback(lambda done: not done.cancelled() and done.exception() and log.error(
            "%s failed", what, exc_info=done.exception()))

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

        tasks: set[asyncio.Task] = set()
        try:
            await send(Hello(version=PROTOCOL_VERSION, model=self.engine.model_name, device=self.engine.device,
                             pid=os.getpid(), ready=self._ready.is_set()))
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
    async def _accept_hello(reader: asyncio.StreamReader, send: Callable[[Message], Awaitable[None]]) -> bool:
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

    async def _handle(self, message: Message, send: Callable[[Message], Awaitable[None]]) -> None:
        match message:
            case Health(id=request_id):
                busy = self._busy_with is not None or self._warming
                await send(HealthReport(id=request_id, ready=self._ready.is_set(), busy=busy,
                                        model=self.engine.model_name, device=self.engine.device, pid=os.getpid()))
            case CountTokens(id=request_id, prompt=prompt):
                await send(TokenCount(id=request_id, count=self.engine.count_tokens(prompt), limit=MAX_SEQUENCE_LENGTH))
            case Cancel(id=request_id):
                self._cancelled.add(request_id)
            case ImagineRequest():
                await self._generate(message, send)
            case TrainRequest():
                await self._train(message, send)
            case _:
                await send(Error(id=getattr(message, "id", None), code=ErrorCode.BAD_REQUEST,
                                 message=f"a worker does not take {message.op.value!r}"))

    async def _generate(self, request: ImagineRequest, send: Callable[[Message], Awaitable[None]]) -> None:
        request_id, params = request.id, request.params
        if self.engine.count_tokens(params.prompt) > MAX_SEQUENCE_LENGTH:
            await send(Error(id=request_id, code=ErrorCode.PROMPT_TOO_LONG,
                             message=f"the prompt is longer than {MAX_SEQUENCE_LENGTH} tokens"))
            return
        await send(Accepted(id=request_id))
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pending_sends: list[Future] = []

        def on_step(step: int, total: int) -> None:
            pending_sends.append(asyncio.run_coroutine_threadsafe(
                send(Progress(id=request_id, step=step, total=total)), loop))

        def on_image(result: GeneratedImage) -> None:
            metadata = {
                "prompt": params.prompt, "seed": result.seed, "width": params.width,
                "height": params.height, "steps": params.steps, "model": self.engine.model_name,
                "guidance_scale": params.guidance_scale,
            }
            encoded = self._encoder.submit(encode_png, result.image, metadata)
            pending_sends.append(asyncio.run_coroutine_threadsafe(
                self._send_image(send, request_id, result, encoded), loop))

        def should_stop() -> bool:
            return stop.is_set() or request_id in self._cancelled

        started = time.perf_counter()
        async with self._gpu_lock:
            self._busy_with = request_id
            try:
                await loop.run_in_executor(
                    self._gpu, lambda: self._generate_on_gpu(params, on_step, should_stop, on_image))
                await asyncio.gather(*map(asyncio.wrap_future, pending_sends))
                await send(Done(id=request_id, seconds=round(time.perf_counter() - started, 3)))
            except asyncio.CancelledError:
                stop.set()  # the client hung up; let the GPU thread stop at its next step
                raise
            except Exception as exc:  # noqa: BLE001 - every failure must reach the bot as a reply
                await send(error_reply(request_id, exc))
            finally:
                self._busy_with = None
                self._cancelled.discard(request_id)

    def _generate_on_gpu(self, params: GenerateParams, on_step, should_stop, on_image) -> None:
        """On the GPU thread: the requested adapters only (a training run's adapters set aside)."""
        if self._training is not None:
            self._training.suspend()
        try:
            if params.loras or self.engine.uses_adapters:  # plain use never imports peft
                self.engine.adapters().activate([(lora.name, lora.path, lora.scale) for lora in params.loras])
            self.engine.generate(params, on_step, should_stop, on_image)
        finally:
            if self._training is not None:
                self._training.resume()

    async def _train(self, request: TrainRequest, send: Callable[[Message], Awaitable[None]]) -> None:
        from .training_session import TrainingSession

        request_id = request.id
        if self._training is not None:
            await send(Error(id=request_id, code=ErrorCode.BUSY, message="a LoRA is already training"))
            return
        await send(Accepted(id=request_id))
        await self._ready.wait()
        if self.engine.accel.quant != "none":
            await send(Error(id=request_id, code=ErrorCode.UNSUPPORTED,
                             message=f"LoRA training needs the bf16 model; this worker runs quantized "
                                     f"({self.engine.accel.quant}: ZIMAGE_QUANT / ZIMAGE_VRAM)"))
            return
        started = time.perf_counter()
        session = None
        try:
            session = TrainingSession(self.engine.pipe, request.params, self.engine.device, self._gpu, self._encoder,
                                      cuda_graphs=self.engine.accel.train_graphs)
            self._training = session
            await session.run(request_id, send, cancelled=lambda: request_id in self._cancelled)
            await send(Done(id=request_id, seconds=round(time.perf_counter() - started, 3)))
        except asyncio.CancelledError:
            self._cancelled.add(request_id)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must reach the bot as a reply
            await send(error_reply(request_id, exc))
        finally:
            self._cancelled.discard(request_id)
            try:
                if session is not None:
                    # Closed on the GPU thread while still registered: a generation queued behind the last step
                    # still suspends the trainer, so it never runs with the training's adapters or CUDA graphs.
                    await session.close()
            finally:
                self._training = None
            if session is not None and session.needs_warm_up:
                # The run freed its CUDA graphs together with every compiled graph (gpu/train_graphs.py):
                # generation's graphs re-trace now, from the compile cache, not in a user's request.
                self._warm_up_in_background("warm-up after training", self.engine.warm_up,
                                            self.engine.warm_up_adapters)

    @staticmethod
    async def _send_image(send, request_id: str, result: GeneratedImage, encoded: Future) -> None:
        png = await asyncio.wrap_future(encoded)
        await send(ImageReady(id=request_id, index=result.index, seed=result.seed, png=png))


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
