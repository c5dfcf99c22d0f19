"""An image prompt: `/imagine … image:<attachment> strength:<0.1-1.0>` starts from an uploaded picture.

The upload is hostile until proven otherwise: it is streamed to disk with a byte cap (bot/attachments.py), then
decoded by the training intake's safe decoder (bot/training/images.py: format sniffed, not trusted from the name;
pixel and bomb checks on the header before decoding; EXIF rotation; RGB), off the event loop. What the worker gets
is the bot's own PNG of it, cropped to the aspect bucket (the one asked for, else the closest to the picture) and
resized to that bucket's size, saved as DATA_DIR/inputs/<sha256>.png: the same upload twice is one file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tempfile
from pathlib import Path

import discord

from .attachments import save_attachment
from .errors import UserFacingError
from .i18n import Text
from .sizes import ASPECT_SIZES
from .training import images

MAX_IMAGE_BYTES = 20 << 20
MAX_IMAGE_PIXELS = 50_000_000  # before the shrink; a phone photo is 12-48 MP
LONGEST_EDGE = 2048  # decoded no larger (JPEG draft mode), then cropped and resized to the bucket
MIN_EDGE = 64
DEFAULT_STRENGTH = 0.6


def closest_aspect(width: int, height: int) -> str:
    ratio = width / height
    return min(ASPECT_SIZES, key=lambda aspect: abs(ASPECT_SIZES[aspect][0] / ASPECT_SIZES[aspect][1] - ratio))


async def prepare_source(attachment: discord.Attachment, inputs_dir: Path, aspect: str | None) -> tuple[str, Path]:
    """(the aspect bucket, the PNG the worker starts from); raises UserFacingError for a picture it will not use."""
    if attachment.size > MAX_IMAGE_BYTES:
        raise UserFacingError(Text("image_prompt.too_big", limit=MAX_IMAGE_BYTES >> 20))
    await asyncio.to_thread(inputs_dir.mkdir, parents=True, exist_ok=True)
    handle, name = await asyncio.to_thread(tempfile.mkstemp, ".upload", ".", str(inputs_dir))
    os.close(handle)
    upload = Path(name)
    try:
        await save_attachment(attachment.url, upload, MAX_IMAGE_BYTES, what="image")
        return await asyncio.to_thread(_decode_and_fit, upload, Path(attachment.filename).suffix.casefold(),
                                       inputs_dir, aspect)
    finally:
        await asyncio.to_thread(upload.unlink, True)


def _decode_and_fit(upload: Path, ext: str, inputs_dir: Path, aspect: str | None) -> tuple[str, Path]:
    """Blocking: runs in a thread."""
    from PIL import Image, ImageOps

    try:
        photo = images.load_photo(upload.read_bytes(), ext=ext, max_pixels=MAX_IMAGE_PIXELS, longest_edge=LONGEST_EDGE,
                                  min_edge=MIN_EDGE)
    except images.Rejected as rejected:
        raise UserFacingError(Text("image_prompt.bad_image", reason=rejected.reason)) from None
    aspect = aspect if aspect in ASPECT_SIZES else closest_aspect(*photo.image.size)
    fitted = ImageOps.fit(photo.image, ASPECT_SIZES[aspect], Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    fitted.save(buffer, format="PNG", compress_level=4)
    data = buffer.getvalue()
    target = inputs_dir / f"{hashlib.sha256(data).hexdigest()}.png"
    if not target.is_file():
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, target)
    return aspect, target


def source_params(path: Path, strength: float) -> dict:
    return {"path": str(path), "strength": strength, "mode": "image", "zoom": 1.0, "direction": "", "parent": ""}
