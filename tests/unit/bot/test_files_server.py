"""The signed-link file server (bot/files_server.py) against hostile clients and a damaged key file (issue #18)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat

import aiohttp
import pytest

from bot import files_server
from bot.files_server import FilesServer, LinkSigner, load_secret
from bot_process import free_port

# -- the key --------------------------------------------------------------------------------------------------


def test_the_key_is_created_private_and_kept(tmp_path):
    key = load_secret(tmp_path)
    path = tmp_path / "link-secret"
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link-secret"]  # no temp file left behind


@pytest.mark.parametrize("content", [b"", b"\n", b"short-key", b"a" * 31])
def test_an_empty_or_short_key_is_replaced_and_logged(content, tmp_path, caplog):
    """A crash between creating and writing the file left it empty: an empty HMAC key makes every link forgeable."""
    path = tmp_path / "link-secret"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="bot.files_server"):
        key = load_secret(tmp_path)
    assert len(key) >= 32 and key != content.strip()
    assert path.read_bytes().strip() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "link-secret" in caplog.text


def test_the_key_is_written_atomically(tmp_path, monkeypatch):
    """A crash while writing leaves no half-written key file (the write goes to a temp file renamed into place)."""
    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        load_secret(tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- links ------------------------------------------------------------------------------------------------------


@pytest.fixture
def signer(tmp_path) -> LinkSigner:
    return LinkSigner(b"k" * 64, tmp_path, "http://files.test", ttl=3600)


def token_of(link: str) -> str:
    return link.split("/files/")[1].split("/")[0]


def test_a_link_serves_its_file(signer, tmp_path):
    path = tmp_path / "loras" / "7" / "a.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"one")
    assert signer.resolve(token_of(signer.link(path))) == path.resolve()


def test_a_link_dies_when_its_file_is_replaced(signer, tmp_path):
    """A LoRA id re-used after a delete must not serve the new file under the old link."""
    path = tmp_path / "loras" / "exports" / "7" / "a.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the old LoRA")
    token = token_of(signer.link(path))
    path.unlink()
    path.write_bytes(b"another member's LoRA")
    assert signer.resolve(token) is None


@pytest.mark.parametrize("token", ["", ".", "abc", "abc.", ".abc", "é.é", "eyJ9.\u00e9" * 3, "a.b.c", "\x00.\x00",
                                   "a" * 10_000 + "." + "b" * 32, "eyJwIjogIngifQ.!!!!"])
def test_malformed_tokens_resolve_to_nothing(signer, token):
    assert signer.resolve(token) is None


# -- the server ------------------------------------------------------------------------------------------------


@pytest.fixture
async def server(signer):
    server = FilesServer(signer, "127.0.0.1", free_port())
    await server.start()
    yield server
    await server.stop()


async def test_a_non_ascii_signature_is_a_clean_404(server, signer, tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    payload = token_of(signer.link(path)).split(".")[0]
    async with aiohttp.ClientSession() as session:
        for signature in ("%C3%A9" * 32, "%00", "%FF%FE"):
            async with session.get(f"http://127.0.0.1:{server.port}/files/{payload}.{signature}/a.bin") as response:
                assert response.status == 404
        async with session.get(signer.link(path).replace("http://files.test", f"http://127.0.0.1:{server.port}")) as ok:
            assert ok.status == 200 and await ok.read() == b"x"


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def test_connections_are_capped_and_slow_headers_time_out(signer, monkeypatch):
    """Slowloris: connections that never finish their headers are closed, and no more than the cap are held."""
    monkeypatch.setattr(files_server, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(files_server, "HEADER_TIMEOUT", 1.0)
    server = FilesServer(signer, "127.0.0.1", free_port())
    await server.start()
    try:
        slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for _, writer in slow:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            await writer.drain()
        await asyncio.sleep(0.1)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed_within(extra_reader, 0.5), "a connection over the cap must be closed at once"
        for reader, _ in slow:
            assert await closed_within(reader, 3.0), "a connection with unfinished headers must time out"
        async with aiohttp.ClientSession() as session:  # and the server still serves
            async with session.get(f"http://127.0.0.1:{server.port}/health") as response:
                assert response.status == 200
        for _, writer in [*slow, (None, extra_writer)]:
            writer.close()
    finally:
        await server.stop()
