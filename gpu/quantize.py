"""Weight quantization (torchao) and the block-wise placement of the quantized profiles.

``ZIMAGE_QUANT=fp8|int8`` quantizes the transformer blocks' big linears while the transformer moves to
the GPU (:func:`place_transformer`), so a 24 GB card never holds the 12 GB bf16 transformer beside the
8 GB text encoder. ``ZIMAGE_VRAM=16gb`` must never hold the bf16 model on the GPU at all (12 GB
transformer + 8 GB text encoder): :func:`place_quantized` moves a component to the GPU one block at a
time and quantizes each block as it arrives, so the load peaks at the quantized model plus one bf16
block. ``ZIMAGE_VRAM=12gb`` places the transformer the same way and leaves the text encoder on the CPU.
LoRA training on top of these weights: gpu/training/quantized.py.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

QUANT_CHOICES = ("none", "fp8", "int8")
# The transformer blocks' big linears (attention q/k/v/out, feed-forward w1/w2/w3): 98 % of its weights.
BLOCK_LINEARS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
BLOCK_LISTS = ("layers.", "noise_refiner.", "context_refiner.")
# A child holding more parameters than this is placed child by child (a ModuleList of blocks, a block list).
_SPLIT_PARAMS = 256 << 20


# For ZIMAGE_VRAM=16gb (set by gpu/__main__.py before torch starts): blocks freed by the block-wise
# placement are reused instead of fragmenting the cache.
LOW_VRAM_ALLOC_CONF = "expandable_segments:True"


class QuantizationError(ValueError):
    """The requested quantization cannot run here; the message says what to change."""


def block_linear_filter(module, fqn: str) -> bool:
    """The transformer's block linears (also when a LoRA hot-swap slot wraps them: ``….base_layer``)."""
    import torch

    return (
        isinstance(module, torch.nn.Linear)
        and fqn.startswith(BLOCK_LISTS)
        and fqn.removesuffix(".base_layer").endswith(BLOCK_LINEARS)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def any_linear_filter(module, fqn: str) -> bool:
    """Every linear layer except LoRA weights (the text encoder's, for int8 weight-only)."""
    import torch

    return isinstance(module, torch.nn.Linear) and ".lora_" not in fqn


def config_for(kind: str, setting: str = "ZIMAGE_QUANT"):
    """The torchao config of `kind` (fp8: dynamic per-row activations and weights; int8: weight-only)."""
    import torch

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow
    except ImportError as exc:
        raise QuantizationError(f"{setting} needs the torchao package ({exc}); install it with `pip install torchao` "
                                "or turn the setting off") from exc
    if kind == "fp8":
        if not torch.cuda.is_available():
            raise QuantizationError(f"{setting}: fp8 needs a CUDA GPU")
        if torch.cuda.get_device_capability() < (8, 9):
            raise QuantizationError(f"{setting}: fp8 needs a CUDA GPU of compute capability 8.9 or newer "
                                    "(Ada, Hopper, Blackwell); use ZIMAGE_QUANT=none (or int8)")
        # set_inductor_config=False: torchao's recommended inductor settings turn on coordinate-descent
        # tuning, which multiplied the first compile time (about 250 s measured) for little gain.
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    if kind == "int8":  # runs on the CPU too (the tests' quantized worker)
        return Int8WeightOnlyConfig(version=2, set_inductor_config=False)
    raise QuantizationError(f"unknown quantization {kind!r}")


def quantize_transformer(transformer, kind: str, setting: str = "ZIMAGE_QUANT") -> int:
    """Quantize the block linears of a transformer already on the GPU, in place; returns how many."""
    config = config_for(kind, setting)
    from torchao.quantization import quantize_

    count = sum(1 for fqn, module in transformer.named_modules() if block_linear_filter(module, fqn))
    quantize_(transformer, config, filter_fn=block_linear_filter)
    return count


def place_quantized(module, device, kind: str | None, filter_fn, prefix: str = "") -> int:
    """Move `module` to `device` piece by piece, quantizing each piece (if `kind`) as soon as it is there.

    Big children are split recursively; small ones move whole. `filter_fn(module, fqn)` sees names
    relative to the top module. Returns the number of quantized linears."""
    config = config_for(kind, "ZIMAGE_VRAM=16gb") if kind else None
    if config is not None:
        from torchao.quantization import quantize_

    count = 0
    for name, child in module.named_children():
        fqn = f"{prefix}{name}"
        if sum(p.numel() for p in child.parameters()) > _SPLIT_PARAMS and any(True for _ in child.children()):
            count += place_quantized(child, device, kind, filter_fn, prefix=f"{fqn}.")
            continue
        child.to(device)
        if config is not None:
            chosen = [n for n, m in child.named_modules() if filter_fn(m, f"{fqn}.{n}" if n else fqn)]
            if chosen:
                quantize_(child, config, filter_fn=lambda m, n, fqn=fqn: filter_fn(m, f"{fqn}.{n}" if n else fqn))
                count += len(chosen)
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for key, buffer in list(module.named_buffers(recurse=False)):
        module._buffers[key] = buffer.to(device)
    return count


def _allocated(device) -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.device(device).type == "cuda" else 0


def _release(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # the bf16 blocks that were quantized: give their memory back


def place_transformer(pipe, device, kind: str) -> list[str]:
    """ZIMAGE_QUANT=fp8|int8: the transformer's block linears quantized as they move to `device`, then the
    rest of the pipeline moved whole. Returns notes for the log."""
    started = _allocated(device)
    count = place_quantized(pipe.transformer, device, kind, block_linear_filter)
    pipe.to(device)
    _release(device)
    notes = [f"{kind} on {count} transformer linears (placed block by block), "
             f"{(_allocated(device) - started) / 2**30:.2f} GiB resident"]
    log.info(notes[0])
    return notes


def place_low_vram(pipe, device, vram: str) -> list[str]:
    """ZIMAGE_VRAM=16gb: transformer blocks in fp8 (int8 weight-only below compute capability 8.9), the text
    encoder's linears int8 weight-only, the rest (VAE, embeddings, norms) bf16. ZIMAGE_VRAM=12gb: the same
    transformer, the text encoder left where it is (the CPU: prompts are encoded there). Returns notes for the log."""
    import torch

    kind = "fp8" if torch.cuda.get_device_capability() >= (8, 9) else "int8"
    started = _allocated(device)
    transformer = place_quantized(pipe.transformer, device, kind, block_linear_filter)
    encoder = pipe.text_encoder
    if vram == "16gb":
        encoded = place_quantized(encoder, device, "int8", any_linear_filter)
        where = f"int8 on {encoded} text-encoder linears"
        pipe.to(device)  # the VAE and anything small left behind
    else:
        where = "the text encoder on the CPU"
        for component in pipe.components.values():  # the VAE and anything small left behind, not the encoder
            if component is not encoder and isinstance(component, torch.nn.Module):
                component.to(device)
    _release(device)
    gib = (_allocated(device) - started) / 2**30
    notes = [f"{vram}: {kind} on {transformer} transformer linears, {where}, {gib:.2f} GiB resident"]
    log.info(notes[0])
    return notes
