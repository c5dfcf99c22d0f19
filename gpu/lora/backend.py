"""The one interface the worker's engine uses for LoRAs, whichever implementation serves them.

Two implementations: :class:`gpu.lora.peft.AdapterManager` (a named peft adapter per LoRA; the eager
worker) and :class:`gpu.lora.hotswap.HotswapAdapters` (fixed slots whose weights are swapped in place;
the compiled worker, where peft's way would recompile). ``ImageEngine`` picks one in one place and
speaks to it only through :class:`AdapterBackend`. The trainer needs neither: it handles its own
adapters (gpu/lora/trainee.py) under the rules of gpu/lora/common.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .common import AdapterSpec


class AdapterBackend(Protocol):
    """Serves user LoRAs for generation on the shared transformer. Not thread-safe: the GPU thread's."""

    def activate(self, adapters: Sequence[AdapterSpec]) -> None:
        """Make exactly these (name, path, scale) LoRAs active before a generation; [] = the base model.

        A LoRA that cannot be used raises :class:`gpu.lora.common.AdapterError`; one whose file fails leaves the
        base model active."""
        ...

    def warm_up(self, generate: Callable[[], object]) -> None:
        """Compile, with `generate` (one small image), the graph variants switching LoRAs will need; then the
        base model is active. Called only when the transformer is compiled."""
        ...

    def follow_device(self) -> None:
        """After the engine moved the transformer block by block (ZIMAGE_VRAM=16gb): bring along whatever
        state ``.to()`` does not move."""
        ...
