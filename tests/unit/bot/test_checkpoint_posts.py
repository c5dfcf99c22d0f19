"""#18: a training's checkpoints. The step, loss, sample and loss curve are posted in the channel; the LoRA file (or its
link) goes to the owner alone until they share the LoRA. A checkpoint frame naming a file outside the job's own
output folder is refused: nothing is posted, and the LoRA keeps its file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest
from security_helpers import ALICE, GUILD, make_world

from bot.db.models import Job, JobKind, JobStatus, utcnow
from bot.jobs.lane import LaneContext
from bot.jobs.status_edits import StatusEdits
from bot.jobs.training_lane import TrainingLane
from zimage_protocol.messages import CheckpointReady


class Messages:
    """The lane's way to Discord: what was posted publicly (in the channel) and privately (to the owner)."""

    def __init__(self):
        self.public: list[tuple[str, list[str]]] = []
        self.private: list[tuple[str, list[str]]] = []
        self.statuses: list[str] = []

    async def edit_status(self, job, content, **fields) -> bool:
        self.statuses.append(content)
        return True

    async def post_extra(self, job, content, make_files) -> bool:
        self.public.append((content, [file.filename for file in make_files()]))
        return True

    async def post_private(self, job, content, make_files) -> bool:
        self.private.append((content, [file.filename for file in make_files()]))
        return True

    def everything(self) -> str:
        return " ".join(content for content, _ in self.public + self.private)


class Worker:
    def __init__(self, *frames):
        self.frames = frames

    async def train(self, request_id, params):
        for frame in self.frames:
            yield frame


class Store:
    def __init__(self):
        self.finished: list[int] = []

    async def finish(self, job_id, status, error=None) -> None:
        self.finished.append(job_id)


class Positions:
    async def refresh(self, **_) -> None:
        return None


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path)
    yield world
    await world.close()


async def training(world, *, upload_limit: int = 10 << 20, shared: bool = False) -> tuple[Job, Path]:
    lora = await world.loras.create(guild_id=GUILD, owner_id=ALICE, name="ada", rank=4, job_id=None)
    if shared:
        await world.loras.set_shared(lora.id, True)
    job_dir = world.data_dir / "training" / "ix-1"
    params = {"name": "ada", "lora_id": lora.id, "dataset_dir": str(job_dir / "dataset"), "output_dir": str(job_dir / "output"),
              "config": {"steps": 10}, "upload_limit": upload_limit}
    job = Job(id=7, kind=JobKind.TRAIN, status=JobStatus.RUNNING, user_id=ALICE, guild_id=GUILD, channel_id=5,
              message_id=70, params=params, attempts=1, created_at=utcnow())
    return job, job_dir / "output"


def checkpoint_files(output: Path, step: int = 5, lora: bytes = b"x" * 1000) -> CheckpointReady:
    folder = output / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(lora)
    (folder / "sample.png").write_bytes(b"png")
    (folder / "loss.png").write_bytes(b"png")
    return frame(folder / "pytorch_lora_weights.safetensors", folder / "sample.png", folder / "loss.png", step)


def frame(lora: Path, sample: Path, loss: Path, step: int = 5) -> CheckpointReady:
    return CheckpointReady(id="job-7-1", step=step, total=10, loss=0.1, seconds_per_step=0.5, lora_file=str(lora),
                           sample_png=str(sample), loss_png=str(loss))


async def run(world, job, *frames) -> Messages:
    messages = Messages()
    context = LaneContext(settings=world.settings, store=Store(), worker=Worker(*frames), messages=messages,
                          positions=Positions(), status=StatusEdits(messages, min_interval=0.0))
    await TrainingLane(context, world.loras, world.signer, messages).run(job)
    return messages


