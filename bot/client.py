"""The Discord client: wires the store, worker, runner and cogs together in setup_hook."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import discord
from discord.ext import commands

from .cogs.approval import APPROVAL_BUTTONS
from .cogs.mod_views import MOD_BUTTONS
from .db.jobs import JobStore
from .db.loras import LoraStore
from .db.moderation import ModerationStore
from .files_server import FilesServer, LinkSigner, load_secret
from .imagine import ImagineService
from .jobs.delivery import Delivery, DiscordRoutes
from .jobs.imagine_lane import ImagineLane
from .jobs.lane import LaneContext
from .jobs.positions import Positions
from .jobs.runner import JobRunner
from .jobs.training_lane import TrainingLane
from .limits import UserLimits
from .lora_library import LoraImporter, LoraLibrary
from .moderation import RequestRules
from .reporting import report_error
from .settings import Settings
from .training.service import TrainService
from .views import BUTTONS, result_view
from .worker.client import WorkerClient, WorkerUnavailable
from .worker.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.imagine", "bot.cogs.queue", "bot.cogs.mod", "bot.cogs.train", "bot.cogs.lora")
COMMANDS_HASH_KEY = "global_commands_hash"
WORKER_CONNECT_WAIT = 30.0


class ZImageBot(commands.Bot):
    def __init__(self, settings: Settings):
        intents = discord.Intents.none()
        intents.guilds = True  # channels and permissions; slash commands need nothing more
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None)
        self.settings = settings
        self.store = JobStore(settings.database_url)
        self.moderation = ModerationStore(self.store)
        self.loras = LoraStore(self.store)
        self.rules = RequestRules(self.moderation)
        self.worker = WorkerClient(settings.socket_path)
        self.supervisor = WorkerSupervisor(settings) if settings.worker_mode == "spawn" else None
        self.delivery = Delivery(DiscordRoutes(self))
        self.positions = Positions(self.store, self.delivery)
        self.limits = UserLimits(settings, self.store)
        self.imagine = ImagineService(self)
        self.train_service = TrainService(self)
        self.files_server: FilesServer | None = None
        self.tree.on_error = report_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        secret = await asyncio.to_thread(load_secret, self.settings.data_dir)
        self.signer = LinkSigner(secret, self.settings.data_dir, self.settings.link_base, self.settings.link_ttl)
        self.files_server = FilesServer(self.signer, self.settings.http_host, self.settings.http_port)
        context = LaneContext(settings=self.settings, store=self.store, worker=self.worker, messages=self.delivery,
                              positions=self.positions)
        lanes = (ImagineLane(context, self.moderation, result_view), TrainingLane(context, self.loras, self.signer))
        self.runner = JobRunner(context, lanes, max_attempts=self.settings.max_attempts)
        self.library = LoraLibrary(self.settings, self.loras, self.signer)
        self.importer = LoraImporter(self.settings, self.library, self.rules)
        await self.files_server.start()
        if self.supervisor:
            self.supervisor.start()
        self.worker.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*BUTTONS, *MOD_BUTTONS, *APPROVAL_BUTTONS)
        await self.sync_commands()
        try:
            # The worker answers prompt checks within seconds (the model loads behind it), so
            # waiting here means the first /imagine gets a checked prompt.
            await self.worker.wait_connected(WORKER_CONNECT_WAIT)
        except WorkerUnavailable:
            log.warning("the GPU worker is not up yet; jobs will wait in the queue for it")
        await self.runner.recover()
        self.runner.start()

    async def sync_commands(self) -> None:
        """Sync to the dev guild every start; globally only when the command set changed."""
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("synced commands to guild %s", self.settings.dev_guild_id)
            return
        payload = json.dumps([command.to_dict(self.tree) for command in self.tree.get_commands()], sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if await self.store.get_state(COMMANDS_HASH_KEY) == digest:
            return
        await self.tree.sync()
        await self.store.set_state(COMMANDS_HASH_KEY, digest)
        log.info("synced commands globally")

    async def on_error(self, event_method: str, /, *args, **kwargs) -> None:
        log.exception("unhandled error in %s", event_method)

    async def close(self) -> None:
        await self.runner.stop()
        await self.worker.close()
        if self.supervisor:
            await self.supervisor.stop()
        if self.files_server:
            await self.files_server.stop()
        await self.store.close()
        await super().close()
