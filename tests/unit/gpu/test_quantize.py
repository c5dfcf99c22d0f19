"""gpu/quantize.py without torchao: which layers the 16 GB profile quantizes, and that its block-wise placement
moves every parameter and buffer (the torchao part itself runs on CUDA only: docs/BENCHMARKS.md)."""

from __future__ import annotations

import torch

from gpu import quantize


def test_block_linear_filter_finds_the_same_layers_behind_lora_slots():
    from gpu.lora.hotswap import HotswapAdapters
    from gpu.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    transformer = pipe.transformer
    blocks = len(transformer.layers) + len(transformer.noise_refiner) + len(transformer.context_refiner)

    def chosen():
        return sorted(name.removesuffix(".base_layer") for name, module in transformer.named_modules()
                      if quantize.block_linear_filter(module, name))

    plain = chosen()
    # Attention q/k/v/out of every block (the tiny feed-forward widths are not multiples of 16: skipped, as fp8 needs)
    assert len(plain) >= 4 * blocks and all(name.endswith(quantize.BLOCK_LINEARS) for name in plain)
    assert not any("embedder" in name or "adaLN" in name or "final_layer" in name for name in plain)
    HotswapAdapters(pipe, slots=2, rank=4)  # wraps every linear: the base layers are what gets quantized
    assert chosen() == plain
    assert not any(quantize.block_linear_filter(module, name) for name, module in transformer.named_modules()
                   if ".lora_" in name)


def test_place_quantized_moves_every_parameter_and_buffer(monkeypatch):
    from gpu.tiny import build_tiny_pipeline

    monkeypatch.setattr(quantize, "_SPLIT_PARAMS", 1000)  # the tiny model's lists are split as the real ones are
    encoder = build_tiny_pipeline().text_encoder
    count = quantize.place_quantized(encoder, torch.device("meta"), None, quantize.any_linear_filter)
    assert count == 0
    assert all(p.device.type == "meta" for p in encoder.parameters())
    assert all(b.device.type == "meta" for b in encoder.buffers())
