"""Run a `joblot` command while counting the database statements this process sends.

    python bench/count_queries.py COUNTS.json serve --db ... --workers 2

Counts every SQL statement the process runs (SQLite through a trace callback on each
connection, PostgreSQL by wrapping psycopg's execute calls), grouped by the first line of the
statement, and rewrites COUNTS.json with the totals every 0.2 s. Only this process is counted:
the worker processes `serve` starts run unwrapped. For benchmarks only; it changes nothing in
what joblot does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

WRITE_SECONDS = 0.2
_VALUES = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b")

_counts: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def _note(sql: str) -> None:
    """Count one statement under its first words, with comments dropped and numbers and
    strings written as `?` (SQLite hands the trace its statements with values filled in)."""
    code = " ".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    code = _VALUES.sub("?", code)
    head = " ".join(code.split())[:60]
    with _lock:
        _counts[head] += 1


def _count_sqlite() -> None:
    from joblot.store.sqlite import connection

    connect = connection._connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(_note)
        return conn

    connection._connect = counted


def _count_postgres() -> None:
    import psycopg

    def wrap(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            _note(query if isinstance(query, str) else type(query).__name__)
            return await original(self, query, *args, **kwargs)

        setattr(cls, name, counted)

    wrap(psycopg.AsyncConnection, "execute")
    wrap(psycopg.AsyncCursor, "execute")
    wrap(psycopg.AsyncCursor, "executemany")


def _write_forever(path: Path) -> None:
    temp = path.with_suffix(".tmp")
    while True:
        with _lock:
            snapshot = {"time": time.time(), "total": sum(_counts.values()), "by": dict(_counts)}
        temp.write_bytes(orjson.dumps(snapshot))
        os.replace(temp, path)
        time.sleep(WRITE_SECONDS)


def main() -> int:
    """Count, then run `joblot <args>` in this process."""
    out = Path(sys.argv[1])
    _count_sqlite()
    with contextlib.suppress(ImportError):
        _count_postgres()
    threading.Thread(target=_write_forever, args=(out,), daemon=True).start()
    from joblot.cli import main as joblot_main

    return joblot_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
