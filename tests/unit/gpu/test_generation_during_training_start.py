"""Found by the soak test (#18): a generation that overlaps the start of a training must not fail.

The scheduler registers a training's session before the session is prepared on the GPU thread. A generation on the
GPU thread meanwhile suspends the session before it and resumes it after; a trainer not yet prepared has nothing to set
aside, so both must be no-ops instead of raising "the trainer is not prepared" into the member's /imagine.
"""

from __future__ import annotations

from gpu.training.session import TrainingSession
from gpu.training.trainer import LoraTrainer, TrainerError


class Trainer:
    """LoraTrainer's state and its checks, without a model."""

    def __init__(self, prepared: bool, closed: bool = False):
        self.prepared, self.closed = prepared, closed
        self.calls: list[str] = []

    def _require_prepared(self) -> None:  # as LoraTrainer's
        if not self.prepared or self.closed:
            raise TrainerError("the trainer is not prepared" if not self.closed else "the trainer is closed")

    def suspend(self) -> None:
        self._require_prepared()
        self.calls.append("suspend")

    def resume(self) -> None:
        self._require_prepared()
        self.calls.append("resume")


def session_with(trainer: Trainer) -> TrainingSession:
    session = TrainingSession.__new__(TrainingSession)  # no pipeline: only suspend/resume are under test
    session.trainer = trainer
    return session


def test_a_session_not_yet_prepared_is_left_alone_around_a_generation():
    trainer = Trainer(prepared=False)
    session = session_with(trainer)
    session.suspend()
    session.resume()
    assert trainer.calls == []


def test_a_prepared_session_is_suspended_and_resumed():
    trainer = Trainer(prepared=True)
    session = session_with(trainer)
    session.suspend()
    session.resume()
    assert trainer.calls == ["suspend", "resume"]


def test_a_closed_session_is_left_alone():
    trainer = Trainer(prepared=True, closed=True)
    session_with(trainer).suspend()
    assert trainer.calls == []


def test_the_trainer_says_whether_it_is_prepared():
    assert isinstance(LoraTrainer.prepared, property)
