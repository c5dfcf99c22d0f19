"""Fixed step shapes for training: padded image and caption sequences, the padding masked out of attention.

Why: a compiled training step runs one CUDA graph recording per input shape (gpu/training/graphs.py),
and the transformer blocks see two sequence lengths per step: the image's (its patch count, padded
by the DiT to a multiple of 32 tokens) and the caption's (its token count, likewise). A real photo
set (issue #17: 75 photos in ten sizes, both orientations, captions of 5-60 words) gave 36
(image, caption) shapes, so it trained without graphs at 5x the step time of a uniform set.

How: every step of a run is padded to one image length (the longest image of the dataset, all
aspect buckets hold at most ``resolution**2`` pixels, so they differ by a few percent) and to the
first of ``CAPTION_LENGTHS`` that holds its caption. Whatever the dataset, a run has at most
``len(CAPTION_LENGTHS)`` step shapes (the realistic set above: 2). The padding does not change
the result: :func:`padded_forward` is the transformer's own forward (batch 1, the pipeline's patch
size) with the extra tokens masked out of every attention, so the real tokens, their positions
(RoPE ids), the DiT's own pad-to-32 tokens and the output are what ``transformer([latent], t, [embeds])``
computes, up to float rounding (tests/unit/gpu/test_train_shapes.py compares the two).

Only for compiled blocks (shapes cost nothing in eager mode, and padding costs a little compute)
and attention backends that take a boolean mask (``MASKED_BACKENDS``; with another backend training
runs unpadded, as before). The cache (gpu/training/data.py) keeps the unpadded embeddings.
"""

from __future__ import annotations

import logging
import math

__all__ = ["CAPTION_LENGTHS", "MASKED_BACKENDS", "SEQ_MULTIPLE", "attention_backend", "attention_takes_mask",
           "caption_length", "choose_shapes", "image_tokens", "padded_forward", "step_shapes", "supported",
           "unpadded_shapes"]

log = logging.getLogger(__name__)

SEQ_MULTIPLE = 32  # the DiT pads the image and the caption sequences to multiples of 32 tokens (SEQ_MULTI_OF)
CAPTION_LENGTHS = (64, 128, 256, 512)  # caption tokens a step is padded to (the text encoder gives at most 512)
PATCH, FRAME_PATCH = 2, 1  # the pipeline's patch sizes (ZImagePipeline calls the transformer with the defaults)
# diffusers attention backends that apply a boolean [batch, 1, 1, keys] mask inside a full-graph compile.
# Not: flash/sage/xla (no mask), the varlen ones (data-dependent shapes), xformers (adds a 4-D bool as a bias),
# _native_cudnn (whether cuDNN takes the mask depends on the torch build).
MASKED_BACKENDS = frozenset({"native", "_native_efficient", "_native_math"})


def _round_up(tokens: int) -> int:
    return max(1, math.ceil(tokens / SEQ_MULTIPLE)) * SEQ_MULTIPLE


