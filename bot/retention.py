"""Retention: what the bot keeps no longer than it needs. Runs at start and then daily, in the background.

* A training that ended (done, failed, cancelled) more than TRAINING_RETENTION_DAYS ago keeps only the checkpoint its
  LoRA uses (the LoRA file, its sample and metadata); the members' photos (the dataset), the latent cache, older
  checkpoints and the resume state are removed. A training whose LoRA has no checkpoint there (deleted, or never got
  one) leaves nothing. 0 days keeps training files forever.
* Interaction tokens are forgotten (set to NULL) once their job ended or the token expired (15 minutes): a token lets
  anyone post as the bot in that conversation while it lives, so it should not sit in the database or its backups.
* Leftovers of an import or an intake interrupted by a crash (a partial download, a job folder no job names) go once
  they are a day old.

Every file operation runs in a thread (asyncio.to_thread); only paths inside DATA_DIR/training and DATA_DIR/loras/incoming
are ever removed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import or_, select, update

from .db.jobs import JobStore
from .db.loras import LoraStore
from .db.models import Job, JobKind, JobStatus, utcnow
from .db.results import rowcount
from .periodic import Periodic
from .settings import Settings

log = logging.getLogger(__name__)

INTERVAL = 86400.0  # seconds between runs
LEFTOVER_AGE = 86400.0  # an interrupted import's or intake's files older than this are leftovers
RESUME_STATE = "training_state.pt"  # gpu/training/checkpoints.py: what only a resume needs
ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Report:
    trainings: int = 0  # job folders pruned (or removed)
    leftovers: int = 0
    tokens: int = 0


class Retention:
    def __init__(self, settings: Settings, store: JobStore, loras: LoraStore):
        self.settings = settings
        self.store = store
        self.loras = loras  # which checkpoint each LoRA uses
        self._runs = Periodic("retention", self._run_and_report, INTERVAL)

    def start(self) -> None:
        self._runs.start()

    async def stop(self) -> None:
        await self._runs.stop()

    async def _run_and_report(self) -> None:
        report = await self.run_once()
        if report.trainings or report.leftovers or report.tokens:
            log.info("retention: %d training folder(s) pruned, %d leftover(s) removed, %d token(s) forgotten",
                     report.trainings, report.leftovers, report.tokens)

    async def run_once(self) -> Report:
        report = Report(tokens=await self.forget_tokens())
        training_root = self.settings.training_dir.resolve()
        trainings = await self._trainings()
        days = self.settings.training_retention_days
        if days > 0:
            cutoff = utcnow() - timedelta(days=days)
            for job in trainings:
                if job.status in ENDED and job.finished_at is not None and job.finished_at < cutoff:
                    lora_id = job.params.get("lora_id")
                    lora = await self.loras.get(lora_id) if isinstance(lora_id, int) else None
                    keep = Path(lora.path).parent if lora is not None and lora.path else None
                    report.trainings += await asyncio.to_thread(prune_training, job_folder(job, training_root), keep)
        named = {folder for job in trainings if (folder := job_folder(job, training_root)) is not None}
        report.leftovers = await asyncio.to_thread(remove_leftovers, self.settings.data_dir, training_root, named)
        return report

    async def _trainings(self) -> list[Job]:
        async with self.store.session() as session:
            return list(await session.scalars(select(Job).where(Job.kind == JobKind.TRAIN)))

    async def forget_tokens(self) -> int:
        async with self.store.session() as session, session.begin():
            result = await session.execute(update(Job).where(
                Job.interaction_token.is_not(None),
                or_(Job.status.in_(ENDED), Job.token_expires_at < utcnow())).values(interaction_token=None))
            return rowcount(result)


def job_folder(job: Job, training_root: Path) -> Path | None:
    """DATA_DIR/training/<folder> of a /train job, or None when its params name anything else."""
    try:
        folder = Path(job.params["dataset_dir"]).resolve().parent
    except (KeyError, TypeError):
        return None
    return folder if folder.parent == training_root else None


def prune_training(folder: Path | None, keep: Path | None) -> int:
    """Remove everything in `folder` but the checkpoint folder `keep` (without its resume state). Blocking."""
    if folder is None or not folder.is_dir():
        return 0
    keep = keep.resolve() if keep is not None else None
    if keep is None or not keep.is_relative_to(folder) or keep == folder:
        shutil.rmtree(folder, ignore_errors=True)
        return 1
    removed = 0

    def prune(directory: Path) -> None:
        nonlocal removed
        for child in directory.iterdir():
            if child == keep:
                if (child / RESUME_STATE).is_file():
                    (child / RESUME_STATE).unlink(missing_ok=True)
                    removed += 1
            elif keep.is_relative_to(child) and child.is_dir() and not child.is_symlink():
                prune(child)
            else:
                _remove(child)
                removed += 1

    prune(folder)
    return 1 if removed else 0


def remove_leftovers(data_dir: Path, training_root: Path, named: set[Path]) -> int:
    """Partial downloads of imports, and intake folders no job names, once a day old. Blocking."""
    old = time.time() - LEFTOVER_AGE
    removed = 0
    candidates = [*(data_dir / "loras" / "incoming").glob("*"), *(p for p in training_root.glob("*") if p not in named)]
    for path in candidates:
        try:
            if path.lstat().st_mtime < old:
                _remove(path)
                removed += 1
        except OSError:
            continue
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
