"""LoRA hot-swap for the compiled transformer: fixed adapter slots, weights copied in place.

Why this exists: with ``compile_repeated_blocks`` (ZIMAGE_COMPILE), peft's usual way of switching LoRAs
(:class:`gpu.lora.peft.AdapterManager`: a named adapter per LoRA, ``set_adapters`` with float weights)
changes what dynamo guards on — the adapter names in every layer, the Python float scalings — so each
new LoRA, stack or scale recompiles the blocks (5-13 s on the full model). Here, before the transformer
is compiled, every linear layer gets ``slots`` adapters of rank ``rank`` (zero delta), and their
scalings become tensors (peft's ``prepare_model_for_compiled_hotswap``, what diffusers'
``enable_lora_hotswap`` calls). A switch then only copies weights into the slots (lower ranks
zero-padded) and fills the scaling tensors in place: the compiled graph sees the same modules, names
and shapes, and nothing recompiles.

Graph variants, each compiled once and then kept by dynamo: the base model (LoRA layers disabled, no
extra work) and one per number of active slots (1..slots: the active-adapter list is part of the
graph, and a single LoRA should not pay for three). :meth:`HotswapAdapters.warm_up` compiles the slot
variants; the worker runs it right after it reports ready, so no user waits for it.

User LoRAs stay on the GPU, in the pipeline's dtype, in an LRU bounded in bytes (LORA_CACHE_MB):
switching between them neither reads the disk nor recompiles. Same contract with the trainer as
:mod:`gpu.lora.common` (the trainer's ``__`` adapters are never touched; the state is set in full before
every generation). Not thread-safe: call it from the thread that runs the pipeline.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .common import (
    SLOT_PREFIX,
    AdapterError,
    AdapterSpec,
    check_request,
    describe_load_error,
    file_signature,
    quiet_peft,
    resolve_lora_file,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_RANK = 64
DEFAULT_CACHE_MB = 2048


@dataclass
class _CachedLora:
    signature: tuple  # (file, size, mtime_ns, inode): a replaced file is read again
    layers: dict  # module name -> (lora_A [r, in], lora_B [out, r], alpha / r), on the GPU
    nbytes: int


def slot_names(slots: int) -> list[str]:
    return [f"{SLOT_PREFIX}{index}__" for index in range(slots)]


def _weight(adapters: torch.nn.ModuleDict, slot_name: str) -> torch.Tensor:
    """One slot's ``lora_A`` or ``lora_B`` weight (the slot is an nn.Linear; ModuleDict is typed loosely)."""
    return cast("torch.Tensor", adapters[slot_name].weight)


def _linear_names(transformer) -> list[str]:
    import torch

    return [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]


