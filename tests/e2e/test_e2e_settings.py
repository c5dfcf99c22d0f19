"""/settings end to end (issue #16): a member's defaults fill the /imagine options they leave out, and private results
are seen by them alone (an ephemeral reply, or a DM once its token is spent), never posted in the channel."""

from __future__ import annotations

import pytest

from e2e_helpers import png_text, pngs, queued_job, wait_result

pytestmark = pytest.mark.e2e

BOT_ENV = {"RATE_LIMIT_COUNT": "30"}
ZH, EN = "zh-CN", "en-US"


async def settings(fake, options: dict | None = None, *, user=None, locale: str = EN) -> str:
    """/settings as `user`; the content of its ephemeral reply."""
    ix = await fake.slash_command("settings", options or {}, user=user or fake.alice, locale=locale)
    answer = await ix.wait_response(timeout=5)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer  # a private reply
    return answer["data"]["content"]


def sizes(result) -> list[tuple[str, str, str]]:
    return [(text["width"], text["height"], text["steps"]) for text in map(png_text, pngs(result))]


def public_mentions_of(fake, words: str) -> list:
    """Messages anyone in the server's channels can read that show `words` or carry a PNG."""
    return [m for m in fake.messages.values()
            if not m.ephemeral and not m.deleted and fake.channels[m.channel_id].get("guild_id")
            and (words in (m.content or "") or pngs(m) or any(words in str(e) for e in m.embeds))]


async def test_defaults_fill_the_options_left_out_and_options_given_win(fake, bot):
    command = fake.find_command("settings")
    assert command["name_localizations"] == {ZH: "设置"}
    assert {option["name"] for option in command["options"]} == {"aspect", "steps", "count", "private", "reset"}

    shown = await settings(fake)
    assert "1:1 (1024×1024) (the bot's default)" in shown and "posted in the channel" in shown
    saved = await settings(fake, {"aspect": "16:9", "steps": 3, "count": 2})
    assert "Saved" in saved and "16:9 (1344×768)" in saved and "steps: 3" in saved and "count: 2" in saved
    assert "比例：16:9 (1344×768)" in await settings(fake, locale=ZH)

    ix = await fake.slash_command("imagine", {"prompt": "a fox by default"}, user=fake.alice)
    [result] = await wait_result(fake, await queued_job(ix), count=2)
    assert sizes(result) == [("1344", "768", "3")] * 2 and not result.ephemeral

    given = await fake.slash_command("imagine", {"prompt": "a fox as asked", "aspect": "3:4", "steps": 2, "count": 1},
                                     user=fake.alice)
    [result] = await wait_result(fake, await queued_job(given))
    assert sizes(result) == [("864", "1152", "2")]

    other = await fake.slash_command("imagine", {"prompt": "bob's fox", "steps": 1}, user=fake.bob)
    [result] = await wait_result(fake, await queued_job(other))
    assert sizes(result) == [("1024", "1024", "1")]  # alice's defaults are hers

    # A server's limits cap a default (an option typed over them is refused, as ever).
    await (await fake.slash_command("mod limits", {"max_count": 1}, user=fake.mod)).wait_response(timeout=5)
    capped = await fake.slash_command("imagine", {"prompt": "a capped fox"}, user=fake.alice)
    [result] = await wait_result(fake, await queued_job(capped))
    assert len(pngs(result)) == 1

    assert "forgotten" in await settings(fake, {"reset": True})
    assert "(the bot's default)" in await settings(fake)
    assert fake.spec_violations == []


async def test_private_results_reach_the_member_alone(fake, bot):
    assert "**private**" in await settings(fake, {"private": True, "steps": 1})

    ix = await fake.slash_command("imagine", {"prompt": "a secret lighthouse"}, user=fake.alice)
    answer = await ix.wait_response(timeout=3)
    assert answer["type"] == 5 and answer["data"]["flags"] & 64  # the "thinking…" is already the member's alone
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)
    assert result.ephemeral and result.id == ix.original.id and sizes(result) == [("1024", "1024", "1")]
    assert public_mentions_of(fake, "secret lighthouse") == []

    # Past the token's 15 minutes the result goes by DM (the queue is paused meanwhile, so the token expires first).
    await (await fake.slash_command("mod pause", {}, user=fake.mod)).wait_response(timeout=5)
    late = await fake.slash_command("imagine", {"prompt": "a secret harbour"}, user=fake.alice)
    late_job = await queued_job(late)
    fake.expire_token(late.token)
    await (await fake.slash_command("mod resume", {}, user=fake.mod)).wait_response(timeout=5)
    [dm] = await wait_result(fake, late_job)
    assert dm.channel_id == fake.dm_channel(fake.alice) and not fake.channels[dm.channel_id].get("guild_id")
    assert public_mentions_of(fake, "secret harbour") == []

    # Everyone else's results stay public; alice's are public again once she turns private off.
    other = await fake.slash_command("imagine", {"prompt": "a public lighthouse", "steps": 1}, user=fake.bob)
    [result] = await wait_result(fake, await queued_job(other))
    assert not result.ephemeral
    await settings(fake, {"private": False})
    again = await fake.slash_command("imagine", {"prompt": "an open lighthouse"}, user=fake.alice)
    [result] = await wait_result(fake, await queued_job(again))
    assert not result.ephemeral and sizes(result) == [("1024", "1024", "1")]  # private off, steps:1 kept
    assert fake.spec_violations == []
