"""Per-user limits: jobs waiting in the queue, and requests per period (asyncio-throttle)."""

from __future__ import annotations

import asyncio

from asyncio_throttle import Throttler

from .db.jobs import JobStore
from .errors import UserFacingError
from .settings import Settings


class UserLimits:
    def __init__(self, settings: Settings, store: JobStore):
        self.settings = settings
        self.store = store
        self._throttlers: dict[int, Throttler] = {}

    async def check_queue(self, user_id: int) -> None:
        active = await self.store.count_active_of(user_id)
        if active >= self.settings.max_queued_per_user:
            raise UserFacingError(
                f"You already have {active} jobs in the queue (the limit is {self.settings.max_queued_per_user}). "
                "Wait for one to finish, or cancel one with `/cancel`.")

    async def take_request(self, user_id: int) -> None:
        """Use up one request of the user's allowance, or refuse without waiting."""
        throttler = self._throttlers.setdefault(
            user_id, Throttler(rate_limit=self.settings.rate_limit_count, period=self.settings.rate_limit_period))
        # Throttler.acquire waits for a free slot; a slot that is free is granted at once,
        # so a short timeout turns "would wait" into "refuse".
        try:
            await asyncio.wait_for(throttler.acquire(), timeout=0.05)
        except TimeoutError:
            raise UserFacingError(
                f"Slow down: at most {self.settings.rate_limit_count} requests every "
                f"{self.settings.rate_limit_period:g} seconds.") from None
