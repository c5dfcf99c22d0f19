"""A fake Discord (REST + gateway) for end-to-end tests of a real discord.py bot.

No machine here can reach Discord, and dpytest cannot do slash commands or
interactions, so tests run the unmodified bot against this server, which runs in
the test's own event loop::

    fake = FakeDiscord()
    await fake.start()                  # 127.0.0.1, random port
    # bot: discord.http.Route.BASE = fake.api_base
    #      discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    await fake.wait_ready()
    ix = await fake.slash_command("imagine", {"prompt": "a cat"}, user=fake.alice)
    await ix.wait_response(3)
    assert fake.spec_violations == []

Rate limits are on by default, with Discord's bucket sizes and headers
(``ratelimits``): ``FakeDiscord(rate_limits=RateLimits.off())`` or the environment
variable ``FAKE_DISCORD_RATE_LIMITS=off`` turns them off; ``fake.sent_429``,
``fake.requests_per_route``, ``fake.stalls``, ``fake.edit_times(message_id)`` and
``fake.ratelimit_stats()`` say what the bot met.

Modules, one job each: ``fake`` (lifecycle, waiting, failure injection), ``guild``
(users/roles/channels), ``gateway`` (websocket), ``router`` (request pipeline),
``rest``/``messages``/``webhooks`` (routes), ``interactions`` (payload builders),
``models`` (records and their JSON), ``spec`` (OpenAPI validation), ``ratelimits``
(buckets, headers, counters), ``wire`` (HTTP helpers).
"""

from .fake import FakeDiscord
from .models import EPHEMERAL, LOADING, Interaction, Message
from .ratelimits import BucketSpec, RateLimits
from .spec import get_validator
from .wire import DiscordError, Injection

__all__ = ["FakeDiscord", "Interaction", "Message", "DiscordError", "Injection", "get_validator",
           "EPHEMERAL", "LOADING", "RateLimits", "BucketSpec"]
