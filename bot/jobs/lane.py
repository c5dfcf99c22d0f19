"""What a lane is, and what it is given: the runner hands each claimed job to the lane of its kind.

A lane runs one job through the worker and posts its result; it raises for anything that
ends the job otherwise, and the runner maps that to the job's state (bot/jobs/outcomes.py).
Lanes never reach back into the runner: what they need comes in a LaneContext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..db.models import Job
from ..settings import Settings
from .interfaces import JobMessages, JobQueue, WorkerLink
from .positions import Positions


@dataclass(frozen=True)
class LaneContext:
    """The collaborators every lane and the runner share."""

    settings: Settings
    store: JobQueue
    worker: WorkerLink
    messages: JobMessages
    positions: Positions


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
