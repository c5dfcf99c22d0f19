"""/imagine end to end: the real bot process, a fake Discord, the real worker, a real SQLite file."""

from __future__ import annotations

import asyncio
import re

import pytest

from e2e_helpers import contents, pixels, png_text, pngs, queued_job, queued_job_now, refusal_text, wait_refusal, wait_result

pytestmark = pytest.mark.e2e


BOT_ENV = {"RATE_LIMIT_COUNT": "20"}


def command(fake, name):
    registered = [c for c in fake.commands if c["name"] == name]
    assert registered, f"/{name} was not registered"
    return registered[0]


async def test_commands_are_registered_with_choices_and_ranges(fake, bot):
    imagine = {option["name"]: option for option in command(fake, "imagine")["options"]}
    assert imagine["prompt"]["required"] is True
    assert [c["value"] for c in imagine["aspect"]["choices"]] == ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16"]
    assert (imagine["count"]["min_value"], imagine["count"]["max_value"]) == (1, 4)
    assert (imagine["steps"]["min_value"], imagine["steps"]["max_value"]) == (1, 16)
    assert {"queue", "cancel"} <= {c["name"] for c in fake.commands}
    assert fake.spec_violations == []


async def test_imagine_defers_shows_progress_and_posts_tagged_pngs(fake, bot):
    ix = await fake.slash_command("imagine", {"prompt": "a red fox in snow", "seed": 42, "count": 2, "aspect": "16:9"},
                                  user=fake.alice)
    response = await ix.wait_response(timeout=3)
    assert response["type"] == 5  # deferred: the first answer comes at once
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id, count=2)
    history = contents(result)
    assert any("position" in text for text in history), history
    # Progress counts the steps of both images (2 × 8); which steps are shown depends on PROGRESS_INTERVAL's timing.
    assert any(re.search(r"step \d+/16 ", text) for text in history), history
    images = pngs(result)
    assert len(images) == 2
    for index, png in enumerate(images):
        text = png_text(png)
        assert text["prompt"] == "a red fox in snow"
        assert text["seed"] == str(42 + index)
        assert (text["width"], text["height"], text["steps"], text["model"]) == ("1344", "768", "8", "tiny")
    embed = result.embeds[0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert "1344×768" in fields["Size"] and fields["Seeds"] == "42, 43" and fields["Steps"] == "8"
    assert "Time" in fields
    assert {cid.split(":")[1] for cid in result.custom_ids()} == {"reroll", "vary", "delete", "variant"}
    assert fake.spec_violations == []


async def test_same_prompt_seed_and_size_give_the_same_pixels(fake, bot):
    first = await fake.slash_command("imagine", {"prompt": "lighthouse", "seed": 7, "steps": 2}, user=fake.alice)
    second = await fake.slash_command("imagine", {"prompt": "lighthouse", "seed": 7, "steps": 2}, user=fake.bob)
    other = await fake.slash_command("imagine", {"prompt": "lighthouse", "seed": 8, "steps": 2}, user=fake.bob)
    results = [pngs((await wait_result(fake, await queued_job(ix)))[0])[0] for ix in (first, second, other)]
    assert pixels(results[0]) == pixels(results[1])
    assert pixels(results[0]) != pixels(results[2])


async def test_buttons_reroll_variations_and_delete(fake, bot):
    ix = await fake.slash_command("imagine", {"prompt": "a teapot", "seed": 5, "steps": 2, "count": 2}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id, count=2)

    reroll = await fake.click_button(result, f"zimage:reroll:{job_id}", user=fake.bob)
    reroll_job = await queued_job(reroll)
    [rerolled] = await wait_result(fake, reroll_job, count=2)
    seeds = [int(png_text(png)["seed"]) for png in pngs(rerolled)]
    assert seeds[1] == seeds[0] + 1 and seeds != [5, 6]
    assert all(png_text(png)["prompt"] == "a teapot" for png in pngs(rerolled))

    vary = await fake.click_button(result, f"zimage:vary:{job_id}", user=fake.alice)
    [varied] = await wait_result(fake, await queued_job(vary), count=2)
    assert len(pngs(varied)) == 2 and all(png_text(png)["prompt"] == "a teapot" for png in pngs(varied))

    refused = await fake.click_button(result, f"zimage:delete:{job_id}", user=fake.bob)
    answer = await refused.wait_response()
    assert answer["type"] == 4 and answer["data"]["flags"] & 64  # ephemeral refusal
    assert not result.deleted

    allowed = await fake.click_button(result, f"zimage:delete:{job_id}", user=fake.alice)
    await allowed.wait_response()
    await fake.wait_for(lambda: result.deleted, timeout=10, what="the result message deleted")

    by_mod = await fake.click_button(rerolled, f"zimage:delete:{reroll_job}", user=fake.mod)
    await by_mod.wait_response()
    await fake.wait_for(lambda: rerolled.deleted, timeout=10, what="a moderator deleting another's result")
    assert fake.spec_violations == []


@pytest.mark.parametrize("prompt, fragment", [
    ("   ", "prompt is empty"),
    ("x" * 700, "tokens long"),
])
async def test_bad_prompts_get_a_private_refusal_and_queue_nothing(fake, bot, prompt, fragment):
    """An empty prompt is refused in the first answer; the token count needs the worker, so it is checked after the
    public "thinking…", which is then deleted: either way only the member reads why."""
    ix = await fake.slash_command("imagine", {"prompt": prompt}, user=fake.alice)
    answer = await ix.wait_response(timeout=3)
    assert answer["type"] == (4 if fragment == "prompt is empty" else 5)
    assert fragment in await wait_refusal(ix)
    assert not [m for m in fake.messages.values() if not m.deleted and not m.ephemeral and fragment in (m.content or "")]
    queue = await fake.slash_command("queue", {}, user=fake.alice)
    assert "no jobs" in (await queue.wait_response())["data"]["content"]


async def test_queue_limit_queue_listing_and_cancel(fake, bot):
    slow = {"prompt": "busy", "steps": 16, "count": 4}
    jobs = []
    for _ in range(3):
        jobs.append(await queued_job(await fake.slash_command("imagine", slow, user=fake.alice)))
    fourth = await fake.slash_command("imagine", slow, user=fake.alice)
    assert (await fourth.wait_response(timeout=3))["type"] == 5  # answered before the queue is counted
    assert "limit is 3" in await wait_refusal(fourth)

    listing = (await (await fake.slash_command("queue", {}, user=fake.alice)).wait_response())["data"]
    assert listing["flags"] & 64
    for job_id in jobs:
        assert f"#{job_id}" in listing["content"]
    assert "position" in listing["content"]

    choices = await fake.autocomplete("cancel", {"job": ""}, focused="job", user=fake.alice)
    assert {choice["value"] for choice in choices} == set(jobs)
    assert await fake.autocomplete("cancel", {"job": ""}, focused="job", user=fake.bob) == []

    not_yours = await fake.slash_command("cancel", {"job": jobs[2]}, user=fake.bob)
    assert "no job" in (await not_yours.wait_response())["data"]["content"]
    cancel = await fake.slash_command("cancel", {"job": jobs[2]}, user=fake.alice)
    assert "cancelled" in (await cancel.wait_response())["data"]["content"]
    cancel_running = await fake.slash_command("cancel", {"job": jobs[0]}, user=fake.alice)
    await cancel_running.wait_response()
    await wait_result(fake, jobs[1], count=4)
    cancelled = [m for m in fake.messages.values() if f"Job #{jobs[2]} was cancelled" in m.content]
    assert cancelled and not pngs(cancelled[0])
    assert fake.spec_violations == []


async def test_rate_limit_refuses_politely(fake, data_dir, bot_process):
    bot = bot_process(RATE_LIMIT_COUNT="2", RATE_LIMIT_PERIOD="3600", MAX_QUEUED_PER_USER="10")
    await bot.start()
    try:
        for _ in range(2):
            await queued_job(await fake.slash_command("imagine", {"prompt": "p", "steps": 1}, user=fake.bob))
        third = await fake.slash_command("imagine", {"prompt": "p", "steps": 1}, user=fake.bob)
        assert "Slow down" in await wait_refusal(third)
    finally:
        await bot.stop()


async def test_five_at_once_with_a_cap_of_three_queue_exactly_three(fake, data_dir, bot_process):
    """The cap holds under a burst: the check is part of the job's INSERT (bot/db/admission.py), not a read before it."""
    bot = bot_process(RATE_LIMIT_COUNT="100", MAX_QUEUED_PER_USER="3")
    await bot.start()
    try:
        burst = await asyncio.gather(*(fake.slash_command("imagine", {"prompt": f"burst {i}", "steps": 1}, user=fake.bob)
                                       for i in range(5)))
        answers = await asyncio.gather(*(ix.wait_response(timeout=3) for ix in burst))
        assert [a["type"] for a in answers] == [5] * 5  # every one answered at once, before its checks
        outcomes = await asyncio.gather(*(fake.wait_for(lambda ix=ix: refusal_text(ix) or queued_job_now(ix), timeout=30)
                                          for ix in burst))
        refused = [text for text in outcomes if isinstance(text, str)]
        assert len(refused) == 2 and all("the limit is 3" in text for text in refused), outcomes
        jobs = [job for job in outcomes if isinstance(job, int)]
        assert len(set(jobs)) == 3
        for job_id in jobs:
            await wait_result(fake, job_id, timeout=120)
        assert fake.spec_violations == []
    finally:
        await bot.stop()
