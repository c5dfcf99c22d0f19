"""Fair order of the queue: round-robin across users, paused guilds set aside.

The next job belongs to the user who was served longest ago (never served counts as oldest),
so one user's ten jobs never block another user's one. Within a user, jobs run oldest first.
Both the runner (which job next) and the position display use this one function, so the
position a user is shown is the order the jobs will really run in.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol


class QueuedJob(Protocol):
    id: int
    user_id: int
    guild_id: int | None


def fair_order(queued: Iterable[QueuedJob], last_served: Mapping[int, datetime | None], paused_guilds: set[int]) -> list:
    """The runnable jobs in the order they will run (paused guilds' jobs are left out)."""
    per_user: dict[int, deque] = defaultdict(deque)
    for job in sorted(queued, key=lambda job: job.id):
        if job.guild_id not in paused_guilds:
            per_user[job.user_id].append(job)
    # Turn keys compare (phase, time): phase 0 is real history, phase 1 is this simulation,
    # whose servings all come after anything that really happened.
    turn: dict[int, tuple] = {user: (0, last_served.get(user) or datetime.min) for user in per_user}
    order = []
    while per_user:
        user = min(per_user, key=lambda user: (turn[user], per_user[user][0].id))
        order.append(per_user[user].popleft())
        turn[user] = (1, len(order))
        if not per_user[user]:
            del per_user[user]
    return order
