"""The fake's world: one guild with channels, roles, members, and the bot user.

Why a fixed world: e2e tests need stable, named actors (``fake.alice``, ``fake.mod``)
and both an ordinary and an age-restricted (``nsfw: true``) text channel.  The JSON
here is the full shape discord.py's ``Guild._from_data`` / ``Member`` / channel
factories index (``member['flags']``, ``guild['stage_instances']``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .models import iso

# Permission bits (https://discord.com/developers/docs/topics/permissions)
CREATE_INSTANT_INVITE = 1 << 0
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE | ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS
    | ATTACH_FILES | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | CONNECT | SPEAK
    | CHANGE_NICKNAME | USE_APPLICATION_COMMANDS | SEND_MESSAGES_IN_THREADS
)
BOT_ROLE_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Gateway intents the world events need (https://discord.com/developers/docs/events/gateway#gateway-intents)
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1


class WorldMixin:
    """Users, roles, members and channels of the single fake guild."""

    def _setup_world(self) -> None:
        now = time.time()
        self.guild_id: int = self.snowflake()
        self.users: dict[int, dict] = {}
        self.members: dict[int, dict] = {}  # user id -> member JSON without "user"
        self.roles: dict[int, dict] = {}
        self.channels: dict[int, dict] = {}
        self._dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.roles[self.guild_id] = self._role_json(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        self.bot_user = self._user_json(self.application_id, "zimage-bot", bot=True)
        self.users[self.application_id] = self.bot_user
        self.owner = self._new_user("owner")
        self.bot_role_id = self.add_role("zimage-bot", permissions=BOT_ROLE_PERMISSIONS, managed=True)
        self.moderator_role_id = self.add_role("Moderator", permissions=MANAGE_GUILD)
        self.members[self.application_id] = self._member_json([self.bot_role_id], now)
        self.category_id = self._add_channel("Text Channels", type_=4)
        self.channel_id: int = self.add_channel("general")
        self.nsfw_channel_id: int = self.add_channel("after-dark", nsfw=True)
        self.alice = self.add_user("alice")
        self.bob = self.add_user("bob")
        self.mod = self.add_user("mod", manage_guild=True)

    # -- public API ---------------------------------------------------------------
    def add_user(self, name: str, *, manage_guild: bool = False,
                 roles: Iterable[int | str] = ()) -> dict:
        """A new guild member; returns the user JSON (``user["id"]`` is a str)."""
        user = self._new_user(name)
        role_ids = [self._role_id(r) for r in roles]
        if manage_guild:
            role_ids.append(self.moderator_role_id)
        self.members[int(user["id"])] = self._member_json(role_ids, time.time())
        self._dispatch_soon("GUILD_MEMBER_ADD", {**self.member_json(user), "guild_id": str(self.guild_id)},
                            intent=INTENT_GUILD_MEMBERS)
        return user

    def add_role(self, name: str, *, permissions: int = 0, managed: bool = False) -> int:
        role_id = self.snowflake()
        self.roles[role_id] = self._role_json(role_id, name, permissions, len(self.roles), managed)
        self._dispatch_soon("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": self.roles[role_id]},
                            intent=INTENT_GUILDS)
        return role_id

    def add_channel(self, name: str, *, nsfw: bool = False, topic: str | None = None) -> int:
        channel_id = self._add_channel(name, nsfw=nsfw, topic=topic, parent_id=self.category_id)
        self._dispatch_soon("CHANNEL_CREATE", self.channels[channel_id], intent=INTENT_GUILDS)
        return channel_id

    def give_role(self, user: dict | int, role: int | str) -> None:
        self.members[_uid(user)]["roles"].append(str(self._role_id(role)))

    def permissions(self, user: dict | int) -> int:
        """Guild-level permissions of a member (no channel overwrites exist here)."""
        uid = _uid(user)
        if uid == int(self.owner["id"]):
            return ALL_PERMISSIONS
        perms = int(self.roles[self.guild_id]["permissions"])
        for rid in self.members[uid]["roles"]:
            perms |= int(self.roles[int(rid)]["permissions"])
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def member_json(self, user: dict | int, *, with_permissions: bool = False) -> dict:
        uid = _uid(user)
        out = {**self.members[uid], "roles": list(self.members[uid]["roles"]), "user": dict(self.users[uid])}
        if with_permissions:
            out["permissions"] = str(self.permissions(uid))
        return out

    def channel_json(self, channel_id: int, *, with_permissions_for: int | None = None) -> dict:
        out = dict(self.channels[channel_id])
        if with_permissions_for is not None:
            out["permissions"] = str(self.permissions(with_permissions_for))
        return out

    def guild_json(self, *, gateway: bool = False) -> dict:
        """REST ``GET /guilds/{id}`` shape, or the GUILD_CREATE shape with ``gateway``."""
        out = {
            "id": str(self.guild_id), "name": "Fake Guild", "icon": None, "splash": None,
            "discovery_splash": None, "owner_id": self.owner["id"], "afk_channel_id": None,
            "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 1,
            "explicit_content_filter": 0, "roles": list(self.roles.values()), "emojis": [],
            "stickers": [], "features": [], "mfa_level": 0, "application_id": None,
            "system_channel_id": str(self.channel_id), "system_channel_flags": 0,
            "rules_channel_id": None, "vanity_url_code": None, "description": None,
            "banner": None, "premium_tier": 0, "premium_subscription_count": 0,
            "preferred_locale": "en-US", "public_updates_channel_id": None,
            "max_video_channel_users": 25, "max_members": 500000, "nsfw_level": 0,
            "premium_progress_bar_enabled": False, "safety_alerts_channel_id": None,
        }
        if gateway:
            out.update({
                "joined_at": iso(time.time() - 86400), "large": False, "unavailable": False,
                "member_count": len(self.members),
                "members": [self.member_json(uid) for uid in self.members],
                "channels": [self._channel_without_guild_id(c) for c in self.channels.values()
                             if c.get("guild_id")],
                "threads": [], "presences": [], "voice_states": [], "stage_instances": [],
                "guild_scheduled_events": [], "soundboard_sounds": [],
            })
        return out

    def dm_channel(self, user: dict | int) -> int:
        """The DM channel id between the bot and ``user`` (created on first use)."""
        uid = _uid(user)
        if uid not in self._dm_channels:
            cid = self.snowflake()
            self.channels[cid] = {"id": str(cid), "type": 1, "last_message_id": None, "flags": 0,
                                  "recipients": [dict(self.users[uid])]}
            self._dm_channels[uid] = cid
        return self._dm_channels[uid]

    # -- helpers ----------------------------------------------------------------
    def _new_user(self, name: str) -> dict:
        user = self._user_json(self.snowflake(), name)
        self.users[int(user["id"])] = user
        return user

    @staticmethod
    def _user_json(user_id: int, name: str, *, bot: bool = False) -> dict:
        out = {"id": str(user_id), "username": name, "global_name": None if bot else name.title(),
               "discriminator": "0", "avatar": None, "public_flags": 0, "flags": 0,
               "banner": None, "accent_color": None, "avatar_decoration_data": None, "primary_guild": None,
               "collectibles": None}
        if bot:
            out.update({"bot": True, "verified": True, "mfa_enabled": False, "locale": "en-US"})
        return out

    @staticmethod
    def _member_json(role_ids: list, joined: float) -> dict:
        return {"nick": None, "avatar": None, "banner": None, "roles": [str(r) for r in role_ids],
                "joined_at": iso(joined), "premium_since": None, "deaf": False, "mute": False,
                "flags": 0, "pending": False, "communication_disabled_until": None}

    @staticmethod
    def _role_json(role_id: int, name: str, permissions: int, position: int, managed: bool = False) -> dict:
        return {"id": str(role_id), "name": name, "color": 0, "colors": {"primary_color": 0},
                "hoist": False, "icon": None, "unicode_emoji": None, "position": position,
                "permissions": str(permissions), "managed": managed, "mentionable": False, "flags": 0}

    def _add_channel(self, name: str, *, type_: int = 0, nsfw: bool = False,
                     topic: str | None = None, parent_id: int | None = None) -> int:
        cid = self.snowflake()
        channel = {"id": str(cid), "type": type_, "guild_id": str(self.guild_id), "name": name,
                   "position": len(self.channels), "permission_overwrites": [], "nsfw": nsfw,
                   "parent_id": str(parent_id) if parent_id else None, "flags": 0}
        if type_ == 0:
            channel.update({"topic": topic, "rate_limit_per_user": 0, "last_message_id": None,
                            "default_auto_archive_duration": 1440})
        self.channels[cid] = channel
        return cid

    @staticmethod
    def _channel_without_guild_id(channel: dict) -> dict:
        # GUILD_CREATE's channels omit guild_id, like Discord's
        return {k: v for k, v in channel.items() if k != "guild_id"}

    def _role_id(self, role: int | str) -> int:
        if isinstance(role, int):
            if role not in self.roles:
                raise KeyError(f"no role with id {role}")
            return role
        for rid, data in self.roles.items():
            if data["name"] == role:
                return rid
        raise KeyError(f"no role named {role!r}; roles: {[r['name'] for r in self.roles.values()]}")


def _uid(user: dict | int | str) -> int:
    return int(user["id"]) if isinstance(user, dict) else int(user)
