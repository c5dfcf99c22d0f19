"""/lora: the LoRA library. Import, list, inspect, share, rename, delete, export, and stack adapters for /imagine.

Privacy: a private LoRA exists only for its owner. Every name a member types or sees goes through
LoraStore.usable_by / find_usable, so someone else's private LoRA answers like a missing one.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands
from sqlalchemy.exc import IntegrityError

from zimage_protocol.constants import LORA_FILE

from .. import lora_import as lib
from ..attachments import save_attachment
from ..errors import UserFacingError
from ..permissions import is_moderator
from ..training import DownloadError, download_zip
from ..training.service import NAME

if TYPE_CHECKING:
    from ..client import ZImageBot
    from ..db.models import Lora

NAME_RULES = "Names are 2-32 characters: lowercase letters, digits, `-` and `_`, e.g. `ada-lovelace`."


def kind(lora: Lora) -> str:
    return f"step {lora.steps}" if lora.source is None else f"imported ({lora.source})"


def missing(name: str) -> UserFacingError:
    return UserFacingError(f"You have no LoRA `{name}` here (yours, or one shared in this server). See `/lora list`.")


async def usable_choices(bot: ZImageBot, interaction: discord.Interaction, current: str,
                         own: bool = False) -> list[app_commands.Choice[str]]:
    """Autocomplete over the LoRAs the member may use (also /imagine's `lora`), or only their own."""
    loras = await bot.loras.usable_by(interaction.user.id, interaction.guild_id) if interaction.guild_id else []
    return [app_commands.Choice(name=f"{lora.name} ({kind(lora)})", value=lora.name) for lora in loras
            if current.lower() in lora.name and (not own or lora.owner_id == interaction.user.id)][:25]


def remove_files(path: str | None, data_dir: Path, lora_id: int) -> None:
    """Blocking: the LoRA's own folder (an import's, or the whole /train job folder) and its exports."""
    library, training = (data_dir / "loras").resolve(), (data_dir / "training").resolve()
    doomed = [library / "exports" / str(lora_id)]
    if path:
        file = Path(path).resolve()
        for root in (library, training):
            if file.is_relative_to(root) and len(file.relative_to(root).parts) > 1:
                doomed.append(root / file.relative_to(root).parts[0])
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)


def export_files(lora: Lora, data_dir: Path, max_header: int) -> tuple[Path, Path]:
    """Blocking: `<name>.safetensors` (ours, diffusers) and `<name>_comfyui.safetensors` in exports/<id>/."""
    folder = data_dir / "loras" / "exports" / str(lora.id)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ours, comfy = folder / f"{lora.name}.safetensors", folder / f"{lora.name}_comfyui.safetensors"
    try:
        os.link(lora.path, ours)  # no copy; survives the trainer pruning its checkpoint
    except OSError:
        shutil.copyfile(lora.path, ours)
    lib.export_comfyui(ours, comfy, max_header=max_header)
    return ours, comfy


