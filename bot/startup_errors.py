"""Start-up failures an operator can fix: one line on stderr each, and an exit code of its own.

Without this, a bot that cannot reach Discord ends in a 40-line aiohttp traceback. The codes let a
service manager or a script tell the cases apart (README, "Troubleshooting" lists them).
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
from enum import IntEnum

import aiohttp
import discord
from yarl import URL

from .settings import Settings, SettingsError


class ExitCode(IntEnum):
    CONFIG = 2  # a setting is missing or malformed (bot/settings.py)
    DATABASE = 3  # the database cannot be opened or migrated
    DISCORD_UNREACHABLE = 4  # DNS, TLS, refused or timed-out connections, Discord's own 5xx
    TOKEN_REJECTED = 5  # Discord answered 401 to the token
    INTENTS_MISSING = 6  # privileged intents not enabled in the developer portal
    PORT_IN_USE = 7  # the HTTP file endpoint (HTTP_HOST:HTTP_PORT) cannot listen


PORTAL = "https://discord.com/developers/applications"


def explain(exc: BaseException, settings: Settings) -> tuple[ExitCode, str] | None:
    """The exit code and the one line for a failure while logging in or starting; None for a real bug."""
    if isinstance(exc, SettingsError):  # found at start-up, e.g. WORKER_GPUS against the GPUs really there
        return ExitCode.CONFIG, f"configuration error: {exc}"
    api = URL(settings.discord_api_base)
    where = f"{api.host}:{api.port}" if api.port else str(api.host)
    if isinstance(exc, discord.LoginFailure) or (isinstance(exc, discord.ConnectionClosed) and exc.code == 4004):
        return ExitCode.TOKEN_REJECTED, (f"Discord rejected DISCORD_TOKEN: copy a new one from {PORTAL} "
                                         "(your application → Bot → Reset Token) into the environment or .env")
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return ExitCode.INTENTS_MISSING, ("Discord refused the gateway connection: the bot asks for privileged intents "
                                          f"that are not enabled for this application; enable them at {PORTAL} "
                                          "(your application → Bot → Privileged Gateway Intents)")
    reason = _connection_reason(exc, where)
    if reason:
        return ExitCode.DISCORD_UNREACHABLE, f"cannot reach Discord at {settings.discord_api_base}: {reason}"
    if isinstance(exc, discord.DiscordServerError):
        return ExitCode.DISCORD_UNREACHABLE, (f"Discord answered {exc.status} at {settings.discord_api_base}: it is "
                                              "having trouble (https://discordstatus.com); try again later")
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        # The bot binds one port, the file endpoint's (the worker's socket is the worker's business).
        problem = "is in use (another zimage-bot?)" if exc.errno == errno.EADDRINUSE else "is not an address of this machine"
        return ExitCode.PORT_IN_USE, (f"cannot serve file links on {settings.http_host}:{settings.http_port}: the address "
                                      f"{problem}; set HTTP_PORT (or HTTP_HOST) to a free one")
    return None


def _connection_reason(exc: BaseException, where: str) -> str | None:
    """Why a connection to Discord failed, in a few words; None when `exc` is not a connection failure."""
    # Most specific first: every aiohttp connector error below is a ClientConnectorError.
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {where} was not accepted ({exc.certificate_error}); a proxy intercepting TLS?"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"the TLS handshake with {where} failed ({_os_reason(exc)})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host} (DNS: {_os_reason(exc)}); is this machine online?"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {where} ({_os_reason(exc)}); no network, a firewall, or a wrong DISCORD_API_BASE?"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"no answer from {where} in time; a firewall dropping packets, or a slow proxy?"
    if isinstance(exc, aiohttp.ClientError):
        return f"{type(exc).__name__}: {exc}"
    return None


def _os_reason(exc: aiohttp.ClientOSError) -> str:
    error = getattr(exc, "os_error", None) or exc
    if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return (error.reason or str(error)).replace("_", " ").lower()
    if (code := getattr(error, "errno", None)) and code > 0:  # asyncio's strerror is "Connect call failed (...)"
        return os.strerror(code).lower()
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def database_line(database_url: str, exc: BaseException) -> str:
    """One line for a database that cannot be migrated: the driver's own words, without the password."""
    from sqlalchemy.engine import make_url

    password = None
    try:
        url = make_url(database_url)
        shown, password = url.render_as_string(hide_password=True), url.password
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as the setting names it
        shown = "DATABASE_URL"
    reason = getattr(exc, "orig", None) or exc  # SQLAlchemy's own text adds a second line with a help link
    text = " ".join(str(reason).split()) or type(reason).__name__
    if password:  # a driver may quote the URL it was given
        text = text.replace(database_url, shown).replace(str(password), "***")
    return f"database error: cannot migrate {shown}: {text}"
