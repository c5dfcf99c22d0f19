"""The bot <-> GPU worker protocol: small, typed, versioned frames over a unix socket.

Every frame is ``>II`` (header length, blob length), a UTF-8 JSON header, then an optional
binary blob (PNG bytes, so images are not base64-inflated). The header always carries ``op``;
requests carry a client-chosen ``id`` that every reply to them echoes.

Conversation (ComfyUI-style progress):
    client                         worker
    ------                         ------
                                   hello {version, model, device, pid}
    health {id}               ->   health {id, ok, busy, model, device}
    count_tokens {id, prompt} ->   tokens {id, count, limit}
    generate {id, params}     ->   accepted {id}
                                   progress {id, step, total}          (many)
                                   image {id, index, seed} + PNG blob  (one per image)
                                   done {id, seconds}
                                   | error {id, code, message}
    train {id, params}        ->   accepted {id}
                                   train_progress {id, step, total, loss, seconds_per_step}   (many)
                                   checkpoint {id, step, total, loss, lora_file, sample_png, loss_png}
                                   done {id, seconds} | error {id, code, message}
    cancel {id}               ->   (the generate or train in flight ends with error code "cancelled";
                                    a cancelled training keeps the checkpoints it made)

Files (datasets, checkpoints) are passed as paths under the shared DATA_DIR, not as bytes.

This module imports nothing heavy: the bot uses it without torch.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
_FRAME_HEAD = struct.Struct(">II")
MAX_HEADER_BYTES = 1 << 20
MAX_BLOB_BYTES = 256 << 20


class ProtocolError(Exception):
    """The peer sent something this protocol version does not understand."""


# Error codes a worker may answer with; the bot maps each to a user-facing message in one place.
ERROR_CANCELLED = "cancelled"
ERROR_BAD_REQUEST = "bad_request"
ERROR_PROMPT_TOO_LONG = "prompt_too_long"
ERROR_OUT_OF_MEMORY = "out_of_memory"
ERROR_INTERNAL = "internal"
ERROR_BUSY = "busy"


@dataclass(frozen=True)
class GenerateParams:
    """What one /imagine job asks the worker for. One seed per image keeps pixels reproducible."""

    prompt: str
    width: int
    height: int
    steps: int
    seeds: list[int]
    guidance_scale: float = 0.0
    # LoRA adapters to apply: [{"name": unique adapter name, "path": file or folder, "scale": float}]
    loras: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerateParams:
        try:
            params = cls(
                prompt=str(data["prompt"]),
                width=int(data["width"]),
                height=int(data["height"]),
                steps=int(data["steps"]),
                seeds=[int(seed) for seed in data["seeds"]],
                guidance_scale=float(data.get("guidance_scale", 0.0)),
                loras=[{"name": str(lora["name"]), "path": str(lora["path"]), "scale": float(lora["scale"])}  # label dropped
                       for lora in data.get("loras", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad generate params: {exc!r}") from exc
        if params.width % 16 or params.height % 16 or not params.seeds or params.steps < 1:
            raise ProtocolError("sizes must be multiples of 16, with at least one seed and one step")
        return params


@dataclass(frozen=True)
class TrainParams:
    """A LoRA training job: the prepared dataset, where checkpoints go, and the trainer config."""

    dataset_dir: str
    output_dir: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainParams:
        try:
            return cls(dataset_dir=str(data["dataset_dir"]), output_dir=str(data["output_dir"]),
                       config=dict(data.get("config") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad train params: {exc!r}") from exc


@dataclass
class Frame:
    op: str
    header: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""

    @property
    def id(self) -> str | None:
        return self.header.get("id")


def encode_frame(op: str, blob: bytes = b"", **fields: Any) -> bytes:
    header = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
    return _FRAME_HEAD.pack(len(header), len(blob)) + header + blob


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame; raises asyncio.IncompleteReadError when the peer hangs up."""
    header_len, blob_len = _FRAME_HEAD.unpack(await reader.readexactly(_FRAME_HEAD.size))
    if header_len > MAX_HEADER_BYTES or blob_len > MAX_BLOB_BYTES:
        raise ProtocolError(f"frame too large ({header_len} + {blob_len} bytes)")
    header = json.loads(await reader.readexactly(header_len))
    blob = await reader.readexactly(blob_len) if blob_len else b""
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("frame header must be an object with an 'op'")
    return Frame(op=header.pop("op"), header=header, blob=blob)
