"""Turning an /imagine request (or a button click) into a queued job.

Shared by the slash command and the reroll / variations buttons, so both get the same
checks: prompt, queue limit, rate limit, and the model's token limit (asked of the worker).
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import TYPE_CHECKING

import discord

from .errors import UserFacingError
from .jobs import render
from .sizes import ASPECT_SIZES
from .worker.client import WorkerUnavailable

if TYPE_CHECKING:
    from .client import ZImageBot

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
    def __init__(self, bot: ZImageBot):
        self.bot = bot

    async def selected_loras(self, user_id: int, guild_id: int | None, override: str | None = None) -> list[dict]:
        """The adapters picked with /lora use (or only `override`, a LoRA name, at the default scale), as
        worker params. The name carries the step and a digest of the path, so every file version (a newer
        checkpoint, a re-import reusing an id) is a new adapter to the worker's cache, not a stale hit."""
        if override is None:
            picked = await self.bot.loras.selection(user_id, guild_id)
        else:
            usable = await self.bot.loras.usable_by(user_id, guild_id) if guild_id else []
            picked = [(lora, self.bot.settings.lora_default_scale) for lora in usable if lora.name == override.strip().lower()]
            if not picked:
                raise UserFacingError(f"You have no LoRA `{override}` here (yours, or one shared in this server).")
        self._check_limits(picked)
        return [{"name": f"lora{lora.id}-s{lora.steps}-{hashlib.sha1(lora.path.encode()).hexdigest()[:8]}",
                 "path": lora.path, "scale": scale, "label": lora.name} for lora, scale in picked]

    def _check_limits(self, picked: list) -> None:
        """A stack picked before LORA_MAX_STACK or LORA_MAX_RANK were lowered: say so instead of failing in the worker."""
        settings = self.bot.settings
        if len(picked) > settings.lora.max_stack:
            raise UserFacingError(f"You use {len(picked)} LoRAs; this bot now allows {settings.lora.max_stack} at once. "
                                  "Drop some with `/lora clear`.")
        for lora, _ in picked:
            if lora.rank and lora.rank > settings.lora.slot_rank:
                raise UserFacingError(f"`{lora.name}` has rank {lora.rank}; this bot now accepts LoRAs up to rank "
                                      f"{settings.lora.slot_rank}. Stop using it with `/lora clear {lora.name}`.")

    async def clean_prompt(self, prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise UserFacingError("Your prompt is empty. Describe the image you want, e.g. `/imagine a red fox in snow`.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserFacingError(f"Your prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
        try:
            await self.bot.worker.wait_connected(TOKEN_CHECK_TIMEOUT / 2)
            tokens, limit = await self.bot.worker.count_tokens(prompt, timeout=TOKEN_CHECK_TIMEOUT / 2)
        except WorkerUnavailable:
            return prompt  # the worker re-checks before generating; don't refuse while it restarts
        if tokens > limit:
            raise UserFacingError(f"Your prompt is {tokens} tokens long; the model reads at most {limit}. Please shorten it.")
        return prompt

    async def submit(self, interaction: discord.Interaction, params: dict) -> None:
        """Checks, then defer, queue and show the position. Raises UserFacingError before deferring."""
        user_id = interaction.user.id
        params["prompt"] = await self.clean_prompt(params["prompt"])
        guild = await self.bot.rules.check(interaction, params)
        await self.bot.limits.check_queue(user_id, guild)
        await self.bot.limits.take_request(user_id, guild)
        await interaction.response.defer(thinking=True)
        job = await self.bot.store.enqueue(
            user_id=user_id, guild_id=interaction.guild_id, channel_id=interaction.channel_id,
            params=params, interaction_id=interaction.id, interaction_token=interaction.token)
        position = await self.bot.store.position(job)
        try:
            message = await interaction.edit_original_response(
                content=render.queued_text(job, position, paused=guild.paused))
            job.message_id = message.id
            await self.bot.store.set_message(job.id, message.id)
        except discord.HTTPException as exc:
            # The job is safely queued; its result will be posted to the channel instead.
            log.warning("job %s: could not show its queue position: %s", job.id, exc)
        self.bot.runner.wake()