def image_tokens(latent) -> int:
    """The image sequence the DiT builds for a latent [channels, height, width]: patches, padded to 32."""
    height, width = latent.shape[-2:]
    return _round_up((height // PATCH) * (width // PATCH))


def caption_length(tokens: int) -> int:
    """The padded caption length of a caption of `tokens` tokens: the first ``CAPTION_LENGTHS`` entry that holds it."""
    native = _round_up(tokens)
    return next((length for length in CAPTION_LENGTHS if length >= native), native)


def step_shapes(latents, embeds) -> list[tuple[int, int]]:
    """(image tokens, caption tokens) of each sample's padded step: one image length for the whole dataset."""
    image = max(image_tokens(latent) for latent in latents) if latents else 0
    return [(image, caption_length(embed.shape[0])) for embed in embeds]


def unpadded_shapes(latents, embeds) -> list[tuple]:
    """Each sample's shape without padding, as the trainer counted it before (latent shape, caption / 32)."""
    return [(tuple(latent.shape), math.ceil(embed.shape[0] / SEQ_MULTIPLE)) for latent, embed in
            zip(latents, embeds, strict=True)]


def attention_backend(transformer) -> str | None:
    """The diffusers attention backend the transformer's blocks dispatch to (its name), or None if unknown."""
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is None or not hasattr(processor, "_attention_backend"):
            continue
        backend = processor._attention_backend
        if backend is None:
            try:
                from diffusers.models.attention_dispatch import _AttentionBackendRegistry

                backend = _AttentionBackendRegistry.get_active_backend()[0]
            except (ImportError, AttributeError):
                return None
        return str(getattr(backend, "value", backend))
    return None


def attention_takes_mask(transformer) -> bool:
    return attention_backend(transformer) in MASKED_BACKENDS


def _padded_sequence(transformer, feats, pos_ids, pad_mask, pad_token, length: int):
    """One sequence as ``_prepare_sequence`` builds it for batch 1, then `length - len` masked tokens appended:
    (features [1, length, dim], RoPE [1, length, ...], attention mask [1, length])."""
    import torch

    count = feats.shape[0]
    pos_ids = pos_ids[:count]  # the caption's ids run past its padded length; the forward cuts them there too
    if length < count:
        raise ValueError(f"a sequence of {count} tokens does not fit in {length}")
    feats = torch.where(pad_mask.unsqueeze(-1), pad_token, feats)  # the DiT's own pad-to-32 tokens
    if length > count:
        feats = torch.cat([feats, feats.new_zeros(length - count, feats.shape[1])])
        pos_ids = torch.cat([pos_ids, pos_ids.new_zeros(length - count, pos_ids.shape[1])])
    freqs = transformer.rope_embedder(pos_ids)
    mask = torch.arange(length, device=feats.device) < count
    return feats.unsqueeze(0), freqs.unsqueeze(0), mask.unsqueeze(0)


def padded_forward(transformer, latent, timestep, embeds, shape: tuple[int, int]):
    """``transformer([latent], timestep, [embeds], return_dict=False)[0]`` with the image sequence padded to
    ``shape[0]`` tokens and the caption to ``shape[1]``, the added tokens masked out of attention.

    Mirrors ZImageTransformer2DModel.forward (diffusers 0.36+, basic mode) for one sample: patchify, embed,
    noise refiner, context refiner, the main layers on [image, caption], final layer, unpatchify. The blocks
    are called exactly as that forward calls them (compiled, with gradient checkpointing if it is on)."""
    import torch

    key = f"{PATCH}-{FRAME_PATCH}"
    image_length, caption_length_ = shape
    adaln = transformer.t_embedder(timestep * transformer.t_scale).type_as(latent)
    x, cap, sizes, x_pos, cap_pos, x_pad, cap_pad = transformer.patchify_and_embed([latent], [embeds], PATCH,
                                                                                   FRAME_PATCH)
    checkpointing = torch.is_grad_enabled() and transformer.gradient_checkpointing

    def run(layer, *args):
        return transformer._gradient_checkpointing_func(layer, *args) if checkpointing else layer(*args)

    x_feats, x_freqs, x_mask = _padded_sequence(transformer, transformer.all_x_embedder[key](x[0]), x_pos[0], x_pad[0],
                                                transformer.x_pad_token, image_length)
    for layer in transformer.noise_refiner:
        x_feats = run(layer, x_feats, x_mask, x_freqs, adaln, None, None, None)
    cap_feats, cap_freqs, cap_mask = _padded_sequence(transformer, transformer.cap_embedder(cap[0]), cap_pos[0],
                                                      cap_pad[0], transformer.cap_pad_token, caption_length_)
    for layer in transformer.context_refiner:
        cap_feats = run(layer, cap_feats, cap_mask, cap_freqs)
    unified = torch.cat([x_feats, cap_feats], dim=1)
    freqs = torch.cat([x_freqs, cap_freqs], dim=1)
    mask = torch.cat([x_mask, cap_mask], dim=1)
    for layer in transformer.layers:
        unified = run(layer, unified, mask, freqs, adaln, None, None, None)
    unified = transformer.all_final_layer[key](unified, c=adaln)
    return transformer.unpatchify([unified[0]], sizes, PATCH, FRAME_PATCH)


def supported(transformer) -> bool:
    """Whether :func:`padded_forward` can stand in for this transformer's forward."""
    names = ("patchify_and_embed", "all_x_embedder", "all_final_layer", "noise_refiner", "context_refiner", "layers",
             "rope_embedder", "x_pad_token", "cap_pad_token", "t_embedder", "unpatchify")
    return all(hasattr(transformer, name) for name in names) and attention_takes_mask(transformer)


def choose_shapes(transformer, latents, embeds, compiled: bool) -> list:
    """Each sample's step shape: padded when the blocks are compiled and the attention takes a mask, else None
    (the sample's step runs unpadded: shapes cost nothing in eager mode)."""
    if not compiled:
        return [None] * len(latents)
    if not supported(transformer):
        log.info("training unpadded: the attention backend takes no mask (gpu/training/shapes.py)")
        return [None] * len(latents)
    shapes = step_shapes(latents, embeds)
    log.info("training in %d step shape(s) (image tokens, caption tokens): %s; unpadded %d", len(set(shapes)),
             sorted(set(shapes)), len(set(unpadded_shapes(latents, embeds))))
    return shapes
