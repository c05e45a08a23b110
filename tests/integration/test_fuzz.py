"""Schema fuzzing: schemathesis drives the real app (in-process, real SQLite) from /openapi.json.

Bounded and deterministic: a fixed number of generated requests per operation (plus the
boundary cases of schemathesis' coverage phase), a fixed seed, `derandomize`. Every response
must be documented by the schema and match it, invalid requests must be refused, and none may
be a 5xx. A worker runs meanwhile, so jobs change state under the fuzzer. The requests sent
and the answers they got are counted and printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from joblot.api import create_app
from joblot.auth import mint_token
from joblot.config import Settings
from joblot.demo import app as demo_app
from joblot.service import Service
from joblot.store import open_store
from joblot.worker import Worker

EXAMPLES_PER_OPERATION = 100
SEED = 20240601
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# (status code, error name) of every answer the fuzzer got, for the summary.
TALLY: Counter[tuple[int, str]] = Counter()
PER_OPERATION: Counter[str] = Counter()
# Deterministic variety the schema cannot express: real ids, a real job type, credentials.
_TURN = itertools.count()

schema = schemathesis.pytest.from_fixture("fuzz_schema")


class Target:
    """The service under fuzzing: its seeded job ids and a valid token."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.token = ""


TARGET = Target()


async def _seed(service: Service) -> None:
    """A token, and a few jobs of its tenant, so fuzzed requests also hit ids that exist."""
    minted = mint_token()
    await service.store.create_token(minted.token_id, "fuzz", minted.digest, time.time())
    TARGET.token = minted.secret
    for n in range(6):
        items = [{"id": i} for i in range(n + 1)]
        row, _ = await service.submit_job(
            "fuzz", {"job": {"job_type": "demo.echo", "items": items}}
        )
        TARGET.job_ids.append(row.id)


def _run_worker(service: Service, ready: threading.Event, stop: threading.Event) -> None:
    """A worker on its own event loop in a thread, beside schemathesis' loop for the app."""

    async def main() -> None:
        worker = Worker(service, service.app)
        task = asyncio.create_task(worker.run())
        ready.set()
        await asyncio.to_thread(stop.wait)
        worker.stop()
        await task

    asyncio.run(main())


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app on a fresh SQLite file, loaded by schemathesis from its own /openapi.json."""
    path: Path = tmp_path_factory.mktemp("fuzz")
    config = Settings(
        database_url=f"sqlite:///{path}/fuzz.db",
        max_active_jobs=100_000,
        rate_limit_per_minute=1_000_000,
        max_items=50,
        max_body_bytes=64 * 1024,
    )
    store = open_store(config.database_url)
    service = Service(store, demo_app, config)

    async def prepare() -> None:
        await store.migrate()
        await _seed(service)

    asyncio.run(prepare())
    ready, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=_run_worker, args=(service, ready, stop), daemon=True)
    worker.start()
    assert ready.wait(10)
    fuzz_config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "deterministic": True, "database": "none"},
            # generated requests depend on the seed only, not on what the server answered
            "phases": {
                "stateful": {"enabled": False},
                "coverage": {"extra-data-sources": {"responses": False}},
                "fuzzing": {
                    "error-feedback": {"enabled": False},
                    "extra-data-sources": {"responses": False},
                },
            },
        }
    )
    try:
        yield schemathesis.openapi.from_asgi(
            "/openapi.json", create_app(service), config=fuzz_config
        )
    finally:
        stop.set()
        worker.join(30)
        asyncio.run(store.close())


class FuzzSummary:
    """A pytest plugin that prints the fuzzer's tally in the terminal summary."""

    def lines(self) -> list[str]:
        total = sum(TALLY.values())
        server_errors = sum(n for (code, _), n in TALLY.items() if code >= 500)
        lines = [
            f"{total} generated requests ({EXAMPLES_PER_OPERATION} fuzzed per operation "
            f"plus the coverage phase's boundary cases), {server_errors} answered 5xx",
            f"{'status':>6}  {'error':<28} {'count':>6}",
        ]
        lines += [f"{code:>6}  {name:<28} {n:>6}" for (code, name), n in sorted(TALLY.items())]
        lines.append(f"{'count':>6}  operation")
        lines += [f"{n:>6}  {label}" for label, n in sorted(PER_OPERATION.items())]
        return lines

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("schema fuzzing")
        for line in self.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After the module: the tally goes to the terminal summary and to fuzz-summary.txt."""
    yield
    summary = FuzzSummary()
    if TALLY:
        request.config.pluginmanager.register(summary, "joblot-fuzz-summary")
        path = tmp_path_factory.getbasetemp() / "fuzz-summary.txt"
        path.write_text("\n".join(summary.lines()) + "\n")


def _error_name(response: Any) -> str:
    if response.status_code < 400:
        return "-"
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return "<not a JSON error>"


def _vary(case: Case[Any], turn: int) -> dict[str, str]:
    """Point some cases at real jobs and a registered job type; vary the credentials."""
    # Assigned, not edited in place, so schemathesis re-checks whether the case is still invalid.
    # OpenAPI matches concrete paths first: /job_statuses/show_many is show_many, not an {id}.
    params = case.path_parameters or {}
    collides = str(params.get("id", "")).removesuffix(".json") == "show_many"
    if "id" in params and (collides or turn % 3 == 0):
        real = TARGET.job_ids[turn % len(TARGET.job_ids)]
        case.path_parameters = {**case.path_parameters, "id": real}
    body: Any = case.body
    if isinstance(body, dict) and isinstance(body.get("job"), dict) and turn % 2 == 0:
        case.body = {**body, "job": {**body["job"], "job_type": "demo.echo"}}
    if turn % 10 == 7:
        return {}
    if turn % 10 == 8:
        return {"Authorization": "Bearer jl_not_a_token' OR 1=1 --"}
    return {"Authorization": f"Bearer {TARGET.token}"}


# The event stream stays open while its job runs, and fuzzed jobs may run long; the tenant's
# never ends: they are tested on their own (tests/integration/test_events.py,
# tests/acceptance/test_tenant_stream.py), not fuzzed.
@(
    schema.exclude(path="/api/v2/job_statuses/{id}/events")
    .exclude(path="/api/v2/job_statuses/events")
    .parametrize()
)
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_get_documented_answers_and_never_a_5xx(case: Case[Any]) -> None:
    headers = _vary(case, next(_TURN))
    response = case.call(headers=headers)
    name = _error_name(response)
    TALLY[(response.status_code, name)] += 1
    PER_OPERATION[case.operation.label] += 1
    assert response.status_code < 500, response.text
    assert name != "<not a JSON error>", response.text
    case.validate_response(response, checks=CHECKS, headers=headers)
