"""The LoRA library: names, who may use which LoRA, each member's stack, and the files behind them.

Privacy: a private LoRA exists only for its owner. Every name a member types or sees goes through
LoraStore.usable_by / find_usable, so someone else's private LoRA answers like a missing one.
(Only moderators' deletes and the uniqueness of names look at every LoRA of a guild.)
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from discord import app_commands
from sqlalchemy.exc import IntegrityError
from yarl import URL

from .. import lora_import as lib
from ..db.loras import LoraStore
from ..db.models import Lora
from ..errors import UserFacingError
from ..files_server import LinkSigner
from ..i18n import Text
from ..settings import Settings
from .files import export_files, read_details, remove_files, revoke_links

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{1,31}$")
NAME_RULES = Text("lora.name_rules")


def clean_name(name: str) -> str:
    return name.strip().lower()


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise UserFacingError(NAME_RULES)


def label(lora: Lora) -> str:
    """Where a LoRA comes from, in a few words: its training step, or the format it was imported from."""
    return f"step {lora.steps}" if lora.source is None else f"imported ({lora.source})"


def public_origin(origin: str | None) -> str:
    """Where an import came from, fit to show: a link without its user, password, query or fragment (which may carry
    access tokens), a file name as it was."""
    if not origin:
        return "?"
    try:
        url = URL(origin)
    except ValueError:
        return "a link"
    if not url.is_absolute():
        return origin
    return str(url.with_user(None).with_password(None).with_query(None).with_fragment(None))


def missing(name: str) -> UserFacingError:
    return UserFacingError(Text("lora.missing", name=name))


def check_stack(picked: Sequence[tuple[Lora, float]], settings: Settings) -> None:
    """A stack picked before LORA_MAX_STACK or LORA_MAX_RANK were lowered: say so instead of failing in the worker."""
    limits = settings.lora
    if len(picked) > limits.max_stack:
        raise UserFacingError(Text("lora.stack_too_big", count=len(picked), limit=limits.max_stack))
    for lora, _ in picked:
        if lora.rank and lora.rank > limits.slot_rank:
            raise UserFacingError(Text("lora.rank_too_big", name=lora.name, rank=lora.rank, limit=limits.slot_rank))


class LoraLibrary:
    def __init__(self, settings: Settings, loras: LoraStore, signer: LinkSigner):
        self.settings = settings
        self.loras = loras
        self.signer = signer  # export links

    # -- names and lookups -------------------------------------------------------------------------------------

    async def check_new_name(self, guild_id: int, name: str, user_id: int) -> None:
        check_name(name)
        if (taken := await self.loras.by_name(guild_id, name)) is not None:
            raise self._taken(taken, user_id)

    @staticmethod
    def _taken(lora: Lora, user_id: int) -> UserFacingError:
        """A name in use: said plainly when the member may see that LoRA, generically when it is someone's private one."""
        if lora.owner_id == user_id or lora.shared:
            return UserFacingError(Text("lora.name_exists", name=lora.name))
        return UserFacingError(Text("lora.name_unavailable", name=lora.name))

    async def create(self, *, guild_id: int, owner_id: int, name: str, rank: int, path: str | None = None,
                     source: str | None = None, origin: str | None = None) -> Lora:
        """A new LoRA record (a /train job's, or an import's); its name may have been taken since it was checked."""
        try:
            return await self.loras.create(guild_id=guild_id, owner_id=owner_id, name=name, rank=rank, job_id=None,
                                           path=path, source=source, origin=origin)
        except IntegrityError:
            raise UserFacingError(Text("lora.name_just_created", name=name)) from None

    async def usable(self, user_id: int, guild_id: int, name: str) -> Lora:
        lora = await self.loras.find_usable(user_id, guild_id, clean_name(name))
        if lora is None:
            raise missing(name)
        return lora

    async def owned(self, user_id: int, guild_id: int, name: str) -> Lora:
        lora = await self.usable(user_id, guild_id, name)
        if lora.owner_id != user_id:
            raise UserFacingError(Text("lora.owner_only", name=lora.name, owner=lora.owner_id))
        return lora

    async def choices(self, user_id: int, guild_id: int | None, current: str,
                      own: bool = False) -> list[app_commands.Choice[str]]:
        """Autocomplete over the LoRAs the member may use (also /imagine's `lora`), or only their own."""
        loras = await self.loras.usable_by(user_id, guild_id) if guild_id else []
        return [app_commands.Choice(name=f"{lora.name} ({label(lora)})", value=lora.name) for lora in loras
                if current.lower() in lora.name and (not own or lora.owner_id == user_id)][:25]

    async def listing(self, user_id: int, guild_id: int) -> list[tuple[Lora, float | None]]:
        """The LoRAs the member may use, each with the scale it is used at (None when not picked)."""
        picked = {lora.id: scale for lora, scale in await self.loras.selection(user_id, guild_id)}
        return [(lora, picked.get(lora.id)) for lora in await self.loras.usable_by(user_id, guild_id)]

    async def details(self, lora: Lora) -> tuple[dict, bytes | None]:
        """Rank, alpha, layers and size read from the file, and a trained checkpoint's sample image."""
        return await asyncio.to_thread(read_details, lora.path, self.settings.lora_max_header_bytes)

    # -- owners' changes ---------------------------------------------------------------------------------------

    async def share(self, user_id: int, guild_id: int, name: str) -> Lora:
        lora = await self.owned(user_id, guild_id, name)
        await self.loras.set_shared(lora.id, True)
        return lora

    async def unshare(self, user_id: int, guild_id: int, name: str) -> tuple[Lora, int]:
        """Returns the LoRA and how many other members stopped using it. Every file link made so far dies."""
        lora = await self.owned(user_id, guild_id, name)
        dropped = await self.loras.set_shared(lora.id, False)
        await self.revoke_links(lora)
        return lora, dropped

    async def rename(self, user_id: int, guild_id: int, name: str, new_name: str) -> tuple[Lora, str]:
        lora, new_name = await self.owned(user_id, guild_id, name), clean_name(new_name)
        check_name(new_name)
        if (taken := await self.loras.by_name(guild_id, new_name)) is not None and taken.id != lora.id:
            raise self._taken(taken, user_id)
        try:
            await self.loras.rename(lora.id, new_name)
        except IntegrityError:
            raise UserFacingError(Text("lora.name_just_taken", name=new_name)) from None
        return lora, new_name

    async def delete(self, user_id: int, guild_id: int, name: str, *, moderator: bool) -> Lora:
        """Forget a LoRA (its owner, or a moderator); its files go with remove_files, which may be slow."""
        name = clean_name(name)
        lora = await self.loras.by_name(guild_id, name)
        # A moderator may delete any LoRA; others see only their own and the shared ones.
        if lora is None or (lora.owner_id != user_id and not moderator and not (lora.shared and lora.path)):
            raise missing(name)
        if lora.owner_id != user_id and not moderator:
            raise UserFacingError(Text("lora.delete_owner_only", name=lora.name, owner=lora.owner_id))
        if await self.loras.training_active(lora.id):
            raise UserFacingError(Text("lora.still_training", name=lora.name))
        await self.loras.delete(lora.id)
        await self.revoke_links(lora)  # at once: its files are removed only after the reply
        return lora

    async def remove_files(self, lora: Lora) -> None:
        await asyncio.to_thread(remove_files, lora.path, self.settings.data_dir, lora.id)

    async def revoke_links(self, lora: Lora) -> None:
        await asyncio.to_thread(revoke_links, lora.path, self.settings.data_dir, lora.id)

    async def export(self, lora: Lora) -> list[tuple[Path, str]]:
        """The LoRA in our (diffusers) and the ComfyUI format, each with a signed download link."""
        try:
            files = await asyncio.to_thread(export_files, lora, self.settings.data_dir,
                                            self.settings.lora_max_header_bytes)
        except (OSError, lib.LoraImportError) as exc:
            raise UserFacingError(Text("lora.export_failed", name=lora.name, error=exc)) from None
        return [(path, self.signer.link(path)) for path in files]

    # -- each member's stack -----------------------------------------------------------------------------------

    async def use(self, user_id: int, guild_id: int, name: str, scale: float | None) -> list[tuple[Lora, float]]:
        """Add a LoRA to the member's stack (or change its scale); returns the stack. StackFull when full."""
        lora = await self.loras.find_usable(user_id, guild_id, clean_name(name))
        if lora is None:
            raise UserFacingError(Text("lora.missing_use", name=name))
        scale = self.settings.lora_default_scale if scale is None else scale
        await self.loras.use(user_id, guild_id, lora.id, scale, self.settings.lora.max_stack)
        return await self.loras.selection(user_id, guild_id)

    async def picked(self, user_id: int, guild_id: int | None) -> list[tuple[Lora, float]]:
        return await self.loras.selection(user_id, guild_id)

    async def clear(self, user_id: int, guild_id: int) -> int:
        """Drop the whole stack; returns how many LoRAs were in it."""
        return await self.loras.clear(user_id, guild_id)

    async def clear_one(self, user_id: int, guild_id: int, name: str) -> tuple[str, list[str]]:
        """Drop one LoRA from the stack; returns its name and the names still in use."""
        picked = {lora.name: lora for lora, _ in await self.loras.selection(user_id, guild_id)}
        key = clean_name(name)
        if key not in picked:
            raise UserFacingError(Text("lora.not_using", name=name))
        await self.loras.clear(user_id, guild_id, picked[key].id)
        return key, [other for other in picked if other != key]

    async def for_request(self, user_id: int, guild_id: int | None, override: str | None = None) -> list[dict]:
        """The adapters of an /imagine request: the member's stack, or only `override` (a LoRA name, at the default
        scale), as worker params (see `adapter`)."""
        if override is None:
            picked = await self.loras.selection(user_id, guild_id)
        else:
            usable = await self.loras.usable_by(user_id, guild_id) if guild_id else []
            picked = [(lora, self.settings.lora_default_scale) for lora in usable if lora.name == clean_name(override)]
            if not picked:
                raise UserFacingError(Text("lora.missing_override", name=override))
        check_stack(picked, self.settings)
        # always: selection and usable_by leave out LoRAs without a file
        return [adapter(lora, scale) for lora, scale in picked if lora.path is not None]

    async def for_rerun(self, user_id: int, guild_id: int | None, adapters: list[dict]) -> list[dict]:
        """The adapters of a job made from a result's button (Reroll, Variations): those of the earlier job, each
        looked up again by LoRA id with the clicker's rights and its current file. A path stored in the earlier job is
        never reused: the LoRA may have been unshared, deleted or replaced since, and the clicker may not be its owner.
        Raises UserFacingError (before anything is queued) when one of them may not be used."""
        picked = []
        for old in adapters:
            lora_id = adapter_id(old)
            lora = await self.loras.get(lora_id) if lora_id is not None else None
            if lora is None or not may_use(lora, user_id, guild_id):
                name = str(old.get("label") or "?")[:32].replace("`", "")
                raise UserFacingError(Text("lora.not_for_you", name=name))
            scale = old.get("scale")
            scale = float(scale) if isinstance(scale, int | float) and 0 <= scale <= 2 else self.settings.lora_default_scale
            picked.append((lora, scale))
        check_stack(picked, self.settings)
        return [adapter(lora, scale) for lora, scale in picked]


