"""LoRA adapters for generation: load once, switch cheaply, never touch the trainer's adapters.

Contract with gpu/trainer.py (both run on the worker's single GPU thread):

* Every LoRA lives as a named peft adapter on the one shared ``pipe.transformer``; there is never a
  second copy of the base weights.
* The names starting with ``__`` belong to the trainer: ``TRAINEE_ADAPTER`` (the LoRA being trained)
  and ``TRAINING_ADAPTER`` (an optional de-distillation LoRA active only during training steps).
  :class:`AdapterManager` never enables, evicts or deletes them, and refuses user names starting
  with ``__``.
* Whoever runs the transformer sets the complete adapter state first and relies on nothing left
  behind: :meth:`AdapterManager.activate` before every generation (``activate([])`` = the plain base
  model, bit-identical to a pipeline that never saw a LoRA in eager mode; with the worker's regional
  compile the graph with (disabled) LoRA wrappers differs by rounding, at most 2/255 per pixel
  measured on an H100), ``LoraTrainer.step()`` before every
  training step (it notices a changed state and restores its own). ``LoraTrainer.suspend()`` /
  ``resume()`` bracket generations between training steps for clarity and to drop the training
  state explicitly; they are not needed for correctness.

Three peft/diffusers behaviours this module works around (peft 0.21, diffusers 0.42):
``load_lora_weights`` makes the new adapter the only active one; ``set_adapters`` does not undo
``disable_lora`` (layers stay disabled); deleting the active adapter silently activates another
remaining one (it could be the trainee). Hence the state is always set in full after loading or
deleting (:func:`apply_adapters`).

With ``compile_repeated_blocks`` (ZIMAGE_COMPILE) every new adapter state (set of names, scales,
enabled or not) would compile new graphs (6-13 s for the full model, measured on H100/H200), so a
compiled worker uses :class:`gpu.hotswap.HotswapAdapters` instead (fixed slots, weights swapped in place);
this manager serves the eager worker (CPU, ``ZIMAGE_COMPILE=off``, ``LORA_HOTSWAP=off``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zimage_protocol import ErrorCode, UserError
from zimage_protocol.constants import LORA_FILE
from zimage_protocol.settings import LoraLimits

log = logging.getLogger(__name__)

TRAINING_ADAPTER = "__training__"  # de-distillation LoRA, only during training steps
TRAINEE_ADAPTER = "__trainee__"  # the LoRA being trained
RESERVED_PREFIX = "__"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # peft adapter names become ModuleDict keys: no dots


class AdapterError(UserError):
    """A LoRA could not be used; the message can be shown to the user as it is."""

    code = ErrorCode.LORA


@dataclass(frozen=True)
class LoraSettings:
    """The worker's LoRA settings, resolved for this worker from the variables the bot reads too
    (zimage_protocol.settings.LoraLimits: one parser for both processes).

    ``hotswap``: fixed adapter slots swapped in place (gpu/hotswap.py), on by default when the transformer
    is compiled; ``max_stack`` slots of rank ``max_rank`` (LORA_MAX_RANK, or TRAIN_RANK if higher);
    ``cache_bytes``: user LoRAs kept in memory (least recently used dropped first)."""

    hotswap: bool
    max_stack: int = 3
    max_rank: int = 64
    cache_bytes: int = 2048 << 20

    @classmethod
    def from_env(cls, compiled: bool, environ: Mapping[str, str] | None = None, low_vram: bool = False) -> LoraSettings:
        limits = LoraLimits.from_env(os.environ if environ is None else environ)
        return cls(hotswap=limits.hotswap_enabled(compiled), max_stack=limits.max_stack, max_rank=limits.slot_rank,
                   cache_bytes=limits.cache_bytes(low_vram))


@dataclass(frozen=True)
class _Loaded:
    path: Path
    signature: tuple[int, int, int]  # (size, mtime_ns, inode): a replaced file is loaded again


@contextmanager
def quiet_peft():
    """peft warns on every second adapter and on deleting an active one; both are expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
        yield


def adapter_names(transformer) -> list[str]:
    """Every adapter on the transformer (user LoRAs and the trainer's), in load order."""
    return list(getattr(transformer, "peft_config", None) or {})


def apply_adapters(transformer, names: Sequence[str], weights: Sequence[float]) -> None:
    """Set the complete adapter state: exactly `names` at `weights`; no names = plain base model."""
    if not adapter_names(transformer):
        if names:
            raise AdapterError(f"LoRA {names[0]!r} is not loaded")
        return
    if not names:
        transformer.disable_lora()  # LoRA layers return base_layer(x): bit-identical to the base model
        return
    transformer.enable_lora()  # set_adapters alone leaves disabled layers disabled
    transformer.set_adapters(list(names), [float(weight) for weight in weights])


def remove_peft_if_empty(transformer) -> None:
    """Once no adapter is left, put the plain nn.Linear layers back (no LoRA wrappers at all).

    diffusers' delete_adapters leaves the empty wrappers in place (and resets the "peft loaded" flag this
    function used to look at): unload_lora removes them whatever that flag says."""
    if adapter_names(transformer):
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(module, BaseTunerLayer) for module in transformer.modules()):
        transformer.unload_lora()


