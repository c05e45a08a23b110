"""Take the dashboard screenshots shown in the README: the job list and a job page, at desktop
and phone width, of a real `joblot serve` with a few jobs in every state.

    .venv/bin/python docs/screenshots.py        # needs Debian's chromium; about 90 s

It serves the job types of this file (a plausible ticketing workload) on a temporary SQLite
file and writes docs/dashboard-{list,job}-{desktop,phone}.png.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

from joblot import App, ItemFailed

HERE = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
SIZES = {"desktop": {"width": 1280, "height": 720}, "phone": {"width": 390, "height": 844}}

app = App()


@app.job_type("tickets.update", action="update")
def update_ticket(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Update a ticket; a few are locked."""
    time.sleep(item.get("seconds", 0.01))
    if item.get("locked"):
        raise ItemFailed(f"ticket {item['id']} is locked by an admin", error="TicketLocked")
    return {"status": "Updated"}


@app.job_type("crm.sync")
def sync_contact(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Sync a contact; slow."""
    time.sleep(item.get("seconds", 0.2))
    return {"status": "Synced"}


@app.job_type("emails.send")
def send_email(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Send an email; some addresses bounce."""
    if item.get("bounce"):
        raise ItemFailed(f"{item['to']} bounced: mailbox unavailable", error="Bounced")
    return {"status": "Sent"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _submit(http: httpx.Client, job_type: str, items: list[dict[str, Any]]) -> str:
    response = http.post("/api/v2/jobs", json={"job": {"job_type": job_type, "items": items}})
    response.raise_for_status()
    return str(response.json()["job_status"]["id"])


def _wait(http: httpx.Client, job_id: str, until: tuple[str, ...]) -> None:
    while http.get(f"/api/v2/job_statuses/{job_id}").json()["job_status"]["status"] not in until:
        time.sleep(0.1)


def populate(http: httpx.Client) -> str:
    """Jobs in every state; returns the one whose page is shown."""
    rng = random.Random(7)
    emails = [
        {"id": i, "to": f"user{i}@example.com", "bounce": rng.random() < 0.04} for i in range(400)
    ]
    _wait(http, _submit(http, "emails.send", emails), ("completed",))
    cancelled = _submit(http, "crm.sync", [{"id": i} for i in range(300)])
    _wait(http, cancelled, ("working",))
    http.post(f"/api/v2/job_statuses/{cancelled}/cancel")
    stuck = _submit(http, "crm.sync", [{"id": i, "seconds": 120} for i in range(4)])
    tickets = [
        {"id": 10_000 + i, "seconds": 0.05, "locked": rng.random() < 0.03} for i in range(20_000)
    ]
    shown = _submit(http, "tickets.update", tickets)
    _wait(http, stuck, ("working",))
    _submit(http, "emails.send", [{"id": i, "to": f"x{i}@example.com"} for i in range(50)])
    return shown


def shoot(url: str, job_id: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        for name, size in SIZES.items():
            page = browser.new_context(viewport=size, device_scale_factor=1).new_page()  # type: ignore[arg-type]
            page.goto(f"{url}/")
            page.wait_for_selector(f'[data-job-id="{job_id}"]')
            time.sleep(2.5)  # a few live updates, so that items/s has something to say
            page.screenshot(path=HERE / f"dashboard-list-{name}.png")
            page.goto(f"{url}/#/jobs/{job_id}")
            page.wait_for_selector("table.results tbody tr")
            failures_only = page.locator("#failures-only")
            if failures_only.count():
                failures_only.check()
                page.wait_for_selector("table.results tbody tr.failed")
            time.sleep(1.5)
            page.screenshot(path=HERE / f"dashboard-job-{name}.png", full_page=name == "desktop")
        browser.close()


def main() -> int:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(HERE), "JOBLOT_LOG_LEVEL": "warning"}
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "joblot",
                "serve",
                "--db",
                f"sqlite:///{tmp}/shots.db",
                "--port",
                str(port),
                "--workers",
                "2",
                "--app",
                "screenshots:app",
            ],
            env=env,
            start_new_session=True,
        )
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(100):
                    try:
                        if http.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.2)
                job_id = populate(http)
                time.sleep(62)  # long enough for the stuck job to be flagged
                shoot(url, job_id)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(60)
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("dashboard-*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
