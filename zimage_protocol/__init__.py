"""The contract between the bot and its GPU workers, shared by both processes.

Neither ``bot/`` nor ``gpu/`` owns it: the bot imports no torch and the worker imports no
discord.py, but both speak exactly these frames, messages, error codes and settings.

- :mod:`.frames`: the wire format (length-prefixed JSON header + binary blob) and its limits.
- :mod:`.messages`: the versioned conversation, one typed class per message.
- :mod:`.errors`: error codes and :class:`UserError`, the worker's errors a user may read.
- :mod:`.constants`: names and limits both sides must agree on.
- :mod:`.settings`: the environment variables both processes read, parsed once.
- :mod:`.endpoints`: ``unix:/path`` and ``tcp://host:port``, parsed once for ``--listen`` and ``WORKERS``.
- :mod:`.security`: TLS, the shared token and heartbeats of a connection.
- :mod:`.files`: files named by content (sha256) for workers on another host.
"""

from .errors import ErrorCode, ProtocolError, UserError
from .frames import PROTOCOL_VERSION, Frame
from .messages import (
    Accepted,
    Cancel,
    CheckpointReady,
    CountTokens,
    Done,
    Error,
    GenerateParams,
    Health,
    HealthReport,
    Hello,
    ImageReady,
    ImagineRequest,
    Message,
    Op,
    Progress,
    TokenCount,
    TrainParams,
    TrainProgress,
    TrainRequest,
)

__all__ = [
    "PROTOCOL_VERSION", "Accepted", "Cancel", "CheckpointReady", "CountTokens", "Done", "Error", "ErrorCode", "Frame",
    "GenerateParams", "Health", "HealthReport", "Hello", "ImageReady", "ImagineRequest", "Message", "Op", "Progress",
    "ProtocolError", "TokenCount", "TrainParams", "TrainProgress", "TrainRequest", "UserError",
]
