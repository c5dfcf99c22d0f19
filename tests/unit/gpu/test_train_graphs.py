"""Training's own compiled blocks (gpu/training/graphs.py) on the tiny pipeline, CPU.

On the GPU, training's callables are cudagraph-mode compiles (``mode="reduce-overhead"``); CUDA graphs
do not exist on the CPU, so here they are ``aot_eager`` compiles: a different dynamo backend from
generation's ``eager`` one, as on the GPU. What is tested is what the trainer does with them: which
callable each block runs when (training steps vs generation between steps, samples, after close), the
same losses as without them, and no recompiles once both have run.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from tiny_helpers import tiny_image

from gpu import accel
from gpu.training.config import TrainConfig
from gpu.training.graphs import MAX_SHAPES, TrainingGraphs, distinct_shapes, graphs_unsuitable
from gpu.training.shapes import step_shapes, unpadded_shapes
from gpu.training.trainer import LoraTrainer

TRAINING_OPTIONS = {"fullgraph": True, "backend": "aot_eager"}


def config(**changes) -> TrainConfig:
    values = dict(rank=4, alpha=4, resolution=64, steps=100, checkpoint_every=100, learning_rate=1e-3, sample_steps=2,
                  sample_prompt="a red square")
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 PNGs in two aspect buckets, two caption lengths: two step shapes once padded (gpu/training/shapes.py)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("graphs-dataset")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    entries = []
    for index, (width, height) in enumerate(((64, 64), (96, 64), (64, 64), (96, 64))):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        caption = f"a photo {index}" + (", a longer caption that needs the next caption length" if index >= 2 else "")
        entries.append({"file": f"{index}.png", "caption": caption, "width": width, "height": height,
                        "source_name": f"{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


def compiled_pipe(tiny_models_dir):
    """A fresh tiny pipeline whose blocks are compiled as the worker compiles them (eager backend)."""
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipe = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    return pipe


@pytest.fixture
def pipe(tiny_models_dir):
    accel.raise_recompile_limit()
    yield compiled_pipe(tiny_models_dir)
    torch._dynamo.reset()


def generate(pipe) -> np.ndarray:
    return tiny_image(pipe, "a blue circle")


def graph_trainer(pipe, dataset, output, **changes) -> LoraTrainer:
    """A trainer with training's own compiled blocks (aot_eager standing in for CUDA graphs)."""
    graphs = TrainingGraphs.for_transformer(pipe.transformer, TRAINING_OPTIONS)
    return LoraTrainer(pipe, dataset, output, config(**changes), "cpu", torch.float32, graphs)


def current_calls(pipe) -> list:
    return [block._compiled_call_impl for block in TrainingGraphs.for_transformer(pipe.transformer).blocks]


def test_only_compiled_blocks_get_training_graphs(tiny_models_dir, pipe):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    plain = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    assert TrainingGraphs.for_transformer(plain.transformer) is None
    blocks = TrainingGraphs.for_transformer(pipe.transformer).blocks
    expected = [m for m in pipe.transformer.modules() if type(m).__name__ == "ZImageTransformerBlock"]
    assert blocks == expected and len(blocks) > 2  # main layers and both refiners
    assert TrainingGraphs.for_transformer(pipe.transformer, activation_budget=0.6).activation_budget == 0.6


