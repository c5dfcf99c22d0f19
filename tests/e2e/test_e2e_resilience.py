"""Nothing is lost: bot restarts, worker crashes, expired tokens, deleted messages, rate limits."""

from __future__ import annotations

import os
import signal

import pytest

from e2e_helpers import pngs, queued_job, result_messages, wait_result

pytestmark = pytest.mark.e2e

SLOW = {"prompt": "a slow castle", "steps": 16, "count": 2}




async def test_restart_with_jobs_queued_delivers_each_once(fake, data_dir, bot_process):
    bot = bot_process()
    await bot.start()
    jobs = []
    for user in (fake.alice, fake.alice, fake.bob):
        jobs.append(await queued_job(await fake.slash_command("imagine", SLOW, user=user)))
    await bot.kill()  # mid-queue, no clean shutdown
    restarted = bot_process()
    await restarted.start()
    try:
        for job_id in jobs:
            await wait_result(fake, job_id, count=2, timeout=180)
        for job_id in jobs:
            assert len(result_messages(fake, job_id)) == 1, f"job {job_id} delivered more than once"
        assert fake.spec_violations == []
    finally:
        await restarted.stop()


async def test_worker_killed_mid_job_is_retried_once(fake, bot):
    worker = await bot.wait_worker()
    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    await fake.wait_for(lambda: "step" in (ix.original.content or ""), timeout=60, what="progress")
    os.kill(worker, signal.SIGKILL)
    [result] = await wait_result(fake, job_id, count=2, timeout=120)
    assert len(pngs(result)) == 2
    assert bot.worker_pid() not in (None, worker)


async def test_worker_dying_twice_fails_the_job_with_a_clear_message(fake, bot):
    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    worker = await bot.wait_worker()
    await fake.wait_for(lambda: "step" in ix.original.content, timeout=60, what="progress")
    os.kill(worker, signal.SIGKILL)
    await fake.wait_for(lambda: bot.worker_pid() not in (None, worker), timeout=30, what="a restarted worker")
    edits_before_retry = ix.original.edits
    await fake.wait_for(lambda: ix.original.edits > edits_before_retry + 1 and "step" in ix.original.content,
                        timeout=60, what="progress of the retry")
    os.kill(bot.worker_pid(), signal.SIGKILL)
    await fake.wait_for(lambda: any("crashed" in m.content for m in fake.messages.values()),
                        timeout=60, what="the failure message")
    failure = next(m for m in fake.messages.values() if "crashed" in m.content)
    assert f"Job #{job_id} failed" in failure.content and not pngs(failure)
    # The bot is still alive and serving.
    again = await queued_job(await fake.slash_command("imagine", {"prompt": "after", "steps": 1}, user=fake.bob))
    await wait_result(fake, again)


async def test_expired_token_result_goes_to_the_channel_with_a_mention(fake, bot):
    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    fake.expire_token(ix.token)
    [result] = await wait_result(fake, job_id, count=2)
    assert result.interaction_token is None  # posted with the bot token, not the webhook
    assert f"<@{fake.alice['id']}>" in result.content
    assert fake.spec_violations == []


async def test_deleted_message_does_not_lose_the_result(fake, bot):
    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    fake.delete_message(ix.original.id)
    [result] = await wait_result(fake, job_id, count=2)
    assert result.id != ix.original.id
    assert fake.spec_violations == []


async def test_rate_limited_edits_are_retried(fake, bot):
    fake.inject_rate_limit("PATCH", r"/webhooks/.*/messages/.*", times=3, retry_after=0.3)
    ix = await fake.slash_command("imagine", {"prompt": "patience", "steps": 4}, user=fake.alice)
    job_id = await queued_job(ix)
    await wait_result(fake, job_id)
    assert fake.spec_violations == []


async def test_buttons_work_after_a_restart(fake, data_dir, bot_process):
    bot = bot_process()
    await bot.start()
    ix = await fake.slash_command("imagine", {"prompt": "a bridge", "steps": 2}, user=fake.alice)
    job_id = await queued_job(ix)
    [result] = await wait_result(fake, job_id)
    assert await bot.stop() == 0  # a clean shutdown on SIGTERM
    restarted = bot_process()
    await restarted.start()
    try:
        reroll = await fake.click_button(result, f"zimage:reroll:{job_id}", user=fake.bob)
        await wait_result(fake, await queued_job(reroll))
        delete = await fake.click_button(result, f"zimage:delete:{job_id}", user=fake.alice)
        await delete.wait_response()
        await fake.wait_for(lambda: result.deleted, timeout=10, what="delete after a restart")
        assert fake.spec_violations == []
    finally:
        await restarted.stop()


async def test_global_commands_are_synced_only_when_they_change(fake, data_dir, bot_process):
    first = bot_process(DEV_GUILD_ID="")
    await first.start()
    assert fake.command_syncs == 1 and {c["name"] for c in fake.global_commands} >= {"imagine", "queue", "cancel"}
    await first.stop()
    second = bot_process(DEV_GUILD_ID="")
    await second.start(require_commands=False)
    try:
        await second.wait_worker()
        assert fake.command_syncs == 0  # same command set: no second global sync
        ix = await fake.slash_command("imagine", {"prompt": "global", "steps": 1}, user=fake.alice)
        await wait_result(fake, await queued_job(ix))
    finally:
        await second.stop()
