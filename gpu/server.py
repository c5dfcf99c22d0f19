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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import protocol
from .engine import MAX_SEQUENCE_LENGTH, GeneratedImage, GenerationCancelled, ImageEngine
from .png import encode_png

log = logging.getLogger(__name__)


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

        async def send(op: str, blob: bytes = b"", **fields) -> None:
            async with send_lock:
                writer.write(protocol.encode_frame(op, blob, **fields))
                await writer.drain()

        tasks: set[asyncio.Task] = set()
        try:
            await send("hello", version=protocol.PROTOCOL_VERSION, model=self.engine.model_name,
                       device=self.engine.device, pid=os.getpid(), ready=self._ready.is_set())
            while True:
                frame = await protocol.read_frame(reader)
                # Each request runs as its own task so a cancel is read while a generate runs.
                task = asyncio.create_task(self._handle(frame, send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except protocol.ProtocolError as exc:
            log.warning("dropping client: %s", exc)
        finally:
            # The bot went away: cancel whatever it asked for, nobody will read the result.
            for task in tasks:
                task.cancel()
            writer.close()

    async def _handle(self, frame: protocol.Frame, send) -> None:
        request_id = frame.id
        try:
            if frame.op == "health":
                busy = self._busy_with is not None or self._warming
                await send("health", id=request_id, ok=True, ready=self._ready.is_set(), busy=busy,
                           model=self.engine.model_name, device=self.engine.device, pid=os.getpid())
            elif frame.op == "count_tokens":
                count = self.engine.count_tokens(str(frame.header.get("prompt", "")))
                await send("tokens", id=request_id, count=count, limit=MAX_SEQUENCE_LENGTH)
            elif frame.op == "cancel":
                self._cancelled.add(str(request_id))
            elif frame.op == "generate":
                await self._generate(request_id, frame.header.get("params") or {}, send)
            elif frame.op == "train":
                await self._train(request_id, frame.header.get("params") or {}, send)
            else:
                await send("error", id=request_id, code=protocol.ERROR_BAD_REQUEST, message=f"unknown op {frame.op!r}")
        except protocol.ProtocolError as exc:
            await send("error", id=request_id, code=protocol.ERROR_BAD_REQUEST, message=str(exc))

    async def _generate(self, request_id: str, raw_params: dict, send) -> None:
        params = protocol.GenerateParams.from_json(raw_params)
        if self.engine.count_tokens(params.prompt) > MAX_SEQUENCE_LENGTH:
            await send("error", id=request_id, code=protocol.ERROR_PROMPT_TOO_LONG,
                       message=f"the prompt is longer than {MAX_SEQUENCE_LENGTH} tokens")
            return
        await send("accepted", id=request_id)
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pending_sends: list[asyncio.Future] = []

        def on_step(step: int, total: int) -> None:
            pending_sends.append(asyncio.run_coroutine_threadsafe(
                send("progress", id=request_id, step=step, total=total), loop))

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
                await send("done", id=request_id, seconds=round(time.perf_counter() - started, 3))
            except asyncio.CancelledError:
                stop.set()  # the client hung up; let the GPU thread stop at its next step
                raise
            except Exception as exc:  # noqa: BLE001 - every failure must reach the bot as a reply
                await self._send_error(send, request_id, exc)
            finally:
                self._busy_with = None
                self._cancelled.discard(request_id)

    def _generate_on_gpu(self, params: protocol.GenerateParams, on_step, should_stop, on_image) -> None:
        """On the GPU thread: the requested adapters only (a training run's adapters set aside)."""
        if self._training is not None:
            self._training.suspend()
        try:
            if params.loras or self.engine.uses_adapters:  # plain use never imports peft
                self.engine.adapters().activate([(lora["name"], lora["path"], lora["scale"]) for lora in params.loras])
            self.engine.generate(params, on_step, should_stop, on_image)
        finally:
            if self._training is not None:
                self._training.resume()

    async def _train(self, request_id: str, raw_params: dict, send) -> None:
        from .training_session import TrainingCancelled, TrainingSession

        params = protocol.TrainParams.from_json(raw_params)
        if self._training is not None:
            await send("error", id=request_id, code=protocol.ERROR_BUSY, message="a LoRA is already training")
            return
        await send("accepted", id=request_id)
        await self._ready.wait()
        if self.engine.accel.quant != "none":
            await send("error", id=request_id, code=protocol.ERROR_BAD_REQUEST,
                       message=f"LoRA training needs the bf16 model; this worker runs quantized "
                               f"({self.engine.accel.quant}: ZIMAGE_QUANT / ZIMAGE_VRAM)")
            return
        started = time.perf_counter()
        session = None
        try:
            session = TrainingSession(self.engine.pipe, params, self.engine.device, self._gpu, self._encoder,
                                      cuda_graphs=self.engine.accel.train_graphs)
            self._training = session
            await session.run(lambda op, **fields: send(op, id=request_id, **fields),
                              cancelled=lambda: request_id in self._cancelled)
            await send("done", id=request_id, seconds=round(time.perf_counter() - started, 3))
        except TrainingCancelled:
            await send("error", id=request_id, code=protocol.ERROR_CANCELLED, message="cancelled")
        except asyncio.CancelledError:
            self._cancelled.add(request_id)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must reach the bot as a reply
            await self._send_error(send, request_id, exc)
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
    async def _send_error(send, request_id: str, exc: Exception) -> None:
        """Map an exception to a protocol error code: the one place the worker does so."""
        if isinstance(exc, GenerationCancelled):
            await send("error", id=request_id, code=protocol.ERROR_CANCELLED, message="cancelled")
            return
        if "AdapterError" in type(exc).__name__:
            code = protocol.ERROR_BAD_REQUEST
        elif "out of memory" in str(exc).lower():
            code = protocol.ERROR_OUT_OF_MEMORY
        else:
            code = protocol.ERROR_INTERNAL
            log.error("request %s failed", request_id, exc_info=exc)
        await send("error", id=request_id, code=code, message=f"{type(exc).__name__}: {exc}"[:500])

    @staticmethod
    async def _send_image(send, request_id: str, result: GeneratedImage, encoded) -> None:
        png = await asyncio.wrap_future(encoded)
        await send("image", png, id=request_id, index=result.index, seed=result.seed)


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
