"""The Discord client: the bot's lifecycle on Discord, and nothing else.

setup_hook builds the services (bot/composition.py), loads the cogs and the buttons, syncs the
commands and starts the queue; close() stops them. Errors of commands go to bot/reporting.py.
"""

from __future__ import annotations

import hashlib
import json
import logging

import discord
from discord.ext import commands

from . import metrics
from .cogs.approval import APPROVAL_BUTTONS
from .cogs.mod_views import MOD_BUTTONS
from .composition import build_services
from .i18n import CommandTranslator
from .reporting import report_error
from .services import Services
from .settings import Settings
from .views import BUTTONS

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.imagine", "bot.cogs.queue", "bot.cogs.mod", "bot.cogs.workers", "bot.cogs.train",
              "bot.cogs.lora", "bot.cogs.member_settings")
COMMANDS_HASH_KEY = "global_commands_hash"


class ZImageBot(commands.Bot):
    def __init__(self, settings: Settings):
        intents = discord.Intents.none()
        intents.guilds = True  # channels and permissions; slash commands need nothing more
        # Whatever a message says, it never pings @everyone, @here or a role; only the members it names.
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None,
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
                         http_trace=metrics.discord_trace())  # counts Discord's 429s (bot/metrics.py)
        self.settings = settings
        self.services: Services | None = None  # built in setup_hook: reading the link secret is I/O
        self.tree.on_error = report_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        self.services = await build_services(self.settings, self)
        await self.services.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*BUTTONS, *MOD_BUTTONS, *APPROVAL_BUTTONS)
        await self.tree.set_translator(CommandTranslator())  # zh-CN command names (bot/i18n)
        await self.sync_commands()
        await self.services.start_queue()

    async def sync_commands(self) -> None:
        """Sync to the dev guild every start; globally only when the command set changed."""
        if self.settings.dev_guild_id:
            guild = discord.Object(self.settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
            log.info("synced commands to guild %s", self.settings.dev_guild_id)
            return
        assert self.services is not None  # built first thing in setup_hook
        store = self.services.store
        # The payload sync would send, translations included: a changed translation is a changed command set.
        translator = self.tree.translator or CommandTranslator()
        synced = [await command.get_translated_payload(self.tree, translator) for command in self.tree.get_commands()]
        payload = json.dumps(synced, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if await store.get_state(COMMANDS_HASH_KEY) == digest:
            return
        await self.tree.sync()
        await store.set_state(COMMANDS_HASH_KEY, digest)
        log.info("synced commands globally")

    async def on_error(self, event_method: str, /, *args, **kwargs) -> None:
        log.exception("unhandled error in %s", event_method)

    async def close(self) -> None:
        if self.services:
            await self.services.close()
        await super().close()
