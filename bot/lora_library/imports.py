"""/lora import: a .safetensors from an attachment or an https link, checked and converted into the library.

Nothing is executed: pickles are refused by name and by content (bot/lora_import.py), the download is
guarded (bot/training/download.py), and a refused file leaves nothing on disk.

An import (and an export) is a request like /imagine: refused to banned members, and counted against the
rate limit. Each member's imports in a server have a quota (LORA_IMPORT_MAX_COUNT LoRAs, LORA_IMPORT_MAX_MB
of files; /mod limits overrides both); a member runs one import at a time, LORA_IMPORTS_AT_ONCE run in all,
and none starts while DATA_DIR has less than FREE_DISK_FACTOR times the largest file free.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from shutil import disk_usage
from typing import Protocol

import aiohttp

from zimage_protocol.constants import LORA_FILE

from .. import lora_import as lib
from ..attachments import save_attachment
from ..db.models import GuildSettings, Lora
from ..errors import UserFacingError
from ..i18n import Text
from ..limits import UserLimits
from ..moderation import RequestRules
from ..settings import Settings
from ..training import DownloadError, download_zip
from .library import LoraLibrary, check_name, public_origin

FREE_DISK_FACTOR = 2  # free space DATA_DIR must have, in largest imported files (LORA_MAX_MB), before an import starts


class Upload(Protocol):
    """An uploaded file as Discord describes it (discord.Attachment)."""

    filename: str
    size: int
    url: str


class LoraImporter:
    def __init__(self, settings: Settings, library: LoraLibrary, rules: RequestRules, limits: UserLimits):
        self.settings = settings
        self.library = library
        self.rules = rules
        self.limits = limits  # the request rate limit, shared with /imagine
        self._running: set[int] = set()  # members whose import runs now

    @asynccontextmanager
    async def slot(self, user_id: int) -> AsyncIterator[None]:
        """Hold one of the LORA_IMPORTS_AT_ONCE import slots, one per member, while the import runs; refuses at once."""
        if user_id in self._running:
            raise UserFacingError(Text("lora_import.running"))
        if len(self._running) >= self.settings.lora_imports_at_once:
            raise UserFacingError(Text("lora_import.busy"))
        self._running.add(user_id)
        try:
            yield
        finally:
            self._running.discard(user_id)

    async def check(self, guild_id: int, user_id: int, name: str, file: Upload | None, url: str | None) -> None:
        """The cheap checks, before deferring: each failure is an ephemeral reply."""
        max_bytes = self.settings.lora_max_bytes
        check_name(name)
        if (file is None) == (url is None):
            raise UserFacingError(Text("lora_import.file_or_url"))
        if file is not None and file.filename.lower().endswith(lib.PICKLE_SUFFIXES):
            raise UserFacingError(Text("lora_import.pickle", filename=file.filename))
        if file is not None and not file.filename.lower().endswith(".safetensors"):
            raise UserFacingError(Text("lora_import.not_safetensors", filename=file.filename))
        if file is not None and file.size > max_bytes:
            raise UserFacingError(Text("lora_import.too_large", size=file.size >> 20, limit=max_bytes >> 20))
        await self.library.check_new_name(guild_id, name, user_id)
        await self.rules.check_not_banned(guild_id, user_id)
        guild = await self.rules.moderation.settings(guild_id)
        await self._check_quota(guild, user_id, file.size if file is not None else 1)
        free = (await asyncio.to_thread(disk_usage, self.settings.data_dir)).free
        if free < FREE_DISK_FACTOR * max_bytes:
            raise UserFacingError(Text("lora_import.disk_full"))
        await self.limits.take_request(user_id, guild)  # last: a refused import does not use up the allowance

    async def check_export(self, guild_id: int, user_id: int) -> None:
        """/lora export is a request too: refused to banned members, counted against the rate limit."""
        await self.rules.check_not_banned(guild_id, user_id)
        await self.limits.take_request(user_id, await self.rules.moderation.settings(guild_id))

    def _quota(self, guild: GuildSettings) -> tuple[int, int]:
        """(LoRAs, bytes) a member may import in the guild: its /mod limits, else the settings."""
        return (guild.lora_import_max_count or self.settings.lora_import_max_count,
                (guild.lora_import_max_mb << 20) if guild.lora_import_max_mb else self.settings.lora_import_max_bytes)

    async def _used(self, guild_id: int, user_id: int) -> tuple[int, int]:
        imported = await self.library.loras.imported_by(user_id, guild_id)
        return len(imported), await asyncio.to_thread(_total_size, [lora.path for lora in imported])

    async def room_left(self, guild_id: int, user_id: int) -> int:
        """Bytes the member may still import in the guild (a download by link is capped to it)."""
        _, limit = self._quota(await self.rules.moderation.settings(guild_id))
        return max(0, limit - (await self._used(guild_id, user_id))[1])

    async def _check_quota(self, guild: GuildSettings, user_id: int, incoming: int) -> None:
        max_count, max_bytes = self._quota(guild)
        count, used = await self._used(guild.guild_id, user_id)
        if count >= max_count:
            raise UserFacingError(Text("lora_import.too_many", count=count, limit=max_count))
        if used + incoming > max_bytes:
            raise UserFacingError(Text("lora_import.over_quota", used=used / (1 << 20), limit=max_bytes >> 20))

    async def run(self, key: int, guild_id: int, user_id: int, name: str, file: Upload | None,
                  url: str | None) -> tuple[Lora, lib.ImportResult]:
        """Fetch, check and convert the file; `key` (the interaction id) names its download while it lasts."""
        settings, max_bytes, done = self.settings, self.settings.lora_max_bytes, False
        incoming = settings.data_dir / "loras" / "incoming" / f"{key}.safetensors"
        folder = settings.data_dir / "loras" / secrets.token_hex(8)
        try:
            room = await self.room_left(guild_id, user_id)  # the quota: a link's download stops there
            if file is not None:
                await save_attachment(file.url, incoming, max_bytes)
                origin = file.filename
            elif url is not None:
                await download_zip(url, incoming, max_bytes=min(max_bytes, room), timeout=settings.lora_download_timeout)
                origin = public_origin(url)
            else:  # check() refused this before deferring
                raise UserFacingError(Text("lora_import.file_or_url"))
            layers = await asyncio.to_thread(lambda: lib.expected_layers(lib.transformer_config(settings.zimage_model,
                                                                                                settings.data_dir)))
            result = await asyncio.to_thread(lib.convert, incoming, folder / LORA_FILE, layers, max_bytes=max_bytes,
                                             max_header=settings.lora_max_header_bytes, max_rank=settings.lora.max_rank)
            if result.size > room:  # converted (lower ranks padded) it may be larger than the upload
                raise UserFacingError(Text("lora_import.converted_over_quota", size=result.size / (1 << 20),
                                                           left=room / (1 << 20)))
            lora = await self.library.create(guild_id=guild_id, owner_id=user_id, name=name, rank=result.rank,
                                             path=str(folder / LORA_FILE), source=result.format,
                                             origin=origin[:500])
            done = True
            return lora, result
        # The parsers' own errors are written for users: they become the reply here, at the boundary. A Text stays
        # one; a parser's English finding (a bad header, an unknown layer) is quoted after a reason in the member's
        # language (in English the finding alone, as it always was).
        except (lib.LoraImportError, DownloadError) as exc:
            detail = exc.args[0] if exc.args else str(exc)
            raise UserFacingError(detail if isinstance(detail, Text) else Text("lora_import.refused", detail=detail)) \
                from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UserFacingError(Text("lora_import.fetch_failed", error=str(exc)[:300])) from None
        finally:
            await asyncio.to_thread(incoming.unlink, True)
            if not done:
                await asyncio.to_thread(shutil.rmtree, folder, True)


def _total_size(paths: list[str | None]) -> int:
    """Blocking: the bytes of the files that exist."""
    total = 0
    for path in paths:
        try:
            total += Path(path).stat().st_size if path else 0
        except OSError:
            continue
    return total
