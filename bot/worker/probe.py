"""`python -m bot check`: connect to one listed worker exactly as the bot will, and say how it went in one line."""

from __future__ import annotations

from zimage_protocol.endpoints import Endpoint
from zimage_protocol.security import WireSecurity

from .client import WorkerClient, WorkerUnavailable

PROBE_TIMEOUT = 15.0


async def probe_worker(endpoint: Endpoint, security: WireSecurity, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    client = WorkerClient(endpoint, security)
    client.start()
    try:
        await client.wait_connected(timeout)
        hello = client.hello
        assert hello is not None
        return True, f"{endpoint}: worker pid {hello.pid} ({hello.model} on {hello.device}), protocol and token accepted"
    except WorkerUnavailable as exc:
        reason = str(exc) if "refused" in str(exc) else f"nothing answers in {timeout:.0f} s"
        return False, f"{endpoint}: {reason}"
    finally:
        await client.close()
