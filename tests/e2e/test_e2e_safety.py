"""The image safety check end to end: /mod content mode:block withholds a flagged result (the member told
privately, nothing posted), mode:spoiler posts it behind a spoiler, age-restricted channels follow
age_restricted_channels, and with the real NudeNet classifier a plain result goes through.

The tiny model draws noise, which no classifier flags; CONTENT_CLASSIFIER=marker (a test hook,
bot/safety/classifiers.py) flags a PNG whose prompt holds TEST_MARKER, so a prompt makes a flagged result."""

from __future__ import annotations

import pytest

from bot.safety import TEST_MARKER
from e2e_helpers import pngs, queued_job, result_messages, wait_result

pytestmark = pytest.mark.e2e

BOT_ENV = {"RATE_LIMIT_COUNT": "50", "CONTENT_CLASSIFIER": "marker"}
FLAGGED = f"a beach at noon {TEST_MARKER}"


async def mod_content(fake, options) -> str:
    ix = await fake.slash_command("mod content", options, user=fake.mod)
    answer = await ix.wait_response(timeout=5)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer
    return answer["data"]["content"]


async def imagine(fake, prompt: str, user, channel_id=None):
    ix = await fake.slash_command("imagine", {"prompt": prompt, "steps": 1}, user=user, channel_id=channel_id)
    return ix, await queued_job(ix)


async def test_block_withholds_a_flagged_result_and_spoiler_hides_it(fake, bot):
    options = {o["name"]: o for o in next(c for c in fake.commands if c["name"] == "mod")["options"]
               if o["name"] == "content"}["content"]["options"]
    choices = {o["name"]: [c["value"] for c in o.get("choices", [])] for o in options}
    assert choices["mode"] == ["off", "spoiler", "block"] and choices["age_restricted_channels"] == ["allow", "same"]

    shown = await mod_content(fake, {"mode": "block", "age_restricted_channels": "same"})
    assert "**block**" in shown and "**same**" in shown

    ix, flagged = await imagine(fake, FLAGGED, fake.alice)
    message = await ix.wait_original(lambda m: "safety check" in (m.content or ""), timeout=90)
    assert not message.attachments and TEST_MARKER not in message.content and not message.embeds
    await fake.wait_for(lambda: any(m.ephemeral and "was not posted" in (m.content or "") for m in ix.followups),
                        timeout=10, what="the member's private note")
    assert result_messages(fake, flagged) == []  # no PNG of it anywhere

    _, plain = await imagine(fake, "a beach at noon", fake.bob)
    [result] = await wait_result(fake, plain)
    assert len(pngs(result)) == 1 and not result.attachments[0]["filename"].startswith("SPOILER_")

    # In an age-restricted channel the server's rule decides: `same` withholds there too; `allow` posts.
    ix, _ = await imagine(fake, FLAGGED, fake.alice, fake.nsfw_channel_id)
    await ix.wait_original(lambda m: "safety check" in (m.content or ""), timeout=90)
    await mod_content(fake, {"age_restricted_channels": "allow"})
    _, allowed = await imagine(fake, FLAGGED, fake.alice, fake.nsfw_channel_id)
    [result] = await wait_result(fake, allowed)
    assert not result.attachments[0]["filename"].startswith("SPOILER_")

    assert "**spoiler**" in await mod_content(fake, {"mode": "spoiler"})
    _, hidden = await imagine(fake, FLAGGED, fake.bob)
    [result] = await wait_result(fake, hidden)
    assert [a["filename"].startswith("SPOILER_") for a in result.attachments if a["filename"].endswith(".png")] == [True]
    assert fake.spec_violations == []


async def test_the_real_classifier_passes_a_plain_result(fake, bot_process):
    bot = bot_process(RATE_LIMIT_COUNT="50")  # CONTENT_CLASSIFIER: nudenet, the default
    await bot.start()
    assert "**block**" in await mod_content(fake, {"mode": "block", "age_restricted_channels": "same"})
    _, job = await imagine(fake, "a beach at noon", fake.alice)
    [result] = await wait_result(fake, job)
    assert len(pngs(result)) == 1 and not result.attachments[0]["filename"].startswith("SPOILER_")
