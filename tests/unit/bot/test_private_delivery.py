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


# -- /settings private:True: a generation's own messages (bot/member_settings.py) ---------------------------------


def private_job(token_left: timedelta | None = timedelta(minutes=10), locale: str = "en"):
    job = make_job(token_left=token_left)
    job.params = {"prompt": "a secret fox", "private": True, "locale": locale}
    return job


async def test_a_private_result_edits_its_ephemeral_reply_while_the_token_lives():
    routes = Routes()
    assert await Delivery(routes).post_final(private_job(), "<@11> here is job #3", files, embed="e", view="v")
    assert routes.calls() == [("incoming-webhook", "edit", False)] and routes.dms == []


async def test_a_private_result_goes_by_dm_with_its_embed_and_buttons_once_the_token_expired():
    routes = Routes()
    assert await Delivery(routes).post_final(private_job(token_left=None), "<@11> here is job #3", files,
                                             embed="e", view="v")
    assert routes.calls() == [("dm", "send", False)] and routes.dms == [11]
    assert routes.log[0][2]["embed"] == "e" and routes.log[0][2]["view"] == "v"


async def test_a_private_result_whose_reply_was_deleted_is_an_ephemeral_followup():
    routes = Routes(followup_errors=[])
    delivery = Delivery(routes)
    original_webhook = routes.webhook

    def gone_webhook(token: str) -> Target:
        target = original_webhook(token)
        target.errors = [http_error(404, 10008)]
        return target

    routes.webhook = gone_webhook  # type: ignore[method-assign]
    assert await delivery.post_final(private_job(), "<@11> here is job #3", files, embed=None, view=None)
    assert routes.calls() == [("incoming-webhook", "edit", False), ("followup", "send", True)]
    assert "view" not in routes.log[1][2] and "embed" not in routes.log[1][2]  # None: nothing to send, never a None view


async def test_closed_dms_leave_a_note_in_the_channel_without_the_images_or_the_prompt():
    for locale, words in (("en", "direct messages are closed"), ("zh-CN", "关闭了")):
        routes = Routes(dm_errors=[DMS_CLOSED])
        assert not await Delivery(routes, rate_limit_wait=0).post_final(
            private_job(token_left=None, locale=locale), "<@11> here is job #3", files, embed="e", view="v")
        channel_posts = [fields for name, _, fields in routes.log if name == "channel"]
        assert len(channel_posts) == 1
        note = channel_posts[0]
        assert words in note["content"] and "<@11>" in note["content"] and "fox" not in note["content"]
        assert set(note) == {"content", "allowed_mentions"}  # no files, no embed, no buttons


async def test_private_status_edits_and_extra_images_never_reach_the_channel():
    routes = Routes()
    delivery = Delivery(routes, rate_limit_wait=0)
    assert not await delivery.edit_status(private_job(token_left=None), "position 2: a secret fox")
    assert await delivery.edit_status(private_job(), "position 2: a secret fox")
    assert await delivery.post_extra(private_job(), "part 2", files)
    assert await delivery.post_extra(private_job(token_left=None), "part 2", files)
    assert routes.calls() == [("incoming-webhook", "edit", False), ("followup", "send", True), ("dm", "send", False)]
