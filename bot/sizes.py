"""Aspect-ratio choices of /imagine mapped to ~1 megapixel sizes that are multiples of 16."""

from __future__ import annotations

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "16:9": (1344, 768),  # the common 16:9 bucket; exactly 16:9 at 1 MP is not a multiple of 16
    "9:16": (768, 1344),
}
DEFAULT_ASPECT = "1:1"