def resolve_lora_file(path: str | Path) -> Path:
    """A LoRA file, or the diffusers file inside a folder. Never a hub id: that would go online."""
    path = Path(path)
    if path.is_dir():
        preferred = path / LORA_FILE
        if preferred.is_file():
            return preferred
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return candidates[0]
        raise AdapterError(f"no single LoRA file (.safetensors) in the folder {path.name!r}")
    if not path.is_file():
        raise AdapterError(f"the LoRA file {path.name!r} does not exist")
    return path


def file_signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def check_request(adapters: Sequence[tuple[str, str, float]], max_loaded: int) -> None:
    names = [name for name, _, _ in adapters]
    for name, _, scale in adapters:
        if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith(RESERVED_PREFIX):
            raise AdapterError(f"bad LoRA name {name!r}: use 1-64 letters, digits, '-' or '_', not starting with '__'")
        if not math.isfinite(float(scale)):
            raise AdapterError(f"bad scale {scale!r} for LoRA {name!r}")
    if len(set(names)) != len(names):
        raise AdapterError("the same LoRA is listed twice")
    if len(names) > max_loaded:
        raise AdapterError(f"at most {max_loaded} LoRAs at once")


class AdapterManager:
    """Loads user LoRAs into the shared transformer on demand (LRU of `max_loaded` adapters and `max_bytes`
    of files) and activates them. Used when the transformer is not compiled; compiled: gpu/hotswap.py.

    Not thread-safe: call it from the thread that runs the pipeline.
    """

    def __init__(self, pipe, max_loaded: int = 8, max_bytes: int | None = None):
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.pipe = pipe
        self.max_loaded = max_loaded
        self.max_bytes = max_bytes  # LORA_CACHE_MB: the loaded adapters' files together (None: no byte bound)
        self.loads = 0  # disk loads so far: switching between loaded adapters does not add any
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        self.active: list[tuple[str, float]] = []

    @property
    def loaded(self) -> list[str]:
        """Names held in memory, least recently used first."""
        return list(self._loaded)

    def activate(self, adapters: Sequence[tuple[str, str | Path, float]]) -> None:
        """Make exactly these (name, path, scale) adapters active; [] = plain base model.

        A bad request (names, scales, count) raises AdapterError and changes nothing; a file that fails
        to load raises AdapterError and leaves the base model active."""
        check_request(adapters, self.max_loaded)
        try:
            for name, path, _ in adapters:
                self._ensure_loaded(name, path)
            self._evict(keep={name for name, _, _ in adapters})
            apply_adapters(self.pipe.transformer, [name for name, _, _ in adapters], [scale for _, _, scale in adapters])
        except Exception:
            self._apply_base()
            raise
        self.active = [(name, float(scale)) for name, _, scale in adapters]

    def unload(self, name: str) -> None:
        """Forget one adapter (e.g. its file was deleted). The base model is active afterwards."""
        if name in self._loaded:
            self._delete(name)
        self._apply_base()
        remove_peft_if_empty(self.pipe.transformer)

    def unload_all(self) -> None:
        """Forget every user adapter (the trainer's stay). The base model is active afterwards."""
        for name in list(self._loaded):
            self._delete(name)
        self._apply_base()
        remove_peft_if_empty(self.pipe.transformer)

    def _apply_base(self) -> None:
        self.active = []
        apply_adapters(self.pipe.transformer, [], [])

    def _ensure_loaded(self, name: str, path: str | Path) -> None:
        try:
            file = resolve_lora_file(path)
        except AdapterError as exc:
            raise AdapterError(f"LoRA {name!r}: {exc}") from exc
        signature = file_signature(file)
        known = self._loaded.get(name)
        if known is not None and known.path == file and known.signature == signature:
            self._loaded.move_to_end(name)
            return
        if known is not None or name in adapter_names(self.pipe.transformer):
            self._delete(name)  # same name, other file (or a leftover): load it afresh
        self._load(name, file)
        self._loaded[name] = _Loaded(file, signature)

    def _load(self, name: str, file: Path) -> None:
        try:
            with quiet_peft():
                self.pipe.load_lora_weights(str(file), adapter_name=name)
        except Exception as exc:
            log.warning("loading LoRA %s from %s failed: %r", name, file, exc)
            if name in adapter_names(self.pipe.transformer):
                with quiet_peft():
                    self.pipe.delete_adapters(name)
            raise AdapterError(f"the LoRA {name!r} could not be loaded: {describe_load_error(exc)}") from exc
        self.loads += 1
        log.info("loaded LoRA %s from %s", name, file)

    def _evict(self, keep: set[str]) -> None:
        """Drop least recently used adapters until both bounds hold (the requested ones stay)."""
        for name in list(self._loaded):
            nbytes = sum(loaded.signature[0] for loaded in self._loaded.values())
            if len(self._loaded) <= self.max_loaded and (self.max_bytes is None or nbytes <= self.max_bytes):
                return
            if name not in keep:
                self._delete(name)

    def _delete(self, name: str) -> None:
        self._loaded.pop(name, None)
        if name in adapter_names(self.pipe.transformer):
            with quiet_peft():
                self.pipe.delete_adapters(name)
            log.info("unloaded LoRA %s", name)


def describe_load_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "size mismatch" in str(exc):
        return "it was made for another model (layer sizes differ)"
    if isinstance(exc, OSError) or "header" in text.lower() or "deserializ" in text.lower():
        return "the file is damaged or not a safetensors file"
    if "Invalid adapter checkpoint" in text:
        return "the file holds no LoRA weights"
    return text[:200]