async def test_a_private_loras_file_goes_to_its_owner_only(world):
    job, output = await training(world)
    messages = await run(world, job, checkpoint_files(output))
    [(public, public_files)] = messages.public
    assert "step 5/10" in public and public_files == ["ada_step5_sample.png", "ada_step5_loss.png"]
    assert "/files/" not in public and "private" in public
    [(private, private_files)] = messages.private
    assert private_files == ["ada_step5.safetensors"] and "/lora share ada" in private


async def test_the_checkpoint_says_which_training_adapter_the_run_used(world):
    job, output = await training(world)
    ready = checkpoint_files(output)
    adapter = "ostris/zimage_turbo_training_adapter@0123abc/zimage_turbo_training_adapter_v2.safetensors (sha256 9f86d081884c)"
    messages = await run(world, job, dataclasses.replace(ready, training_adapter=adapter))
    [(public, _)] = messages.public
    assert f"Training adapter: `{adapter}`" in public
    messages = await run(world, job, dataclasses.replace(checkpoint_files(output, step=6), training_adapter="none"))
    assert "Training adapter: `none`" in messages.public[0][0]


async def test_a_private_loras_link_goes_to_its_owner_only(world):
    job, output = await training(world, upload_limit=500)
    messages = await run(world, job, checkpoint_files(output))
    [(public, public_files)] = messages.public
    assert "/files/" not in public and not any(name.endswith(".safetensors") for name in public_files)
    [(private, private_files)] = messages.private
    assert "http://127.0.0.1:1/files/" in private and private_files == []


async def test_a_shared_loras_checkpoints_carry_the_file_in_the_channel(world):
    job, output = await training(world, shared=True)
    messages = await run(world, job, checkpoint_files(output))
    [(_, public_files)] = messages.public
    assert "ada_step5.safetensors" in public_files and messages.private == []


def outside_frames(world, output: Path) -> list[CheckpointReady]:
    good = checkpoint_files(output)
    secret = world.data_dir / "zimage.db"
    other_job = world.data_dir / "training" / "ix-2" / "output"
    other_job.mkdir(parents=True)
    (other_job / "theirs.safetensors").write_bytes(b"someone else's")
    link = output / "checkpoints" / "step-000005" / "link.safetensors"
    os.symlink(secret, link)
    return [
        frame(secret, Path(good.sample_png), Path(good.loss_png)),
        frame(Path("/etc/hostname"), Path(good.sample_png), Path(good.loss_png)),
        frame(other_job / "theirs.safetensors", Path(good.sample_png), Path(good.loss_png)),
        frame(output / ".." / ".." / ".." / "zimage.db", Path(good.sample_png), Path(good.loss_png)),
        frame(link, Path(good.sample_png), Path(good.loss_png)),
        frame(Path(good.lora_file), secret, Path(good.loss_png)),
        frame(Path(good.lora_file), Path(good.sample_png), Path("/etc/hostname")),
    ]


async def test_files_outside_the_jobs_output_folder_are_never_posted(world, caplog):
    job, output = await training(world)
    frames = outside_frames(world, output)
    with caplog.at_level(logging.ERROR):
        messages = await run(world, job, *frames)
    assert messages.public == [] and messages.private == []
    assert "zimage.db" not in messages.everything()
    lora = await world.loras.get(job.params["lora_id"])
    assert lora.path is None and lora.steps == 0  # never pointed at someone else's file
    refused = [record for record in caplog.records if "outside" in record.getMessage()]
    assert len(refused) == len(frames)


async def test_a_checkpoint_announced_again_after_a_worker_restart_is_posted_once(world):
    """A restarted worker announces the checkpoint it resumed from, which the bot may have posted before the crash."""
    job, output = await training(world)
    five, ten = checkpoint_files(output, step=5), checkpoint_files(output, step=10)
    messages = await run(world, job, five, five, ten, ten)
    assert [content.split("step ")[1].split("/")[0] for content, _ in messages.public] == ["5", "10"]
    assert len(messages.private) == 2
    assert (await world.loras.get(job.params["lora_id"])).steps == 10
