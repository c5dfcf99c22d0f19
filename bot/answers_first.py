"""Answers before intake: the first callback of every interaction goes before the database work of those answered.

Discord gives an interaction 3 s for its first callback (we aim for 0.3 s under a burst); admitting a job that is
already answered may take a few milliseconds more without anyone seeing it. Both run on one event loop, so under a
burst of 100 /imagine the admissions of the first requests (prompt check, rules, the INSERT, its position) would
interleave with, and delay, the answers of the last. The intake therefore waits, before each of its steps, until no
interaction is between its arrival and its answer, for at most ``patience`` seconds (an answer stuck on Discord does
not stall the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

ANSWER_PATIENCE = 0.5  # seconds the intake waits at most for the answers in flight


class AnswersFirst:
    def __init__(self, patience: float = ANSWER_PATIENCE):
        self.patience = patience
        self._unanswered = 0
        self._none_unanswered = asyncio.Event()
        self._none_unanswered.set()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around the work between an interaction's arrival and its first callback."""
        self._unanswered += 1
        self._none_unanswered.clear()
        try:
            yield
        finally:
            self._unanswered -= 1
            if not self._unanswered:
                self._none_unanswered.set()

    async def turn(self) -> None:
        """Returns once no interaction waits for its answer, or after ``patience`` seconds."""
        if self._unanswered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_unanswered.wait(), self.patience)
