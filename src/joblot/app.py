"""App: the registry of job types, their handlers and options."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from joblot.errors import ConfigError
from joblot.models import MAX_JOB_TYPE_LENGTH, Limit, parse_rate

Handler = Callable[[dict[str, Any], "Context"], Any]


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
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the per-item handler of job type `name`.

        `timeout`: seconds an item may run before it fails with `Timeout` (default: the
        server's `item_timeout_seconds`). `concurrency=N`: at most N of its items run at once,
        and `rate="R/s"` (or `/m`, `/h`): at most R of them start per second (minute, hour),
        both counted in the database, so across every worker process on every machine.
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
