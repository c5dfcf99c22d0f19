"""bot/answers_first.py: the intake waits while an interaction is unanswered, never longer than its patience."""

from __future__ import annotations

import asyncio
import time

from bot.answers_first import AnswersFirst


async def test_the_intake_goes_after_the_answers_in_flight():
    order: list[str] = []
    gate = AnswersFirst(patience=5)
    answered = asyncio.Event()

    async def answer() -> None:
        with gate.answering():
            await answered.wait()  # the defer's HTTP round trip, say
            order.append("answer")

    async def intake() -> None:
        await gate.turn()
        order.append("intake")

    answering = asyncio.create_task(answer())
    await asyncio.sleep(0)  # the answer has begun
    admitting = asyncio.create_task(intake())
    await asyncio.sleep(0.05)
    assert order == []  # the intake is waiting
    answered.set()
    await asyncio.gather(answering, admitting)
    assert order == ["answer", "intake"]


async def test_no_answer_in_flight_costs_nothing():
    gate = AnswersFirst(patience=5)
    started = time.monotonic()
    await gate.turn()
    assert time.monotonic() - started < 1.0  # far under the patience of 5 s (a loaded box may deschedule us)


async def test_an_answer_stuck_on_discord_holds_the_intake_only_for_the_patience():
    gate = AnswersFirst(patience=0.1)
    stuck = asyncio.Event()

    async def answer() -> None:
        with gate.answering():
            await stuck.wait()

    answering = asyncio.create_task(answer())
    await asyncio.sleep(0)
    started = time.monotonic()
    await gate.turn()
    assert 0.09 <= time.monotonic() - started < 1.0
    answering.cancel()


async def test_a_failed_answer_leaves_nothing_unanswered():
    gate = AnswersFirst(patience=5)
    try:
        with gate.answering():
            raise RuntimeError("Discord said 404")
    except RuntimeError:
        pass
    started = time.monotonic()
    await gate.turn()
    assert time.monotonic() - started < 1.0  # far under the patience of 5 s (a loaded box may deschedule us)
