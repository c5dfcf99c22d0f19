"""The safety check between a job's saved PNGs and their post (the guild's /mod content mode).

It runs in ImagineLane.resume, so it holds for a result posted after a restart too, and in the delivery's
background task: the next job already renders meanwhile. Whether the job's channel is age-restricted is
read from Discord when the result is posted (a channel changed since the request counts as it is now);
a channel that cannot be read counts as an ordinary one, so it is checked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..db.models import GuildSettings, Job
from ..safety import Action, AgeRestrictedRule, ContentCheck, ContentMode, Verdict, decide, needs_check
from .delivery import Routes

log = logging.getLogger(__name__)

AgeRestricted = Callable[[int], Awaitable[bool]]


@dataclass(frozen=True)
class Screened:
    action: Action
    verdict: Verdict | None  # None: not checked because the guild's rule does not ask for it


class Screening:
    def __init__(self, check: ContentCheck, age_restricted: AgeRestricted):
        self.check = check
        self.age_restricted = age_restricted  # channel id → whether it is an age-restricted (nsfw) channel

    async def screen(self, job: Job, settings: GuildSettings, images: list[tuple[str, bytes]]) -> Screened:
        mode = ContentMode.of(settings.content_mode)
        rule = AgeRestrictedRule.of(settings.content_age_restricted)
        if mode is ContentMode.OFF:  # no Discord lookup, no classifier: today's path
            return Screened(Action.POST, None)
        age_restricted = await self.age_restricted(job.channel_id)
        if not needs_check(mode, rule, age_restricted):
            return Screened(Action.POST, None)
        verdict = await self.check.screen([png for _, png in images])
        action = decide(mode, rule, age_restricted, verdict)
        if action is not Action.POST:
            log.info("job %s: content check %s: %s", job.id, action.value, verdict.describe())
        return Screened(action, verdict)


def channel_age_restricted(routes: Routes) -> AgeRestricted:
    """Reads a channel's age restriction through the delivery's routes (the client's cache, else a fetch)."""
    async def age_restricted(channel_id: int) -> bool:
        channel = await routes.channel(channel_id)
        is_nsfw = getattr(channel, "is_nsfw", None)  # threads and DMs have it too; a channel that is gone has not
        return bool(is_nsfw()) if callable(is_nsfw) else False
    return age_restricted
