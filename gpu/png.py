"""PNG encoding with the generation parameters in text chunks, so an image explains itself."""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin


def encode_png(image: Image.Image, metadata: dict[str, object]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        # iTXt keeps non-Latin-1 prompts intact; tEXt would reject them.
        info.add_itxt(key, str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def read_png_text(data: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile)  # the only format asked for
        image.load()
        return {key: str(value) for key, value in image.text.items()}
