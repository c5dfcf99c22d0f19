"""The metrics module and the worker's GPU figures (issue #14), without Discord; the monitor's routes are in
test_health_routes.py."""

from __future__ import annotations

import asyncio
import types
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from metrics_helpers import families, samples
from paths import ROOT

from bot import metrics
from bot.db.models import Job, JobKind, JobStatus, utcnow
from bot.worker.client import WorkerUnavailable
from bot_process import free_port
from zimage_protocol.errors import ProtocolError
from zimage_protocol.frames import encode_frame, read_frame
from zimage_protocol.messages import HealthReport, TrainProgress, decode


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


_ids = iter(range(10_000_000, 20_000_000))


def job(kind: str = JobKind.IMAGINE, wait: float = 2.0, attempts: int = 1) -> Job:
    created = utcnow()
    return Job(id=next(_ids), kind=kind, status=JobStatus.RUNNING, user_id=1, guild_id=1, channel_id=1, params={"prompt": "p"},
               attempts=attempts, created_at=created, started_at=created + timedelta(seconds=wait))


# -- the protocol: optional GPU fields ------------------------------------------------------------------------------


async def read_back(data: bytes):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_frame(reader)


async def test_a_health_report_carries_gpu_figures_and_an_old_one_still_decodes():
    full = HealthReport(id="h", ready=True, busy=False, model="m", device="cuda", pid=3,
                        gpu_memory_used=5 << 30, gpu_memory_total=140 << 30, gpu_utilization=0.42)
    assert decode(await read_back(full.encode())) == full
    old = encode_frame("health_report", b"", id="h", ready=True, busy=False, model="m", device="cpu", pid=3)
    report = decode(await read_back(old))
    assert (report.gpu_memory_used, report.gpu_memory_total, report.gpu_utilization) == (None, None, None)
    nulls = encode_frame("health_report", b"", id="h", ready=True, busy=False, model="m", device="cpu", pid=3,
                         gpu_memory_used=None, gpu_utilization=None)
    assert decode(await read_back(nulls)).gpu_memory_used is None
    for bad in ({"gpu_memory_used": "lots"}, {"gpu_memory_total": 1.5}, {"gpu_utilization": True}):
        frame = encode_frame("health_report", b"", id="h", ready=True, busy=False, model="m", device="cpu", pid=3, **bad)
        with pytest.raises(ProtocolError):
            decode(await read_back(frame))


# -- the hooks ------------------------------------------------------------------------------------------------------


def test_queue_wait_is_observed_once_per_job_however_often_it_is_claimed():
    before = value("zimage_job_queue_wait_seconds_count", lane="imagine")
    total = value("zimage_job_queue_wait_seconds_sum", lane="imagine")
    claimed = job(wait=2.5)
    metrics.job_started(claimed)
    metrics.job_started(claimed)  # retried after a worker crash: the same job's wait, not a new one
    assert value("zimage_job_queue_wait_seconds_count", lane="imagine") == before + 1
    assert value("zimage_job_queue_wait_seconds_sum", lane="imagine") == pytest.approx(total + 2.5)
    metrics.job_started(job(JobKind.TRAIN, wait=60))
    assert value("zimage_job_queue_wait_seconds_count", lane="train") >= 1


def test_generation_delivery_images_and_failures():
    generations, deliveries = value("zimage_generation_seconds_count"), value("zimage_delivery_seconds_count")
    images = value("zimage_images_delivered_total")
    failed_delivery = value("zimage_job_failures_total", lane="imagine", cause="delivery")
    done = job()
    metrics.generated(done, 1.25)
    metrics.delivered(done, True, 4)
    lost = job()
    metrics.generated(lost, 1.0)
    metrics.delivered(lost, False, 2)
    recovered = job()  # re-posted after a restart: delivered, but no generation seen in this process
    metrics.delivered(recovered, True, 1)
    assert value("zimage_generation_seconds_count") == generations + 2
    assert value("zimage_delivery_seconds_count") == deliveries + 1
    assert value("zimage_images_delivered_total") == images + 5
    assert value("zimage_job_failures_total", lane="imagine", cause="delivery") == failed_delivery + 1

    crashed = value("zimage_job_failures_total", lane="train", cause="worker_crashed")
    metrics.job_failed(job(JobKind.TRAIN), "worker_crashed")
    assert value("zimage_job_failures_total", lane="train", cause="worker_crashed") == crashed + 1


