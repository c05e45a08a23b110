"""The job types of bench/limits.py (`--app limits_app:app`, with bench/ on PYTHONPATH): the
same handler twice, once without a limit and once with a cluster-wide `concurrency` limit
(env JOBLOT_BENCH_LIMIT, default 64). Each item sleeps `ms` milliseconds (0: returns at once)
and returns when it started and ended, so the benchmark can see how many ran at once."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from joblot import App, Context

app = App()
LIMIT = int(os.environ.get("JOBLOT_BENCH_LIMIT", "64"))


async def _run(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    started = time.time()
    if item.get("ms"):
        await asyncio.sleep(item["ms"] / 1000)
    return {"started": started, "ended": time.time()}


app.job_type("bench.free")(_run)
app.job_type("bench.limited", concurrency=LIMIT)(_run)
