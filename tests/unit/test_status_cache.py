"""The memory of settled statuses: bounded in bytes, oldest dropped first, nothing kept past
its job's expiry."""

from __future__ import annotations

from joblot.status_cache import Rendered, StatusCache


def rendered(size: int, expires_at: float = 100.0) -> Rendered:
    return Rendered("acme", '"x.1"', b"x" * size, expires_at, [])


def test_the_oldest_statuses_go_when_the_bytes_run_out() -> None:
    cache = StatusCache(max_bytes=250)
    for job in "abc":
        cache.keep(job, None, rendered(100))
    assert len(cache) == 2
    assert cache.get("a", None, 0.0) is None
    assert cache.get("b", None, 0.0) is not None and cache.get("c", None, 0.0) is not None


def test_a_status_larger_than_the_whole_cache_is_not_kept() -> None:
    cache = StatusCache(max_bytes=250)
    cache.keep("a", None, rendered(100))
    cache.keep("big", None, rendered(251))
    assert cache.get("big", None, 0.0) is None and cache.get("a", None, 0.0) is not None


def test_keeping_a_status_again_replaces_it_and_its_bytes() -> None:
    cache = StatusCache(max_bytes=250)
    for _ in range(5):
        cache.keep("a", None, rendered(100))
    cache.keep("b", None, rendered(100))
    assert len(cache) == 2


def test_a_status_is_not_answered_from_the_instant_its_job_expires() -> None:
    cache = StatusCache()
    cache.keep("a", "origin", rendered(10, expires_at=100.0))
    assert cache.get("a", "origin", 99.9) is not None
    assert cache.get("a", "other origin", 99.9) is None
    assert cache.get("a", "origin", 100.0) is None
    assert len(cache) == 0
