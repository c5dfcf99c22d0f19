"""What a request asks the worker for: the parameters of a generation and of a training (protocol v4)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ProtocolError
from .files import MAX_FILES_PER_SET, FileRef, check_sha256, check_size


@dataclass(frozen=True)
class LoraRef:
    """One adapter of a request: a unique name (the worker's cache key), its file, its scale.

    To a remote worker the file is ``sha256`` + ``size`` (and ``path`` is empty): it fetches what it lacks."""

    name: str
    path: str
    scale: float
    sha256: str = ""
    size: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoraRef:
        sha256 = str(data.get("sha256") or "")
        size = data.get("size") or 0
        if not isinstance(size, int) or isinstance(size, bool):
            raise ProtocolError("a LoRA's size must be a whole number")
        return cls(name=str(data["name"]), path=str(data.get("path") or ""), scale=float(data["scale"]),
                   sha256=check_sha256(sha256) if sha256 else "", size=check_size(size))


SOURCE_MODES = ("vary_subtle", "vary_strong", "upscale", "zoom", "pan", "image")
PAN_DIRECTIONS = ("left", "right", "up", "down")
MAX_ZOOM = 4.0
MAX_SOURCE_BYTES = 64 << 20  # a source PNG at most (a 2048x2048 noise PNG is about 12 MiB)


@dataclass(frozen=True)
class SourceImage:
    """The picture a generation starts from (img2img), or extends (outpainting: ``zoom`` > 1 or a ``direction``).

    A file like a LoRA's: a path on a shared disk, or to a remote worker ``sha256`` + ``size`` (fetched by content).
    ``strength`` is how much of it is redrawn (0 < strength <= 1); ``mode`` and ``parent`` (the job it came from)
    are written into the PNG's text chunks. Outpainting keeps the size: ``zoom`` shrinks the picture into the middle of
    the canvas, ``direction`` shifts the view by a quarter of the canvas that way; the new border is drawn."""

    path: str
    strength: float
    mode: str
    sha256: str = ""
    size: int = 0
    direction: str = ""
    zoom: float = 1.0
    parent: str = ""

    @property
    def outpaints(self) -> bool:
        return self.zoom > 1.0 or bool(self.direction)

    def png_text(self) -> dict[str, object]:
        """What the result's PNG says about where it came from."""
        text: dict[str, object] = {"source_mode": self.mode, "strength": self.strength}
        if self.parent:
            text["parent_job"] = self.parent
        if self.direction:
            text["direction"] = self.direction
        if self.zoom > 1.0:
            text["zoom"] = self.zoom
        return text

    @classmethod
    def from_json(cls, data: object) -> SourceImage:
        if not isinstance(data, dict):
            raise ProtocolError("a source image must be an object")
        size = data.get("size") or 0
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SOURCE_BYTES:
            raise ProtocolError(f"a source image's size must be a whole number up to {MAX_SOURCE_BYTES}")
        sha256 = str(data.get("sha256") or "")
        try:
            source = cls(path=str(data.get("path") or ""), strength=float(data["strength"]), mode=str(data["mode"]),
                         sha256=check_sha256(sha256) if sha256 else "", size=size,
                         direction=str(data.get("direction") or ""), zoom=float(data.get("zoom", 1.0)),
                         parent=str(data.get("parent") or "")[:64])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad source image: {exc!r}") from None
        if not (math.isfinite(source.strength) and 0.0 < source.strength <= 1.0):
            raise ProtocolError("a source image's strength must be in (0, 1]")
        if source.mode not in SOURCE_MODES:
            raise ProtocolError(f"unknown source mode {source.mode[:40]!r}")
        if source.direction and source.direction not in PAN_DIRECTIONS:
            raise ProtocolError(f"unknown outpaint direction {source.direction[:40]!r}")
        if not (math.isfinite(source.zoom) and 1.0 <= source.zoom <= MAX_ZOOM):
            raise ProtocolError(f"a zoom-out factor must be 1 to {MAX_ZOOM:g}")
        if not (source.path or source.sha256):
            raise ProtocolError("a source image needs a path or a sha256")
        return source
MAX_SEED_VARIANCE = 1.0


@dataclass(frozen=True)
class GenerateParams:
    """What one /imagine job asks the worker for. One seed per image keeps pixels reproducible.

    ``enhance``: the worker first rewrites the prompt in detail, once per image with that image's seed
    (gpu/enhancer.py); each ImageReady names the prompt its image was made from. ``seed_variance``: 0..1,
    noise from each image's seed on its prompt embedding (gpu/seed_variance.py). Both default to today's
    behaviour, and a worker that predates them ignores them (an older bot never sends them)."""

    prompt: str
    width: int
    height: int
    steps: int
    seeds: list[int]
    guidance_scale: float = 0.0
    loras: list[LoraRef] = field(default_factory=list)
    source: SourceImage | None = None  # img2img / outpainting from this picture (protocol v4)
    enhance: bool = False
    seed_variance: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> GenerateParams:
        """Also reads a job's stored params: keys the worker does not need (upload_limit, a LoRA's label) are dropped."""
        if not isinstance(data, dict):
            raise ProtocolError("generate params must be an object")
        try:
            params = cls(
                prompt=str(data["prompt"]),
                width=int(data["width"]),
                height=int(data["height"]),
                steps=int(data["steps"]),
                seeds=[int(seed) for seed in data["seeds"]],
                guidance_scale=float(data.get("guidance_scale", 0.0)),
                loras=[LoraRef.from_json(lora) for lora in data.get("loras", [])],
                source=SourceImage.from_json(data["source"]) if data.get("source") else None,
                enhance=_flag(data.get("enhance", False)),
                seed_variance=float(data.get("seed_variance") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad generate params: {exc!r}") from None
        if params.width % 16 or params.height % 16 or params.width < 16 or params.height < 16:
            raise ProtocolError("width and height must be positive multiples of 16")
        if not params.seeds or params.steps < 1:
            raise ProtocolError("a generation needs at least one seed and one step")
        if not all(math.isfinite(value) for value in (params.guidance_scale, *(lora.scale for lora in params.loras))):
            raise ProtocolError("scales must be finite numbers")
        if not 0.0 <= params.seed_variance <= MAX_SEED_VARIANCE:  # also refuses nan
            raise ProtocolError(f"seed_variance must be between 0 and {MAX_SEED_VARIANCE}")
        return params


def _flag(value: object) -> bool:
    """A JSON boolean; a string or a number is a malformed request, not a truthy one."""
    if not isinstance(value, bool):
        raise TypeError(f"enhance must be true or false, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TrainParams:
    """A LoRA training job: the prepared dataset, where checkpoints go, and the trainer config.

    To a remote worker the dataset is ``files`` (relative names, by content) and the two dirs are the
    bot's: the worker trains in a folder of its own named after ``output_dir`` and sends each
    checkpoint's files back before its CheckpointReady."""

    dataset_dir: str
    output_dir: str
    config: dict[str, Any]
    files: list[FileRef] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return bool(self.files)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> TrainParams:
        if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
            raise ProtocolError("train params must be an object with a config object")
        files = data.get("files") or []
        if not isinstance(files, list) or len(files) > MAX_FILES_PER_SET:
            raise ProtocolError(f"train params: files must be a list of at most {MAX_FILES_PER_SET}")
        try:
            return cls(dataset_dir=str(data["dataset_dir"]), output_dir=str(data["output_dir"]),
                       config=dict(data.get("config") or {}), files=[FileRef.from_json(item) for item in files])
        except KeyError as exc:
            raise ProtocolError(f"bad train params: missing {exc}") from None


