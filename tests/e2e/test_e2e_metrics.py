"""/metrics, /healthz and /readyz end to end (issue #14): the real bot, a fake Discord, the real tiny worker."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot_process import BotProcess
from e2e_helpers import pngs, queued_job, wait_result

pytestmark = pytest.mark.e2e

SLOW = {"prompt": "a slow castle", "steps": 16, "count": 2}


# JOB_MAX_ATTEMPTS=1: a worker killed mid-job fails it at once (cause worker_crashed), no retry.
BOT_ENV = {"RATE_LIMIT_COUNT": "20", "MAX_QUEUED_PER_USER": "5", "JOB_MAX_ATTEMPTS": "1"}


class Scraper:
    def __init__(self, bot: BotProcess):
        self.base = f"http://127.0.0.1:{bot.env['HTTP_PORT']}"

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as response:
            return response.status, await response.text()

    async def metrics(self) -> dict[str, list]:
        """Sample name -> [(labels, value)], from the exposition format as Prometheus reads it."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        found: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found

    async def value(self, name: str, **labels: str) -> float:
        return value_in(await self.metrics(), name, **labels)

    async def wait_until(self, predicate, what: str, timeout: float = 60) -> dict[str, list]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = await self.metrics()
            if predicate(found):
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; /metrics has {found}")
            await asyncio.sleep(0.2)

    async def wait_ready(self, status: int, timeout: float = 90) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            code, body = await self.get("/readyz")
            if code == status:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/readyz stayed {code} ({body}), wanted {status}")
            await asyncio.sleep(0.2)


def value_in(found: dict[str, list], name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a labelled counter exists from its first increment)."""
    return sum(v for sample_labels, v in found.get(name, []) if all(sample_labels.get(k) == w for k, w in labels.items()))


async def test_metrics_count_jobs_images_latencies_and_429s(fake, bot):
    scraper = Scraper(bot)
    assert (await scraper.get("/healthz"))[0] == 200
    assert await scraper.wait_ready(200, timeout=60) == '{"ready": true}'
    guild = str(fake.guild_id)
    fake.inject_rate_limit("PATCH", r"/webhooks/.*/messages/.*", times=2, retry_after=0.2)

    slow = await fake.slash_command("imagine", SLOW, user=fake.alice)
    slow_job = await queued_job(slow)
    quick_job = await queued_job(await fake.slash_command("imagine", {"prompt": "a pear", "steps": 2, "count": 2},
                                                          user=fake.bob))
    await fake.wait_for(lambda: "step" in (slow.original.content or ""), timeout=60, what="progress")
    busy = await scraper.metrics()
    # one generating, the other already sent to the worker behind it (bot/jobs/pipeline.py: one job ahead)
    assert value_in(busy, "zimage_jobs", lane="imagine", guild=guild, status="running") == 2
    assert value_in(busy, "zimage_jobs", lane="imagine", guild=guild, status="queued") == 0

    for job_id in (slow_job, quick_job):
        await wait_result(fake, job_id, count=2)
    # The job gauges are read from the database on each scrape: wait until the last job's DONE is there too.
    found = await scraper.wait_until(lambda m: value_in(m, "zimage_images_delivered_total") >= 4
                                     and all(value == 0 for labels, value in m["zimage_jobs"]), "4 images, none left")
    assert value_in(found, "zimage_images_delivered_total") == 2 * 2  # jobs × count
    for histogram in ("zimage_job_queue_wait_seconds", "zimage_generation_seconds", "zimage_delivery_seconds"):
        labels = {"lane": "imagine"} if histogram == "zimage_job_queue_wait_seconds" else {}
        assert value_in(found, f"{histogram}_count", **labels) == 2, histogram
        assert value_in(found, f"{histogram}_bucket", le="+Inf", **labels) == 2, histogram
        assert value_in(found, f"{histogram}_sum", **labels) > 0, histogram
    assert all(value == 0 for labels, value in found["zimage_jobs"])
    assert value_in(found, "zimage_job_failures_total") == 0
    for name, expected in (("zimage_worker_connected", 1), ("zimage_worker_ready", 1), ("zimage_worker_restarts_total", 0),
                           ("zimage_discord_gateway_connected", 1), ("zimage_training_steps_per_second", 0)):
        assert value_in(found, name) == expected, name
    assert "zimage_worker_busy" in found and "zimage_discord_latency_seconds" in found
    assert not any(name.startswith("zimage_gpu_") for name in found)  # the tiny worker runs on the CPU
    sent = sum(fake.sent_429.values())
    assert sent >= 2 and value_in(found, "zimage_discord_rate_limited_total") == sent
    assert value_in(found, "zimage_discord_rate_limited_total", scope="user") >= 2
    assert (await scraper.get("/readyz"))[0] == 200
    assert fake.spec_violations == []


async def test_readyz_follows_the_worker_and_a_crash_is_a_failure_by_cause(fake, bot):
    scraper = Scraper(bot)
    await scraper.wait_ready(200, timeout=60)
    worker = await bot.wait_worker()
    ix = await fake.slash_command("imagine", SLOW, user=fake.alice)
    job_id = await queued_job(ix)
    await fake.wait_for(lambda: "step" in (ix.original.content or ""), timeout=60, what="progress")
    os.kill(worker, signal.SIGKILL)

    reason = await scraper.wait_ready(503, timeout=10)
    assert '"ready": false' in reason and "worker" in reason
    assert (await scraper.get("/healthz"))[0] == 200
    await fake.wait_for(lambda: any(f"Job #{job_id} failed" in m.content and "crashed" in m.content
                                    for m in fake.messages.values()), timeout=60, what="the failure message")
    await scraper.wait_ready(200, timeout=120)
    assert bot.worker_pid() not in (None, worker)
    assert (await scraper.get("/healthz"))[0] == 200

    found = await scraper.metrics()
    assert value_in(found, "zimage_job_failures_total", lane="imagine", cause="worker_crashed") == 1
    assert value_in(found, "zimage_job_failures_total") == 1
    assert value_in(found, "zimage_worker_restarts_total") == 1
    assert value_in(found, "zimage_worker_ready") == 1 and value_in(found, "zimage_worker_connected") == 1
    assert value_in(found, "zimage_job_queue_wait_seconds_count", lane="imagine") == 1
    assert value_in(found, "zimage_generation_seconds_count") == 0
    assert value_in(found, "zimage_images_delivered_total") == 0
    assert all(value == 0 for labels, value in found.get("zimage_jobs", []))  # none scraped while active: none

    # the restarted worker serves again, and the counters go on from where they were
    again = await queued_job(await fake.slash_command("imagine", {"prompt": "after", "steps": 1}, user=fake.bob))
    [result] = await wait_result(fake, again)
    assert len(pngs(result)) == 1
    found = await scraper.wait_until(lambda m: value_in(m, "zimage_images_delivered_total") == 1, "1 image")
    assert value_in(found, "zimage_job_queue_wait_seconds_count", lane="imagine") == 2
    assert value_in(found, "zimage_delivery_seconds_count") == 1
