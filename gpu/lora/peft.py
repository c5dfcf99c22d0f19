"""The eager worker's LoRA backend: each user LoRA a named peft adapter on the shared transformer.

A LoRA is loaded from its file on first use (``pipe.load_lora_weights``) and kept, least recently used
dropped first (at most ``max_loaded`` adapters and ``max_bytes`` of files); switching is
``set_adapters`` with the requested names and scales (:func:`gpu.lora.common.apply_adapters`).

With ``compile_repeated_blocks`` (ZIMAGE_COMPILE) every new adapter state (set of names, scales,
enabled or not) would compile new graphs (6-13 s for the full model, measured on H100/H200), so a
compiled worker uses :class:`gpu.lora.hotswap.HotswapAdapters` instead (fixed slots, weights swapped in
place); this backend serves the eager worker (CPU, ``ZIMAGE_COMPILE=off``, ``LORA_HOTSWAP=off``). The
rules both keep with the trainer: gpu/lora/common.py.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import (
    AdapterError,
    AdapterSpec,
    adapter_names,
    apply_adapters,
    check_request,
    describe_load_error,
    file_signature,
    quiet_peft,
    remove_peft_if_empty,
    resolve_lora_file,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    path: Path
    signature: tuple[int, int, int]  # (size, mtime_ns, inode): a replaced file is loaded again


class AdapterManager:
    """Loads user LoRAs into the shared transformer on demand (LRU of `max_loaded` adapters and `max_bytes`
    of files) and activates them. Used when the transformer is not compiled; compiled: gpu/lora/hotswap.py.

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

    def activate(self, adapters: Sequence[AdapterSpec]) -> None:
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

    def warm_up(self, generate: Callable[[], object]) -> None:
        """Nothing to compile ahead: every new adapter state is new to a compiled transformer anyway."""

    def follow_device(self) -> None:
        """Nothing to move: peft's adapter layers are modules and follow the model's ``.to()``."""

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
