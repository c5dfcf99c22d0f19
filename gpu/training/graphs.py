"""CUDA graphs for LoRA training steps on the worker's regionally compiled transformer.

Why: a compiled 512 px training step is bound by the host, not the GPU. Profiled on an H100
(docs/BENCHMARKS.md): 74 ms of GPU work in a 200 ms step, ~4,800 kernel launches issued one by one
from inductor's Python wrappers and the autograd engine. Replaying each block's forward and
backward as a CUDA graph (torch.compile ``mode="reduce-overhead"``: cudagraph trees) halves the
step: 0.188 -> 0.094 s in the same benchmark run.

How: the worker compiles its blocks once for generation (``compile_repeated_blocks``, gpu/accel.py).
Training gets a second compiled callable per block (same code, cudagraph mode); :meth:`enter` puts
it in place for training steps and :meth:`exit` puts generation's back, so a generation between two
steps, a checkpoint's sample or the end of training run exactly the graphs they ran before. Dynamo
keeps both variants side by side in the block's cache (``accel.RECOMPILE_LIMIT``), so switching
compiles nothing once both have run.

Costs: each new step shape (image tokens x caption tokens) is recorded once, ~10-20 s for the 34
blocks' forward and backward graphs (a shape is recorded on its second step). The trainer pads every
step to one image length and a few caption lengths (gpu/training/shapes.py), so any dataset has at most
``len(shapes.CAPTION_LENGTHS)`` shapes. A run with more than ``MAX_SHAPES`` (unpadded: an attention
backend without masks) trains without graphs (the recordings would cost more than they save), as do
runs with gradient checkpointing (configured, or after an out-of-memory step).
At the end of training the graphs and their memory pool are freed, which costs generation a re-trace
of its graphs from the on-disk compile cache (:meth:`release`; the worker re-warms right away).

``ZIMAGE_TRAIN_GRAPHS`` = ``auto`` | ``off`` (gpu/accel.py) turns it off; ``auto`` uses it whenever
the transformer is compiled on CUDA.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

__all__ = ["MAX_SHAPES", "TrainingGraphs", "distinct_shapes", "graphs_unsuitable"]

# Above this many distinct step shapes, recording (10-14 s each) would eat what replay saves (~0.1 s a step).
MAX_SHAPES = 12
CUDA_GRAPH_OPTIONS = {"fullgraph": True, "mode": "reduce-overhead"}


def distinct_shapes(shapes) -> int:
    """How many distinct step shapes a run has (one per sample in `shapes`): one recording each."""
    return len(set(shapes))


def graphs_unsuitable(shapes, checkpointing: bool) -> str | None:
    """Why a training run whose samples have these step shapes should not use CUDA graphs, or None."""
    if checkpointing:
        return "gradient checkpointing is on"
    count = distinct_shapes(shapes)
    if count > MAX_SHAPES:
        return f"the images and captions come in {count} shapes, more than {MAX_SHAPES}"
    return None


class TrainingGraphs:
    """Swaps the transformer's compiled blocks between generation's callables and training's.

    ``TrainingGraphs([])`` has no blocks and does nothing: the trainer's state when not using graphs."""

    def __init__(self, blocks: list, options: dict | None = None, activation_budget: float | None = None):
        from ..accel import DEFAULT_TRAIN_ACTIVATION_BUDGET

        self.blocks = blocks
        self._options = dict(CUDA_GRAPH_OPTIONS if options is None else options)
        # ZIMAGE_TRAIN_ACTIVATION_BUDGET (gpu/accel.py): the worker passes its setting, validated at start-up
        self.activation_budget = DEFAULT_TRAIN_ACTIVATION_BUDGET if activation_budget is None else activation_budget
        self._budget_before: float | None = None
        self._training: dict = {}  # block -> training's compiled callable (made by the first enter())
        self._generation: dict = {}  # block -> the callable it had before enter()
        self.active = False
        self.reset_compiled_code = False  # release() discarded every compiled graph: generation must re-warm

    @classmethod
    def for_transformer(cls, transformer, options: dict | None = None,
                        activation_budget: float | None = None) -> TrainingGraphs | None:
        """None unless the transformer's repeated blocks are compiled (regional compile). `activation_budget`:
        the worker's setting (AccelReport.train_activation_budget); None reads ZIMAGE_TRAIN_ACTIVATION_BUDGET."""
        from ..accel import train_activation_budget

        budget = train_activation_budget() if activation_budget is None else activation_budget
        names = set(getattr(transformer, "_repeated_blocks", None) or ())
        blocks = [module for module in transformer.modules()
                  if type(module).__name__ in names and getattr(module, "_compiled_call_impl", None) is not None]
        return cls(blocks, options, budget) if blocks else None

    @property
    def uses_cuda_graphs(self) -> bool:
        return self._options.get("mode") == "reduce-overhead"

    def enter(self) -> None:
        """Training's callables in place (compiled lazily by the next step)."""
        import torch

        if self.active or not self.blocks:
            return
        for block in self.blocks:
            if block not in self._training:
                self._training[block] = torch.compile(block._call_impl, **self._options)
            self._generation[block] = block._compiled_call_impl
            block._compiled_call_impl = self._training[block]
        if self.activation_budget < 1.0:  # read when a step compiles, so only training's graphs see it
            import torch._functorch.config as functorch_config

            self._budget_before = functorch_config.activation_memory_budget
            functorch_config.activation_memory_budget = self.activation_budget
        self.active = True

    def mark_step(self) -> None:
        """A new training iteration: the previous step's graph outputs may be overwritten."""
        import torch

        if self.active and self.uses_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def exit(self) -> None:
        """Generation's callables back."""
        if not self.active:
            return
        for block, callable_ in self._generation.items():
            block._compiled_call_impl = callable_
        self._generation = {}
        if self._budget_before is not None:
            import torch._functorch.config as functorch_config

            functorch_config.activation_memory_budget = self._budget_before
            self._budget_before = None
        self.active = False

    def release(self) -> TrainingGraphs:
        """exit() and free the recorded graphs (end of training, or an out-of-memory step).

        Returns the ``TrainingGraphs([])`` to use from now on. CUDA graphs keep a private memory pool (a
        step's activations) for as long as their compiled code lives, and torch frees it only together
        with every compiled graph of the process (``torch._dynamo.reset``); on a 24 GB card that pool
        would not leave room for the next 1024x1024 image. So the reset happens here, and the returned
        object's ``reset_compiled_code`` tells the worker to warm generation up again (its graphs re-trace
        from the on-disk compile cache)."""
        if not self.blocks:
            return self
        self.exit()
        released = TrainingGraphs([])
        if self.uses_cuda_graphs and self._training:
            import torch

            torch._dynamo.reset()
            released.reset_compiled_code = True
        self._training = {}
        return released
