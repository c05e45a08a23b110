"""A job type's retries of handler errors: options checked when it is registered, which errors
are retried, and the backoff between tries."""

from __future__ import annotations

from typing import Any

import pytest

from joblot.app import MAX_BACKOFF_SECONDS, App, JobAborted
from joblot.errors import ConfigError


def _noop(item: dict[str, Any], ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"retries": True, "retry_on": (OSError,)}, "retries must be a whole number >= 0"),
        ({"retries": 2.5, "retry_on": (OSError,)}, "retries must be a whole number >= 0"),
        ({"retries": 3}, r"retries=3 needs retry_on=\(SomeError, \.\.\.\)"),
        ({"retries": 3, "retry_on": "OSError"}, "retry_on must be exception classes"),
        ({"retries": 3, "retry_on": (OSError, 42)}, "retry_on must be exception classes"),
        ({"retry_on": (OSError,)}, r"retry_on and backoff need retries=N"),
        ({"backoff": 2.0}, r"retry_on and backoff need retries=N"),
        ({"retries": 1, "retry_on": OSError, "backoff": 0}, "backoff must be a number of seconds"),
        ({"retries": 1, "retry_on": OSError, "backoff": "1s"}, "backoff must be a number"),
    ],
)
def test_retry_options_are_checked_when_a_job_type_is_registered(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        App().job_type("t", **options)(_noop)


def test_only_the_named_errors_are_retried_and_only_so_many_times() -> None:
    app = App()
    app.job_type("t", retries=2, retry_on=[ConnectionError, TimeoutError])(_noop)
    job_type = app.get("t")
    assert job_type is not None and job_type.retry_on == (ConnectionError, TimeoutError)
    assert job_type.retried(ConnectionResetError("subclass"), 0)
    assert job_type.retried(TimeoutError(), 1)
    assert not job_type.retried(TimeoutError(), 2)  # its 2 retries are spent
    assert not job_type.retried(ValueError(), 0)
    app.job_type("all", retries=1, retry_on=BaseException)(_noop)
    everything = app.get("all")
    assert everything is not None and not everything.retried(JobAborted("stop"), 0)


def test_defaults_retry_nothing() -> None:
    app = App()
    app.job_type("t")(_noop)
    job_type = app.get("t")
    assert job_type is not None and not job_type.retried(ConnectionError(), 0)


def test_the_backoff_doubles_with_jitter_up_to_a_cap() -> None:
    app = App()
    app.job_type("t", retries=40, retry_on=OSError, backoff=2.0)(_noop)
    job_type = app.get("t")
    assert job_type is not None
    for retries, full in [(0, 2.0), (1, 4.0), (2, 8.0), (30, MAX_BACKOFF_SECONDS)]:
        delays = [job_type.retry_delay(retries) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered
