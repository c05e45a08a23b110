"""Where callbacks may go: public http(s) addresses only, whatever form the address takes."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from joblot.egress import UnsafeDestination, check_callback_url, check_syntax, is_public
from joblot.errors import RecordInvalid

REFUSED_URLS = {
    "loopback": "http://127.0.0.1/hook",
    "loopback elsewhere in 127/8": "http://127.8.9.10:8080/hook",
    "localhost": "http://localhost/hook",
    "localhost with a port": "https://localhost:8443/hook",
    "private 10/8": "http://10.1.2.3/hook",
    "private 172.16/12": "http://172.20.0.1/hook",
    "private 192.168/16": "http://192.168.1.1/hook",
    "cloud metadata (link-local)": "http://169.254.169.254/latest/meta-data/",
    "shared address space": "http://100.64.0.1/hook",
    "unspecified": "http://0.0.0.0/hook",
    "multicast": "http://224.0.0.1/hook",
    "reserved": "http://240.0.0.1/hook",
    "broadcast": "http://255.255.255.255/hook",
    "documentation": "http://192.0.2.10/hook",
    "benchmarking": "http://198.18.0.1/hook",
    "IPv4 as one decimal number": "http://2130706433/hook",
    "IPv4 in hex": "http://0x7f000001/hook",
    "IPv6 loopback": "http://[::1]/hook",
    "IPv6 unspecified": "http://[::]/hook",
    "IPv6 link-local": "http://[fe80::1]/hook",
    "IPv6 unique local": "http://[fc00::1]/hook",
    "IPv6 multicast": "http://[ff02::1]/hook",
    "IPv4-mapped IPv6 loopback": "http://[::ffff:127.0.0.1]/hook",
    "IPv4-mapped IPv6 metadata": "http://[::ffff:169.254.169.254]/hook",
    "IPv4-compatible IPv6": "http://[::127.0.0.1]/hook",
    "6to4 of a private address": "http://[2002:c0a8:101::1]/hook",
    "NAT64 of loopback": "http://[64:ff9b::7f00:1]/hook",
    "IPv6 documentation": "http://[2001:db8::1]/hook",
    "a name that does not resolve": "https://no-such-host.invalid/hook",
    "ftp": "ftp://203.0.114.1/hook",
    "file": "file:///etc/passwd",
    "gopher": "gopher://8.8.8.8:70/_",
    "no scheme": "//8.8.8.8/hook",
    "no host": "http:///hook",
    "a space": "http://8.8.8.8/a hook",
    "too long": "https://8.8.8.8/" + "a" * 2048,
    "not text": 42,
}


@pytest.mark.parametrize("url", REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_every_non_public_or_malformed_destination_is_refused(url: object) -> None:
    with pytest.raises(RecordInvalid, match="callback_url"):
        asyncio.run(check_callback_url(url, allow_private=False))


def test_public_addresses_of_both_families_are_accepted() -> None:
    for url in ("https://8.8.8.8/hook", "http://[2001:4860:4860::8888]:8080/x?y=1"):
        assert asyncio.run(check_callback_url(url, allow_private=False)) == url


def test_allowing_private_addresses_lifts_only_the_address_check() -> None:
    url = "http://127.0.0.1:9/hook"
    assert asyncio.run(check_callback_url(url, allow_private=True)) == url
    for bad in ("file:///etc/passwd", "https://no-such-host.invalid/"):
        with pytest.raises(RecordInvalid):
            asyncio.run(check_callback_url(bad, allow_private=True))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"],
)
def test_is_public_accepts_global_unicast(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.1.1",
        "224.0.0.251",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b:1::1",
        "2001::1",
        "ff0e::1",
    ],
)
def test_is_public_refuses_everything_else(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


def test_syntax_errors_say_what_is_wrong() -> None:
    with pytest.raises(UnsafeDestination, match="only http:// and https://"):
        check_syntax("javascript:alert(1)")
    with pytest.raises(UnsafeDestination, match=r"(?i)port"):
        check_syntax("http://8.8.8.8:99999/")
