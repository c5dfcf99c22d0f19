"""The gateway websocket: HELLO, heartbeats, IDENTIFY -> READY + GUILD_CREATE, dispatch.

Why it looks like this (checked against discord.py 2.7.1 ``gateway.py``/``state.py``):
* discord.py connects to ``DEFAULT_GATEWAY?v=10&encoding=json&compress=zlib-stream``
  (``zstd-stream`` when ``zstandard``/``compression.zstd`` is importable).  Binary
  frames are fed to its decompressor; text frames are parsed as plain JSON.  We
  honour ``zlib-stream`` (one shared deflate stream, each message ending in a
  ``Z_SYNC_FLUSH`` ``00 00 ff ff`` marker), ``zstd-stream`` when we can import
  ``zstandard``, and otherwise send text frames, which discord.py also accepts.
* READY: ``v, user, guilds:[{id, unavailable: true}], session_id,
  resume_gateway_url, application{id, flags}`` (+ ``shard`` if identified with one).
  discord.py then waits ``guild_ready_timeout`` (2 s) after the last GUILD_CREATE
  before ``on_ready``.  GUILD_CREATE carries ``member_count == len(members)`` so
  the guild counts as chunked; a REQUEST_GUILD_MEMBERS (op 8) is answered anyway.
* RESUME replays missed dispatches and sends RESUMED; an unknown session gets op 9.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, VOICE, RESUME, RECONNECT, REQUEST_MEMBERS, \
    INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11
HEARTBEAT_INTERVAL_MS = 41250


@dataclass
class Connection:
    ws: web.WebSocketResponse
    compress: str | None
    encoder: Any = None
    identified: bool = False
    log: list = field(default_factory=list)  # (direction, op, t) for debugging
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # keeps the compressed stream in order

    def encode(self, payload: dict):
        text = json.dumps(payload)
        if self.compress == "zlib-stream":
            if self.encoder is None:
                self.encoder = zlib.compressobj()
            return self.encoder.compress(text.encode()) + self.encoder.flush(zlib.Z_SYNC_FLUSH)
        if self.compress == "zstd-stream":
            return self.encoder.compress(text.encode()) + self.encoder.flush(1)  # FLUSH_BLOCK
        return text


def _zstd_encoder():
    try:
        import zstandard  # type: ignore
    except ImportError:
        return None
    return zstandard.ZstdCompressor().compressobj()


class Gateway:
    """One fake gateway; the latest identified connection receives dispatches."""

    def __init__(self, fake: FakeDiscord):
        self.fake = fake
        self.conn: Connection | None = None
        self.session_id: str | None = None
        self.seq = 0
        self.sent: list[dict] = []  # dispatch payloads, for RESUME replay
        self.identify_payload: dict | None = None
        self.intents = 0
        self.ready = False  # READY + GUILD_CREATE sent at least once
        self.connections = 0
        self.resumes = 0
        # Set by a test: answer IDENTIFY by closing with this (code, reason), e.g. (4014, "Disallowed intent(s).")
        self.refuse_identify: tuple[int, str] | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.identified and not self.conn.ws.closed

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        query = request.query
        if query.get("encoding", "json") != "json" or query.get("v") not in (None, "10"):
            self.fake.record_violation(f"gateway connect with unsupported query {dict(query)}")
        compress = query.get("compress")
        conn = Connection(ws, compress)
        if compress == "zstd-stream":
            conn.encoder = _zstd_encoder()
            if conn.encoder is None:
                conn.compress = None  # discord.py parses text frames without decompressing
        elif compress not in (None, "zlib-stream"):
            self.fake.record_violation(f"gateway compress={compress!r} is not a Discord transport compression")
            conn.compress = None
        self.connections += 1
        await self._send(conn, {"op": HELLO, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS,
                                                   "_trace": ["fake-gateway"]}, "s": None, "t": None})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._received(conn, json.loads(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    self.fake.record_violation("gateway: client sent a binary frame (expected JSON text)")
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.conn is conn:
                self.conn = None
            self.fake._changed()
        return ws

    async def _received(self, conn: Connection, payload: dict) -> None:
        op, data = payload.get("op"), payload.get("d")
        conn.log.append(("recv", op, None))
        if op == HEARTBEAT:
            await self._send(conn, {"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            await self._resume(conn, data or {})
        elif op == REQUEST_MEMBERS:
            await self._members_chunk(data or {})
        elif op in (PRESENCE, VOICE):
            pass
        else:
            self.fake.record_violation(f"gateway: unexpected opcode {op} from client: {payload}")
        self.fake._changed()

    async def _identify(self, conn: Connection, data: dict) -> None:
        if data.get("token") != self.fake.bot_token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        if "intents" not in data:
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return
        if self.refuse_identify:
            code, reason = self.refuse_identify
            await conn.ws.close(code=code, message=reason.encode())
            return
        self.identify_payload, self.intents = data, int(data["intents"])
        self.session_id, self.seq, self.sent = secrets.token_hex(16), 0, []
        conn.identified, self.conn = True, conn
        ready = {
            "v": 10, "user": dict(self.fake.bot_user), "guilds": [{"id": str(self.fake.guild_id),
                                                                   "unavailable": True}],
            "session_id": self.session_id, "resume_gateway_url": self.fake.gateway_url,
            "session_type": "normal", "private_channels": [], "relationships": [],
            "presences": [], "guild_join_requests": [], "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {}, "application": {"id": str(self.fake.application_id), "flags": 0},
        }
        if data.get("shard") is not None:
            ready["shard"] = data["shard"]
        await self.dispatch("READY", ready)
        await self.dispatch("GUILD_CREATE", self.fake.guild_json(gateway=True))
        self.ready = True

    async def _resume(self, conn: Connection, data: dict) -> None:
        if data.get("token") != self.fake.bot_token or data.get("session_id") != self.session_id:
            await self._send(conn, {"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        conn.identified, self.conn = True, conn
        self.resumes += 1
        for payload in self.sent:
            if payload["s"] > int(data.get("seq") or 0):
                await self._send(conn, payload)
        await self.dispatch("RESUMED", {})

    async def _members_chunk(self, data: dict) -> None:
        members = [self.fake.member_json(uid) for uid in self.fake.members]
        wanted = data.get("user_ids")
        if wanted:
            wanted = {int(u) for u in (wanted if isinstance(wanted, list) else [wanted])}
            members = [m for m in members if int(m["user"]["id"]) in wanted]
        chunk = {"guild_id": str(self.fake.guild_id), "members": members, "chunk_index": 0,
                 "chunk_count": 1, "not_found": []}
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.dispatch("GUILD_MEMBERS_CHUNK", chunk)

    async def dispatch(self, event: str, data: dict, *, intent: int | None = None) -> bool:
        """Send an op-0 event to the bot; False if not connected or intent not requested."""
        if not self.connected:
            return False
        if intent is not None and not (self.intents & intent):
            return False
        self.seq += 1
        payload = {"op": DISPATCH, "s": self.seq, "t": event, "d": data}
        self.sent.append(payload)
        await self._send(self.conn, payload)
        return True

    async def _send(self, conn: Connection, payload: dict) -> None:
        if conn.ws.closed:
            return
        async with conn.lock:
            conn.log.append(("send", payload.get("op"), payload.get("t")))
            frame = conn.encode(payload)
            if isinstance(frame, bytes):
                await conn.ws.send_bytes(frame)
            else:
                await conn.ws.send_str(frame)

    async def reconnect(self) -> None:
        """Ask the bot to reconnect (op 7); discord.py then RESUMEs."""
        if self.conn is not None:
            await self._send(self.conn, {"op": RECONNECT, "d": None, "s": None, "t": None})

    async def close(self) -> None:
        if self.conn is not None and not self.conn.ws.closed:
            await self.conn.ws.close(code=1001, message=b"fake shutting down")
