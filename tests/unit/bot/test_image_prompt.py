"""Image prompts (bot/image_prompt.py): the upload decoded safely, rotated by its EXIF, fitted to an aspect bucket."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.errors import UserFacingError
from bot.image_prompt import _decode_and_fit, closest_aspect, source_params
from zimage_protocol.messages import GenerateParams


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fit(tmp_path, data: bytes, ext: str = ".png", aspect: str | None = None):
    upload = tmp_path / "upload"
    upload.write_bytes(data)
    return _decode_and_fit(upload, ext, tmp_path / "inputs", aspect)


def test_the_closest_bucket_is_picked_and_the_png_is_stored_by_content(tmp_path):
    (tmp_path / "inputs").mkdir()
    aspect, path = fit(tmp_path, encoded(Image.new("RGB", (800, 600), (10, 200, 30)), "PNG"))
    assert aspect == "4:3" and Image.open(path).size == (1152, 864)
    again_aspect, again = fit(tmp_path, encoded(Image.new("RGB", (800, 600), (10, 200, 30)), "PNG"))
    assert again == path and path.parent == tmp_path / "inputs" and len(list(path.parent.iterdir())) == 1
    aspect, path = fit(tmp_path, encoded(Image.new("RGB", (800, 600)), "PNG"), aspect="9:16")  # asked for: kept
    assert aspect == "9:16" and Image.open(path).size == (768, 1344)


def test_exif_rotation_is_applied(tmp_path):
    (tmp_path / "inputs").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    aspect, _ = fit(tmp_path, encoded(Image.new("RGB", (1200, 800)), "JPEG", exif=exif), ".jpg")
    assert aspect == "2:3"


@pytest.mark.parametrize("data, reason", [
    (b"GIF89a" + b"\0" * 64, "unsupported"),
    (b"not an image at all", "not an image"),
    (encoded(Image.new("RGB", (20, 20)), "PNG"), "too small"),
    (encoded(Image.new("1", (10000, 6000)), "PNG"), "too large"),  # 60 MP of one bit: a few KB
])
def test_bad_uploads_are_refused_with_the_reason(tmp_path, data, reason):
    (tmp_path / "inputs").mkdir()
    with pytest.raises(UserFacingError, match=reason):
        fit(tmp_path, data)
    assert list((tmp_path / "inputs").iterdir()) == []


def test_the_params_reach_the_worker_as_an_image_source(tmp_path):
    source = GenerateParams.from_json({"prompt": "p", "width": 1024, "height": 1024, "steps": 8, "seeds": [1],
                                       "source": source_params(tmp_path / "x.png", 0.4)}).source
    assert source is not None and (source.mode, source.strength, source.outpaints) == ("image", 0.4, False)
    assert closest_aspect(1920, 1080) == "16:9" and closest_aspect(500, 500) == "1:1"
