"""Moderators run the queue: rights, pause/resume, bans, cancel/clear, fairness, limits, audit."""

from __future__ import annotations

import pytest

from e2e_helpers import pngs, queued_job, wait_refusal, wait_result

pytestmark = pytest.mark.e2e

QUICK = {"prompt": "a quick sketch", "steps": 1}


BOT_ENV = {"RATE_LIMIT_COUNT": "50"}


async def mod(fake, name, options=None, user=None) -> dict:
    """Run a /mod command and return the data of its (ephemeral) reply."""
    ix = await fake.slash_command(f"mod {name}", options or {}, user=user or fake.mod)
    answer = await ix.wait_response(timeout=3)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer
    return answer["data"]


def mod_subcommands(fake) -> list[str]:
    [group] = [c for c in fake.commands if c["name"] == "mod"]
    names = []
    for option in group["options"]:
        if option["type"] == 1:
            names.append(option["name"])
        elif option["type"] == 2:
            names.extend(f"{option['name']} {sub['name']}" for sub in option["options"])
    return names


async def test_members_without_rights_are_refused_every_mod_command(fake, bot):
    required = {"cancel": {"job": 1}, "ban": {"user": fake.bob}, "unban": {"user": fake.bob},
                "blocklist add": {"pattern": "x"}, "blocklist remove": {"pattern": "x"},
                "channel": {"channel": fake.channel_id}}
    names = mod_subcommands(fake)
    assert {"queue", "cancel", "clear", "pause", "resume", "ban", "unban", "bans", "limits", "blocklist add",
            "blocklist remove", "blocklist list", "approve-training on", "approve-training off", "channel",
            "audit", "role"} <= set(names)
    # Discord offers /mod to Manage Server members only; the bot checks anyway, for servers whose admins let
    # everyone see it (Server Settings → Integrations).
    with pytest.raises(PermissionError):
        await mod(fake, "queue", user=fake.alice)
    fake.allow_command("mod")
    for name in names:
        data = await mod(fake, name, required.get(name), user=fake.alice)
        assert "Only moderators" in data["content"] or "Manage Server" in data["content"], (name, data)
    assert (await mod(fake, "audit"))["content"] == "No moderator actions yet."
    # The autocompletes, which no cog check covers, tell plain members nothing of the server's jobs or blocklist.
    await mod(fake, "pause")
    await mod(fake, "blocklist add", {"pattern": "secret-word"})
    job_id = await queued_job(await fake.slash_command("imagine", QUICK, user=fake.bob))
    for user, jobs, patterns in ((fake.alice, [], []), (fake.mod, [job_id], ["secret-word"])):
        assert [c["value"] for c in await fake.autocomplete("mod cancel", {"job": ""}, focused="job", user=user)] == jobs
        assert [c["value"] for c in await fake.autocomplete("mod blocklist remove", {"pattern": ""}, focused="pattern",
                                                            user=user)] == patterns
    assert fake.spec_violations == []


async def test_mod_role_makes_a_moderator(fake, bot):
    role = fake.add_role("Image mods")
    helper = fake.add_user("helper", roles=[role])
    fake.allow_command("mod", role=role)  # the admin lets the role see /mod (it needs Manage Server by default)
    assert "Only moderators" in (await mod(fake, "pause", user=helper))["content"]
    assert "moderators" in (await mod(fake, "role", {"role": role}))["content"]
    assert "paused" in (await mod(fake, "pause", user=helper))["content"]
    assert "Manage Server" in (await mod(fake, "role", {}, user=helper))["content"]  # only admins pick the role


async def test_pause_keeps_the_job_waiting_and_resume_delivers_it(fake, bot):
    await mod(fake, "pause")
    ix = await fake.slash_command("imagine", QUICK, user=fake.alice)
    job_id = await queued_job(ix)
    assert "paused" in ix.original.content
    listing = await (await fake.slash_command("queue", {}, user=fake.alice)).wait_response()
    assert f"#{job_id}" in listing["data"]["content"]
    mod_listing = (await mod(fake, "queue"))["content"]
    assert f"#{job_id}" in mod_listing and "paused" in mod_listing
    await mod(fake, "resume")
    await wait_result(fake, job_id)


async def test_ban_refuses_and_unban_allows(fake, bot):
    data = await mod(fake, "ban", {"user": fake.bob, "reason": "spam", "duration": "2h"})
    assert "banned" in data["content"]
    refused = await wait_refusal(await fake.slash_command("imagine", QUICK, user=fake.bob))
    assert "banned" in refused and "spam" in refused
    assert "bob" in (await mod(fake, "bans"))["content"] or str(fake.bob["id"]) in (await mod(fake, "bans"))["content"]
    bad = await mod(fake, "ban", {"user": fake.bob, "duration": "soon"})
    assert "not a duration" in bad["content"]
    await mod(fake, "unban", {"user": fake.bob})
    job_id = await queued_job(await fake.slash_command("imagine", QUICK, user=fake.bob))
    await wait_result(fake, job_id)


