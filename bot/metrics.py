"""The bot's Prometheus metrics: one registry, every series defined here once, and the hooks that feed them.

Served as ``GET /metrics`` on the bot's HTTP server (bot/health.py). Two kinds of series:

* counted as things happen, by one-line hooks on the job path (``metrics.job_started(job)`` …):
    zimage_job_queue_wait_seconds{lane}        histogram  queued (created) -> first claimed by its lane
    zimage_generation_seconds                  histogram  the worker's time for one /imagine (its Done.seconds)
    zimage_delivery_seconds                    histogram  last image received -> result posted on Discord
    zimage_images_delivered_total              counter    PNGs posted (a job of count=4 adds 4)
    zimage_job_failures_total{lane,cause}      counter    failed jobs; cause as bot/jobs/outcomes.py maps the
                                                          error: a worker ErrorCode value (out_of_memory, lora, …),
                                                          worker_crashed, job_failed, bot_error, or delivery
    zimage_discord_rate_limited_total{scope}   counter    429s from Discord (REST and webhooks), by X-RateLimit-Scope
* read at scrape time (``publish(Snapshot)`` just before the registry is rendered):
    zimage_jobs{lane,guild,status}             gauge      active jobs from the database (awaiting_approval, queued,
                                                          running, delivering); guild="none" outside guilds
    zimage_worker_connected / _ready / _busy   gauge      0/1: the socket is up / its health says ready / busy
    zimage_worker_restarts_total               counter    worker processes the supervisor restarted (spawn mode)
    zimage_gpu_memory_used_bytes / _total_bytes, zimage_gpu_utilization_ratio
                                               gauge      from the worker's health report, on CUDA only
    zimage_training_steps_per_second           gauge      the running training's speed; 0 when none runs
    zimage_discord_gateway_connected           gauge      0/1
    zimage_discord_latency_seconds             gauge      the gateway heartbeat's round trip, once measured

The hooks never raise into the job path and cost a dict lookup: nothing here waits on I/O.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

QUEUE_WAIT = Histogram(
    "zimage_job_queue_wait_seconds", "Seconds from a job's creation to its lane first starting it.", ["lane"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600), registry=REGISTRY)
GENERATION = Histogram(
    "zimage_generation_seconds", "Seconds the worker took for one /imagine job (all its images).",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120), registry=REGISTRY)
DELIVERY = Histogram(
    "zimage_delivery_seconds", "Seconds from a job's last image received to its result posted on Discord.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120), registry=REGISTRY)
IMAGES_DELIVERED = Counter("zimage_images_delivered", "Images posted to Discord.", registry=REGISTRY)
FAILURES = Counter("zimage_job_failures", "Jobs that failed, by lane and cause.", ["lane", "cause"], registry=REGISTRY)
RATE_LIMITED = Counter("zimage_discord_rate_limited", "429 answers from Discord, by X-RateLimit-Scope.", ["scope"],
                       registry=REGISTRY)

RATE_LIMIT_SCOPES = ("user", "global", "shared")  # anything else is counted as "unknown"
_REMEMBERED = 10_000  # jobs whose timings are kept between their start and their end (no hook sees every end)


class _Recent(OrderedDict[int, Any]):
    """Job id -> a value, forgetting the oldest beyond _REMEMBERED (jobs whose end no hook saw: cancelled, trained)."""

    def remember(self, key: int, value: Any) -> None:
        self[key] = value
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


_waited: _Recent = _Recent()            # jobs whose queue wait was observed (once, not at each retry)
_delivery_started: _Recent = _Recent()  # job id -> time.monotonic() when its images arrived
_training_speed: dict[str, Any] = {}    # {"job": id, "steps_per_second": float} of the last progress seen


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        return max((end - start).total_seconds(), 0.0)
    except (TypeError, AttributeError):
        return None


# -- hooks on the job path ------------------------------------------------------------------------------------------


def job_started(job: Any) -> None:
    """A lane claimed the job (bot/jobs/runner.py). Its queue wait is observed at its first start only."""
    if job.id in _waited:
        return
    _waited.remember(job.id, True)
    wait = _seconds_between(job.created_at, job.started_at)
    if wait is not None:
        QUEUE_WAIT.labels(lane=str(job.kind)).observe(wait)


def generated(job: Any, seconds: float) -> None:
    """The worker sent the job's last image (bot/jobs/imagine_lane.py); `seconds` is its Done.seconds."""
    GENERATION.observe(max(seconds, 0.0))
    _delivery_started.remember(job.id, time.monotonic())


def delivered(job: Any, ok: bool, images: int) -> None:
    """The job's result was posted (ok) or could not be (a failure of cause "delivery")."""
    started = _delivery_started.pop(job.id, None)
    _waited.pop(job.id, None)
    if not ok:
        FAILURES.labels(lane=str(job.kind), cause="delivery").inc()
        return
    IMAGES_DELIVERED.inc(images)
    if started is not None:  # a result re-posted after a restart has no start in this process
        DELIVERY.observe(time.monotonic() - started)


