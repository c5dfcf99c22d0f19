"""/train end to end: zip in, checkpoints out, /lora use changes images, /lora clear restores them."""

from __future__ import annotations

import io
import os
import random
import signal
import zipfile

import pytest
from PIL import Image

from e2e_helpers import pixels, pngs, queued_job, wait_result
from fake_discord import FakeDiscord

pytestmark = pytest.mark.e2e

TRAIN_ENV = {"CHECKPOINT_EVERY": "5", "KEEP_CHECKPOINTS": "7", "TRAIN_RANK": "4", "TRAIN_RESOLUTION": "64",
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


BOT_ENV = TRAIN_ENV


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
    assert "loss" in last.content and "s/step" in last.content and "ETA" in last.content
    # TRAINING_ADAPTER unset = the published adapter, which the tiny model's worker leaves out: the run says so.
    assert "Training adapter: `none`" in last.content
    # The LoRA is private: its files went to alice alone (ephemeral follow-ups of her /train), none to the channel.
    assert not any(a["filename"].endswith(".safetensors") for m in fake.messages.values() if not m.ephemeral
                   for a in m.attachments)
    private = [a["filename"] for m in ix.followups if m.ephemeral for a in m.attachments]
    assert private == [f"ada_step{step}.safetensors" for step in (5, 10, 15, 20, 25, 30)]

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


def checkpoint_steps(fake, name) -> list[int]:
    return [int(m.content.split("at step ")[1].split("/")[0]) for m in checkpoint_messages(fake, name)]


async def test_approval_deny_approve_and_cancel_keeps_checkpoints(fake, bot):
    for command, options in (("mod approve-training on", {}), ("mod channel", {"channel": fake.channel_id})):
        await (await fake.slash_command(command, options, user=fake.mod)).wait_response()

    async def request(name):
        ix = await fake.slash_command("train", {"name": name, "steps": 400}, user=fake.alice,
                                      attachments={"photos": (f"{name}.zip", photo_zip(junk=False))})
        await ix.wait_original(lambda m: "Accepted" in m.content, timeout=60)
        return await fake.wait_for(lambda: next((m for m in fake.messages.values()
                                                 if f"train LoRA `{name}`" in m.content and m.components), None),
                                   timeout=30, what="the approval request")

    denied = await request("denied")
    job_id = int(denied.content.split("job #")[1].split(",")[0])
    refused = await fake.click_button(denied, f"zimage:approve:{job_id}", user=fake.alice)
    assert "Only moderators" in (await refused.wait_response())["data"]["content"]
    await (await fake.click_button(denied, f"zimage:deny:{job_id}", user=fake.mod)).wait_response()
    await fake.wait_for(lambda: any("denied training `denied`" in m.content for m in fake.messages.values()),
                        timeout=10, what="the denial shown on the job")

    approved = await request("kept")
    job_id = int(approved.content.split("job #")[1].split(",")[0])
    await (await fake.click_button(approved, f"zimage:approve:{job_id}", user=fake.mod)).wait_response()
    await fake.wait_for(lambda: checkpoint_steps(fake, "kept"), timeout=120, what="a first checkpoint")
    cancel = await fake.slash_command("cancel", {"job": job_id}, user=fake.alice)
    assert "cancelled" in (await cancel.wait_response())["data"]["content"]
    await fake.wait_for(lambda: any(f"Job #{job_id} was cancelled" in m.content and "checkpoints" in m.content
                                    for m in fake.messages.values()), timeout=60, what="the cancelled training")
    listing = (await (await fake.slash_command("lora list", {}, user=fake.alice)).wait_response())["data"]["content"]
    assert "`kept` step" in listing and "`denied`" not in listing
    audit = (await (await fake.slash_command("mod audit", {}, user=fake.mod)).wait_response())["data"]["content"]
    assert "**deny**" in audit and "**approve**" in audit


async def test_training_resumes_from_its_checkpoint_after_a_worker_crash(fake, bot):
    ix = await fake.slash_command("train", {"name": "phoenix", "steps": 20}, user=fake.alice,
                                  attachments={"photos": ("p.zip", photo_zip(junk=False))})
    await ix.wait_original(lambda m: "Accepted" in m.content, timeout=60)
    await fake.wait_for(lambda: 10 in checkpoint_steps(fake, "phoenix"), timeout=120, what="checkpoint 10")
    os.kill(bot.worker_pid(), signal.SIGKILL)
    await fake.wait_for(lambda: any("finished training" in m.content and "phoenix" in m.content
                                    for m in fake.messages.values()), timeout=180, what="the resumed training")
    steps = checkpoint_steps(fake, "phoenix")
    assert steps == sorted(set(steps)) and steps[-1] == 20 and {5, 10, 15, 20} <= set(steps), steps


async def test_once_the_token_is_gone_the_file_goes_by_dm_and_once_shared_to_the_channel(fake, bot):
    ix = await fake.slash_command("train", {"name": "dmd", "steps": 30}, user=fake.alice,
                                  attachments={"photos": ("d.zip", photo_zip(junk=False))})
    await ix.wait_original(lambda m: "Accepted" in m.content, timeout=60)
    await fake.wait_for(lambda: ix.followups, timeout=10, what="the job's public message")
    fake.expire_token(ix.token)
    dm = fake.dm_channel(fake.alice)

    def dm_files():
        return [a["filename"] for m in fake.channel_messages(dm) for a in m.attachments]

    await fake.wait_for(lambda: "dmd_step5.safetensors" in dm_files(), timeout=120, what="the first checkpoint by DM")
    assert "now shared" in (await (await fake.slash_command("lora share", {"name": "dmd"}, user=fake.alice))
                            .wait_response())["data"]["content"]
    await fake.wait_for(lambda: any("finished training" in m.content for m in fake.messages.values()),
                        timeout=180, what="training finished")
    public = [a["filename"] for m in checkpoint_messages(fake, "dmd") for a in m.attachments]
    assert "dmd_step30.safetensors" in public and "dmd_step30.safetensors" not in dm_files()
    assert not any(m.ephemeral for m in ix.followups) and fake.spec_violations == []


async def test_lora_too_big_for_discord_gets_a_signed_expiring_link(data_dir, bot_process):
    import aiohttp
    from safetensors import safe_open

    fake = FakeDiscord(attachment_size_limit=200_000)
    await fake.start()
    bot = bot_process(discord=fake, **{**TRAIN_ENV, "TRAIN_RANK": "64"})
    await bot.start()
    try:
        ix = await fake.slash_command("train", {"name": "big", "steps": 5}, user=fake.alice,
                                      attachments={"photos": ("b.zip", photo_zip(junk=False))})
        await ix.wait_original(lambda m: "Accepted" in m.content, timeout=60)
        [checkpoint] = await fake.wait_for(lambda: checkpoint_messages(fake, "big"), timeout=120, what="checkpoint")
        assert not any(a["filename"].endswith(".safetensors") for a in checkpoint.attachments)
        assert "/files/" not in checkpoint.content  # a private LoRA: the link is its owner's alone
        [private] = await fake.wait_for(lambda: [m for m in ix.followups if m.ephemeral and "/files/" in m.content],
                                        timeout=30, what="the owner's private link")
        link = private.content.split("](")[1].split(")")[0]
        assert link.startswith(f"http://127.0.0.1:{bot.env['HTTP_PORT']}/files/")
        async with aiohttp.ClientSession() as session:
            async with session.get(link) as response:
                assert response.status == 200
                body = await response.read()
            forged = link.replace("/files/", "/files/x")
            async with session.get(forged) as response:
                assert response.status == 404
        path = data_dir.parent / "download.safetensors"
        path.write_bytes(body)
        with safe_open(str(path), "pt") as lora:
            assert any("lora_A" in key for key in lora.keys())
        assert fake.spec_violations == []
    finally:
        await bot.stop()
        await fake.stop()
