"""Variety end to end: /imagine enhance:True (the worker's rewrite shown in the result and kept in the PNG),
/mod variety (seed variance on the server's new images, Reroll and Variations included), PROMPT_ENHANCER=off."""

from __future__ import annotations

import pytest

from bot.jobs.render import quoted, short_prompt
from e2e_helpers import pixels, png_text, pngs, queued_job, wait_refusal, wait_result

pytestmark = pytest.mark.e2e

BOT_ENV = {"RATE_LIMIT_COUNT": "50"}


async def mod(fake, name, options=None) -> dict:
    ix = await fake.slash_command(f"mod {name}", options or {}, user=fake.mod)
    answer = await ix.wait_response(timeout=3)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer
    return answer["data"]


def fields(result) -> dict[str, str]:
    return {field["name"]: field["value"] for field in result.embeds[0]["fields"]}


async def test_enhance_shows_each_rewrite_and_stores_it_in_the_png(fake, bot):
    imagine = {option["name"]: option for option in
               next(c for c in fake.commands if c["name"] == "imagine")["options"]}
    assert imagine["enhance"]["type"] == 5 and not imagine["enhance"].get("required")
    ix = await fake.slash_command("imagine", {"prompt": "a red fox in snow", "seed": 42, "count": 2, "steps": 2,
                                              "enhance": True}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id, count=2)
    shown = fields(result)
    rewrites = []
    for number, png in enumerate(pngs(result), start=1):
        text = png_text(png)
        assert text["prompt"] == "a red fox in snow" and text["seed"] == str(41 + number)
        rewrite = text["enhanced_prompt"]
        assert rewrite and rewrite != text["prompt"]
        assert shown[f"Enhanced prompt {number}"] == quoted(short_prompt(rewrite, 1024))[:1024]
        rewrites.append(rewrite)
    assert rewrites[0] != rewrites[1]  # one rewrite per seed: the images differ by more than their noise

    # Reroll keeps enhance: new seeds, new rewrites.
    reroll = await fake.click_button(result, f"zimage:reroll:{job_id}", user=fake.bob)
    [rerolled] = await wait_result(fake, await queued_job(reroll), count=2)
    assert all(png_text(png)["enhanced_prompt"] not in rewrites for png in pngs(rerolled))
    assert fake.spec_violations == []


async def test_mod_variety_sets_the_servers_seed_variance(fake, bot):
    assert "off" in (await mod(fake, "variety"))["content"]
    assert "0.3" in (await mod(fake, "variety", {"seed_variance": 0.3}))["content"]
    assert "0.3" in (await mod(fake, "variety"))["content"]
    ix = await fake.slash_command("imagine", {"prompt": "a teapot", "seed": 5, "steps": 2}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)
    [varied_png] = pngs(result)
    assert png_text(varied_png)["seed_variance"] == "0.3" and fields(result)["Seed variance"] == "0.3"
    vary = await fake.click_button(result, f"zimage:vary:{job_id}", user=fake.bob)
    [varied] = await wait_result(fake, await queued_job(vary))
    assert png_text(pngs(varied)[0])["seed_variance"] == "0.3"
    # 0 is today's behaviour: no key, and the same pixels as before the setting existed.
    assert "off" in (await mod(fake, "variety", {"seed_variance": 0}))["content"]
    plain = await queued_job(await fake.slash_command("imagine", {"prompt": "a teapot", "seed": 5, "steps": 2},
                                                      user=fake.alice))
    [plain_result] = await wait_result(fake, plain)
    [plain_png] = pngs(plain_result)
    assert "seed_variance" not in png_text(plain_png) and pixels(plain_png) != pixels(varied_png)
    audit = (await mod(fake, "audit"))["content"]
    assert "variety" in audit


async def test_with_the_enhancer_off_the_option_is_refused_privately(fake, bot_process):
    bot = bot_process(PROMPT_ENHANCER="off")
    await bot.start()
    refused = await wait_refusal(await fake.slash_command("imagine", {"prompt": "a fox", "enhance": True},
                                                          user=fake.alice))
    assert "PROMPT_ENHANCER=off" in refused
