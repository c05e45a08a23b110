"""Named SQL blocks and numbered migrations, read from the `.sql` files of each backend."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- name: (\S+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{3})_(\w+)\.sql$")


def load_queries(backend: str) -> dict[str, str]:
    """The `-- name: x` blocks of `<backend>/queries.sql`, by name."""
    text = resources.files(__package__).joinpath(backend, "queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {backend}/queries.sql")
        queries[name] = body.strip()
    return queries


@functools.cache
def queries(backend: str) -> dict[str, str]:
    """The named SQL blocks of a backend (`sqlite` or `postgres`), read once per process."""
    return load_queries(backend)


@dataclass(frozen=True)
class Migration:
    """One forward-only schema change."""

    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """The numbered migrations of a backend, in order."""
    folder = resources.files(__package__).joinpath(backend, "migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"{backend} migrations are not numbered 001, 002, ... without gaps")
    return found
