"""Completion webhooks end to end: the real app in-process, a real worker, and a real HTTP
receiver in this process that answers as each test scripts it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from joblot import AsyncClient, verify_webhook
from joblot.api import create_app
from joblot.auth import mint_token
from joblot.delivery import Deliverer
from joblot.service import Service
from unit.test_egress import REFUSED_URLS

from .harness import Harness, harness
from .receiver import Received, Receiver, Reply

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "webhook_allow_private": True,  # the receiver listens on 127.0.0.1
    "webhook_retry_seconds": (0.2,),
    "webhook_poll_seconds": 0.05,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[Harness]:
    """A harness with webhook settings for tests (short retries) and a worker running."""
    async with harness(tmp_path, **{**FAST, **settings}) as h:
        h.start_worker()
        yield h


async def submit(h: Harness, url: str, items: list[Any], job_type: str = "demo.echo") -> Any:
    job = {"job_type": job_type, "items": items, "callback_url": url}
    response = await h.http.post("/api/v2/jobs", json={"job": job})
    assert response.status_code == 202, response.text
    return response.json()["job_status"]


async def arrived(receiver: Receiver, count: int, timeout: float = 20) -> list[Received]:
    return await asyncio.to_thread(receiver.wait_for, count, timeout)


async def deliveries(h: Harness, job_id: str) -> list[Any]:
    response = await h.http.get(f"/api/v2/job_statuses/{job_id}/deliveries")
    assert response.status_code == 200, response.text
    found: list[Any] = response.json()["deliveries"]
    return found


async def started(h: Harness, job_id: str) -> None:
    """Once the job is working."""
    for _ in range(1000):
        status = (await h.http.get(f"/api/v2/job_statuses/{job_id}")).json()["job_status"]
        if status["status"] != "queued":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never started")


async def settled(h: Harness, job_id: str, state: str, timeout: float = 10) -> Any:
    """The job's one delivery once it reached `state`."""
    deadline = time.monotonic() + timeout
    while True:
        found = await deliveries(h, job_id)
        if found and found[0]["state"] == state:
            return found[0]
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def test_a_finished_job_posts_an_event_that_standardwebhooks_verifies(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}, {"id": 2, "fail": "bad row"}])
        (request,) = await arrived(receiver, 1)
        secret = (await h.service.webhook_secret("default")).secret
        assert secret.startswith("whsec_")
        event = Webhook(secret).verify(request.body.decode(), request.headers)
        assert event == verify_webhook(secret, request.body, request.headers)
        assert event["type"] == "job.completed"
        status = (await h.http.get(f"/api/v2/job_statuses/{job['id']}")).json()["job_status"]
        assert event["data"] == {"job_status": status}
        assert status["results"][1]["error"] == "DemoFailure"
        assert event["timestamp"].endswith("Z")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-id"].startswith("msg_")
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        delivery = await settled(h, job["id"], "delivered")
        assert delivery["id"] == request.headers["webhook-id"]
        assert delivery["type"] == "job.completed" and delivery["next_attempt_at"] is None
        (attempt,) = delivery["attempts"]
        assert attempt["status_code"] == 200 and attempt["error"] is None
        assert attempt["at"].endswith("Z")


