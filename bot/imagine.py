"""Turning an /imagine request (or a click on a result's button) into a queued job.

Shared by the slash command and the reroll / variations buttons, so both get the same
checks: prompt, moderation rules, queue limit, rate limit, and the model's token limit (asked
of the worker). Both also take the server's seed variance (/mod variety) at admission, and a button
keeps its original's `enhance` (a new rewrite per new seed: gpu/enhancer.py).

The interaction is answered first, within milliseconds whatever else the bot is doing (Discord
gives 3 s): cheap checks that need no I/O (an empty prompt, a DM) refuse at once, privately; then
the "thinking…" that becomes the job's message (public, or ephemeral for a member whose /settings make
results private: one bounded read, bot/member_settings.py), and only then the checks that need the
database or the worker, a few requests at a time (INTAKE_CONCURRENCY), ending in the job's INSERT with
its caps inside (bot/db/admission.py). A refusal after that answer deletes the "thinking…" message
and tells the member alone (an ephemeral follow-up: reporting.refuse_privately).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import discord

from zimage_protocol.settings import EnhancerSettings

from .answers_first import AnswersFirst
from .db.admission import AdmissionRefused, NewJob, admit
from .db.jobs import JobStore
from .db.models import Job
from .db.moderation import ModerationStore
from .errors import UserFacingError
from .i18n import Text, language_of
from .interaction_ids import channel_id_of
from .jobs import render
from .jobs.positions import Positions
from .jobs.runner import JobRunner
from .jobs.status_edits import StatusEdits
from .limits import UserLimits
from .lora_library import LoraLibrary
from .member_settings import MemberDefaults
from .moderation import RequestRules
from .permissions import can_delete_results
from .reporting import refuse_privately
from .sizes import ASPECT_SIZES
from .worker.client import WorkerUnavailable
from .worker.pool import WorkerPool

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
TOKEN_CHECK_TIMEOUT = 1.5  # a slow worker does not hold a request long: it re-checks before generating
INTAKE_CONCURRENCY = 4  # requests checked and admitted at once; the rest wait (already answered)

PrepareParams = Callable[[], Awaitable[dict]]


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


def build_params(prompt: str, aspect: str, steps: int, seeds: list[int], upload_limit: int,
                 loras: list[dict] | None = None, enhance: bool = False) -> dict:
    width, height = ASPECT_SIZES[aspect]
    return {"prompt": prompt, "aspect": aspect, "width": width, "height": height, "steps": steps,
            "seeds": seeds, "guidance_scale": 0.0, "upload_limit": upload_limit, "loras": loras or [],
            "enhance": enhance}


def consecutive_seeds(seed: int, count: int) -> list[int]:
    return [(seed + offset) % (MAX_SEED + 1) for offset in range(count)]


def check_prompt_text(prompt: str) -> str:
    """The prompt stripped, or a refusal that needs no I/O."""
    prompt = prompt.strip()
    if not prompt:
        raise UserFacingError(Text("imagine.empty"))
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserFacingError(Text("imagine.too_many_chars", count=len(prompt), limit=MAX_PROMPT_CHARS))
    return prompt


class ImagineService:
    def __init__(self, store: JobStore, moderation: ModerationStore, rules: RequestRules, limits: UserLimits,
                 worker: WorkerPool, runner: JobRunner, library: LoraLibrary, status: StatusEdits,
                 positions: Positions, intake_concurrency: int = INTAKE_CONCURRENCY, members: MemberDefaults | None = None,
                 enhancer: EnhancerSettings = EnhancerSettings()):
        self.store = store
        self.moderation = moderation
        self.rules = rules
        self.limits = limits
        self.worker = worker  # counts a prompt's tokens
        self.runner = runner  # woken when a job is queued
        self.library = library  # the LoRAs a button's clicker may use now
        self.status = status  # the job's first position on its message
        self.positions = positions  # others' positions may move when a job is queued
        self._intake = asyncio.Semaphore(intake_concurrency)
        self._answers_first = AnswersFirst()  # the intake yields to interactions not yet answered
        self.members = members  # /settings: defaults (the cog merges them) and private results
        self.enhancer = enhancer  # PROMPT_ENHANCER

    def check_enhance(self, enhance: bool) -> None:
        """``enhance`` with PROMPT_ENHANCER=off is refused, not silently dropped."""
        if enhance and not self.enhancer.enabled:
            raise UserFacingError(Text("imagine.enhancer_off"))

    async def clean_prompt(self, prompt: str) -> str:
        prompt = check_prompt_text(prompt)
        if not self.worker.connected:
            return prompt  # the worker re-checks before generating; don't refuse (or wait) while it restarts
        try:
            tokens, limit = await self.worker.count_tokens(prompt, timeout=TOKEN_CHECK_TIMEOUT)
        except WorkerUnavailable:
            return prompt
        if tokens > limit:
            raise UserFacingError(Text("imagine.too_many_tokens", tokens=tokens, limit=limit))
        return prompt

    async def submit(self, interaction: discord.Interaction, prepare: PrepareParams, prompt: str | None = None) -> None:
        """Answer at once, then check and admit the job that `prepare` describes (see the module's docstring).

        `prompt`, when the caller has it, is checked before the answer (a refusal is then an ephemeral reply)."""
        if prompt is not None:
            check_prompt_text(prompt)
        self.rules.check_place(interaction)
        with self._answers_first.answering():
            private = self.members is not None and await self.members.wants_private(interaction.user.id)
            answer = await interaction.response.defer(thinking=True, ephemeral=private)
        try:
            async with self._intake:
                await self._answers_first.turn()
                # Discord names the "thinking…" message (the job's message) in its answer; asked for if not.
                message_id = answer.message_id if answer is not None else None
                if message_id is None:
                    message_id = (await interaction.original_response()).id
                params = await prepare()
                await self._answers_first.turn()
                if private:  # the job's messages go to the member alone (bot/jobs/delivery.py), in their language
                    params.update(private=True, locale=language_of(interaction))
                params.setdefault("locale", str(interaction.locale))  # the result's button labels (bot/views.py)
                job, position, paused = await self._admit(interaction, params, message_id)
        except Exception as error:  # noqa: BLE001 - every refusal (and any failure) is told to the member alone
            await refuse_privately(interaction, error)
            return
        self.runner.wake()
        if paused or position is not None:  # None: not waiting any more (a lane took it already)
            self.status.show_position(job, "paused" if paused else position,
                                      render.queued_text(job, position, paused=paused))
        await self.positions.refresh()

    async def _admit(self, interaction: discord.Interaction, params: dict,
                     message_id: int) -> tuple[Job, int | None, bool]:
        """The job queued (its caps checked inside the INSERT: bot/db/admission.py), its position, whether it waits
        for a paused guild; raises UserFacingError for a refusal."""
        params["prompt"] = await self.clean_prompt(params["prompt"])
        guild = await self.rules.check(interaction, params)
        self.check_enhance(bool(params.get("enhance")))
        if guild.seed_variance:  # the server's /mod variety, for its new jobs (0: the key stays out)
            params["seed_variance"] = guild.seed_variance
        caps = self.limits.caps(guild)
        new = NewJob(user_id=interaction.user.id, guild_id=interaction.guild_id, channel_id=channel_id_of(interaction),
                     params=params, interaction_id=interaction.id, interaction_token=interaction.token,
                     message_id=message_id)
        try:
            async with self.store.session() as session, session.begin():
                job_id = await admit(session, new, caps)
        except AdmissionRefused as refused:
            raise self.limits.refusal(refused, caps) from None
        job = await self.store.get(job_id)
        if job is None:  # rows are never deleted
            raise RuntimeError(f"job {job_id} vanished after its INSERT")
        position = await self.store.position(job)
        return job, position, guild.paused

    # -- the result's buttons ----------------------------------------------------------------------------------

    # Anyone in the channel may click a result's buttons: the new job is the clicker's, so its LoRAs are those of the
    # earlier job that the clicker may use now, each with its current file (LoraLibrary.for_rerun), never the stored paths.

    async def reroll(self, interaction: discord.Interaction, job_id: int) -> None:
        """Same prompt, size, steps and count; a new random seed."""
        async def params() -> dict:
            old = (await self.result(job_id)).params
            loras = await self.library.for_rerun(interaction.user.id, interaction.guild_id, old.get("loras") or [])
            return build_params(old["prompt"], old["aspect"], old["steps"],
                                consecutive_seeds(random_seed(), len(old["seeds"])), interaction.filesize_limit, loras,
                                enhance=bool(old.get("enhance")))

        await self.submit(interaction, params)

    async def vary(self, interaction: discord.Interaction, job_id: int) -> None:
        """Same prompt and settings, as many images with independent new seeds."""
        async def params() -> dict:
            old = (await self.result(job_id)).params
            loras = await self.library.for_rerun(interaction.user.id, interaction.guild_id, old.get("loras") or [])
            return build_params(old["prompt"], old["aspect"], old["steps"], [random_seed() for _ in old["seeds"]],
                                interaction.filesize_limit, loras, enhance=bool(old.get("enhance")))

        await self.submit(interaction, params)

    async def check_delete(self, interaction: discord.Interaction, job_id: int) -> None:
        """A result may be removed by its requester or a moderator (whose delete is audited)."""
        job = await self.result(job_id)
        if interaction.user.id == job.user_id:
            return
        if not can_delete_results(interaction, await self.moderation.settings(interaction.guild_id)):
            raise UserFacingError(Text("imagine.delete_not_yours"))
        await self.moderation.audit(interaction.guild_id or 0, interaction.user.id, "delete-image",
                                    f"job #{job.id} of <@{job.user_id}>")

    async def result(self, job_id: int) -> Job:
        job = await self.store.get(job_id)
        if job is None:
            raise UserFacingError(Text("imagine.unknown_job"))
        return job
