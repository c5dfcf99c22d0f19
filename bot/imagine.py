"""Turning an /imagine request (or a button click) into a queued job.

Shared by the slash command and the reroll / variations buttons, so both get the same
checks: prompt, queue limit, rate limit, and the model's token limit (asked of the worker).
"""

from __future__ import annotations

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