async def test_every_failure_case_of_the_outcomes_mapping_is_counted_with_its_cause():
    from bot.jobs.outcomes import JobFailed, JobOutcomes
    from bot.worker.client import WorkerError
    from zimage_protocol.errors import ErrorCode

    class Nothing:
        def __getattr__(self, name):
            async def anything(*args, **kwargs):
                return True
            return anything

    context = types.SimpleNamespace(store=Nothing(), worker=Nothing(), messages=Nothing(), positions=Nothing(),
                                    status=Nothing())
    outcomes = JobOutcomes(context, max_attempts=2)
    cases = [(WorkerError(ErrorCode.OUT_OF_MEMORY, "oom"), 1, "out_of_memory"),
             (WorkerError(ErrorCode.LORA, "bad lora"), 1, "lora"),
             (WorkerUnavailable("gone"), 2, "worker_crashed"),
             (JobFailed("lost"), 1, "job_failed"),
             (RuntimeError("bug"), 1, "bot_error")]
    for error, attempts, cause in cases:
        before = value("zimage_job_failures_total", lane="imagine", cause=cause)
        await outcomes.settle(job(attempts=attempts), error)
        assert value("zimage_job_failures_total", lane="imagine", cause=cause) == before + 1, cause
    before = sum(s.value for f in metrics.REGISTRY.collect() if f.name == "zimage_job_failures" for s in f.samples)
    retried = job()
    await outcomes.settle(retried, WorkerUnavailable("gone"))  # retried, not failed
    await outcomes.settle(retried, WorkerError(ErrorCode.CANCELLED, "cancelled"))
    after = sum(s.value for f in metrics.REGISTRY.collect() if f.name == "zimage_job_failures" for s in f.samples)
    assert after == before


async def test_discord_429s_are_counted_by_scope():
    async def limited(request: web.Request) -> web.Response:
        scope = request.query.get("scope")
        headers = {"X-RateLimit-Scope": scope} if scope else {}
        return web.json_response({"retry_after": 0.1}, status=429 if scope is not None else 200, headers=headers)

    app = web.Application()
    app.router.add_get("/", limited)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    before = {scope: value("zimage_discord_rate_limited_total", scope=scope) for scope in ("user", "global", "unknown")}
    try:
        async with aiohttp.ClientSession(trace_configs=[metrics.discord_trace()]) as session:
            for query in ("?scope=user", "?scope=user", "?scope=global", "?scope=", "?scope=odd", ""):
                async with session.get(f"http://127.0.0.1:{port}/{query}"):
                    pass
    finally:
        await runner.cleanup()
    assert value("zimage_discord_rate_limited_total", scope="user") == before["user"] + 2
    assert value("zimage_discord_rate_limited_total", scope="global") == before["global"] + 1
    assert value("zimage_discord_rate_limited_total", scope="unknown") == before["unknown"] + 2


# -- the scrape-time series -----------------------------------------------------------------------------------------


def render() -> dict:
    from prometheus_client import generate_latest

    return families(generate_latest(metrics.REGISTRY).decode())


def test_job_gauges_come_from_the_snapshot_and_fall_to_zero_when_their_jobs_are_gone():
    metrics.publish(metrics.Snapshot(jobs={("imagine", "1", "queued"): 3, ("imagine", "1", "running"): 1,
                                           ("train", "none", "awaiting_approval"): 1}))
    jobs = samples(render()["zimage_jobs"])
    assert jobs[(("guild", "1"), ("lane", "imagine"), ("status", "queued"))] == 3
    assert jobs[(("guild", "1"), ("lane", "imagine"), ("status", "running"))] == 1
    metrics.publish(metrics.Snapshot(jobs={("imagine", "1", "running"): 1}))
    jobs = samples(render()["zimage_jobs"])
    assert jobs[(("guild", "1"), ("lane", "imagine"), ("status", "queued"))] == 0
    assert jobs[(("guild", "none"), ("lane", "train"), ("status", "awaiting_approval"))] == 0


