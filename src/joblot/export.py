"""A job's result entries as a file: JSON lines, or CSV a spreadsheet opens safely.

Both are written page by page from an async iterator of stored entries (JSON bytes), so a
job of a million items streams in constant memory. CSV needs its columns before its first
row, so it reads the entries twice: once for the keys, once for the rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
FIRST_COLUMNS = ("index", "id", "success", "error", "details")
MAX_COLUMNS = 1000  # keys beyond these many are left out of a CSV (JSON lines keep them all)
# A cell starting with one of these is read as a formula by Excel, LibreOffice or Google Sheets
# (tab and carriage return too, and the full-width forms some of them accept).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")

Pages = Callable[[], AsyncIterator[list[bytes]]]


async def jsonl(pages: Pages) -> AsyncIterator[bytes]:
    """One entry per line, exactly as stored."""
    async for page in pages():
        yield b"\n".join(page) + b"\n"


async def csv_columns(pages: Pages) -> list[str]:
    """`index,id,success,error,details`, then every other key in the order first seen."""
    seen = dict.fromkeys(FIRST_COLUMNS)
    async for page in pages():
        for raw in page:
            for key in orjson.loads(raw):
                if key not in seen and len(seen) < MAX_COLUMNS:
                    seen[key] = None
    return list(seen)


def cell(value: Any) -> str:
    """One CSV cell: text as is unless a spreadsheet would run it as a formula (then behind a
    `'`), numbers and booleans as JSON writes them, objects and lists as JSON, null empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    return orjson.dumps(value).decode()


async def csv_rows(pages: Pages) -> AsyncIterator[bytes]:
    """A header line, then one line per entry, its cells in the header's order."""
    columns = await csv_columns(pages)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([cell(c) for c in columns])  # a handler's key is text like any other
    yield out.getvalue().encode()
    async for page in pages():
        out.seek(0)
        out.truncate()
        for raw in page:
            entry = orjson.loads(raw)
            writer.writerow([cell(entry.get(c)) for c in columns])
        yield out.getvalue().encode()


def stream(format_: str, pages: Pages) -> AsyncIterator[bytes]:
    """The body of an export in `format_` (one of FORMATS)."""
    return jsonl(pages) if format_ == "jsonl" else csv_rows(pages)
