"""What runs on the worker's GPU, and when: one GPU thread shared by generation, training and warm-ups.

Everything that touches the model runs on a single executor thread: the GPU does one thing at a time,
and torch keeps dynamo/inductor settings per thread. The event loop never waits on it, so the socket
(gpu/server.py) keeps answering health checks, token counts and cancels while an image is made.

- Generations run one at a time (the GPU lock). PNG encoding runs on a second thread, so image k+1
  starts on the GPU while image k is encoded; so does the JPEG of each live preview (gpu/previews.py).
- At most one LoRA training runs. Its session submits one step at a time, so a generation queued
  meanwhile runs after the step in progress, with the training's adapters set aside
  (``TrainingSession.suspend()`` / ``resume()`` around it). A new run is refused with
  ``ErrorCode.BUSY`` from the moment one is asked for until its session is closed.
- Warm-ups after "ready" (the LoRA graph variants at start, generation's graphs again after a
  training freed them) run in the background: health reports busy meanwhile.
- A cancel is a flag per request id, read by the generation's step callback and between training steps.
- A prompt rewrite (``enhance``, gpu/enhancer.py) is its own GPU task per image, taken in turn with the other
  generations: a request that asks for one holds up the others for one rewrite (at most MAX_NEW_TOKENS
  tokens), then waits for its turn again; its images follow in a task of their own.

The server calls :meth:`GpuScheduler.generate`, :meth:`GpuScheduler.train`, :meth:`GpuScheduler.cancel`
and reads :attr:`GpuScheduler.ready` / :attr:`GpuScheduler.busy` / :meth:`GpuScheduler.gpu_stats`; what goes
wrong is raised to it, and it turns exceptions into Error replies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from zimage_protocol.errors import ErrorCode, UserError
from zimage_protocol.messages import Accepted, GenerateParams, Message, TrainParams
from zimage_protocol.settings import EnhancerSettings

from .engine import GeneratedImage, GenerationCancelled, ImageEngine
from .png import encode_png
from .previews import PreviewFrame
from .training.session import TrainingSession

log = logging.getLogger(__name__)

OnStep = Callable[[int, int], Coroutine[Any, Any, None]]  # (step, total) of a generation
# (index, seed, png, prompt) of a generated image; prompt: the rewritten one (enhance), else ""
OnImage = Callable[[int, int, bytes, str], Coroutine[Any, Any, None]]
OnPreview = Callable[[int, int, bytes], Coroutine[Any, Any, None]]  # (step, total, jpeg) of a live preview
Emit = Callable[[Message], Awaitable[None]]  # a training run's messages, to its client


class GpuStats(NamedTuple):
    """What a health report says of the GPU (zimage_protocol HealthReport's gpu_* fields); None where unknown."""

    gpu_memory_used: int | None = None
    gpu_memory_total: int | None = None
    gpu_utilization: float | None = None


class GpuScheduler:
    """The GPU thread of one worker and the state of what runs on it. Use it from the event loop's thread."""

    def __init__(self, engine: ImageEngine):
        self.engine = engine
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png")
        self._gpu_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._cancelled: set[str] = set()
        self._busy_with: str | None = None  # the generation on the GPU
        self._warming = False  # a background warm-up on the GPU
        self._training_id: str | None = None  # the run holding the trainer, from its request until its session is closed
        self._session: TrainingSession | None = None  # that run's session, once it exists
        self._background: set[asyncio.Task[None]] = set()  # sessions being closed, warm-ups (a reference keeps each alive)
        self.enhancer = EnhancerSettings.from_env(os.environ)  # PROMPT_ENHANCER; a bad value stops the worker's start

    @property
    def ready(self) -> bool:
        """The model is loaded (and warmed up, if asked): generations run from now on."""
        return self._ready.is_set()

    @property
    def busy(self) -> bool:
        """A generation or a warm-up is on the GPU (a training alone is not: generations run between its steps)."""
        return self._busy_with is not None or self._warming

    def gpu_stats(self) -> GpuStats:
        """The GPU's memory and utilisation for a health report; all None until the model is on a CUDA device.

        Read from the event loop's thread (allocator counters, no sync with the GPU thread). Utilisation comes
        from NVML through torch and is None without nvidia-ml-py (an optional package) or when NVML fails."""
        if not self.engine.device.startswith("cuda"):
            return GpuStats()
        import torch

        device = torch.device(self.engine.device)
        try:
            used = torch.cuda.memory_allocated(device)
            total = torch.cuda.get_device_properties(device).total_memory
        except (RuntimeError, AssertionError) as exc:  # CUDA unusable after all: report nothing rather than fail
            log.debug("no GPU memory for the health report: %r", exc)
            return GpuStats()
        try:
            utilization: float | None = torch.cuda.utilization(device) / 100
        except Exception as exc:  # noqa: BLE001 - pynvml missing (ModuleNotFoundError), NVML errors of any kind
            log.debug("no GPU utilisation for the health report: %r", exc)
            utilization = None
        return GpuStats(int(used), int(total), utilization)

    def cancel(self, request_id: str) -> None:
        """Stop that generation at its next step, or that training before its next step."""
        self._cancelled.add(request_id)

    async def load(self, warm_up: bool) -> None:
        """Load (and warm) the pipeline on the GPU thread; the socket may already answer meanwhile."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._gpu, self.engine.load)
        if warm_up:
            await loop.run_in_executor(self._gpu, self.engine.warm_up)
        self._ready.set()
        log.info("worker ready")
        if warm_up:
            # The picture-based paths and the LoRA graph variants compile after "ready": nobody waits for them at
            # start-up, and a request that comes meanwhile waits for one of these steps at most. A failure is
            # logged; a request would compile on its own.
            self._warm_up_in_background("warm-up after ready", self.engine.warm_up_variants,
                                        self.engine.warm_up_adapters)

    def _warm_up_in_background(self, what: str, *steps: Callable[[], None]) -> None:
        """Run warm-up steps on the GPU thread after "ready" (health says busy meanwhile); failures are logged.

        Each step takes the generations' lock (asyncio's is first come, first served), so a generation asked for
        meanwhile runs before the next step, not after all of them."""

        async def run() -> None:
            loop = asyncio.get_running_loop()
            self._warming = True
            try:
                for step in steps:
                    async with self._gpu_lock:
                        await loop.run_in_executor(self._gpu, step)
            finally:
                self._warming = False

        warming = asyncio.get_running_loop().create_task(run())
        self._background.add(warming)  # a reference keeps the task alive
        warming.add_done_callback(self._background.discard)
        warming.add_done_callback(lambda done: _log_failure(what, done))

    # -- generation -------------------------------------------------------------------------------------------

    async def generate(self, request_id: str, params: GenerateParams, on_step: OnStep, on_image: OnImage,
                       on_preview: OnPreview | None = None) -> float:
        """Make the request's images once the model is ready and the GPU is free (between training steps).

        ``on_step``, ``on_image`` and ``on_preview`` (live previews; none without it, nor with PREVIEWS=off) run
        on the event loop; all of them have completed when this returns. A preview that fails to encode is logged
        and skipped, never the request's failure.
        Returns the seconds from its turn among the generations (requests wait in the order they came) to the last
        image delivered, a training step it waited for included (what the reply reports). Raises what the engine
        raises (``Cancelled`` after a cancel, also one that came while the request waited for its turn)."""
        await self._ready.wait()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        pending: list[Future[None]] = []

        def step_done(step: int, total: int) -> None:
            pending.append(asyncio.run_coroutine_threadsafe(on_step(step, total), loop))

        def image_done(result: GeneratedImage) -> None:
            metadata: dict[str, object] = {
                "prompt": params.prompt, "seed": result.seed, "width": params.width,
                "height": params.height, "steps": params.steps, "model": self.engine.model_name,
                "guidance_scale": params.guidance_scale,
                **(params.source.png_text() if params.source is not None else {}),  # parent job, strength, ...
            }
            if result.prompt:  # what the image was made from; prompt + seed + enhance make it again
                metadata["enhanced_prompt"] = result.prompt
            if params.seed_variance:
                metadata["seed_variance"] = params.seed_variance
            encoded = self._encoder.submit(encode_png, result.image, metadata)
            pending.append(asyncio.run_coroutine_threadsafe(_deliver(on_image, result, encoded), loop))

        def preview_done(frame: PreviewFrame) -> None:
            assert on_preview is not None
            encoded = self._encoder.submit(frame.encode)
            pending.append(asyncio.run_coroutine_threadsafe(_send_preview(on_preview, frame, encoded), loop))

        def should_stop() -> bool:
            return stop.is_set() or request_id in self._cancelled

        prompts: list[str] | None = None
        enhancing = 0.0
        if params.enhance:
            try:
                prompts, enhancing = await self._enhance(request_id, params, should_stop)
            except asyncio.CancelledError:
                stop.set()
                raise
            except BaseException:
                self._cancelled.discard(request_id)
                raise

        async with self._gpu_lock:
            # From here, not from the request: a generation sent ahead (the bot keeps one waiting behind the
            # running one) reports its own time, not its wait for the one before it.
            started = time.perf_counter()
            self._busy_with = request_id
            try:
                if should_stop():  # cancelled while it waited: the GPU never starts it
                    raise GenerationCancelled()
                await loop.run_in_executor(self._gpu, lambda: self._generate_on_gpu(
                    params, step_done, should_stop, image_done, preview_done if on_preview else None, prompts))
                await asyncio.gather(*map(asyncio.wrap_future, pending))
            except asyncio.CancelledError:
                stop.set()  # the client hung up; let the GPU thread stop at its next step
                raise
            finally:
                self._busy_with = None
                self._cancelled.discard(request_id)
        return enhancing + time.perf_counter() - started

    async def _enhance(self, request_id: str, params: GenerateParams,
                       should_stop: Callable[[], bool]) -> tuple[list[str], float]:
        """One rewritten prompt per image (seeded by its seed), each in its own turn on the GPU; and their seconds.

        Refused with ``ErrorCode.UNSUPPORTED`` when PROMPT_ENHANCER=off here (the bot refuses it first when its
        own setting is off; an external worker may be configured otherwise)."""
        if not self.enhancer.enabled:
            raise UserError("the prompt enhancer is turned off on this worker (PROMPT_ENHANCER=off)",
                            ErrorCode.UNSUPPORTED)
        loop = asyncio.get_running_loop()
        prompts: list[str] = []
        seconds = 0.0
        for seed in params.seeds:
            async with self._gpu_lock:
                self._busy_with = request_id
                try:
                    if should_stop():
                        raise GenerationCancelled()
                    enhanced = await loop.run_in_executor(
                        self._gpu, functools.partial(self.engine.enhance, params.prompt, seed, should_stop))
                finally:
                    self._busy_with = None
            log.info("prompt enhanced for %s (seed %d): %d tokens in %.2f s, %.1f tokens/s", request_id, seed,
                     enhanced.tokens, enhanced.seconds, enhanced.tokens_per_second)
            prompts.append(enhanced.prompt)
            seconds += enhanced.seconds
        return prompts, seconds

    def _generate_on_gpu(self, params: GenerateParams, on_step: Callable[[int, int], None],
                         should_stop: Callable[[], bool], on_image: Callable[[GeneratedImage], None],
                         on_preview: Callable[[PreviewFrame], None] | None, prompts: list[str] | None = None) -> None:
        """On the GPU thread: the requested adapters only (a training run's adapters set aside)."""
        if self._session is not None:
            self._session.suspend()
        try:
            if params.loras or self.engine.uses_adapters:  # plain use never imports peft
                self.engine.adapters().activate([(lora.name, lora.path, lora.scale) for lora in params.loras])
            self.engine.generate(params, on_step, should_stop, on_image, on_preview, prompts)
        finally:
            if self._session is not None:
                self._session.resume()

    # -- training ---------------------------------------------------------------------------------------------

    async def train(self, request_id: str, params: TrainParams, emit: Emit) -> float:
        """One LoRA training run: ``Accepted``, then its progress and checkpoints, all through ``emit``.

        Refused with ``ErrorCode.BUSY`` (before ``Accepted``) while another run holds the trainer, which it
        does until its session is closed; that close runs after this returns, on the GPU thread, so the
        reply does not wait for it. Returns the seconds the run took once the model was ready."""
        if self._training_id is not None:
            raise UserError("a LoRA is already training", ErrorCode.BUSY)
        self._training_id = request_id
        session: TrainingSession | None = None
        try:
            await emit(Accepted(id=request_id))
            await self._ready.wait()
            if not self.engine.trains:  # a quantized base trains (gpu/training/quantized.py); 12gb has no room
                raise UserError(f"LoRA training needs a GPU of 16 GB or more; this worker runs the "
                                f"{self.engine.profile.name} profile (generation only: ZIMAGE_VRAM)",
                                ErrorCode.UNSUPPORTED)
            started = time.perf_counter()
            session = TrainingSession(self.engine.pipe, params, self.engine.device, self._gpu, self._encoder,
                                      cuda_graphs=self.engine.accel.train_graphs, model=self.engine.model_name,
                                      activation_budget=self.engine.accel.train_activation_budget)
            self._session = session
            await session.run(request_id, emit, cancelled=lambda: request_id in self._cancelled)
            return time.perf_counter() - started
        finally:
            self._cancelled.discard(request_id)
            if session is None:
                self._training_id = None
            else:
                closing = asyncio.create_task(self._close(session))
                self._background.add(closing)
                closing.add_done_callback(self._background.discard)
                closing.add_done_callback(lambda done: _log_failure("closing the training session", done))

    async def _close(self, session: TrainingSession) -> None:
        """Close the run's session, then let the next run in."""
        try:
            # Closed on the GPU thread while still registered: a generation queued behind the last step still
            # suspends the trainer, so it never runs with the training's adapters or CUDA graphs.
            await session.close()
        finally:
            self._session = None
            self._training_id = None
        if session.needs_warm_up:
            # The run freed its CUDA graphs together with every compiled graph (gpu/training/graphs.py):
            # generation's graphs re-trace now, from the compile cache, not in a user's request.
            self._warm_up_in_background("warm-up after training", self.engine.warm_up, self.engine.warm_up_variants,
                                        self.engine.warm_up_adapters)


async def _deliver(on_image: OnImage, result: GeneratedImage, encoded: Future[bytes]) -> None:
    png = await asyncio.wrap_future(encoded)
    await on_image(result.index, result.seed, png, result.prompt)


async def _send_preview(on_preview: OnPreview, frame: PreviewFrame, encoded: Future[bytes]) -> None:
    try:
        jpeg = await asyncio.wrap_future(encoded)
    except Exception:  # noqa: BLE001 - a preview is never worth a failed request
        log.exception("encoding a live preview failed")
        return
    if jpeg:
        await on_preview(frame.step, frame.total, jpeg)


def _log_failure(what: str, done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("%s failed", what, exc_info=done.exception())
