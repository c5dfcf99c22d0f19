"""Z-Image's rotary position embedding in real arithmetic, so the worker's compiled blocks fuse it.

diffusers' ``ZSingleStreamAttnProcessor`` rotates queries and keys as complex64 numbers (``view_as_complex``, a
complex multiply, ``view_as_real``). Inductor generates no code for complex operators: inside the compiled blocks
those run as eager fallback kernels with float32 copies around them, ~26 ms of a 1024x1024 image on an H100
(docs/BENCHMARKS.md, "What the profiles show"). Written on (cos, sin) pairs, the same rotation is a few
multiply-adds that inductor fuses with the kernels around it:

    (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) + i (x0 sin + x1 cos), in float32 as before.

:func:`set_real_rope` swaps two things together: the transformer's ``rope_embedder`` returns its table as real
pairs (``view_as_real``: [..., dim/2, 2] float32, padded and split by the forward exactly as the complex one was),
and every attention module's processor is :class:`RealRopeAttnProcessor`, which reads those pairs. Switched off
(``ZIMAGE_ROPE=complex``, gpu/accel.py), both are diffusers' own again.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import ZSingleStreamAttnProcessor

__all__ = ["RealRopeAttnProcessor", "RealRopeEmbedder", "rotate", "set_real_rope"]


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [batch, seq, heads, dim] by `freqs` [batch, seq, dim/2, 2] (cos, sin), pairs of adjacent channels."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imaginary = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs[..., 0].unsqueeze(2), freqs[..., 1].unsqueeze(2)
    rotated = torch.stack((real * cos - imaginary * sin, real * sin + imaginary * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class RealRopeEmbedder:
    """Wraps diffusers' ``RopeEmbedder`` (a plain object, not a module): the same table, as real (cos, sin) pairs."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(self.inner(ids))

    def __getattr__(self, name: str) -> Any:  # axes_dims, theta, ... as the wrapped embedder has them
        return getattr(self.inner, name)


class RealRopeAttnProcessor(ZSingleStreamAttnProcessor):
    """``ZSingleStreamAttnProcessor.__call__`` (diffusers 0.42.1) with the rotation done by :func:`rotate`."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            if freqs_cis.is_complex():  # a caller that built the table itself
                freqs_cis = torch.view_as_real(freqs_cis)
            query, key = rotate(query, freqs_cis), rotate(key, freqs_cis)
        dtype = query.dtype
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]
        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                              is_causal=False, backend=self._attention_backend,
                                              parallel_config=self._parallel_config)
        output = attn.to_out[0](hidden_states.flatten(2, 3).to(dtype))
        if len(attn.to_out) > 1:  # dropout
            output = attn.to_out[1](output)
        return output


def set_real_rope(transformer, enabled: bool) -> int:
    """Real-arithmetic RoPE on (or diffusers' complex one back); returns how many attention processors changed."""
    changed = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if not isinstance(processor, ZSingleStreamAttnProcessor) or isinstance(processor, RealRopeAttnProcessor) == enabled:
            continue
        replacement = RealRopeAttnProcessor() if enabled else ZSingleStreamAttnProcessor()
        # What set_attention_backend / parallelism set on the processor instance.
        replacement._attention_backend = processor._attention_backend
        replacement._parallel_config = processor._parallel_config
        module.set_processor(replacement)
        changed += 1
    embedder = transformer.rope_embedder
    if enabled and not isinstance(embedder, RealRopeEmbedder):
        transformer.rope_embedder = RealRopeEmbedder(embedder)
    elif not enabled and isinstance(embedder, RealRopeEmbedder):
        transformer.rope_embedder = embedder.inner
    return changed
