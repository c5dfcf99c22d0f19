"""/train: a character LoRA from a zip of photos, checkpoints posted back to the channel."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..interaction_ids import channel_id_of
from ..lora_library import clean_name
from ..services import services_of
from ..training.service import TrainService


class TrainCog(commands.Cog):
    def __init__(self, training: TrainService):
        self.training = training

    @app_commands.command(name="train", description="Train a LoRA of a person or style from a zip of photos")
    @app_commands.guild_only()  # Discord hides it in DMs; check_request still refuses them
    @app_commands.describe(name="Name of the LoRA (lowercase, digits, - and _)", photos="A .zip of 10+ photos",
                           caption="Caption for every image (default: 'a photo of <name>'); a .txt beside an image overrides it",
                           steps="Training steps (default from the server settings, usually 4000)",
                           url="An https link to a zip, for archives over the upload limit")
    async def train(self, interaction: discord.Interaction, name: app_commands.Range[str, 2, 32],
                    photos: discord.Attachment | None = None, caption: app_commands.Range[str, 1, 300] | None = None,
                    steps: app_commands.Range[int, 1, 20000] | None = None, url: str | None = None) -> None:
        name = clean_name(name)
        await self.training.check_request(interaction, name, photos, url)
        # Intake can take a while: answer now (privately: bad archives are the member's business).
        await interaction.response.defer(ephemeral=True, thinking=True)
        queued = await self.training.enqueue(interaction, name, photos, url, caption, steps)
        await interaction.edit_original_response(content=queued.summary)
        message = await interaction.followup.send(queued.status, ephemeral=False, wait=True)
        await self.training.announce(queued, message.id, channel_id_of(interaction))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(TrainCog(services_of(bot).training))