def test_trainer_runs_training_graphs_only_for_steps(pipe, dataset, tmp_path):
    generation = current_calls(pipe)
    plain = LoraTrainer(pipe, dataset, tmp_path / "plain", config(), "cpu", torch.float32)
    plain.prepare()
    plain_losses = [plain.step() for _ in range(6)]
    plain.close()
    assert not plain.uses_training_graphs
    compiled_for_plain = accel.compiled_graph_count()

    trainer = graph_trainer(pipe, dataset, tmp_path / "graphs")
    trainer.prepare()
    assert trainer.uses_training_graphs
    losses = [trainer.step() for _ in range(6)]
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)  # same run, other compiled code
    assert accel.compiled_graph_count() > compiled_for_plain  # the steps ran training's own compile
    training = current_calls(pipe)
    assert not set(map(id, training)) & set(map(id, generation))

    def one_round():
        trainer.suspend()  # a generation between two steps, as the worker brackets it
        assert current_calls(pipe) == generation
        generate(pipe)
        trainer.resume()
        assert current_calls(pipe) == training
        trainer.step()
        seen_in_sample = []
        hook = pipe.transformer.register_forward_pre_hook(lambda *_: seen_in_sample.append(current_calls(pipe)))
        try:
            trainer.sample()
        finally:
            hook.remove()
        assert seen_in_sample and all(calls == generation for calls in seen_in_sample)  # generation's blocks
        assert current_calls(pipe) == training  # and training's back after the sample
        trainer.step()

    one_round()
    before = accel.compiled_graph_count()
    one_round()
    one_round()
    assert accel.compiled_graph_count() == before  # both variants stay cached side by side
    trainer.close()
    assert current_calls(pipe) == generation
    assert not trainer.needs_warm_up  # no CUDA graphs on the CPU: nothing was reset
    assert np.isfinite(generate(pipe)).all()


def test_out_of_memory_drops_training_graphs(pipe, dataset, tmp_path):
    """An out-of-memory step frees the graphs and runs again with gradient checkpointing on generation's blocks."""
    generation = current_calls(pipe)
    trainer = graph_trainer(pipe, dataset, tmp_path / "oom")
    trainer.prepare()
    trainer.step()
    real_loss, calls = trainer._loss, []

    def loss_that_does_not_fit_once(step):
        calls.append(current_calls(pipe))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_loss(step)

    trainer._loss = loss_that_does_not_fit_once
    assert np.isfinite(trainer.step())
    assert calls[0] != generation and calls[1] == generation  # the retry ran without training's graphs
    assert not trainer.uses_training_graphs and pipe.transformer.gradient_checkpointing
    trainer.step()
    trainer.close()
    assert current_calls(pipe) == generation and not pipe.transformer.gradient_checkpointing


@pytest.mark.parametrize("reason", ["shapes", "checkpointing"])
def test_many_shapes_or_checkpointing_train_without_graphs(pipe, dataset, tmp_path, monkeypatch, reason):
    generation = current_calls(pipe)
    if reason == "shapes":
        monkeypatch.setattr("gpu.training.graphs.MAX_SHAPES", 1)  # the dataset has two shapes
    trainer = graph_trainer(pipe, dataset, tmp_path / reason, gradient_checkpointing=reason == "checkpointing")
    trainer.prepare()
    assert not trainer.uses_training_graphs
    assert np.isfinite(trainer.step()) and current_calls(pipe) == generation
    trainer.close()


def test_generation_after_close_leaves_the_closed_trainer_alone(pipe, dataset, tmp_path):
    """The worker closes a session on the GPU thread while a generation may be queued behind it."""
    from concurrent.futures import ThreadPoolExecutor

    from gpu.training.session import TrainingSession
    from zimage_protocol.messages import TrainParams

    with ThreadPoolExecutor(1) as gpu:
        params = TrainParams(str(dataset), str(tmp_path / "session"), config().to_json())
        session = TrainingSession(pipe, params, "cpu", gpu, gpu)
        session.trainer.prepare()
        session.trainer.close()
        session.suspend()  # what _generate_on_gpu does around a generation: no error, nothing changed
        assert np.isfinite(generate(pipe)).all()
        session.resume()
        assert not session.needs_warm_up


def test_releasing_cuda_graphs_resets_compiled_code_and_generation_recovers(pipe, dataset, tmp_path, monkeypatch):
    """With CUDA graphs, the end of training discards every compiled graph (their memory pool goes only that
    way): generation's blocks must re-trace and give the same pixels, and the trainer asks for a warm-up."""
    monkeypatch.setattr(TrainingGraphs, "uses_cuda_graphs", property(lambda self: True))  # the GPU's path
    before = generate(pipe)
    generation = current_calls(pipe)
    trainer = graph_trainer(pipe, dataset, tmp_path / "reset")
    trainer.prepare()
    trainer.step()
    trainer.step()
    assert not trainer.needs_warm_up
    trainer.close()
    assert trainer.needs_warm_up and current_calls(pipe) == generation
    graphs_before = accel.compiled_graph_count()
    after = generate(pipe)
    assert accel.compiled_graph_count() > graphs_before  # generation's graphs were traced again
    np.testing.assert_array_equal(after, before)


