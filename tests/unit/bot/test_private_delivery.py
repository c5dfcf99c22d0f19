"""#18: Delivery.post_private, a message for a job's owner only: an ephemeral follow-up while the token lives, else a DM.

Never the channel: a private LoRA's file must not reach anyone else, whatever fails.
"""

from __future__ import annotations

from datetime import timedelta

from test_delivery_unit import RATE_LIMITED, Target, http_error, make_job

from bot.jobs.delivery import Delivery

DMS_CLOSED = http_error(403, 50007)


class Routes:
    def __init__(self, followup_errors=None, dm_errors=None, dm: bool = True):
        self.log: list = []
        self.followup_errors, self.dm_errors, self.has_dm = list(followup_errors or []), list(dm_errors or []), dm
        self.dms: list[int] = []

    def webhook(self, token: str) -> Target:
        return Target("incoming-webhook", self.log)  # the route of the job's public messages: never used here

    def followup(self, token: str) -> Target:
        target = Target("followup", self.log)
        target.errors = self.followup_errors
        return target

    async def channel(self, channel_id: int):
        return Target("channel", self.log)

    async def dm(self, user_id: int):
        self.dms.append(user_id)
        if not self.has_dm:
            return None
        target = Target("dm", self.log)
        target.errors = self.dm_errors
        return target

    def calls(self) -> list[tuple[str, str, bool]]:
        return [(name, action, bool(fields.get("ephemeral"))) for name, action, fields in self.log]


def files() -> list:
    return []


async def test_an_ephemeral_followup_while_the_token_lives():
    routes = Routes()
    assert await Delivery(routes).post_private(make_job(), "yours", files)
    assert routes.calls() == [("followup", "send", True)] and routes.dms == []


async def test_a_dm_once_the_token_expired_or_failed():
    routes = Routes()
    assert await Delivery(routes).post_private(make_job(token_left=None), "yours", files)
    assert routes.calls() == [("dm", "send", False)] and routes.dms == [11]

    routes = Routes(followup_errors=[http_error(401, 50027)])
    assert await Delivery(routes, rate_limit_wait=0).post_private(make_job(), "yours", files)
    assert routes.calls() == [("followup", "send", True), ("dm", "send", False)]


async def test_rate_limited_dms_are_retried():
    routes = Routes(dm_errors=[RATE_LIMITED])
    assert await Delivery(routes, rate_limit_wait=0).post_private(make_job(token_left=timedelta(seconds=5)), "x", files)
    assert routes.calls() == [("dm", "send", False), ("dm", "send", False)]


async def test_closed_dms_never_fall_back_to_the_channel():
    for routes in (Routes(dm_errors=[DMS_CLOSED]), Routes(dm=False)):
        assert not await Delivery(routes, rate_limit_wait=0).post_private(make_job(token_left=None), "x", files)
        assert all(name == "dm" for name, _, _ in routes.calls())
