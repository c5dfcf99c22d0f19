"""Interaction callbacks and the interaction-token webhook routes.

Why these rules matter: they are where bots break in production.
* The first callback must arrive within ``fake.callback_deadline`` (Discord: 3 s),
  else 404 10062 "Unknown interaction"; a second callback is 400 40060.
* Callback types must fit the interaction (commands: 4/5/9, components: 4-7/9,
  autocomplete: 8, modal submits: 4-7).
* Tokens live ``fake.token_lifetime`` (Discord: 15 min); expired -> 401 50027.
* Type 5 creates a "thinking" original (flags 128); the first followup or the first
  edit of ``@original`` replaces it (a followup then returns the original's id and
  keeps the defer's ephemerality, as on Discord).
* ``?with_response=1`` returns ``{"interaction": {...}, "resource": {...}}``, which
  discord.py 2.5+ parses into ``InteractionCallbackResponse``; without it, 204.
  Per the spec, ``resource`` (with ``message``) exists only for types 4 and 7; a
  type-5 defer reports its thinking message via ``interaction.response_message_*``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .messages import apply_body, create_message
from .models import CHAT_INPUT_COMMAND, DEFAULT, EPHEMERAL, LOADING, Interaction, Message
from .router import Req, RouteTable
from .wire import DiscordError, invalid_form_body, json_response, no_content, truthy, unknown_message

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord

routes = RouteTable()

ALLOWED_CALLBACKS = {  # interaction type -> callback types
    1: {1},
    2: {4, 5, 9},
    3: {4, 5, 6, 7, 9},
    4: {8},
    5: {4, 5, 6, 7},
}


def _interaction_for_token(fake: FakeDiscord, req: Req) -> Interaction:
    ix = fake._tokens.get(req.params["token"])
    if ix is None or int(req.params["app_id"]) != fake.application_id:
        raise DiscordError(404, 10015, "Unknown Webhook")
    _check_expiry(fake, ix)
    return ix


def _check_expiry(fake: FakeDiscord, ix: Interaction) -> None:
    if fake.token_lifetime is not None and time.monotonic() - ix.created_at > fake.token_lifetime:
        ix.expired = True
    if ix.expired:
        raise DiscordError(401, 50027, "Invalid Webhook Token")


def _message_type(ix: Interaction) -> int:
    return CHAT_INPUT_COMMAND if ix.type == 2 else DEFAULT


@routes.route("POST", "/interactions/{interaction_id}/{token}/callback", auth=False)
async def interaction_callback(fake: FakeDiscord, req: Req):
    ix = fake.interactions.get(int(req.params["interaction_id"]))
    if ix is None or ix.token != req.params["token"]:
        raise DiscordError(404, 10062, "Unknown interaction")
    _check_expiry(fake, ix)
    body = req.json
    cb_type = body.get("type")
    # The answer counts from its arrival, not from when this fake has parsed and checked it against the spec.
    arrived = getattr(req.record, "arrived", None) or time.monotonic()
    if ix.answered_at is None:
        ix.answered_at = arrived
    if ix.callbacks:
        fake.record_violation(f"interaction {ix.id} ({ix.name}) acknowledged twice (callback type {cb_type})")
        raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
    late = arrived - ix.created_at
    if fake.callback_deadline is not None and late > fake.callback_deadline:
        fake.record_violation(f"interaction {ix.id} ({ix.name}) answered after {late:.2f}s "
                              f"(deadline {fake.callback_deadline}s): Discord shows 'interaction failed'")
        raise DiscordError(404, 10062, "Unknown interaction")
    if cb_type not in ALLOWED_CALLBACKS.get(ix.type, set()):
        fake.record_violation(f"callback type {cb_type} is not valid for interaction type {ix.type} ({ix.name})")
        raise invalid_form_body(f"Interaction callback type {cb_type} not allowed here", "type")

    data = body.get("data") or {}
    message = None
    if cb_type == 4:
        message = create_message(fake, ix.channel_id, data, req.body.files, allow_ephemeral=True,
                                 **_interaction_fields(fake, ix))
    elif cb_type == 5:
        message = Message(id=fake.snowflake(), channel_id=ix.channel_id, author_id=fake.application_id,
                          flags=LOADING | (int(data.get("flags") or 0) & EPHEMERAL),
                          **_interaction_fields(fake, ix))
        fake.messages[message.id] = message
        message.history.append(message.snapshot())
    elif cb_type in (6, 7):
        message = fake.messages[ix.component_message_id] if ix.component_message_id else None
        if message is None:  # modal submitted from a slash command: nothing to update
            fake.record_violation(f"callback type {cb_type} for interaction {ix.id} has no message to update")
            raise invalid_form_body("No message to update", "type")
        if message.deleted:
            raise unknown_message()
        if cb_type == 7:
            apply_body(fake, message, data, req.body.files, edit=True)
    ix.callbacks.append(body)
    if message is not None:
        ix.original = message
        if cb_type in (4, 5, 7):
            fake._dispatch_message("MESSAGE_UPDATE" if cb_type == 7 else "MESSAGE_CREATE", message)
        if cb_type == 6:
            message = None  # a deferred update creates no resource message
    if not truthy(req.query.get("with_response")):
        return no_content()
    return json_response(_callback_response(fake, ix, cb_type, message))


def _interaction_fields(fake: FakeDiscord, ix: Interaction) -> dict:
    return {"type": _message_type(ix), "webhook_id": fake.application_id,
            "application_id": fake.application_id, "interaction_token": ix.token,
            "interaction_id": ix.id}


def _callback_response(fake: FakeDiscord, ix: Interaction, cb_type: int, message) -> dict:
    interaction = {"id": str(ix.id), "type": ix.type, "channel_id": str(ix.channel_id),
                   "guild_id": str(fake.guild_id)}
    out: dict = {"interaction": interaction}
    if message is not None:
        interaction.update({"response_message_id": str(message.id),
                            "response_message_loading": bool(message.flags & LOADING),
                            "response_message_ephemeral": bool(message.flags & EPHEMERAL)})
    if cb_type in (4, 7):  # the spec's resource variants: CreateMessage (4), UpdateMessage (7), activity
        out["resource"] = {"type": cb_type, "message": message.to_json(fake)}
    return out


# -- webhook routes (interaction token) ------------------------------------------------
@routes.route("POST", "/webhooks/{app_id}/{token}", auth=False)
async def execute_webhook(fake: FakeDiscord, req: Req):
    ix = _interaction_for_token(fake, req)
    if not ix.callbacks:
        fake.record_violation(f"followup for interaction {ix.id} ({ix.name}) before any callback")
        raise DiscordError(404, 10015, "Unknown Webhook")
    original = ix.original
    if original is not None and original.loading and not original.deleted:
        # the first followup after a type-5 defer replaces the thinking message
        apply_body(fake, original, {**req.json, "flags": None}, req.body.files, edit=True)
        message = original
        fake._dispatch_message("MESSAGE_UPDATE", message)
    else:
        message = create_message(fake, ix.channel_id, req.json, req.body.files, allow_ephemeral=True,
                                 **_interaction_fields(fake, ix))
        fake._dispatch_message("MESSAGE_CREATE", message)
    ix.followups.append(message)
    if not truthy(req.query.get("wait")):
        return no_content()
    return json_response(message.to_json(fake))


def _webhook_message(fake: FakeDiscord, req: Req) -> tuple[Interaction, Message]:
    ix = _interaction_for_token(fake, req)
    mid = req.params.get("message_id")
    if mid is None:  # @original
        msg = ix.original
    else:
        msg = fake.messages.get(int(mid))
        if msg is not None and msg.interaction_token != ix.token and msg is not ix.original:
            msg = None
    if msg is None or msg.deleted:
        raise unknown_message()
    return ix, msg


async def _get(fake: FakeDiscord, req: Req):
    return json_response(_webhook_message(fake, req)[1].to_json(fake))


async def _patch(fake: FakeDiscord, req: Req):
    _, msg = _webhook_message(fake, req)
    apply_body(fake, msg, req.json, req.body.files, edit=True)
    fake._dispatch_message("MESSAGE_UPDATE", msg)
    return json_response(msg.to_json(fake))


async def _delete(fake: FakeDiscord, req: Req):
    _, msg = _webhook_message(fake, req)
    fake._mark_deleted(msg, by_user=False)
    return no_content()


for _path in ("/webhooks/{app_id}/{token}/messages/@original",
              "/webhooks/{app_id}/{token}/messages/{message_id}"):
    routes.route("GET", _path, auth=False)(_get)
    routes.route("PATCH", _path, auth=False)(_patch)
    routes.route("DELETE", _path, auth=False)(_delete)
