"""Error codes on the wire, and the one exception base the worker maps to them by type.

The worker never recognises an error by its class name: anything a user can act on subclasses
:class:`UserError` and carries its code; everything else is ``internal`` (or ``out_of_memory``).
The bot turns codes into messages in one place (bot/jobs/outcomes.py).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    CANCELLED = "cancelled"
    BAD_REQUEST = "bad_request"  # the request itself was malformed (a bug or a version skew)
    PROMPT_TOO_LONG = "prompt_too_long"
    OUT_OF_MEMORY = "out_of_memory"
    BUSY = "busy"  # the worker cannot take this now (a training is already running): wait and retry
    LORA = "lora"  # a LoRA could not be used; the message says why
    TRAINING = "training"  # a training could not start or go on (dataset, config, checkpoint); the message says why
    TRAINING_ADAPTER = "training_adapter"  # TRAINING_ADAPTER could not be fetched or does not fit; the message says why
    UNSUPPORTED = "unsupported"  # this worker cannot do it (training on a quantized worker)
    VERSION_MISMATCH = "version_mismatch"
    UNAUTHORIZED = "unauthorized"  # a TCP client without the worker's WORKER_TOKEN
    INTERNAL = "internal"

    @classmethod
    def parse(cls, raw: object) -> ErrorCode:
        try:
            return cls(str(raw))
        except ValueError:
            return cls.INTERNAL  # a newer worker's code: still an error, shown generically


class ProtocolError(Exception):
    """The peer sent something this protocol version does not understand."""


class UserError(Exception):
    """A worker-side error whose message a user may read as it is (no internals, no paths)."""

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, code: ErrorCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class Cancelled(UserError):
    """A request stopped because it was cancelled (by the user, a moderator, or the bot going away)."""

    code = ErrorCode.CANCELLED

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)
