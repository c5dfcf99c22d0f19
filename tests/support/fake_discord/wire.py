"""HTTP plumbing shared by the REST handlers: bodies in, JSON and errors out.

Why a module of its own: every Discord quirk of the wire format lives here, once:
* JSON responses must carry ``Content-Type: application/json`` *exactly*; discord.py
  only decodes JSON for that header value, and aiohttp's ``json_response`` appends
  ``; charset=utf-8`` (login then crashes on a str).
* Errors are ``{"code": ..., "message": ...}`` (+ ``errors`` for 50035).
* Multipart bodies carry the JSON in a ``payload_json`` part and uploads in
  ``files[n]`` parts.
* A 429 is only retried by discord.py when it has a ``Via`` header and a JSON
  ``retry_after``.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FILE_FIELD = re.compile(r"^files\[(\d+)\]$")


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # body= (bytes) and an explicit header: text= would make aiohttp append "; charset=utf-8"
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={**(headers or {}), "Content-Type": "application/json"})


def no_content() -> web.Response:
    return web.Response(status=204)


class DiscordError(Exception):
    """Raised by handlers; rendered as Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str, errors: dict | None = None):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(body, status=self.status)


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def invalid_form_body(message: str, field_path: str = "", code: str = "BASE_TYPE_INVALID") -> DiscordError:
    """400 50035 with Discord's nested ``errors`` ({"a": {"0": {"_errors": [...]}}} for "a.0")."""
    errors: dict = {"_errors": [{"code": code, "message": message}]}
    for part in reversed([p for p in field_path.split(".") if p]):
        errors = {part: errors}
    return DiscordError(400, 50035, "Invalid Form Body", errors)


@dataclass
class Upload:
    index: int
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Body:
    """A decoded request body. ``json`` is the JSON body or the ``payload_json``."""

    content_type: str | None = None
    json: Any = None
    files: list = field(default_factory=list)  # Upload
    has_body: bool = False
    raw_fields: dict = field(default_factory=dict)  # multipart text fields other than payload_json


async def read_body(request: web.Request) -> Body:
    """Decode JSON or multipart; raises DiscordError(400, 50109) on bad JSON."""
    if not request.body_exists:
        return Body()
    ctype = request.content_type
    if ctype == "multipart/form-data":
        body = Body(content_type=ctype, has_body=True)
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            match = FILE_FIELD.match(name)
            if match:
                data = await part.read(decode=False)
                body.files.append(Upload(int(match.group(1)), part.filename or name,
                                         part.headers.get("Content-Type"), bytes(data)))
            elif name == "payload_json":
                body.json = _loads(await part.text())
            else:
                body.raw_fields[name] = await part.text()
        if body.json is None and body.raw_fields:
            body.json = dict(body.raw_fields)  # Discord also accepts plain form fields
        return body
    raw = await request.read()
    if not raw:
        return Body()
    if ctype == "application/json":
        return Body(content_type=ctype, json=_loads(raw.decode("utf-8")), has_body=True)
    return Body(content_type=ctype, json=None, has_body=True)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DiscordError(400, 50109, f"The request body contains invalid JSON. ({exc})") from None


@dataclass
class Injection:
    """One failure-injection rule; ``hits`` counts how often it fired."""

    method: str
    path_regex: str
    times: int
    status: int
    body: dict
    headers: dict = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.times > 0 and self.method in ("*", method.upper())
                and re.search(self.path_regex, path) is not None)

    def fire(self) -> web.Response:
        self.times -= 1
        self.hits += 1
        headers = dict(self.headers)
        if self.status == 429:  # reset times are relative to *now*, not rule creation
            retry_after = self.body["retry_after"]
            headers["X-RateLimit-Reset"] = f"{time.time() + retry_after:.3f}"
        return json_response(self.body, status=self.status, headers=headers)


def rate_limit_rule(method: str, path_regex: str, times: int, retry_after: float,
                    global_: bool) -> Injection:
    headers = {
        "Via": "1.1 google",  # discord.py raises instead of retrying without it
        "Retry-After": str(max(1, math.ceil(retry_after))),
        "X-RateLimit-Scope": "global" if global_ else "user",
    }
    if global_:
        headers["X-RateLimit-Global"] = "true"
    else:
        headers.update({
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": f"fake-{abs(hash((method, path_regex))) % 10**8:08d}",
        })
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": global_, "code": 0}
    return Injection(method.upper() if method != "*" else "*", path_regex, times, 429, body, headers)


def truthy(value: str | None) -> bool:
    """Discord's boolean query params accept true/1 (discord.py sends ``1``)."""
    return (value or "").lower() in ("1", "true", "yes")
