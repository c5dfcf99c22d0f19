"""The training lane: one /train job through the worker, each checkpoint posted back.

A checkpoint message shows step, loss, speed and ETA, a sample image made with that checkpoint
and the loss curve, in the channel. The LoRA file is attached when it fits the upload limit,
otherwise a signed, expiring download link served by the bot (bot/files_server.py) stands for it;
while the LoRA is private (not shared with /lora share), the file or link goes to its owner only
(an ephemeral follow-up while the interaction token lives, else a DM), never to the channel.

The worker names the checkpoint's files: only files inside the job's own output folder are read,
posted or made the LoRA's file; a frame naming any other file is refused and logged.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import discord

from zimage_protocol.messages import CheckpointReady, TrainParams, TrainProgress

from .. import metrics
from ..db.loras import LoraStore
from ..db.models import Job, JobKind, JobStatus
from ..files_server import LinkSigner
from . import render
from .lane import LaneContext
from .requests import request_id

log = logging.getLogger(__name__)

MIN_EDIT_INTERVAL = 5.0  # a training runs for minutes: fewer, calmer progress edits
MESSAGE_WAIT = 10.0  # seconds a claimed /train job waits for its public message's id (see _await_message)
DM_UPLOAD_LIMIT = 10 << 20  # what a bot may attach in a DM (the guild's limit may be higher)


class PrivateMessages(Protocol):
    """A message to a job's owner only (bot/jobs/delivery.py: Delivery.post_private)."""

    async def post_private(self, job: Job, content: str, make_files: Callable[[], list[discord.File]]) -> bool: ...


class OutsideOutput(Exception):
    """A checkpoint frame named a file outside the job's output folder."""


class TrainingLane:
    kind = JobKind.TRAIN

    def __init__(self, context: LaneContext, loras: LoraStore, signer: LinkSigner, private: PrivateMessages):
        self.settings, self.worker = context.settings, context.worker
        self.store, self.messages, self.positions = context.store, context.messages, context.positions
        self.status = context.status  # the job's status line, edited in the background
        self.loras = loras      # each checkpoint becomes the LoRA's current file
        self.signer = signer    # links for LoRA files too big to attach
        self.private = private  # a private LoRA's file goes to its owner only

    async def run(self, job: Job) -> None:
        params = TrainParams(dataset_dir=job.params["dataset_dir"], output_dir=job.params["output_dir"],
                             config=job.params["config"])
        await self._await_message(job)
        self.status.show(job, render.training_text(job, None))
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
                        self.status.show(job, render.training_text(job, message))
                case CheckpointReady():
                    await self._post_checkpoint(job, message)
        await self.resume(job)

    async def _await_message(self, job: Job) -> None:
        """A /train job is queued before its public message exists (the message names the job: bot/cogs/train.py),
        so a lane may claim it before its message id is stored; without one, its progress, end and cancel would
        never be shown. Wait briefly for it (the same Job object is the one its outcome is settled with)."""
        deadline = time.monotonic() + MESSAGE_WAIT
        while job.message_id is None and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            fresh = await self.store.get(job.id)
            if fresh is not None:
                job.message_id = fresh.message_id

    async def resume(self, job: Job) -> None:
        """Every checkpoint was posted as it came: what is left is to say the training finished."""
        await self.store.finish(job.id, JobStatus.DONE)
        await self.status.settle(job.id)
        await self.messages.edit_status(job, render.training_done_text(job))

    async def _post_checkpoint(self, job: Job, checkpoint: CheckpointReady) -> None:
        posted = await self.loras.get(job.params["lora_id"])
        if posted is not None and posted.steps >= checkpoint.step:
            # A worker restarted mid-run announces the checkpoint it resumed from, which may have been posted already.
            log.info("job %s: checkpoint at step %s was posted already", job.id, checkpoint.step)
            return
        try:
            lora_file, sample, curve, lora_size = await asyncio.to_thread(
                _read_checkpoint, checkpoint, Path(job.params["output_dir"]))
        except OutsideOutput as exc:
            log.error("job %s: checkpoint at step %s not posted: %s", job.id, checkpoint.step, exc)
            return
        except OSError as exc:  # pruned already (KEEP_CHECKPOINTS) when the worker ran far ahead of the posts
            log.warning("job %s: checkpoint at step %s not posted: %s", job.id, checkpoint.step, exc)
            return
        # Recorded before the posts: a member who sees the checkpoint can use or share the LoRA at once. (A bot
        # stopped between this and the posts would skip this step's post when the worker announces it again.)
        await self.loras.set_checkpoint(job.params["lora_id"], str(lora_file), checkpoint.step)
        shared = posted is not None and posted.shared
        name, step = job.params["name"], checkpoint.step
        limit = int(job.params.get("upload_limit", 10 << 20))
        # Shared: the file rides with the sample in the channel. Private: to the owner alone (maybe in a DM).
        attach_lora = lora_size + len(sample) + len(curve) <= limit if shared else lora_size <= min(limit, DM_UPLOAD_LIMIT)
        link = None if attach_lora else self.signer.link(lora_file)
        lora_bytes = await asyncio.to_thread(lora_file.read_bytes) if attach_lora else b""

        def lora_attachment() -> list[discord.File]:
            return [discord.File(io.BytesIO(lora_bytes), filename=f"{name}_step{step}.safetensors")] if attach_lora else []

        def files() -> list[discord.File]:
            return [discord.File(io.BytesIO(sample), filename=f"{name}_step{step}_sample.png"),
                    discord.File(io.BytesIO(curve), filename=f"{name}_step{step}_loss.png"),
                    *(lora_attachment() if shared else [])]

        await self.messages.post_extra(job, render.checkpoint_text(job, checkpoint, link if shared else None,
                                                                   private=not shared), files)
        if not shared:
            await self.private.post_private(job, render.private_checkpoint_text(job, checkpoint, link), lora_attachment)


def _inside(path: str, folder: Path) -> Path:
    """`path` resolved (links followed), if it is a file inside `folder`; else OutsideOutput."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(folder):
        raise OutsideOutput(f"{path!r} is outside the job's output folder {str(folder)!r}")
    if not resolved.is_file():
        raise FileNotFoundError(f"{path!r} is not a file (any more)")
    return resolved


def _read_checkpoint(checkpoint: CheckpointReady, output_dir: Path) -> tuple[Path, bytes, bytes, int]:
    """The LoRA file (resolved), the sample and loss curve PNGs and the LoRA's size. Blocking: runs in a thread."""
    folder = output_dir.resolve()
    lora_file, sample, curve = (_inside(path, folder) for path in (checkpoint.lora_file, checkpoint.sample_png,
                                                                   checkpoint.loss_png))
    return lora_file, sample.read_bytes(), curve.read_bytes(), lora_file.stat().st_size
