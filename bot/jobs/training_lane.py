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

import discord

from zimage_protocol.messages import CheckpointReady, TrainParams, TrainProgress

from .. import metrics
from ..db.loras import LoraStore
from ..db.models import Job, JobKind, JobStatus
from ..files_server import LinkSigner
from . import render
from .lane import LaneContext
from .requests import request_id

MIN_EDIT_INTERVAL = 5.0  # a training runs for minutes: fewer, calmer progress edits


class TrainingLane:
    kind = JobKind.TRAIN

    def __init__(self, context: LaneContext, loras: LoraStore, signer: LinkSigner):
        self.settings, self.worker = context.settings, context.worker
        self.store, self.messages, self.positions = context.store, context.messages, context.positions
        self.loras = loras    # each checkpoint becomes the LoRA's current file
        self.signer = signer  # links for LoRA files too big to attach

    async def run(self, job: Job) -> None:
        params = TrainParams(dataset_dir=job.params["dataset_dir"], output_dir=job.params["output_dir"],
                             config=job.params["config"])
        await self.messages.edit_status(job, render.training_text(job, None))
        await self.positions.refresh()
        interval = max(self.settings.progress_interval, MIN_EDIT_INTERVAL)
        last_edit = 0.0
        async for message in self.worker.train(request_id(job), params):
            match message:
                case TrainProgress():
                    metrics.training_progress(job, message)
                    now = time.monotonic()
                    if now - last_edit >= interval:
                        last_edit = now
                        await self.messages.edit_status(job, render.training_text(job, message))
                case CheckpointReady():
                    await self._post_checkpoint(job, message)
        await self.resume(job)

    async def resume(self, job: Job) -> None:
        """Every checkpoint was posted as it came: what is left is to say the training finished."""
        await self.store.finish(job.id, JobStatus.DONE)
        await self.messages.edit_status(job, render.training_done_text(job))

    async def _post_checkpoint(self, job: Job, checkpoint: CheckpointReady) -> None:
        lora_file = Path(checkpoint.lora_file)
        await self.loras.set_checkpoint(job.params["lora_id"], str(lora_file), checkpoint.step)
        sample, curve, lora_size = await asyncio.to_thread(_read_checkpoint, checkpoint)
        limit = int(job.params.get("upload_limit", 10 << 20))
        attach_lora = lora_size + len(sample) + len(curve) <= limit
        link = None if attach_lora else self.signer.link(lora_file)
        lora_bytes = await asyncio.to_thread(lora_file.read_bytes) if attach_lora else b""
        name = job.params["name"]

        def files() -> list[discord.File]:
            attached = [discord.File(io.BytesIO(sample), filename=f"{name}_step{checkpoint.step}_sample.png"),
                        discord.File(io.BytesIO(curve), filename=f"{name}_step{checkpoint.step}_loss.png")]
            if attach_lora:
                attached.append(discord.File(io.BytesIO(lora_bytes), filename=f"{name}_step{checkpoint.step}.safetensors"))
            return attached

        await self.messages.post_extra(job, render.checkpoint_text(job, checkpoint, link), files)


def _read_checkpoint(checkpoint: CheckpointReady) -> tuple[bytes, bytes, int]:
    """Blocking: runs in a thread."""
    return (Path(checkpoint.sample_png).read_bytes(), Path(checkpoint.loss_png).read_bytes(),
            Path(checkpoint.lora_file).stat().st_size)
