"""The bot's small HTTP endpoint: files too big for Discord, behind signed, expiring links.

A rank-64 LoRA is ~318 MB while a bot may upload 10 MiB, so checkpoint messages link here.
Links are ``/files/<payload>.<signature>/<name>``: the payload names a file inside DATA_DIR, the
file's version (inode, size and mtime: a link dies when its file is replaced, e.g. under a re-used
LoRA id) and an expiry; the HMAC-SHA256 signature (key in DATA_DIR/link-secret, owner-only) makes
them unforgeable. Bound to loopback by default; set HTTP_HOST/PUBLIC_URL to expose it, so the
server assumes hostile clients: malformed tokens are a 404, a connection must finish its request
headers within HEADER_TIMEOUT (slowloris), and at most MAX_CONNECTIONS are open at once (each one
holds a file descriptor the bot's own sockets need).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)

KEY_FILE = "link-secret"
MIN_KEY_BYTES = 32
MAX_CONNECTIONS = 64
# aiohttp's keep-alive timer starts when a connection opens and closes it if no complete request has
# arrived by then (slowly dribbled headers don't reset it); between requests it is the idle timeout.
# A download in progress is never cut by it.
HEADER_TIMEOUT = 15.0
# payload.signature: URL-safe base64 only (a 24-byte signature is 32 characters), checked before any
# decoding or comparison, so odd bytes in a URL are a plain 404 and never an exception.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{32}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(data_dir: Path) -> bytes:
    """The signing key, created once with owner-only permissions.

    A key file that is empty or shorter than MIN_KEY_BYTES (a crash between creating and writing it
    left it so) is replaced, with a warning: a short HMAC key would make links forgeable. Links signed
    with the old key stop working."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        key = None
    if key is not None and len(key) >= MIN_KEY_BYTES:
        return key
    if key is not None:
        log.warning("%s holds a %d-byte key (fewer than %d): writing a new one; earlier file links stop working",
                    path, len(key), MIN_KEY_BYTES)
    key = secrets.token_hex(32).encode()
    _write_private(path, key)
    return key


def _write_private(path: Path, data: bytes) -> None:
    """Atomically: a 0600 temp file beside `path`, fsynced, renamed over it; a crash leaves old or new, never half."""
    descriptor, scratch = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


def _version(path: Path) -> str:
    """The file's identity: a replaced file (new inode, size or mtime) gets another version."""
    info = path.stat()
    return _b64(hashlib.sha256(f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}".encode()).digest()[:9])


class LinkSigner:
    def __init__(self, secret: bytes, root: Path, base_url: str, ttl: float):
        self.secret, self.root, self.base_url, self.ttl = secret, root.resolve(), base_url.rstrip("/"), ttl

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()[:24])

    def link(self, path: Path) -> str:
        path = path.resolve()
        relative = path.relative_to(self.root)  # raises for files outside DATA_DIR
        grant = {"p": str(relative), "v": _version(path), "e": int(time.time() + self.ttl)}
        payload = _b64(json.dumps(grant).encode())
        return f"{self.base_url}/files/{payload}.{self._signature(payload)}/{path.name}"

    def resolve(self, token: str) -> Path | None:
        """The file a token grants, or None for a malformed token, a bad signature, an expired link, or a
        file that is missing or was replaced since the link was made."""
        if not _TOKEN.fullmatch(token):
            return None
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(signature.encode(), self._signature(payload).encode()):
            return None
        try:  # signed by us, so well-formed; checked anyway
            grant = json.loads(_unb64(payload))
            path, version, expiry = (self.root / grant["p"]).resolve(), grant["v"], grant["e"]
        except (ValueError, KeyError, TypeError):
            return None
        if expiry < time.time() or not path.is_relative_to(self.root) or not path.is_file():
            return None
        try:
            return path if hmac.compare_digest(version.encode(), _version(path).encode()) else None
        except OSError:  # gone in between
            return None


class _Counted(asyncio.Protocol):
    """One connection: handed to aiohttp's handler while fewer than MAX_CONNECTIONS are open, else closed at once."""

    def __init__(self, server: FilesServer):
        self.server = server
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        runner = self.server._runner
        factory = runner.server if runner is not None else None  # aiohttp's protocol factory (its low-level server)
        if self.server.connections >= MAX_CONNECTIONS or factory is None:
            transport.close()
            return
        self.server.connections += 1
        self.inner = factory()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.server.connections -= 1
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


class FilesServer:
    def __init__(self, signer: LinkSigner, host: str, port: int, routes: Iterable[web.RouteDef] = ()):
        self.signer, self.host, self.port = signer, host, port
        self.routes = list(routes)  # more GET routes on the same listener: /healthz, /readyz, /metrics (bot/health.py)
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=4096)  # GET only: no request bodies
        app.router.add_get("/files/{token}/{name}", self._serve)
        app.router.add_get("/health", _health)
        app.add_routes(self.routes)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=HEADER_TIMEOUT)
        await self._runner.setup()
        # Our own listener around aiohttp's protocol factory, so that open connections can be counted.
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: _Counted(self), self.host, self.port, backlog=MAX_CONNECTIONS)
        log.info("file links served on %s:%s", self.host, self.port)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = self.signer.resolve(request.match_info["token"])
        if path is None:
            raise web.HTTPNotFound(text="This link is invalid or has expired.")
        # FileResponse streams from disk without blocking the event loop.
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})

    async def stop(self) -> None:
        if self._listener:
            self._listener.close()
        if self._runner:
            await self._runner.cleanup()  # closes the open connections too
        if self._listener:
            await self._listener.wait_closed()
