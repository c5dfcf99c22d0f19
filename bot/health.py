"""Health and readiness of the bot, and its metrics endpoint: the routes bot/files_server.py serves beside the links.

    GET /healthz   200 while the process runs (liveness)
    GET /readyz    200 when the Discord gateway is connected AND a GPU worker (any of the pool's) is connected and
                   its last health report says ready (model loaded and warm); else 503 with {"ready": false, ...}
    GET /metrics   the Prometheus exposition of bot/metrics.py's registry

A small background task asks every connected worker for its health every few seconds (every second while
none is ready, so /readyz turns 200 soon after a restarted worker is warm). A report counts only for the
worker process that sent it: after a reconnect, the new worker's pid must answer before it counts as ready.
The GPU gauges of /metrics add up the workers' reports (memory) or average them (utilisation).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

import discord
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from zimage_protocol.errors import ProtocolError
from zimage_protocol.messages import HealthReport

from . import metrics
from .db.jobs import JobStore
from .db.models import Job, JobKind, JobStatus
from .worker.client import WorkerClient, WorkerUnavailable
from .worker.pool import WorkerPool
from .worker.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 5.0        # seconds between health polls of a ready worker
NOT_READY_INTERVAL = 1.0     # ... of a worker still loading, or none
HEALTH_TIMEOUT = 3.0         # a health check not answered in this time is missed
MISSED_TO_FORGET = 2         # unanswered checks in a row after which a connected worker is not ready
SCRAPE_HEALTH_TIMEOUT = 1.0  # a scrape asks again for fresh GPU figures, but never waits long for them


class Monitor:
    def __init__(self, client: discord.Client, store: JobStore, workers: WorkerPool,
                 supervisors: list[WorkerSupervisor], *, interval: float = HEALTH_INTERVAL):
        self.client, self.store, self.workers, self.supervisors = client, store, workers, supervisors
        self.interval = interval
        self.reports: dict[WorkerClient, HealthReport] = {}  # each worker's last health report
        self._missed: Counter[WorkerClient] = Counter()  # health checks in a row a connected worker did not answer
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="worker-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz), web.get("/metrics", self._metrics)]

    # -- the workers' health ------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await self.check_workers(HEALTH_TIMEOUT)
            await asyncio.sleep(self.interval if self.worker_ready else NOT_READY_INTERVAL)

    async def check_workers(self, timeout: float, *, keep_on_failure: bool = False) -> None:
        await asyncio.gather(*(self._check(worker, timeout, keep_on_failure) for worker in self.workers.clients))

    async def _check(self, worker: WorkerClient, timeout: float, keep_on_failure: bool) -> None:
        """Ask a connected worker for its health. Without a connection its last report is forgotten; without
        an answer too, after MISSED_TO_FORGET checks in a row (one slow answer on a loaded machine is no outage)."""
        if not worker.connected:
            self.reports.pop(worker, None)
            self._missed[worker] = 0
            return
        try:
            self.reports[worker], self._missed[worker] = await worker.health(timeout), 0
        except (WorkerUnavailable, ProtocolError) as exc:
            log.debug("no health report from the worker at %s: %s", worker.endpoint, exc)
            if not keep_on_failure:
                self._missed[worker] += 1
                if self._missed[worker] >= MISSED_TO_FORGET:
                    self.reports.pop(worker, None)

    def report_of(self, worker: WorkerClient) -> HealthReport | None:
        """The worker's last report, if it came from the worker process connected now."""
        hello, report = worker.hello, self.reports.get(worker)
        if not worker.connected or hello is None or report is None or report.pid != hello.pid:
            return None
        return report

    @property
    def _current_reports(self) -> list[HealthReport]:
        return [report for worker in self.workers.clients if (report := self.report_of(worker)) is not None]

    @property
    def worker_ready(self) -> bool:
        """Whether any worker is ready for a job."""
        return any(report.ready for report in self._current_reports)

    @property
    def gateway_connected(self) -> bool:
        ws = self.client.ws
        return self.client.is_ready() and not self.client.is_closed() and ws is not None and ws.open

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the gateway first, then the worker."""
        if not self.gateway_connected:
            return False, "the Discord gateway is not connected"
        if not self.workers.connected:
            return False, "no GPU worker is connected"
        if not self._current_reports:
            return False, "the GPU worker has not answered a health check yet"
        if not self.worker_ready:
            return False, "the GPU worker is loading its model"
        return True, "ready"

    # -- what a scrape reads ------------------------------------------------------------------------------------

    async def snapshot(self) -> metrics.Snapshot:
        jobs, trainings = await self._jobs()
        reports = self._current_reports
        latency = self.client.latency if self.gateway_connected else None
        return metrics.Snapshot(
            jobs=jobs, running_trainings=trainings,
            worker_connected=self.workers.connected, worker_ready=self.worker_ready,
            worker_busy=any(report.busy for report in reports),
            worker_restarts=sum(supervisor.restarts for supervisor in self.supervisors) if self.supervisors else None,
            gpu_memory_used=_total(report.gpu_memory_used for report in reports),
            gpu_memory_total=_total(report.gpu_memory_total for report in reports),
            gpu_utilization=_mean(report.gpu_utilization for report in reports),
            gateway_connected=self.gateway_connected, gateway_latency=latency)

    async def _jobs(self) -> tuple[dict[tuple[str, str, str], int] | None, frozenset[int]]:
        """Active jobs counted by (lane, guild, status), and the ids of the running trainings."""
        try:
            async with self.store.session() as session:
                rows = (await session.execute(select(Job.id, Job.kind, Job.guild_id, Job.status)
                                              .where(Job.status.in_(JobStatus.active())))).all()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("metrics: could not count the jobs: %r", exc)
            return None, frozenset()
        counts = Counter((str(kind), str(guild) if guild is not None else "none", str(status))
                         for _, kind, guild, status in rows)
        trainings = frozenset(job_id for job_id, kind, _, status in rows
                              if kind == JobKind.TRAIN and status == JobStatus.RUNNING)
        return dict(counts), trainings

    # -- the routes -----------------------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.readiness()
        if ready:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": reason}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.workers.connected:  # fresh GPU figures and busy state, when the workers answer at once
            await self.check_workers(SCRAPE_HEALTH_TIMEOUT, keep_on_failure=True)
        metrics.publish(await self.snapshot())
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.REGISTRY), headers={"Content-Type": content_type})


def _total(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _mean(values: Iterable[float | int | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None
