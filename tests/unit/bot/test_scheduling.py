from dataclasses import dataclass
from datetime import datetime

from bot.jobs.scheduling import fair_order


@dataclass
class J:
    id: int
    user_id: int
    guild_id: int = 1


def ids(jobs):
    return [job.id for job in jobs]


def test_round_robin_five_and_one():
    queued = [J(1, 10), J(2, 10), J(3, 10), J(4, 10), J(5, 10), J(6, 20)]
    assert ids(fair_order(queued, {}, set())) == [1, 6, 2, 3, 4, 5]


def test_recently_served_user_waits_behind_others():
    queued = [J(1, 10), J(2, 20), J(3, 10), J(4, 30)]
    last = {10: datetime(2026, 1, 1, 12), 20: datetime(2026, 1, 1, 11)}
    # 30 never served, then 20 (served earlier than 10), then 10; then 10 again.
    assert ids(fair_order(queued, last, set())) == [4, 2, 1, 3]


def test_three_users_interleave():
    queued = [J(1, 1), J(2, 1), J(3, 1), J(4, 2), J(5, 2), J(6, 3)]
    assert ids(fair_order(queued, {}, set())) == [1, 4, 6, 2, 5, 3]


def test_paused_guilds_are_left_out_without_blocking_others():
    queued = [J(1, 10, guild_id=7), J(2, 20, guild_id=8), J(3, 10, guild_id=8)]
    assert ids(fair_order(queued, {}, {7})) == [2, 3]
