"""gpu/streamed_encoder.py on the tiny model's Qwen3 text encoder (CPU: the same swaps, copies made at once)."""

from __future__ import annotations

import pytest
import torch

from gpu.streamed_encoder import offload_to_host, streamed_hidden_states


@pytest.fixture
def encoder():
    from gpu.tiny import build_tiny_pipeline

    encoder = build_tiny_pipeline().text_encoder.eval()
    ids, mask = _tokens()
    with torch.inference_mode():  # transformers installs its output-recording hooks at the first call
        encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return encoder


def _hooks(encoder) -> list[tuple[int, int]]:
    """How many hooks each module has (transformers installs some of its own to record outputs)."""
    return [(len(module._forward_pre_hooks), len(module._forward_hooks)) for module in encoder.modules()]


def _tokens(length: int = 7):
    ids = torch.arange(3, 3 + length).unsqueeze(0)
    return ids, torch.ones_like(ids, dtype=torch.bool)


def test_streamed_hidden_states_equal_the_encoders_own(encoder):
    ids, mask = _tokens()
    with torch.inference_mode():
        expected = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        offload_to_host(encoder)
        streamed = streamed_hidden_states(encoder, ids, mask, torch.device("cpu"))
    assert len(streamed) == len(expected)
    for ours, theirs in zip(streamed, expected, strict=True):
        assert torch.equal(ours, theirs)  # the same CPU kernels on the same numbers


def test_after_a_call_the_encoder_holds_its_host_tensors_and_no_hook(encoder):
    before = {name: tensor.data_ptr() for name, tensor in encoder.state_dict(keep_vars=True).items()}
    hooks = _hooks(encoder)
    ids, mask = _tokens()
    with torch.inference_mode():
        streamed_hidden_states(encoder, ids, mask, torch.device("cpu"))
    after = {name: tensor.data_ptr() for name, tensor in encoder.state_dict(keep_vars=True).items()}
    assert after == before  # every unit's copies were swapped out again
    assert _hooks(encoder) == hooks


def test_a_failing_forward_leaves_the_host_tensors_in_place(encoder):
    before = {name: tensor.data_ptr() for name, tensor in encoder.state_dict(keep_vars=True).items()}
    layer = encoder.layers[1]
    hooks = _hooks(encoder)

    def fail(module, args):
        raise RuntimeError("out of memory, say")

    handle = layer.register_forward_pre_hook(fail)
    ids, mask = _tokens()
    try:
        with torch.inference_mode(), pytest.raises(RuntimeError, match="out of memory"):
            streamed_hidden_states(encoder, ids, mask, torch.device("cpu"))
    finally:
        handle.remove()
    after = {name: tensor.data_ptr() for name, tensor in encoder.state_dict(keep_vars=True).items()}
    assert after == before
    assert _hooks(encoder) == hooks


def test_only_an_offloaded_encoder_counts_as_pinned_on_host(encoder):
    from gpu.streamed_encoder import pinned_on_host

    assert not pinned_on_host(encoder)  # loaded to the host (the 12gb profile's): the CPU encodes
    offload_to_host(encoder)
    assert pinned_on_host(encoder) is torch.cuda.is_available()  # pinning needs CUDA
