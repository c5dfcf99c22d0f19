"""#18: retention. Finished trainings keep, after TRAINING_RETENTION_DAYS, only the checkpoint their LoRA uses (members'
photos, the latent cache, older checkpoints and the resume state go); interaction tokens are forgotten once a job has
ended or the token expired; leftovers of interrupted imports and intakes go. Cheap, idempotent, off the event loop."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from security_helpers import ALICE, GUILD, make_world

from bot.db.models import Job, JobKind, JobStatus, utcnow
from bot.retention import Retention


@pytest.fixture
async def world(tmp_path):
    world = await make_world(tmp_path, training_retention_days=7)
    yield world
    await world.close()


async def finished_training(world, name: str, *, days_ago: float, status: JobStatus = JobStatus.DONE,
                            checkpoints=(5, 10), lora_step: int | None = 10):
    job_dir = world.data_dir / "training" / f"ix-{name}"
    dataset, output = job_dir / "dataset", job_dir / "output"
    dataset.mkdir(parents=True)
    (dataset / "img_000.png").write_bytes(b"a member's photo")
    (dataset / "manifest.json").write_text("[]")
    output.mkdir()
    (output / "cache.pt").write_bytes(b"latents")
    for step in checkpoints:
        folder = output / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        for file in ("pytorch_lora_weights.safetensors", "sample.png", "checkpoint.json", "training_state.pt"):
            (folder / file).write_bytes(b"x")
    (output / "checkpoints" / "step-000015.tmp").mkdir()
    lora = await world.loras.create(guild_id=GUILD, owner_id=ALICE, name=name, rank=4, job_id=None)
    if lora_step is not None:
        await world.loras.set_checkpoint(
            lora.id, str(output / "checkpoints" / f"step-{lora_step:06d}" / "pytorch_lora_weights.safetensors"), lora_step)
    params = {"name": name, "lora_id": lora.id, "dataset_dir": str(dataset), "output_dir": str(output), "config": {}}
    job = await world.store.enqueue(kind=JobKind.TRAIN, user_id=ALICE, guild_id=GUILD, channel_id=1, params=params,
                                    interaction_token="secret-token")
    async with world.store.session() as session, session.begin():
        row = await session.get(Job, job.id)
        row.status, row.finished_at = status, utcnow() - timedelta(days=days_ago)
    return job_dir, lora


def tree(folder) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


async def test_old_finished_trainings_keep_only_the_loras_checkpoint(world):
    job_dir, lora = await finished_training(world, "old", days_ago=8)
    await Retention(world.settings, world.store, world.loras).run_once()
    assert tree(job_dir) == {"output", "output/checkpoints", "output/checkpoints/step-000010",
                             *(f"output/checkpoints/step-000010/{file}"
                               for file in ("pytorch_lora_weights.safetensors", "sample.png", "checkpoint.json"))}
    assert (await world.loras.get(lora.id)).path.endswith("step-000010/pytorch_lora_weights.safetensors")
    await Retention(world.settings, world.store, world.loras).run_once()  # again: nothing more, nothing breaks
    assert len(tree(job_dir)) == 6


async def test_recent_or_running_trainings_are_left_alone(world):
    recent, _ = await finished_training(world, "recent", days_ago=2)
    running, _ = await finished_training(world, "running", days_ago=30, status=JobStatus.RUNNING)
    before = tree(recent), tree(running)
    await Retention(world.settings, world.store, world.loras).run_once()
    assert (tree(recent), tree(running)) == before


async def test_a_training_whose_lora_has_no_checkpoint_here_leaves_nothing(world):
    failed, _ = await finished_training(world, "failed", days_ago=9, status=JobStatus.FAILED, lora_step=None)
    cancelled, lora = await finished_training(world, "gone", days_ago=9, status=JobStatus.CANCELLED)
    await world.loras.delete(lora.id)
    await Retention(world.settings, world.store, world.loras).run_once()
    assert not failed.exists() and not cancelled.exists()


async def test_zero_days_keeps_training_files_forever(tmp_path):
    world = await make_world(tmp_path, training_retention_days=0)
    try:
        job_dir, _ = await finished_training(world, "kept", days_ago=400)
        before = tree(job_dir)
        await Retention(world.settings, world.store, world.loras).run_once()
        assert tree(job_dir) == before
    finally:
        await world.close()


async def test_interaction_tokens_are_forgotten_once_finished_or_expired(world):
    finished, _ = await finished_training(world, "t1", days_ago=0.1)
    live = await world.store.enqueue(user_id=ALICE, guild_id=GUILD, channel_id=1, params={"prompt": "p"},
                                     interaction_token="live-token")
    expired = await world.store.enqueue(user_id=ALICE, guild_id=GUILD, channel_id=1, params={"prompt": "p"},
                                        interaction_token="old-token", created_at=utcnow() - timedelta(hours=1))
    await Retention(world.settings, world.store, world.loras).run_once()
    tokens = {}
    async with world.store.session() as session:
        for job_id in (live.id, expired.id):
            tokens[job_id] = (await session.get(Job, job_id)).interaction_token
        jobs = [await session.get(Job, job_id) for job_id in range(1, live.id)]
    assert tokens == {live.id: "live-token", expired.id: None}
    assert all(job.interaction_token is None for job in jobs if job is not None) and finished.exists()


async def test_leftovers_of_interrupted_imports_and_intakes_go_after_a_day(world):
    incoming = world.data_dir / "loras" / "incoming"
    incoming.mkdir(parents=True)
    stale, fresh = incoming / "1.safetensors", incoming / "2.safetensors"
    orphan, young = world.data_dir / "training" / "ix-99", world.data_dir / "training" / "ix-98"
    for path in (stale, fresh):
        path.write_bytes(b"partial download")
    for folder in (orphan, young):
        (folder / "dataset").mkdir(parents=True)
    old = time.time() - 8 * 86400
    for path in (stale, orphan):
        os.utime(path, (old, old))
    await Retention(world.settings, world.store, world.loras).run_once()
    assert not stale.exists() and fresh.exists() and not orphan.exists() and young.exists()


async def test_the_background_task_runs_at_start_and_stops(world):
    job_dir, _ = await finished_training(world, "bg", days_ago=8)
    retention = Retention(world.settings, world.store, world.loras)
    retention.start()
    for _ in range(100):
        if not (job_dir / "dataset").exists():
            break
        await __import__("asyncio").sleep(0.05)
    await retention.stop()
    assert not (job_dir / "dataset").exists()
