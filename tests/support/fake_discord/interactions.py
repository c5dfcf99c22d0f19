"""Building INTERACTION_CREATE payloads the way Discord's client would.

Why typed from the registered commands: Discord sends option values typed by the
command's option definitions (4 integer, 10 number, 3 string, 5 boolean, 6 user with
``resolved.users/members``, 11 attachment with ``resolved.attachments``), and only
for commands that were synced.  Building payloads from ``fake.commands`` makes a
test fail when the bot never registered the command or an option it relies on,
instead of silently passing.  Subcommands: ``"lora use"`` nests options in a type-1
(SUB_COMMAND) option, inside a type-2 (SUB_COMMAND_GROUP) one for ``"a b c"``.

discord.py requires ``attachment_size_limit`` and ``version`` in the payload, and a
``guild_id`` the commands were synced to.
"""

from __future__ import annotations

import secrets
from typing import Any

from .models import Interaction, Message, attachment_json, make_attachment

PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11


class InteractionsMixin:
    """``slash_command``, ``click_button``, ``select``, ``autocomplete``, ``submit_modal``."""

    async def slash_command(self, name: str, options: dict | None = None, *, user: dict | None = None,
                            channel_id: int | None = None,
                            attachments: dict | None = None, locale: str = "en-US",
                            guild_locale: str = "en-US") -> Interaction:
        """Send a chat-input command; ``attachments={"photos": ("x.zip", b"..."[, "mime"])}``; ``locale`` is the
        member's client language, ``guild_locale`` the server's (Discord sends both)."""
        values = dict(options or {})
        values.update(attachments or {})
        self._check_can_use(name, user, channel_id)
        data = self._command_data(name, values, focused=None)
        return await self._send_interaction(APPLICATION_COMMAND, data, user, channel_id,
                                            locales=(locale, guild_locale))

    async def autocomplete(self, name: str, options: dict | None = None, *, focused: str,
                           user: dict | None = None, channel_id: int | None = None,
                           timeout: float = 5.0, locale: str = "en-US", guild_locale: str = "en-US") -> list:
        """Send an autocomplete interaction; returns the ``choices`` of the type-8 callback."""
        self._check_can_use(name, user, channel_id)
        data = self._command_data(name, dict(options or {}), focused=focused)
        ix = await self._send_interaction(AUTOCOMPLETE, data, user, channel_id, locales=(locale, guild_locale))
        body = await ix.wait_response(timeout)
        if body.get("type") != 8:
            raise AssertionError(f"autocomplete answered with callback type {body.get('type')}")
        return (body.get("data") or {}).get("choices", [])

    async def click_button(self, message: Message | int, custom_id: str, *,
                           user: dict | None = None, locale: str = "en-US",
                           guild_locale: str = "en-US") -> Interaction:
        msg, comp = self._component(message, custom_id, (2,))
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(MESSAGE_COMPONENT, data, user, msg.channel_id, msg,
                                            locales=(locale, guild_locale))

    async def select(self, message: Message | int, custom_id: str, values: list, *,
                     user: dict | None = None, locale: str = "en-US", guild_locale: str = "en-US") -> Interaction:
        """Choose ``values`` (option values) in a string select menu."""
        msg, comp = self._component(message, custom_id, (3,))
        allowed = [o["value"] for o in comp.get("options", [])]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{bad} not among select options {allowed}")
        data = {"custom_id": custom_id, "component_type": 3, "values": list(values)}
        return await self._send_interaction(MESSAGE_COMPONENT, data, user, msg.channel_id, msg,
                                            locales=(locale, guild_locale))

    async def submit_modal(self, ix: Interaction, values: dict, *, user: dict | None = None) -> Interaction:
        """Submit the modal the bot opened (type-9 callback) with text input ``values`` by custom_id."""
        modal = next((cb["data"] for cb in reversed(ix.callbacks) if cb.get("type") == 9), None)
        if modal is None:
            raise ValueError(f"interaction {ix.id} got no modal (callbacks: {[c.get('type') for c in ix.callbacks]})")

        def submitted(comp: dict) -> dict | None:
            if comp.get("type") == 1:
                inner = [s for s in map(submitted, comp.get("components", [])) if s]
                return {"type": 1, "components": inner}
            if comp.get("type") == 18:
                return {"type": 18, "component": submitted(comp["component"])}
            if comp.get("type") == 4:
                return {"type": 4, "custom_id": comp["custom_id"], "value": str(values.get(comp["custom_id"], ""))}
            if comp.get("type") in (3, 5, 6, 7, 8):
                return {"type": comp["type"], "custom_id": comp["custom_id"],
                        "values": list(values.get(comp["custom_id"], []))}
            return None

        comps = [s for s in map(submitted, modal.get("components", [])) if s]
        data = {"custom_id": modal["custom_id"], "components": comps}
        msg = self.messages.get(ix.component_message_id) if ix.component_message_id else None
        return await self._send_interaction(MODAL_SUBMIT, data, user or self.users[ix.user_id],
                                            ix.channel_id, msg, triggered_by=ix,
                                            locales=(ix.payload["locale"], ix.payload["guild_locale"]))

    def allow_command(self, name: str, *, role: int | None = None, user: dict | None = None) -> None:
        """A server admin lets ``role`` (the guild id: @everyone) or ``user`` use a command whose
        ``default_member_permissions`` hide it from them (Server Settings → Integrations: Discord's
        application command permission overrides; the bot is not told)."""
        target = int(user["id"]) if user is not None else int(role if role is not None else self.guild_id)
        self.command_overrides.setdefault(name, set()).add(target)

    # -- helpers ----------------------------------------------------------------
    def find_command(self, name: str) -> dict:
        """A registered command (guild commands first, then global) by top-level name."""
        for cmd in self.guild_commands.get(self.guild_id, []) + self.global_commands:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd
        raise LookupError(f"command /{name} is not registered; registered: "
                          f"{sorted(c['name'] for c in self.commands)}")

    def _check_can_use(self, path: str, user: dict | None, channel_id: int | None) -> None:
        """What Discord's client enforces before a user can even send the command:
        ``default_member_permissions`` (unless ``allow_command`` overrode them) and age-restricted
        (``nsfw``) commands."""
        cmd = self.find_command(path.split()[0])
        uid = int((user or self.alice)["id"])
        needed = cmd.get("default_member_permissions")
        allowed = self.command_overrides.get(cmd["name"], set())
        overridden = bool(allowed & {uid, self.guild_id, *(int(r) for r in self.members.get(uid, {}).get("roles", []))})
        if needed is not None and (int(needed) & self.permissions(uid)) != int(needed) and not overridden:
            raise PermissionError(f"/{path} needs permissions {needed}; user {uid} has {self.permissions(uid)}, "
                                  f"so Discord does not offer the command to them")
        channel = self.channels[int(channel_id or self.channel_id)]
        if cmd.get("nsfw") and not channel.get("nsfw"):
            raise PermissionError(f"/{path} is age-restricted; Discord offers it only in nsfw channels")

    def _command_data(self, path: str, values: dict, focused: str | None) -> dict:
        parts = path.split()
        cmd = self.find_command(parts[0])
        resolved: dict = {}
        defs = cmd.get("options") or []
        chain = []
        for sub in parts[1:]:
            opt = next((o for o in defs if o["name"] == sub and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None)
            if opt is None:
                raise LookupError(f"/{path}: no subcommand {sub!r}; have {[o['name'] for o in defs]}")
            chain.append(opt)
            defs = opt.get("options") or []
        if any(o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in defs):
            raise LookupError(f"/{path} needs a subcommand: {[o['name'] for o in defs]}")
        options = self._typed_options(path, defs, values, resolved, focused)
        for opt in reversed(chain):
            options = [{"name": opt["name"], "type": opt["type"], "options": options}]
        data = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": options}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return data

    def _typed_options(self, path: str, defs: list, values: dict, resolved: dict,
                       focused: str | None) -> list:
        by_name = {o["name"]: o for o in defs}
        out = []
        for key, value in values.items():
            if key not in by_name:
                raise LookupError(f"/{path} has no option {key!r}; options: {list(by_name)}")
            opt = by_name[key]
            if key == focused:  # what the user has typed so far, untyped
                out.append({"name": key, "type": opt["type"], "value": value, "focused": True})
                continue
            out.append({"name": key, "type": opt["type"], "value": self._typed_value(path, opt, value, resolved)})
        if focused is not None and focused not in values:
            out.append({"name": focused, "type": by_name[focused]["type"], "value": "", "focused": True})
        missing = [o["name"] for o in defs if o.get("required") and o["name"] not in values]
        if missing and focused is None:
            raise ValueError(f"/{path}: required option(s) {missing} not given")
        return out

    def _typed_value(self, path: str, opt: dict, value: Any, resolved: dict) -> Any:
        kind, where = opt["type"], f"/{path} option {opt['name']!r}"
        if kind == STRING:
            value = str(value)
            if not opt.get("min_length", 0) <= len(value) <= opt.get("max_length", 6000):
                raise ValueError(f"{where}: length {len(value)} outside min/max_length")
        elif kind in (INTEGER, NUMBER):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{where} expects a number, got {value!r}")
            value = int(value) if kind == INTEGER else float(value)
            if opt.get("min_value") is not None and value < opt["min_value"] or \
                    opt.get("max_value") is not None and value > opt["max_value"]:
                raise ValueError(f"{where}: {value} outside [{opt.get('min_value')}, {opt.get('max_value')}]")
        elif kind == BOOLEAN:
            value = bool(value)
        elif kind in (USER, MENTIONABLE) and (isinstance(value, dict) or int(value) in self.users):
            uid = int(value["id"]) if isinstance(value, dict) else int(value)
            resolved.setdefault("users", {})[str(uid)] = dict(self.users[uid])
            if uid in self.members:
                member = self.member_json(uid, with_permissions=True)
                member.pop("user")
                resolved.setdefault("members", {})[str(uid)] = member
            return str(uid)
        elif kind in (ROLE, MENTIONABLE):
            rid = self._role_id(value)
            resolved.setdefault("roles", {})[str(rid)] = dict(self.roles[rid])
            return str(rid)
        elif kind == CHANNEL:
            cid = int(value)
            ch = self.channel_json(cid, with_permissions_for=self.application_id)
            resolved.setdefault("channels", {})[str(cid)] = ch
            return str(cid)
        elif kind == ATTACHMENT:
            filename, data, *ctype = value
            att_id = self.snowflake()
            att = make_attachment(att_id, filename, data, ctype[0] if ctype else None,
                                  f"/ephemeral-attachments/{self.application_id}/{att_id}")
            self.attachments[att_id] = att
            resolved.setdefault("attachments", {})[str(att_id)] = attachment_json(att, self.http_base,
                                                                                  ephemeral=True)
            return str(att_id)
        choices = opt.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"{where}: {value!r} is not one of the choices {[c['value'] for c in choices]}")
        return value

    def _component(self, message: Message | int, custom_id: str, types: tuple) -> tuple:
        msg = self.messages[message.id if isinstance(message, Message) else int(message)]
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        comp = msg.find_component(custom_id)
        if comp is None or comp.get("type") not in types:
            raise LookupError(f"message {msg.id} has no component {custom_id!r} of type {types}; "
                              f"custom_ids: {msg.custom_ids()}")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled")
        return msg, comp

    async def _send_interaction(self, itype: int, data: dict, user: dict | None,
                                channel_id: int | None, message: Message | None = None,
                                triggered_by: Interaction | None = None,
                                locales: tuple[str, str] = ("en-US", "en-US")) -> Interaction:
        if not self.gateway.connected:
            await self.wait_for(lambda: self.gateway.connected, timeout=10, what="the bot's gateway connection")
        user = user or self.alice
        uid = int(user["id"])
        channel_id = int(channel_id or self.channel_id)
        iid, token = self.snowflake(), "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(60)
        locale, guild_locale = locales
        payload = {
            "id": str(iid), "application_id": str(self.application_id), "type": itype, "data": data,
            "guild_id": str(self.guild_id),
            "guild": {"id": str(self.guild_id), "locale": guild_locale, "features": []},
            "channel_id": str(channel_id),
            "channel": self.channel_json(channel_id, with_permissions_for=uid),
            "member": self.member_json(uid, with_permissions=True),
            "token": token, "version": 1, "locale": locale, "guild_locale": guild_locale,
            "app_permissions": str(self.permissions(self.application_id)),
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0, "attachment_size_limit": self.attachment_size_limit,
        }
        if message is not None:
            payload["message"] = message.to_json(self)
        ix = Interaction(id=iid, token=token, type=itype, payload=payload, user_id=uid, fake=self,
                         channel_id=channel_id, component_message_id=message.id if message else None,
                         triggered_by=triggered_by)
        self.interactions[iid] = ix
        self._tokens[token] = ix
        await self.gateway.dispatch("INTERACTION_CREATE", payload)
        self._changed()
        return ix
