"""The one aiohttp handler for ``/api/v10/...``: log, validate, inject, auth, route.

Why one catch-all handler instead of aiohttp routes: every request must pass the
same pipeline in the same order, and routes Discord has but the fake lacks must
produce a JSON 404 *and* an ``fake.unhandled`` entry rather than aiohttp's HTML 404.

Pipeline: decode body -> log to ``fake.requests`` -> rate limits (429 when over a
bucket; see ``ratelimits``) -> spec validation (violations recorded; 400 50035 if
``reject_invalid``) -> injected failures -> route lookup (unknown -> 404 +
``fake.unhandled``) -> bot-token auth -> handler; the bucket's headers go on
every response.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .ratelimits import route_name
from .spec import get_validator, strip_api_prefix
from .wire import Body, DiscordError, json_response, read_body

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord


class RequestRecord(tuple):
    """``(method, path, json_body)``; also ``.query``, ``.files``, ``.status``, ``.at``
    (``time.time()`` of arrival), ``.arrived`` (``time.monotonic()`` of arrival, before the fake reads and
    validates the body: Discord's own clock for an interaction's answer), ``.route`` (``route_name``) and ``.ratelimit``
    (the limiter's ``RateInfo``, None when rate limits are off)."""

    def __new__(cls, method: str, path: str, json_body: Any, **extra: Any):
        self = super().__new__(cls, (method, path, json_body))
        self.__dict__.update(extra)
        return self

    method = property(lambda self: self[0])
    path = property(lambda self: self[1])
    json = property(lambda self: self[2])

    def __repr__(self) -> str:
        return f"{self[0]} {self[1]} -> {self.__dict__.get('status')}"


@dataclass
class Req:
    """What a handler gets: the decoded request plus path parameters."""

    method: str
    path: str
    params: dict
    query: dict
    body: Body
    headers: Any
    record: RequestRecord = field(repr=False, default=None)

    @property
    def json(self) -> Any:
        return self.body.json if isinstance(self.body.json, dict) else {}


Handler = Callable[["FakeDiscord", Req], Awaitable[web.StreamResponse]]


class RouteTable:
    """``@routes.route("GET", "/channels/{channel_id}")`` -> (regex, handler)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, re.Pattern, Handler, bool]] = []

    def route(self, method: str, template: str, *, auth: bool = True):
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        regex = re.compile("^" + pattern + "$")

        def deco(fn: Handler) -> Handler:
            self.entries.append((method, regex, fn, auth))
            return fn

        return deco

    def find(self, method: str, path: str) -> tuple[Handler, dict, bool] | None:
        # literal routes first (``@original``, ``@me``) -- they are registered first
        for m, regex, fn, auth in self.entries:
            match = regex.match(path)
            if m == method and match:
                return fn, match.groupdict(), auth
        return None

    def extend(self, other: RouteTable) -> None:
        self.entries.extend(other.entries)


def make_api_handler(fake: FakeDiscord, table: RouteTable):
    async def handle(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        method = request.method
        path = strip_api_prefix(request.path)
        bad_body: DiscordError | None = None
        try:
            body = await read_body(request)
        except DiscordError as err:
            body, bad_body = Body(content_type=request.content_type, has_body=True), err
        record = RequestRecord(method, path, body.json, query=dict(request.query), status=None,
                               files=[(u.filename, len(u.data)) for u in body.files],
                               content_type=body.content_type, at=time.time(), arrived=arrived,
                               route=route_name(method, path), ratelimit=None)
        fake.requests.append(record)
        limit = fake.ratelimiter.admit(method, path, request.headers.get("Authorization"))
        record.__dict__["ratelimit"] = limit
        try:
            if limit is not None and limit.limited is not None:
                response = json_response(limit.body, status=429, headers=limit.headers)
            elif bad_body is not None:
                fake.record_violation(f"{method} {path}: {bad_body.message}")
                raise bad_body
            else:
                response = await _pipeline(fake, table, request, body, record)
                if response.status == 429:  # an injected one (inject_rate_limit)
                    fake.ratelimiter.note_injected_429()
        except DiscordError as err:
            response = err.response()
        except Exception:  # a bug in the fake: make it loud, not a hang
            fake.record_violation(f"fake_discord internal error on {method} {path}:\n{traceback.format_exc()}")
            response = json_response({"message": "500: Internal Server Error", "code": 0}, status=500)
        if limit is not None:
            for name, value in limit.headers.items():  # an injected 429 keeps its own headers
                response.headers.setdefault(name, value)
        record.__dict__["status"] = response.status
        if fake.validate and response.content_type == "application/json" and response.body:
            try:
                problems = get_validator().validate_response(method, path, response.status, json.loads(response.body))
            except Exception:
                problems = [f"validating the response to {method} {path} failed:\n{traceback.format_exc()}"]
            fake.response_violations.extend(problems)
        fake._changed()
        return response

    return handle


async def _pipeline(fake: FakeDiscord, table: RouteTable, request: web.Request, body: Body,
                    record: RequestRecord) -> web.StreamResponse:
    method, path = record.method, record.path
    if fake.validate:
        validator = get_validator()
        problems = validator.validate(method, path, body.json, content_type=body.content_type,
                                      has_body=body.has_body, file_count=len(body.files))
        for problem in problems:
            fake.record_violation(problem)
        # an operation missing from the spec is reported, then answered with a 404 below
        if problems and fake.reject_invalid and validator.match(method, path) is not None:
            raise DiscordError(400, 50035, "Invalid Form Body",
                               {"_errors": [{"code": "SPEC_VIOLATION", "message": p} for p in problems]})

    for rule in fake._injections:
        if rule.matches(method, path):
            return rule.fire()

    found = table.find(method, path)
    if found is None:
        fake.unhandled.append(f"{method} {path}")
        raise DiscordError(404, 0, f"404: Not Found (fake_discord has no route {method} {path})")
    handler, params, auth = found
    if auth and request.headers.get("Authorization") != f"Bot {fake.bot_token}":
        raise DiscordError(401, 0, "401: Unauthorized")
    req = Req(method, path, params, dict(request.query), body, request.headers, record)
    return await handler(fake, req)