class LoraCog(commands.GroupCog, group_name="lora", group_description="Your LoRA adapters"):
    def __init__(self, bot: ZImageBot):
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage("LoRAs belong to a server: use /lora in a server channel.")
        return True

    async def usable(self, interaction: discord.Interaction, name: str) -> Lora:
        lora = await self.bot.loras.find_usable(interaction.user.id, interaction.guild_id, name.strip().lower())
        if lora is None:
            raise missing(name)
        return lora

    async def owned(self, interaction: discord.Interaction, name: str) -> Lora:
        lora = await self.usable(interaction, name)
        if lora.owner_id != interaction.user.id:
            raise UserFacingError(f"`{lora.name}` belongs to <@{lora.owner_id}>; only its owner can do that.")
        return lora

    async def own_autocomplete(self, interaction: discord.Interaction, current: str):
        return await usable_choices(self.bot, interaction, current, own=True)

    async def usable_autocomplete(self, interaction: discord.Interaction, current: str):
        return await usable_choices(self.bot, interaction, current)

    # -- import ----------------------------------------------------------------------------------------------

    @app_commands.command(name="import", description="Import a LoRA (.safetensors) from a file or an https link")
    @app_commands.describe(name="Name in this server (lowercase, digits, - and _)", file="A .safetensors LoRA file",
                           url="An https link to a .safetensors LoRA, for files over the upload limit")
    async def import_(self, interaction: discord.Interaction, name: app_commands.Range[str, 2, 32],
                      file: discord.Attachment | None = None, url: str | None = None) -> None:
        name, max_bytes = name.strip().lower(), self.bot.settings.lora_max_bytes
        if not NAME.match(name):
            raise UserFacingError(NAME_RULES)
        if (file is None) == (url is None):
            raise UserFacingError("Attach a .safetensors LoRA as `file`, or give an https `url` to one (not both).")
        if file is not None and file.filename.lower().endswith(lib.PICKLE_SUFFIXES):
            raise UserFacingError(f"`{file.filename}` is a pickle file, which can run code when loaded: "
                                  "only .safetensors files are accepted.")
        if file is not None and not file.filename.lower().endswith(".safetensors"):
            raise UserFacingError(f"`{file.filename}` is not a .safetensors file.")
        if file is not None and file.size > max_bytes:
            raise UserFacingError(f"The file is {file.size >> 20} MiB; the limit is {max_bytes >> 20} MiB.")
        if await self.bot.loras.by_name(interaction.guild_id, name):
            raise UserFacingError(f"A LoRA named `{name}` already exists in this server; pick another name.")
        await self.bot.rules.check_not_banned(interaction.guild_id, interaction.user.id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        lora, result = await self._import(interaction, name, file, url, max_bytes)
        await interaction.edit_original_response(content=(
            f"✅ Imported `{lora.name}` ({result.format} format): rank {result.rank}, alpha {result.alpha:g}, "
            f"{result.layers} layers, {result.size / 1e6:.1f} MB. It is private: `/lora use {lora.name}` to use it, "
            f"`/lora share {lora.name}` to let this server use it."))

    async def _import(self, interaction: discord.Interaction, name: str, file, url: str | None, max_bytes: int):
        settings, done = self.bot.settings, False
        incoming = settings.data_dir / "loras" / "incoming" / f"{interaction.id}.safetensors"
        folder = settings.data_dir / "loras" / secrets.token_hex(8)
        try:
            if file is not None:
                await save_attachment(file.url, incoming, max_bytes)
            else:
                await download_zip(url, incoming, max_bytes=max_bytes, timeout=settings.lora_download_timeout)
            layers = await asyncio.to_thread(lambda: lib.expected_layers(lib.transformer_config(settings.zimage_model,
                                                                                                settings.data_dir)))
            result = await asyncio.to_thread(lib.convert, incoming, folder / LORA_FILE, layers, max_bytes=max_bytes,
                                             max_header=settings.lora_max_header_bytes, max_rank=settings.lora.max_rank)
            lora = await self.bot.loras.create(guild_id=interaction.guild_id, owner_id=interaction.user.id, name=name,
                                               rank=result.rank, job_id=None, path=str(folder / LORA_FILE),
                                               source=result.format, origin=(file.filename if file else url)[:500])
            done = True
            return lora, result
        except (lib.LoraImportError, DownloadError) as exc:
            raise UserFacingError(str(exc)) from None
        except IntegrityError:
            raise UserFacingError(f"A LoRA named `{name}` was just created; pick another name.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UserFacingError(f"Could not fetch the file: {exc}") from None
        finally:
            await asyncio.to_thread(incoming.unlink, True)
            if not done:
                await asyncio.to_thread(shutil.rmtree, folder, True)

    # -- library ---------------------------------------------------------------------------------------------

    @app_commands.command(name="list", description="Your LoRAs and those shared in this server")
    async def list(self, interaction: discord.Interaction) -> None:
        me = interaction.user.id
        loras = await self.bot.loras.usable_by(me, interaction.guild_id)
        picked = {lora.id: scale for lora, scale in await self.bot.loras.selection(me, interaction.guild_id)}
        lines = [f"`{lora.name}` {kind(lora)}, rank {lora.rank}"
                 + (f" (yours, {'shared' if lora.shared else 'private'})" if lora.owner_id == me
                    else f" (shared by <@{lora.owner_id}>)")
                 + (f" — in use at {picked[lora.id]:g}" if lora.id in picked else "") for lora in loras]
        while len(text := "\n".join(lines)) > 1900:  # Discord's 2000-character limit
            lines = lines[:-2] + ["… and more: type a name in `/lora info`."]
        await interaction.response.send_message(
            text or "You have no LoRAs here yet: train one with `/train` or bring one with `/lora import`.",
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="info", description="Details of a LoRA, with its last sample image")
    @app_commands.autocomplete(name=usable_autocomplete)
    @app_commands.describe(name="One of your LoRAs or one shared here")
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.usable(interaction, name)
        details, sample = await asyncio.to_thread(_read_details, lora.path, self.bot.settings.lora_max_header_bytes)
        lines = [f"**{lora.name}** — owner <@{lora.owner_id}>, {'shared in this server' if lora.shared else 'private'}",
                 f"rank {details.get('rank', lora.rank)}" + (f", alpha {details['alpha']:g}" if details.get("alpha") else "")
                 + (f", {details['layers']} layers, {details['size'] / 1e6:.1f} MB" if "size" in details else ""),
                 f"trained here: step {lora.steps}" if lora.source is None
                 else f"imported from `{lora.origin}` ({lora.source} format)",
                 f"created <t:{int(lora.created_at.replace(tzinfo=UTC).timestamp())}:R>"]
        files = [discord.File(io.BytesIO(sample), filename=f"{lora.name}_sample.png")] if sample else []
        await interaction.response.send_message("\n".join(lines), files=files, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="share", description="Let everyone in this server use one of your LoRAs")
    @app_commands.autocomplete(name=own_autocomplete)
    async def share(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.owned(interaction, name)
        await self.bot.loras.set_shared(lora.id, True)
        await interaction.response.send_message(f"`{lora.name}` is now shared: everyone here can use it.", ephemeral=True)

    @app_commands.command(name="unshare", description="Make one of your LoRAs private again")
    @app_commands.autocomplete(name=own_autocomplete)
    async def unshare(self, interaction: discord.Interaction, name: str) -> None:
        lora = await self.owned(interaction, name)
        dropped = await self.bot.loras.set_shared(lora.id, False)
        await interaction.response.send_message(
            f"`{lora.name}` is private again" + (f" ({dropped} member(s) stopped using it)." if dropped else "."),
            ephemeral=True)

    @app_commands.command(name="rename", description="Rename one of your LoRAs")
    @app_commands.autocomplete(name=own_autocomplete)
    async def rename(self, interaction: discord.Interaction, name: str, new_name: app_commands.Range[str, 2, 32]) -> None:
        lora, new_name = await self.owned(interaction, name), new_name.strip().lower()
        if not NAME.match(new_name):
            raise UserFacingError(NAME_RULES)
        try:
            await self.bot.loras.rename(lora.id, new_name)
        except IntegrityError:
            raise UserFacingError(f"A LoRA named `{new_name}` already exists in this server; pick another name.") from None
        await interaction.response.send_message(f"`{lora.name}` is now `{new_name}`.", ephemeral=True)

    @app_commands.command(name="delete", description="Delete a LoRA and its files (its owner or a moderator)")
    @app_commands.autocomplete(name=usable_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        name, me = name.strip().lower(), interaction.user.id
        moderator = is_moderator(interaction, await self.bot.moderation.settings(interaction.guild_id))
        lora = await self.bot.loras.by_name(interaction.guild_id, name)
        if lora is None or (lora.owner_id != me and not moderator and not (lora.shared and lora.path)):
            raise missing(name)
        if lora.owner_id != me and not moderator:
            raise UserFacingError(f"`{lora.name}` belongs to <@{lora.owner_id}>; only its owner or a moderator can delete it.")
        if await self.bot.loras.training_active(lora.id):
            raise UserFacingError(f"`{lora.name}` is still training: cancel its job with `/cancel` first.")
        await self.bot.loras.delete(lora.id)
        if lora.owner_id != me:
            await self.bot.moderation.audit(interaction.guild_id, me, "lora-delete", lora.name, f"owner {lora.owner_id}")
        await interaction.response.send_message(f"Deleted `{lora.name}` and its files.", ephemeral=True)
        await asyncio.to_thread(remove_files, lora.path, self.bot.settings.data_dir, lora.id)  # after answering: may be slow

    @app_commands.command(name="export", description="Download links for a LoRA: diffusers and ComfyUI formats")
    @app_commands.autocomplete(name=usable_autocomplete)
    async def export(self, interaction: discord.Interaction, name: str) -> None:
        lora, signer = await self.usable(interaction, name), self.bot.signer
        if signer is None:
            raise UserFacingError("File links are not available on this bot.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            ours, comfy = await asyncio.to_thread(export_files, lora, self.bot.settings.data_dir,
                                                  self.bot.settings.lora_max_header_bytes)
        except (OSError, lib.LoraImportError) as exc:
            raise UserFacingError(f"Could not export `{lora.name}`: {exc}") from None
        days = self.bot.settings.link_ttl / 86400
        await interaction.edit_original_response(content=(
            f"`{lora.name}` (links expire in {days:g} days):\n• diffusers: [{ours.name}]({signer.link(ours)})\n"
            f"• ComfyUI / ai-toolkit: [{comfy.name}]({signer.link(comfy)})"))

    # -- using -----------------------------------------------------------------------------------------------

    @app_commands.command(name="use", description="Add a LoRA to your next /imagine images (several can be stacked)")
    @app_commands.autocomplete(name=usable_autocomplete)
    @app_commands.describe(name="One of your LoRAs (or one shared here)", scale="Strength, 0-2 (default 0.8)")
    async def use(self, interaction: discord.Interaction, name: str,
                  scale: app_commands.Range[float, 0.0, 2.0] | None = None) -> None:
        usable = {lora.name: lora for lora in await self.bot.loras.usable_by(interaction.user.id, interaction.guild_id)}
        lora = usable.get(name.strip().lower())
        if lora is None:
            raise UserFacingError(f"You have no LoRA `{name}` here (a LoRA becomes usable at its first checkpoint). "
                                  "See `/lora list`.")
        settings = self.bot.settings
        scale = settings.lora_default_scale if scale is None else scale
        await self.bot.loras.use(interaction.user.id, interaction.guild_id, lora.id, scale, settings.lora.max_stack)
        stack = await self.bot.loras.selection(interaction.user.id, interaction.guild_id)
        await interaction.response.send_message(
            "Your /imagine images now use " + " + ".join(f"`{item.name}` at {s:g}" for item, s in stack)
            + ". `/lora clear` to stop.", ephemeral=True)

    @app_commands.command(name="clear", description="Stop using one LoRA, or all of them (back to the base model)")
    @app_commands.describe(name="Only this LoRA (default: all)")
    async def clear(self, interaction: discord.Interaction, name: str | None = None) -> None:
        me, guild = interaction.user.id, interaction.guild_id
        if name is None:
            cleared = await self.bot.loras.clear(me, guild)
            text = "Your /imagine images use the base model again." if cleared else "You were not using a LoRA."
        else:
            picked = {lora.name: lora for lora, _ in await self.bot.loras.selection(me, guild)}
            if name.strip().lower() not in picked:
                raise UserFacingError(f"You are not using a LoRA `{name}`.")
            await self.bot.loras.clear(me, guild, picked[name.strip().lower()].id)
            rest = ", ".join(f"`{other}`" for other in picked if other != name.strip().lower())
            text = f"Stopped using `{name.strip().lower()}`" + (f"; still using {rest}." if rest else "; back to the base model.")
        await interaction.response.send_message(text, ephemeral=True)

    @clear.autocomplete("name")
    async def clear_autocomplete(self, interaction: discord.Interaction, current: str):
        picked = await self.bot.loras.selection(interaction.user.id, interaction.guild_id)
        return [app_commands.Choice(name=lora.name, value=lora.name) for lora, _ in picked if current.lower() in lora.name]


def _read_details(path: str | None, max_header: int) -> tuple[dict, bytes | None]:
    """Blocking: rank/alpha/layers/size from the file's header, and sample.png beside it (a /train checkpoint)."""
    if not path or not Path(path).is_file():
        return {}, None
    try:
        details = {**lib.describe(Path(path), max_header=max_header), "size": Path(path).stat().st_size}
    except (OSError, lib.LoraImportError):
        details = {}
    sample = Path(path).parent / "sample.png"
    return details, sample.read_bytes() if sample.is_file() else None


async def setup(bot: ZImageBot) -> None:
    await bot.add_cog(LoraCog(bot))
