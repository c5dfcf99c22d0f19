"""One LoRA training run inside the worker, interleaved with generation.

Every training step is its own call on the single GPU thread. Generation requests queue on the
same thread, so they run *between* steps: a waiting /imagine never waits for a whole training
run, only for the step in progress. Before such a generation the scheduler (gpu/scheduler.py) calls
``suspend()`` (trainee and training adapters off) and ``resume()`` after it. Only the scheduler
drives a session: it starts one run at a time and lets the next in once this one is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

from zimage_protocol.errors import Cancelled
from zimage_protocol.messages import CheckpointReady, Message, TrainParams, TrainProgress

from ..png import encode_png
from .checkpoints import Checkpoint, list_checkpoints

log = logging.getLogger(__name__)


class TrainingCancelled(Cancelled):
    pass


class TrainingSession:
    def __init__(self, pipe, params: TrainParams, device: str, gpu: Executor, encoder: Executor,
                 cuda_graphs: bool = False, model: str = "", activation_budget: float | None = None):
        from .config import TrainConfig
        from .graphs import TrainingGraphs
        from .trainer import LoraTrainer

        self.config = TrainConfig.from_json(params.config)
        graphs = (TrainingGraphs.for_transformer(pipe.transformer, activation_budget=activation_budget)
                  if cuda_graphs else None)  # ZIMAGE_TRAIN_GRAPHS, ZIMAGE_TRAIN_ACTIVATION_BUDGET
        self.trainer = LoraTrainer(pipe, Path(params.dataset_dir), Path(params.output_dir), self.config,
                                   device, pipe.transformer.dtype, graphs)
        self._gpu, self._encoder = gpu, encoder
        self._model = model  # ZIMAGE_MODEL: the default training adapter is none on the tiny model

    async def _on_gpu(self, function: Callable):
        return await asyncio.get_running_loop().run_in_executor(self._gpu, function)

    async def run(self, request_id: str, send: Callable[[Message], Awaitable[None]], cancelled: Callable[[], bool]) -> None:
        """Train to the configured step count, sending progress and checkpoints; resumes if it can."""
        from .adapter import resolve_training_adapter

        # In a thread of its own: the first run downloads the adapter (minutes), and generations go on meanwhile.
        self.trainer.adapter = await asyncio.to_thread(resolve_training_adapter, self.config.training_adapter,
                                                       self._model)
        await self._on_gpu(self.trainer.prepare)
        total = self.config.steps
        resumed = await asyncio.to_thread(self._resumed_checkpoint)
        if resumed is not None and not cancelled():
            # The worker may have died between writing this checkpoint and announcing it: announce it again.
            # The bot posts a step once (bot/jobs/training_lane.py), so one it had posted is not posted twice.
            await send(await self._announce(request_id, total, resumed))
        recent: list[float] = []
        while self.trainer.step_count < total:
            if cancelled():
                raise TrainingCancelled()
            started = time.perf_counter()
            loss = await self._on_gpu(self.trainer.step)
            recent = (recent + [time.perf_counter() - started])[-20:]
            seconds_per_step = sum(recent) / len(recent)
            step = self.trainer.step_count
            if loss is not None:  # the newest loss read: on a GPU the step before's (gpu/training/pending.py)
                await send(TrainProgress(id=request_id, step=step, total=total, loss=round(float(loss), 6),
                                         seconds_per_step=round(seconds_per_step, 4)))
            if step % self.config.checkpoint_every == 0 or step == total:
                await send(await self._checkpoint(request_id, total))

    def _resumed_checkpoint(self) -> Checkpoint | None:
        """The checkpoint prepare() resumed from (the newest on disk at its step), or None on a fresh run."""
        step = self.trainer.step_count
        if step == 0:
            return None
        return next((c for c in reversed(list_checkpoints(self.trainer.output_dir)) if c.step == step), None)

    async def _checkpoint(self, request_id: str, total: int) -> CheckpointReady:
        return await self._announce(request_id, total, await self._on_gpu(self.trainer.save_checkpoint))

    async def _announce(self, request_id: str, total: int, checkpoint: Checkpoint) -> CheckpointReady:
        """Sample and loss curve written into the checkpoint's folder (unless there already), then the message."""
        folder = Path(checkpoint.path)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._encoder, _has_files, folder):
            sample = await self._on_gpu(self.trainer.sample)
            metadata = {"prompt": self.config.sample_prompt, "seed": self.config.sample_seed,
                        "steps": self.config.sample_steps, "lora_step": checkpoint.step}
            sample_png = await loop.run_in_executor(self._encoder, encode_png, sample, metadata)
            loss_png = await loop.run_in_executor(self._encoder, self.trainer.loss_curve_png)
            await loop.run_in_executor(self._encoder, _write_files, folder, sample_png, loss_png)
        return CheckpointReady(id=request_id, step=checkpoint.step, total=total, loss=round(float(checkpoint.loss), 6),
                               seconds_per_step=round(float(checkpoint.seconds_per_step), 4),
                               lora_file=str(checkpoint.lora_file), sample_png=str(folder / "sample.png"),
                               loss_png=str(folder / "loss.png"),
                               training_adapter=self.trainer.adapter.describe() if self.trainer.adapter else "")

    async def close(self) -> None:
        await self._on_gpu(self.trainer.close)

    @property
    def needs_warm_up(self) -> bool:
        """Closing freed the training's CUDA graphs and with them every compiled graph (gpu/training/graphs.py)."""
        return self.trainer.needs_warm_up

    # Around a generation on the GPU thread. A generation queued behind close() finds the trainer closed, and one
    # that runs before prepare() (the scheduler registers the session first) finds it not prepared: either way the
    # base model is clean, and there is nothing to set aside. (prepare() and close() run on the GPU thread too, so
    # neither state changes during a generation.)
    def suspend(self) -> None:
        if self.trainer.prepared and not self.trainer.closed:
            self.trainer.suspend()

    def resume(self) -> None:
        if self.trainer.prepared and not self.trainer.closed:
            self.trainer.resume()


def _has_files(folder: Path) -> bool:
    return (folder / "sample.png").is_file() and (folder / "loss.png").is_file()


def _write_files(folder: Path, sample_png: bytes, loss_png: bytes) -> None:
    # loss.png last, through a rename: _has_files() is true only once both are whole.
    (folder / "sample.png").write_bytes(sample_png)
    (folder / "loss.png.tmp").write_bytes(loss_png)
    (folder / "loss.png.tmp").replace(folder / "loss.png")
