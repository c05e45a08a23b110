"""App: the registry of job types, their handlers and options."""

from __future__ import annotations

import importlib
import inspect
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from joblot.errors import ConfigError
from joblot.models import MAX_JOB_TYPE_LENGTH, Limit, parse_rate

Handler = Callable[[dict[str, Any], "Context"], Any]

DEFAULT_BACKOFF_SECONDS = 1.0  # before the first retry of an item, when a type sets none
MAX_BACKOFF_SECONDS = 3600.0  # the longest an item waits for a retry


class ItemFailed(Exception):
    """Raise from a handler to fail one item with a chosen error name and details."""

    def __init__(self, details: str, error: str = "ItemFailed") -> None:
        super().__init__(details)
        self.error = error
        self.details = details


class JobAborted(Exception):
    """Raised by `ctx.abort()`: the whole job stops and ends `failed` with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Context:
    """What a handler may do beyond its item: report a message, or abort the whole job."""

    def __init__(self, job_id: str, job_type: str, index: int, attempt: int) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.index = index
        self.attempt = attempt
        self.reported: str | None = None

    def message(self, text: str) -> None:
        """Set the job's `message`; the last one reported wins."""
        self.reported = str(text)

    def abort(self, message: str) -> None:
        """Stop the whole job: it ends `failed` with `message`; items not yet run never run."""
        raise JobAborted(message)


@dataclass(frozen=True)
class JobType:
    """A registered job type: its name, handler and options."""

    name: str
    handler: Handler
    action: str | None = None
    max_failures: int | None = None  # the job fails once more items than this have failed
    timeout: float | None = None  # seconds an item may run; None: the server's default
    concurrency: int | None = None  # items that run at once, cluster-wide, at most
    rate: str | None = None  # items that start per second, minute or hour: "R/s|R/m|R/h"
    retries: int = 0  # times an item is retried after its handler raised one of `retry_on`
    retry_on: tuple[type[BaseException], ...] = ()
    backoff: float | None = None  # seconds before the first retry (doubled for each next)

    def retried(self, raised: BaseException, retries: int) -> bool:
        """Whether an item whose handler raised `raised`, after `retries` retries so far, is
        retried (never an abort of the whole job)."""
        return (
            retries < self.retries
            and isinstance(raised, self.retry_on)
            and not isinstance(raised, JobAborted)
        )

    def retry_delay(self, retries: int) -> float:
        """Seconds before the retry that follows `retries` earlier ones: exponential backoff
        (the backoff, then twice it, four times, ... at most MAX_BACKOFF_SECONDS), with jitter
        (a random half of it at most taken off), so that items that failed together are not
        retried all at once."""
        base = DEFAULT_BACKOFF_SECONDS if self.backoff is None else self.backoff
        delay = min(base * 2.0 ** min(retries, 60), MAX_BACKOFF_SECONDS)
        return delay * random.uniform(0.5, 1.0)

    @property
    def limit(self) -> Limit | None:
        """Its cluster-wide limits, None when it has none."""
        if self.concurrency is None and self.rate is None:
            return None
        count, per = (None, 1.0) if self.rate is None else parse_rate(self.rate)
        return Limit(concurrency=self.concurrency, rate=count, per=per)

    @property
    def is_async(self) -> bool:
        """True when the handler is a coroutine function, run on the worker's event loop."""
        return inspect.iscoroutinefunction(self.handler)


def _classes(given: Any) -> tuple[Any, ...]:
    """`retry_on` as a tuple: one class, or a list or tuple of them (checked later)."""
    return tuple(given) if isinstance(given, list | tuple) else (given,)