_ADAPTER_NAME = re.compile(r"^lora([0-9]{1,18})-s[0-9]+-[0-9a-f]{8}$")


def adapter(lora: Lora, scale: float) -> dict:
    """A LoRA as a job's worker params. The name carries the step and a digest of the path, so every file version is a
    new adapter to the worker's cache; `id` lets a later button find the LoRA again (LoraLibrary.for_rerun)."""
    assert lora.path is not None  # only LoRAs with a file are usable
    return {"name": f"lora{lora.id}-s{lora.steps}-{hashlib.sha1(lora.path.encode()).hexdigest()[:8]}",
            "path": lora.path, "scale": scale, "label": lora.name, "id": lora.id}


def adapter_id(params: dict) -> int | None:
    """The LoRA id of an adapter in a job's params (`id`, or read from the name in jobs made before it was stored)."""
    if isinstance(params.get("id"), int) and not isinstance(params.get("id"), bool):
        return params["id"]
    match = _ADAPTER_NAME.match(str(params.get("name", "")))
    return int(match[1]) if match else None


def may_use(lora: Lora, user_id: int, guild_id: int | None) -> bool:
    """The privacy rule (see LoraStore.usable_by) for one LoRA: in this server, with a file, and own or shared."""
    return (guild_id is not None and lora.guild_id == guild_id and lora.path is not None
            and (lora.owner_id == user_id or lora.shared))
