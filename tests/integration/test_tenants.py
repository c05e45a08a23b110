"""Two tenants hammer the API at once, with a worker running: neither ever sees, reads,
lists, pages through or cancels the other's jobs, and no job of either is lost."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from joblot.auth import mint_token

from .harness import Harness, harness

pytestmark = pytest.mark.anyio

REQUESTS_PER_TENANT = 200
CLIENTS_PER_TENANT = 4  # concurrent request loops per tenant
SHARED_KEY = "same-key-for-both"  # one Idempotency-Key used by both tenants


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Tenant:
    """One tenant's client and everything it did and saw."""

    name: str
    http: httpx.AsyncClient
    headers: dict[str, str]
    rng: random.Random
    submitted: dict[str, int] = field(default_factory=dict)  # job id -> number of items
    cancelled: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)  # every job id in any response
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)
    other: Tenant | None = None

    def mine(self) -> list[str]:
        return list(self.submitted)

    def theirs(self) -> list[str]:
        assert self.other is not None
        return list(self.other.submitted)

    async def call(self, op: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = await self.http.request(method, url, headers=headers, **kwargs)
        self.codes[(op, response.status_code)] += 1
        assert response.status_code < 500, (op, response.text)
        if response.headers.get("content-type", "").startswith("application/json"):
            self.note(response.json())
        return response

    def note(self, body: Any) -> None:
        """Record every job id in a body, and check each result belongs to this tenant."""
        statuses = []
        if isinstance(body, dict):
            if "job_status" in body:
                statuses = [body["job_status"]]
            statuses += body.get("job_statuses", [])
            for entry in body.get("results", []) if isinstance(body.get("results"), list) else []:
                self.check_entry(entry)
        for status in statuses:
            self.seen.add(status["id"])
            assert self.other is not None
            assert status["id"] not in self.other.submitted, f"{self.name} saw a foreign job"
            for entry in status["results"] or []:
                self.check_entry(entry)

    def check_entry(self, entry: dict[str, Any]) -> None:
        assert str(entry["id"]).startswith(f"{self.name}:"), (self.name, entry)


def _items(tenant: Tenant, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{tenant.name}:{len(tenant.submitted)}:{i}"} for i in range(count)]


async def _submit(t: Tenant) -> None:
    count = t.rng.randint(1, 5)
    job: dict[str, Any] = {"job_type": "demo.echo", "items": _items(t, count)}
    if t.rng.random() < 0.3:
        job = {"job_type": "demo.sleep", "items": [{**i, "seconds": 0.01} for i in job["items"]]}
    headers = {}
    if t.rng.random() < 0.1:
        headers["Idempotency-Key"] = f"{t.name}-{t.rng.randint(0, 3)}"
    response = await t.call("submit", "POST", "/api/v2/jobs", json={"job": job}, headers=headers)
    if response.status_code == 409:  # a key reused with another body: nothing was stored
        assert response.json()["error"] == "IdempotencyKeyReused"
        return
    assert response.status_code == 202, response.text
    status = response.json()["job_status"]
    t.submitted.setdefault(status["id"], status["total"])


async def _submit_with_the_shared_key(t: Tenant) -> None:
    job = {"job_type": "demo.echo", "items": [{"id": f"{t.name}:shared"}]}
    response = await t.call(
        "shared-key",
        "POST",
        "/api/v2/jobs",
        json={"job": job},
        headers={"Idempotency-Key": SHARED_KEY},
    )
    assert response.status_code == 202
    t.submitted.setdefault(response.json()["job_status"]["id"], 1)


async def _read_mine(t: Tenant) -> None:
    if not t.submitted:
        return
    job_id = t.rng.choice(t.mine())
    path = f"/api/v2/job_statuses/{job_id}{t.rng.choice(['', '.json'])}"
    response = await t.call("get-mine", "GET", path)
    assert response.status_code == 200 and response.json()["job_status"]["id"] == job_id


async def _read_theirs(t: Tenant) -> None:
    if not t.theirs():
        return
    job_id = t.rng.choice(t.theirs())
    suffix = t.rng.choice(["", ".json", "/results", "/results.json"])
    headers = {"If-None-Match": f'"{job_id}.1"', "Prefer": "wait=5"} if not suffix else {}
    started = time.monotonic()
    response = await t.call(
        "get-theirs", "GET", f"/api/v2/job_statuses/{job_id}{suffix}", headers=headers
    )
    assert response.status_code == 404 and response.json()["error"] == "RecordNotFound"
    assert time.monotonic() - started < 2, "a long poll on a foreign job does not wait"


async def _list(t: Tenant) -> None:
    url: str | None = f"/api/v2/job_statuses?page[size]={t.rng.randint(1, 20)}"
    for _ in range(t.rng.randint(1, 3)):
        if url is None:
            break
        response = await t.call("list", "GET", url)
        assert response.status_code == 200
        url = response.json()["links"]["next"]


async def _show_many(t: Tenant) -> None:
    mine = t.rng.sample(t.mine(), min(3, len(t.submitted)))
    theirs = t.rng.sample(t.theirs(), min(3, len(t.theirs())))
    ids = mine + theirs
    t.rng.shuffle(ids)
    response = await t.call(
        "show_many", "GET", f"/api/v2/job_statuses/show_many?ids={','.join(ids)}"
    )
    assert response.status_code == 200
    assert {s["id"] for s in response.json()["job_statuses"]} == set(mine)


async def _results(t: Tenant) -> None:
    if not t.submitted:
        return
    job_id = t.rng.choice(t.mine())
    response = await t.call("results", "GET", f"/api/v2/job_statuses/{job_id}/results?page[size]=2")
    assert response.status_code == 200


async def _cancel_mine(t: Tenant) -> None:
    if not t.submitted:
        return
    job_id = t.rng.choice(t.mine())
    response = await t.call("cancel-mine", "POST", f"/api/v2/job_statuses/{job_id}/cancel")
    assert response.status_code in (200, 409), response.text
    if response.status_code == 200:
        t.cancelled.add(job_id)
    else:
        assert response.json()["error"] == "JobFinished"


async def _cancel_theirs(t: Tenant) -> None:
    if not t.theirs():
        return
    job_id = t.rng.choice(t.theirs())
    response = await t.call("cancel-theirs", "POST", f"/api/v2/job_statuses/{job_id}/cancel")
    assert response.status_code == 404


OPERATIONS = [
    (_submit, 6),
    (_read_mine, 3),
    (_read_theirs, 3),
    (_list, 3),
    (_show_many, 2),
    (_results, 2),
    (_cancel_mine, 1),
    (_cancel_theirs, 2),
]


async def _hammer(t: Tenant, requests: int) -> None:
    ops, weights = zip(*OPERATIONS, strict=True)
    for _ in range(requests):
        await t.rng.choices(ops, weights)[0](t)
        await asyncio.sleep(0)


async def _tenant(h: Harness, name: str, seed: int) -> Tenant:
    minted = mint_token()
    await h.service.store.create_token(minted.token_id, name, minted.digest, time.time())
    headers = {"Authorization": f"Bearer {minted.secret}"}
    return Tenant(name, h.http, headers, random.Random(seed))


async def _all_listed(t: Tenant) -> dict[str, Any]:
    found: dict[str, Any] = {}
    url: str | None = "/api/v2/job_statuses?page[size]=7"
    while url:
        body = (await t.call("final-list", "GET", url)).json()
        found.update((s["id"], s) for s in body["job_statuses"])
        url = body["links"]["next"]
    return found


async def _wait_all_finished(t: Tenant, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        listed = await _all_listed(t)
        if all(s["status"] in ("completed", "failed") for s in listed.values()):
            return listed
        assert time.monotonic() < deadline, "the worker did not finish every job"
        await asyncio.sleep(0.1)


async def test_two_tenants_hammering_at_once_never_see_each_others_jobs(tmp_path: Path) -> None:
    async with harness(
        tmp_path, rate_limit_per_minute=100_000, max_active_jobs=10_000, concurrency=4
    ) as h:
        acme, globex = await _tenant(h, "acme", 1), await _tenant(h, "globex", 2)
        acme.other, globex.other = globex, acme
        await asyncio.gather(_submit_with_the_shared_key(acme), _submit_with_the_shared_key(globex))
        h.start_worker()
        per_client = REQUESTS_PER_TENANT // CLIENTS_PER_TENANT
        await asyncio.gather(
            *(_hammer(t, per_client) for t in (acme, globex) for _ in range(CLIENTS_PER_TENANT))
        )
        for t in (acme, globex):
            assert t.other is not None
            assert t.seen <= set(t.submitted), "every id a tenant saw is one it submitted"
            assert not set(t.submitted) & set(t.other.submitted)
            assert t.codes[("get-theirs", 404)] > 0 and t.codes[("cancel-theirs", 404)] > 0
            listed = await _wait_all_finished(t)
            assert set(listed) == set(t.submitted), "no job lost, none foreign"
            for job_id, status in listed.items():
                assert status["total"] == t.submitted[job_id]
                if job_id not in t.cancelled:
                    assert not (status["message"] or "").startswith("Cancelled"), (
                        "only its owner cancelled a job"
                    )
                if status["status"] == "completed":
                    assert [e["index"] for e in status["results"]] == list(range(status["total"]))
            sent = sum(t.codes.values())
            assert sent >= REQUESTS_PER_TENANT * 0.8, t.codes
