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
PROTOCOL_VERSION = 2
MAX_HEADER_BYTES = 1 << 20
MAX_BLOB_BYTES = 256 << 20
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


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; raises asyncio.IncompleteReadError when the peer hangs up.

    A frame over the limits is a ProtocolError before its body is read (the stream cannot be
    resynchronised after it, so the caller closes the connection); a malformed header is a
    ProtocolError after the whole frame was consumed (the caller may go on reading).
    """
    header_len, blob_len = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    if header_len > MAX_HEADER_BYTES or blob_len > MAX_BLOB_BYTES:
        raise FrameTooLarge(f"frame too large ({header_len} + {blob_len} bytes)")
    raw = await reader.readexactly(header_len)
    blob = await reader.readexactly(blob_len) if blob_len else b""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("frame header must be an object with an 'op'")
    return Frame(op=header.pop("op"), header=header, blob=blob)


class FrameTooLarge(ProtocolError):
    """The stream cannot go on after this frame: its body was not read."""
