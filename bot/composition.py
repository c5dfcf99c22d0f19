"""The composition root: every collaborator of the bot built once, in order, each given what it uses.

Nothing is patched in afterwards: the link secret is read before the signer is built, and the
views the lanes and approvals post are handed to them here. Only this module knows the whole graph.
"""

from __future__ import annotations

import asyncio

import discord

from zimage_protocol.endpoints import Endpoint, UnixEndpoint

from .cogs.approval import approval_view
from .db.claims import instance_id_for
from .db.jobs import JobStore
from .db.loras import LoraStore
from .db.member_settings import MemberSettingsStore
from .db.moderation import ModerationStore
from .files_server import FilesServer, LinkSigner, load_secret
from .health import Monitor
from .imagine import ImagineService
from .jobs.delivery import Delivery, DiscordRoutes
from .jobs.imagine_lane import ImagineLane
from .jobs.lane import LaneContext
from .jobs.positions import Positions
from .jobs.runner import JobRunner
from .jobs.screening import Screening, channel_age_restricted
from .jobs.status_edits import StatusEdits
from .jobs.training_lane import TrainingLane
from .limits import UserLimits
from .lora_library import LoraImporter, LoraLibrary
from .member_settings import MemberDefaults
from .moderation import RequestRules
from .retention import Retention
from .safety import ContentCheck
from .services import Services
from .settings import Settings
from .training.approvals import TrainingApprovals
from .training.service import TrainService
from .variants import VariantService
from .views import result_view
from .worker.client import WorkerClient
from .worker.gpus import local_workers
from .worker.pool import WorkerPool
from .worker.supervisor import WorkerSupervisor


async def build_services(settings: Settings, client: discord.Client) -> Services:
    """`client` is only the way to Discord for delivery (and the gateway /readyz watches); nothing built here
    knows the bot class."""
    secret = await asyncio.to_thread(load_secret, settings.data_dir)
    signer = LinkSigner(secret, settings.data_dir, settings.link_base, settings.link_ttl)

    store = JobStore(settings.database_url, instance_id=instance_id_for(settings.data_dir))
    moderation = ModerationStore(store)
    loras = LoraStore(store)
    rules = RequestRules(moderation, allow_dms=settings.allow_dms)
    limits = UserLimits(settings, store)
    members = MemberDefaults(MemberSettingsStore(store), moderation)

    if settings.worker_mode == "spawn":  # one supervised worker per GPU (WORKER_GPUS), each on its own socket
        spawned = await local_workers(settings)
        supervisors = [WorkerSupervisor(settings, local) for local in spawned]
        endpoints: list[Endpoint] = [UnixEndpoint(local.socket) for local in spawned]
    else:
        supervisors, endpoints = [], list(settings.worker_endpoints)
    worker = WorkerPool([WorkerClient(endpoint, settings.worker_security) for endpoint in endpoints])
    monitor = Monitor(client, store, worker, supervisors)
    files_server = FilesServer(signer, settings.http_host, settings.http_port, routes=monitor.routes())

    routes = DiscordRoutes(client)
    delivery = Delivery(routes)
    content_check = ContentCheck.named(settings.content_classifier)  # /mod content; loads its model on first use
    status = StatusEdits(delivery, min_interval=settings.progress_interval)
    positions = Positions(store, status)
    context = LaneContext(settings=settings, store=store, worker=worker, messages=delivery, positions=positions,
                          status=status)
    screening = Screening(content_check, channel_age_restricted(routes))
    lanes = (ImagineLane(context, moderation, result_view, screening), TrainingLane(context, loras, signer, delivery))
    runner = JobRunner(context, lanes, workers=worker.clients, max_attempts=settings.max_attempts)

    library = LoraLibrary(settings, loras, signer)
    approvals = TrainingApprovals(store, moderation, delivery, runner, approval_view)
    imagine = ImagineService(store, moderation, rules, limits, worker, runner, library, status, positions,
                             members=members, enhancer=settings.enhancer)
    return Services(
        settings=settings, store=store, moderation=moderation, worker=worker, supervisors=supervisors,
        files_server=files_server, monitor=monitor, delivery=delivery, positions=positions, status=status, runner=runner,
        imagine=imagine,
        library=library,
        importer=LoraImporter(settings, library, rules, limits),
        training=TrainService(settings, store, moderation, rules, limits, library, worker, runner, approvals),
        approvals=approvals,
        retention=Retention(settings, store, loras),
        member_settings=members,
        variants=VariantService(imagine, settings.outputs_dir),
        content_check=content_check,
    )
