"""/workers end to end (issue #13): the real bot and its real tiny worker, as a moderator and as a member."""

from __future__ import annotations

import asyncio

import pytest

from e2e_helpers import queued_job, wait_result

pytestmark = pytest.mark.e2e

SLOW = {"prompt": "a slow castle", "steps": 16, "count": 4}


async def reply(fake, name: str, user, locale: str = "en-US") -> str:
    """The content of the command's reply, which must be ephemeral."""
    ix = await fake.slash_command(name, {}, user=user, locale=locale)
    answer = await ix.wait_response(timeout=5)
    assert answer["type"] == 4 and answer["data"]["flags"] & 64, answer
    return answer["data"]["content"]


async def wait_reply(fake, name: str, user, wanted: str, timeout: float = 60) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        content = await reply(fake, name, user)
        if wanted in content:
            return content
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/{name} never said {wanted!r}; last: {content}")
        await asyncio.sleep(0.5)


async def test_moderators_see_the_worker_its_state_and_jobs(fake, bot):
    idle = await wait_reply(fake, "workers", fake.mod, "ready, idle")
    assert "**GPU workers**: 1, 1 ready" in idle and "`unix:worker.sock`" in idle and "pid " in idle
    assert "no jobs" in idle and "0.0 images/min" in idle

    # Discord offers /workers to Manage Server members only; the bot refuses anyone else itself too.
    with pytest.raises(PermissionError):
        await reply(fake, "workers", fake.alice)
    fake.allow_command("workers")
    assert (await reply(fake, "workers", fake.alice)).startswith("Only moderators")

    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    await fake.wait_for(lambda: "step" in (ix.original.content or ""), timeout=60, what="progress")
    busy = await reply(fake, "workers", fake.mod)
    assert "generating" in busy and f"jobs: #{job_id} imagine" in busy, busy
    assert "slow castle" not in busy  # only numbers, never a prompt
    chinese = await reply(fake, "workers", fake.mod, locale="zh-CN")
    assert "生成中" in chinese and f"任务：#{job_id} imagine" in chinese
    queue = await reply(fake, "mod queue", fake.mod)
    assert "**GPU workers**" in queue and "unix:worker.sock: 🔵 generating" in queue, queue
    assert queue.endswith(f" — #{job_id} imagine"), queue

    # The slow job is cancelled (no need to wait for it), a quick one shows in images/min.
    await (await fake.slash_command("cancel", {"job": job_id}, user=fake.alice)).wait_response()
    quick = await queued_job(await fake.slash_command("imagine", {"prompt": "quick", "steps": 1}, user=fake.alice))
    await wait_result(fake, quick)
    done = await wait_reply(fake, "workers", fake.mod, "ready, idle")
    assert "no jobs" in done and "0.0 images/min" not in done, done  # images over the last five minutes
    assert fake.spec_violations == []
