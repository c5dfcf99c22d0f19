"""What a training run changes on the worker's shared pipeline, and how ``close()`` puts it back.

The trainer trains on the pipeline that serves /imagine (no second copy of the base weights), so every
change it makes for the run is recorded here and undone at the end: the text encoder goes to pinned host
memory (training uses cached embeddings; a prompt to encode meanwhile streams it through the GPU:
gpu/streamed_encoder.py), the base parameters' ``requires_grad`` flags, and gradient checkpointing (on when
configured, on a quantized base, or after an out-of-memory step). Kept apart from gpu/training/trainer.py,
which owns the adapters, the optimizer and the loop.
"""

from __future__ import annotations

import gc

__all__ = ["PipelineChanges", "free_memory"]


class PipelineChanges:
    def __init__(self, pipe, device):
        self.pipe, self.transformer, self.device = pipe, pipe.transformer, device
        self._requires_grad: dict = {}  # base parameter -> its flag before training
        self._text_encoder_device = None  # where the text encoder was, if training moved it
        self._checkpointing_before = False
        self.checkpointing = False  # gradient checkpointing turned on for this run

    def offload_text_encoder(self) -> None:
        from ..streamed_encoder import offload_to_host

        encoder = self.pipe.text_encoder
        if encoder is not None and encoder.device.type == "cuda":
            self._text_encoder_device = encoder.device
            offload_to_host(encoder)  # pinned: a prompt to encode meanwhile streams it through the GPU
            free_memory(self.device)  # its blocks back to the card, not kept in the allocator's cache

    def remember_requires_grad(self) -> None:
        """Before the adapters are added: the base's flags, which training changes (only the trainee learns)."""
        self._requires_grad = {param: param.requires_grad for param in self.transformer.parameters()}

    def enable_checkpointing(self) -> None:
        """Recompute activations in the backward pass: far less memory, slower steps."""
        if not self.checkpointing:
            self._checkpointing_before = bool(self.transformer.gradient_checkpointing)
            self.transformer.enable_gradient_checkpointing()
            self.checkpointing = True

    def restore(self) -> None:
        """The pipeline as it was before the run (call after the trainer's adapters are removed)."""
        for param, flag in self._requires_grad.items():
            param.requires_grad_(flag)
        self._requires_grad = {}
        if self.checkpointing and not self._checkpointing_before:
            self.transformer.disable_gradient_checkpointing()
        self.checkpointing = False
        if self._text_encoder_device is not None:
            self.pipe.text_encoder.to(self._text_encoder_device)
            self._text_encoder_device = None


def free_memory(device) -> None:
    """Drop unreachable tensors and hand the allocator's cached blocks back to the card."""
    import torch

    gc.collect()
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.empty_cache()