def job_failed(job: Any, cause: str) -> None:
    """bot/jobs/outcomes.py failed the job; `cause` names the case of its error mapping."""
    FAILURES.labels(lane=str(job.kind), cause=cause).inc()
    _delivery_started.pop(job.id, None)
    _waited.pop(job.id, None)


def training_progress(job: Any, progress: Any) -> None:
    """A TrainProgress of the running training (bot/jobs/training_lane.py)."""
    seconds = getattr(progress, "seconds_per_step", 0.0)
    if seconds and seconds > 0:
        _training_speed.update(job=job.id, steps_per_second=1.0 / seconds)


def discord_trace() -> aiohttp.TraceConfig:
    """Given to discord.Client(http_trace=...): its one aiohttp session carries REST calls, interaction
    webhooks and the gateway's connect, so every 429 Discord answers is seen here, whether discord.py
    retries it itself or raises it to bot/jobs/delivery.py."""
    trace = aiohttp.TraceConfig()

    async def on_request_end(session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status == 429:
            scope = params.response.headers.get("X-RateLimit-Scope", "")
            RATE_LIMITED.labels(scope=scope if scope in RATE_LIMIT_SCOPES else "unknown").inc()

    trace.on_request_end.append(on_request_end)
    return trace


# -- read at scrape time --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What bot/health.py read just before a scrape."""

    jobs: dict[tuple[str, str, str], int] | None = None  # (lane, guild, status) -> count; None: the database failed
    running_trainings: frozenset[int] = frozenset()      # ids of the training jobs running now
    worker_connected: bool = False
    worker_ready: bool = False
    worker_busy: bool = False
    worker_restarts: int | None = None                   # None without a supervisor (WORKER_MODE=external)
    gpu_memory_used: int | None = None
    gpu_memory_total: int | None = None
    gpu_utilization: float | None = None
    gateway_connected: bool = False
    gateway_latency: float | None = None


class _LiveCollector:
    """The scrape-time series, from the last published Snapshot. Job series once seen stay, at 0, when their
    jobs are gone, so a graph drops to zero instead of ending."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self._seen_jobs: set[tuple[str, str, str]] = set()

    def describe(self) -> list[Metric]:
        return []  # series come and go with the snapshot: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        if snap.jobs is not None:
            self._seen_jobs |= set(snap.jobs)
            jobs = GaugeMetricFamily("zimage_jobs", "Active jobs by lane, guild and status (from the database).",
                                     labels=["lane", "guild", "status"])
            for key in sorted(self._seen_jobs):
                jobs.add_metric(list(key), snap.jobs.get(key, 0))
            yield jobs
        yield _gauge("zimage_worker_connected", "1 while the bot is connected to a GPU worker.", snap.worker_connected)
        yield _gauge("zimage_worker_ready", "1 while the connected worker's health says ready (model loaded, warm).",
                     snap.worker_ready)
        yield _gauge("zimage_worker_busy", "1 while the worker's health says a generation or warm-up is on the GPU.",
                     snap.worker_busy)
        if snap.worker_restarts is not None:
            yield CounterMetricFamily("zimage_worker_restarts", "GPU worker processes restarted by the supervisor.",
                                      value=snap.worker_restarts)
        if snap.gpu_memory_used is not None:
            yield _gauge("zimage_gpu_memory_used_bytes", "GPU memory held by the worker's tensors.", snap.gpu_memory_used)
        if snap.gpu_memory_total is not None:
            yield _gauge("zimage_gpu_memory_total_bytes", "GPU memory of the worker's device.", snap.gpu_memory_total)
        if snap.gpu_utilization is not None:
            yield _gauge("zimage_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the GPU (NVML).",
                         snap.gpu_utilization)
        speed = _training_speed.get("steps_per_second", 0.0) if _training_speed.get("job") in snap.running_trainings else 0.0
        yield _gauge("zimage_training_steps_per_second", "Steps per second of the running LoRA training; 0 when none.",
                     speed)
        yield _gauge("zimage_discord_gateway_connected", "1 while the Discord gateway connection is up.",
                     snap.gateway_connected)
        if snap.gateway_latency is not None and math.isfinite(snap.gateway_latency):
            yield _gauge("zimage_discord_latency_seconds", "The gateway heartbeat's round trip.", snap.gateway_latency)


def _gauge(name: str, documentation: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


_live = _LiveCollector()
REGISTRY.register(_live)


def publish(snapshot: Snapshot) -> None:
    """The state the next rendering of REGISTRY reports (bot/health.py calls it before each scrape)."""
    _live.snapshot = snapshot
