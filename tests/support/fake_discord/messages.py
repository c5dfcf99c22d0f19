"""Creating and editing messages (Discord's rules), and the bot-token channel routes.

Why shared: channel messages, interaction responses and webhook followups all
create/edit messages with the same rules, which the bot must get right:
* v10 edit semantics for ``attachments``: when the list is present, only existing
  attachments whose ``id`` is listed survive; entries whose ``id`` is a file index
  ``n`` take the upload ``files[n]``; when absent, existing ones are kept and new
  uploads appended.
* an empty message (no content, embeds, attachments, components) is 400 50006;
  uploads over ``attachment_size_limit`` are 413 40005; duplicate ``custom_id`` 50035.
* ``attachment://name`` in embed image/thumbnail URLs resolves to the upload.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

from .models import DEFAULT, EPHEMERAL, LOADING, REPLY, Message, make_attachment, walk_components
from .router import Req, RouteTable
from .wire import DiscordError, Upload, invalid_form_body, json_response, no_content, unknown_message

if TYPE_CHECKING:  # pragma: no cover
    from .fake import FakeDiscord

SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_VOICE_MESSAGE = 1 << 13
IS_COMPONENTS_V2 = 1 << 15
CREATE_FLAGS = SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | IS_VOICE_MESSAGE | IS_COMPONENTS_V2
EDIT_FLAGS = SUPPRESS_EMBEDS | IS_COMPONENTS_V2

routes = RouteTable()


def create_message(fake: FakeDiscord, channel_id: int, body: dict, uploads: list, *,
                   author_id: int | None = None, allow_ephemeral: bool = False,
                   **fields) -> Message:
    """Validate ``body`` like Discord and store a new message (not yet dispatched)."""
    msg = Message(id=0, channel_id=channel_id, author_id=author_id or fake.application_id, **fields)
    flags = int(body.get("flags") or 0)
    msg.flags |= flags & CREATE_FLAGS & (~0 if allow_ephemeral else ~EPHEMERAL)
    reference = body.get("message_reference")
    if reference:
        ref_id = int(reference.get("message_id") or 0)
        ref_channel = int(reference.get("channel_id") or channel_id)
        target = fake.messages.get(ref_id)
        if target is None or target.deleted or target.channel_id != ref_channel:
            if reference.get("fail_if_not_exists", True):
                raise invalid_form_body("Unknown message", "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE")
        else:
            msg.message_reference = {"type": reference.get("type", 0), "message_id": str(ref_id),
                                     "channel_id": str(ref_channel)}
            if target.channel_id in fake.channels and fake.channels[target.channel_id].get("guild_id"):
                msg.message_reference["guild_id"] = str(fake.guild_id)
            msg.referenced_message_id = ref_id
            if msg.type == DEFAULT:
                msg.type = REPLY
    msg.tts = bool(body.get("tts"))
    apply_body(fake, msg, body, uploads, edit=False)
    msg.id = fake.snowflake()
    fake.messages[msg.id] = msg
    msg.history.append(msg.snapshot())
    return msg


def apply_body(fake: FakeDiscord, msg: Message, body: dict, uploads: list, *, edit: bool) -> None:
    """Apply a create/edit body to ``msg``; raises DiscordError before changing anything."""
    if len(uploads) > 10:
        raise invalid_form_body("Must be 10 or fewer in length.", "files")
    if sum(len(u.data) for u in uploads) > fake.attachment_size_limit:
        raise DiscordError(413, 40005, "Request entity too large")
    content = msg.content if "content" not in body else (body["content"] or "")
    embeds = msg.embeds if "embeds" not in body else copy.deepcopy(body["embeds"] or [])
    components = msg.components if "components" not in body else copy.deepcopy(body["components"] or [])
    attachments = _attachments(fake, msg, body, uploads, edit)
    embeds = [_resolve_embed(fake, e, attachments) for e in embeds]
    if not (content or embeds or attachments or components or body.get("poll") or body.get("sticker_ids")):
        raise DiscordError(400, 50006, "Cannot send an empty message")
    seen: set = set()
    for comp in walk_components(components):
        cid = comp.get("custom_id")
        if cid is not None:
            if cid in seen:
                raise invalid_form_body("Component custom id cannot be duplicated", "components")
            seen.add(cid)
    if "components" in body:
        _number_components(components)
    msg.content, msg.embeds, msg.components, msg.attachments = content, embeds, components, attachments
    if "allowed_mentions" in body:
        msg.allowed_mentions = body["allowed_mentions"]
    if edit:
        if body.get("flags") is not None:
            msg.flags = (msg.flags & ~EDIT_FLAGS) | (int(body["flags"]) & EDIT_FLAGS)
        msg.flags &= ~LOADING  # the first edit of a deferred "thinking" message replaces it
        msg.edits += 1
        msg.edited_at = time.time()
        msg.history.append(msg.snapshot())


def _number_components(components: list) -> None:
    """Discord gives every component without one a numeric ``id`` (1, 2, ... in order)."""
    used = {c["id"] for c in walk_components(components) if isinstance(c.get("id"), int)}
    next_id = 0
    for comp in walk_components(components):
        if comp.get("id") is None:
            next_id += 1
            while next_id in used:
                next_id += 1
            comp["id"] = next_id


def _attachments(fake: FakeDiscord, msg: Message, body: dict, uploads: list, edit: bool) -> list:
    by_index = {u.index: u for u in uploads}
    existing = {a["id"]: a for a in msg.attachments} if edit else {}
    listed = body.get("attachments")
    if listed is None:
        return list(existing.values()) + [_new_attachment(fake, msg.channel_id, u, {}) for u in uploads]
    result, used = [], set()
    for pos, entry in enumerate(listed):
        aid = int(entry.get("id"))
        if aid in existing:
            result.append(existing[aid])
        elif aid in by_index:
            result.append(_new_attachment(fake, msg.channel_id, by_index[aid], entry))
            used.add(aid)
        else:
            raise invalid_form_body(f"Unknown attachment id {aid} (no existing attachment and no "
                                    f"files[{aid}] part)", f"attachments.{pos}.id")
    leftovers = [u for u in uploads if u.index not in used]
    if leftovers:
        fake.record_violation(
            f"files {[u.filename for u in leftovers]} were uploaded but not listed in `attachments` "
            f"(API v10 requires listing every attachment that should be present)")
        result += [_new_attachment(fake, msg.channel_id, u, {}) for u in leftovers]
    return result


def _new_attachment(fake: FakeDiscord, channel_id: int, upload: Upload, entry: dict) -> dict:
    att_id = fake.snowflake()
    filename = entry.get("filename") or upload.filename
    att = make_attachment(att_id, filename, upload.data, upload.content_type,
                          f"/attachments/{channel_id}/{att_id}", entry.get("description"))
    fake.attachments[att_id] = att
    return att


def _resolve_embed(fake: FakeDiscord, embed: dict, attachments: list) -> dict:
    embed = dict(embed)
    embed.setdefault("type", "rich")
    for key in ("image", "thumbnail"):
        media = embed.get(key)
        if isinstance(media, dict) and str(media.get("url", "")).startswith("attachment://"):
            name = media["url"][len("attachment://"):]
            att = next((a for a in attachments if a["filename"] == name), None)
            if att is None:
                fake.record_violation(f"embed {key} refers to attachment://{name} but no such file is attached")
            else:
                url = fake.http_base + att["url_path"]
                embed[key] = {**media, "url": url, "proxy_url": url}
    return embed


# -- bot-token channel routes ---------------------------------------------------------
def _channel(fake: FakeDiscord, req: Req) -> int:
    cid = int(req.params["channel_id"])
    if cid not in fake.channels:
        raise DiscordError(404, 10003, "Unknown Channel")
    return cid


def _message(fake: FakeDiscord, req: Req, cid: int) -> Message:
    msg = fake.messages.get(int(req.params["message_id"]))
    if msg is None or msg.deleted or msg.channel_id != cid or msg.ephemeral:
        raise unknown_message()
    return msg


@routes.route("POST", "/channels/{channel_id}/messages")
async def post_channel_message(fake: FakeDiscord, req: Req):
    cid = _channel(fake, req)
    msg = create_message(fake, cid, req.json, req.body.files)
    fake._dispatch_message("MESSAGE_CREATE", msg)
    return json_response(msg.to_json(fake))


@routes.route("GET", "/channels/{channel_id}/messages")
async def get_channel_messages(fake: FakeDiscord, req: Req):
    cid = _channel(fake, req)
    msgs = [m for m in fake.channel_messages(cid) if not m.ephemeral]
    for key, keep in (("before", lambda m, x: m.id < x), ("after", lambda m, x: m.id > x)):
        if key in req.query:
            msgs = [m for m in msgs if keep(m, int(req.query[key]))]
    limit = int(req.query.get("limit", 50))
    msgs = msgs[:limit] if "after" in req.query else msgs[-limit:]
    return json_response([m.to_json(fake) for m in reversed(msgs)])


@routes.route("GET", "/channels/{channel_id}/messages/{message_id}")
async def get_channel_message(fake: FakeDiscord, req: Req):
    return json_response(_message(fake, req, _channel(fake, req)).to_json(fake))


@routes.route("PATCH", "/channels/{channel_id}/messages/{message_id}")
async def patch_channel_message(fake: FakeDiscord, req: Req):
    msg = _message(fake, req, _channel(fake, req))
    if msg.author_id != fake.application_id:
        raise DiscordError(403, 50005, "Cannot edit a message authored by another user")
    apply_body(fake, msg, req.json, req.body.files, edit=True)
    fake._dispatch_message("MESSAGE_UPDATE", msg)
    return json_response(msg.to_json(fake))


@routes.route("DELETE", "/channels/{channel_id}/messages/{message_id}")
async def delete_channel_message(fake: FakeDiscord, req: Req):
    msg = _message(fake, req, _channel(fake, req))
    fake._mark_deleted(msg, by_user=False)
    return no_content()


@routes.route("POST", "/channels/{channel_id}/typing")
async def trigger_typing(fake: FakeDiscord, req: Req):
    fake.typing.append(_channel(fake, req))
    return no_content()
