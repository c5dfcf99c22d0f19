"""LoRA training on a quantized frozen base: the fp8, int8 and 16gb profiles (24 GB and 16 GB cards).

On those profiles the transformer blocks' big linears hold torchao tensors: fp8 weights with dynamic
per-row activation scaling (compute capability 8.9 and up) or int8 weight-only (below, and on the CPU).
The base stays quantized and frozen; the trainee LoRA is added on top of those layers by peft as on
the bf16 model (gpu/lora/trainee.py: fp32 master weights, bf16 autocast on CUDA), so the LoRA file is
the same as any other (diffusers naming, loads in every profile, in diffusers and ComfyUI).

What training needs from a frozen layer is the gradient with respect to its *input* (it carries the
gradients of the LoRAs further down the network), never one for its weight. torchao's fp8 forward
quantizes the activations and calls ``torch._scaled_mm``, which autograd cannot differentiate, so
during training steps every quantized linear runs :func:`frozen_linear`: its forward is the
quantized kernel generation uses, its backward multiplies the output gradient by that layer's weight
dequantized on the fly (one bf16 weight at a time, freed right after; the same for int8).

Beside that, while a quantized base trains:

* gradient checkpointing is on (activations recomputed in the backward pass: the cards' memory), so the
  trainer does not use CUDA graphs (gpu/training/graphs.py);
* the transformer's compiled blocks run eager during training steps (the quantized backward above is a
  Python autograd function: it is not traced into generation's fullgraph compiles), and generation's
  compiled blocks are put back for a generation between two steps, a sample, and after the run.

:class:`QuantizedBase` does both swaps; the trainer calls ``enter()`` where it configures a training step
and ``exit()`` where it suspends training (the same places as gpu/training/graphs.py).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

__all__ = ["QuantizedBase", "frozen_linear", "is_quantized_linear", "quantized_linears"]


def is_quantized_linear(module) -> bool:
    """A linear layer whose weight is a torchao quantized tensor (checked by type, without importing torchao)."""
    import torch

    weight = getattr(module, "weight", None)
    return (isinstance(module, torch.nn.Linear) and isinstance(weight, torch.Tensor)
            and type(weight).__module__.startswith("torchao.") and callable(getattr(weight, "dequantize", None)))


def quantized_linears(transformer) -> list:
    return [module for module in transformer.modules() if is_quantized_linear(module)]


def _frozen_linear_class():
    import torch
    import torch.nn.functional as F

    class FrozenQuantizedLinear(torch.autograd.Function):
        """``y = x W^T + b`` with W quantized and frozen: gradient for x only, W dequantized in the backward."""

        @staticmethod
        def forward(ctx, x, module):
            ctx.module, ctx.input_dtype = module, x.dtype
            weight = module.weight
            # The quantized kernel in the weight's own dtype (autocast would try to cast the quantized weight).
            with torch.autocast(x.device.type, enabled=False):
                return F.linear(x.to(weight.dtype), weight, module.bias)

        @staticmethod
        def backward(ctx, grad_output):
            weight = ctx.module.weight.dequantize()  # (out, in), this layer only
            grad_input = grad_output.to(weight.dtype) @ weight
            return grad_input.to(ctx.input_dtype), None

    return FrozenQuantizedLinear


_FUNCTION = None


def frozen_linear_function():
    """The autograd function (built on first use: no torch at import)."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _frozen_linear_class()
    return _FUNCTION


def frozen_linear(module, x):
    """`module`'s forward for training steps (see the module docstring)."""
    return frozen_linear_function().apply(x, module)


class QuantizedBase:
    """The swaps a training step needs on a quantized transformer; ``None`` from :meth:`find` when it has none."""

    def __init__(self, transformer, linears: list):
        self.transformer = transformer
        self.linears = linears
        self.blocks = [module for module in transformer.modules()
                       if getattr(module, "_compiled_call_impl", None) is not None]
        self._generation: dict = {}  # block -> generation's compiled callable, while a step runs eager
        self.active = False

    @classmethod
    def find(cls, transformer) -> QuantizedBase | None:
        linears = quantized_linears(transformer)
        return cls(transformer, linears) if linears else None

    def describe(self) -> str:
        kinds = sorted({type(linear.weight).__name__ for linear in self.linears})
        return (f"{len(self.linears)} quantized linears ({', '.join(kinds)}) frozen, gradient checkpointing on, "
                f"{len(self.blocks)} compiled block(s) eager during steps")

    def enter(self) -> None:
        """Training steps: quantized linears differentiable for their input, compiled blocks eager."""
        import functools

        if self.active:
            return
        for linear in self.linears:
            linear.forward = functools.partial(frozen_linear, linear)
        for block in self.blocks:
            self._generation[block] = block._compiled_call_impl
            block._compiled_call_impl = None  # what nn.Module.compile sets; None runs the module eager
        self.active = True

    def exit(self) -> None:
        """Generation's layers and compiled blocks back, exactly as they were."""
        if not self.active:
            return
        for linear in self.linears:
            linear.__dict__.pop("forward", None)
        for block, compiled in self._generation.items():
            block._compiled_call_impl = compiled
        self._generation = {}
        self.active = False
