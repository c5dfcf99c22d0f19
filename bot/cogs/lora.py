"""/lora: the LoRA library. Import, list, inspect, share, rename, delete, export, and stack adapters for /imagine.

The rules (names, privacy, who may do what) and the files are bot/lora_library/; this cog parses
options, calls the library and words the replies.
"""

from __future__ import annotations

import io
from datetime import UTC

import discord
from discord import app_commands
from discord.ext import commands

from ..db.models import Lora
from ..db.moderation import ModerationStore
from ..i18n import Text, tr
from ..interaction_ids import guild_id_of
from ..lora_library import LoraImporter, LoraLibrary, clean_name, public_origin
from ..permissions import is_moderator
from ..services import services_of
from ..settings import Settings


@app_commands.guild_only()  # Discord hides it in DMs; interaction_check still refuses them
class LoraCog(commands.GroupCog, group_name="lora", group_description="Your LoRA adapters"):
    def __init__(self, settings: Settings, library: LoraLibrary, importer: LoraImporter, moderation: ModerationStore):
        self.settings = settings      # the link lifetime /lora export states
        self.library = library
        self.importer = importer
        self.moderation = moderation  # who moderates: they may delete any LoRA
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage(Text("lora.dm"))
        return True

    async def own_autocomplete(self, interaction: discord.Interaction, current: str):
        return await self.library.choices(interaction.user.id, interaction.guild_id, current, own=True)

    async def usable_autocomplete(self, interaction: discord.Interaction, current: str):
        return await self.library.choices(interaction.user.id, interaction.guild_id, current)

    # -- import ----------------------------------------------------------------------------------------------

    @app_commands.command(name="import", description="Import a LoRA (.safetensors) from a file or an https link")
    @app_commands.describe(name="Name in this server (lowercase, digits, - and _)", file="A .safetensors LoRA file",
                           url="An https link to a .safetensors LoRA, for files over the upload limit")
    async def import_(self, interaction: discord.Interaction, name: app_commands.Range[str, 2, 32],
                      file: discord.Attachment | None = None, url: str | None = None) -> None:
        name = clean_name(name)
        async with self.importer.slot(interaction.user.id):
            await self.importer.check(guild_id_of(interaction), interaction.user.id, name, file, url)
            await interaction.response.defer(ephemeral=True, thinking=True)
            lora, result = await self.importer.run(interaction.id, guild_id_of(interaction), interaction.user.id, name,
                                                   file, url)
        await interaction.edit_original_response(content=tr(
            interaction, "lora.imported", name=lora.name, format=result.format, rank=result.rank, alpha=result.alpha,
            layers=result.layers, mb=result.size / 1e6))

    # -- library ---------------------------------------------------------------------------------------------

    @app_commands.command(name="list", description="Your LoRAs and those shared in this server")
    async def list(self, interaction: discord.Interaction) -> None:
        me = interaction.user.id
        lines = [tr(interaction, "lora.line", name=lora.name, label=label(interaction, lora), rank=lora.rank)
                 + (tr(interaction, "lora.yours_shared" if lora.shared else "lora.yours_private") if lora.owner_id == me
                    else tr(interaction, "lora.shared_by", owner=lora.owner_id))
                 + (tr(interaction, "lora.in_use", scale=scale) if scale is not None else "")
                 for lora, scale in await self.library.listing(me, guild_id_of(interaction))]
        while len(text := "\n".join(lines)) > 1900:  # Discord's 2000-character limit
            lines = lines[:-2] + [tr(interaction, "lora.more")]
        await interaction.response.send_message(text or tr(interaction, "lora.none"), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="info", description="Details of a LoRA, with its last sample image")
    @app_commands.autocomplete(name=usable_autocomplete)
    @app_commands.describe(name="One of your LoRAs or one shared here")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.library.usable(interaction.user.id, guild_id_of(interaction), name)
        details, sample = await self.library.details(lora)
        where = tr(interaction, "lora.info_shared" if lora.shared else "lora.info_private")
        lines = [tr(interaction, "lora.info_title", name=lora.name, owner=lora.owner_id, where=where),
                 tr(interaction, "lora.info_rank", rank=details.get("rank", lora.rank))
                 + (tr(interaction, "lora.info_alpha", alpha=details["alpha"]) if details.get("alpha") else "")
                 + (tr(interaction, "lora.info_size", layers=details["layers"], mb=details["size"] / 1e6)
                    if "size" in details else ""),
                 tr(interaction, "lora.info_trained", step=lora.steps) if lora.source is None
                 else tr(interaction, "lora.info_imported", origin=public_origin(lora.origin), source=lora.source),
                 tr(interaction, "lora.info_created", when=f"<t:{int(lora.created_at.replace(tzinfo=UTC).timestamp())}:R>")]
        files = [discord.File(io.BytesIO(sample), filename=f"{lora.name}_sample.png")] if sample else []
        await interaction.response.send_message("\n".join(lines), files=files, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="share", description="Let everyone in this server use one of your LoRAs")
    @app_commands.autocomplete(name=own_autocomplete)
    async def share(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.library.share(interaction.user.id, guild_id_of(interaction), name)
        await interaction.response.send_message(tr(interaction, "lora.shared", name=lora.name), ephemeral=True)

    @app_commands.command(name="unshare", description="Make one of your LoRAs private again")
    @app_commands.autocomplete(name=own_autocomplete)
    async def unshare(self, interaction: discord.Interaction, name: str) -> None:
        lora, dropped = await self.library.unshare(interaction.user.id, guild_id_of(interaction), name)
        text = (tr(interaction, "lora.unshared_dropped", name=lora.name, count=dropped) if dropped
                else tr(interaction, "lora.unshared", name=lora.name))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="rename", description="Rename one of your LoRAs")
    @app_commands.autocomplete(name=own_autocomplete)
    async def rename(self, interaction: discord.Interaction, name: str, new_name: app_commands.Range[str, 2, 32]) -> None:
        lora, new_name = await self.library.rename(interaction.user.id, guild_id_of(interaction), name, new_name)
        await interaction.response.send_message(tr(interaction, "lora.renamed", old=lora.name, new=new_name), ephemeral=True)

    @app_commands.command(name="delete", description="Delete a LoRA and its files (its owner or a moderator)")
    @app_commands.autocomplete(name=usable_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        me, guild_id = interaction.user.id, guild_id_of(interaction)
        moderator = is_moderator(interaction, await self.moderation.settings(guild_id))
        lora = await self.library.delete(me, guild_id, name, moderator=moderator)
        if lora.owner_id != me:
            await self.moderation.audit(guild_id, me, "lora-delete", lora.name, f"owner {lora.owner_id}")
        await interaction.response.send_message(tr(interaction, "lora.deleted", name=lora.name), ephemeral=True)
        await self.library.remove_files(lora)  # after answering: may be slow

    @app_commands.command(name="export", description="Download links for a LoRA: diffusers and ComfyUI formats")
    @app_commands.autocomplete(name=usable_autocomplete)
    async def export(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.library.usable(interaction.user.id, guild_id_of(interaction), name)
        await self.importer.check_export(guild_id_of(interaction), interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        (ours, ours_link), (comfy, comfy_link) = await self.library.export(lora)
        days = self.settings.link_ttl / 86400
        await interaction.edit_original_response(content=tr(
            interaction, "lora.export", name=lora.name, days=days, ours=ours.name, ours_link=ours_link, comfy=comfy.name,
            comfy_link=comfy_link))

    # -- using -----------------------------------------------------------------------------------------------

    @app_commands.command(name="use", description="Add a LoRA to your next /imagine images (several can be stacked)")
    @app_commands.autocomplete(name=usable_autocomplete)
    @app_commands.describe(name="One of your LoRAs (or one shared here)", scale="Strength, 0-2 (default 0.8)")
    async def use(self, interaction: discord.Interaction, name: str,
                  scale: app_commands.Range[float, 0.0, 2.0] | None = None) -> None:
        stack = await self.library.use(interaction.user.id, guild_id_of(interaction), name, scale)
        using = " + ".join(tr(interaction, "lora.stack_item", name=item.name, scale=s) for item, s in stack)
        await interaction.response.send_message(tr(interaction, "lora.using", stack=using), ephemeral=True)

    @app_commands.command(name="clear", description="Stop using one LoRA, or all of them (back to the base model)")
    @app_commands.describe(name="Only this LoRA (default: all)")
    async def clear(self, interaction: discord.Interaction, name: str | None = None) -> None:
        me, guild = interaction.user.id, guild_id_of(interaction)
        if name is None:
            cleared = await self.library.clear(me, guild)
            text = tr(interaction, "lora.cleared" if cleared else "lora.was_not_using")
        else:
            name, rest = await self.library.clear_one(me, guild, name)
            still = ", ".join(f"`{other}`" for other in rest)
            text = (tr(interaction, "lora.stopped_one", name=name, rest=still) if still
                    else tr(interaction, "lora.stopped_last", name=name))
        await interaction.response.send_message(text, ephemeral=True)

    @clear.autocomplete("name")
    async def clear_autocomplete(self, interaction: discord.Interaction, current: str):
        picked = await self.library.picked(interaction.user.id, interaction.guild_id)
        return [app_commands.Choice(name=lora.name, value=lora.name) for lora, _ in picked if current.lower() in lora.name]


def label(interaction: discord.Interaction, lora: Lora) -> str:
    """Where a LoRA comes from, in a few words (bot/lora_library's `label`, in the member's language)."""
    if lora.source is None:
        return tr(interaction, "lora.step", step=lora.steps)
    return tr(interaction, "lora.imported_from", source=lora.source)


async def setup(bot: commands.Bot) -> None:
    services = services_of(bot)
    await bot.add_cog(LoraCog(services.settings, services.library, services.importer, services.moderation))
