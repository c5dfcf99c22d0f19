"""The bot <-> worker conversation, one typed class per message (protocol v4).

    client (bot)                        worker
    ------------                        ------
                                  <-    Hello {version, model, device, pid, ready}
    Hello {version, token}         ->   Welcome {} | Error {code: version_mismatch | unauthorized}, then close
    Ping {}                        ->   Pong {}            (every heartbeat interval; silence = a dead link)
    Health {id}                    ->   HealthReport {id, ready, busy, model, device, pid,
                                                      gpu_memory_used?, gpu_memory_total?, gpu_utilization?}
    CountTokens {id, prompt}       ->   TokenCount {id, count, limit}
    ImagineRequest {id, params}    ->   Accepted {id}
                                        Progress {id, step, total} (many; a live preview: a second
                                                  Progress of its step + a small JPEG)
                                        ImageReady {id, index, seed, prompt?} + PNG  (one per image;
                                                  prompt: the rewritten one, with enhance)
                                        Done {id, seconds} | Error {id, code, message}
    TrainRequest {id, params}      ->   Accepted {id}
                                        TrainProgress {id, step, total, loss, seconds_per_step}  (many)
                                        CheckpointReady {id, step, total, loss, seconds_per_step,
                                                         lora_file, sample_png, loss_png}
                                        Done {id, seconds} | Error {id, code, message}
    Cancel {id}                    ->   (the request in flight ends with Error code "cancelled";
                                         a cancelled training keeps the checkpoints it made)
    FileChunk {id, sha256, size,  <-    FetchFile {id, sha256}        (a remote worker lacks a file a
               offset} + data (many)     request named by sha256: the bot sends only files it named)
    (or Error {id}: not a file it named)
                                  <-    FileChunk {id, sha256, size, offset, name, path} + data
                                        (a remote training's checkpoint files, before its CheckpointReady)

Both sides send Hello first; a version mismatch is refused by both with an Error(version_mismatch)
that names the two versions. On a unix socket (same host) files are paths under the shared DATA_DIR;
a remote worker gets them by content hash (zimage_protocol.files). This module imports nothing heavy:
the bot uses it without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from .errors import ErrorCode, ProtocolError
from .files import check_relative_name, check_sha256, check_size
from .frames import PROTOCOL_VERSION, Frame, encode_frame
from .params import GenerateParams, LoraRef, SourceImage, TrainParams

__all__ = ["GenerateParams", "LoraRef", "SourceImage", "TrainParams"]  # re-exported: requests' parameters live in .params


class Op(StrEnum):
    HELLO = "hello"
    HEALTH = "health"
    HEALTH_REPORT = "health_report"
    COUNT_TOKENS = "count_tokens"
    TOKEN_COUNT = "token_count"
    GENERATE = "generate"
    TRAIN = "train"
    CANCEL = "cancel"
    ACCEPTED = "accepted"
    PROGRESS = "progress"
    IMAGE = "image"
    TRAIN_PROGRESS = "train_progress"
    CHECKPOINT = "checkpoint"
    DONE = "done"
    ERROR = "error"
    WELCOME = "welcome"
    PING = "ping"
    PONG = "pong"
    FETCH_FILE = "fetch_file"
    FILE_CHUNK = "file_chunk"


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Message:
    """A frame's typed form. ``encode`` writes it; ``decode`` reads any registered message."""

    op: ClassVar[Op]
    blob_field: ClassVar[str | None] = None  # the bytes field sent as the frame's blob, if any

    def encode(self) -> bytes:
        header: dict[str, Any] = {}
        blob = b""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == self.blob_field:
                blob = value
            elif isinstance(value, GenerateParams | TrainParams):
                header[item.name] = value.to_json()
            else:
                header[item.name] = value.value if isinstance(value, StrEnum) else value
        return encode_frame(self.op.value, blob, **header)


@dataclass(frozen=True)
class Hello(Message):
    """The worker's says what it runs; the client's says its version and, over TCP, the shared token."""

    op = Op.HELLO
    version: int
    model: str = ""
    device: str = ""
    pid: int = 0
    ready: bool = False
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Welcome(Message):
    """The worker accepted the client's Hello: requests may follow."""

    op = Op.WELCOME


@dataclass(frozen=True)
class Ping(Message):
    op = Op.PING


@dataclass(frozen=True)
class Pong(Message):
    op = Op.PONG


@dataclass(frozen=True)
class Health(Message):
    op = Op.HEALTH
    id: str


@dataclass(frozen=True)
class HealthReport(Message):
    """The GPU fields are None off CUDA (and utilization without nvidia-ml-py); a worker that predates them
    sends none of them, and a report with them still decodes in a bot that predates them (extra keys are ignored)."""

    op = Op.HEALTH_REPORT
    id: str
    ready: bool
    busy: bool
    model: str
    device: str
    pid: int
    gpu_memory_used: int | None = None    # bytes held by the worker's tensors (torch.cuda.memory_allocated)
    gpu_memory_total: int | None = None   # bytes on the device
    gpu_utilization: float | None = None  # 0..1: the share of the last sample period a kernel ran (NVML)


@dataclass(frozen=True)
class CountTokens(Message):
    op = Op.COUNT_TOKENS
    id: str
    prompt: str


@dataclass(frozen=True)
class TokenCount(Message):
    op = Op.TOKEN_COUNT
    id: str
    count: int
    limit: int


@dataclass(frozen=True)
class ImagineRequest(Message):
    op = Op.GENERATE
    id: str
    params: GenerateParams


