"""Where a worker listens and a bot connects: ``unix:/path`` or ``tcp://host:port``, parsed in one place.

The worker's ``--listen`` and the bot's ``WORKERS`` read the same syntax, so a value that one side
accepts the other accepts too. A bad value is a :class:`SettingsError` that names the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .settings import SettingsError

MAX_UNIX_PATH_BYTES = 100  # sun_path is 104-108 bytes depending on the OS; stay under all of them


@dataclass(frozen=True)
class UnixEndpoint:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"

    @property
    def remote(self) -> bool:
        """Same host: files are passed by path."""
        return False


@dataclass(frozen=True)
class TcpEndpoint:
    host: str
    port: int  # 0 only for a worker's --listen: the OS picks a free port (logged)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def remote(self) -> bool:
        """Another host, maybe: files travel over the connection (zimage_protocol.messages FetchFile)."""
        return True


Endpoint = UnixEndpoint | TcpEndpoint


def parse_endpoint(raw: str, setting: str = "WORKERS", listening: bool = False) -> Endpoint:
    """One endpoint; ``listening`` allows port 0 (any free port)."""
    text = raw.strip()
    if text.startswith("unix:"):
        path = text.removeprefix("unix:").removeprefix("//")
        if not path:
            raise SettingsError(f"{setting}: {raw!r} names no socket path (write unix:/path/to/worker.sock)")
        resolved = Path(path).expanduser().resolve()
        if len(str(resolved).encode()) > MAX_UNIX_PATH_BYTES:
            raise SettingsError(f"{setting}: the socket path {str(resolved)!r} is too long for a unix socket "
                                f"(at most {MAX_UNIX_PATH_BYTES} bytes)")
        return UnixEndpoint(resolved)
    if text.startswith("tcp://"):
        return _parse_tcp(raw, text.removeprefix("tcp://"), setting, listening)
    raise SettingsError(f"{setting}: {raw!r} is not an endpoint; write unix:/path/to/worker.sock or tcp://host:port")


def _parse_tcp(raw: str, rest: str, setting: str, listening: bool) -> TcpEndpoint:
    if rest.startswith("["):  # [::1]:7000
        host, _, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":") if port_text.startswith(":") else "\0"
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            host, port_text = rest, ""
    if not host or "/" in rest or "@" in rest:
        raise SettingsError(f"{setting}: {raw!r} must be tcp://host:port (no path, no user)")
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError(f"{setting}: {raw!r} needs a port number (tcp://host:port)") from None
    lowest = 0 if listening else 1
    if not lowest <= port <= 65535:
        raise SettingsError(f"{setting}: the port in {raw!r} must be between {lowest} and 65535")
    return TcpEndpoint(host, port)


def parse_endpoints(raw: str, setting: str = "WORKERS") -> tuple[Endpoint, ...]:
    """A comma-separated list; each endpoint at most once (two clients on one worker would share its GPU twice)."""
    endpoints = tuple(parse_endpoint(part, setting) for part in raw.split(",") if part.strip())
    seen: set[Endpoint] = set()
    for endpoint in endpoints:
        if endpoint in seen:
            raise SettingsError(f"{setting}: {endpoint} is listed twice")
        seen.add(endpoint)
    return endpoints
