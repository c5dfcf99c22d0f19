"""The wire format: ``>II`` (header length, blob length), a UTF-8 JSON header, an optional blob.

The blob carries binary payloads (PNG bytes) so images are not base64-inflated. Every header is
an object with an ``op``; requests carry a client-chosen ``id`` that every reply echoes. Sizes are
checked before anything is read, and any malformed header is a :class:`ProtocolError` (never a
JSON or Unicode error), so a peer can drop one bad frame without dying.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

# v2: typed messages (zimage_protocol.messages), the client's hello, error codes from ErrorCode.
# v3: endpoints over TCP (the token in the client's Hello, Welcome), Ping/Pong heartbeats, files by content hash.
# v4: GenerateParams.source (img2img and outpainting from a picture sent like a LoRA file).
PROTOCOL_VERSION = 4
MAX_HEADER_BYTES = 1 << 20
MAX_BLOB_BYTES = 256 << 20
# Before a client is authenticated it may send only a small Hello: nothing big is read from a stranger.
PRE_AUTH_HEADER_BYTES = 16 << 10
READ_CHUNK_BYTES = 1 << 20  # a big blob is read in chunks, so the idle timeout measures silence, not frame size
_HEAD = struct.Struct(">II")


@dataclass
class Frame:
    op: str
    header: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""

    @property
    def id(self) -> str | None:
        value = self.header.get("id")
        return None if value is None else str(value)


def encode_frame(op: str, blob: bytes = b"", **fields: Any) -> bytes:
    header = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES or len(blob) > MAX_BLOB_BYTES:
        raise ProtocolError(f"frame too large to send ({len(header)} + {len(blob)} bytes)")
    return _HEAD.pack(len(header), len(blob)) + header + blob


async def read_frame(reader: asyncio.StreamReader, idle_timeout: float | None = None,
                     max_header: int = MAX_HEADER_BYTES, max_blob: int = MAX_BLOB_BYTES) -> Frame:
    """Read one frame; raises asyncio.IncompleteReadError when the peer hangs up.

    A frame over the limits is a ProtocolError before its body is read (the stream cannot be
    resynchronised after it, so the caller closes the connection); a malformed header is a
    ProtocolError after the whole frame was consumed (the caller may go on reading).
    ``idle_timeout``: TimeoutError when no byte arrives for that long (the caller closes the connection).
    """
    header_len, blob_len = _HEAD.unpack(await _read(reader, _HEAD.size, idle_timeout))
    if header_len > max_header or blob_len > max_blob:
        raise FrameTooLarge(f"frame too large ({header_len} + {blob_len} bytes)")
    raw = await _read(reader, header_len, idle_timeout)
    blob = await _read(reader, blob_len, idle_timeout) if blob_len else b""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("frame header must be an object with an 'op'")
    return Frame(op=header.pop("op"), header=header, blob=blob)


async def _read(reader: asyncio.StreamReader, size: int, idle_timeout: float | None) -> bytes:
    if idle_timeout is None:
        return await reader.readexactly(size)
    parts = []
    while size > 0:
        part = await asyncio.wait_for(reader.readexactly(min(size, READ_CHUNK_BYTES)), idle_timeout)
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class FrameTooLarge(ProtocolError):
    """The stream cannot go on after this frame: its body was not read."""