def test_graphs_unsuitable():
    random.seed(0)
    latents = [torch.zeros(16, 8, 8 + 2 * i) for i in range(MAX_SHAPES + 1)]
    embeds = [torch.zeros(random.randint(1, 32), 4) for _ in latents]  # one caption bucket (32 tokens)
    unpadded = unpadded_shapes(latents, embeds)
    assert distinct_shapes(unpadded) == MAX_SHAPES + 1
    assert "more than" in graphs_unsuitable(unpadded, checkpointing=False)
    assert graphs_unsuitable(unpadded[:MAX_SHAPES], checkpointing=False) is None
    assert distinct_shapes(unpadded_shapes([latents[0]] * 3, [torch.zeros(n, 4) for n in (10, 40, 64)])) == 2
    assert distinct_shapes(step_shapes(latents, embeds)) == 1  # padded: one image length, one caption length
    assert "checkpointing" in graphs_unsuitable(unpadded[:1], checkpointing=True)


def test_compiled_trainer_pads_its_steps(pipe, dataset, tmp_path):
    trainer = graph_trainer(pipe, dataset, tmp_path / "shapes")
    trainer.prepare()
    assert sorted(set(trainer.step_shapes)) == [(32, 64), (32, 128)]  # 4 unpadded shapes: 2 buckets x 2 lengths
    assert distinct_shapes(unpadded_shapes(trainer._latents, trainer._embeds)) == 4
    trainer.close()


def test_activation_budget_holds_only_while_training_steps_run(monkeypatch):
    """ZIMAGE_TRAIN_ACTIVATION_BUDGET: AOTAutograd's budget while training's callables are in place (when a step
    compiles), generation's own value back on exit."""
    import torch._functorch.config as functorch_config

    class Block(torch.nn.Module):  # a model's own block class (dynamo skips torch.nn's own modules)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4, 4))

        def forward(self, x):
            return torch.relu(x @ self.weight)

    block = Block()
    block.compile(backend="eager")  # a compiled block, as regional compile leaves it
    # Not monkeypatch: its undo deletes a module attribute it found outside __dict__, which hides torch's setting.
    torch_default = functorch_config.activation_memory_budget
    functorch_config.activation_memory_budget = 0.7  # not torch's default: restored, not reset
    try:
        graphs = TrainingGraphs([block], TRAINING_OPTIONS, activation_budget=0.5)
        graphs.enter()
        assert functorch_config.activation_memory_budget == 0.5
        assert block._compiled_call_impl is graphs._training[block]  # steps run training's callable meanwhile
        graphs.exit()
        assert functorch_config.activation_memory_budget == 0.7
        unchanged = TrainingGraphs([block], TRAINING_OPTIONS, activation_budget=1.0)
        unchanged.enter()
        assert functorch_config.activation_memory_budget == 0.7
        unchanged.exit()
    finally:
        functorch_config.activation_memory_budget = torch_default

    monkeypatch.delenv("ZIMAGE_TRAIN_ACTIVATION_BUDGET", raising=False)
    assert accel.train_activation_budget() == accel.DEFAULT_TRAIN_ACTIVATION_BUDGET == 0.8
    assert TrainingGraphs([block]).activation_budget == 0.8  # the same default however it is built
    assert accel.train_activation_budget({"ZIMAGE_TRAIN_ACTIVATION_BUDGET": "1"}) == 1.0
    for bad in ("0", "1.5", "lots", "-0.2"):
        with pytest.raises(accel.AccelConfigError, match="ZIMAGE_TRAIN_ACTIVATION_BUDGET must be a number"):
            accel.train_activation_budget({"ZIMAGE_TRAIN_ACTIVATION_BUDGET": bad})
