"""Tokens, tenants, quotas and rate limits, against the real app in-process on SQLite."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from joblot.auth import CACHE_SECONDS, Authenticator, mint_token
from joblot.errors import Unauthorized
from joblot.models import DEFAULT_TENANT
from joblot.service import Service
from joblot.store import TokenCount

from .harness import Harness, SteppedClock, harness

pytestmark = pytest.mark.anyio
JOB = {"job": {"job_type": "demo.echo", "items": [{"id": 1}]}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _token(h: Harness, tenant: str) -> tuple[str, str]:
    minted = mint_token()
    await h.service.store.create_token(minted.token_id, tenant, minted.digest, time.time())
    return minted.token_id, minted.secret


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _zendesk_basic(token: str, email: str = "agent@example.com") -> dict[str, str]:
    raw = base64.b64encode(f"{email}/token:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def test_without_tokens_a_loopback_server_is_open_to_the_default_tenant(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        assert (await h.http.post("/api/v2/jobs", json=JOB)).status_code == 202
        _, token = await _token(h, "default")
        h.clock.advance(2.1)  # the count of live tokens is cached for 2 s
        refused = await h.http.get("/api/v2/job_statuses")
        assert refused.status_code == 401
        listed = await h.http.get("/api/v2/job_statuses", headers=_bearer(token))
        assert len(listed.json()["job_statuses"]) == 1, "open-mode jobs belong to 'default'"


async def test_without_tokens_a_public_server_lets_nobody_in(tmp_path: Path) -> None:
    async with harness(tmp_path, host="0.0.0.0") as h:
        response = await h.http.get("/api/v2/job_statuses")
        assert response.status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer wrong",
        "Basic !!!",
        "Basic " + base64.b64encode(b"a:b").decode(),
        "Token abc",
        "Bearer " + "x" * 5000,
    ],
)
async def test_bad_or_missing_credentials_get_401_with_a_challenge(
    tmp_path: Path, header: str | None
) -> None:
    async with harness(tmp_path) as h:
        await _token(h, "acme")
        headers = {} if header is None else {"Authorization": header}
        response = await h.http.get("/api/v2/job_statuses", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "Couldn't authenticate you"
        assert "Bearer" in response.headers["WWW-Authenticate"]


async def test_bearer_and_zendesk_basic_tokens_act_for_their_tenant(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        _, acme = await _token(h, "acme")
        _, globex = await _token(h, "globex")
        mine = await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(acme))
        assert mine.status_code == 202
        job_id = mine.json()["job_status"]["id"]
        read = await h.http.get(f"/api/v2/job_statuses/{job_id}", headers=_zendesk_basic(acme))
        assert read.status_code == 200
        for path in (
            f"/api/v2/job_statuses/{job_id}.json",
            f"/api/v2/job_statuses/{job_id}/results",
        ):
            other = await h.http.get(path, headers=_bearer(globex))
            assert other.status_code == 404 and other.json()["error"] == "RecordNotFound"
        cancel = await h.http.post(f"/api/v2/job_statuses/{job_id}/cancel", headers=_bearer(globex))
        assert cancel.status_code == 404
        many = await h.http.get(
            f"/api/v2/job_statuses/show_many?ids={job_id}", headers=_bearer(globex)
        )
        assert many.json()["job_statuses"] == []
        listed = await h.http.get("/api/v2/job_statuses", headers=_bearer(globex))
        assert listed.json()["job_statuses"] == []
        events = await h.http.get(f"/api/v2/job_statuses/{job_id}/events", headers=_bearer(globex))
        assert events.status_code == 404
        same_key = {**_bearer(globex), "Idempotency-Key": "k"}
        first = await h.http.post(
            "/api/v2/jobs", json=JOB, headers={**_bearer(acme), "Idempotency-Key": "k"}
        )
        second = await h.http.post("/api/v2/jobs", json=JOB, headers=same_key)
        assert first.json()["job_status"]["id"] != second.json()["job_status"]["id"]


async def test_a_revoked_token_stops_working(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        token_id, token = await _token(h, "acme")
        assert (await h.http.get("/api/v2/job_statuses", headers=_bearer(token))).status_code == 200
        assert await h.service.store.revoke_token(token_id, time.time())
        assert not await h.service.store.revoke_token(token_id, time.time())
        h.clock.advance(2.1)  # tokens are cached for 2 s
        assert (await h.http.get("/api/v2/job_statuses", headers=_bearer(token))).status_code == 401


class CountingService(Service):
    """The real service, counting the token lookups that reach its database."""

    finds = counts = 0

    async def find_token(self, digest: str) -> tuple[str, str] | None:
        self.finds += 1
        return await super().find_token(digest)

    async def count_tokens(self) -> TokenCount:
        self.counts += 1
        return await super().count_tokens()


async def test_requests_whose_token_lookup_is_out_of_date_together_share_one_query(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        token_id, token = await _token(h, "acme")
        service = CountingService(h.service.store, h.service.app, h.service.settings)
        clock = SteppedClock()
        auth = Authenticator(service, h.service.settings, clock)
        header = _bearer(token)["Authorization"]
        for lookups in (1, 2):  # the second time, the first lookup is out of date
            callers = await asyncio.gather(*(auth.caller(header) for _ in range(50)))
            assert {c.tenant for c in callers} == {"acme"} and service.finds == lookups
            clock.advance(CACHE_SECONDS)
        assert await h.service.store.revoke_token(token_id, time.time())
        refused = await asyncio.gather(
            *(auth.caller(header) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthorized) for r in refused) and service.finds == 3


async def test_requests_without_credentials_share_one_count_of_tokens(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        service = CountingService(h.service.store, h.service.app, h.service.settings)
        clock = SteppedClock()
        auth = Authenticator(service, h.service.settings, clock)
        for counts in (1, 2):  # the second time, the first count is out of date
            callers = await asyncio.gather(*(auth.caller(None) for _ in range(50)))
            assert {c.tenant for c in callers} == {DEFAULT_TENANT} and service.counts == counts
            clock.advance(CACHE_SECONDS)
        await _token(h, "acme")  # from now on, every request needs a token
        refused = await asyncio.gather(
            *(auth.caller(None) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthorized) for r in refused) and service.counts == 3


async def test_a_tenant_may_have_only_so_many_unfinished_jobs(tmp_path: Path) -> None:
    async with harness(tmp_path, max_active_jobs=2) as h:
        _, acme = await _token(h, "acme")
        _, globex = await _token(h, "globex")
        for _ in range(2):
            assert (
                await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(acme))
            ).status_code == 202
        refused = await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(acme))
        assert refused.status_code == 429 and refused.json()["error"] == "TooManyJobs"
        assert int(refused.headers["Retry-After"]) >= 1
        other = await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(globex))
        assert other.status_code == 202, "another tenant's quota is its own"
        h.start_worker()
        deadline = time.monotonic() + 10
        while (
            await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(acme))
        ).status_code != 202:
            assert time.monotonic() < deadline, "finished jobs must free the quota"
            await asyncio.sleep(0.05)


async def test_a_token_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    async with harness(tmp_path, rate_limit_per_minute=5) as h:
        _, acme = await _token(h, "acme")
        _, globex = await _token(h, "globex")
        codes = [
            (await h.http.get("/api/v2/job_statuses", headers=_bearer(acme))).status_code
            for _ in range(6)
        ]
        assert codes == [200] * 5 + [429]
        limited = await h.http.get("/api/v2/job_statuses", headers=_bearer(acme))
        assert limited.json()["error"] == "TooManyRequests"
        assert int(limited.headers["Retry-After"]) >= 1
        fine = await h.http.get("/api/v2/job_statuses", headers=_bearer(globex))
        assert fine.status_code == 200, "each token has its own budget"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v2/job_statuses?page[size]=0"),  # a bad page size
        ("GET", "/api/v2/job_statuses?page[after]=not-a-cursor"),
        ("GET", "/api/v2/job_statuses/show_many"),  # ids missing
        ("GET", "/api/v2/job_statuses/show_many?ids=" + ",".join(["a"] * 101)),
        ("GET", "/api/v2/job_statuses/not-an-id"),  # malformed id: a 404 otherwise
        ("GET", "/api/v2/job_statuses/not-an-id/results?page[size]=x"),
        ("GET", "/api/v2/job_statuses/not-an-id/events"),
        ("POST", "/api/v2/job_statuses/not-an-id/cancel"),
        ("POST", "/api/v2/jobs"),  # no body at all
    ],
)
async def test_a_malformed_request_without_credentials_gets_401_first(
    tmp_path: Path, method: str, path: str
) -> None:
    async with harness(tmp_path) as h:
        await _token(h, "acme")
        response = await h.http.request(method, path, headers={"Content-Type": "text/plain"})
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "Couldn't authenticate you"


async def test_revoking_the_last_token_leaves_a_loopback_server_closed(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        token_id, token = await _token(h, "acme")
        assert await h.service.store.revoke_token(token_id, time.time())
        h.clock.advance(2.1)  # lookups and the count of tokens are cached for 2 s
        anonymous = await h.http.get("/api/v2/job_statuses")
        assert anonymous.status_code == 401, "a revoked last token must not reopen the server"
        assert (await h.http.get("/api/v2/job_statuses", headers=_bearer(token))).status_code == 401


async def test_insecure_serves_without_tokens_again_once_none_is_live(tmp_path: Path) -> None:
    async with harness(tmp_path, insecure=True) as h:
        token_id, _ = await _token(h, "default")
        h.clock.advance(2.1)
        assert (await h.http.get("/api/v2/job_statuses")).status_code == 401
        assert await h.service.store.revoke_token(token_id, time.time())
        h.clock.advance(2.1)
        assert (await h.http.post("/api/v2/jobs", json=JOB)).status_code == 202


async def test_a_token_may_hold_only_so_many_long_polls_at_once(tmp_path: Path) -> None:
    async with harness(tmp_path, max_streams_per_token=2) as h:
        _, token = await _token(h, "acme")
        job = (await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(token))).json()
        url = f"/api/v2/job_statuses/{job['job_status']['id']}"
        tag = (await h.http.get(url, headers=_bearer(token))).headers["etag"]
        polling = {**_bearer(token), "If-None-Match": tag, "Prefer": "wait=2"}
        held = [asyncio.create_task(h.http.get(url, headers=polling)) for _ in range(2)]
        await asyncio.sleep(0.3)  # both are waiting now
        third = await h.http.get(url, headers=polling)
        assert third.status_code == 429 and third.json()["error"] == "TooManyRequests"
        assert third.headers["retry-after"].isdigit()
        assert [r.status_code for r in await asyncio.gather(*held)] == [304, 304]
        again = await h.http.get(url, headers={**polling, "Prefer": "wait=1"})
        assert again.status_code == 304  # released: room again


async def test_a_long_poll_ends_within_2_s_of_its_token_being_revoked(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        token_id, token = await _token(h, "acme")
        job = (await h.http.post("/api/v2/jobs", json=JOB, headers=_bearer(token))).json()
        url = f"/api/v2/job_statuses/{job['job_status']['id']}"
        tag = (await h.http.get(url, headers=_bearer(token))).headers["etag"]
        polling = {**_bearer(token), "If-None-Match": tag, "Prefer": "wait=30"}
        poll = asyncio.create_task(h.http.get(url, headers=polling))
        await asyncio.sleep(0.3)
        assert await h.service.store.revoke_token(token_id, time.time())
        revoked = time.monotonic()
        response = await poll
        assert time.monotonic() - revoked < 2.0
        assert response.status_code == 401 and "revoked" in response.json()["description"]
