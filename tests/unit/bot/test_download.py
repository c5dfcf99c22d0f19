"""bot.training.download: SSRF guards (fake resolver, no real DNS) and a local aiohttp server."""

from __future__ import annotations

import asyncio
import ipaddress
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bot.training.download import DownloadError, download_zip, is_public_address

PUBLIC = "93.184.215.14"
DNS = {
    "example.com": [PUBLIC],
    "localhost": ["127.0.0.1"],
    "internal.test": ["10.0.0.8"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.3.4"],
    "ula.test": ["fd12:3456::1"],
    "mapped.test": ["::ffff:192.168.1.1"],
    "mixed.test": [PUBLIC, "10.0.0.1"],  # one bad answer is enough to refuse
    "files.test": ["127.0.0.1"],
}
PAYLOAD = b"PK\x05\x06" + bytes(18)  # an empty zip


def fake_resolver(host: str, port: int) -> list[str]:
    return DNS[host]


async def fetch(url: str, dest, **kwargs) -> int:
    kwargs.setdefault("resolver", fake_resolver)
    kwargs.setdefault("max_bytes", 1 << 20)
    return await download_zip(url, dest, **kwargs)


@pytest_asyncio.fixture
async def server():
    hosts: list[str] = []
    app = web.Application()
    state = SimpleNamespace(hosts=hosts, base="", port=0)

    async def file(request):
        hosts.append(request.host)
        return web.Response(body=PAYLOAD, content_type="application/zip")

    def redirect(target):
        async def handler(request):
            raise web.HTTPFound(target() if callable(target) else target)

        return handler

    async def stream(request):
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(40):
                await resp.write(bytes(64 * 1024))
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def declared(request):
        return web.Response(body=bytes(5000))

    async def slow(request):
        await asyncio.sleep(2)
        return web.Response(body=PAYLOAD)

    async def no_location(request):
        return web.Response(status=302)

    app.router.add_get("/file.zip", file)
    app.router.add_get("/to-loopback", redirect(lambda: f"{state.base}/file.zip"))
    app.router.add_get("/to-relative", redirect("/file.zip"))
    app.router.add_get("/to-private", redirect("https://internal.test/x.zip"))
    app.router.add_get("/to-private-ip", redirect("https://10.1.2.3/x.zip"))
    app.router.add_get("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/"))
    app.router.add_get("/to-mapped", redirect("https://[::ffff:127.0.0.1]/x.zip"))
    app.router.add_get("/to-creds", redirect("https://user:secret@example.com/x.zip"))
    app.router.add_get("/to-file", redirect("file:///etc/passwd"))
    app.router.add_get("/loop", redirect("/loop"))
    app.router.add_get("/no-location", no_location)
    app.router.add_get("/stream", stream)
    app.router.add_get("/declared", declared)
    app.router.add_get("/slow", slow)

    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{state.port}"
    yield state
    await runner.cleanup()


def assert_nothing_left(dest):
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


# --- refused before any request ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/x.zip", "must use https://"),
        ("ftp://example.com/x.zip", "must use https://"),
        ("file:///etc/passwd", "must use https://"),
        ("https://user:pw@example.com/x.zip", "must not contain a user name or password"),
        ("https://user@example.com/x.zip", "must not contain a user name or password"),
        ("https://localhost/x.zip", "points to this machine"),
        ("https://LOCALHOST./x.zip", "points to this machine"),
        ("https://127.0.0.1/x.zip", "points to this machine"),
        ("https://127.8.9.10:8443/x.zip", "points to this machine"),
        ("https://[::1]/x.zip", "points to this machine"),
        ("https://[::ffff:127.0.0.1]/x.zip", "points to this machine"),
        ("https://[::ffff:7f00:1]/x.zip", "points to this machine"),
        ("https://10.1.2.3/x.zip", "private or local network"),
        ("https://192.168.0.10/x.zip", "private or local network"),
        ("https://172.16.5.4/x.zip", "private or local network"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata service"),
        ("https://169.254.10.10/x.zip", "private or local network"),
        ("https://100.64.0.1/x.zip", "private or local network"),
        ("https://0.0.0.0/x.zip", "private or local network"),
        ("https://224.0.0.1/x.zip", "private or local network"),
        ("https://[fe80::1]/x.zip", "private or local network"),
        ("https://[fd00::1]/x.zip", "private or local network"),
        ("https://[::ffff:10.0.0.1]/x.zip", "private or local network"),
        ("https://[64:ff9b::a9fe:a9fe]/x.zip", "private or local network"),  # NAT64 of 169.254.169.254
        ("https://internal.test/x.zip", "private or local network"),
        ("https://metadata.test/x.zip", "cloud metadata service"),
        ("https://cgnat.test/x.zip", "private or local network"),
        ("https://ula.test/x.zip", "private or local network"),
        ("https://mapped.test/x.zip", "private or local network"),
        ("https://mixed.test/x.zip", "private or local network"),
        ("https://unknown.test/x.zip", "host name could not be found"),
        ("https:///x.zip", "no host name"),
    ],
)
async def test_refused_urls(tmp_path, url, expected):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError) as info:
        await fetch(url, dest)
    assert expected in str(info.value)
    assert_nothing_left(dest)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://10.1.2.3/x.zip", "private or local network"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata service"),
        ("https://[::ffff:127.0.0.1]/x.zip", "points to this machine"),
        ("http://example.com/x.zip", "must use https://"),  # http only for permitted loopback
    ],
)
async def test_allow_private_only_relaxes_loopback(tmp_path, url, expected):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError) as info:
        await fetch(url, dest, allow_private=True)
    assert expected in str(info.value)


