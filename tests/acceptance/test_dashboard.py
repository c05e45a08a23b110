"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
`joblot serve`: what a person sees, and that nothing a job carries can run as script."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from integration.receiver import Receiver, Reply

from .conftest import run_cli, start_worker

CHROMIUM = os.environ.get("JOBLOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<img src=x onerror=alert(1)>"
# The machine running the suite may be busy: wait generously for what the page must show.
expect.set_options(timeout=20_000)
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium for this module's tests; skipped (failed under CI) without it.

    Not for the session: Playwright's sync API keeps an event loop running in this thread
    while it is open, which would stop the asyncio tests of later modules from running."""
    if shutil.which(CHROMIUM) is None:
        reason = f"no chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set, so the browser tests must run: {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class Visitor:
    """One browser tab on a joblot server, that records what would betray a script run:
    dialogs (alert), page errors, and console errors other than failed loads."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def open(self, fragment: str = "") -> Page:
        self.page.goto(f"{self.base}/{fragment}")
        return self.page

    def row(self, job_id: str) -> Any:
        return self.page.locator(f'[data-job-id="{job_id}"]')


@pytest.fixture
def visit(browser: Browser) -> Iterator[Callable[..., Visitor]]:
    """Open a fresh browser context (its own session storage) on a server."""
    contexts = []

    def open_on(server: Any, viewport: ViewportSize = DESKTOP) -> Visitor:
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(30_000)
        contexts.append(context)
        return Visitor(context.new_page(), server.url)

    yield open_on
    for context in contexts:
        context.close()


def test_a_job_page_shows_progress_results_and_text_that_looks_like_html_as_text(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.echo", [{"id": 1}, {"id": XSS, "fail": XSS}])
    server.wait(job["id"])
    visitor = visit(server)
    page = visitor.open(f"#/jobs/{job['id']}")
    failed = page.locator("table.results tbody tr.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator('td[data-label="Details"]')).to_have_text(XSS)
    expect(failed.locator('td[data-label="Item id"]')).to_have_text(f'"{XSS}"')
    progress = page.locator(f'section[data-job-id="{job["id"]}"] progress')
    expect(progress).to_have_attribute("value", "2")
    expect(progress).to_have_attribute("max", "2")
    assert page.locator("img").count() == 0  # the string stayed text: no element was made
    assert visitor.dialogs == [] and visitor.errors == []


def test_the_list_shows_each_job_with_a_progress_bar_of_its_items(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=0)  # nothing runs: the job stays queued
    queued = server.submit("demo.echo", [{"id": i} for i in range(7)])
    visitor = visit(server)
    visitor.open()
    bar = visitor.row(queued["id"]).locator("progress")
    expect(bar).to_have_attribute("max", "7")
    expect(bar).to_have_attribute("value", "0")  # 0 while queued
    expect(visitor.row(queued["id"])).to_contain_text("queued")
    assert visitor.errors == []


def test_cancelling_a_running_job_asks_first_and_ends_it_failed(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.2} for i in range(200)])
    server.wait(job["id"], until=("working",))
    visitor = visit(server)
    page = visitor.open(f"#/jobs/{job['id']}")
    page.get_by_role("button", name="Cancel job…").click()
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Keep it").click()
    assert server.status(job["id"])["status"] == "working"  # nothing happened
    page.get_by_role("button", name="Cancel job…").click()
    page.locator("dialog.confirm").get_by_role("button", name="Cancel job").click()
    expect(page.locator(".headline .badge")).to_have_text("failed")
    expect(page.locator(".message")).to_contain_text("Cancelled")
    assert server.status(job["id"])["status"] == "failed"
    assert visitor.errors == []


def test_with_tokens_nothing_shows_before_a_token_and_a_wrong_one_is_refused(
    start_server: Any, visit: Callable[..., Visitor], joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/joblot.db"
    created = run_cli("tokens", "create", "--tenant", "acme", "--db", db, env=joblot_env)
    token = created.stdout.strip()
    server = start_server(workers=1, db=db)
    headers = {"Authorization": f"Bearer {token}"}
    job = server.http.post(
        "/api/v2/jobs", headers=headers, json={"job": {"job_type": "demo.echo", "items": [{}]}}
    ).json()["job_status"]
    deadline = time.monotonic() + 60
    while (
        server.http.get(f"/api/v2/job_statuses/{job['id']}", headers=headers).json()["job_status"][
            "status"
        ]
        != "completed"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    visitor = visit(server)
    page = visitor.open()
    expect(page.get_by_label("API token")).to_be_visible()
    assert visitor.row(job["id"]).count() == 0
    assert job["id"] not in page.content() and "demo.echo" not in page.content()
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Open dashboard").click()
    expect(page.get_by_role("alert")).to_contain_text("refused")
    assert "demo.echo" not in page.content()
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Open dashboard").click()
    expect(visitor.row(job["id"])).to_contain_text("demo.echo")
    assert token not in page.url
    stored = page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]")
    assert stored == [1, 0, ""]  # the token is in this tab's session storage, nowhere else
    page.reload()  # same tab, same session: no second prompt
    expect(visitor.row(job["id"])).to_be_visible()
    visitor.open(f"#/jobs/{job['id']}")
    with page.expect_download() as download:  # fetched with the token header, not in the URL
        page.get_by_role("button", name="Export JSONL").click()
    assert '"index":0' in Path(download.value.path()).read_text()
    assert token not in download.value.url


def test_the_list_and_a_job_page_fit_a_phone_screen(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    long_type_job = server.submit("demo.echo", [{"id": "x" * 300, "fail": "y" * 500}])
    server.wait(long_type_job["id"])
    visitor = visit(server, PHONE)
    page = visitor.open()
    expect(visitor.row(long_type_job["id"])).to_be_visible()
    width = "() => document.documentElement.scrollWidth"
    assert page.evaluate(width) <= PHONE["width"]
    visitor.open(f"#/jobs/{long_type_job['id']}")
    expect(page.locator("table.results tbody tr")).to_have_count(1)
    assert page.evaluate(width) <= PHONE["width"]


def test_the_list_filters_by_status_and_type_on_the_server(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    echo = server.submit("demo.echo", [{"id": 1}])
    server.wait(echo["id"])
    sleeping = server.submit("demo.sleep", [{"id": i, "seconds": 0.5} for i in range(160)])
    server.wait(sleeping["id"], until=("working",))
    visitor = visit(server)
    page = visitor.open("#/?status=queued,working")
    expect(visitor.row(sleeping["id"])).to_be_visible()
    expect(visitor.row(echo["id"])).to_have_count(0)
    page.locator("#filter-status").select_option("completed")
    expect(visitor.row(echo["id"])).to_be_visible()
    expect(visitor.row(sleeping["id"])).to_have_count(0)
    assert "status=completed" in page.url
    page.locator("#filter-status").select_option("")
    page.locator("#filter-type").fill("demo.sleep")
    page.locator("#filter-type").press("Enter")
    expect(visitor.row(sleeping["id"])).to_be_visible()
    expect(visitor.row(echo["id"])).to_have_count(0)
    server.http.post(f"/api/v2/job_statuses/{sleeping['id']}/cancel")
    assert visitor.errors == []


def test_a_job_whose_progress_has_not_moved_for_a_minute_is_flagged(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    slow = server.submit("demo.sleep", [{"id": 1, "seconds": 8}, {"id": 2, "seconds": 8}])
    server.wait(slow["id"], until=("working",))
    visitor = visit(server)
    visitor.page.clock.install()  # the browser's clock, so a minute can pass at once
    page = visitor.open()
    row = visitor.row(slow["id"])
    expect(row).to_be_visible()
    expect(row.locator(".flag")).to_be_hidden()
    page.clock.fast_forward("02:00")
    expect(row.locator(".flag")).to_have_text(re.compile(r"no progress for 2m"))
    expect(row).to_have_class(re.compile(r"\bstalled\b"))


def test_a_job_page_lists_its_webhook_deliveries_and_sends_one_again(
    start_server: Any, visit: Callable[..., Visitor], joblot_env: dict[str, str]
) -> None:
    joblot_env.update(JOBLOT_WEBHOOK_ALLOW_PRIVATE="1", JOBLOT_WEBHOOK_RETRY_SECONDS="0.2")
    receiver = Receiver()
    try:
        receiver.reply(Reply(status=500))  # the first attempt fails, the retry succeeds
        server = start_server(workers=1)
        body = {"job_type": "demo.echo", "items": [{"id": 1}], "callback_url": receiver.url}
        job = server.http.post("/api/v2/jobs", json={"job": body}).json()["job_status"]
        receiver.wait_for(2)
        visitor = visit(server)
        page = visitor.open(f"#/jobs/{job['id']}")
        delivery = page.locator("details.delivery")
        expect(delivery).to_contain_text("delivered")
        expect(delivery).to_contain_text("job.completed")
        expect(delivery).to_contain_text("2 attempts")
        delivery.locator("summary").click()
        attempts = delivery.locator("ol.attempts li")
        expect(attempts).to_have_count(2)
        expect(attempts.nth(0)).to_contain_text("HTTP 500")
        expect(attempts.nth(1)).to_contain_text("HTTP 200")
        page.get_by_role("button", name="Send again").click()
        receiver.wait_for(3)
        expect(page.locator("details.delivery")).to_contain_text("3 attempts")
        assert visitor.errors == []
    finally:
        receiver.close()


def test_a_job_without_a_callback_says_it_has_no_deliveries(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    job = server.submit("demo.echo", [{"id": 1}])
    server.wait(job["id"])
    page = visit(server).open(f"#/jobs/{job['id']}")
    expect(page.locator(".deliveries")).to_contain_text("without a callback_url")
    expect(page.get_by_role("button", name="Send again")).to_be_hidden()


def test_the_job_page_filters_failures_exports_them_and_retries_them(
    start_server: Any, visit: Callable[..., Visitor]
) -> None:
    server = start_server(workers=1)
    items: list[dict[str, Any]] = [{"id": i} for i in range(120)]
    for bad in (7, 70, 111):
        items[bad]["fail"] = f"row {bad} is bad"
    job = server.submit("demo.echo", items)
    server.wait(job["id"])
    visitor = visit(server)
    page = visitor.open(f"#/jobs/{job['id']}")
    rows = page.locator("table.results tbody tr")
    expect(rows).to_have_count(50)  # the first page of 50, every outcome
    page.get_by_label("Failures only").check()
    expect(rows).to_have_count(3)
    expect(page.locator("table.results tbody tr.failed")).to_have_count(3)
    expect(rows.nth(1)).to_contain_text("row 70 is bad")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export failures CSV").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("index,id,success,error,details")
    assert [line.split(",")[0] for line in lines[1:]] == ["7", "70", "111"]
    page.get_by_role("button", name="Retry 3 failed items").click()
    page.locator("dialog.confirm").get_by_role("button", name="Retry them").click()
    expect(page).not_to_have_url(re.compile(job["id"]))
    retried = page.url.rsplit("/", 1)[1]
    expect(page.locator(f'section[data-job-id="{retried}"] progress')).to_have_attribute("max", "3")
    final = server.wait(retried)
    assert [e["id"] for e in final["results"]] == [7, 70, 111]
    assert visitor.errors == []


def test_the_list_follows_the_tenant_stream_a_new_job_appears_and_fills_up_without_reload(
    start_server: Any, visit: Callable[..., Visitor], joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=0)
    visitor = visit(server)
    page = visitor.open()
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.2} for i in range(5)])
    row = visitor.row(job["id"])
    expect(row).to_contain_text("queued")  # appeared without a reload
    worker = start_worker(server.db, joblot_env, tmp_path / "worker.log")
    try:
        expect(row.locator("progress")).to_have_attribute("value", "5")
        expect(row).to_contain_text("completed")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert page.evaluate("window.sameDocument === true")
    assert visitor.errors == []
