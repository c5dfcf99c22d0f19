"""/lora: pick which adapter your images use."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from ..errors import UserFacingError

if TYPE_CHECKING:
    from ..client import ZImageBot


class LoraCog(commands.GroupCog, group_name="lora", group_description="Your LoRA adapters"):
    def __init__(self, bot: ZImageBot):
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage("LoRAs belong to a server: use /lora in a server channel.")
        return True

    @app_commands.command(name="use", description="Use a LoRA in your next /imagine images")
    @app_commands.describe(name="One of your LoRAs (or one shared here)", scale="Strength, 0-2 (default 0.8)")
    async def use(self, interaction: discord.Interaction, name: str,
                  scale: app_commands.Range[float, 0.0, 2.0] = 0.8) -> None:
        usable = {lora.name: lora for lora in await self.bot.loras.usable_by(interaction.user.id, interaction.guild_id)}
        lora = usable.get(name.strip().lower())
        if lora is None:
            raise UserFacingError(f"You have no LoRA `{name}` here (a LoRA becomes usable at its first checkpoint). "
                                  "See `/lora list`.")
        await self.bot.loras.use(interaction.user.id, interaction.guild_id, lora.id, scale)
        await interaction.response.send_message(
            f"Your /imagine images now use `{lora.name}` (step {lora.steps}) at scale {scale:g}. `/lora clear` to stop.",
            ephemeral=True)

    @use.autocomplete("name")
    async def use_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        loras = await self.bot.loras.usable_by(interaction.user.id, interaction.guild_id)
        return [app_commands.Choice(name=f"{lora.name} (step {lora.steps})", value=lora.name)
                for lora in loras if current.lower() in lora.name][:25]

    @app_commands.command(name="list", description="Your LoRAs and those shared in this server")
    async def list(self, interaction: discord.Interaction) -> None:
        loras = await self.bot.loras.usable_by(interaction.user.id, interaction.guild_id)
        picked = {lora.id: scale for lora, scale in await self.bot.loras.selection(interaction.user.id, interaction.guild_id)}
        lines = [f"`{lora.name}` step {lora.steps}, rank {lora.rank}"
                 + (" (yours)" if lora.owner_id == interaction.user.id else f" (shared by <@{lora.owner_id}>)")
                 + (f" — in use at {picked[lora.id]:g}" if lora.id in picked else "") for lora in loras]
        await interaction.response.send_message("\n".join(lines) or "You have no LoRAs here yet: train one with `/train`.",
                                                ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="clear", description="Stop using LoRAs: back to the base model")
    async def clear(self, interaction: discord.Interaction) -> None:
        cleared = await self.bot.loras.clear(interaction.user.id, interaction.guild_id)
        text = "Your /imagine images use the base model again." if cleared else "You were not using a LoRA."
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ZImageBot) -> None:
    await bot.add_cog(LoraCog(bot))
