"""The training lane: one /train job through the worker, each checkpoint posted back.

A checkpoint message shows step, loss, speed and ETA, a sample image made with that checkpoint
and the loss curve; the LoRA file is attached when it fits the guild's upload limit, otherwise
the message carries a signed, expiring download link served by the bot (bot/files_server.py).
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import discord

from zimage_protocol.messages import CheckpointReady, TrainParams, TrainProgress

from ..db.models import Job, JobStatus
from . import render

if TYPE_CHECKING:
    from ..runner import JobRunner

MIN_EDIT_INTERVAL = 5.0  # a training runs for minutes: fewer, calmer progress edits


class TrainingLane:
    def __init__(self, runner: JobRunner):
        self.runner = runner

    async def run(self, job: Job) -> None:
        runner = self.runner
        params = TrainParams(dataset_dir=job.params["dataset_dir"], output_dir=job.params["output_dir"],
                                      config=job.params["config"])
        await runner.delivery.edit_status(job, render.training_text(job, None))
        await runner.refresh_positions()
        interval = max(runner.settings.progress_interval, MIN_EDIT_INTERVAL)
        last_edit = 0.0
        async for message in runner.worker.train(runner.request_id(job), params):
            match message:
                case TrainProgress():
                    now = time.monotonic()
                    if now - last_edit >= interval:
                        last_edit = now
                        await runner.delivery.edit_status(job, render.training_text(job, message))
                case CheckpointReady():
                    await self._post_checkpoint(job, message)
        await runner.store.finish(job.id, JobStatus.DONE)
        await runner.delivery.edit_status(job, render.training_done_text(job))

    async def _post_checkpoint(self, job: Job, checkpoint: CheckpointReady) -> None:
        runner = self.runner
        lora_file = Path(checkpoint.lora_file)
        await runner.loras.set_checkpoint(job.params["lora_id"], str(lora_file), checkpoint.step)
        sample, curve, lora_size = await asyncio.to_thread(_read_checkpoint, checkpoint)
        limit = int(job.params.get("upload_limit", 10 << 20))
        attach_lora = lora_size + len(sample) + len(curve) <= limit
        link = None if attach_lora or runner.signer is None else runner.signer.link(lora_file)
        lora_bytes = await asyncio.to_thread(lora_file.read_bytes) if attach_lora else b""
        name = job.params["name"]

        def files() -> list[discord.File]:
            attached = [discord.File(io.BytesIO(sample), filename=f"{name}_step{checkpoint.step}_sample.png"),
                        discord.File(io.BytesIO(curve), filename=f"{name}_step{checkpoint.step}_loss.png")]
            if attach_lora:
                attached.append(discord.File(io.BytesIO(lora_bytes), filename=f"{name}_step{checkpoint.step}.safetensors"))
            return attached

        await runner.delivery.post_extra(job, render.checkpoint_text(job, checkpoint, link), files)


def _read_checkpoint(checkpoint: CheckpointReady) -> tuple[bytes, bytes, int]:
    """Blocking: runs in a thread."""
    return (Path(checkpoint.sample_png).read_bytes(), Path(checkpoint.loss_png).read_bytes(),
            Path(checkpoint.lora_file).stat().st_size)
