"""Delivery against fake Discord routes: the token first, the channel after; Discord errors never escape."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import discord

from bot.db.models import Job, JobKind, JobStatus, utcnow
from bot.jobs.delivery import Delivery


def http_error(status: int, code: int = 0) -> discord.HTTPException:
    return discord.HTTPException(SimpleNamespace(status=status, reason="fake"), {"code": code, "message": "fake"})


UNKNOWN_MESSAGE = http_error(404, 10008)
RATE_LIMITED = http_error(429)


class Target:
    """A fake webhook or channel: records every call; raises the scripted errors first."""

    def __init__(self, name: str, log: list, errors: list[Exception] | None = None):
        self.name, self.log, self.errors = name, log, list(errors or [])

    async def _call(self, action: str, **fields) -> None:
        self.log.append((self.name, action, fields))
        if self.errors:
            raise self.errors.pop(0)

    async def edit_message(self, message_id: int, **fields) -> None:
        await self._call("edit", message_id=message_id, **fields)

    async def send(self, content: str | None = None, **fields) -> None:
        await self._call("send", content=content, **fields)

    def get_partial_message(self, message_id: int):
        return SimpleNamespace(edit=lambda **fields: self._call("edit", message_id=message_id, **fields))


class FakeRoutes:
    def __init__(self, webhook_errors=None, channel_errors=None, channel: bool = True):
        self.log: list = []
        self.webhook_errors, self.channel_errors, self.has_channel = list(webhook_errors or []), channel_errors, channel
        self.tokens: list[str] = []
        self._channel = Target("channel", self.log, channel_errors)

    def webhook(self, token: str) -> Target:
        self.tokens.append(token)
        # One webhook object per route attempt, like discord.Webhook.partial; the errors are shared.
        target = Target("webhook", self.log)
        target.errors = self.webhook_errors
        return target

    async def channel(self, channel_id: int):
        return self._channel if self.has_channel else None

    def calls(self) -> list[tuple[str, str]]:
        return [(name, action) for name, action, _ in self.log]


def make_job(token_left: timedelta | None = timedelta(minutes=10), message_id: int | None = 77) -> Job:
    return Job(id=3, kind=JobKind.IMAGINE, status=JobStatus.RUNNING, user_id=11, guild_id=1, channel_id=5,
               message_id=message_id, interaction_token="tok" if token_left else None,
               token_expires_at=utcnow() + token_left if token_left else None, params={"prompt": "p"}, attempts=1)


async def test_status_edits_go_through_the_token_while_it_lives():
    routes = FakeRoutes()
    assert await Delivery(routes).edit_status(make_job(), "step 1/8")
    assert routes.calls() == [("webhook", "edit")] and routes.tokens == ["tok"]
    assert routes.log[0][2] == {"message_id": 77, "content": "step 1/8"}


async def test_an_expiring_token_is_not_used():
    routes = FakeRoutes()
    assert await Delivery(routes).edit_status(make_job(token_left=timedelta(seconds=10)), "step 1/8")
    assert routes.calls() == [("channel", "edit")] and routes.tokens == []


async def test_a_failed_token_edit_falls_back_to_the_channel():
    routes = FakeRoutes(webhook_errors=[UNKNOWN_MESSAGE])
    assert await Delivery(routes).edit_status(make_job(), "step 2/8")
    assert routes.calls() == [("webhook", "edit"), ("channel", "edit")]


async def test_a_job_without_a_message_has_no_status_to_edit():
    routes = FakeRoutes()
    assert not await Delivery(routes).edit_status(make_job(message_id=None), "step 1/8")
    assert routes.log == []


async def test_rate_limits_are_retried():
    routes = FakeRoutes(webhook_errors=[RATE_LIMITED, RATE_LIMITED])
    assert await Delivery(routes, rate_limit_wait=0).edit_status(make_job(), "step 3/8")
    assert routes.calls() == [("webhook", "edit")] * 3


async def test_a_status_edit_with_a_preview_makes_fresh_files_for_every_attempt():
    routes, made = FakeRoutes(webhook_errors=[RATE_LIMITED, UNKNOWN_MESSAGE]), []

    def preview() -> list:
        made.append(object())
        return [made[-1]]

    assert await Delivery(routes, rate_limit_wait=0).edit_status(make_job(), "step 4/8", preview)
    assert routes.calls() == [("webhook", "edit"), ("webhook", "edit"), ("channel", "edit")]
    assert [call[2]["attachments"] for call in routes.log] == [[one] for one in made] and len(set(map(id, made))) == 3


async def test_the_pointer_to_a_result_posted_below_keeps_no_preview():
    routes = FakeRoutes()
    assert await Delivery(routes).post_final(make_job(token_left=None), "<@11> here is job #3", lambda: [])
    assert routes.log[0][2]["attachments"] == []


async def test_a_deleted_message_gets_the_result_as_a_followup_with_fresh_files():
    routes, made = FakeRoutes(webhook_errors=[UNKNOWN_MESSAGE]), []

    def files() -> list:
        made.append(object())
        return [made[-1]]

    assert await Delivery(routes).post_final(make_job(), "here is job #3", files, embed=None)
    assert routes.calls() == [("webhook", "edit"), ("webhook", "send")]
    assert len(made) == 2 and routes.log[1][2]["files"] == [made[1]]  # never a consumed buffer again


async def test_an_expired_token_posts_the_result_in_the_channel_with_a_mention():
    routes = FakeRoutes()
    assert await Delivery(routes).post_final(make_job(token_left=None), "<@11> here is job #3", lambda: [])
    assert routes.calls() == [("channel", "edit"), ("channel", "send")]
    pointer, post = routes.log[0][2], routes.log[1][2]
    assert pointer["content"] == "Job #3 finished; the result is posted below."
    assert post["content"] == "<@11> here is job #3" and post["allowed_mentions"].users is True


async def test_when_every_route_fails_it_says_so_and_raises_nothing():
    def broken() -> FakeRoutes:
        return FakeRoutes(webhook_errors=[http_error(500)] * 9, channel_errors=[http_error(403, 50013)] * 9)

    assert not await Delivery(broken(), rate_limit_wait=0).post_final(make_job(), "here is job #3")
    assert not await Delivery(broken(), rate_limit_wait=0).post_extra(make_job(), "part 2/2", lambda: [])
    assert not await Delivery(FakeRoutes(channel=False)).edit_status(make_job(token_left=None), "step 1/8")


async def test_an_approval_request_goes_to_its_channel_or_reports_it_could_not():
    routes = FakeRoutes()
    assert await Delivery(routes).send(42, "🔔 approve?", view=None)
    assert routes.log == [("channel", "send", {"content": "🔔 approve?", "view": None})]
    assert not await Delivery(FakeRoutes(channel=False)).send(42, "🔔 approve?")
    assert not await Delivery(FakeRoutes(channel_errors=[http_error(403, 50013)])).send(42, "🔔 approve?")
