"""Decode one uploaded photo safely and turn it into an RGB training image.

Used by `bot.training.intake`; pure Pillow, no zip handling here. The format is taken from the
file's content (magic bytes), never from its name alone, and each format is opened only by its own
Pillow plugin. Every failure is a `Rejected` with a short, stable reason that the intake groups in
its report.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import cast

from PIL import Image, ImageOps

try:  # HEIC/HEIF (iPhone photos) only when pillow-heif is installed.
    pillow_heif: ModuleType | None = importlib.import_module("pillow_heif")
except (ImportError, OSError):  # OSError: the wheel is there but libheif can't load
    pillow_heif = None

HEIF_AVAILABLE = pillow_heif is not None
if pillow_heif is not None:
    pillow_heif.register_heif_opener()

NOT_IMAGE = "not an image"
CORRUPT = "corrupt or truncated image"
UNSUPPORTED = "unsupported image format"
NESTED_ARCHIVE = "nested archive"
NO_HEIC = "HEIC support not installed"
BOMB = "too many pixels for its file size"
OVER_BUDGET = "over the archive's decoding budget"

# Decompression bombs: a 5 KB PNG can declare 40 MP, and decoding it costs a second of CPU and 40 MB+.
# What a decode costs is known from the header before it starts (for a JPEG, at the reduced draft
# size), so an image is refused when it decodes to more than _MAX_PIXELS_PER_BYTE pixels per byte
# the member actually uploaded for it. Real photos are far below: a camera JPEG or phone HEIC holds
# 2-10 pixels per byte, a flat PNG screenshot a few dozen; the bomb above holds 8,000. Smaller
# images are cheap enough to decode whatever their ratio (a plain-colour 3000 x 1500 PNG is a few
# KB), so the ratio only applies above _BOMB_MIN_PIXELS; what all the images of an archive may
# cost together is bounded by the caller's pixel budget (IntakeLimits.max_decoded_pixels).
_MAX_PIXELS_PER_BYTE = 64
_BOMB_MIN_PIXELS = 8_000_000

# Pillow plugins allowed for each detected format (MPO: multi-picture JPEGs from many cameras).
_FORMATS = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",), "HEIF": ("HEIF",)}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_ARCHIVE_EXTS = {".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".cbz", ".cbr", ".jar", ".apk"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}

# Pillow's decompression-bomb check only warns (below 2x its global limit), through the process-wide
# warnings filters. The filter is raised to an error just around Image.open, under a lock so that
# concurrent intakes (asyncio.to_thread) don't restore each other's filters; our own per-call pixel
# limit is then checked on the header size, so Image.MAX_IMAGE_PIXELS is never modified.
_OPEN_LOCK = threading.Lock()


class Rejected(Exception):
    """The file is not used; `reason` is short and user-facing. `decoded_pixels`: what decoding it cost
    before it failed (a truncated image is refused only after most of it was decoded)."""

    def __init__(self, reason: str, decoded_pixels: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.decoded_pixels = reason, decoded_pixels


@dataclass(frozen=True)
class Photo:
    image: Image.Image  # RGB, longest edge <= the limit
    digest: str  # sha256 of the final pixels and size (exact-duplicate detection)
    decoded_pixels: int  # what decoding cost (JPEG: at the draft size), for the archive's budget


def too_large_reason(max_pixels: int) -> str:
    return f"too large (over {max_pixels / 1_000_000:g} megapixels)"


def too_small_reason(min_edge: int) -> str:
    return f"too small (under {min_edge} px)"


def sniff(data: bytes) -> str | None:
    """The format from the first bytes: JPEG, PNG, WEBP, HEIF, AVIF, GIF, BMP, TIFF, ARCHIVE or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(max(size, 16), 256, len(data)) - 3, 4)}
        if brands & {b"avif", b"avis"} and not brands & (_HEIF_BRANDS - {b"mif1", b"msf1"}):
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        return None  # mp4/mov video and friends
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if (
        data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
        or data.startswith((b"Rar!\x1a\x07", b"7z\xbc\xaf\x27\x1c", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"))
        or data[257:262] == b"ustar"
    ):
        return "ARCHIVE"
    return None


def load_photo(data: bytes, *, ext: str, max_pixels: int, longest_edge: int, min_edge: int,
               stored_size: int | None = None, pixel_budget: int | None = None) -> Photo:
    """Decode `data` (the whole file), apply EXIF orientation, convert to RGB and shrink it.

    `ext` is the lower-case extension of the entry, used only to name a nested archive that the
    content sniffing can't see (e.g. an empty .zip). `stored_size` is what the member uploaded for
    it (the compressed size in the zip; default len(data)): the pixels-per-byte bomb check uses it.
    `pixel_budget` is what the archive may still spend on decoding. Everything is checked on the
    header before any pixel is decoded. Raises Rejected.
    """
    kind = sniff(data)
    if kind == "ARCHIVE" or (kind is None and ext in _ARCHIVE_EXTS):
        raise Rejected(NESTED_ARCHIVE)
    if kind == "HEIF" and not HEIF_AVAILABLE:
        raise Rejected(NO_HEIC)
    if kind in ("AVIF", "GIF", "BMP", "TIFF"):
        raise Rejected(UNSUPPORTED)
    if kind is None:
        raise Rejected(NOT_IMAGE)

    too_large = too_large_reason(max_pixels)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_FORMATS[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Rejected(too_large) from None
    except Exception:  # Pillow raises many types for bad headers (SyntaxError, OSError, ValueError, ...)
        raise Rejected(CORRUPT) from None

    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise Rejected(CORRUPT)
        if width * height > max_pixels:
            raise Rejected(too_large)
        if min(width, height) < min_edge:
            raise Rejected(too_small_reason(min_edge))
        try:
            if kind == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that stays >= longest_edge
                im.draft(None, (longest_edge, longest_edge))
        except Exception:
            raise Rejected(CORRUPT) from None
        decoded = im.width * im.height  # after draft(): the size load() will allocate
        if decoded > _BOMB_MIN_PIXELS and decoded > _MAX_PIXELS_PER_BYTE * (stored_size or len(data)):
            raise Rejected(BOMB)
        if pixel_budget is not None and decoded > pixel_budget:
            raise Rejected(OVER_BUDGET)
        try:
            im.load()
            out = _normalise(im, longest_edge)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
            raise Rejected(too_large, decoded) from None
        except Exception:
            raise Rejected(CORRUPT, decoded) from None

    digest = hashlib.sha256(f"{out.width}x{out.height}:".encode() + out.tobytes()).hexdigest()
    return Photo(image=out, digest=digest, decoded_pixels=decoded)


def _normalise(im: Image.Image, longest_edge: int) -> Image.Image:
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # broken EXIF: keep the stored orientation rather than drop the photo
        pass
    im = _to_rgb(im)
    width, height = im.size
    if max(width, height) > longest_edge:  # never upscale
        scale = longest_edge / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _high_depth_to_gray(im).convert("RGB")
    if mode in ("P", "PA") or (mode in ("1", "L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode != "RGB":  # L, 1, CMYK, YCbCr, ...
        return im.convert("RGB")
    return im


def _high_depth_to_gray(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale to 8-bit L, scaled (Pillow's own convert clips at 255)."""
    if im.mode in _SIXTEEN_BIT:
        im, top = im.convert("I"), 65535.0
    else:
        low, high = cast(tuple[float, float], im.getextrema())  # one band: its (min, max), not a pair per band
        if im.mode == "F" and high <= 1.0:
            top = 1.0
        elif high <= 255:
            top = 255.0
        else:
            top = 65535.0 if high <= 65535 else float(high)
    if top != 255.0:
        factor, offset = 255.0 / top, (0.5 if im.mode == "I" else 0.0)  # I -> I truncates: round instead
        im = im.point(lambda v: v * factor + offset)
    return im.convert("L")
