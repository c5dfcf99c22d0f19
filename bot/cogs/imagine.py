"""/imagine: prompt in, images out. Options left out take the member's /settings (bot/member_settings.py)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..imagine import MAX_PROMPT_CHARS, MAX_SEED, ImagineService, build_params, consecutive_seeds, random_seed
from ..lora_library import LoraLibrary
from ..member_settings import Chosen, merge
from ..services import services_of
from ..sizes import ASPECT_SIZES

ASPECT_CHOICES = [
    app_commands.Choice(name=f"{aspect} ({width}×{height})", value=aspect)
    for aspect, (width, height) in ASPECT_SIZES.items()
]


class ImagineCog(commands.Cog):
    def __init__(self, service: ImagineService, library: LoraLibrary):
        self.service = service  # not `imagine`: that is the command
        self.library = library  # the member's LoRAs

    async def lora_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await self.library.choices(interaction.user.id, interaction.guild_id, current)

    @app_commands.command(name="imagine", description="Generate images from a text prompt with Z-Image-Turbo")
    @app_commands.describe(
        prompt="What to draw",
        aspect="Aspect ratio (about one megapixel)",
        seed="Seed for reproducible images (random when left out)",
        count="How many images (1-4)",
        steps="Denoising steps (8 is what Turbo was made for)",
        lora="A LoRA for this image only, instead of those picked with /lora use",
    )
    @app_commands.choices(aspect=ASPECT_CHOICES)
    @app_commands.autocomplete(lora=lora_autocomplete)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        aspect: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        steps: app_commands.Range[int, 1, 16] | None = None,
        lora: str | None = None,
    ) -> None:
        first_seed = random_seed() if seed is None else seed

        async def params() -> dict:  # after the interaction is answered: it reads the database
            chosen = await self._chosen(interaction, aspect, steps, count)
            loras = await self.library.for_request(interaction.user.id, interaction.guild_id, lora)
            return build_params(prompt, chosen.aspect, chosen.steps, consecutive_seeds(first_seed, chosen.count),
                                interaction.filesize_limit, loras)

        await self.service.submit(interaction, params, prompt=prompt)

    async def _chosen(self, interaction: discord.Interaction, aspect: str | None, steps: int | None,
                      count: int | None) -> Chosen:
        """The options given, else the member's defaults, else the bot's."""
        if self.service.members is None:
            return merge(None, aspect=aspect, steps=steps, count=count)
        return await self.service.members.choose(interaction.user.id, interaction.guild_id, aspect=aspect, steps=steps,
                                                 count=count)


async def setup(bot: commands.Bot) -> None:
    services = services_of(bot)
    await bot.add_cog(ImagineCog(services.imagine, services.library))
