"""Fetch a member-supplied archive link (`/train ... url:`) without letting it reach internal hosts.

Rules, checked for the first URL and again for every redirect hop (followed by hand, at most 5):
- https only, no user:password@ in the URL;
- the host is resolved once per hop and EVERY address must be public: loopback, private,
  link-local (so 169.254.169.254, the cloud metadata service), multicast, reserved, unspecified,
  CGNAT 100.64/10, IPv6 ULA/link-local/site-local, and IPv6 forms embedding such an IPv4
  (IPv4-mapped ::ffff:a.b.c.d, 6to4, NAT64 64:ff9b::/96) are refused;
- the request then goes to the validated IP itself (the URL's host is replaced by the address, the
  Host header and TLS SNI/certificate check keep the real name), so a second DNS answer can't swap
  in another address (DNS rebinding), whichever aiohttp session is used;
- the size cap is checked on Content-Length, then counted while streaming; the data goes to a
  temporary file beside `dest` that is renamed to `dest` on success and removed on any failure.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
from yarl import URL

from ..i18n import Text

__all__ = ["MAX_REDIRECTS", "DownloadError", "download_zip", "is_public_address"]

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], "Awaitable[Iterable[str | IPAddress]] | Iterable[str | IPAddress]"]
# allow_private: False, True, or fn(hop, address) -> bool with hop 0 for the URL given, 1.. for redirects.
PrivatePolicy = bool | Callable[[int, IPAddress], bool]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: last 32 bits are the IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215): refused
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class DownloadError(Exception):
    """The download was refused or failed; str(error) is a user-facing message."""


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (see the module docstring)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        if ip.ipv4_mapped is not None or ip in _NAT64:  # the connection really goes to the embedded IPv4
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.is_site_local:
            return False
    if ip in _METADATA or (ip.version == 4 and ip in _CGNAT):
        return False
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return ip.is_global


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if int(ip) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated; also :: and ::1)
        return ipaddress.IPv4Address(int(ip))
    return None


async def download_zip(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    session: aiohttp.ClientSession | None = None,
    resolver: Resolver | None = None,
    allow_private: PrivatePolicy = False,
    timeout: float = 120,
) -> int:
    """Download `url` to `dest` and return the number of bytes written; raise DownloadError.

    `resolver(host, port)` returns the host's addresses (sync or async); default: the system's
    getaddrinfo. It is called once per hop, and the connection goes to the address it validated.

    `allow_private` is FOR TESTS ONLY (serving from a local 127.0.0.1 server); never pass it from
    the bot. True permits loopback addresses (127.0.0.0/8, ::1) on every hop; a callable
    `(hop, address) -> bool` decides per hop (hop 0 is `url`, 1..5 the redirects), e.g.
    `lambda hop, ip: hop == 0` lets the first request reach 127.0.0.1 but not a redirect. It never
    permits any other non-public address (10/8, 169.254.169.254, ...). The http scheme is accepted
    only for a hop whose addresses are all such permitted loopback addresses.
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
    try:
        async with asyncio.timeout(timeout):
            written = await _fetch(url, tmp, max_bytes, session, resolver or _system_resolver, allow_private, timeout)
        os.replace(tmp, dest)
        return written
    except TimeoutError:
        raise DownloadError(Text("download.timeout", seconds=timeout)) from None
    except aiohttp.ClientSSLError:
        raise DownloadError(Text("download.tls")) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise DownloadError(Text("download.failed", error=type(exc).__name__)) from None
    finally:
        tmp.unlink(missing_ok=True)
        if own_session:
            await session.close()


async def _fetch(
    url: str,
    tmp: Path,
    max_bytes: int,
    session: aiohttp.ClientSession,
    resolver: Resolver,
    policy: PrivatePolicy,
    timeout: float,
) -> int:
    try:
        current = URL(url)
    except (ValueError, TypeError):
        raise DownloadError(Text("download.invalid")) from None
    for hop in range(MAX_REDIRECTS + 1):
        addresses = await _validate(current, hop, resolver, policy)
        async with await _request(session, current, addresses, timeout) as resp:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise DownloadError(Text("download.redirect_no_target"))
                try:
                    current = current.join(URL(location))
                except (ValueError, TypeError):
                    raise DownloadError(Text("download.redirect_invalid")) from None
                continue
            if resp.status != 200:
                raise DownloadError(Text("download.http_status", status=resp.status))
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise DownloadError(Text("download.too_big", size=_size(resp.content_length), limit=_size(max_bytes)))
            return await _stream(resp, tmp, max_bytes)
    raise DownloadError(Text("download.redirects", count=MAX_REDIRECTS))


