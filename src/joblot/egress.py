"""Outbound requests to addresses users give (webhook callbacks), safe from request forgery.

A callback URL must be `http` or `https`, and every address its host resolves to must be a
public one: loopback, private, link-local, shared, multicast, reserved and unspecified
addresses are refused, IPv4 and IPv6 alike, including IPv4 addresses carried inside IPv6 ones
(`::ffff:127.0.0.1`, 6to4, NAT64). Submissions are checked when they arrive; deliveries are
checked again as they connect, and connect only to the addresses just checked, so a name that
resolves differently a second time (DNS rebinding) gains nothing. `allow_private` lifts the
address check, for tests and private networks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from joblot.errors import RecordInvalid

MAX_URL_LENGTH = 2048
RESOLVE_SECONDS = 5.0  # a name that takes longer to resolve is refused (or the attempt fails)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # carries an IPv4 address in its last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


class UnsafeDestination(Exception):
    """A URL or address joblot must not send requests to; the text says why."""


def is_public(address: IPAddress) -> bool:
    """True for an address on the public internet, and only then."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address in _IPV4_COMPATIBLE or address in _NAT64_LOCAL:
            return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4 or NAT64."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_syntax(url: Any) -> SplitResult:
    """`url` split into its parts, if it is an absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url:
        raise UnsafeDestination("it must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(f"it is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise UnsafeDestination("it may hold only printable ASCII, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeDestination(f"it is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeDestination("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise UnsafeDestination("it has no host")
    if port == 0:
        raise UnsafeDestination("port 0 cannot be reached")
    return parts


async def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Every address `host` resolves to, once each; UnsafeDestination if any is not public
    (unless `allow_private`) or the name does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS
        )
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise UnsafeDestination(f"its host {host!r} does not resolve ({exc})") from None
    return _addresses(host, found, allow_private=allow_private)


def _addresses(host: str, found: Iterable[Any], *, allow_private: bool) -> list[str]:
    """The addresses of getaddrinfo's answer, once each, checked as `resolve` says."""
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not allow_private:
        refuse_private(host, addresses)
    if not addresses:
        raise UnsafeDestination(f"its host {host!r} resolves to no address")
    return addresses


def refuse_private(host: str, addresses: Iterable[str]) -> None:
    """UnsafeDestination if any of `addresses` (those of `host`) is not a public address."""
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        if not is_public(address):
            raise UnsafeDestination(
                f"its host {host!r} resolves to {address}, which is not a public address"
            )


def _destination(url: Any) -> tuple[str, int]:
    """The host and port a callback URL names, its syntax checked (UnsafeDestination)."""
    parts = check_syntax(url)
    assert parts.hostname is not None  # checked by check_syntax
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def check_callback_url(url: Any, *, allow_private: bool) -> str:
    """`url` if joblot may deliver to it; RecordInvalid naming the problem otherwise."""
    try:
        host, port = _destination(url)
        await resolve(host, port, allow_private=allow_private)
    except UnsafeDestination as exc:
        raise RecordInvalid(f'"callback_url" is refused: {exc}') from None
    assert isinstance(url, str)
    return url


def check_callback_url_blocking(url: Any, *, allow_private: bool) -> str:
    """`check_callback_url` for a caller without an event loop (it blocks while resolving)."""
    try:
        host, port = _destination(url)
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UnsafeDestination(f"its host {host!r} does not resolve ({exc})") from None
        _addresses(host, found, allow_private=allow_private)
    except UnsafeDestination as exc:
        raise RecordInvalid(f'"callback_url" is refused: {exc}') from None
    assert isinstance(url, str)
    return url


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """A network backend that resolves each host itself, refuses it unless every address is
    public, and connects to an address it checked (never resolving the name a second time)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable checked address of `host`."""
        try:
            addresses = await resolve(host, port, allow_private=self._allow_private)
        except UnsafeDestination as exc:
            raise httpcore.ConnectError(f"refused: {exc}") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # resolve() returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: callbacks go over TCP only."""
        raise httpcore.ConnectError("refused: callbacks go over TCP only")

    async def sleep(self, seconds: float) -> None:
        """As the wrapped backend sleeps."""
        await self._inner.sleep(seconds)


def http_client(*, allow_private: bool, timeout: float, user_agent: str) -> httpx.AsyncClient:
    """An HTTP client for callbacks: checked addresses only, no redirects, no proxies or
    credentials from the environment, at most a few connections kept per host."""
    ssl_context = httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, retries=0)
    # httpx takes no network backend; its transport wraps an httpcore pool, which does.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=PublicOnlyBackend(allow_private=allow_private),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": user_agent},
    )
