"""Bot-token REST routes other than messages: login, commands, guild, channels, users.

Why: these are what ``Client.login``/``start`` and ``CommandTree.sync`` call
(``GET /users/@me``, ``GET /oauth2/applications/@me``, ``PUT .../commands``) plus
the lookups a bot makes (``fetch_channel``, ``fetch_member``...).  Command sync
echoes each command with ``id``, ``application_id`` and ``version`` (discord.py's
``AppCommand`` indexes them) and enforces Discord's own rules the schema cannot
express: unique names, required options before optional ones, and names (localised ones too) that
Discord's naming rule allows, for locales it knows.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import TYPE_CHECKING

import regex

from .router import Req, RouteTable
from .spec import SPEC_PATH
from .wire import DiscordError, invalid_form_body, json_response, no_content

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord

routes = RouteTable()


# -- login / application -------------------------------------------------------------
@routes.route("GET", "/users/@me")
async def get_me(fake: FakeDiscord, req: Req):
    return json_response(fake.bot_user)


def _application(fake: FakeDiscord) -> dict:
    return {
        "id": str(fake.application_id), "name": "zimage-bot", "icon": None,
        "description": "fake application", "summary": "", "type": None, "bot_public": True,
        "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0, "flags_new": "0",
        "owner": dict(fake.owner), "team": None, "rpc_origins": [], "tags": [], "redirect_uris": [],
        "interactions_endpoint_url": None, "role_connections_verification_url": None,
        "bot": dict(fake.bot_user), "approximate_guild_count": 1, "approximate_user_install_count": 0,
        "approximate_user_authorization_count": 0, "explicit_content_filter": 0,
        "eligible_oauth2_scopes": ["applications.commands", "bot"], "integration_types_config": {"0": {}},
    }


@routes.route("GET", "/oauth2/applications/@me")
async def get_oauth_app(fake: FakeDiscord, req: Req):
    return json_response(_application(fake))


@routes.route("GET", "/applications/@me")
async def get_app(fake: FakeDiscord, req: Req):
    return json_response(_application(fake))


@routes.route("GET", "/gateway", auth=False)
async def get_gateway(fake: FakeDiscord, req: Req):
    return json_response({"url": fake.gateway_url})


@routes.route("GET", "/gateway/bot")
async def get_gateway_bot(fake: FakeDiscord, req: Req):
    return json_response({"url": fake.gateway_url, "shards": 1, "session_start_limit": {
        "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})


# -- application commands --------------------------------------------------------------
def _scope(fake: FakeDiscord, req: Req) -> int | None:
    if int(req.params["app_id"]) != fake.application_id:
        raise DiscordError(403, 50001, "Missing Access")
    gid = req.params.get("guild_id")
    if gid is None:
        return None
    if int(gid) != fake.guild_id:
        raise DiscordError(403, 50001, "Missing Access")
    return int(gid)


def _registered(fake: FakeDiscord, scope: int | None) -> list:
    return fake.global_commands if scope is None else fake.guild_commands.setdefault(scope, [])


# Discord's rule for chat-input command and option names, localised ones included ("Application Command
# Naming"): 1-32 letters (any script), digits, - or _, in lowercase where a letter has one.
_NAME = regex.compile(r"^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")


@functools.cache
def _locales() -> frozenset[str]:
    schemas = json.loads(SPEC_PATH.read_text())["components"]["schemas"]
    return frozenset(choice["const"] for choice in schemas["AvailableLocalesEnum"]["oneOf"])


def _check_names(item: dict, where: str) -> None:
    """The item's name and its localisations follow the naming rule; localisations are for Discord's locales."""
    names = {None: item.get("name"), **(item.get("name_localizations") or {})}
    for locale in [*names, *(item.get("description_localizations") or {})]:
        if locale is not None and locale not in _locales():
            raise invalid_form_body(f"Invalid locale {locale!r}", where)
    for name in names.values():
        if not isinstance(name, str) or not _NAME.match(name) or name != name.lower():
            raise invalid_form_body(f"Invalid application command name {name!r}", where)


def _localised_names(items: list, locale: str) -> list:
    return [(item.get("name_localizations") or {}).get(locale, item.get("name")) for item in items]


def _check_options(options: list, where: str) -> None:
    seen_optional = False
    names = set()
    for locale in {loc for opt in options or [] for loc in (opt.get("name_localizations") or {})}:
        localised = _localised_names(options, locale)
        if len(localised) != len(set(localised)):
            raise invalid_form_body(f"Option names must be unique in {locale} ({localised})", where)
    for opt in options or []:
        _check_names(opt, f"{where}.{opt.get('name')}")
        if opt.get("name") in names:
            raise invalid_form_body(f"Option names must be unique ({opt.get('name')!r})", where)
        names.add(opt.get("name"))
        if opt.get("type") in (1, 2):
            _check_options(opt.get("options") or [], f"{where}.{opt.get('name')}")
            continue
        if opt.get("required"):
            if seen_optional:
                raise invalid_form_body("Required options must be placed before non-required options", where)
        else:
            seen_optional = True


def _echo(fake: FakeDiscord, cmd: dict, scope: int | None) -> dict:
    key = (scope, cmd.get("type", 1), cmd["name"])
    if key not in fake._command_ids:
        fake._command_ids[key] = fake.snowflake()
    out = copy.deepcopy(cmd)
    out.update({"id": str(fake._command_ids[key]), "application_id": str(fake.application_id),
                "version": str(fake.snowflake())})
    for key, default in (("type", 1), ("description", ""), ("nsfw", False), ("integration_types", [0])):
        if out.get(key) is None:  # discord.py sends some as null; Discord answers its defaults
            out[key] = default
    perms = out.get("default_member_permissions")
    out["default_member_permissions"] = None if perms is None else str(int(perms))  # answered as a string
    out.setdefault("contexts", None)
    if scope is not None:
        out["guild_id"] = str(scope)
    return out


def _validate_commands(commands: list) -> None:
    names = set()
    for cmd in commands:
        key = (cmd.get("type", 1), cmd.get("name"))
        if key in names:
            raise invalid_form_body(f"Application command names must be unique ({cmd.get('name')!r})")
        names.add(key)
        if cmd.get("type", 1) == 1:  # context menu names may have capitals and spaces
            _check_names(cmd, str(cmd.get("name")))
        _check_options(cmd.get("options") or [], f"{cmd.get('name')}.options")
    slash = [cmd for cmd in commands if cmd.get("type", 1) == 1]
    for locale in {loc for cmd in slash for loc in (cmd.get("name_localizations") or {})}:
        localised = _localised_names(slash, locale)
        if len(localised) != len(set(localised)):
            raise invalid_form_body(f"Application command names must be unique in {locale} ({localised})")


async def _put_commands(fake: FakeDiscord, req: Req):
    scope = _scope(fake, req)
    body = req.body.json or []
    _validate_commands(body)
    echoed = [_echo(fake, c, scope) for c in body]
    _registered(fake, scope)[:] = echoed
    fake.command_syncs += 1
    return json_response(echoed)


async def _get_commands(fake: FakeDiscord, req: Req):
    return json_response(_registered(fake, _scope(fake, req)))


async def _post_command(fake: FakeDiscord, req: Req):
    scope = _scope(fake, req)
    registered = _registered(fake, scope)
    _validate_commands([req.json])
    echoed = _echo(fake, req.json, scope)
    registered[:] = [c for c in registered if c["id"] != echoed["id"]] + [echoed]
    fake.command_syncs += 1
    return json_response(echoed, status=201)


def _find_command(fake: FakeDiscord, req: Req) -> tuple[list, dict]:
    registered = _registered(fake, _scope(fake, req))
    for cmd in registered:
        if cmd["id"] == req.params["command_id"]:
            return registered, cmd
    raise DiscordError(404, 10063, "Unknown application command")


async def _get_command(fake: FakeDiscord, req: Req):
    return json_response(_find_command(fake, req)[1])


async def _patch_command(fake: FakeDiscord, req: Req):
    _, cmd = _find_command(fake, req)
    cmd.update(copy.deepcopy(req.json))
    cmd["version"] = str(fake.snowflake())
    return json_response(cmd)


async def _delete_command(fake: FakeDiscord, req: Req):
    registered, cmd = _find_command(fake, req)
    registered.remove(cmd)
    return no_content()


for _base in ("/applications/{app_id}/commands", "/applications/{app_id}/guilds/{guild_id}/commands"):
    routes.route("PUT", _base)(_put_commands)
    routes.route("GET", _base)(_get_commands)
    routes.route("POST", _base)(_post_command)
    routes.route("GET", _base + "/{command_id}")(_get_command)
    routes.route("PATCH", _base + "/{command_id}")(_patch_command)
    routes.route("DELETE", _base + "/{command_id}")(_delete_command)


# -- guild, channels, users ------------------------------------------------------------
def _guild(fake: FakeDiscord, req: Req) -> None:
    if int(req.params["guild_id"]) != fake.guild_id:
        raise DiscordError(404, 10004, "Unknown Guild")


@routes.route("GET", "/guilds/{guild_id}")
async def get_guild(fake: FakeDiscord, req: Req):
    _guild(fake, req)
    out = fake.guild_json()
    if req.query.get("with_counts") in ("1", "true", "True"):
        out.update({"approximate_member_count": len(fake.members), "approximate_presence_count": 0})
    return json_response(out)


@routes.route("GET", "/guilds/{guild_id}/channels")
async def get_guild_channels(fake: FakeDiscord, req: Req):
    _guild(fake, req)
    return json_response([c for c in fake.channels.values() if c.get("guild_id")])


@routes.route("GET", "/guilds/{guild_id}/roles")
async def get_guild_roles(fake: FakeDiscord, req: Req):
    _guild(fake, req)
    return json_response(list(fake.roles.values()))


@routes.route("GET", "/guilds/{guild_id}/members/{user_id}")
async def get_member(fake: FakeDiscord, req: Req):
    _guild(fake, req)
    uid = int(req.params["user_id"])
    if uid not in fake.members:
        raise DiscordError(404, 10007, "Unknown Member")
    return json_response(fake.member_json(uid))


@routes.route("GET", "/channels/{channel_id}")
async def get_channel(fake: FakeDiscord, req: Req):
    cid = int(req.params["channel_id"])
    if cid not in fake.channels:
        raise DiscordError(404, 10003, "Unknown Channel")
    return json_response(fake.channel_json(cid))


@routes.route("GET", "/users/{user_id}")
async def get_user(fake: FakeDiscord, req: Req):
    user = fake.users.get(int(req.params["user_id"]))
    if user is None:
        raise DiscordError(404, 10013, "Unknown User")
    return json_response(user)


@routes.route("POST", "/users/@me/channels")
async def create_dm(fake: FakeDiscord, req: Req):
    uid = int(req.json.get("recipient_id", 0))
    if uid not in fake.users:
        raise invalid_form_body("Unknown user", "recipient_id")
    return json_response(fake.channel_json(fake.dm_channel(uid)))
