"""API tokens: minting, hashing, reading credentials from requests, and per-token rate limits."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from joblot.config import Settings
from joblot.errors import TooManyRequests, Unauthorized
from joblot.models import DEFAULT_TENANT
from joblot.store import TokenCount

TOKEN_PREFIX = "jl_"
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_TENANT_LENGTH = 64
MAX_CREDENTIAL_LENGTH = 4096


@dataclass(frozen=True)
class MintedToken:
    """A new token: `secret` is shown once; only `digest` is stored."""

    token_id: str
    secret: str
    digest: str


def digest(token: str) -> str:
    """The stored form of a token. Tokens are 256 random bits, so a plain SHA-256 suffices:
    there is nothing to brute-force that a slow password hash would protect."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def mint_token() -> MintedToken:
    """A fresh random token and its public id."""
    token_id = secrets.token_hex(6)
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return MintedToken(token_id, secret, digest(secret))


def check_tenant(name: str) -> str:
    """A tenant name: 1 to 64 letters, digits, `-`, `_` or `.`."""
    if not 0 < len(name) <= MAX_TENANT_LENGTH or not set(name) <= _TENANT_CHARS:
        raise ValueError("a tenant name has 1 to 64 letters, digits, '-', '_' or '.'")
    return name


def credential(authorization: str | None) -> str | None:
    """The token in an Authorization header: `Bearer <token>`, or Zendesk-style Basic
    `<email>/token:<token>`. None when absent or unreadable."""
    if not authorization or len(authorization) > MAX_CREDENTIAL_LENGTH:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user.endswith("/token") or not password:
        return None
    return password


def is_loopback(host: str) -> bool:
    """Whether binding to `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to the same number.

    Kept in the memory of each API process, so with several API nodes the limit applies per
    node; that bounds a runaway client without a shared counter on every request.
    """

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float) -> int:
        """Take one request at `now` (monotonic seconds); 0 if allowed, else whole seconds to
        wait (for `Retry-After`)."""
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))


CACHE_SECONDS = 2.0  # a revoked token stops working within this long


class Tokens(Protocol):
    """Where an Authenticator looks tokens up (the Service)."""

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        """(token id, tenant) of the live token with this digest."""

    async def count_tokens(self) -> TokenCount:
        """How many live and how many revoked tokens there are."""

    async def live_tokens(self, token_ids: list[str]) -> set[str]:
        """The ids among `token_ids` of live tokens."""


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: a tenant, through a token (None while the server is open)."""

    tenant: str
    token_id: str | None


def serving_open(count: TokenCount, *, insecure: bool, loopback: bool) -> bool:
    """Whether requests without credentials are let in, as the default tenant.

    Never while a token is live. Bound to loopback, only until the first token is created:
    revoking every token leaves the server closed. `--insecure` (JOBLOT_INSECURE) serves open
    whenever no token is live, on any address: the explicit way to open it again.
    """
    if count.live > 0:
        return False
    return insecure or (loopback and count.revoked == 0)


class Authenticator:
    """Turns an Authorization header into the caller a request acts for.

    Lookups are cached for CACHE_SECONDS of `clock` (monotonic seconds), so a poll costs no
    query and a revoked token stops working within that time. Requests that find a token's
    lookup (or the token count) out of date together share one query (the first one's),
    instead of each sending its own to the database at the same moment.
    """

    def __init__(
        self, tokens: Tokens, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tokens = tokens
        self.clock = clock
        self.insecure = settings.insecure
        self.loopback = is_loopback(settings.host)
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._finding: dict[str, asyncio.Future[tuple[str, str] | None]] = {}
        self._counting: asyncio.Future[None] | None = None
        self._count: tuple[float, TokenCount] | None = None

    async def caller(self, authorization: str | None) -> Caller:
        """The caller the credentials name; without any, the default tenant if serving open."""
        token = credential(authorization)
        if token is None:
            if authorization is None and await self.serving_open():
                return Caller(DEFAULT_TENANT, None)
            raise Unauthorized(
                "send Authorization: Bearer <token> (or Basic "
                "<email>/token:<token>); tokens come from `joblot tokens create`"
            )
        found = await self._find(digest(token))
        if found is None:
            raise Unauthorized("that token is unknown or was revoked")
        token_id, tenant = found
        wait = self.limiter.acquire(token_id, self.clock())
        if wait:
            raise TooManyRequests(
                f"this token made more than {self.limiter.capacity:.0f} "
                f"requests a minute; retry in {wait} s",
                retry_after=wait,
            )
        return Caller(tenant, token_id)

    async def tenant(self, authorization: str | None) -> str:
        """The tenant of the credentials (see `caller`)."""
        return (await self.caller(authorization)).tenant

    async def serving_open(self, *, fresh: bool = False) -> bool:
        """Whether requests without credentials are let in now (`serving_open`); the token
        count is cached like lookups unless `fresh`."""
        now = self.clock()
        if fresh:
            await self._count_tokens(now)
        elif self._count is None or now - self._count[0] >= CACHE_SECONDS:
            if self._counting is None:  # as token lookups: one count for all who need it
                self._counting = asyncio.ensure_future(self._count_tokens(now))
                self._counting.add_done_callback(self._counted)
            await asyncio.shield(self._counting)
        assert self._count is not None
        return serving_open(self._count[1], insecure=self.insecure, loopback=self.loopback)

    async def _count_tokens(self, now: float) -> None:
        self._count = (now, await self.tokens.count_tokens())

    def _counted(self, done: asyncio.Future[None]) -> None:
        self._counting = None
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone (it raised to them)

    def forget(self, token_ids: set[str]) -> None:
        """Drop cached lookups of these tokens (found revoked), so they fail from now on."""
        for key, (_, found) in list(self._cache.items()):
            if found is not None and found[0] in token_ids:
                del self._cache[key]

    async def _find(self, token_digest: str) -> tuple[str, str] | None:
        now = self.clock()
        cached = self._cache.get(token_digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        finding = self._finding.get(token_digest)
        if finding is None:  # no lookup of this token under way: start one
            finding = asyncio.ensure_future(self._look_up(token_digest, now))
            self._finding[token_digest] = finding
            finding.add_done_callback(lambda done: self._found(token_digest, done))
        # shielded: a caller that goes away does not cancel the lookup the others await
        return await asyncio.shield(finding)

    async def _look_up(self, token_digest: str, now: float) -> tuple[str, str] | None:
        found = await self.tokens.find_token(token_digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token_digest] = (now, found)  # as of when it was asked, not answered
        return found

    def _found(self, token_digest: str, done: asyncio.Future[tuple[str, str] | None]) -> None:
        self._finding.pop(token_digest, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone (it raised to them)
