"""``FakeDiscord``: the server's lifecycle, state, waiting, and failure injection.

Why in the test's event loop: the fake and the assertions share state directly
(no IPC), and ``wait_for`` can be event-driven: every request, gateway message and
state change calls ``_changed()``, which wakes waiters to re-check their predicate.
The bot under test runs elsewhere (a subprocess, or an in-process client) and only
sees HTTP and a websocket, exactly as with Discord.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from . import messages, rest, webhooks
from .gateway import Gateway
from .guild import WorldMixin
from .interactions import InteractionsMixin
from .models import Message, Snowflakes
from .ratelimits import RateLimiter, RateLimits
from .router import RouteTable, make_api_handler
from .wire import DiscordError, Injection, json_response, rate_limit_rule

INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15


class FakeDiscord(WorldMixin, InteractionsMixin):
    """A fake Discord (REST + gateway) on 127.0.0.1; see the package docstring."""

    def __init__(self, *, callback_deadline: float | None = 3.0, token_lifetime: float | None = 900.0,
                 attachment_size_limit: int = 10 * 1024 * 1024, validate: bool = True,
                 reject_invalid: bool = True, rate_limits: RateLimits | None = None):
        """``rate_limits``: bucket sizes (``ratelimits.RateLimits``); ``None`` means
        ``RateLimits.from_env()``: Discord's sizes, unless ``FAKE_DISCORD_RATE_LIMITS=off``.
        ``RateLimits.off()`` enforces nothing and sends no rate-limit headers."""
        self.snowflake = Snowflakes()
        self.ratelimiter = RateLimiter(rate_limits if rate_limits is not None else RateLimits.from_env())
        self.callback_deadline = callback_deadline  # Discord: 3 s for the first callback
        self.token_lifetime = token_lifetime  # Discord: interaction tokens live 15 min
        self.attachment_size_limit = attachment_size_limit
        self.validate, self.reject_invalid = validate, reject_invalid
        self.application_id: int = self.snowflake()
        self.bot_token: str = (base64.b64encode(str(self.application_id).encode()).decode().rstrip("=")
                               + ".FaKe." + secrets.token_urlsafe(27))
        self.gateway = Gateway(self)
        self.messages: dict[int, Message] = {}
        self.interactions: dict = {}
        self._tokens: dict = {}
        self.attachments: dict[int, dict] = {}
        self.global_commands: list = []
        self.guild_commands: dict[int, list] = {}
        self._command_ids: dict = {}
        self.command_overrides: dict[str, set[int]] = {}  # command name -> user/role ids (allow_command)
        self.command_syncs = 0
        self.requests: list = []
        self.spec_violations: list[str] = []
        self.unhandled: list[str] = []
        self.response_violations: list[str] = []  # the fake's own replies vs the spec: fake bugs
        self.typing: list[int] = []
        self._injections: list[Injection] = []
        self._change = asyncio.Event()
        self._tasks: set = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._setup_world()

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> FakeDiscord:
        self._change = asyncio.Event()  # bind to the running loop
        table = RouteTable()
        for module in (webhooks, messages, rest):
            table.extend(module.routes)
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/api/v10/{tail:.*}", make_api_handler(self, table))
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        app.router.add_get("/attachments/{channel}/{att_id}/{filename}", self._serve_attachment)
        app.router.add_get("/ephemeral-attachments/{app}/{att_id}/{filename}", self._serve_attachment)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.gateway.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.http_base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway/"

    def env(self, token_var: str = "DISCORD_TOKEN") -> dict:
        """Environment for a bot subprocess pointed at this fake."""
        return {"DISCORD_API_BASE": self.api_base, "DISCORD_GATEWAY_URL": self.gateway_url,
                token_var: self.bot_token}

    # -- waiting ----------------------------------------------------------------
    def _changed(self) -> None:
        """Wake every ``wait_for``; called after each state change."""
        self._change.set()
        self._change = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, *,
                       what: str | None = None) -> Any:
        """Return ``predicate()``'s first truthy value, re-checked after each change.

        Raises TimeoutError with recent requests, violations and unhandled routes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: BaseException | None = None
        while True:
            event = self._change
            try:
                result = predicate()
            except (AttributeError, KeyError, IndexError, TypeError, StopIteration) as exc:
                # e.g. ``ix.original.content`` before the original exists: not yet true
                result, last_error = None, exc
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                headline = f"timed out after {timeout}s waiting for {what or predicate}"
                if last_error is not None:
                    headline += f" (predicate last raised {last_error!r})"
                raise TimeoutError(self.dump(headline))
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_ready(self, timeout: float = 30.0, *, require_commands: bool = True) -> None:
        """The bot identified, got READY + GUILD_CREATE, and (by default) synced commands."""
        await self.wait_for(lambda: self.gateway.ready and self.gateway.connected
                            and (self.command_syncs > 0 or not require_commands),
                            timeout, what="the bot to IDENTIFY and sync its commands")

    def ready_event_reset(self) -> None:
        """Forget the previous bot's IDENTIFY and command sync, so ``wait_ready``
        waits for the next bot process (call before restarting the bot)."""
        self.gateway.ready = False
        self.command_syncs = 0

    def dump(self, headline: str = "", last: int = 25) -> str:
        lines = [headline] if headline else []
        lines.append(f"gateway: connections={self.gateway.connections} ready={self.gateway.ready} "
                     f"connected={self.gateway.connected} intents={self.gateway.intents}")
        lines.append(f"commands: {[c['name'] for c in self.commands]}")
        lines.append(f"last {min(last, len(self.requests))} of {len(self.requests)} requests:")
        for rec in self.requests[-last:]:
            body = repr(rec.json)
            lines.append(f"  {rec.method} {rec.path} -> {rec.status}  {body[:200]}")
        if self.spec_violations:
            lines.append("spec violations:")
            lines += [f"  {v[:500]}" for v in self.spec_violations]
        if self.unhandled:
            lines.append(f"unhandled routes: {self.unhandled}")
        if self.rate_limits.enabled:
            stats = self.ratelimiter.stats()
            lines.append(f"rate limits: 429s={stats['429']} emptied={stats['emptied']} stalls={stats['stalls']}")
        return "\n".join(lines)

    # -- state queries ----------------------------------------------------------
    @property
    def commands(self) -> list:
        """Every registered command: global ones, then guild ones (with ``guild_id``)."""
        return list(self.global_commands) + [c for cmds in self.guild_commands.values() for c in cmds]

    def channel_messages(self, channel_id: int, *, include_deleted: bool = False) -> list:
        return sorted((m for m in self.messages.values()
                       if m.channel_id == int(channel_id) and (include_deleted or not m.deleted)),
                      key=lambda m: m.id)

    def edit_times(self, message_id: int) -> list[float]:
        """``time.time()`` of each successful edit of the message (any route: channel
        PATCH, webhook PATCH, the follow-up that replaces a "thinking" defer, a
        type-7 update), oldest first; its creation is not an edit."""
        return [version["at"] for version in self.messages[int(message_id)].history[1:]]

    def record_violation(self, message: str) -> None:
        self.spec_violations.append(message)
        self._changed()

    # -- rate limits ------------------------------------------------------------
    @property
    def rate_limits(self) -> RateLimits:
        return self.ratelimiter.limits

    def set_rate_limits(self, limits: RateLimits) -> None:
        """Change bucket sizes (or ``RateLimits.off()``) mid-test; open windows are
        forgotten, counters kept."""
        self.ratelimiter.configure(limits)

    @property
    def sent_429(self):
        """Counter kind -> 429s sent: ``channel_messages``, ``interaction_webhook``,
        ``global``, ``other``, and ``injected`` (``inject_rate_limit``)."""
        return self.ratelimiter.sent_429

    @property
    def requests_per_route(self):
        """Counter ``"PATCH /webhooks/{id}/{token}/messages/@original"`` -> requests."""
        return self.ratelimiter.requests_per_route

    @property
    def stalls(self) -> list:
        """``ratelimits.Stall`` for each request that waited behind its bucket."""
        return self.ratelimiter.stalls

    def ratelimit_stats(self) -> dict:
        """A JSON-able snapshot: 429s, emptied buckets, requests per route, stalls."""
        return self.ratelimiter.stats()

    # -- failure injection ------------------------------------------------------
    def expire_token(self, token: str) -> None:
        """Later webhook/callback calls with ``token`` get 401 50027 Invalid Webhook Token."""
        self._tokens[token].expired = True

    def delete_message(self, message_id: int) -> None:
        """A user deleted the message: later GET/PATCH/DELETE of it get 404 10008."""
        self._mark_deleted(self.messages[int(message_id)], by_user=True)

    def inject_rate_limit(self, method: str, path_regex: str, times: int = 1, retry_after: float = 0.2,
                          global_: bool = False) -> Injection:
        """The next ``times`` matching requests get a 429 that discord.py retries.
        ``path_regex`` is searched in the path without ``/api/v10``; method ``*`` = any."""
        rule = rate_limit_rule(method, path_regex, times, retry_after, global_)
        self._injections.append(rule)
        return rule

    def inject_error(self, method: str, path_regex: str, status: int, code: int, message: str,
                     times: int = 1) -> Injection:
        rule = Injection(method.upper(), path_regex, times, status, {"code": code, "message": message})
        self._injections.append(rule)
        return rule

    # -- gateway events ---------------------------------------------------------
    async def force_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py reconnects and RESUMEs."""
        await self.gateway.reconnect()

    async def post_message(self, channel_id: int, content: str, *, user: dict | None = None) -> Message:
        """A user posts in a channel (dispatched as MESSAGE_CREATE)."""
        msg = messages.create_message(self, int(channel_id), {"content": content}, [],
                                      author_id=int((user or self.alice)["id"]))
        self._dispatch_message("MESSAGE_CREATE", msg)
        return msg

    def _mark_deleted(self, msg: Message, *, by_user: bool) -> None:
        msg.deleted, msg.deleted_by_user = True, by_user
        if not msg.ephemeral:
            data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
            if self.channels.get(msg.channel_id, {}).get("guild_id"):
                data["guild_id"] = str(self.guild_id)
            self._dispatch_soon("MESSAGE_DELETE", data, intent=self._message_intent(msg))
        self._changed()

    def _message_intent(self, msg: Message) -> int:
        guild = self.channels.get(msg.channel_id, {}).get("guild_id")
        return INTENT_GUILD_MESSAGES if guild else INTENT_DIRECT_MESSAGES

    def _dispatch_message(self, event: str, msg: Message) -> None:
        if msg.ephemeral:  # ephemeral messages never reach the gateway
            return
        data = msg.to_json(self)
        mentioned = any(u["id"] == str(self.application_id) for u in data["mentions"])
        if msg.author_id != self.application_id and not mentioned and not self.gateway.intents & INTENT_MESSAGE_CONTENT:
            data.update(content="", embeds=[], attachments=[], components=[])  # privileged intent
        if data.get("guild_id") and msg.author_id in self.members:
            member = self.member_json(msg.author_id)
            member.pop("user")
            data["member"] = member
        self._dispatch_soon(event, data, intent=self._message_intent(msg))

    def _dispatch_soon(self, event: str, data: dict, *, intent: int | None = None) -> None:
        """Dispatch from sync code; no-op until the bot has identified."""
        gateway = getattr(self, "gateway", None)
        if gateway is None or not gateway.connected:
            return
        task = asyncio.get_running_loop().create_task(gateway.dispatch(event, data, intent=intent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- CDN ----------------------------------------------------------------------
    async def _serve_attachment(self, request: web.Request) -> web.StreamResponse:
        att = self.attachments.get(int(request.match_info["att_id"]))
        if att is None or att["filename"] != request.match_info["filename"]:
            return json_response({"message": "404: Not Found", "code": 0}, status=404)
        return web.Response(body=att["data"], content_type=att["content_type"])


__all__ = ["FakeDiscord", "DiscordError"]