def test_is_public_address():
    for good in ("93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert is_public_address(ipaddress.ip_address(good)), good
    for bad in (
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "::1",
        "fd00:ec2::254",
        "2002:a00:1::1",
        "ff02::1",
        "::",
    ):
        assert not is_public_address(ipaddress.ip_address(bad)), bad


@pytest.mark.asyncio
async def test_connects_to_the_validated_ip_with_the_original_host_and_sni(tmp_path):
    calls, resolved = [], []

    class RecordingSession:
        async def get(self, url, **kwargs):
            calls.append((url, kwargs))
            raise aiohttp.ClientPayloadError("stop here")

    async def rebinding_resolver(host, port):  # async resolvers work too; a second answer would be private
        resolved.append((host, port))
        return [PUBLIC] if len(resolved) == 1 else ["127.0.0.1"]

    dest = tmp_path / "upload.zip"
    with pytest.raises(DownloadError, match="download failed"):
        await download_zip(
            "https://Example.com:8443/a/b.zip?sig=1#frag",
            dest,
            max_bytes=10,
            session=RecordingSession(),
            resolver=rebinding_resolver,
        )
    assert resolved == [("example.com", 8443)]
    ((url, kwargs),) = calls
    assert str(url) == f"https://{PUBLIC}:8443/a/b.zip?sig=1"
    assert kwargs["headers"]["Host"] == "example.com:8443"
    assert kwargs["server_hostname"] == "example.com"
    assert kwargs["allow_redirects"] is False
    assert not dest.exists()


# --- local server (allow_private for the loopback hops only) ----------------------------------


@pytest.mark.asyncio
async def test_downloads_a_small_file(server, tmp_path):
    dest = tmp_path / "dl" / "upload.zip"
    assert await fetch(f"{server.base}/file.zip", dest, allow_private=True) == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert list(dest.parent.iterdir()) == [dest]


@pytest.mark.asyncio
async def test_pins_the_connection_to_the_resolved_address(server, tmp_path):
    """files.test exists only in the fake resolver: the request can only work if it goes to that IP."""
    dest = tmp_path / "upload.zip"
    assert await fetch(f"http://files.test:{server.port}/file.zip", dest, allow_private=True) == len(PAYLOAD)
    assert server.hosts == [f"files.test:{server.port}"]


@pytest.mark.asyncio
async def test_follows_a_relative_redirect(server, tmp_path):
    dest = tmp_path / "upload.zip"
    assert await fetch(f"{server.base}/to-relative", dest, allow_private=True) == len(PAYLOAD)


@pytest.mark.asyncio
async def test_redirect_target_is_checked_again(server, tmp_path):
    first_hop_only = lambda hop, ip: hop == 0  # noqa: E731
    dest = tmp_path / "dl" / "upload.zip"
    # the same loopback server is fine on hop 0 and refused once it is a redirect target
    with pytest.raises(DownloadError, match="redirected to an address that points to this machine"):
        await fetch(f"{server.base}/to-loopback", dest, allow_private=first_hop_only)
    assert server.hosts == []
    assert await fetch(f"{server.base}/to-loopback", dest, allow_private=True) == len(PAYLOAD)  # control
    dest.unlink()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/to-private", "redirected to an address that points to a private or local network"),
        ("/to-private-ip", "redirected to an address that points to a private or local network"),
        ("/to-metadata", "redirected to an address that points to the cloud metadata service"),
        ("/to-mapped", "redirected to an address that points to this machine"),
        ("/to-creds", "must not contain a user name or password"),
        ("/to-file", "redirected to a non-https address"),
        ("/loop", "redirected more than 5 times"),
        ("/no-location", "redirect without a target"),
    ],
)
async def test_bad_redirects(server, tmp_path, path, expected):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError) as info:
        await fetch(f"{server.base}{path}", dest, allow_private=True)
    assert expected in str(info.value)
    assert_nothing_left(dest)


@pytest.mark.asyncio
async def test_size_cap_mid_stream_removes_the_partial_file(server, tmp_path):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError, match="larger than the 98 KiB limit"):
        await fetch(f"{server.base}/stream", dest, allow_private=True, max_bytes=100_000)
    assert_nothing_left(dest)


@pytest.mark.asyncio
async def test_content_length_over_the_cap_is_refused(server, tmp_path):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError, match="The file is 5 KiB; the limit is 1000 bytes"):
        await fetch(f"{server.base}/declared", dest, allow_private=True, max_bytes=1000)
    assert_nothing_left(dest)


@pytest.mark.asyncio
async def test_http_errors_and_timeouts(server, tmp_path):
    dest = tmp_path / "dl" / "upload.zip"
    with pytest.raises(DownloadError, match="answered HTTP 404"):
        await fetch(f"{server.base}/missing.zip", dest, allow_private=True)
    with pytest.raises(DownloadError, match="longer than 0.3 seconds"):
        await fetch(f"{server.base}/slow", dest, allow_private=True, timeout=0.3)
    assert_nothing_left(dest)


@pytest.mark.asyncio
async def test_uses_a_caller_session(server, tmp_path):
    dest = tmp_path / "upload.zip"
    async with aiohttp.ClientSession() as session:
        assert await fetch(f"{server.base}/file.zip", dest, allow_private=True, session=session) == len(PAYLOAD)
        assert not session.closed
