"""The text encoder in pinned host memory while a LoRA trains, streamed through the GPU for each new prompt.

Why: a training run needs the text encoder's ~7.5 GiB of GPU memory (issue #17: training within 20 GiB), yet
/imagine requests keep coming between its steps, each with a prompt to encode. Computed on the CPU that encoding
took ~0.4 s of a request's time (Qwen3-4B in bf16, 16 cores with AMX; 1.3 s on a slower host), the main reason an
image while a LoRA trains took 1.55x its idle time. Streamed, the weights cross to the GPU layer by layer from
pinned memory on a copy stream one layer ahead of the arithmetic, which runs on the GPU as it does when the
encoder lives there: the request pays about one pass of the weights over the bus (7.5 GiB).

How: :func:`offload_to_host` moves every parameter and buffer into pinned host memory (plain host memory without
CUDA); ``module.to(device)`` brings the encoder back, as before. :func:`streamed_hidden_states` looks the tokens
up in the embedding on the host (a few rows of a 0.7 GiB table: not worth copying) and runs the rest of the
encoder with hooks on each of its units (every decoder layer, the final norm, the rotary embedding): before a
unit runs, its tensors are swapped for device copies (fetched ahead on the copy stream, waited for on the compute
stream) and the next unit's copy starts; after it, the host tensors are back and the copies are dropped. Outside
a call, nothing of the encoder stays on the GPU and no hook stays installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["offload_to_host", "pinned_on_host", "streamed_hidden_states"]


def offload_to_host(module: torch.nn.Module) -> None:
    """Move `module`'s parameters and buffers to host memory, pinned when CUDA is available (for fast streaming)."""
    pin = torch.cuda.is_available()
    for tensor in _tensors(module):
        if tensor.device.type == "cpu" and (tensor.is_pinned() or not pin):
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
        host.copy_(tensor.data)
        tensor.data = host


def pinned_on_host(module: torch.nn.Module) -> bool:
    """Whether :func:`offload_to_host` put `module` in pinned memory (a training's encoder; not the 12gb profile's,
    which was loaded to the host and is encoded there)."""
    first = next(module.parameters(), None)
    return first is not None and first.device.type == "cpu" and first.is_pinned()


def streamed_hidden_states(encoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           device: torch.device) -> tuple[torch.Tensor, ...]:
    """The encoder's hidden states (``output_hidden_states``) for host-resident weights, computed on `device`.

    `encoder` is a transformers decoder model (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``: Qwen3Model)
    whose tensors are on the host (:func:`offload_to_host`). The outputs are on `device`."""
    embedding: torch.nn.Module = encoder.get_input_embeddings()  # type: ignore[operator]  # a transformers model
    inputs_embeds = embedding(input_ids.to("cpu")).to(device)
    units = [unit for unit in _units(encoder) if unit is not embedding]
    with _streaming(units, device):
        output = encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask.to(device),
                         output_hidden_states=True, use_cache=False)
    return output.hidden_states


def _units(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder's direct children, a ModuleList's members one by one (the decoder layers), in definition order."""
    units: list[torch.nn.Module] = []
    for child in encoder.children():
        units.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    return units


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class _Stream:
    """Device copies of the units' tensors, one unit ahead of the one running."""

    def __init__(self, units: list[torch.nn.Module], device: torch.device):
        self.units = units
        self.position = {id(unit): index for index, unit in enumerate(units)}
        self.device = device
        self.copies = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.fetched: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self.hosts: dict[int, list[torch.Tensor]] = {}

    def fetch(self, index: int) -> None:
        """Start copying unit `index` to the device (asynchronously on CUDA)."""
        if index >= len(self.units) or index in self.fetched:
            return
        hosts = [tensor.data for tensor in _tensors(self.units[index])]
        # Allocated on the compute stream, so the allocator reuses a block only after the kernels queued before
        # it; the copy stream waits for that point before writing into it.
        copies = [torch.empty(host.shape, dtype=host.dtype, device=self.device) for host in hosts]
        if self.copies is None:
            for copy, host in zip(copies, hosts, strict=True):
                copy.copy_(host)
            self.fetched[index] = (copies, None)
            return
        self.copies.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copies):
            for copy, host in zip(copies, hosts, strict=True):
                copy.copy_(host, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copies)
        self.fetched[index] = (copies, done)

    def before(self, module: torch.nn.Module, args) -> None:
        index = self.position[id(module)]
        self.fetch(index)  # not fetched ahead: the first unit, or one called out of order
        copies, done = self.fetched.pop(index)
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        tensors = list(_tensors(module))
        self.hosts[index] = [tensor.data for tensor in tensors]
        for tensor, copy in zip(tensors, copies, strict=True):
            tensor.data = copy
        self.fetch(index + 1)

    def after(self, module: torch.nn.Module, args, output) -> None:
        index = self.position[id(module)]
        for tensor, host in zip(_tensors(module), self.hosts.pop(index), strict=True):
            tensor.data = host

    def restore(self) -> None:
        """Host tensors back on any unit a failed forward left swapped; prefetched copies dropped."""
        for index, hosts in self.hosts.items():
            for tensor, host in zip(_tensors(self.units[index]), hosts, strict=True):
                tensor.data = host
        self.hosts.clear()
        self.fetched.clear()


@contextmanager
def _streaming(units: list[torch.nn.Module], device: torch.device) -> Iterator[None]:
    stream = _Stream(units, device)
    handles = []
    try:
        for unit in units:
            handles.append(unit.register_forward_pre_hook(stream.before))
            handles.append(unit.register_forward_hook(stream.after))
        stream.fetch(0)
        yield
    finally:
        for handle in handles:
            handle.remove()
        stream.restore()
