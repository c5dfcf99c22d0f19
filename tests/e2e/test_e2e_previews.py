"""Live previews end to end: the real worker projects the image forming every PREVIEW_EVERY steps, the real bot
attaches the latest preview to its progress edits (within PROGRESS_INTERVAL), and the result replaces it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from e2e_helpers import contents, pngs, queued_job, wait_result

pytestmark = pytest.mark.e2e

# Edits may follow each other quickly here, so the tiny model's fast steps still show some previews.
BOT_ENV = {"RATE_LIMIT_COUNT": "20", "PROGRESS_INTERVAL": "0.05"}


async def test_a_preview_shows_in_the_progress_edits_before_the_result_replaces_it(fake, bot):
    ix = await fake.slash_command("imagine", {"prompt": "a lighthouse at dusk", "seed": 3, "steps": 16, "count": 2},
                                  user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id, count=2)
    versions = result.history + [result.snapshot()]
    previewed = [index for index, version in enumerate(versions) if version["attachments"] == ["preview.jpg"]]
    assert previewed, [(version["content"], version["attachments"]) for version in versions]
    assert all("step" in versions[index]["content"] for index in previewed)  # on a progress edit
    first_png = next(index for index, version in enumerate(versions)
                     if any(name.endswith(".png") for name in version["attachments"]))
    assert max(previewed) < first_png  # before the result
    # The result replaced it: only the PNGs are left on the message.
    assert sorted(name for name in versions[-1]["attachments"]) == sorted(
        a["filename"] for a in result.attachments if a["filename"].endswith(".png"))
    assert len(pngs(result)) == 2 and all(not a["filename"].endswith(".jpg") for a in result.attachments)
    # What was uploaded: a JPEG at latent resolution (1/8 of the 1024x1024 image).
    uploads = [a for a in fake.attachments.values() if a["filename"] == "preview.jpg"]
    assert uploads
    for upload in uploads:
        assert upload["content_type"] == "image/jpeg" and upload["size"] < 64 << 10
        assert Image.open(io.BytesIO(upload["data"])).size == (128, 128)
    assert any("step" in text for text in contents(result))
    assert fake.spec_violations == []
