"""Job types whose handlers misbehave on purpose (`--app acceptance.misbehaving:app`).

Each item says how its handler misbehaves, so that one job can hold innocent items and a guilty one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from joblot import App, Context
from joblot.demo import make_demo_app

app: App = make_demo_app()


@app.job_type("test.message")
def report_message(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Report the item's `text` as the job's message (it may hold a NUL)."""
    ctx.message(item["text"])
    return {"reported": True}


@app.job_type("test.abort")
def abort_on_request(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Abort the whole job with the item's `abort` text, if it has one; else sleep `seconds`."""
    if "abort" in item:
        ctx.abort(item["abort"])
    time.sleep(item.get("seconds", 0))
    return {}


def _hang_or_sleep(item: dict[str, Any]) -> dict[str, Any]:
    """Never return if the item says `hang` (a thread no one can stop); else sleep `seconds`."""
    if item.get("hang"):
        threading.Event().wait()
    time.sleep(item.get("seconds", 0))
    return {}


@app.job_type("test.hang", timeout=2)
def hang_on_request(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Hang or sleep as the item says, with a timeout of 2 s."""
    return _hang_or_sleep(item)


@app.job_type("test.hang_async", timeout=2)
async def hang_async_on_request(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The async twin of `test.hang`: its sleep is cancelled at the timeout."""
    await asyncio.sleep(3600 if item.get("hang") else item.get("seconds", 0))
    return {}


@app.job_type("test.hang_long")
def hang_with_the_default_timeout(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Hang or sleep as the item says, with the server's (long) default timeout."""
    return _hang_or_sleep(item)


@app.job_type("test.exit")
def exit_on_request(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Kill the whole worker process at once if the item says `exit` (as a crash in native
    code would); else sleep `seconds`."""
    if item.get("exit"):
        os._exit(70)
    time.sleep(item.get("seconds", 0))
    return {}


@app.job_type("test.flaky", retries=2, retry_on=(ConnectionError, TimeoutError), backoff=0.5)
def fail_as_asked(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Raise ConnectionError on the item's first `fail_times` attempts (a retried error), or the
    error named `raise` (ValueError: not retried); else return the attempt it succeeded on."""
    if item.get("raise") == "ValueError":
        raise ValueError("not worth retrying")
    if ctx.attempt <= item.get("fail_times", 0):
        raise ConnectionError(f"the service did not answer (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}