def _check_retries(job_type: JobType) -> None:
    name, retries, backoff = job_type.name, job_type.retries, job_type.backoff
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(
            f"job type {name!r}: retries must be a whole number >= 0, not {retries!r}"
        )
    classes = job_type.retry_on
    if not isinstance(classes, tuple) or not all(
        isinstance(c, type) and issubclass(c, BaseException) for c in classes
    ):
        raise ConfigError(
            f"job type {name!r}: retry_on must be exception classes, e.g. "
            f"retry_on=(TimeoutError, ConnectionError), not {classes!r}"
        )
    if backoff is not None and (
        isinstance(backoff, bool) or not isinstance(backoff, int | float) or not backoff > 0
    ):
        raise ConfigError(f"job type {name!r}: backoff must be a number of seconds > 0")
    if retries and not classes:
        raise ConfigError(
            f"job type {name!r}: retries={retries} needs retry_on=(SomeError, ...): the "
            "exceptions to retry"
        )
    if not retries and (classes or backoff is not None):
        raise ConfigError(
            f"job type {name!r}: retry_on and backoff need retries=N (how many times to retry)"
        )


def _check_limits(job_type: JobType) -> None:
    concurrency = job_type.concurrency
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigError(
            f"job type {job_type.name!r}: concurrency must be a whole number above 0, "
            f"not {concurrency!r}"
        )
    if job_type.rate is not None:
        try:
            parse_rate(str(job_type.rate))
        except ValueError as exc:
            raise ConfigError(f"job type {job_type.name!r}: {exc}") from None


class App:
    """The registry of job types a joblot server accepts and its workers run."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def job_type(
        self,
        name: str,
        action: str | None = None,
        *,
        max_failures: int | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        rate: str | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | Sequence[type[BaseException]] = (),
        backoff: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the per-item handler of job type `name`.

        `timeout`: seconds an item may run before it fails with `Timeout` (default: the
        server's `item_timeout_seconds`). `concurrency=N`: at most N of its items run at once,
        and `rate="R/s"` (or `/m`, `/h`): at most R of them start per second (minute, hour),
        both counted in the database, so across every worker process on every machine.
        `retries=N, retry_on=(SomeError, ...)`: an item whose handler raised one of those is
        retried up to N times, after `backoff` seconds (default 1), twice that, four times
        that, ... (with jitter); it holds no lease while it waits, and if it fails in the end
        its result says how many `attempts` it took.
        """

        def register(handler: Handler) -> Handler:
            job_type = JobType(
                name,
                handler,
                action=action,
                max_failures=max_failures,
                timeout=timeout,
                concurrency=concurrency,
                rate=rate,
                retries=retries,
                retry_on=_classes(retry_on),
                backoff=backoff,
            )
            self.add(job_type)
            return handler

        return register

    def add(self, job_type: JobType) -> None:
        """Register a job type; a name can be registered once."""
        if not job_type.name or len(job_type.name) > MAX_JOB_TYPE_LENGTH:
            raise ConfigError(f"a job type name must have 1 to {MAX_JOB_TYPE_LENGTH} characters")
        if job_type.timeout is not None and not job_type.timeout > 0:
            raise ConfigError(
                f"job type {job_type.name!r}: timeout must be a number of seconds > 0"
            )
        _check_limits(job_type)
        _check_retries(job_type)
        if job_type.name in self._types:
            raise ConfigError(f"job type {job_type.name!r} is registered twice")
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType | None:
        """The job type called `name`, or None."""
        return self._types.get(name)

    def names(self) -> list[str]:
        """The names of all registered job types, sorted."""
        return sorted(self._types)

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    def __contains__(self, name: object) -> bool:
        return name in self._types


def load_app(spec: str) -> App:
    """Import the App named by `MODULE:ATTR` (e.g. `myproject.jobs:app`).

    The current folder is put first on the import path, as uvicorn, gunicorn and celery do,
    so `--app myproject.jobs:app` works from the project's folder without PYTHONPATH.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app takes MODULE:ATTR, got {spec!r}")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for --app {spec}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"--app {spec}: {attr!r} in {module_name!r} is not a joblot.App")
    return app
