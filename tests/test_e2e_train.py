"""/train end to end: zip in, checkpoints out, /lora use changes images, /lora clear restores them."""

from __future__ import annotations

import io
import random
import zipfile

import pytest
from PIL import Image

from bot_process import BotProcess
from e2e_helpers import pixels, pngs, queued_job, wait_result
from fake_discord import FakeDiscord

pytestmark = pytest.mark.e2e

TRAIN_ENV = {"CHECKPOINT_EVERY": "5", "KEEP_CHECKPOINTS": "2", "TRAIN_RANK": "4", "TRAIN_RESOLUTION": "64",
             "TRAIN_MIN_IMAGES": "10", "RATE_LIMIT_COUNT": "50", "MAX_QUEUED_PER_USER": "5"}


def photo_zip(count: int = 12, junk: bool = True) -> bytes:
    rng = random.Random(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            image = Image.new("RGB", (96 + 16 * (index % 3), 96), tuple(rng.randrange(256) for _ in range(3)))
            for _ in range(20):
                x, y = rng.randrange(80), rng.randrange(80)
                image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 16, y + 16))
            data = io.BytesIO()
            image.save(data, format="PNG")
            archive.writestr(f"photos/{index:02d}.png", data.getvalue())
        if junk:
            archive.writestr("__MACOSX/._00.png", b"junk")
            archive.writestr("notes.txt", b"not an image")
    return buffer.getvalue()


@pytest.fixture
async def fake():
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def bot(fake, data_dir):
    process = BotProcess(fake, data_dir, **TRAIN_ENV)
    await process.start()
    yield process
    await process.stop()
    print(process.log()[-5000:])


def checkpoint_messages(fake, name):
    return [m for m in fake.messages.values() if f"checkpoint of `{name}`" in m.content]


async def test_train_posts_checkpoints_and_lora_changes_images(fake, bot):
    base = await fake.slash_command("imagine", {"prompt": "a photo of ada", "seed": 5, "steps": 2}, user=fake.alice)
    base_png = pngs((await wait_result(fake, await queued_job(base)))[0])[0]

    ix = await fake.slash_command("train", {"name": "ada", "steps": 30}, user=fake.alice,
                                  attachments={"photos": ("ada.zip", photo_zip())})
    first = await ix.wait_response(timeout=3)
    assert first["type"] == 5 and first["data"]["flags"] & 64  # private while the zip is checked
    summary = await ix.wait_original(lambda m: "Accepted" in m.content, timeout=60)
    assert "12 images" in summary.content and "Training job #" in summary.content

    # While the LoRA trains, /imagine keeps working and is delivered before training ends.
    await fake.wait_for(lambda: any("training LoRA `ada`" in m.content or "checkpoint of `ada`" in m.content
                                    for m in fake.messages.values()), timeout=60, what="training started")
    during = await queued_job(await fake.slash_command("imagine", {"prompt": "meanwhile", "steps": 2}, user=fake.bob))
    await wait_result(fake, during)
    assert not any("finished training" in m.content for m in fake.messages.values()), "generation waited for training"

    await fake.wait_for(lambda: any("finished training" in m.content for m in fake.messages.values()),
                        timeout=240, what="training finished")
    checkpoints = checkpoint_messages(fake, "ada")
    assert [c.content.split("at step ")[1].split("/")[0] for c in checkpoints] == ["5", "10", "15", "20", "25", "30"]
    last = checkpoints[-1]
    names = [a["filename"] for a in last.attachments]
    assert any(n.endswith("_sample.png") for n in names) and any(n.endswith("_loss.png") for n in names)
    assert any(n.endswith(".safetensors") for n in names)
    assert "loss" in last.content and "s/step" in last.content and "ETA" in last.content

    listing = await (await fake.slash_command("lora list", {}, user=fake.alice)).wait_response()
    assert "`ada` step 30" in listing["data"]["content"]
    choices = await fake.autocomplete("lora use", {"name": "a"}, focused="name", user=fake.alice)
    assert [choice["value"] for choice in choices] == ["ada"]
    assert await fake.autocomplete("lora use", {"name": ""}, focused="name", user=fake.bob) == []

    used = await (await fake.slash_command("lora use", {"name": "ada", "scale": 1.5}, user=fake.alice)).wait_response()
    assert "now use `ada`" in used["data"]["content"]
    with_lora = await fake.slash_command("imagine", {"prompt": "a photo of ada", "seed": 5, "steps": 2}, user=fake.alice)
    [lora_result] = await wait_result(fake, await queued_job(with_lora))
    assert pixels(pngs(lora_result)[0]) != pixels(base_png)
    assert any(field["name"] == "LoRA" for field in lora_result.embeds[0]["fields"])

    await (await fake.slash_command("lora clear", {}, user=fake.alice)).wait_response()
    cleared = await fake.slash_command("imagine", {"prompt": "a photo of ada", "seed": 5, "steps": 2}, user=fake.alice)
    assert pixels(pngs((await wait_result(fake, await queued_job(cleared)))[0])[0]) == pixels(base_png)
    assert fake.spec_violations == []


@pytest.mark.parametrize("upload, fragment", [
    (("ada.zip", b"this is not a zip"), "zip"),
    (("few.zip", photo_zip(count=3, junk=False)), "3"),
    (("photos.rar", b"rar"), "not a .zip"),
])
async def test_bad_archives_are_refused_privately(fake, bot, upload, fragment):
    ix = await fake.slash_command("train", {"name": "bad"}, user=fake.alice, attachments={"photos": upload})
    answer = await ix.wait_response(timeout=3)
    assert answer["data"]["flags"] & 64
    if answer["type"] == 4:  # refused before deferring
        text = answer["data"]["content"]
    else:
        text = (await ix.wait_original(lambda m: "❌" in m.content, timeout=30)).content
    assert fragment in text
    assert not any("Job #" in m.content for m in fake.messages.values() if not m.ephemeral)
    listing = await (await fake.slash_command("lora list", {}, user=fake.alice)).wait_response()
    assert "no LoRAs" in listing["data"]["content"]


async def test_train_needs_a_name_and_one_source(fake, bot):
    both = await fake.slash_command("train", {"name": "x1", "url": "https://example.com/a.zip"}, user=fake.alice,
                                    attachments={"photos": ("a.zip", photo_zip())})
    assert "not both" in (await both.wait_response(timeout=3))["data"]["content"]
    bad_name = await fake.slash_command("train", {"name": "Bad Name!"}, user=fake.alice,
                                        attachments={"photos": ("a.zip", photo_zip())})
    assert "lowercase" in (await bad_name.wait_response(timeout=3))["data"]["content"]
    private_url = await fake.slash_command("train", {"name": "x2", "url": "https://127.0.0.1/a.zip"}, user=fake.alice)
    await private_url.wait_response(timeout=3)
    refused = await private_url.wait_original(lambda m: "❌" in m.content, timeout=30)
    assert "allowed" in refused.content.lower()