async def test_a_signature_under_another_secret_does_not_verify(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        await submit(h, receiver.url, [{"id": 1}])
        (request,) = await arrived(receiver, 1)
        other = await h.service.webhook_secret("another-tenant")
        with pytest.raises(Exception, match="signature"):
            Webhook(other.secret).verify(request.body.decode(), request.headers)


async def test_a_500_then_a_200_makes_two_attempts_with_the_same_webhook_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.reply(Reply(500, body=b"database down " * 100))
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        first, second = await arrived(receiver, 2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        delivery = await settled(h, job["id"], "delivered")
        failed, succeeded = delivery["attempts"]
        assert failed["status_code"] == 500
        assert failed["error"].startswith("the receiver answered 500: database down")
        assert len(failed["error"]) < 300  # only an excerpt of the receiver's body is kept
        assert succeeded == {**succeeded, "status_code": 200, "error": None}
        metrics = (await h.http.get("/metrics")).text
        assert 'joblot_webhook_deliveries_total{outcome="failure"} 1' in metrics
        assert 'joblot_webhook_deliveries_total{outcome="success"} 1' in metrics


async def test_410_gone_stops_at_once(tmp_path: Path, receiver: Receiver) -> None:
    receiver.reply(Reply(410))
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        await arrived(receiver, 1)
        delivery = await settled(h, job["id"], "failed")
        await asyncio.sleep(1.0)  # five retry delays: no second attempt comes
        assert len(receiver.requests) == 1
        assert [a["status_code"] for a in delivery["attempts"]] == [410]
        assert delivery["next_attempt_at"] is None


async def test_retries_stop_after_the_most_attempts_and_say_so(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.default = Reply(503)
    caplog.set_level(logging.INFO, "joblot.webhooks")
    async with running(tmp_path, webhook_max_attempts=3) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        delivery = await settled(h, job["id"], "failed")
        assert len(delivery["attempts"]) == 3
        await asyncio.sleep(0.6)
        assert len(receiver.requests) == 3
    given_up = [r for r in caplog.records if r.__dict__.get("event") == "webhook_given_up"]
    assert len(given_up) == 1
    assert "webhook given up" in given_up[0].getMessage()
    assert given_up[0].__dict__["job_id"] == job["id"]
    assert given_up[0].__dict__["tenant"] == "default"


async def test_retry_after_is_honoured(tmp_path: Path, receiver: Receiver) -> None:
    receiver.reply(Reply(503, headers={"Retry-After": "2"}))
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        first, second = await arrived(receiver, 2)
        assert second.at - first.at >= 1.9  # the schedule alone would say 0.2 s
        await settled(h, job["id"], "delivered")


async def test_a_job_cancelled_mid_run_sends_job_failed(tmp_path: Path, receiver: Receiver) -> None:
    async with running(tmp_path) as h:
        items = [{"id": i, "seconds": 0.2} for i in range(50)]
        job = await submit(h, receiver.url, items, job_type="demo.sleep")
        await started(h, job["id"])
        assert (await h.http.post(f"/api/v2/job_statuses/{job['id']}/cancel")).status_code == 200
        (request,) = await arrived(receiver, 1)
        event = request.event()
        assert event["type"] == "job.failed"
        assert event["data"]["job_status"]["status"] == "failed"
        assert event["data"]["job_status"]["message"].startswith("Cancelled")


async def test_a_receiver_that_hangs_does_not_delay_items(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.default = Reply(hang=True)
    async with running(tmp_path, webhook_timeout_seconds=60, webhook_concurrency=2) as h:
        for _ in range(4):  # more than the delivery slots
            await submit(h, receiver.url, [{"id": 1}])
        await asyncio.to_thread(receiver.wait_hanging, 2)
        started = time.monotonic()
        busy = await h.submit([{"id": i} for i in range(200)])
        done = await h.wait(busy["id"], timeout=30)
        assert done["status"] == "completed" and done["progress"] == 200
        assert receiver.hanging == 2  # still held when every item had run
        assert time.monotonic() - started < 30


async def test_redeliver_sends_the_event_again_with_the_same_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        await settled(h, job["id"], "delivered")
        response = await h.http.post(f"/api/v2/job_statuses/{job['id']}/deliveries/redeliver")
        assert response.status_code == 202
        assert response.json()["deliveries"][0]["state"] == "pending"
        first, again = await arrived(receiver, 2)
        assert first.headers["webhook-id"] == again.headers["webhook-id"]
        assert first.body == again.body
        delivery = await settled(h, job["id"], "delivered")
        assert [a["status_code"] for a in delivery["attempts"]] == [200, 200]


async def test_redeliver_needs_a_finished_job_with_a_callback(tmp_path: Path) -> None:
    async with harness(tmp_path, **FAST) as h:  # no worker: jobs stay queued
        queued = await submit(h, "http://127.0.0.1:9/hook", [{"id": 1}])
        plain = await h.submit([{"id": 1}])
        await h.http.post(f"/api/v2/job_statuses/{plain['id']}/cancel")
        answers = {
            queued["id"]: (409, "JobNotFinished"),
            plain["id"]: (422, "NoCallbackUrl"),
            "0" * 32: (404, "RecordNotFound"),
        }
        for job_id, (code, name) in answers.items():
            response = await h.http.post(f"/api/v2/job_statuses/{job_id}/deliveries/redeliver")
            assert (response.status_code, response.json()["error"]) == (code, name)
        assert await deliveries(h, plain["id"]) == []
        assert await deliveries(h, queued["id"]) == []


async def test_after_a_rotation_deliveries_verify_with_the_new_and_the_old_secret(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        old = (await h.service.webhook_secret("default")).secret
        new = (await h.service.webhook_secret("default", rotate=True)).secret
        assert new != old
        await submit(h, receiver.url, [{"id": 1}])
        (request,) = await arrived(receiver, 1)
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in (new, old):
            Webhook(secret).verify(request.body.decode(), request.headers)


async def test_another_tenant_cannot_read_or_redeliver_deliveries(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        tokens = {}
        for tenant in ("acme", "globex"):
            minted = mint_token()
            await h.service.store.create_token(minted.token_id, tenant, minted.digest, time.time())
            tokens[tenant] = {"Authorization": f"Bearer {minted.secret}"}
        job = {"job_type": "demo.echo", "items": [{"id": 1}], "callback_url": receiver.url}
        response = await h.http.post("/api/v2/jobs", json={"job": job}, headers=tokens["acme"])
        job_id = response.json()["job_status"]["id"]
        await arrived(receiver, 1)
        path = f"/api/v2/job_statuses/{job_id}/deliveries"
        mine = await h.http.get(path, headers=tokens["acme"])
        assert mine.status_code == 200 and len(mine.json()["deliveries"]) == 1
        for method, url in (("GET", path), ("POST", f"{path}/redeliver")):
            theirs = await h.http.request(method, url, headers=tokens["globex"])
            assert theirs.status_code == 404
            assert theirs.json()["error"] == "RecordNotFound"
        assert (await h.http.get(path)).status_code == 401
        # and the event was signed with acme's secret, not globex's
        acme = (await h.service.webhook_secret("acme")).secret
        (request,) = receiver.requests
        Webhook(acme).verify(request.body.decode(), request.headers)


async def test_the_address_is_checked_again_when_delivering(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with harness(tmp_path, **FAST) as h:  # submitted while private addresses were allowed
        job = await submit(h, receiver.url, [{"id": 1}])
        await h.http.post(f"/api/v2/job_statuses/{job['id']}/cancel")
        strict = Service(
            h.service.store, h.service.app, h.service.settings.replace(webhook_allow_private=False)
        )
        task = asyncio.create_task(Deliverer(strict).run())
        try:
            delivery = await settled(h, job["id"], "pending")
            while not delivery["attempts"] or delivery["attempts"][0]["error"] is None:
                await asyncio.sleep(0.05)
                delivery = (await deliveries(h, job["id"]))[0]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        error = delivery["attempts"][0]["error"]
        assert "127.0.0.1, which is not a public address" in error
        assert delivery["attempts"][0]["status_code"] is None
        assert receiver.requests == []


async def test_the_client_submits_a_callback_url_and_reads_deliveries(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        transport = httpx.ASGITransport(app=create_app(h.service))
        async with AsyncClient("http://joblot.test", transport=transport) as client:
            status = await client.submit("demo.echo", [{"id": 1}], callback_url=receiver.url)
            (request,) = await arrived(receiver, 1)
            assert request.event()["data"]["job_status"]["id"] == status.id
            await settled(h, status.id, "delivered")
            (delivery,) = await client.deliveries(status.id)
            assert delivery["state"] == "delivered"
            (again,) = await client.redeliver(status.id)
            # queued again; the deliverer may have sent it before the answer was read
            assert again["state"] in ("pending", "delivered")
            await arrived(receiver, 2)


async def test_a_submit_with_a_callback_to_a_non_public_address_is_refused_with_422(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:  # JOBLOT_WEBHOOK_ALLOW_PRIVATE not given
        for name, url in REFUSED_URLS.items():
            job = {"job_type": "demo.echo", "items": [{"id": 1}], "callback_url": url}
            response = await h.http.post("/api/v2/jobs", json={"job": job})
            assert response.status_code == 422, (name, response.text)
            body = response.json()
            assert body["error"] == "RecordInvalid", name
            assert body["description"].startswith('"callback_url" is refused: '), name
        listed = (await h.http.get("/api/v2/job_statuses")).json()["job_statuses"]
        assert listed == []  # nothing refused was stored


async def test_a_worker_stopping_mid_attempt_makes_the_delivery_due_again_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.reply(Reply(hang=True))
    async with running(tmp_path, webhook_timeout_seconds=60) as h:
        job = await submit(h, receiver.url, [{"id": 1}])
        await asyncio.to_thread(receiver.wait_hanging, 1)
        worker, task = h.workers.pop()
        worker.stop()
        await task  # the attempt in flight is cut off
        (delivery,) = await deliveries(h, job["id"])
        assert delivery["state"] == "pending"
        assert delivery["attempts"][0]["error"].startswith("the process stopped")
        h.start_worker()  # not waiting for the 120 s lease: it is due now
        first, again = await arrived(receiver, 2)
        assert first.headers["webhook-id"] == again.headers["webhook-id"]
        assert (await settled(h, job["id"], "delivered"))["attempts"][1]["status_code"] == 200


async def test_a_retry_of_the_failed_items_reports_to_the_same_callback(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with running(tmp_path) as h:
        job = await submit(h, receiver.url, [{"id": 1}, {"id": 2, "fail": "bad row"}])
        await arrived(receiver, 1)
        response = await h.http.post(f"/api/v2/job_statuses/{job['id']}/retry")
        assert response.status_code == 202, response.text
        retry = response.json()["job_status"]
        first, second = await arrived(receiver, 2)
        assert first.headers["webhook-id"] != second.headers["webhook-id"]
        assert second.event()["data"]["job_status"]["id"] == retry["id"]
        assert second.event()["data"]["job_status"]["total"] == 1
        plain = await h.submit([{"id": 3, "fail": "no callback"}])
        await h.wait(plain["id"])
        again = await h.http.post(f"/api/v2/job_statuses/{plain['id']}/retry")
        await h.wait(again.json()["job_status"]["id"])
        assert await deliveries(h, again.json()["job_status"]["id"]) == []
