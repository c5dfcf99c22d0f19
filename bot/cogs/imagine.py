"""/imagine: prompt in, images out. Options left out take the member's /settings (bot/member_settings.py)."""

from __future__ import annotations

from pathlib import Path

import discord
from discord import app_commands
from discord.ext import commands

from ..errors import UserFacingError
from ..i18n import Text
from ..image_prompt import DEFAULT_STRENGTH, prepare_source, source_params
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
    def __init__(self, service: ImagineService, library: LoraLibrary, inputs_dir: Path):
        self.service = service  # not `imagine`: that is the command
        self.library = library  # the member's LoRAs
        self.inputs_dir = inputs_dir  # image prompts, as the worker gets them (bot/image_prompt.py)

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
        image="A picture to start from (JPEG, PNG or WebP)",
        strength="How much of the picture is redrawn with image (0.1-1.0, default 0.6)",
        enhance="Rewrite the prompt in detail first (a different rewrite per image)",
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
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.1, 1.0] | None = None,
        enhance: bool = False,
    ) -> None:
        self.service.check_enhance(enhance)  # PROMPT_ENHANCER=off: refused at once, privately
        if aspect not in ASPECT_SIZES:
            aspect = None  # an image prompt takes the bucket closest to its picture; else the member's default
        if strength is not None and image is None:
            raise UserFacingError(Text("image_prompt.strength_without_image"))
        first_seed = random_seed() if seed is None else seed

        async def params() -> dict:  # after the interaction is answered: it reads the database (and the upload)
            chosen = await self._chosen(interaction, aspect, steps, count)
            loras = await self.library.for_request(interaction.user.id, interaction.guild_id, lora)
            seeds = consecutive_seeds(first_seed, chosen.count)
            if image is None:
                return build_params(prompt, chosen.aspect, chosen.steps, seeds, interaction.filesize_limit, loras,
                                    enhance=enhance)
            bucket, source = await prepare_source(image, self.inputs_dir, aspect)
            made = build_params(prompt, bucket, chosen.steps, seeds, interaction.filesize_limit, loras, enhance=enhance)
            made["source"] = source_params(source, DEFAULT_STRENGTH if strength is None else strength)
            return made

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
    await bot.add_cog(ImagineCog(services.imagine, services.library, services.settings.data_dir / "inputs"))
