"""The bot's small HTTP endpoint: files too big for Discord, behind signed, expiring links.

A rank-64 LoRA is ~318 MB while a bot may upload 10 MiB, so checkpoint messages link here.
Links are ``/files/<payload>.<signature>``: the payload names a file inside DATA_DIR and an
expiry; the HMAC-SHA256 signature (key in DATA_DIR/link-secret, owner-only) makes them
unforgeable. Bound to loopback by default; set HTTP_HOST/PUBLIC_URL to expose it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(data_dir: Path) -> bytes:
    """The signing key, created once with owner-only permissions."""
    path = data_dir / "link-secret"
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class LinkSigner:
    def __init__(self, secret: bytes, root: Path, base_url: str, ttl: float):
        self.secret, self.root, self.base_url, self.ttl = secret, root.resolve(), base_url.rstrip("/"), ttl

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()[:24])

    def link(self, path: Path) -> str:
        relative = path.resolve().relative_to(self.root)  # raises for files outside DATA_DIR
        payload = _b64(json.dumps({"p": str(relative), "e": int(time.time() + self.ttl)}).encode())
        return f"{self.base_url}/files/{payload}.{self._signature(payload)}/{path.name}"

    def resolve(self, token: str) -> Path | None:
        """The file a token grants, or None for a bad signature, an expired link or a missing file."""
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(signature, self._signature(payload)):
            return None
        try:
            grant = json.loads(_unb64(payload))
        except ValueError:
            return None
        if grant.get("e", 0) < time.time():
            return None
        path = (self.root / grant["p"]).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path


class FilesServer:
    def __init__(self, signer: LinkSigner, host: str, port: int):
        self.signer, self.host, self.port = signer, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/files/{token}/{name}", self._serve)
        app.router.add_get("/health", lambda request: web.json_response({"ok": True}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("file links served on %s:%s", self.host, self.port)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = self.signer.resolve(request.match_info["token"])
        if path is None:
            raise web.HTTPNotFound(text="This link is invalid or has expired.")
        # FileResponse streams from disk without blocking the event loop.
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
