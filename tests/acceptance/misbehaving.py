"""Job types whose handlers misbehave on purpose (`--app acceptance.misbehaving:app`).

Each item says how its handler misbehaves, so that one job can hold innocent items and a guilty one.
"""

from __future__ import annotations

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
