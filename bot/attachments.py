"""Saving a Discord attachment to disk: streamed, size-capped, file I/O off the event loop.

Attachment URLs come from Discord's own CDN, so unlike user-given links (bot/training/download.py)
they need no address checks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import aiohttp

from .errors import UserFacingError
from .i18n import Text

CHUNK = 1 << 20


async def save_attachment(url: str, dest: Path, max_bytes: int, what: Literal["file", "zip", "image"] = "file") -> int:
    """Stream `url` into `dest`; refuses (UserFacingError) past `max_bytes`. Returns bytes written."""
    written = 0
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        handle = await asyncio.to_thread(open, dest, "wb")
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise UserFacingError(Text(f"attachment.too_large_{what}", limit=max_bytes >> 20))
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)
    return written
