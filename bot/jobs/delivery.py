"""Posting a job's state to Discord without ever letting a Discord error kill the job.

A job's message is the interaction's original response. While the interaction token lives
(15 minutes) we edit it through the interaction webhook; afterwards, or when the message was
deleted, we fall back to the channel with the bot token. Every call here swallows and logs
Discord errors: a lost progress edit is harmless, and a final result always finds some way out.

A private job (its member's /settings: bot/member_settings.py) never uses the channel: its message is an
ephemeral reply, edited through the token while it lives; after that its result goes by DM, and when
DMs are closed the channel only gets a note, without the images or the prompt, that says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol, cast

import discord

from ..db.models import Job, utcnow
from ..i18n import tr
from .render import locale_of

log = logging.getLogger(__name__)

# Leave a margin: a token that expires mid-upload is as bad as an expired one.
TOKEN_MARGIN = timedelta(seconds=30)
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
INVALID_WEBHOOK_TOKEN = 50027
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_WAIT = 2.0


class Routes(Protocol):
    """The two ways to a job's messages: the interaction's webhook (its token) and the channel (the bot's token)."""

    def webhook(self, token: str) -> discord.Webhook: ...
    async def channel(self, channel_id: int) -> discord.abc.Messageable | None: ...


class PrivateRoutes(Routes, Protocol):
    """The two ways to a job's owner alone: an ephemeral follow-up (the interaction's token), and a DM."""

    def followup(self, token: str) -> discord.Webhook: ...
    async def dm(self, user_id: int) -> discord.abc.Messageable | None: ...


def is_private(job: Job) -> bool:
    """Whether the job's messages are for its member alone (bot/imagine.py marks it so from their /settings)."""
    return isinstance(job.params, dict) and bool(job.params.get("private"))


def _sendable(fields: dict) -> dict:
    """Fields for a new message: None there means "none", which a webhook's send refuses (a view of None)."""
    return {name: value for name, value in fields.items() if value is not None}


class DiscordRoutes:
    def __init__(self, client: discord.Client):
        self.client = client

    def webhook(self, token: str) -> discord.Webhook:
        if self.client.application_id is None:  # set at login, before setup_hook starts the queue
            raise RuntimeError("no application id: the client is not logged in")
        return discord.Webhook.partial(self.client.application_id, token, client=self.client)

    async def channel(self, channel_id: int) -> discord.abc.Messageable | None:
        channel = self.client.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.client.fetch_channel(channel_id)
            except discord.HTTPException as exc:
                log.warning("cannot reach channel %s: %s", channel_id, exc)
                return None
        return channel  # type: ignore[return-value]

    def followup(self, token: str) -> discord.Webhook:
        """The interaction's own (application) webhook, as discord.Interaction.followup: it may send ephemeral messages."""
        if self.client.application_id is None:  # set at login, before the queue starts
            raise RuntimeError("the application id is not known before login")
        return discord.Webhook.from_state({"id": self.client.application_id, "type": 3, "token": token},
                                          self.client._connection)

    async def dm(self, user_id: int) -> discord.abc.Messageable | None:
        try:
            return await self.client.create_dm(discord.Object(user_id))
        except discord.HTTPException as exc:
            log.warning("cannot open a DM with %s: %s", user_id, exc)
            return None


class Delivery:
    def __init__(self, routes: Routes, rate_limit_wait: float = RATE_LIMIT_WAIT):
        self.routes = routes
        self.rate_limit_wait = rate_limit_wait  # seconds before the first retry of a 429, longer for each next one

    def _webhook(self, job: Job) -> discord.Webhook | None:
        if not job.interaction_token or not job.token_expires_at:
            return None
        if utcnow() + TOKEN_MARGIN >= job.token_expires_at:
            return None
        return self.routes.webhook(job.interaction_token)

    async def send(self, channel_id: int, content: str, **fields) -> bool:
        """A message of the bot's own in a channel (an approval request), not one of a job's."""
        channel = await self.routes.channel(channel_id)
        if channel is None:
            return False
        try:
            await channel.send(content, **fields)
            return True
        except discord.HTTPException as exc:
            log.warning("could not post in channel %s: %s %s", channel_id, exc.status, exc.text)
            return False

    async def edit_status(self, job: Job, content: str, make_files: Callable[[], list[discord.File]] | None = None,
                          **fields) -> bool:
        """Edit the job's message in place (progress, queue position). True when it worked.

        ``make_files``: the message's attachments become these files (a live preview), made anew for every
        attempt (an upload consumes them); without it the attachments stay as they are, unless ``fields`` says."""
        if (message_id := job.message_id) is None:
            return False

        def with_files() -> dict:
            return {**fields, "attachments": make_files()} if make_files else fields

        async def through_token(webhook: discord.Webhook) -> None:
            await webhook.edit_message(message_id, content=content, **with_files())

        async def through_channel(channel) -> None:
            await channel.get_partial_message(job.message_id).edit(content=content, **with_files())

        # A private job's message is ephemeral: only its token reaches it, and the channel must not see its text.
        return await self._attempt(job, through_token, None if is_private(job) else through_channel, what="status edit")

    async def post_final(self, job: Job, content: str, make_files: Callable[[], list[discord.File]] | None = None,
                         **fields) -> bool:
        """Put the final state on the job's message; if it cannot be edited, post a new one."""
        def files() -> list[discord.File]:
            return make_files() if make_files else []

        async def edit_original(webhook: discord.Webhook) -> None:
            if job.message_id is None:
                raise _NoMessage()
            await webhook.edit_message(job.message_id, content=content, attachments=files(), **fields)

        async def followup(webhook: discord.Webhook) -> None:
            await webhook.send(content=content, files=files(), wait=True, **_sendable(fields))

        async def channel_post(channel) -> None:
            await channel.send(content=content, files=files(),
                               allowed_mentions=discord.AllowedMentions(users=True), **fields)

        if await self._attempt(job, edit_original, None, what="final edit", quiet_missing=True):
            return True
        if is_private(job):
            if await self._to_owner(job, content, files, **fields):
                return True
            await self._say_undelivered(job)
            return False
        if await self._attempt(job, followup, None, what="final followup", quiet_missing=True):
            return True
        # The token is gone: point the old message at the new one, then post with a mention.
        await self.edit_status(job, tr(locale_of(job), "job.posted_below", job=job.id), embed=None, view=None,
                               attachments=[])  # no live preview left on it
        return await self._attempt(job, None, channel_post, what="final channel post")

    async def post_extra(self, job: Job, content: str, make_files: Callable[[], list[discord.File]]) -> bool:
        """A further message for the same job (more images than one upload can carry)."""
        if is_private(job):
            return await self._to_owner(job, content, make_files)

        async def followup(webhook: discord.Webhook) -> None:
            await webhook.send(content=content, files=make_files(), wait=True)

        async def channel_post(channel) -> None:
            await channel.send(content=content, files=make_files())

        return await self._attempt(job, followup, channel_post, what="extra post")

    async def post_private(self, job: Job, content: str, make_files: Callable[[], list[discord.File]]) -> bool:
        """A message for the job's owner only (a private LoRA's file): an ephemeral follow-up while the interaction token
        lives, else a DM. Never the channel: when both fail (DMs closed), nothing is posted and False is returned."""
        return await self._to_owner(job, content, make_files)

    async def post_ephemeral(self, job: Job, content: str) -> bool:
        """A note for the job's member alone while its interaction token lives (an ephemeral follow-up); False
        afterwards, and nothing is posted: the caller's public message already says what happened."""
        routes = cast(PrivateRoutes, self.routes)

        async def ephemeral(_webhook: discord.Webhook) -> None:
            assert job.interaction_token is not None  # _attempt only takes the token route with a live token
            await routes.followup(job.interaction_token).send(content=content, ephemeral=True, wait=True)

        return await self._attempt(job, ephemeral, None, what="ephemeral note")

    async def _to_owner(self, job: Job, content: str, make_files: Callable[[], list[discord.File]], **fields) -> bool:
        """post_private's routes, for any message: an ephemeral follow-up while the token lives, else a DM."""
        routes = cast(PrivateRoutes, self.routes)
        fields = _sendable(fields)

        async def ephemeral(_webhook: discord.Webhook) -> None:
            assert job.interaction_token is not None  # _attempt only takes the token route with a live token
            await routes.followup(job.interaction_token).send(content=content, files=make_files(), ephemeral=True,
                                                             wait=True, **fields)

        if await self._attempt(job, ephemeral, None, what="private follow-up"):
            return True
        channel = await routes.dm(job.user_id)
        if channel is None:
            return False
        for retry in range(RATE_LIMIT_RETRIES):
            try:
                await channel.send(content=content, files=make_files(), **fields)
                return True
            except discord.HTTPException as exc:
                if exc.status == 429 and retry + 1 < RATE_LIMIT_RETRIES:
                    await asyncio.sleep(self.rate_limit_wait * (retry + 1))
                    continue
                log.warning("job %s: DM to its owner failed: %s %s", job.id, exc.status, exc.text)
                break
            except (discord.DiscordException, OSError) as exc:
                log.warning("job %s: DM to its owner failed: %r", job.id, exc)
                break
        return False

    async def _say_undelivered(self, job: Job) -> None:
        """A private job's member could not be reached: a note in the channel (no image, no prompt), so they know why."""
        text = tr(str(job.params.get("locale") or ""), "settings.private_undelivered", user=job.user_id, job=job.id)

        async def note(channel) -> None:
            await channel.send(content=text, allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]))

        await self._attempt(job, None, note, what="private delivery note")

    async def _attempt(self, job: Job, through_token, through_channel, *, what: str,
                       quiet_missing: bool = False) -> bool:
        """Try the token route, then the channel route; retry rate limits discord.py gave up on."""
        for route in ("token", "channel"):
            action = through_token if route == "token" else through_channel
            if action is None:
                continue
            target = self._webhook(job) if route == "token" else await self.routes.channel(job.channel_id)
            if target is None:
                continue
            for retry in range(RATE_LIMIT_RETRIES):
                try:
                    await action(target)
                    return True
                except _NoMessage:
                    break
                except discord.HTTPException as exc:
                    if exc.status == 429 and retry + 1 < RATE_LIMIT_RETRIES:
                        await asyncio.sleep(self.rate_limit_wait * (retry + 1))
                        continue
                    gone = exc.code in (UNKNOWN_MESSAGE, UNKNOWN_WEBHOOK, INVALID_WEBHOOK_TOKEN) or exc.status in (401, 404)
                    level = logging.DEBUG if (gone and quiet_missing) else logging.WARNING
                    log.log(level, "job %s: %s via %s failed: %s %s", job.id, what, route, exc.status, exc.text)
                    break
                except (discord.DiscordException, OSError) as exc:
                    log.warning("job %s: %s via %s failed: %r", job.id, what, route, exc)
                    break
        return False


class _NoMessage(Exception):
    """There is no message to edit; move on to posting a new one."""
