"""Small helpers for end-to-end tests: find the bot's replies in the fake's state."""

from __future__ import annotations

import io
import re

from PIL import Image

from gpu.png import read_png_text

JOB_ID = re.compile(r"[Jj]ob #(\d+)|任务 #(\d+)")  # a job's messages are in its requester's language (en, zh-CN)


def pngs(message) -> list[bytes]:
    return [a["data"] for a in message.attachments if a["filename"].endswith(".png")]


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def png_text(png: bytes) -> dict[str, str]:
    return read_png_text(png)


def job_id_of(message) -> int:
    found = JOB_ID.search(message.content or "")
    assert found, f"no job number in {message.content!r}"
    return int(found.group(1) or found.group(2))


def result_messages(fake, job_id: int) -> list:
    """Live messages that carry the PNGs of a job, wherever they were posted."""
    return [m for m in fake.messages.values()
            if not m.deleted and pngs(m) and re.search(rf"(?:[Jj]ob|任务) #{job_id}\b", m.content or "")]


async def wait_result(fake, job_id: int, timeout: float = 90, count: int = 1) -> list:
    await fake.wait_for(lambda: sum(len(pngs(m)) for m in result_messages(fake, job_id)) >= count,
                        timeout=timeout, what=f"{count} images of job #{job_id}")
    return result_messages(fake, job_id)


async def queued_job(ix, timeout: float = 30) -> int:
    """The job number shown in the deferred reply of a slash command or button."""
    message = await ix.wait_original(lambda m: not m.loading and JOB_ID.search(m.content or ""), timeout=timeout)
    return job_id_of(message)


def contents(message) -> list[str]:
    return [version["content"] for version in message.history] + [message.content]


def refusal_text(ix) -> str | None:
    """What a refused /imagine told its member privately, or None (not refused, or not yet): an ephemeral reply as
    the first answer, or, after the public "thinking…", that message deleted and an ephemeral follow-up."""
    if not ix.callbacks:
        return None
    first = ix.callbacks[0]
    if first.get("type") == 4:
        data = first.get("data") or {}
        return data.get("content") if int(data.get("flags") or 0) & 64 else None
    if ix.original is None or not ix.original.deleted:
        return None
    private = [m for m in ix.followups if m.ephemeral and not m.deleted]
    return private[0].content if private else None


async def wait_refusal(ix, timeout: float = 10) -> str:
    return await ix.fake.wait_for(lambda: refusal_text(ix), timeout=timeout, what=f"a private refusal of {ix.id}")


def queued_job_now(ix) -> int | None:
    """The job number the interaction's message shows now, or None."""
    message = ix.original
    if message is None or message.loading or message.deleted:
        return None
    found = JOB_ID.search(message.content or "")
    return int(found.group(1) or found.group(2)) if found else None
