"""Settings from flags and JOBLOT_* environment variables, read in this one place only."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from joblot.errors import ConfigError
from joblot.logs import LOG_FORMATS
from joblot.store import SQLITE_SYNC_MODES, backend_for

DEFAULT_DATABASE_URL = "sqlite:///joblot.db"
DEFAULT_APP = "joblot.demo:app"


@dataclass(frozen=True)
class Settings:
    """Every tunable of a joblot process. Each field `x` is read from env `JOBLOT_X`."""

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None  # absolute base of JobStatus urls; by default the request's
    app: str = DEFAULT_APP  # MODULE:ATTR of the App with the job types
    workers: int = 1  # worker processes started by `joblot serve`
    concurrency: int = 4  # items a worker runs at once
    lease_seconds: float = 5.0  # a dead worker's items go back to the queue after this
    batch_size: int = 500  # most items claimed in one go
    max_attempts: int = 3  # an item that loses its worker this often fails for good
    item_timeout_seconds: float = 3600.0  # an item running longer fails with Timeout
    stop_grace_seconds: float = 10.0  # a stopping worker waits this long for running items
    retention_seconds: float = 86400.0  # finished jobs are purged after this
    inline_results: int = 1000  # jobs with more items serve results from /results only
    max_items: int = 100_000  # items accepted in one job
    max_body_bytes: int = 16 * 1024 * 1024  # request bodies larger than this get a 413
    # how often an idle worker looks for new items (on PostgreSQL only while not listening:
    # a listening one is woken by NOTIFY and looks on its own once a second)
    idle_poll_seconds: float = 0.05
    max_active_jobs: int = 30  # queued or working jobs a tenant may have (Zendesk's limit)
    rate_limit_per_minute: int = 700  # requests a token may make, per API process
    max_streams_per_token: int = 100  # streams and long polls a token may hold, per API process
    keepalive_seconds: float = 15.0  # a quiet event stream sends a comment line this often
    insecure: bool = False  # allow serving without tokens on a non-loopback address
    pool_size: int = 10  # PostgreSQL connections per process, at most
    sqlite_sync: str = "group"  # how SQLite syncs acknowledged writes: group|transaction|database
    allow_fsync_off: bool = False  # serve from a PostgreSQL running with fsync = off anyway
    log_level: str = "info"
    log_format: str = "text"  # `text`, or `json`: every log line one JSON object
    # Completion webhooks (docs/security.md): callbacks to private addresses are refused
    # unless this is set; attempts time out after `webhook_timeout_seconds`; a failed one is
    # retried after each of `webhook_retry_seconds` in turn (the last one repeating), with
    # jitter, `webhook_max_attempts` attempts in all.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 15.0
    webhook_retry_seconds: tuple[float, ...] = (5.0, 60.0, 600.0, 3600.0, 21600.0, 86400.0)
    webhook_max_attempts: int = 8
    webhook_concurrency: int = 10  # attempts a process has in flight at once
    webhook_poll_seconds: float = 1.0  # how often a process looks for due deliveries
    # after a rotation the previous secret also signs for this long, so receivers can switch
    webhook_secret_overlap_seconds: float = 86400.0

    def __post_init__(self) -> None:
        positive = (
            "port",
            "concurrency",
            "lease_seconds",
            "batch_size",
            "max_attempts",
            "item_timeout_seconds",
            "stop_grace_seconds",
            "max_active_jobs",
            "rate_limit_per_minute",
            "max_streams_per_token",
            "keepalive_seconds",
            "pool_size",
            "webhook_timeout_seconds",
            "webhook_max_attempts",
            "webhook_concurrency",
            "webhook_poll_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0, got {getattr(self, name)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format must be {' or '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if not self.webhook_retry_seconds or min(self.webhook_retry_seconds) < 0:
            raise ConfigError("webhook_retry_seconds must be one or more delays of 0 s or more")
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, got {self.workers}")
        if self.sqlite_sync not in SQLITE_SYNC_MODES:
            raise ConfigError(
                f"sqlite_sync must be one of {', '.join(SQLITE_SYNC_MODES)}, "
                f"got {self.sqlite_sync!r}"
            )
        if backend_for(self.database_url) is None:
            raise ConfigError(
                f"unsupported database URL {self.database_url!r}: "
                "use sqlite:///path/to/file.db or postgresql://user@host/db"
            )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as JOBLOT_* variables, to hand to a child process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                env[f"JOBLOT_{f.name.upper()}"] = ",".join(map(str, value))
            elif value is not None:
                env[f"JOBLOT_{f.name.upper()}"] = str(value)
        return env


def _convert(name: str, kind: Any, raw: str) -> Any:
    """`raw` (from env `JOBLOT_<NAME>`) as the type of the Settings field `name`."""
    if kind is bool:
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"JOBLOT_{name.upper()}={raw!r} is not true or false")
        return raw.lower() in ("1", "true", "yes")
    try:
        if kind in (int, float):
            return kind(raw)
        if typing.get_origin(kind) is tuple:  # a comma-separated list of numbers
            return tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(f"JOBLOT_{name.upper()}={raw!r} is not a number") from None
    return raw


def _field_types() -> dict[str, Any]:
    """Each Settings field's type, with `X | None` read as X (None is the default, not a value
    one can write in the environment)."""
    found = {}
    for name, hint in typing.get_type_hints(Settings).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = isinstance(hint, types.UnionType) and len(args) == 1
        found[name] = args[0] if optional else hint
    return found


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from command-line `flags` (None means absent), then env, then defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, kind in _field_types().items():
        raw = env.get(f"JOBLOT_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _convert(name, kind, raw)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**values)


DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientSettings:
    """Where the client commands find the server: `--url`/JOBLOT_URL, `--token`/JOBLOT_TOKEN."""

    url: str = DEFAULT_URL
    token: str | None = None


def load_client_settings(
    url: str | None, token: str | None, environ: Mapping[str, str] | None = None
) -> ClientSettings:
    """Client settings from flags, then env, then defaults."""
    env = os.environ if environ is None else environ
    return ClientSettings(
        url=(url or env.get("JOBLOT_URL") or DEFAULT_URL).rstrip("/"),
        token=token or env.get("JOBLOT_TOKEN") or None,
    )
