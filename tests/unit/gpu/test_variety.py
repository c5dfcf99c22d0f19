"""The prompt enhancer (gpu/enhancer.py) and seed variance (gpu/seed_variance.py) on the tiny model.

The tiny text encoder is random: its rewrites are gibberish, which is enough to test the plumbing (a tied head
that is the embedding matrix, determinism with a seed, the length cap, the engine's use of the rewrites)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from gpu import seed_variance
from gpu.enhancer import MAX_NEW_TOKENS, Enhanced, EnhancementCancelled, PromptEnhancer, clean_rewrite, tied_causal_lm
from zimage_protocol.messages import GenerateParams


@pytest.fixture(scope="module")
def engine(tiny_models_dir, tmp_path_factory):
    from gpu.engine import ImageEngine

    data = tmp_path_factory.mktemp("variety") / "data"
    data.mkdir()
    (data / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    engine = ImageEngine("tiny", data)
    engine.load()
    return engine


# --- the enhancer ------------------------------------------------------------------------------------------


def test_the_head_is_the_embedding_matrix_itself(engine):
    encoder = engine.pipe.text_encoder
    lm = tied_causal_lm(encoder)
    assert lm.lm_head.weight is encoder.embed_tokens.weight
    assert lm.lm_head.weight.data_ptr() == encoder.embed_tokens.weight.data_ptr()
    assert lm.model is encoder  # the pipeline's modules, not a copy
    assert not any(parameter.is_meta for parameter in lm.parameters())


def test_the_same_seed_gives_the_same_rewrite_and_another_seed_another(engine):
    first = engine.enhance("a red fox in snow", seed=11)
    again = engine.enhance("a red fox in snow", seed=11)
    other = engine.enhance("a red fox in snow", seed=12)
    assert isinstance(first, Enhanced) and first.prompt
    assert first == Enhanced(prompt=first.prompt, tokens=first.tokens, seconds=first.seconds)
    assert (again.prompt, again.tokens) == (first.prompt, first.tokens)
    assert other.prompt != first.prompt
    greedy = engine.enhance("a red fox in snow", seed=None)
    assert greedy.prompt == engine.enhance("a red fox in snow", seed=None).prompt
    assert first.tokens_per_second > 0


def test_a_rewrite_stops_at_the_cap(engine):
    enhancer = PromptEnhancer(engine.pipe.text_encoder, engine.tokenizer, max_new_tokens=5)
    assert enhancer.enhance("a lighthouse", seed=3).tokens <= 5
    capped = engine.enhance("a lighthouse", seed=3)
    assert capped.tokens <= MAX_NEW_TOKENS
    # The model's own prompt limit is never at risk: the rewrite is at most MAX_NEW_TOKENS tokens.
    assert engine.count_tokens(capped.prompt) <= engine.count_tokens("") + MAX_NEW_TOKENS * 4


def test_a_cancel_stops_a_rewrite_between_tokens(engine):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(EnhancementCancelled):
        PromptEnhancer(engine.pipe.text_encoder, engine.tokenizer, max_new_tokens=50).enhance("x", 1, stop)
    assert len(calls) == 4


def test_the_rewrite_is_cleaned():
    assert clean_rewrite("<think>hmm</think>\n Prompt: \"A fox,\n in snow\"") == "A fox, in snow"
    assert clean_rewrite("a\x00b\x1b c") == "a b c"
    assert clean_rewrite("<think>never closed") == ""


def test_the_engine_makes_each_image_from_its_rewrite(engine):
    params = GenerateParams(prompt="a lighthouse", width=64, height=64, steps=2, seeds=[1, 2])
    prompts = [engine.enhance(params.prompt, seed).prompt for seed in params.seeds]
    made = engine.generate(params, prompts=prompts)
    assert [image.prompt for image in made] == prompts
    plain = engine.generate(params)
    assert [image.prompt for image in plain] == ["", ""]
    assert made[0].image.tobytes() != plain[0].image.tobytes()  # another conditioning, other pixels
    # The same rewrite is the same image.
    assert engine.generate(GenerateParams(prompt=prompts[0], width=64, height=64, steps=2,
                                          seeds=[1]))[0].image.tobytes() == made[0].image.tobytes()


# --- seed variance -----------------------------------------------------------------------------------------


def embedding(tokens: int = 40, hidden: int = 64) -> list[torch.Tensor]:
    return [torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(0)) * 3 + 1]


def test_different_seeds_move_the_embedding_by_the_set_strength():
    clean = embedding()
    std = float(clean[0].std())
    for strength in (0.1, 0.5):
        one = seed_variance.perturb(clean, seed=1, strength=strength)[0]
        two = seed_variance.perturb(clean, seed=2, strength=strength)[0]
        # Each is strength × std away from the clean embedding, per element; two seeds √2 times that apart.
        assert float((one - clean[0]).std()) == pytest.approx(strength * std, rel=0.1)
        assert float((one - two).std()) == pytest.approx(strength * std * 2 ** 0.5, rel=0.1)


def test_the_same_seed_gives_the_same_embedding_and_zero_leaves_it_alone():
    clean = embedding()
    kept = clean[0].clone()
    assert torch.equal(seed_variance.perturb(clean, 7, 0.3)[0], seed_variance.perturb(clean, 7, 0.3)[0])
    assert torch.equal(clean[0], kept)  # the cached embedding is never modified in place
    assert seed_variance.perturb(clean, 7, 0.0) is clean
    # Not the latent noise's stream: the seed is salted.
    latent = torch.randn(40, 64, generator=torch.Generator().manual_seed(7))
    noise = (seed_variance.perturb(clean, 7, 1.0)[0] - clean[0]) / float(clean[0].std())
    assert not torch.allclose(noise, latent, atol=1e-3)


def test_seed_variance_makes_seeds_differ_and_keeps_a_seed_reproducible(engine):
    def image(seed: int, strength: float) -> bytes:
        return engine.generate(GenerateParams(prompt="a lighthouse", width=64, height=64, steps=2, seeds=[seed],
                                              seed_variance=strength))[0].image.tobytes()

    assert image(4, 0.0) == engine.generate(GenerateParams(prompt="a lighthouse", width=64, height=64, steps=2,
                                                           seeds=[4]))[0].image.tobytes()
    assert image(4, 0.5) == image(4, 0.5)
    assert image(4, 0.5) != image(4, 0.0)


# --- scheduling -----------------------------------------------------------------------------------------------


async def test_a_rewrite_is_its_own_turn_on_the_gpu(tiny_models_dir, tmp_path):
    """Another member's image waiting behind a rewrite runs right after it, not after the whole enhanced request."""
    from gpu.engine import ImageEngine
    from gpu.scheduler import GpuScheduler

    (tmp_path / "models").symlink_to(tiny_models_dir, target_is_directory=True)
    engine = ImageEngine("tiny", tmp_path)
    scheduler = GpuScheduler(engine)
    await scheduler.load(warm_up=False)
    events: list[str] = []
    enhance, generate = engine.enhance, engine.generate

    def logged_enhance(prompt, seed, should_stop=lambda: False):
        events.append(f"rewrite {seed}")
        return enhance(prompt, seed, should_stop)

    def logged_generate(params, *args, **kwargs):
        events.append(f"images {params.prompt}")
        return generate(params, *args, **kwargs)

    engine.enhance = logged_enhance  # type: ignore[method-assign]
    engine.generate = logged_generate  # type: ignore[method-assign]
    made: dict[str, list[str]] = {"a": [], "b": []}

    def on_image(name):
        async def record(index, seed, png, prompt):
            made[name].append(prompt)
        return record

    async def no_step(step, total):
        pass

    enhanced = GenerateParams(prompt="a", width=64, height=64, steps=1, seeds=[1, 2], enhance=True)
    plain = GenerateParams(prompt="b", width=64, height=64, steps=1, seeds=[3])
    first = asyncio.create_task(scheduler.generate("a", enhanced, no_step, on_image("a")))
    second = asyncio.create_task(scheduler.generate("b", plain, no_step, on_image("b")))
    seconds = await asyncio.gather(first, second)
    assert events == ["rewrite 1", "images b", "rewrite 2", "images a"]
    assert made["b"] == [""] and len(made["a"]) == 2 and all(made["a"])
    assert all(value > 0 for value in seconds)
