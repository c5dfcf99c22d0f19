"""Found by CI (the e2e crash test): a worker killed after writing a checkpoint but before announcing it resumed from
that checkpoint and never announced it, so the channel never saw that step. A resumed session now announces the
checkpoint it resumed from first, sampling it again when the crash came before its sample was written.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gpu.training.config import TrainConfig
from gpu.training.session import TrainingSession
from zimage_protocol.messages import CheckpointReady, TrainProgress
from zimage_protocol.params import TrainParams


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    from diffusers import ZImagePipeline

    from gpu.tiny import ensure_tiny_model

    pipeline = ZImagePipeline.from_pretrained(ensure_tiny_model(tiny_models_dir))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def dataset(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for index in range(4):
        name = f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / name)
        entries.append({"file": name, "caption": f"photo {index}", "width": 64, "height": 64, "source_name": name})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


def train(pipe, dataset: Path, output: Path, steps: int) -> list:
    config = TrainConfig(rank=4, alpha=4, resolution=64, steps=steps, checkpoint_every=2, keep_checkpoints=3,
                         learning_rate=1e-3, sample_steps=2, sample_prompt="a red square")
    params = TrainParams(dataset_dir=str(dataset), output_dir=str(output), config=config.to_json())
    sent: list = []

    async def send(message) -> None:
        sent.append(message)

    async def go() -> None:
        with ThreadPoolExecutor(1) as gpu, ThreadPoolExecutor(1) as encoder:
            session = TrainingSession(pipe, params, "cpu", gpu, encoder, model="tiny")
            try:
                await session.run("job-1", send, lambda: False)
            finally:
                await session.close()

    asyncio.run(go())
    return sent


def announced(sent: list) -> list[int]:
    return [message.step for message in sent if isinstance(message, CheckpointReady)]


def test_a_checkpoint_written_but_never_announced_is_announced_when_training_resumes(pipe, dataset, tmp_path):
    output = tmp_path / "output"
    assert announced(train(pipe, dataset, output, steps=4)) == [2, 4]
    folder = output / "checkpoints" / "step-000004"
    (folder / "sample.png").unlink()  # killed between save_checkpoint() and the sample: no files, no message
    (folder / "loss.png").unlink()

    sent = train(pipe, dataset, output, steps=6)
    assert announced(sent) == [4, 6]
    assert isinstance(sent[0], CheckpointReady) and sent[0].step == 4  # before any new step
    assert [m.step for m in sent if isinstance(m, TrainProgress)] == [5, 6]
    assert Path(sent[0].sample_png).read_bytes().startswith(b"\x89PNG") and Path(sent[0].loss_png).is_file()


def test_a_checkpoint_with_its_files_is_announced_again_without_sampling_again(pipe, dataset, tmp_path):
    output = tmp_path / "output"
    train(pipe, dataset, output, steps=2)
    sample = output / "checkpoints" / "step-000002" / "sample.png"
    sample.write_bytes(b"the sample the channel may have seen")

    sent = train(pipe, dataset, output, steps=4)
    assert announced(sent) == [2, 4] and sample.read_bytes() == b"the sample the channel may have seen"


def test_a_fresh_run_announces_only_its_own_checkpoints(pipe, dataset, tmp_path):
    assert announced(train(pipe, dataset, tmp_path / "output", steps=3)) == [2, 3]
