"""The health monitor's routes (issue #14): /readyz from the gateway and the workers' health checks, /metrics from
the jobs, the workers and the GPU; served by the bot's file server on a real port, without Discord."""

from __future__ import annotations

import types

import aiohttp
import pytest
from metrics_helpers import families, samples

from bot.db.models import JobKind, JobStatus
from bot.files_server import FilesServer, LinkSigner
from bot.health import Monitor
from bot.worker.client import WorkerUnavailable
from bot.worker.pool import WorkerPool
from bot_process import free_port
from zimage_protocol.messages import HealthReport


class FakeWorker:
    endpoint = "unix:/fake.sock"

    def __init__(self):
        self.connected, self.hello, self.answer = False, None, None

    def connect(self, pid: int, ready: bool, busy: bool = False, **gpu):
        self.connected, self.hello = True, types.SimpleNamespace(pid=pid)
        self.answer = HealthReport(id="h", ready=ready, busy=busy, model="tiny", device="cpu", pid=pid, **gpu)

    async def health(self, timeout: float) -> HealthReport:
        if not self.connected or self.answer is None:
            raise WorkerUnavailable("no worker")
        return self.answer


class FakeClient:
    def __init__(self):
        self.up, self.latency = False, 0.02
        self.ws = types.SimpleNamespace(open=True)

    def is_ready(self) -> bool:
        return self.up

    def is_closed(self) -> bool:
        return False


@pytest.fixture
async def served(tmp_path, store):
    worker, other, client = FakeWorker(), FakeWorker(), FakeClient()
    supervisors = [types.SimpleNamespace(restarts=1), types.SimpleNamespace(restarts=0)]
    monitor = Monitor(client, store, WorkerPool([worker, other]), supervisors)  # type: ignore[arg-type, list-item]
    port = free_port()
    server = FilesServer(LinkSigner(b"k" * 64, tmp_path, "http://x", 60), "127.0.0.1", port, routes=monitor.routes())
    await server.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield types.SimpleNamespace(monitor=monitor, worker=worker, other=other, client=client, http=http, store=store)
    await server.stop()


async def get(http, path: str) -> tuple[int, str]:
    async with http.get(path) as response:
        return response.status, await response.text()


async def test_readyz_needs_the_gateway_and_a_warm_worker_of_the_pid_connected_now(served):
    monitor, worker, client, http = served.monitor, served.worker, served.client, served.http

    async def ready() -> tuple[int, str]:
        await monitor.check_workers(1.0)
        return await get(http, "/readyz")

    assert (await ready())[0] == 503 and "gateway" in (await ready())[1]
    client.up = True
    status, body = await ready()
    assert status == 503 and "no GPU worker" in body
    worker.connect(pid=10, ready=False)
    status, body = await ready()
    assert status == 503 and "loading" in body
    worker.connect(pid=10, ready=True)
    assert await ready() == (200, '{"ready": true}')
    worker.connected = False  # killed: the old report no longer counts
    assert (await get(http, "/readyz"))[0] == 503
    worker.connected, worker.hello = True, types.SimpleNamespace(pid=11)  # a new worker, not asked yet
    status, body = await get(http, "/readyz")
    assert status == 503 and "not answered" in body
    worker.connect(pid=11, ready=True)
    assert (await ready())[0] == 200
    client.ws.open = False  # the gateway dropped, discord.py reconnects
    assert (await ready())[0] == 503
    assert await get(http, "/healthz") == (200, '{"ok": true}')


async def test_one_warm_worker_of_the_pool_is_enough_for_readyz(served):
    monitor, worker, other, http = served.monitor, served.worker, served.other, served.http
    served.client.up = True
    worker.connect(pid=20, ready=False)  # still loading
    other.connect(pid=21, ready=False)
    await monitor.check_workers(1.0)
    assert (await get(http, "/readyz"))[0] == 503
    other.connect(pid=21, ready=True)
    await monitor.check_workers(1.0)
    assert await get(http, "/readyz") == (200, '{"ready": true}')
    other.connected = False  # the warm one died: the loading one is not enough
    await monitor.check_workers(1.0)
    status, body = await get(http, "/readyz")
    assert status == 503 and "loading" in body


async def test_a_missed_health_check_is_forgiven_once(served):
    monitor, worker = served.monitor, served.worker
    served.client.up = True
    worker.connect(pid=5, ready=True)
    await monitor.check_workers(1.0)
    answer, worker.answer = worker.answer, None  # the worker stops answering
    await monitor.check_workers(1.0)
    assert monitor.readiness()[0]
    await monitor.check_workers(1.0)
    assert monitor.readiness() == (False, "the GPU worker has not answered a health check yet")
    worker.answer = answer
    await monitor.check_workers(1.0)
    assert monitor.readiness() == (True, "ready")


async def test_metrics_route_reads_the_jobs_the_worker_and_the_gpu(served):
    store, worker, http = served.store, served.worker, served.http
    served.client.up = True
    worker.connect(pid=7, ready=True, busy=True, gpu_memory_used=3 << 30, gpu_memory_total=80 << 30, gpu_utilization=0.9)
    served.other.connect(pid=8, ready=True, busy=False, gpu_memory_used=1 << 30, gpu_memory_total=80 << 30,
                         gpu_utilization=0.5)
    for guild in (1, 1, 2, None):
        await store.enqueue(user_id=1, guild_id=guild, channel_id=5, params={})
    running = await store.claim_next()
    await store.enqueue(user_id=2, guild_id=2, channel_id=5, params={}, kind=JobKind.TRAIN,
                        status=JobStatus.AWAITING_APPROVAL)
    finished = await store.enqueue(user_id=3, guild_id=2, channel_id=5, params={})
    await store.finish(finished.id, JobStatus.DONE)

    async with http.get("/metrics") as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    found = families(text)
    jobs = {key: count for key, count in samples(found["zimage_jobs"]).items() if count}
    running_guild = str(running.guild_id)
    expected = {(("guild", "1"), ("lane", "imagine"), ("status", "queued")): 2,
                (("guild", "2"), ("lane", "imagine"), ("status", "queued")): 1,
                (("guild", "none"), ("lane", "imagine"), ("status", "queued")): 1,
                (("guild", "2"), ("lane", "train"), ("status", "awaiting_approval")): 1}
    key = (("guild", running_guild), ("lane", "imagine"), ("status", "queued"))
    expected[key] -= 1
    expected[(("guild", running_guild), ("lane", "imagine"), ("status", "running"))] = 1
    assert jobs == {k: v for k, v in expected.items() if v}
    assert found["zimage_worker_busy"].samples[0].value == 1
    assert found["zimage_worker_restarts"].samples[0].value == 1
    assert found["zimage_gpu_memory_used_bytes"].samples[0].value == 4 << 30  # both workers' GPUs, added up
    assert found["zimage_gpu_memory_total_bytes"].samples[0].value == 160 << 30
    assert found["zimage_gpu_utilization_ratio"].samples[0].value == 0.7  # their mean
    assert found["zimage_discord_latency_seconds"].samples[0].value == 0.02

    async with http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")
