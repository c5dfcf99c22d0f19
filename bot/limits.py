"""Per-user limits: jobs waiting in the queue, and requests per period.

A guild's moderators may override both with /mod limits; otherwise the settings apply. For a job the
database decides (``caps`` → bot/db/admission.py: checked inside the job's INSERT, exact under any
concurrency and across processes); requests that queue no job (/lora import, /train's intake) take
an in-memory allowance (asyncio-throttle, ``take_request``). Refusals carry a `Text` (bot/i18n), so the
member reads them in their language.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from asyncio_throttle import Throttler

from .db.admission import AdmissionRefused, Caps
from .db.jobs import JobStore
from .db.models import GuildSettings
from .errors import UserFacingError
from .i18n import Text
from .settings import Settings


class UserLimits:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self._throttlers: dict[tuple, Throttler] = {}

    def _max_queued(self, guild: GuildSettings | None) -> int:
        return (guild and guild.max_queued_per_user) or self.settings.max_queued_per_user

    def _rate(self, guild: GuildSettings | None) -> tuple[int, float]:
        if guild and guild.requests_per_minute:
            return guild.requests_per_minute, 60.0
        return self.settings.rate_limit_count, self.settings.rate_limit_period

    def caps(self, guild: GuildSettings | None = None, *, trainings: bool = False) -> Caps:
        """The member's caps for a new job; for a training also the server's trainings per member per day."""
        count, period = self._rate(guild)
        per_day = guild.trainings_per_day if trainings and guild is not None else None
        return Caps(max_active=self._max_queued(guild), rate_count=count, rate_period=timedelta(seconds=period),
                    kind_per_day=per_day or None)

    def refusal(self, refused: AdmissionRefused, caps: Caps) -> UserFacingError:
        """What a member reads when the database did not admit their job."""
        if refused.reason == "queue_full":
            return self._queue_full(refused.count, caps.max_active)
        if refused.reason == "rate_limited":
            return self._slow_down(caps.rate_count, caps.rate_period.total_seconds())
        if refused.reason == "daily_limit":
            return UserFacingError(Text("limits.daily_trainings", count=caps.kind_per_day))
        return UserFacingError(Text("limits.banned"))

    async def check_queue(self, user_id: int, guild: GuildSettings | None = None) -> None:
        active = await self.store.count_active_of(user_id)
        limit = self._max_queued(guild)
        if active >= limit:
            raise self._queue_full(active, limit)

    @staticmethod
    def _queue_full(active: int, limit: int) -> UserFacingError:
        return UserFacingError(Text("limits.queue_full", active=active, limit=limit))

    @staticmethod
    def _slow_down(count: int, period: float) -> UserFacingError:
        return UserFacingError(Text("limits.slow_down", count=count, period=period))

    async def take_request(self, user_id: int, guild: GuildSettings | None = None) -> None:
        """Use up one request of the user's allowance, or refuse without waiting."""
        count, period = self._rate(guild)
        key = (guild.guild_id if guild else None, user_id, count, period)  # a changed limit starts afresh
        throttler = self._throttlers.setdefault(key, Throttler(rate_limit=count, period=period))
        # Throttler.acquire waits for a free slot; a slot that is free is granted at once,
        # so a short timeout turns "would wait" into "refuse".
        try:
            await asyncio.wait_for(throttler.acquire(), timeout=0.05)
        except TimeoutError:
            raise self._slow_down(count, period) from None
