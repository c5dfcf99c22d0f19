"""Turning an /imagine request (or a click on a result's button) into a queued job.

Shared by the slash command and the reroll / variations buttons, so both get the same
checks: prompt, moderation rules, queue limit, rate limit, and the model's token limit (asked
of the worker). Every refusal is raised before the interaction is deferred, so it stays private.
"""

from __future__ import annotations

import logging
import random

import discord

from .db.admission import AdmissionRefused, NewJob, admit
from .db.jobs import JobStore
from .db.models import Job
from .db.moderation import ModerationStore
from .errors import UserFacingError
from .interaction_ids import channel_id_of
from .jobs import render
from .jobs.runner import JobRunner
from .limits import UserLimits
from .lora_library import LoraLibrary
from .moderation import RequestRules
from .permissions import can_delete_results
from .sizes import ASPECT_SIZES
from .worker.client import WorkerClient, WorkerUnavailable

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
TOKEN_CHECK_TIMEOUT = 1.5  # the interaction must be answered within 3 s


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


def build_params(prompt: str, aspect: str, steps: int, seeds: list[int], upload_limit: int,
                 loras: list[dict] | None = None) -> dict:
    width, height = ASPECT_SIZES[aspect]
    return {"prompt": prompt, "aspect": aspect, "width": width, "height": height, "steps": steps,
            "seeds": seeds, "guidance_scale": 0.0, "upload_limit": upload_limit, "loras": loras or []}


def consecutive_seeds(seed: int, count: int) -> list[int]:
    return [(seed + offset) % (MAX_SEED + 1) for offset in range(count)]


class ImagineService:
    def __init__(self, store: JobStore, moderation: ModerationStore, rules: RequestRules, limits: UserLimits,
                 worker: WorkerClient, runner: JobRunner, library: LoraLibrary):
        self.store = store
        self.moderation = moderation
        self.rules = rules
        self.limits = limits
        self.worker = worker  # counts a prompt's tokens
        self.runner = runner  # woken when a job is queued
        self.library = library  # the LoRAs a button's clicker may use now

    async def clean_prompt(self, prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise UserFacingError("Your prompt is empty. Describe the image you want, e.g. `/imagine a red fox in snow`.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserFacingError(f"Your prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
        try:
            await self.worker.wait_connected(TOKEN_CHECK_TIMEOUT / 2)
            tokens, limit = await self.worker.count_tokens(prompt, timeout=TOKEN_CHECK_TIMEOUT / 2)
        except WorkerUnavailable:
            return prompt  # the worker re-checks before generating; don't refuse while it restarts
        if tokens > limit:
            raise UserFacingError(f"Your prompt is {tokens} tokens long; the model reads at most {limit}. Please shorten it.")
        return prompt

    async def submit(self, interaction: discord.Interaction, params: dict) -> None:
        """Checks, the job admitted into the queue (its caps checked inside the INSERT: bot/db/admission.py), then
        defer and show the position. Raises UserFacingError before deferring, so a refusal stays private."""
        params["prompt"] = await self.clean_prompt(params["prompt"])
        guild = await self.rules.check(interaction, params)
        caps = self.limits.caps(guild)
        new = NewJob(user_id=interaction.user.id, guild_id=interaction.guild_id, channel_id=channel_id_of(interaction),
                     params=params, interaction_id=interaction.id, interaction_token=interaction.token)
        try:
            async with self.store.session() as session, session.begin():
                job_id = await admit(session, new, caps)
        except AdmissionRefused as refused:
            raise self.limits.refusal(refused, caps) from None
        await interaction.response.defer(thinking=True)
        job = await self.store.get(job_id)
        if job is None:  # rows are never deleted; this only narrows the type
            return
        position = await self.store.position(job)
        try:
            message = await interaction.edit_original_response(
                content=render.queued_text(job, position, paused=guild.paused))
            job.message_id = message.id
            await self.store.set_message(job.id, message.id)
        except discord.HTTPException as exc:
            # The job is safely queued; its result will be posted to the channel instead.
            log.warning("job %s: could not show its queue position: %s", job.id, exc)
        self.runner.wake()

    # -- the result's buttons ----------------------------------------------------------------------------------

    # Anyone in the channel may click a result's buttons: the new job is the clicker's, so its LoRAs are those of the
    # earlier job that the clicker may use now, each with its current file (LoraLibrary.for_rerun), never the stored paths.

    async def reroll(self, interaction: discord.Interaction, job_id: int) -> None:
        """Same prompt, size, steps and count; a new random seed."""
        old = (await self.result(job_id)).params
        loras = await self.library.for_rerun(interaction.user.id, interaction.guild_id, old.get("loras") or [])
        await self.submit(interaction, build_params(
            old["prompt"], old["aspect"], old["steps"], consecutive_seeds(random_seed(), len(old["seeds"])),
            interaction.filesize_limit, loras))

    async def vary(self, interaction: discord.Interaction, job_id: int) -> None:
        """Same prompt and settings, as many images with independent new seeds."""
        old = (await self.result(job_id)).params
        loras = await self.library.for_rerun(interaction.user.id, interaction.guild_id, old.get("loras") or [])
        await self.submit(interaction, build_params(
            old["prompt"], old["aspect"], old["steps"], [random_seed() for _ in old["seeds"]],
            interaction.filesize_limit, loras))

    async def check_delete(self, interaction: discord.Interaction, job_id: int) -> None:
        """A result may be removed by its requester or a moderator (whose delete is audited)."""
        job = await self.result(job_id)
        if interaction.user.id == job.user_id:
            return
        if not can_delete_results(interaction, await self.moderation.settings(interaction.guild_id)):
            raise UserFacingError("Only the person who asked for this image, or a moderator, can delete it.")
        await self.moderation.audit(interaction.guild_id or 0, interaction.user.id, "delete-image",
                                    f"job #{job.id} of <@{job.user_id}>")

    async def result(self, job_id: int) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise UserFacingError("This image's job is no longer known to the bot.")
        return job
