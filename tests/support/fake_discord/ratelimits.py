"""Discord's per-route rate-limit buckets and the global limit, with Discord's headers.

Why: a fake that never answers 429 hides the design problem -- ten progress edits
per job, or a delivery queued behind edits, look free there and cost seconds on
Discord.  discord.py reads ``X-RateLimit-Remaining``/``-Reset-After``/``-Bucket``
and waits *before* sending once a bucket is spent, so a well-behaved client
rarely sees a 429: it stalls instead.  Hence the counters: 429s sent, requests per
route, responses that left a bucket empty (each one makes discord.py wait), and
requests that arrived right behind such a response (``stalls``).

The buckets (sizes in ``RateLimits``; Discord publishes few of them, these are
what bots commonly meet):

* ``channel_messages``: create, edit and delete of messages in one channel
  (``POST /channels/{c}/messages``, ``PATCH``/``DELETE /channels/{c}/messages/{m}``)
  share one bucket per channel: 5 per 5 s.
* ``interaction_webhook``: everything under ``/webhooks/{app}/{token}`` (edits of
  the original response, follow-ups) shares one bucket per token: 5 per 2 s.
* ``global_``: 50 requests per second per bot token, across all routes except the
  interaction endpoints (callbacks and ``/webhooks/{app}/{token}``), which are exempt.
* ``other``: every other route, one bucket per (method, route, major parameter:
  channel, guild or interaction id) -- mostly there so every response carries
  real headers.

Windows are fixed, as on Discord: the first request opens a window of ``per``
seconds; ``limit`` requests fit in it; ``X-RateLimit-Reset-After`` counts down to
its end.  One bucket hash (``X-RateLimit-Bucket``) per route bucket, the same for
every channel/token, as discord.py expects (it keys buckets by hash + major
parameter).  A 429 carries ``{"message", "retry_after", "global", "code"}``,
``Retry-After``, ``X-RateLimit-Scope`` (``user``/``global``/``shared``),
``X-RateLimit-Global: true`` for the global one, and ``Via`` (discord.py raises
instead of retrying a 429 without it).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

CHANNEL_MESSAGES, INTERACTION_WEBHOOK, GLOBAL, OTHER, INJECTED = (
    "channel_messages", "interaction_webhook", "global", "other", "injected")

_CHANNEL_MESSAGE = re.compile(r"^/channels/(\d+)/messages(?:/(\d+))?$")
_WEBHOOK = re.compile(r"^/webhooks/(\d+)/([^/]+)(?:/.*)?$")
_CALLBACK = re.compile(r"^/interactions/(\d+)/([^/]+)/callback$")
_MAJOR = re.compile(r"^/(?:channels|guilds)/(\d+)")
_DIGITS = re.compile(r"^\d+$")

#: a request arriving this soon after its bucket's reset, behind a response that
#: left the bucket empty, is counted as a stall (discord.py held it until the reset)
STALL_SLACK_S = 0.25


@dataclass(frozen=True)
class BucketSpec:
    """``limit`` requests per ``per`` seconds; ``scope`` is what a 429 reports
    (``user``: this bot's own bucket; ``shared``: a resource's, shared with others)."""

    limit: int
    per: float
    scope: str = "user"


@dataclass(frozen=True)
class RateLimits:
    """Bucket sizes; a field set to ``None`` turns that bucket off.

    ``RateLimits()`` is what bots meet on Discord; ``RateLimits.off()`` enforces
    nothing and sends no rate-limit headers; ``RateLimits().but(channel_messages=
    BucketSpec(3, 0.5))`` changes one size (e.g. a short window for a fast test)."""

    channel_messages: BucketSpec | None = BucketSpec(5, 5.0)
    interaction_webhook: BucketSpec | None = BucketSpec(5, 2.0)
    global_: BucketSpec | None = BucketSpec(50, 1.0, scope="global")
    other: BucketSpec | None = BucketSpec(10, 1.0)
    enabled: bool = True

    @classmethod
    def off(cls) -> RateLimits:
        return cls(None, None, None, None, enabled=False)

    def but(self, **changes: Any) -> RateLimits:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, default_on: bool = True) -> RateLimits:
        """``FAKE_DISCORD_RATE_LIMITS=off`` (or ``0``/``false``) turns them off,
        ``on`` turns them on; otherwise ``default_on`` decides."""
        value = os.environ.get("FAKE_DISCORD_RATE_LIMITS", "").strip().lower()
        if value in ("off", "0", "false", "no"):
            return cls.off()
        if value in ("on", "1", "true", "yes"):
            return cls()
        return cls() if default_on else cls.off()


@dataclass
class Window:
    """One bucket's fixed window."""

    spec: BucketSpec
    bucket_hash: str | None
    started: float | None = None
    count: int = 0
    emptied_at: float | None = None  # when a response last left it with Remaining 0
    emptied_reset_at: float | None = None  # ... and when that window ended

    def refresh(self, now: float) -> None:
        if self.started is not None and now >= self.started + self.spec.per:
            self.started, self.count = None, 0

    @property
    def remaining(self) -> int:
        return max(0, self.spec.limit - self.count)

    def reset_after(self, now: float) -> float:
        if self.started is None:
            return self.spec.per
        return max(0.0, self.started + self.spec.per - now)

    def take(self, now: float) -> None:
        if self.started is None:
            self.started = now
        self.count += 1
        if self.remaining == 0:
            self.emptied_at, self.emptied_reset_at = now, self.started + self.spec.per


