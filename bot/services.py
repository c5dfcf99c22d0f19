"""The bot's collaborators, built once by bot/composition.py, and the one way to reach them from Discord.

Services is a plain record: nothing takes it whole. Each cog's setup() hands its cog the few
services it uses, and a button looks up the one it needs through services_of(interaction).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import discord

from .db.jobs import JobStore
from .db.moderation import ModerationStore
from .files_server import FilesServer
from .health import Monitor
from .imagine import ImagineService
from .jobs.delivery import Delivery
from .jobs.positions import Positions
from .jobs.runner import JobRunner
from .jobs.status_edits import StatusEdits
from .lora_library import LoraImporter, LoraLibrary
from .member_settings import MemberDefaults
from .retention import Retention
from .safety import ContentCheck
from .settings import Settings
from .training.approvals import TrainingApprovals
from .training.service import TrainService
from .variants import VariantService
from .worker.client import WorkerUnavailable
from .worker.pool import WorkerPool
from .worker.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

WORKER_CONNECT_WAIT = 30.0


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: JobStore
    moderation: ModerationStore
    worker: WorkerPool  # every worker the bot drives (bot/worker/pool.py)
    supervisors: list[WorkerSupervisor]  # one per spawned worker; none when WORKER_MODE=external
    files_server: FilesServer
    monitor: Monitor  # /healthz, /readyz, /metrics on the files server; polls the worker's health
    delivery: Delivery
    positions: Positions
    status: StatusEdits  # job status lines, edited in the background
    runner: JobRunner
    imagine: ImagineService
    library: LoraLibrary
    importer: LoraImporter
    training: TrainService
    approvals: TrainingApprovals
    retention: Retention
    member_settings: MemberDefaults  # /settings: members' /imagine defaults, private results
    variants: VariantService  # a result's picture buttons (bot/variants.py)
    content_check: ContentCheck  # /mod content's image safety check (bot/safety/), on a thread of its own

    async def start(self) -> None:
        """The background parts: file links, the worker process and the connection to it, its health checks,
        retention (now, then daily)."""
        await self.files_server.start()
        for supervisor in self.supervisors:
            supervisor.start()
        self.worker.start()
        self.monitor.start()
        self.retention.start()

    async def start_queue(self) -> None:
        """Recover what a restart interrupted, then run the queue."""
        if self.supervisors:  # an external worker may be down for long: nothing to wait for
            try:
                # The worker we spawned answers prompt checks within seconds (the model loads behind it),
                # so waiting here means the first /imagine gets a checked prompt.
                await self.worker.wait_connected(WORKER_CONNECT_WAIT)
            except WorkerUnavailable:
                log.warning("the GPU worker is not up yet; jobs will wait in the queue for it")
        await self.runner.recover()
        self.positions.start()
        self.runner.start()
        # Other bot processes on the same database: their new jobs wake our lanes, their lapsed ones are ours.
        self.store.start_background(on_work=self.runner.wake, on_undelivered=self.runner.resume_delivery)

    async def close(self) -> None:
        await self.retention.stop()
        await self.store.stop_background()
        await self.runner.stop()
        await self.positions.stop()
        await self.status.stop()
        await self.store.hand_back()  # what our lanes held, to the other processes now rather than after a lease
        await self.monitor.stop()
        await self.worker.close()
        await asyncio.gather(*(supervisor.stop() for supervisor in self.supervisors))
        await self.files_server.stop()
        await self.store.close()
        self.content_check.close()


def services_of(source: discord.Interaction | discord.Client) -> Services:
    """The services of the bot an interaction came to (or of the bot itself, in a cog's setup)."""
    client = source.client if isinstance(source, discord.Interaction) else source
    services = getattr(client, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError("the bot's services are built in its setup_hook (bot/composition.py); none yet")
    return services
