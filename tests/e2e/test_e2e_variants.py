"""A result's picture buttons end to end (Vary, Upscale 2x, Zoom Out, Pan): real bot, fake Discord, tiny worker."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from test_e2e_lora_library import lora_files, say  # noqa: F401 - lora_files is a fixture used below

from e2e_helpers import pixels, png_text, pngs, queued_job, wait_refusal, wait_result

pytestmark = pytest.mark.e2e

ENV = {"RATE_LIMIT_COUNT": "100", "MAX_QUEUED_PER_USER": "5", "LORA_HOTSWAP": "on"}
BOT_ENV = ENV

EXPECTED = {  # key -> (mode, strength, direction, zoom, scale)
    "subtle": ("vary_subtle", "0.35", None, None, 1),
    "strong": ("vary_strong", "0.7", None, None, 1),
    "upscale": ("upscale", "0.35", None, None, 2),
    "zoom15": ("zoom", "1.0", None, "1.5", 1),
    "zoom2": ("zoom", "1.0", None, "2.0", 1),
    "left": ("pan", "1.0", "left", None, 1),
    "right": ("pan", "1.0", "right", None, 1),
    "up": ("pan", "1.0", "up", None, 1),
    "down": ("pan", "1.0", "down", None, 1),
}


def size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


async def click_and_check(fake, result, job_id: int, parent: bytes, key: str, user) -> bytes:
    ix = await fake.click_button(result, f"zimage:variant:{key}:{job_id}", user=user)
    [made] = await wait_result(fake, await queued_job(ix), timeout=120)
    [png] = pngs(made)
    text = png_text(png)
    mode, strength, direction, zoom, scale = EXPECTED[key]
    assert (text["parent_job"], text["source_mode"], text["strength"]) == (str(job_id), mode, strength), text
    assert text.get("direction") == direction and text.get("zoom") == zoom, text
    width, height = size(parent)
    assert size(png) == (width * scale, height * scale) and (text["width"], text["height"]) == (
        str(width * scale), str(height * scale))
    assert text["prompt"] == "a lighthouse on a cliff"
    assert pixels(png) != pixels(parent)
    assert any(field["name"] == "From" and f"job #{job_id}" in field["value"] for field in made.embeds[0]["fields"])
    return png


async def test_every_picture_button_makes_its_image_and_survives_a_restart(fake, bot_process):
    bot = bot_process(**ENV)
    await bot.start()
    ix = await fake.slash_command("imagine", {"prompt": "a lighthouse on a cliff", "seed": 3, "steps": 2, "aspect": "1:1"},
                                  user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)
    [parent] = pngs(result)
    assert {f"zimage:variant:{key}:{job_id}" for key in EXPECTED} <= set(result.custom_ids())
    made = {}
    for key in ("subtle", "strong", "upscale", "zoom15", "zoom2", "left", "right"):
        made[key] = await click_and_check(fake, result, job_id, parent, key, fake.bob)
    assert pixels(made["subtle"]) != pixels(made["strong"]) and pixels(made["left"]) != pixels(made["right"])

    await bot.stop()  # the buttons of the result posted before are DynamicItems: a new process still answers them
    restarted = bot_process(**ENV)
    await restarted.start()
    for key in ("up", "down"):
        await click_and_check(fake, result, job_id, parent, key, fake.bob)
    assert fake.spec_violations == []


async def test_a_private_lora_does_not_pass_through_the_picture_buttons(fake, bot, lora_files):  # noqa: F811
    await say(fake, "lora import", {"name": "ink"}, attachments={"file": ("ink.safetensors", lora_files["kohya"])})
    ix = await fake.slash_command("imagine", {"prompt": "a hill", "seed": 5, "steps": 2, "lora": "ink"}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)
    for key in ("subtle", "upscale", "zoom2", "left"):
        refused = await fake.click_button(result, f"zimage:variant:{key}:{job_id}", user=fake.bob)
        await refused.wait_response(timeout=3)
        assert "may not use" in await wait_refusal(refused, timeout=30)
    assert not [m for m in fake.messages.values() if not m.deleted and not m.ephemeral and "may not use" in (m.content or "")]
    own = await fake.click_button(result, f"zimage:variant:strong:{job_id}", user=fake.alice)  # the owner may
    [varied] = await wait_result(fake, await queued_job(own))
    assert any(field["name"] == "LoRA" for field in varied.embeds[0]["fields"])
    assert png_text(pngs(varied)[0])["parent_job"] == str(job_id)
    assert fake.spec_violations == []


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    image = Image.new("RGB", (width, height))
    image.paste((200, 40, 40), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


async def test_an_image_prompt_starts_from_the_upload(fake, bot):
    ix = await fake.slash_command("imagine", {"prompt": "a red door", "seed": 9, "steps": 2, "strength": 0.5},
                                  attachments={"image": ("door.jpg", picture(600, 800, "JPEG"), "image/jpeg")},
                                  user=fake.alice)
    [result] = await wait_result(fake, await queued_job(ix))
    [png] = pngs(result)
    text = png_text(png)
    assert (text["source_mode"], text["strength"], text["prompt"]) == ("image", "0.5", "a red door")
    assert "parent_job" not in text and size(png) == (864, 1152)  # 3:4, the bucket closest to the upload

    plain = await fake.slash_command("imagine", {"prompt": "a red door", "seed": 9, "steps": 2, "aspect": "3:4"},
                                     user=fake.alice)
    [from_text] = await wait_result(fake, await queued_job(plain))
    assert pixels(pngs(from_text)[0]) != pixels(png)

    lone = await fake.slash_command("imagine", {"prompt": "a red door", "strength": 0.5}, user=fake.alice)
    assert "only applies with an `image`" in await wait_refusal(lone)
    bad = await fake.slash_command("imagine", {"prompt": "a red door"}, user=fake.alice,
                                   attachments={"image": ("door.png", b"GIF89a" + b"\0" * 64, "image/png")})
    assert "cannot be used" in await wait_refusal(bad, timeout=30)
    assert fake.spec_violations == []
