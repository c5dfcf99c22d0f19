"""What each GPU worker is doing, for moderators: /workers and the workers section of /mod queue.

`worker_rows` reads the pool, the health monitor, the runner and the supervisors (all in memory: no I/O, so
a moderator's command never waits on a worker) into one `WorkerRow` per worker; `render_rows` and
`render_section` write them in the moderator's language.

Privacy: the workers serve every server the bot is in, but a moderator is only one server's moderator. A row
names this server's jobs by number and kind; another server's jobs only by kind, and no row holds a prompt.
A unix socket is shown by its file name only: the bot's data directory is none of a moderator's business.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zimage_protocol.endpoints import TcpEndpoint, UnixEndpoint
from zimage_protocol.messages import HealthReport

from .db.models import Job
from .i18n import LocaleLike, tr
from .jobs.interfaces import WorkerLink
from .jobs.requests import request_id
from .listing import MESSAGE_LIMIT, fit_lines
from .worker.client import WorkerClient
from .worker.pool import WorkerPool
from .worker.supervisor import WorkerSupervisor

REFUSAL_SHOWN = 150  # characters of a refusal's reason (a certificate error can be long)
GIB = 1 << 30


class WorkerState(enum.StrEnum):
    DOWN = "down"              # not connected, nothing answers at the endpoint
    REFUSED = "refused"        # it answered, but the handshake failed (token, version, certificate)
    LOADING = "loading"        # connected, the model is not loaded and warm yet
    IDLE = "idle"              # ready, nothing to do
    GENERATING = "generating"  # images on it (or busy with something of another bot process)
    TRAINING = "training"      # a LoRA training on it (generation may interleave)


STATE_ICONS = {WorkerState.DOWN: "🔴", WorkerState.REFUSED: "⛔", WorkerState.LOADING: "🟡",
               WorkerState.IDLE: "🟢", WorkerState.GENERATING: "🔵", WorkerState.TRAINING: "🟣"}


@dataclass(frozen=True)
class JobRef:
    """A job on a worker: its number only when it is the moderator's server's (None: another server's)."""

    kind: str
    id: int | None


@dataclass(frozen=True)
class WorkerRow:
    endpoint: str                # as shown_endpoint writes it
    name: str | None             # "GPU 1" for a worker spawned on a GPU; None for the others

    state: WorkerState
    refusal: str | None = None   # why it refused us (state REFUSED)
    device: str | None = None    # what the worker said it runs on (its Hello)
    pid: int | None = None
    gpu_memory_used: int | None = None
    gpu_memory_total: int | None = None
    gpu_utilization: float | None = None
    jobs: tuple[JobRef, ...] = ()
    images_per_minute: float = 0.0
    restarts: int | None = None  # how often its supervisor restarted it (spawned workers only)


class Reports(Protocol):
    """bot/health.py's Monitor: the last health report of the worker process connected now."""

    def report_of(self, worker: WorkerClient) -> HealthReport | None: ...


class JobsOnWorkers(Protocol):
    """bot/jobs/runner.py's JobRunner: the jobs a worker link holds now."""

    def jobs_on(self, worker: WorkerLink) -> list[Job]: ...


def worker_rows(pool: WorkerPool, monitor: Reports, runner: JobsOnWorkers, supervisors: Iterable[WorkerSupervisor],
                guild_id: int | None) -> list[WorkerRow]:
    """One row per worker of the pool, in the pool's order, as the moderator of `guild_id` may see it."""
    spawned = {supervisor.worker.socket: supervisor for supervisor in supervisors}
    # The training lane's jobs run on the pool as a whole; pool.trainings says which worker has each request.
    trainings = runner.jobs_on(pool)
    rows = []
    for client in pool.clients:
        supervisor = spawned.get(client.endpoint.path) if isinstance(client.endpoint, UnixEndpoint) else None
        training = [job for job in trainings if pool.trainings.get(request_id(job)) is client]
        jobs = [*training, *runner.jobs_on(client)]
        report = monitor.report_of(client)
        hello = client.hello if client.connected else None
        rows.append(WorkerRow(
            endpoint=shown_endpoint(client),
            # The label, e.g. "GPU 1", when the supervisor ran it on a GPU; a lone worker's label is a phrase.
            name=supervisor.worker.label if supervisor and supervisor.worker.gpu is not None else None,
            state=_state(client, report, bool(training), bool(jobs)),
            refusal=(client.last_refusal or "")[:REFUSAL_SHOWN] or None,
            device=hello.device if hello else None,
            pid=hello.pid if hello else None,
            gpu_memory_used=report.gpu_memory_used if report else None,
            gpu_memory_total=report.gpu_memory_total if report else None,
            gpu_utilization=report.gpu_utilization if report else None,
            jobs=tuple(JobRef(job.kind, job.id if job.guild_id == guild_id and guild_id is not None else None)
                       for job in jobs),
            images_per_minute=client.stats.images_per_minute(),
            restarts=supervisor.restarts if supervisor else None))
    return rows


def shown_endpoint(client: WorkerClient) -> str:
    endpoint = client.endpoint
    if isinstance(endpoint, UnixEndpoint):
        return f"unix:{endpoint.path.name}"
    assert isinstance(endpoint, TcpEndpoint)  # the only other kind
    return str(endpoint)


def _state(client: WorkerClient, report: HealthReport | None, training: bool, has_jobs: bool) -> WorkerState:
    if not client.connected:
        return WorkerState.REFUSED if client.last_refusal else WorkerState.DOWN
    # Before its first health report, the worker's Hello says whether the model was loaded when we connected.
    ready = report.ready if report else bool(client.hello and client.hello.ready)
    if not ready:
        return WorkerState.LOADING
    if training:
        return WorkerState.TRAINING
    if has_jobs or (report is not None and report.busy):
        return WorkerState.GENERATING
    return WorkerState.IDLE


# -- the texts ---------------------------------------------------------------------------------------------------


def _state_text(row: WorkerRow, locale: LocaleLike) -> str:
    text = f"{STATE_ICONS[row.state]} {tr(locale, f'worker_state.{row.state}')}"
    if row.state == WorkerState.REFUSED and row.refusal:
        text += tr(locale, "workers.refusal", reason=row.refusal)
    return text


def _jobs_text(row: WorkerRow, locale: LocaleLike) -> str:
    return ", ".join(f"#{job.id} {job.kind}" if job.id is not None else tr(locale, "workers.elsewhere", kind=job.kind)
                     for job in row.jobs)


def _gpu_text(row: WorkerRow, locale: LocaleLike) -> str | None:
    parts = []
    if row.gpu_memory_used is not None and row.gpu_memory_total:
        parts.append(tr(locale, "workers.memory", used=row.gpu_memory_used / GIB, total=row.gpu_memory_total / GIB))
    if row.gpu_utilization is not None:
        parts.append(tr(locale, "workers.utilization", percent=row.gpu_utilization * 100))
    return ", ".join(parts) or None


def render_row(row: WorkerRow, locale: LocaleLike) -> str:
    """A worker's two lines for /workers: who and in what state; then its device, GPU, jobs and speed."""
    details = []
    if row.device is not None:
        details.append(tr(locale, "workers.device", device=row.device or "?", pid=row.pid))
    if gpu := _gpu_text(row, locale):
        details.append(gpu)
    details.append(tr(locale, "workers.jobs", jobs=_jobs_text(row, locale)) if row.jobs
                   else tr(locale, "workers.no_jobs"))
    details.append(tr(locale, "workers.rate", rate=row.images_per_minute))
    if row.restarts:
        details.append(tr(locale, "workers.restarts", count=row.restarts))
    head = (tr(locale, "workers.row", name=row.name, endpoint=row.endpoint, state=_state_text(row, locale)) if row.name
            else tr(locale, "workers.row_unnamed", endpoint=row.endpoint, state=_state_text(row, locale)))
    return head + "\n" + " · ".join(details)


def render_rows(rows: Sequence[WorkerRow], locale: LocaleLike) -> str:
    """The /workers reply: a header, then one block per worker, within one message."""
    ready = sum(row.state in (WorkerState.IDLE, WorkerState.GENERATING, WorkerState.TRAINING) for row in rows)
    header = tr(locale, "workers.header", count=len(rows), ready=ready)
    return fit_lines([header, *(render_row(row, locale) for row in rows)], limit=MESSAGE_LIMIT)


def render_section(rows: Sequence[WorkerRow], locale: LocaleLike, limit: int) -> str:
    """The short workers section under the /mod queue listing: one line per worker, within `limit` characters."""
    lines = [tr(locale, "workers.section")]
    for row in rows:
        line = tr(locale, "workers.short", name=row.name or row.endpoint, state=_state_text(row, locale),
                  rate=row.images_per_minute)
        if row.jobs:
            line += tr(locale, "workers.short_jobs", jobs=_jobs_text(row, locale))
        lines.append(line)
    return fit_lines(lines, limit=limit)