@dataclass
class RateInfo:
    """What the limiter decided for one request (``RequestRecord.ratelimit``)."""

    kind: str
    key: str
    bucket_hash: str | None
    limit: int | None = None
    remaining: int | None = None
    reset_after: float | None = None
    limited: str | None = None  # None, or the kind that answered 429 (``global`` or the bucket's)
    stalled: bool = False  # arrived right after the reset of a window an earlier response emptied
    headers: dict = field(default_factory=dict, repr=False)
    body: dict | None = field(default=None, repr=False)


@dataclass
class Stall:
    """A request that waited behind its bucket: it arrived within ``STALL_SLACK_S``
    after the reset of a window that an earlier response left empty -- discord.py
    held it until then (pre-emptively, or sleeping on a 429's ``retry_after``).
    ``held_s`` is an upper bound of that wait: from the emptying response to its
    arrival (a request first issued later waited less)."""

    route: str
    kind: str
    key: str
    at: float  # time.time() of arrival
    held_s: float


def _ceil_ms(seconds: float) -> float:
    return math.ceil(seconds * 1000) / 1000


def _hash(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


def route_name(method: str, path: str) -> str:
    """``PATCH /webhooks/{id}/{token}/messages/@original``: ids and tokens replaced."""
    parts = path.split("/")
    token_at = {"webhooks": 3, "interactions": 3}.get(parts[1] if len(parts) > 1 else "")
    out = []
    for i, part in enumerate(parts):
        if _DIGITS.match(part):
            out.append("{id}")
        elif i == token_at:
            out.append("{token}")
        else:
            out.append(part)
    return f"{method.upper()} {'/'.join(out)}"


class RateLimiter:
    """Enforces ``RateLimits`` on every request and keeps the counters.

    Counters (read them in tests and benchmarks):
    * ``sent_429``: Counter kind -> 429s sent (``channel_messages``,
      ``interaction_webhook``, ``global``, ``other``, ``injected`` for
      ``inject_rate_limit``);
    * ``emptied``: Counter kind -> responses that said ``Remaining: 0`` (each makes
      discord.py wait for the reset before the bucket's next request);
    * ``requests_per_route``: Counter ``route_name`` -> requests;
    * ``stalls``: list of ``Stall``.
    """

    def __init__(self, limits: RateLimits | None = None, clock=time.monotonic) -> None:
        self.limits = limits or RateLimits.off()
        self.clock = clock
        self.windows: dict[tuple, Window] = {}
        self.sent_429: Counter = Counter()
        self.emptied: Counter = Counter()
        self.requests_per_route: Counter = Counter()
        self.stalls: list[Stall] = []

    def configure(self, limits: RateLimits) -> None:
        """New sizes; forgets the open windows, keeps the counters."""
        self.limits = limits
        self.windows.clear()

    def reset_counters(self) -> None:
        self.sent_429.clear()
        self.emptied.clear()
        self.requests_per_route.clear()
        self.stalls.clear()

    def stats(self) -> dict:
        """A JSON-able snapshot of the counters."""
        return {"429": dict(self.sent_429), "emptied": dict(self.emptied),
                "requests_per_route": dict(self.requests_per_route), "stalls": len(self.stalls)}

    # -- classification ------------------------------------------------------------
    def classify(self, method: str, path: str) -> tuple[str, str, BucketSpec | None, str, bool]:
        """(kind, key, spec, bucket name, exempt from the global limit)."""
        method = method.upper()
        limits = self.limits
        m = _CHANNEL_MESSAGE.match(path)
        if m and (method == "POST") == (m.group(2) is None) and method in ("POST", "PATCH", "DELETE"):
            return CHANNEL_MESSAGES, m.group(1), limits.channel_messages, "channel messages", False
        m = _WEBHOOK.match(path)
        if m:
            return INTERACTION_WEBHOOK, f"{m.group(1)}/{m.group(2)}", limits.interaction_webhook, "webhook", True
        name = route_name(method, path)
        m = _CALLBACK.match(path)
        if m:
            return OTHER, m.group(1), limits.other, name, True
        m = _MAJOR.match(path)
        return OTHER, m.group(1) if m else "", limits.other, name, False

    def _window(self, scope_key: tuple, spec: BucketSpec, bucket_hash: str | None) -> Window:
        window = self.windows.get(scope_key)
        if window is None or window.spec != spec:
            window = self.windows[scope_key] = Window(spec, bucket_hash)
        return window

    # -- the decision --------------------------------------------------------------
    def admit(self, method: str, path: str, authorization: str | None) -> RateInfo | None:
        """Count the request; return its headers (and a 429 body if it is over a
        limit), or None when rate limits are off."""
        self.requests_per_route[route_name(method, path)] += 1
        if not self.limits.enabled:
            return None
        now, wall = self.clock(), time.time()
        kind, key, spec, bucket_name, exempt = self.classify(method, path)
        bucket_hash = _hash(f"{kind}:{bucket_name}") if spec else None
        window = self._window((kind, bucket_name, key), spec, bucket_hash) if spec else None
        info = RateInfo(kind, key, bucket_hash)
        if window is not None:
            window.refresh(now)
            stall_held = self._stall_hold(window, now)

        glob = self.limits.global_
        if glob is not None and not exempt:
            gwin = self._window((GLOBAL, authorization or "anonymous"), glob, None)
            gwin.refresh(now)
            if gwin.remaining <= 0:
                retry = _ceil_ms(gwin.reset_after(now))
                info.limited = GLOBAL
                info.body = {"message": "You are being rate limited.", "retry_after": retry, "global": True,
                             "code": 0}
                info.headers = {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global",
                                "Retry-After": str(max(1, math.ceil(retry))), "Via": "1.1 google"}
            else:
                gwin.take(now)

        if window is not None:
            if info.limited is None and window.remaining <= 0:
                retry = _ceil_ms(window.reset_after(now))
                info.limited = kind
                info.body = {"message": "You are being rate limited.", "retry_after": retry, "global": False,
                             "code": 0}
                info.headers = {"X-RateLimit-Scope": spec.scope, "Retry-After": str(max(1, math.ceil(retry))),
                                "Via": "1.1 google"}
            elif info.limited is None:
                window.take(now)
            reset_after = _ceil_ms(window.reset_after(now))
            info.limit, info.remaining, info.reset_after = spec.limit, window.remaining, reset_after
            info.headers.update({
                "X-RateLimit-Limit": str(spec.limit),
                "X-RateLimit-Remaining": str(window.remaining),
                "X-RateLimit-Reset": f"{wall + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": bucket_hash,
            })
            if info.limited is None and window.remaining == 0:
                self.emptied[kind] += 1
            if stall_held is not None:
                info.stalled = True
                self.stalls.append(Stall(route_name(method, path), kind, key, wall, round(stall_held, 3)))
        if info.limited is not None:
            self.sent_429[info.limited] += 1
        return info

    @staticmethod
    def _stall_hold(window: Window, now: float) -> float | None:
        """If this request comes right after the reset of a window an earlier
        response left empty, how long since that response (else None)."""
        if window.emptied_at is None or window.emptied_reset_at is None:
            return None
        if window.emptied_reset_at <= now <= window.emptied_reset_at + STALL_SLACK_S:
            return now - window.emptied_at
        if now > window.emptied_reset_at + STALL_SLACK_S:
            window.emptied_at = window.emptied_reset_at = None
        return None

    def note_injected_429(self) -> None:
        self.sent_429[INJECTED] += 1
