"""TLS, the shared token and heartbeats of a bot <-> worker connection, read by both sides from one place.

Over TCP the worker refuses to start without ``WORKER_TLS_CERT``, ``WORKER_TLS_KEY`` and
``WORKER_TOKEN``; the bot verifies the worker's certificate (the system's CAs, or ``WORKER_TLS_CA``
for a private CA; the hostname is checked) and sends the token in its Hello. A unix socket is
protected by its owner-only permissions and needs none of them.

``WORKER_HEARTBEAT_TIMEOUT``: a connection silent this long is dead. Each side pings every quarter
of it, so a live peer is never silent that long even when it has nothing to say.
"""

from __future__ import annotations

import hmac
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from .settings import Env, SettingsError, read_float

MIN_TOKEN_LENGTH = 16
DEFAULT_HEARTBEAT_TIMEOUT = 8.0
TLS_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class WireSecurity:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    token: str = field(default="", repr=False)
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_timeout / 4

    @classmethod
    def from_env(cls, env: Env) -> WireSecurity:
        def path(name: str) -> Path | None:
            raw = env.get(name, "").strip()
            if not raw:
                return None
            resolved = Path(raw).expanduser().resolve()
            if not resolved.is_file():
                raise SettingsError(f"{name} points at {raw!r}, which is not a file")
            return resolved

        return cls(tls_cert=path("WORKER_TLS_CERT"), tls_key=path("WORKER_TLS_KEY"), tls_ca=path("WORKER_TLS_CA"),
                   token=env.get("WORKER_TOKEN", "").strip(),
                   heartbeat_timeout=read_float(env, "WORKER_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT,
                                                minimum=1.0, maximum=300.0))

    def require_server_tls(self) -> None:
        """A worker listening on TCP: refused outright without a certificate, its key and a token."""
        missing = [name for name, value in (("WORKER_TLS_CERT", self.tls_cert), ("WORKER_TLS_KEY", self.tls_key),
                                             ("WORKER_TOKEN", self.token)) if not value]
        if missing:
            raise SettingsError(f"a worker listens on TCP only with TLS and a token: set {', '.join(missing)} "
                                f"(README: Remote workers)")
        self._check_token_length()

    def require_client_token(self) -> None:
        if not self.token:
            raise SettingsError("WORKERS lists a tcp:// worker: set WORKER_TOKEN to the token that worker was given")
        self._check_token_length()

    def _check_token_length(self) -> None:
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise SettingsError(f"WORKER_TOKEN must be at least {MIN_TOKEN_LENGTH} characters "
                                f"(e.g. `openssl rand -hex 32`)")

    def server_context(self) -> ssl.SSLContext:
        assert self.tls_cert is not None and self.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(f"cannot use WORKER_TLS_CERT/WORKER_TLS_KEY: {exc}") from None
        return context

    def client_context(self) -> ssl.SSLContext:
        """Certificate and hostname checked: against WORKER_TLS_CA when set, else the system's CAs."""
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(f"cannot use WORKER_TLS_CA: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def token_matches(self, offered: str) -> bool:
        return bool(self.token) and hmac.compare_digest(offered.encode(), self.token.encode())


def enable_keepalive(sock: socket.socket | None, timeout: float) -> None:
    """TCP keepalive as a second line under the heartbeats: the kernel gives up on a dead peer too."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(timeout))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, idle // 3)), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux; macOS has only some of them
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
