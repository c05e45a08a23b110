"""The yardstick of bench/reads.py: a minimal Starlette app answering every GET with the bytes
of the file named by JOBLOT_BENCH_HELLO_BODY, as JSON. Run it on uvicorn's defaults:
`uvicorn --app-dir bench hello_app:app`."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = Path(os.environ["JOBLOT_BENCH_HELLO_BODY"]).read_bytes()


async def hello(request: Request) -> Response:
    """The same bytes every time."""
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", hello)])