async def _validate(url: URL, hop: int, resolver: Resolver, policy: PrivatePolicy) -> list[IPAddress]:
    """The addresses to connect to for `url`, all checked; raises DownloadError."""
    where = Text("download.where_link") if hop == 0 else Text("download.where_redirect")
    scheme = (url.scheme or "").lower()
    if scheme not in ("https", "http") or (scheme == "http" and not policy):
        raise DownloadError(Text("download.https") if hop == 0 else Text("download.redirect_http"))
    if url.user is not None or url.password is not None:
        raise DownloadError(Text("download.credentials", where=where))
    host = (url.raw_host or "").rstrip(".").lower()
    if not host:
        raise DownloadError(Text("download.no_host"))
    if (host == "localhost" or host.endswith(".localhost")) and not policy:
        raise DownloadError(Text("download.this_machine", where=where))
    port = url.port or (443 if scheme == "https" else 80)

    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            answer = resolver(host, port)
            if inspect.isawaitable(answer):
                answer = await answer
            addresses = [ipaddress.ip_address(str(a)) for a in answer]
        except (OSError, LookupError, ValueError, socket.gaierror):
            addresses = []
        if not addresses:
            raise DownloadError(Text("download.unknown_host"))

    for address in addresses:
        if is_public_address(address) or _permitted(policy, hop, address):
            continue
        if address in _METADATA:
            raise DownloadError(Text("download.metadata", where=where))
        if address.is_loopback or (isinstance(address, ipaddress.IPv6Address) and _is_mapped_loopback(address)):
            raise DownloadError(Text("download.this_machine", where=where))
        raise DownloadError(Text("download.private", where=where))
    if scheme == "http" and not all(_permitted(policy, hop, a) for a in addresses):
        raise DownloadError(Text("download.https") if hop == 0 else Text("download.redirect_http"))
    return addresses


def _permitted(policy: PrivatePolicy, hop: int, address: IPAddress) -> bool:
    if not address.is_loopback or not policy:
        return False
    return True if policy is True else bool(policy(hop, address))


def _is_mapped_loopback(address: ipaddress.IPv6Address) -> bool:
    return address.ipv4_mapped is not None and address.ipv4_mapped.is_loopback


async def _request(session: aiohttp.ClientSession, url: URL, addresses: list[IPAddress], timeout: float):
    """GET `url` on the first address that accepts a connection (the host in the URL is replaced by it)."""
    host = url.raw_host or ""  # _validate() refused a link without one
    host_header = f"[{host}]" if ":" in host else host
    if not url.is_default_port():
        host_header = f"{host_header}:{url.port}"
    headers = {"Host": host_header, "Accept-Encoding": "identity", "User-Agent": "zimage-bot (training upload)"}
    last: Exception | None = None
    for address in addresses:
        pinned = url.with_user(None).with_fragment(None).with_host(str(address))
        try:
            return await session.get(
                pinned,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                server_hostname=url.raw_host if url.scheme.lower() == "https" else None,  # None: aiohttp's default
            )
        except aiohttp.ClientSSLError:
            raise
        except aiohttp.ClientConnectorError as exc:  # try the next address (e.g. broken IPv6)
            last = exc
    assert last is not None
    raise last


async def _stream(resp: aiohttp.ClientResponse, tmp: Path, max_bytes: int) -> int:
    written = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        async for chunk in resp.content.iter_chunked(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise DownloadError(Text("download.over_limit", limit=_size(max_bytes)))
            fh.write(chunk)
    return written


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]  # an IPv4 or IPv6 sockaddr: (host, port, ...)


def _size(n: int) -> str:
    mib = 1024 * 1024
    if n >= mib:
        return f"{n / mib:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"
