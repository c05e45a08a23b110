"""Job types with cluster-wide limits (`--app acceptance.limited:app`). Each handler returns
when it started and ended (wall clock, shared by every process on the machine) and in which
process, so that a test can check from the results what ran at once."""

from __future__ import annotations

import os
import time
from typing import Any

from joblot import App, Context
from joblot.demo import make_demo_app

app: App = make_demo_app()


def _run(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    started = time.time()
    seconds = item.get("seconds", 0)
    if "first_attempt_seconds" in item and ctx.attempt == 1:
        seconds = item["first_attempt_seconds"]  # a worker killed meanwhile never finishes it
    time.sleep(seconds)
    return {"started": started, "ended": time.time(), "pid": os.getpid()}


@app.job_type("limits.pair", concurrency=2)
def pair(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """At most two of these run at once, cluster-wide."""
    return _run(item, ctx)


@app.job_type("limits.ten_a_second", rate="10/s")
def ten_a_second(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """At most ten of these start per second, cluster-wide."""
    return _run(item, ctx)


@app.job_type("limits.one", concurrency=1)
def one(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """One at a time, cluster-wide."""
    return _run(item, ctx)


@app.job_type("limits.free")
def free(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """No limit."""
    return _run(item, ctx)
