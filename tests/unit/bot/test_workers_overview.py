"""/workers rows (bot/workers_overview.py): each worker's state, device, jobs and speed from the real pool, clients
and supervisors; the health monitor and the runner are small stand-ins with their one method."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.db.models import Job, JobKind, JobStatus
from bot.i18n.catalog import CATALOG
from bot.jobs.requests import request_id
from bot.settings import Settings
from bot.worker.client import WorkerClient
from bot.worker.gpus import LocalWorker
from bot.worker.pool import WorkerPool
from bot.worker.supervisor import WorkerSupervisor
from bot.workers_overview import (
    JobRef,
    WorkerRow,
    WorkerState,
    render_rows,
    render_section,
    worker_rows,
)
from zimage_protocol.endpoints import TcpEndpoint
from zimage_protocol.messages import HealthReport, Hello

GUILD, OTHER_GUILD = 10, 20


class Reports:
    def __init__(self) -> None:
        self.reports: dict[WorkerClient, HealthReport] = {}

    def report_of(self, worker: WorkerClient) -> HealthReport | None:
        return self.reports.get(worker)


class Runner:
    """JobRunner.jobs_on over its on_worker map (job id -> the job and its link), as the runner keeps it."""

    def __init__(self) -> None:
        self.on_worker: dict[int, tuple[Job, object]] = {}

    def jobs_on(self, worker: object) -> list[Job]:
        return [job for job, link in self.on_worker.values() if link is worker]


def job(job_id: int, kind: str = JobKind.IMAGINE, guild_id: int | None = GUILD) -> Job:
    return Job(id=job_id, kind=kind, status=JobStatus.RUNNING, user_id=1, guild_id=guild_id, channel_id=1,
               params={"prompt": "a secret prompt"}, attempts=1)


def connect(client: WorkerClient, pid: int, *, ready: bool = True, device: str = "cuda") -> None:
    """What a handshake leaves on the client (bot/worker/client.py: _maintain_connection), without a socket."""
    client.hello = Hello(version=1, model="tiny", device=device, pid=pid, ready=ready)
    client._connected.set()


def report(pid: int, *, ready: bool = True, busy: bool = False, **gpu) -> HealthReport:
    return HealthReport(id="h", ready=ready, busy=busy, model="tiny", device="cuda", pid=pid, **gpu)


@pytest.fixture
def world(tmp_path: Path):
    locals_ = [LocalWorker(0, tmp_path / "zimage-gpu0.sock"), LocalWorker(1, tmp_path / "zimage-gpu1.sock")]
    settings = Settings(discord_token="x")
    supervisors = [WorkerSupervisor(settings, local) for local in locals_]
    clients = [WorkerClient(local.socket) for local in locals_] + [WorkerClient(TcpEndpoint("gpu-box.lan", 7100))]
    return WorkerPool(clients), Reports(), Runner(), supervisors


def rows(world, guild_id: int | None = GUILD) -> list[WorkerRow]:
    pool, monitor, runner, supervisors = world
    return worker_rows(pool, monitor, runner, supervisors, guild_id)


def test_a_pool_nobody_answers_is_down_with_names_and_endpoints(world):
    first, second, remote = rows(world)
    assert (first.name, first.endpoint, first.state) == ("GPU 0", "unix:zimage-gpu0.sock", WorkerState.DOWN)
    assert (second.name, second.state) == ("GPU 1", WorkerState.DOWN)
    assert (remote.name, remote.endpoint, remote.state) == (None, "tcp://gpu-box.lan:7100", WorkerState.DOWN)
    assert first.restarts == 0 and remote.restarts is None
    assert first.device is None and first.jobs == () and first.images_per_minute == 0.0


def test_a_refusal_says_why(world):
    pool = world[0]
    remote = pool.clients[2]
    remote._last_refusal = "the token is wrong " + "x" * 500  # as the client records a failed handshake
    row = rows(world)[2]
    assert row.state == WorkerState.REFUSED and row.refusal.startswith("the token is wrong") and len(row.refusal) <= 150
    assert "⛔" in render_rows([row], "en") and "the token is wrong" in render_rows([row], "en")


def test_states_follow_the_connection_the_health_report_and_the_jobs(world):
    pool, monitor, runner, supervisors = world
    first, second, remote = pool.clients
    connect(first, 11, ready=False)
    assert rows(world)[0].state == WorkerState.LOADING  # connected, no report yet, not ready at the handshake
    monitor.reports[first] = report(11, ready=True, gpu_memory_used=3 << 30, gpu_memory_total=80 << 30,
                                    gpu_utilization=0.5)
    row = rows(world)[0]
    assert (row.state, row.device, row.pid, row.gpu_memory_used) == (WorkerState.IDLE, "cuda", 11, 3 << 30)
    assert "ready, idle" in render_rows([row], "en") and "3.0/80.0 GiB" in render_rows([row], "en")
    assert "50% busy" in render_rows([row], "en")

    mine, theirs = job(5), job(6, guild_id=OTHER_GUILD)
    runner.on_worker = {5: (mine, first), 6: (theirs, first)}
    for _ in range(3):
        first.stats.image_made()
    row = rows(world)[0]
    assert row.state == WorkerState.GENERATING
    assert row.jobs == (JobRef("imagine", 5), JobRef("imagine", None))  # another server's job: no number
    assert row.images_per_minute == pytest.approx(3 * 60 / 300)
    text = render_rows([row], "en")
    assert "#5 imagine" in text and "#6" not in text and "imagine of another server" in text
    assert "secret" not in text  # never a prompt
    assert "0.6 images/min" in text

    connect(second, 12)  # ready at the handshake; busy with something of another bot process
    monitor.reports[second] = report(12, busy=True)
    assert rows(world)[1].state == WorkerState.GENERATING


def test_a_training_shows_on_the_worker_that_has_it(world):
    pool, monitor, runner, supervisors = world
    first, second, remote = pool.clients
    connect(second, 12)
    monitor.reports[second] = report(12)
    training = job(7, JobKind.TRAIN)
    runner.on_worker = {7: (training, pool)}  # the training lane's link is the pool
    assert [row.jobs for row in rows(world)] == [(), (), ()]  # not sent to a worker yet
    pool.trainings[request_id(training)] = second
    row = rows(world)[1]
    assert row.state == WorkerState.TRAINING and row.jobs == (JobRef("train", 7),)
    assert rows(world, guild_id=OTHER_GUILD)[1].jobs == (JobRef("train", None),)
    assert rows(world, guild_id=None)[1].jobs == (JobRef("train", None),)  # no server: nobody's numbers


def test_a_dead_worker_forgets_its_hello(world):
    pool = world[0]
    connect(pool.clients[0], 11)
    pool.clients[0]._connected.clear()  # the connection dropped; hello stays on the client
    row = rows(world)[0]
    assert row.state == WorkerState.DOWN and row.device is None and row.pid is None


def test_every_state_has_a_name_in_both_languages():
    assert {f"worker_state.{state}" for state in WorkerState} <= CATALOG.keys()


def test_chinese_rendering(world):
    pool, monitor, runner, supervisors = world
    connect(pool.clients[0], 11)
    monitor.reports[pool.clients[0]] = report(11)
    text = render_rows(rows(world), "zh-CN")
    assert "GPU 工作进程" in text and "就绪，空闲" in text and "未运行" in text


def test_the_reply_and_the_section_fit_their_room():
    many = [WorkerRow(endpoint=f"tcp://host-{n}.example:7100", name=None, state=WorkerState.REFUSED,
                      refusal="r" * 150, jobs=tuple(JobRef("imagine", n * 10 + k) for k in range(3)))
            for n in range(40)]
    assert len(render_rows(many, "en")) <= 2000 and "more." in render_rows(many, "en")
    section = render_section(many, "en", 500)
    assert len(section) <= 500 and section.startswith("**GPU workers**")
