"""What a lane is, and what it is given: the runner hands each claimed job to the lane of its kind.

A lane runs one job through the worker and posts its result; it raises for anything that
ends the job otherwise, and the runner maps that to the job's state (bot/jobs/outcomes.py).
Lanes never reach back into the runner: what they need comes in a LaneContext.

Two shapes: a ``Lane`` runs a job from start to end in one call (training: its checkpoints are posted
as they come); a ``PipelinedLane`` splits it, so the runner can keep the worker busy
(bot/jobs/pipeline.py): ``generate`` on a worker link it is given, then ``keep`` and ``resume``
(saving and posting) beside the next job's generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..db.models import Job
from ..settings import Settings
from .interfaces import JobMessages, JobQueue, WorkerLink
from .positions import Positions
from .status_edits import StatusEdits


@dataclass(frozen=True)
class LaneContext:
    """The collaborators every lane and the runner share."""

    settings: Settings
    store: JobQueue
    worker: WorkerLink
    messages: JobMessages
    positions: Positions
    status: StatusEdits  # status lines (position, progress) edited in the background


class Lane(Protocol):
    @property
    def kind(self) -> str:
        """The JobKind whose jobs this lane runs."""
        ...

    async def run(self, job: Job) -> None:
        """Run a claimed (RUNNING) job to its end; raise for anything that ends it otherwise."""
        ...

    async def resume(self, job: Job) -> None:
        """Finish a job that a restart caught DELIVERING: its work is done, its result not yet posted."""
        ...


@runtime_checkable
class PipelinedLane(Protocol):
    @property
    def kind(self) -> str: ...

    async def generate(self, job: Job, worker: WorkerLink) -> Any:
        """Stream a claimed (RUNNING) job through `worker`; return what it made. Never waits for Discord."""
        ...

    async def keep(self, job: Job, made: Any) -> None:
        """Put what `generate` made where a restart finds it, and move the job to DELIVERING."""
        ...

    async def resume(self, job: Job) -> None:
        """Post a DELIVERING job's result and end it; also what a restart does for one it caught DELIVERING."""
        ...
