"""Errors users see, mapped in one place.

Commands raise ``UserFacingError`` for bad input; ``tree.on_error`` (bot/client.py) turns it into
an ephemeral reply. Worker error codes become job messages through ``worker_error_message``.
"""

from __future__ import annotations

from gpu import protocol


class UserFacingError(Exception):
    """A problem the user can fix; the message is shown to them as-is (ephemeral)."""


WORKER_ERROR_MESSAGES = {
    protocol.ERROR_PROMPT_TOO_LONG: "Your prompt is too long for the model. Please shorten it.",
    protocol.ERROR_OUT_OF_MEMORY: "The GPU ran out of memory on this request. Try fewer images or a smaller size.",
    protocol.ERROR_BAD_REQUEST: "The GPU worker refused this request as malformed.",
    protocol.ERROR_CANCELLED: "Cancelled.",
}
WORKER_CRASHED_MESSAGE = "The GPU worker crashed while making this image, twice. The job was not retried again."


def worker_error_message(code: str, detail: str) -> str:
    return WORKER_ERROR_MESSAGES.get(code, f"The GPU worker failed: {detail[:300]}")