class HotswapAdapters:
    """Adapter slots on the (soon compiled) transformer; :meth:`activate` swaps user LoRAs into them."""

    def __init__(self, pipe, slots: int = 3, rank: int = DEFAULT_RANK, cache_bytes: int = DEFAULT_CACHE_MB << 20,
                 init_device=None):
        """Add the slots. Call before the transformer is compiled (and before fp8 quantization)."""
        import torch
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        if slots < 1 or rank < 1:
            raise ValueError("slots and rank must be at least 1")
        self.pipe = pipe
        self.rank = rank
        self.cache_bytes = cache_bytes
        self.names = slot_names(slots)
        self.loads = 0  # disk reads so far: switching between cached LoRAs adds none
        self.active: list[tuple[str, float]] = []
        self._cache: OrderedDict[str, _CachedLora] = OrderedDict()  # least recently used first
        self._in_slot: list[tuple | None] = [None] * slots  # (name, signature, scale) held by each slot
        transformer = pipe.transformer
        targets = _linear_names(transformer)
        # init_lora_weights=True: lora_B starts at zero, so an unfilled slot adds nothing.
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=targets)
        # Allocated where the model will run: peft initialises lora_A (kaiming) as it creates it, which on
        # the CPU took ~7 s for three rank-64 slots of the full model (measured on an H100 host). peft then
        # moves the slots next to their base layers (the CPU, for ZIMAGE_VRAM=16gb's block-wise placement).
        with quiet_peft(), torch.device(init_device or transformer.device):
            for name in self.names:
                transformer.add_adapter(config, adapter_name=name)
        dtype = transformer.dtype
        self._layers: dict[str, LoraLayer] = {}
        for module_name, module in transformer.named_modules():
            if isinstance(module, LoraLayer) and self.names[0] in module.lora_A:
                self._layers[module_name] = module
                for name in self.names:
                    module.lora_A[name].to(dtype)
                    module.lora_B[name].to(dtype)
                    torch.nn.init.zeros_(_weight(module.lora_A, name))  # zero A: an empty slot is exactly zero
        prepare_model_for_compiled_hotswap(transformer, target_rank=rank)  # scalings become tensors
        for module in self._layers.values():
            for name in self.names:
                module.scaling[name].fill_(0.0)
        self._set_active(0)
        log.info("LoRA hot-swap: %d slots of rank %d on %d linear layers", slots, rank, len(self._layers))

    def follow_device(self) -> None:
        """Put the scaling tensors where their layers went (they are plain attributes: .to() misses them)."""
        for module in self._layers.values():
            device = module.lora_A[self.names[0]].weight.device
            for name in self.names:
                module.scaling[name] = module.scaling[name].to(device)

    @property
    def cached(self) -> list[str]:
        """Names of the LoRAs held on the GPU, least recently used first."""
        return list(self._cache)

    def activate(self, adapters: Sequence[AdapterSpec]) -> None:
        """Make exactly these (name, path, scale) LoRAs active; [] = the base model.

        A bad request or file raises AdapterError and leaves the base model active."""
        try:
            check_request(adapters, len(self.names))
            keep = {name for name, _, _ in adapters}
            loras = [self._cached_lora(name, path, keep) for name, path, _ in adapters]
            for slot, ((name, _, scale), lora) in enumerate(zip(adapters, loras, strict=True)):
                self._fill(slot, name, lora, float(scale))
            self._set_active(len(adapters))
        except Exception:
            self.active = []
            self._set_active(0)
            raise
        self.active = [(name, float(scale)) for name, _, scale in adapters]

    def unload(self, name: str) -> None:
        """Forget one LoRA (e.g. its file was deleted). The base model is active afterwards."""
        self._cache.pop(name, None)
        self._in_slot = [None if held and held[0] == name else held for held in self._in_slot]
        self.active = []
        self._set_active(0)

    def unload_all(self) -> None:
        self._cache.clear()
        self._in_slot = [None] * len(self.names)
        self.active = []
        self._set_active(0)

    def warm_up(self, generate: Callable[[], object]) -> None:
        """Compile the 1..slots graph variants now (empty slots: zero delta), then go back to the base model."""
        try:
            for count in range(1, len(self.names) + 1):
                for slot in range(count):
                    self._empty(slot)
                self._set_active(count)
                generate()
        finally:
            self.active = []
            self._set_active(0)

    # -- slots -----------------------------------------------------------------------------------------------

    def _set_active(self, count: int) -> None:
        transformer = self.pipe.transformer
        if count == 0:
            transformer.disable_lora()  # LoRA layers return base_layer(x): the base graph
            return
        transformer.enable_lora()
        # peft's set_adapter, not diffusers' set_adapters: the latter writes Python floats into the
        # scalings, which would undo the tensors (and recompile).
        transformer.set_adapter(self.names[:count])

    def _fill(self, slot: int, name: str, lora: _CachedLora, scale: float) -> None:
        held = self._in_slot[slot]
        slot_name = self.names[slot]
        if held is not None and held[:2] == (name, lora.signature):
            if held[2] != scale:
                for module_name, module in self._layers.items():
                    weights = lora.layers.get(module_name)
                    module.scaling[slot_name].fill_(weights[2] * scale if weights else 0.0)
                self._in_slot[slot] = (name, lora.signature, scale)
            return
        self._in_slot[slot] = None  # until the copy is complete: a failure halfway must not look like a hit
        for module_name, module in self._layers.items():
            weights = lora.layers.get(module_name)
            slot_a, slot_b = _weight(module.lora_A, slot_name), _weight(module.lora_B, slot_name)
            if weights is None:
                slot_a.data.zero_()  # zero A (not just the scale): stale weights times 0 could be inf * 0
                module.scaling[slot_name].fill_(0.0)
                continue
            lora_a, lora_b, scaling = weights
            rank = lora_a.shape[0]
            slot_a.data[:rank].copy_(lora_a)
            slot_a.data[rank:].zero_()
            slot_b.data[:, :rank].copy_(lora_b)
            slot_b.data[:, rank:].zero_()
            module.scaling[slot_name].fill_(scaling * scale)
        self._in_slot[slot] = (name, lora.signature, scale)

    def _empty(self, slot: int) -> None:
        slot_name = self.names[slot]
        for module in self._layers.values():
            _weight(module.lora_A, slot_name).data.zero_()
            module.scaling[slot_name].fill_(0.0)
        self._in_slot[slot] = None

    # -- the GPU cache of user LoRAs ---------------------------------------------------------------------------

    def _cached_lora(self, name: str, path: str | Path, keep: set[str]) -> _CachedLora:
        try:
            file = resolve_lora_file(path)
        except AdapterError as exc:
            raise AdapterError(f"LoRA {name!r}: {exc}") from exc
        signature = (str(file), *file_signature(file))
        cached = self._cache.get(name)
        if cached is not None and cached.signature == signature:
            self._cache.move_to_end(name)
            return cached
        self._evict(keep, room=file.stat().st_size)  # before reading: the cache never holds more than its budget
        try:
            lora = self._read(file, signature)
        except AdapterError as exc:
            raise AdapterError(f"the LoRA {name!r} could not be loaded: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a damaged file: one clear line for the user
            log.warning("reading LoRA %s from %s failed: %r", name, file, exc)
            raise AdapterError(f"the LoRA {name!r} could not be loaded: {describe_load_error(exc)}") from exc
        self._cache.pop(name, None)
        self._cache[name] = lora  # the most recently used
        self._in_slot = [None if held and held[0] == name else held for held in self._in_slot]
        self.loads += 1
        log.info("read LoRA %s from %s (%.1f MB on the GPU)", name, file, lora.nbytes / 2**20)
        return lora

    def _read(self, file: Path, signature: tuple) -> _CachedLora:
        """The file's LoRA weights per layer, checked against the slots, on the GPU in the pipeline's dtype."""
        state, metadata = type(self.pipe).lora_state_dict(str(file), return_lora_metadata=True)
        # As diffusers' own loader: only the transformer's metadata (our files are written that way).
        config = {key.removeprefix("transformer."): value for key, value in (metadata or {}).items()
                  if key.startswith("transformer.")}
        if config.get("use_dora"):
            raise AdapterError("DoRA adapters are not supported")
        rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        pairs: dict[str, dict] = {}
        for key, tensor in state.items():
            module_name, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
            if kind not in ("A.weight", "B.weight"):
                raise AdapterError(f"unexpected weight {key!r}")
            pairs.setdefault(module_name, {})[kind[0]] = tensor
        if not pairs:
            raise AdapterError("the file holds no LoRA weights")
        layers, nbytes = {}, 0
        for module_name, pair in pairs.items():
            module = self._layers.get(module_name)
            if module is None or set(pair) != {"A", "B"}:
                raise AdapterError(f"it adapts `{module_name}`, which this model has no LoRA slot for")
            lora_a, lora_b = pair["A"], pair["B"]
            base = module.get_base_layer()
            rank = lora_a.shape[0]
            if lora_a.shape[1] != base.in_features or lora_b.shape != (base.out_features, rank):
                raise AdapterError("it was made for another model (layer sizes differ)")
            if rank > self.rank:
                raise AdapterError(f"its rank {rank} is above the worker's LoRA slot rank {self.rank} "
                                   f"(LORA_MAX_RANK)")
            r = _pattern_value(rank_pattern, module_name, config.get("r", rank))
            alpha = _pattern_value(alpha_pattern, module_name, config.get("lora_alpha", r))
            scaling = float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))
            device, dtype = base.weight.device, module.lora_A[self.names[0]].weight.dtype
            lora_a, lora_b = lora_a.to(device, dtype), lora_b.to(device, dtype)
            layers[module_name] = (lora_a, lora_b, scaling)
            nbytes += lora_a.numel() * lora_a.element_size() + lora_b.numel() * lora_b.element_size()
        return _CachedLora(signature, layers, nbytes)

    def _evict(self, keep: set[str], room: int = 0) -> None:
        """Drop least recently used LoRAs until the cache plus `room` bytes fits its budget (requested ones stay)."""
        total = sum(lora.nbytes for lora in self._cache.values()) + room
        for name in list(self._cache):
            if total <= self.cache_bytes:
                return
            if name not in keep:
                total -= self._cache.pop(name).nbytes
                log.info("dropped LoRA %s from the GPU cache", name)


def _pattern_value(patterns: dict, module_name: str, default):
    """peft's rank_pattern / alpha_pattern, matched literally as a name or a dotted suffix: a pattern comes from
    a user's file and is never compiled as a regular expression (bot/lora_import.py matches the same way)."""
    for pattern, value in patterns.items():
        if module_name == str(pattern) or module_name.endswith("." + str(pattern)):
            return value
    return default
