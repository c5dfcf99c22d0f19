"""/lora import: a .safetensors from an attachment or an https link, checked and converted into the library.

Nothing is executed: pickles are refused by name and by content (bot/lora_import.py), the download is
guarded (bot/training/download.py), and a refused file leaves nothing on disk.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from typing import Protocol

import aiohttp

from zimage_protocol.constants import LORA_FILE

from .. import lora_import as lib
from ..attachments import save_attachment
from ..db.models import Lora
from ..errors import UserFacingError
from ..moderation import RequestRules
from ..settings import Settings
from ..training import DownloadError, download_zip
from .library import LoraLibrary, check_name


class Upload(Protocol):
    """An uploaded file as Discord describes it (discord.Attachment)."""

    filename: str
    size: int
    url: str


class LoraImporter:
    def __init__(self, settings: Settings, library: LoraLibrary, rules: RequestRules):
        self.settings = settings
        self.library = library
        self.rules = rules

    async def check(self, guild_id: int, user_id: int, name: str, file: Upload | None, url: str | None) -> None:
        """The cheap checks, before deferring: each failure is an ephemeral reply."""
        max_bytes = self.settings.lora_max_bytes
        check_name(name)
        if (file is None) == (url is None):
            raise UserFacingError("Attach a .safetensors LoRA as `file`, or give an https `url` to one (not both).")
        if file is not None and file.filename.lower().endswith(lib.PICKLE_SUFFIXES):
            raise UserFacingError(f"`{file.filename}` is a pickle file, which can run code when loaded: "
                                  "only .safetensors files are accepted.")
        if file is not None and not file.filename.lower().endswith(".safetensors"):
            raise UserFacingError(f"`{file.filename}` is not a .safetensors file.")
        if file is not None and file.size > max_bytes:
            raise UserFacingError(f"The file is {file.size >> 20} MiB; the limit is {max_bytes >> 20} MiB.")
        await self.library.check_new_name(guild_id, name)
        await self.rules.check_not_banned(guild_id, user_id)

    async def run(self, key: int, guild_id: int, user_id: int, name: str, file: Upload | None,
                  url: str | None) -> tuple[Lora, lib.ImportResult]:
        """Fetch, check and convert the file; `key` (the interaction id) names its download while it lasts."""
        settings, max_bytes, done = self.settings, self.settings.lora_max_bytes, False
        incoming = settings.data_dir / "loras" / "incoming" / f"{key}.safetensors"
        folder = settings.data_dir / "loras" / secrets.token_hex(8)
        try:
            if file is not None:
                await save_attachment(file.url, incoming, max_bytes)
                origin = file.filename
            elif url is not None:
                await download_zip(url, incoming, max_bytes=max_bytes, timeout=settings.lora_download_timeout)
                origin = url
            else:  # check() refused this before deferring
                raise UserFacingError("Attach a .safetensors LoRA as `file`, or give an https `url` to one (not both).")
            layers = await asyncio.to_thread(lambda: lib.expected_layers(lib.transformer_config(settings.zimage_model,
                                                                                                settings.data_dir)))
            result = await asyncio.to_thread(lib.convert, incoming, folder / LORA_FILE, layers, max_bytes=max_bytes,
                                             max_header=settings.lora_max_header_bytes, max_rank=settings.lora.max_rank)
            lora = await self.library.create(guild_id=guild_id, owner_id=user_id, name=name, rank=result.rank,
                                             path=str(folder / LORA_FILE), source=result.format,
                                             origin=origin[:500])
            done = True
            return lora, result
        # The parsers' own errors are written for users: they become the reply here, at the boundary.
        except (lib.LoraImportError, DownloadError) as exc:
            raise UserFacingError(str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UserFacingError(f"Could not fetch the file: {exc}") from None
        finally:
            await asyncio.to_thread(incoming.unlink, True)
            if not done:
                await asyncio.to_thread(shutil.rmtree, folder, True)
