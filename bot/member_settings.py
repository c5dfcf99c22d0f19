"""/settings: a member's /imagine defaults (aspect, steps, count) and private results.

**Scope.** One set per member (their Discord user id), used in every server and in DMs: members expect
"my defaults" to follow them, and a server's own rules still apply there. A default above a server's
`/mod limits` (max_count, max_steps) is lowered to that limit in that server; an option typed into
/imagine is never changed, and is refused with the server's message when it is over the limit.

**Merge.** An option given to /imagine wins; an option left out takes the member's default; without one,
the bot's default (1:1, 8 steps, 1 image). Reroll and Variations repeat their result's settings.

**Private results.** The job's message is then an ephemeral reply (the "thinking…" is deferred
ephemerally), so its queue position, progress and images are seen by the member alone; once the
interaction token is spent (15 minutes) the result goes by DM, and never to the channel
(bot/jobs/delivery.py). Whether a request is private must be known before the interaction is
answered, so that one read is bounded (PRIVATE_READ_TIMEOUT). A database too slow to say in time (a
burst of requests) gets the answer this process last read for the member, and a member it never read
is private for that request: better than risk showing a private member's prompt and images.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from .db.member_settings import MemberSettingsStore
from .db.models import MemberSettings
from .db.moderation import ModerationStore
from .errors import UserFacingError
from .i18n import Text
from .sizes import ASPECT_SIZES, DEFAULT_ASPECT

log = logging.getLogger(__name__)

DEFAULT_STEPS = 8
DEFAULT_COUNT = 1
STEPS_RANGE = (1, 16)  # the same as /imagine's options
COUNT_RANGE = (1, 4)
PRIVATE_READ_TIMEOUT = 0.5  # seconds; Discord wants the answer within 3 s and /imagine answers within milliseconds
KNOWN_PRIVATE_MAX = 10_000  # members whose last-read private flag is remembered for a slow read (least recent dropped)


@dataclass(frozen=True)
class Chosen:
    """What one /imagine asks for, once its options and the member's defaults are merged."""

    aspect: str
    steps: int
    count: int


def merge(saved: MemberSettings | None, *, aspect: str | None, steps: int | None, count: int | None,
          max_steps: int | None = None, max_count: int | None = None) -> Chosen:
    """Options given win; then the member's saved defaults, capped at the server's limits (None or 0: no limit); then
    the bot's. A saved value the bot no longer offers (an aspect since removed) counts as unset."""
    saved_aspect = saved.aspect if saved is not None and saved.aspect in ASPECT_SIZES else None
    saved_steps = _capped(saved.steps if saved is not None else None, STEPS_RANGE, max_steps)
    saved_count = _capped(saved.count if saved is not None else None, COUNT_RANGE, max_count)
    return Chosen(
        aspect=aspect if aspect in ASPECT_SIZES else (saved_aspect or DEFAULT_ASPECT),
        steps=steps if steps is not None else (saved_steps or DEFAULT_STEPS),
        count=count if count is not None else (saved_count or DEFAULT_COUNT),
    )


def _capped(value: int | None, bounds: tuple[int, int], limit: int | None) -> int | None:
    if value is None or not bounds[0] <= value <= bounds[1]:
        return None
    return min(value, limit) if limit else value


def check_values(aspect: str | None, steps: int | None, count: int | None) -> None:
    """Discord enforces the options' choices and ranges, but an interaction is the member's to forge: checked again."""
    if aspect is not None and aspect not in ASPECT_SIZES:
        raise UserFacingError(Text("settings.bad_aspect", aspect=aspect[:20], aspects=", ".join(ASPECT_SIZES)))
    if steps is not None and not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise UserFacingError(Text("settings.bad_range", option="steps", low=STEPS_RANGE[0], high=STEPS_RANGE[1]))
    if count is not None and not COUNT_RANGE[0] <= count <= COUNT_RANGE[1]:
        raise UserFacingError(Text("settings.bad_range", option="count", low=COUNT_RANGE[0], high=COUNT_RANGE[1]))


class MemberDefaults:
    """The members' settings as /imagine and /settings use them."""

    def __init__(self, store: MemberSettingsStore, moderation: ModerationStore,
                 private_read_timeout: float = PRIVATE_READ_TIMEOUT):
        self.store = store
        self.moderation = moderation  # the server's limits cap the defaults
        self.private_read_timeout = private_read_timeout
        self._known: OrderedDict[int, bool] = OrderedDict()  # user id -> private, as last read or set here
        self._reading: dict[int, asyncio.Future[MemberSettings | None]] = {}  # reads in flight, by member

    def _remember(self, user_id: int, private: bool) -> None:
        self._known[user_id] = private
        self._known.move_to_end(user_id)
        while len(self._known) > KNOWN_PRIVATE_MAX:
            self._known.popitem(last=False)

    async def wants_private(self, user_id: int) -> bool:
        """Whether this member's next result is theirs alone; read before the interaction is answered (see the module's
        docstring: a read that takes too long or fails says what was last read, else True)."""
        try:
            saved = await asyncio.wait_for(asyncio.shield(self._read(user_id)), self.private_read_timeout)
        except Exception as error:  # noqa: BLE001 - any failure: the last known answer, else private rather than public
            known = self._known.get(user_id)
            log.warning("member %s: settings not read in time (%r); private: %s (%s)", user_id, error,
                        True if known is None else known, "never read here" if known is None else "as last read")
            return True if known is None else known
        private = bool(saved is not None and saved.private)
        self._remember(user_id, private)
        return private

    def _read(self, user_id: int) -> asyncio.Future[MemberSettings | None]:
        """One read per member at a time: a burst of one member's requests shares the read in flight instead of
        queueing one read each (a /settings change made here is known at once: change() remembers it)."""
        reading = self._reading.get(user_id)
        if reading is None:
            reading = asyncio.ensure_future(self.store.get(user_id))
            self._reading[user_id] = reading
            reading.add_done_callback(lambda _: self._reading.pop(user_id, None))
        return reading

    async def choose(self, user_id: int, guild_id: int | None, *, aspect: str | None = None, steps: int | None = None,
                     count: int | None = None) -> Chosen:
        saved = await self.store.get(user_id)
        if saved is None or (saved.steps is None and saved.count is None):
            return merge(saved, aspect=aspect, steps=steps, count=count)
        guild = await self.moderation.settings(guild_id)
        return merge(saved, aspect=aspect, steps=steps, count=count, max_steps=guild.max_steps, max_count=guild.max_count)

    async def get(self, user_id: int) -> MemberSettings | None:
        return await self.store.get(user_id)

    async def change(self, user_id: int, *, reset: bool = False, aspect: str | None = None, steps: int | None = None,
                     count: int | None = None, private: bool | None = None) -> MemberSettings | None:
        """`reset` first forgets every setting; then the options given are set. The settings after, None when none."""
        check_values(aspect, steps, count)
        if reset:
            await self.store.reset(user_id)
        values = {name: value for name, value in
                  (("aspect", aspect), ("steps", steps), ("count", count), ("private", private)) if value is not None}
        after = await self.store.update(user_id, **values) if values else await self.store.get(user_id)
        self._remember(user_id, bool(after is not None and after.private))
        return after
