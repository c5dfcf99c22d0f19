"""``python -m bot``: check settings, migrate the database, start the worker and the bot."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
from pathlib import Path

import discord
import yarl

from .db.migrate import upgrade_to_head
from .settings import Settings, SettingsError, load_settings
from .startup_errors import ExitCode, database_line, explain


def make_private(data_dir: Path) -> None:
    """Everything the bot (and the worker it spawns, which inherits the umask) writes is owner-only: the
    database, members' training photos and zips, outputs, LoRAs, the link-signing key. DATA_DIR itself
    is made 0700, also when it already existed with wider permissions (files written before this
    version keep their modes, but are unreachable inside it)."""
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(data_dir.stat().st_mode) & 0o077:
        logging.getLogger(__name__).warning("DATA_DIR %s was readable by other users: made it owner-only (0700)",
                                            data_dir)
        data_dir.chmod(0o700)


def point_discord_at(settings: Settings) -> None:
    """Let an operator (or the tests) point discord.py at a proxy or a fake Discord."""
    discord.http.Route.BASE = settings.discord_api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run(settings: Settings) -> int:
    from .client import ZImageBot

    # The bot never joins voice: discord.py's warnings about missing voice libraries are noise at every start.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    bot = ZImageBot(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
    try:
        async with bot:
            await bot.start(settings.discord_token)
    except Exception as exc:
        known = explain(exc, settings)
        if known is None:
            raise
        code, line = known
        print(line, file=sys.stderr)
        return code
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from .check import main as check

        return check(argv[1:])
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    logging.basicConfig(level=settings.log_level, format="%(asctime)s bot %(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level)))
    make_private(settings.data_dir)
    try:
        upgrade_to_head(settings.sync_database_url)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
        print(database_line(settings.database_url, exc), file=sys.stderr)
        return ExitCode.DATABASE
    point_discord_at(settings)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
