"""Records the fake keeps (messages, interactions, attachments) and their JSON.

Why plain dataclasses: tests assert on them directly (``fake.messages[mid].content``),
and ``to_json`` renders the *full* object Discord would return, so discord.py parses
it without KeyErrors (``Message.__init__`` indexes ``type``, ``content``, ``embeds``,
``attachments``, ``timestamp``, ``edited_timestamp``; ``Attachment`` indexes ``id``,
``size``, ``filename``, ``url``, ``proxy_url``).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord

DISCORD_EPOCH_MS = 1420070400000

# Message flags (https://discord.com/developers/docs/resources/message#message-object-message-flags)
EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Message types
DEFAULT, REPLY, CHAT_INPUT_COMMAND = 0, 19, 20


class Snowflakes:
    """Monotonic snowflake ids with a real timestamp part (discord.py derives
    ``created_at`` from it)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) for PNG/GIF/JPEG headers, so image attachments carry them."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + length
    return None


def make_attachment(att_id: int, filename: str, data: bytes, content_type: str | None,
                    url_prefix: str, description: str | None = None) -> dict:
    """Attachment record: a dict so tests can read ``att["data"]`` directly.

    Like Discord, the stored filename has spaces and URL-unsafe characters replaced
    by ``_`` (an approximation of Discord's sanitising), so it is also a URL segment."""
    filename = re.sub(r"[^\w.\-]", "_", filename) or "unknown"
    if content_type is None or content_type == "application/octet-stream":
        content_type = guess_content_type(filename, content_type)
    return {
        "id": att_id,
        "filename": filename,
        "content_type": content_type,
        "data": data,
        "size": len(data),
        "description": description,
        "url_path": f"{url_prefix}/{filename}",  # appended to the fake's base URL
    }


def guess_content_type(filename: str, fallback: str | None = None) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(filename)
    return guessed or fallback or "application/octet-stream"


def attachment_json(att: dict, base_url: str, *, ephemeral: bool = False) -> dict:
    url = base_url + att["url_path"]
    out = {
        "id": str(att["id"]),
        "filename": att["filename"],
        "size": att["size"],
        "url": url,
        "proxy_url": url,
        "content_type": att["content_type"],
    }
    if att.get("description") is not None:
        out["description"] = att["description"]
    if ephemeral:
        out["ephemeral"] = True
    if att["content_type"].startswith("image/"):
        size = image_size(att["data"])
        if size:
            out["width"], out["height"] = size
    return out


