"""Errors users see, mapped in one place.

Commands raise ``UserFacingError`` for bad input; ``tree.on_error`` (bot/client.py) turns it into
an ephemeral reply. Worker error codes become job messages through ``worker_error_message``, and a
job whose worker crashed too often gets ``worker_crashed_message``.
"""

from __future__ import annotations

from zimage_protocol.errors import ErrorCode


class UserFacingError(Exception):
    """A problem the user can fix; the message is shown to them as-is (ephemeral)."""


WORKER_ERROR_MESSAGES = {
    ErrorCode.PROMPT_TOO_LONG: "Your prompt is too long for the model. Please shorten it.",
    ErrorCode.OUT_OF_MEMORY: "The GPU ran out of memory on this request. Try fewer images or a smaller size.",
    ErrorCode.BAD_REQUEST: "The GPU worker refused this request as malformed.",
    ErrorCode.CANCELLED: "Cancelled.",
    ErrorCode.VERSION_MISMATCH: "The GPU worker runs another version of this bot; an admin must update it.",
    ErrorCode.INTERNAL: "The GPU worker failed on this request; the error was logged.",
}
# The worker's UserError messages are written for users (gpu/: AdapterError, TrainerError, DatasetError):
# they are shown as they are, after what they are about.
USER_ERROR_PREFIXES = {
    ErrorCode.LORA: "A LoRA could not be used: ",
    ErrorCode.TRAINING: "Training could not go on: ",
    ErrorCode.UNSUPPORTED: "",
    ErrorCode.BUSY: "The GPU worker is busy: ",
}


def worker_error_message(code: ErrorCode, detail: str) -> str:
    if code in USER_ERROR_PREFIXES:
        return USER_ERROR_PREFIXES[code] + detail[:400]
    return WORKER_ERROR_MESSAGES.get(code, WORKER_ERROR_MESSAGES[ErrorCode.INTERNAL])


def worker_crashed_message(kind: str, attempts: int) -> str:
    """A job whose worker died on every one of its attempts (JOB_MAX_ATTEMPTS)."""
    what = "training this LoRA" if kind == "train" else "making this image"
    times = {1: "once", 2: "twice"}.get(attempts, f"{attempts} times")
    retried = "it was not retried again" if attempts > 1 else "it was not retried (JOB_MAX_ATTEMPTS is 1)"
    return f"The GPU worker crashed while {what}, {times}; {retried}."
