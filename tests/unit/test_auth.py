"""Reading credentials, tokens, tenant names and the rate limiter."""

from __future__ import annotations

import base64

import pytest

from joblot.auth import RateLimiter, check_tenant, credential, digest, is_loopback, mint_token


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        (_basic("agent@example.com/token:abc"), "abc"),
        (_basic("agent@example.com/token:a:b"), "a:b"),
        (_basic("agent@example.com:password"), None),
        (_basic("agent@example.com/token:"), None),
        ("Basic not-base64!", None),
        ("Bearer", None),
        ("Digest abc", None),
        ("", None),
        (None, None),
        ("Bearer " + "a" * 5000, None),
    ],
)
def test_credentials_are_read_from_bearer_and_zendesk_basic(
    header: str | None, token: str | None
) -> None:
    assert credential(header) == token


def test_minted_tokens_are_unique_and_only_their_digest_is_kept() -> None:
    first, second = mint_token(), mint_token()
    assert first.secret != second.secret and first.token_id != second.token_id
    assert first.secret.startswith(f"jl_{first.token_id}_")
    assert first.digest == digest(first.secret) and first.secret not in first.digest
    assert len(first.digest) == 64


@pytest.mark.parametrize("name", ["acme", "team-1", "a.b_c", "x" * 64])
def test_good_tenant_names_pass(name: str) -> None:
    assert check_tenant(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "a/b", "ünï", "a\x00"])
def test_bad_tenant_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="tenant name"):
        check_tenant(name)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.0.2.1", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses_are_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_rate_limiter_allows_a_burst_then_asks_to_wait() -> None:
    limiter = RateLimiter(per_minute=60)  # one a second, bursts of 60
    assert all(limiter.acquire("k", now=0.0) == 0 for _ in range(60))
    assert limiter.acquire("k", now=0.0) == 1
    assert limiter.acquire("other", now=0.0) == 0
    assert limiter.acquire("k", now=1.0) == 0, "a second later one more is allowed"
    slow = RateLimiter(per_minute=1)
    assert slow.acquire("k", now=0.0) == 0
    assert slow.acquire("k", now=0.0) == 60