def test_worker_gpu_gateway_and_training_series():
    rendered = render_with(metrics.Snapshot(jobs={}, worker_connected=True, worker_ready=True, worker_busy=False,
                                            worker_restarts=2, gateway_connected=True, gateway_latency=0.05))
    assert rendered["zimage_worker_connected"].samples[0].value == 1
    assert rendered["zimage_worker_ready"].samples[0].value == 1
    assert rendered["zimage_worker_busy"].samples[0].value == 0
    assert samples(rendered["zimage_worker_restarts"], "_total")[()] == 2
    assert rendered["zimage_discord_gateway_connected"].samples[0].value == 1
    assert rendered["zimage_discord_latency_seconds"].samples[0].value == 0.05
    assert not {"zimage_gpu_memory_used_bytes", "zimage_gpu_memory_total_bytes", "zimage_gpu_utilization_ratio"} & set(rendered)

    rendered = render_with(metrics.Snapshot(gpu_memory_used=7, gpu_memory_total=9, gpu_utilization=0.5,
                                            gateway_latency=float("inf")))
    assert rendered["zimage_gpu_memory_used_bytes"].samples[0].value == 7
    assert rendered["zimage_gpu_memory_total_bytes"].samples[0].value == 9
    assert rendered["zimage_gpu_utilization_ratio"].samples[0].value == 0.5
    assert "zimage_worker_restarts" not in rendered and "zimage_discord_latency_seconds" not in rendered

    training = job(JobKind.TRAIN)
    metrics.training_progress(training, TrainProgress(id="t", step=3, total=10, loss=0.1, seconds_per_step=0.25))
    speed = render_with(metrics.Snapshot(running_trainings=frozenset({training.id})))["zimage_training_steps_per_second"]
    assert speed.samples[0].value == 4.0
    finished = render_with(metrics.Snapshot(running_trainings=frozenset()))["zimage_training_steps_per_second"]
    assert finished.samples[0].value == 0.0


def render_with(snapshot: metrics.Snapshot) -> dict:
    metrics.publish(snapshot)
    return render()


# -- the worker's GPU figures ---------------------------------------------------------------------------------------


def test_gpu_stats_are_none_off_cuda_and_read_from_torch_on_it(monkeypatch):
    import torch

    from gpu.scheduler import GpuScheduler, GpuStats

    engine = types.SimpleNamespace(device="cpu")
    scheduler = GpuScheduler(engine)  # type: ignore[arg-type]
    assert scheduler.gpu_stats() == GpuStats(None, None, None)

    engine.device = "cuda"
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 123)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(total_memory=999))
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 37)
    assert scheduler.gpu_stats() == GpuStats(123, 999, 0.37)

    def no_nvml(device=None):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert scheduler.gpu_stats() == GpuStats(123, 999, None)
    report = HealthReport(id="h", ready=True, busy=False, model="m", device="cuda", pid=1, **scheduler.gpu_stats()._asdict())
    assert report.gpu_memory_total == 999 and report.gpu_utilization is None


def test_the_dashboard_and_the_readme_name_only_series_that_exist():
    import json
    import re

    root = ROOT
    metrics.publish(metrics.Snapshot(jobs={}, worker_restarts=0, gpu_memory_used=1, gpu_memory_total=1,
                                     gpu_utilization=0.1, gateway_latency=0.1))
    families_now = {family.name for family in metrics.REGISTRY.collect()}

    def exists(name: str) -> bool:
        return any(name in (family, f"{family}_total", f"{family}_bucket", f"{family}_count", f"{family}_sum")
                   for family in families_now)

    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"zimage_\w+", target["expr"])}
    readme = (root / "README.md").read_text()
    listed = set(re.findall(r"`(zimage_\w+)`", readme.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]))
    assert used and listed
    assert {name for name in used | listed if not exists(name)} == set()
    assert {family for family in families_now if family.startswith("zimage_")} <= {
        name.removesuffix("_total") for name in listed}
