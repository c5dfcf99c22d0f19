"""Health and readiness of the bot, and its metrics endpoint: the routes bot/files_server.py serves beside the links.

    GET /healthz   200 while the process runs (liveness)
    GET /readyz    200 when the Discord gateway is connected AND a GPU worker is connected and its last health
                   report says ready (model loaded and warm); else 503 with {"ready": false, "reason": ...}
    GET /metrics   the Prometheus exposition of bot/metrics.py's registry

A small background task asks the worker for its health every few seconds (every second while it is not
ready, so /readyz turns 200 soon after a restarted worker is warm). A report counts only for the worker
that sent it: after a reconnect, the new worker's pid must answer before the bot says ready again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

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
from .worker.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 5.0        # seconds between health polls of a ready worker
NOT_READY_INTERVAL = 1.0     # ... of a worker still loading, or none
HEALTH_TIMEOUT = 3.0         # a health check not answered in this time is missed
MISSED_TO_FORGET = 2         # unanswered checks in a row after which a connected worker is not ready
SCRAPE_HEALTH_TIMEOUT = 1.0  # a scrape asks again for fresh GPU figures, but never waits long for them


class Monitor:
    def __init__(self, client: discord.Client, store: JobStore, worker: WorkerClient,
                 supervisor: WorkerSupervisor | None, *, interval: float = HEALTH_INTERVAL):
        self.client, self.store, self.worker, self.supervisor = client, store, worker, supervisor
        self.interval = interval
        self.report: HealthReport | None = None  # the last health report, of whichever worker sent it
        self._missed = 0  # health checks in a row the connected worker did not answer
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="worker-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self._healthz), web.get("/readyz", self._readyz), web.get("/metrics", self._metrics)]

    # -- the worker's health ------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await self.check_worker(HEALTH_TIMEOUT)
            await asyncio.sleep(self.interval if self.worker_ready else NOT_READY_INTERVAL)

    async def check_worker(self, timeout: float, *, keep_on_failure: bool = False) -> None:
        """Ask the connected worker for its health. Without a connection the last report is forgotten; without
        an answer too, after MISSED_TO_FORGET checks in a row (one slow answer on a loaded machine is no outage)."""
        if not self.worker.connected:
            self.report, self._missed = None, 0
            return
        try:
            self.report, self._missed = await self.worker.health(timeout), 0
        except (WorkerUnavailable, ProtocolError) as exc:
            log.debug("no health report from the worker: %s", exc)
            if not keep_on_failure:
                self._missed += 1
                if self._missed >= MISSED_TO_FORGET:
                    self.report = None

    @property
    def _current_report(self) -> HealthReport | None:
        """The last report, if it came from the worker connected now."""
        hello, report = self.worker.hello, self.report
        if not self.worker.connected or hello is None or report is None or report.pid != hello.pid:
            return None
        return report

    @property
    def worker_ready(self) -> bool:
        report = self._current_report
        return report is not None and report.ready

    @property
    def gateway_connected(self) -> bool:
        ws = self.client.ws
        return self.client.is_ready() and not self.client.is_closed() and ws is not None and ws.open

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the gateway first, then the worker."""
        if not self.gateway_connected:
            return False, "the Discord gateway is not connected"
        if not self.worker.connected:
            return False, "no GPU worker is connected"
        if self._current_report is None:
            return False, "the GPU worker has not answered a health check yet"
        if not self.worker_ready:
            return False, "the GPU worker is loading its model"
        return True, "ready"

    # -- what a scrape reads ------------------------------------------------------------------------------------

    async def snapshot(self) -> metrics.Snapshot:
        jobs, trainings = await self._jobs()
        report = self._current_report
        latency = self.client.latency if self.gateway_connected else None
        return metrics.Snapshot(
            jobs=jobs, running_trainings=trainings,
            worker_connected=self.worker.connected, worker_ready=self.worker_ready,
            worker_busy=bool(report and report.busy),
            worker_restarts=self.supervisor.restarts if self.supervisor is not None else None,
            gpu_memory_used=report.gpu_memory_used if report else None,
            gpu_memory_total=report.gpu_memory_total if report else None,
            gpu_utilization=report.gpu_utilization if report else None,
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
        if self.worker.connected:  # fresh GPU figures and busy state, when the worker answers at once
            await self.check_worker(SCRAPE_HEALTH_TIMEOUT, keep_on_failure=True)
        metrics.publish(await self.snapshot())
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.REGISTRY), headers={"Content-Type": content_type})