@dataclass(frozen=True)
class TrainRequest(Message):
    op = Op.TRAIN
    id: str
    params: TrainParams


@dataclass(frozen=True)
class Cancel(Message):
    op = Op.CANCEL
    id: str


@dataclass(frozen=True)
class Accepted(Message):
    op = Op.ACCEPTED
    id: str


@dataclass(frozen=True)
class Progress(Message):
    """``preview``: empty, or a small JPEG of the image forming at ``step`` (gpu/previews.py; at most
    MAX_PREVIEW_BYTES), sent as the frame's blob. No version bump: a worker that predates it sends no blob (an
    empty preview), and a bot that predates it ignores the blob of a message whose class has no blob field."""

    op = Op.PROGRESS
    blob_field = "preview"
    id: str
    step: int
    total: int
    preview: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ImageReady(Message):
    """``prompt``: the prompt the image was made from when the worker rewrote it (GenerateParams.enhance),
    else empty. No version bump: an older bot ignores the extra key, an older worker never sends it."""

    op = Op.IMAGE
    blob_field = "png"
    id: str
    index: int
    seed: int
    png: bytes = b""
    prompt: str = ""


@dataclass(frozen=True)
class TrainProgress(Message):
    op = Op.TRAIN_PROGRESS
    id: str
    step: int
    total: int
    loss: float
    seconds_per_step: float


@dataclass(frozen=True)
class CheckpointReady(Message):
    op = Op.CHECKPOINT
    id: str
    step: int
    total: int
    loss: float
    seconds_per_step: float
    lora_file: str
    sample_png: str
    loss_png: str
    training_adapter: str = ""  # the de-distillation adapter the run trains with, in short ("none", source + sha256)


@dataclass(frozen=True)
class FetchFile(Message):
    """A remote worker asks the bot for a file a request named by sha256 (it had no copy)."""

    op = Op.FETCH_FILE
    id: str
    sha256: str

    def __post_init__(self) -> None:
        check_sha256(self.sha256)


@dataclass(frozen=True)
class FileChunk(Message):
    """``data`` is the file's bytes from ``offset``; the file is complete when offset + len(data) == size.

    Answering a FetchFile: ``id`` is the fetch's. A checkpoint file of a remote training: ``id`` is the
    train request's, ``name`` its place relative to the training's output folder, ``path`` the worker's path
    (the one its CheckpointReady names)."""

    op = Op.FILE_CHUNK
    blob_field = "data"
    id: str
    sha256: str
    size: int
    offset: int
    name: str = ""
    path: str = ""
    data: bytes = b""

    def __post_init__(self) -> None:
        check_sha256(self.sha256)
        check_size(self.size)
        if self.name:
            check_relative_name(self.name)
        if self.offset < 0 or self.offset + len(self.data) > self.size:
            raise ProtocolError(f"a file chunk at {self.offset} with {len(self.data)} bytes overruns {self.size}")

    @property
    def last(self) -> bool:
        return self.offset + len(self.data) == self.size


@dataclass(frozen=True)
class Done(Message):
    op = Op.DONE
    id: str
    seconds: float = 0.0


@dataclass(frozen=True)
class Error(Message):
    op = Op.ERROR
    id: str | None
    code: ErrorCode
    message: str


MESSAGES: dict[str, type[Message]] = {cls.op.value: cls for cls in (
    Hello, Health, HealthReport, CountTokens, TokenCount, ImagineRequest, TrainRequest, Cancel, Accepted, Progress,
    ImageReady, TrainProgress, CheckpointReady, Done, Error, Welcome, Ping, Pong, FetchFile, FileChunk)}

_SCALARS: dict[str, tuple[type[Any], ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def decode(frame: Frame) -> Message:
    """The typed message of a frame; ProtocolError for an unknown op or a field of the wrong type."""
    cls = MESSAGES.get(frame.op)
    if cls is None:
        raise ProtocolError(f"unknown op {frame.op!r}")
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if item.name == cls.blob_field:
            values[item.name] = frame.blob
            continue
        if item.name not in frame.header:
            if item.default is dataclasses.MISSING and item.type != "str | None":
                raise ProtocolError(f"{frame.op}: missing {item.name!r}")
            continue
        values[item.name] = _field_value(frame.op, item.name, str(item.type), frame.header[item.name])
    return cls(**values)


def _field_value(op: str, name: str, kind: str, raw: Any) -> Any:
    if kind == "GenerateParams":
        return GenerateParams.from_json(raw)
    if kind == "TrainParams":
        return TrainParams.from_json(raw)
    if kind == "ErrorCode":
        return ErrorCode.parse(raw)
    if kind == "str | None":
        return None if raw is None else str(raw)
    if kind.endswith(" | None"):
        return None if raw is None else _field_value(op, name, kind.removesuffix(" | None"), raw)
    accepted = _SCALARS[kind]
    # bool is an int in Python: a True step count is as wrong as a string one
    if not isinstance(raw, accepted) or (isinstance(raw, bool) and bool not in accepted):
        raise ProtocolError(f"{op}: {name!r} must be {kind}, got {type(raw).__name__}")
    if kind == "float":
        raw = float(raw)
        if not math.isfinite(raw):
            raise ProtocolError(f"{op}: {name!r} must be finite")
    return raw


def hello_mismatch(peer_version: object) -> str | None:
    """The message both sides show for a version mismatch, or None when the versions agree."""
    if peer_version == PROTOCOL_VERSION:
        return None
    return (f"protocol version mismatch: the other side speaks v{peer_version}, this side v{PROTOCOL_VERSION}; "
            f"run the same zimage-bot version for the bot and its GPU workers")
