"""Moderation rules applied to requests: bans, the blocklist, and per-guild limits."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import discord

from .db.models import GuildSettings, utcnow
from .db.moderation import ModerationStore
from .errors import UserFacingError
from .i18n import Text

DURATION = re.compile(r"^\s*(\d+)\s*(m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)\s*$", re.IGNORECASE)
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | None) -> timedelta | None:
    """'30m', '2h', '7d', '1w' -> timedelta; None or '' or 'permanent' -> None (no expiry)."""
    if text is None or not text.strip() or text.strip().lower() in ("permanent", "forever"):
        return None
    match = DURATION.match(text)
    if not match or int(match[1]) == 0:
        raise UserFacingError(Text("rules.bad_duration", text=text))
    return timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2][0].lower()])


def describe_expiry(expires_at: datetime | None) -> Text:
    """When a ban ends, as a Text: it reads in the language of whoever it is shown to."""
    if expires_at is None:
        return Text("expiry.permanent")
    return Text("expiry.until", when=discord.utils.format_dt(expires_at.replace(tzinfo=UTC), "f"))


def channel_is_age_restricted(interaction: discord.Interaction) -> bool:
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


class RequestRules:
    """The guild-specific checks every /imagine request and button goes through.

    In DMs there is no server, so no server's moderators, blocklist or limits: /imagine there is refused unless
    ALLOW_DMS is on, and then a member banned in any server is refused in DMs too (no blocklist applies)."""

    def __init__(self, moderation: ModerationStore, allow_dms: bool = False):
        self.moderation = moderation
        self.allow_dms = allow_dms

    async def check_not_banned(self, guild_id: int | None, user_id: int) -> None:
        """Every request (/imagine, buttons, /train, /lora import) is refused to a banned member."""
        ban = await self.moderation.active_ban(guild_id, user_id)
        if ban is not None:
            reason = Text("rules.ban_reason", reason=ban.reason) if ban.reason else ""
            raise UserFacingError(Text("rules.banned", expiry=describe_expiry(ban.expires_at), reason=reason))

    def check_place(self, interaction: discord.Interaction) -> None:
        """A DM is refused unless ALLOW_DMS: known without any I/O, so said before the interaction is answered."""
        if interaction.guild_id is None and not self.allow_dms:
            raise UserFacingError(Text("rules.dm"))

    async def check(self, interaction: discord.Interaction, params: dict) -> GuildSettings:
        guild_id = interaction.guild_id
        self.check_place(interaction)
        if guild_id is None:
            ban = await self.moderation.ban_anywhere(interaction.user.id)
            if ban is not None:
                raise UserFacingError(Text("rules.banned_anywhere"))
        settings = await self.moderation.settings(guild_id)
        await self.check_not_banned(guild_id, interaction.user.id)
        blocked = await self.moderation.blocked_match(guild_id, params["prompt"])
        if blocked is not None:
            if not (settings.allow_blocklisted_in_nsfw and channel_is_age_restricted(interaction)):
                where = Text("rules.blocked_outside_nsfw") if settings.allow_blocklisted_in_nsfw else ""
                raise UserFacingError(Text("rules.blocked", pattern=blocked.pattern, where=where))
        count = len(params["seeds"])
        if settings.max_count and count > settings.max_count:
            raise UserFacingError(Text("rules.max_count", count=settings.max_count))
        if settings.max_steps and params["steps"] > settings.max_steps:
            raise UserFacingError(Text("rules.max_steps", steps=settings.max_steps))
        return settings


def expiry_from(duration: timedelta | None) -> datetime | None:
    return utcnow() + duration if duration else None
