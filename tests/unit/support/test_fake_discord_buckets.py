"""Tests of the fake Discord's rate-limit buckets (tests/support/fake_discord/ratelimits.py).

Why both clients: a plain aiohttp client sees exactly what the fake answers
(headers, 429 bodies, windows); discord.py's own ``HTTPClient`` and webhook
adapter, pointed at the fake as the bot points them, prove the headers are real
enough that discord.py waits by itself -- it stalls instead of failing.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp
import discord
import pytest
import pytest_asyncio

from fake_discord import BucketSpec, FakeDiscord, Interaction, RateLimits

RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After",
                "X-RateLimit-Bucket")


async def started(limits: RateLimits | None = None) -> FakeDiscord:
    fake = FakeDiscord(rate_limits=limits or RateLimits())
    return await fake.start()


@pytest_asyncio.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


def bot_headers(fake: FakeDiscord) -> dict:
    return {"Authorization": f"Bot {fake.bot_token}"}


async def call(session: aiohttp.ClientSession, fake: FakeDiscord, method: str, path: str,
               body: dict | None = None, auth: bool = True) -> tuple[int, dict, object]:
    async with session.request(method, fake.api_base + path, json=body,
                               headers=bot_headers(fake) if auth else {}) as resp:
        return resp.status, dict(resp.headers), (await resp.json()) if resp.status != 204 else None


def new_interaction(fake: FakeDiscord) -> Interaction:
    """An interaction registered with the fake without a gateway round trip
    (the buckets do not care how it was delivered)."""
    iid, token = fake.snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(40)
    ix = Interaction(id=iid, token=token, type=2, payload={"data": {"name": "bucket"}},
                     user_id=int(fake.alice["id"]), fake=fake, channel_id=fake.channel_id)
    fake.interactions[iid], fake._tokens[token] = ix, ix
    return ix


async def defer(session: aiohttp.ClientSession, fake: FakeDiscord, ix: Interaction) -> None:
    status, _, _ = await call(session, fake, "POST", f"/interactions/{ix.id}/{ix.token}/callback", {"type": 5},
                              auth=False)
    assert status == 204


@pytest.mark.asyncio
async def test_eight_channel_messages_get_429_after_five_with_discords_headers(client):
    fake = await started()
    try:
        path = f"/channels/{fake.channel_id}/messages"
        answers = [await call(client, fake, "POST", path, {"content": f"m{i}"}) for i in range(8)]
        assert [status for status, _, _ in answers] == [200] * 5 + [429] * 3
        buckets = {headers["X-RateLimit-Bucket"] for _, headers, _ in answers}
        assert len(buckets) == 1  # one stable hash for the route bucket
        for i, (_, headers, _) in enumerate(answers):
            assert all(name in headers for name in RATE_HEADERS), headers
            assert headers["X-RateLimit-Limit"] == "5"
            assert headers["X-RateLimit-Remaining"] == str(max(0, 4 - i))
            reset_after = float(headers["X-RateLimit-Reset-After"])
            assert 0 < reset_after <= 5.0
            assert abs(float(headers["X-RateLimit-Reset"]) - (time.time() + reset_after)) < 1.0
        for _, headers, body in answers[5:]:
            assert body["message"] == "You are being rate limited." and body["global"] is False
            assert 0 < body["retry_after"] <= 5.0
            assert headers["X-RateLimit-Scope"] == "user" and "X-RateLimit-Global" not in headers
            assert headers["Via"] and int(headers["Retry-After"]) >= body["retry_after"]
        assert fake.sent_429 == {"channel_messages": 3}
        assert fake.ratelimiter.emptied["channel_messages"] == 1
        assert fake.requests_per_route["POST /channels/{id}/messages"] == 8
        assert len(fake.channel_messages(fake.channel_id)) == 5  # a 429 creates nothing

        # edits and deletes share the channel's bucket; another channel has its own
        first = answers[0][2]["id"]
        status, headers, _ = await call(client, fake, "PATCH", f"{path}/{first}", {"content": "edited"})
        assert status == 429 and headers["X-RateLimit-Bucket"] in buckets
        status, headers, _ = await call(client, fake, "POST", f"/channels/{fake.nsfw_channel_id}/messages",
                                        {"content": "elsewhere"})
        assert status == 200 and headers["X-RateLimit-Remaining"] == "4" and headers["X-RateLimit-Bucket"] in buckets
        status, headers, _ = await call(client, fake, "GET", f"/channels/{fake.channel_id}")
        assert status == 200 and headers["X-RateLimit-Bucket"] not in buckets  # other routes: other buckets
        assert fake.spec_violations == [] and fake.response_violations == []
    finally:
        await fake.stop()


@pytest.mark.asyncio
async def test_bucket_refills_after_its_window_and_edits_are_timed(client):
    fake = await started(RateLimits().but(channel_messages=BucketSpec(2, 0.5)))
    try:
        path = f"/channels/{fake.channel_id}/messages"
        status, headers, sent = await call(client, fake, "POST", path, {"content": "v0"})
        assert status == 200 and headers["X-RateLimit-Limit"] == "2"
        assert (await call(client, fake, "PATCH", f"{path}/{sent['id']}", {"content": "v1"}))[0] == 200
        status, headers, body = await call(client, fake, "PATCH", f"{path}/{sent['id']}", {"content": "v2"})
        assert status == 429 and 0 < body["retry_after"] <= 0.5
        await asyncio.sleep(body["retry_after"])
        status, headers, _ = await call(client, fake, "PATCH", f"{path}/{sent['id']}", {"content": "v2"})
        assert status == 200 and headers["X-RateLimit-Remaining"] == "1"  # a fresh window
        assert float(headers["X-RateLimit-Reset-After"]) > 0.4

        times = fake.edit_times(sent["id"])
        assert len(times) == 2 and times[1] - times[0] >= 0.4  # the 429'd edit changed nothing
        assert fake.messages[int(sent["id"])].content == "v2"
        assert fake.requests_per_route["PATCH /channels/{id}/messages/{id}"] == 3
        assert len(fake.stalls) == 1 and fake.stalls[0].kind == "channel_messages"  # the retry waited
    finally:
        await fake.stop()


@pytest.mark.asyncio
async def test_interaction_webhook_bucket_is_per_token_and_exempt_from_global(client):
    fake = await started(RateLimits().but(global_=BucketSpec(3, 10.0, scope="global")))
    try:
        a, b = new_interaction(fake), new_interaction(fake)
        for ix in (a, b):
            await defer(client, fake, ix)
        app = fake.application_id
        answers = [await call(client, fake, "PATCH", f"/webhooks/{app}/{a.token}/messages/@original",
                              {"content": f"step {i}"}, auth=False) for i in range(6)]
        assert [s for s, _, _ in answers] == [200] * 5 + [429]
        assert answers[0][1]["X-RateLimit-Limit"] == "5" and float(answers[0][1]["X-RateLimit-Reset-After"]) <= 2.0
        assert answers[5][2]["global"] is False and answers[5][2]["retry_after"] <= 2.0
        status, headers, _ = await call(client, fake, "POST", f"/webhooks/{app}/{b.token}?wait=1",
                                        {"content": "b's followup"}, auth=False)
        assert status == 200 and headers["X-RateLimit-Remaining"] == "4"  # b's bucket is its own
        assert headers["X-RateLimit-Bucket"] == answers[0][1]["X-RateLimit-Bucket"]  # same route bucket
        assert fake.sent_429 == {"interaction_webhook": 1}

        # the global limit (3 per 10 s here) counts bot-token routes only
        for _ in range(3):
            assert (await call(client, fake, "GET", f"/channels/{fake.channel_id}"))[0] == 200
        status, headers, body = await call(client, fake, "GET", "/users/@me")
        assert status == 429 and body["global"] is True and body["retry_after"] > 5
        assert headers["X-RateLimit-Global"] == "true" and headers["X-RateLimit-Scope"] == "global"
        assert headers["Via"] and int(headers["Retry-After"]) >= body["retry_after"]
        for _ in range(4):  # callbacks are exempt
            await defer(client, fake, new_interaction(fake))
        status, _, _ = await call(client, fake, "POST", f"/webhooks/{app}/{b.token}?wait=1", {"content": "more"},
                                  auth=False)
        assert status == 200  # so is the interaction's webhook
        assert fake.sent_429 == {"interaction_webhook": 1, "global": 1}
        assert fake.requests_per_route["POST /interactions/{id}/{token}/callback"] == 6
        assert fake.spec_violations == [] and fake.response_violations == []
    finally:
        await fake.stop()


@pytest.mark.asyncio
async def test_off_sends_no_headers_and_never_429_and_injection_still_works(client):
    fake = await started(RateLimits.off())
    try:
        path = f"/channels/{fake.channel_id}/messages"
        answers = [await call(client, fake, "POST", path, {"content": f"m{i}"}) for i in range(8)]
        assert [s for s, _, _ in answers] == [200] * 8
        assert not any(name in answers[0][1] for name in RATE_HEADERS)
        assert fake.requests_per_route["POST /channels/{id}/messages"] == 8  # counted all the same

        rule = fake.inject_rate_limit("POST", r"^/channels/\d+/messages$", times=1, retry_after=0.1)
        status, headers, body = await call(client, fake, "POST", path, {"content": "x"})
        assert status == 429 and rule.hits == 1 and headers["Via"] and body["retry_after"] == 0.1
        assert fake.sent_429 == {"injected": 1}
    finally:
        await fake.stop()


@pytest.mark.asyncio
async def test_discordpy_http_client_waits_by_itself(monkeypatch):
    """12 messages to one channel through discord.py's own HTTPClient: all succeed,
    and take two full 5-s windows, because discord.py read the headers and waited."""
    fake = await started()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(fake.bot_token)

        async def send(i: int) -> dict:
            with discord.http.handle_message_parameters(content=f"message {i}") as params:
                return await http.send_message(fake.channel_id, params=params)

        began = time.monotonic()
        sent = await asyncio.gather(*(send(i) for i in range(12)))
        elapsed = time.monotonic() - began
        assert len({m["id"] for m in sent}) == 12 and len(fake.channel_messages(fake.channel_id)) == 12
        assert elapsed >= 9.5, elapsed  # 5 now, 5 after 5 s, 2 after 10 s
        assert elapsed < 15, elapsed
        assert fake.sent_429.get("channel_messages", 0) == 0  # it waited instead of being told to
        assert fake.ratelimiter.emptied["channel_messages"] == 2
        assert len([s for s in fake.stalls if s.kind == "channel_messages"]) >= 2
        assert fake.spec_violations == [] and fake.response_violations == []
    finally:
        await http.close()
        await fake.stop()


@pytest.mark.asyncio
async def test_discordpy_webhook_adapter_waits_on_an_interaction_token(monkeypatch, client):
    """The adapter interactions use (follow-ups, edits of the original): 7 follow-ups
    on one token take a second 2-s window, without a 429."""
    fake = await started()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    try:
        ix = new_interaction(fake)
        await defer(client, fake, ix)
        webhook = discord.Webhook.partial(fake.application_id, ix.token, session=client)
        began = time.monotonic()
        for i in range(7):
            await webhook.send(f"followup {i}", wait=True)
        elapsed = time.monotonic() - began
        assert len(ix.followups) == 7 and elapsed >= 1.8, elapsed
        assert fake.sent_429.get("interaction_webhook", 0) == 0
        assert fake.stalls and {s.kind for s in fake.stalls} == {"interaction_webhook"}
        assert fake.spec_violations == [] and fake.response_violations == []
    finally:
        await fake.stop()