async def test_cancel_and_clear(fake, bot):
    await mod(fake, "pause")
    alice_jobs = [await queued_job(await fake.slash_command("imagine", QUICK, user=fake.alice)) for _ in range(2)]
    bob_job = await queued_job(await fake.slash_command("imagine", QUICK, user=fake.bob))
    assert "cancelled" in (await mod(fake, "cancel", {"job": alice_jobs[0]}))["content"]
    assert "Cancelled 1 job" in (await mod(fake, "clear", {"user": fake.alice}))["content"]
    assert "Cancelled 1 job" in (await mod(fake, "clear"))["content"]
    for job_id in (*alice_jobs, bob_job):
        await fake.wait_for(lambda job_id=job_id: any(f"Job #{job_id} was cancelled" in m.content
                                                      for m in fake.messages.values()), timeout=10)
    assert "Nothing is waiting" in (await mod(fake, "queue"))["content"]


async def test_fair_order_for_five_and_one(fake, bot):
    await mod(fake, "limits", {"max_queued": 10})
    await mod(fake, "pause")
    alice = [await queued_job(await fake.slash_command("imagine", QUICK, user=fake.alice)) for _ in range(5)]
    bob = await queued_job(await fake.slash_command("imagine", QUICK, user=fake.bob))
    await mod(fake, "resume")
    for job_id in (*alice, bob):
        await wait_result(fake, job_id)

    def delivered_at(job_id):
        [message] = [m for m in fake.messages.values() if f"job #{job_id}" in m.content and pngs(m)]
        return next(version["at"] for version in message.history if version["attachments"])

    order = sorted((*alice, bob), key=delivered_at)
    assert order == [alice[0], bob, *alice[1:]]


async def test_blocklist_age_restriction_and_spoilers(fake, bot):
    assert "refused" in (await mod(fake, "blocklist add", {"pattern": "gore"}))["content"]
    assert "not compile" in (await mod(fake, "blocklist add", {"pattern": "re:(["}))["content"]
    assert "`gore`" in (await mod(fake, "blocklist list"))["content"]
    refused = await wait_refusal(await fake.slash_command("imagine", {"prompt": "Gore everywhere"}, user=fake.alice))
    assert "gore" in refused
    # Words merely containing the pattern pass.
    await queued_job(await fake.slash_command("imagine", {"prompt": "a gorey sunset", "steps": 1}, user=fake.alice))

    await mod(fake, "content", {"allow_in_age_restricted": True, "spoilers": True})
    still = await wait_refusal(await fake.slash_command("imagine", {"prompt": "gore", "steps": 1}, user=fake.bob))
    assert "outside age-restricted channels" in still
    ix = await fake.slash_command("imagine", {"prompt": "gore", "steps": 1}, user=fake.bob, channel_id=fake.nsfw_channel_id)
    [result] = await wait_result(fake, await queued_job(ix))
    assert all(a["filename"].startswith("SPOILER_") for a in result.attachments)
    await mod(fake, "blocklist remove", {"pattern": "gore"})
    assert "empty" in (await mod(fake, "blocklist list"))["content"]


async def test_limits_and_bans_survive_a_restart_and_audit_lists_actions(fake, data_dir, bot_process):
    bot = bot_process()
    await bot.start()
    await mod(fake, "limits", {"max_count": 2, "max_steps": 4, "per_minute": 30})
    await mod(fake, "ban", {"user": fake.bob, "reason": "testing"})
    await mod(fake, "approve-training on")
    await bot.stop()
    restarted = bot_process()
    await restarted.start()
    try:
        limits = (await mod(fake, "limits"))["content"]
        assert "Images per request: 2" in limits and "Steps per image: 4" in limits and "30 per minute" in limits
        too_many = await wait_refusal(await fake.slash_command("imagine", {"prompt": "p", "count": 3}, user=fake.alice))
        assert "at most 2 images" in too_many
        too_long = await wait_refusal(await fake.slash_command("imagine", {"prompt": "p", "steps": 8}, user=fake.alice))
        assert "at most 4 steps" in too_long
        banned = await wait_refusal(await fake.slash_command("imagine", QUICK, user=fake.bob))
        assert "banned" in banned
        audit = (await mod(fake, "audit"))["content"]
        for action in ("limits", "ban", "approve-training"):
            assert f"**{action}**" in audit
        assert f"<@{fake.mod['id']}>" in audit
        assert fake.spec_violations == []
    finally:
        await restarted.stop()
