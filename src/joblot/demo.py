"""The default App with the demo job types `demo.echo` and `demo.sleep`."""

from __future__ import annotations

import asyncio
from typing import Any

from joblot.app import App, Context


class DemoFailure(Exception):
    """Raised for a demo item that asks to fail with `"fail": "<text>"`."""


def _echo(item: dict[str, Any]) -> dict[str, Any]:
    if "fail" in item:
        raise DemoFailure(str(item["fail"]))
    return {"status": "Echoed"}


def echo(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Echo the item's `id` with status `Echoed`, or fail with its `fail` text."""
    return _echo(item)


async def sleep(item: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Like `demo.echo`, after sleeping `item["seconds"]` (0 when absent)."""
    seconds = item.get("seconds", 0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise DemoFailure(f"seconds must be a number of seconds >= 0, got {seconds!r}")
    await asyncio.sleep(min(float(seconds), 3600.0))
    return _echo(item)


def make_demo_app() -> App:
    """A fresh App holding the demo job types."""
    demo = App()
    demo.job_type("demo.echo", action="echo")(echo)
    demo.job_type("demo.sleep", action="echo")(sleep)
    return demo


app = make_demo_app()
