"""The job queue on a real SQLite file, migrated by Alembic like at start-up."""

from datetime import timedelta

from bot.db.jobs import JobStore
from bot.db.models import JobStatus, utcnow


def params(prompt="a cat"):
    return {"prompt": prompt, "aspect": "1:1", "width": 1024, "height": 1024, "steps": 8, "seeds": [1]}


async def test_fifo_positions_and_claim(store):
    jobs = [await store.enqueue(user_id=u, guild_id=1, channel_id=2, params=params()) for u in (10, 11, 10)]
    assert [await store.position(job) for job in jobs] == [1, 2, 3]
    claimed = await store.claim_next()
    assert claimed.id == jobs[0].id and claimed.status == JobStatus.RUNNING and claimed.attempts == 1
    assert await store.position(jobs[0]) is None
    assert [await store.position(job) for job in jobs[1:]] == [1, 2]
    assert await store.count_active_of(10) == 2


async def test_interaction_token_lifetime_is_recorded(store):
    job = await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params(), interaction_token="tok")
    assert timedelta(minutes=14) < job.token_expires_at - utcnow() <= timedelta(minutes=15)


async def test_cancel_only_while_queued(store):
    first = await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params())
    second = await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params())
    await store.claim_next()
    assert not await store.cancel_if_queued(first.id)  # already running
    assert await store.cancel_if_queued(second.id)
    assert (await store.get(second.id)).status == JobStatus.CANCELLED
    assert await store.count_active_of(1) == 1


async def test_recovery_requeues_running_jobs_in_order(store):
    first = await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params())
    await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params())
    await store.claim_next()
    recovered = await store.recover_interrupted()
    assert [job.id for job in recovered] == [first.id]
    again = await store.claim_next()
    assert again.id == first.id and again.attempts == 2


async def test_state_survives_reopening(store):
    await store.set_state("k", "v1")
    await store.set_state("k", "v2")
    job = await store.enqueue(user_id=1, guild_id=1, channel_id=2, params=params("persist"))
    reopened = JobStore(store.engine.url.render_as_string(hide_password=False))  # the same file
    try:
        assert await reopened.get_state("k") == "v2"
        assert (await reopened.get(job.id)).params["prompt"] == "persist"
    finally:
        await reopened.close()