@dataclass
class Message:
    """A message as the fake stores it; ``history`` keeps every version."""

    id: int
    channel_id: int
    author_id: int
    content: str = ""
    embeds: list = field(default_factory=list)
    components: list = field(default_factory=list)
    attachments: list = field(default_factory=list)  # dicts, see make_attachment
    flags: int = 0
    type: int = DEFAULT
    tts: bool = False
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_token: str | None = None
    interaction_id: int | None = None
    message_reference: dict | None = None
    referenced_message_id: int | None = None
    allowed_mentions: dict | None = None
    deleted: bool = False
    deleted_by_user: bool = False
    edits: int = 0
    history: list = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    edited_at: float | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def snapshot(self) -> dict:
        """One entry of ``history`` (copied, so later edits don't alter it)."""
        return copy.deepcopy({
            "content": self.content,
            "embeds": self.embeds,
            "components": self.components,
            "attachments": [a["filename"] for a in self.attachments],
            "flags": self.flags,
            "at": self.edited_at or self.created_at,
        })

    def mentioned_user_ids(self) -> list[int]:
        """User ids mentioned in the content as ``<@id>``."""
        return [int(m) for m in re.findall(r"<@!?(\d+)>", self.content or "")]

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def find_component(self, custom_id: str) -> dict | None:
        for comp in walk_components(self.components):
            if comp.get("custom_id") == custom_id:
                return comp
        return None

    def to_json(self, fake: FakeDiscord) -> dict:
        author = fake.users[self.author_id]
        out: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "content": self.content,
            "author": dict(author),
            "embeds": copy.deepcopy(self.embeds),
            "components": copy.deepcopy(self.components),
            "attachments": [attachment_json(a, fake.http_base, ephemeral=self.ephemeral)
                            for a in self.attachments],
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "flags": self.flags,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [dict(fake.users[uid]) for uid in self.mentioned_user_ids() if uid in fake.users],
            "mention_roles": [],
            "pinned": False,
            "reactions": [],
        }
        channel = fake.channels.get(self.channel_id)
        if channel is not None and channel.get("guild_id"):
            out["guild_id"] = channel["guild_id"]
        if self.webhook_id is not None:
            out["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            out["application_id"] = str(self.application_id)
        if self.interaction_id is not None:
            ix = fake.interactions.get(self.interaction_id)
            if ix is not None:
                out["interaction_metadata"] = ix.metadata_json()
                out["interaction"] = ix.legacy_interaction_json()
        if self.message_reference is not None:
            out["message_reference"] = dict(self.message_reference)
            ref = fake.messages.get(self.referenced_message_id or 0)
            if ref is not None and not ref.deleted:
                out["referenced_message"] = ref.to_json(fake)
            else:
                out["referenced_message"] = None
        return out


def walk_components(components: list):
    """Yield every component, descending into rows, sections and containers."""
    for comp in components or []:
        yield comp
        yield from walk_components(comp.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(comp.get(key), dict):
                yield from walk_components([comp[key]])


@dataclass
class Interaction:
    """One interaction the fake sent, and everything the bot answered."""

    id: int
    token: str
    type: int
    payload: dict
    user_id: int
    fake: FakeDiscord = field(repr=False)
    channel_id: int = 0
    callbacks: list = field(default_factory=list)  # callback bodies (payload_json decoded)
    original: Message | None = None
    followups: list = field(default_factory=list)  # Message records
    created_at: float = field(default_factory=time.monotonic)
    answered_at: float | None = None  # time.monotonic() of the first callback, late or not
    expired: bool = False
    component_message_id: int | None = None
    triggered_by: Interaction | None = field(default=None, repr=False)  # modal submit: the opener

    @property
    def name(self) -> str | None:
        return (self.payload.get("data") or {}).get("name")

    @property
    def responded(self) -> bool:
        return bool(self.callbacks)

    @property
    def response_type(self) -> int | None:
        return self.callbacks[0]["type"] if self.callbacks else None

    async def wait_response(self, timeout: float = 5.0) -> dict:
        """Wait for the first callback; returns its body."""
        await self.fake.wait_for(lambda: self.callbacks, timeout=timeout,
                                 what=f"a callback to interaction {self.id} ({self.name})")
        return self.callbacks[0]

    async def wait_original(self, predicate=lambda m: not m.loading, timeout: float = 10.0) -> Message:
        """Wait until the original response exists and ``predicate(message)`` holds
        (default: it is no longer a 'thinking…' placeholder)."""
        await self.fake.wait_for(lambda: self.original is not None and predicate(self.original),
                                 timeout=timeout, what=f"original response of {self.id} ({self.name})")
        return self.original

    async def wait_followups(self, count: int = 1, timeout: float = 10.0) -> list:
        await self.fake.wait_for(lambda: len(self.followups) >= count, timeout=timeout,
                                 what=f"{count} followup(s) to {self.id} ({self.name})")
        return self.followups

    def metadata_json(self) -> dict:
        out = {
            "id": str(self.id),
            "type": self.type,
            "user": dict(self.fake.users[self.user_id]),
            "authorizing_integration_owners": {"0": str(self.fake.guild_id)},
        }
        if self.type == 2:
            out["name"] = self.name
            out["command_type"] = 1
        if self.original is not None:
            out["original_response_message_id"] = str(self.original.id)
        if self.component_message_id is not None and self.type == 3:
            out["interacted_message_id"] = str(self.component_message_id)
        if self.triggered_by is not None:
            out["triggering_interaction_metadata"] = self.triggered_by.metadata_json()
        return out

    def legacy_interaction_json(self) -> dict:
        return {
            "id": str(self.id),
            "type": self.type,
            "name": self.name or "",
            "user": dict(self.fake.users[self.user_id]),
        }
