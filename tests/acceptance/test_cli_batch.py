"""Failures where people look, as real `joblot` processes against a real server: `watch`,
`list` and `status` count failed items, `list` filters."""

from __future__ import annotations

import json
from typing import Any

from .conftest import run_cli


def _env(env: dict[str, str], server: Any) -> dict[str, str]:
    return {**env, "JOBLOT_URL": server.url}


def _every_seventh_fails(count: int) -> list[dict[str, Any]]:
    return [{"id": i, **({"fail": f"row {i}"} if i % 7 == 0 else {})} for i in range(count)]


def test_watch_list_and_status_show_the_failed_items(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=1)
    env = _env(joblot_env, server)
    job = server.submit("demo.echo", _every_seventh_fails(2000))
    watched = run_cli("watch", job["id"], env=env)
    # completed, but with failed items: neither 0 (all went well) nor 1 (the job failed)
    assert watched.returncode == 3, watched.stderr
    assert "286 failed" in watched.stdout
    assert f"286 of 2,000 items failed; see them with `joblot results {job['id']} --failed`" in (
        watched.stdout
    )
    shown = json.loads(run_cli("status", job["id"], env=env).stdout)
    assert list(shown) == ["job_status", "job_stats"]
    assert shown["job_stats"]["failures"] == 286 and shown["job_stats"]["finished_at"]
    listed = run_cli("list", env=env).stdout.splitlines()
    assert "FAILED" in listed[0]
    assert listed[1].split()[:5] == [job["id"], "demo.echo", "completed", "2000/2000", "286"]
    clean = server.submit("demo.echo", [{"id": 1}])
    assert run_cli("watch", clean["id"], env=env).returncode == 0


def test_list_filters_by_status_and_type(start_server: Any, joblot_env: dict[str, str]) -> None:
    server = start_server(workers=0)
    env = _env(joblot_env, server)
    echo = server.submit("demo.echo", [{"id": 1}])["id"]
    sleep = server.submit("demo.sleep", [{"id": 1}])["id"]
    cancelled = server.submit("demo.echo", [{"id": 1}])["id"]
    assert run_cli("cancel", cancelled, env=env).returncode == 0

    def ids(*flags: str) -> list[str]:
        result = run_cli("list", *flags, env=env)
        assert result.returncode == 0, result.stderr
        return [line.split()[0] for line in result.stdout.splitlines()[1:]]

    assert ids("--status", "queued") == [sleep, echo]
    assert ids("--status", "failed,completed") == [cancelled]
    assert ids("--type", "demo.echo") == [echo, cancelled]
    assert ids("--status", "queued", "--type", "demo.sleep") == [sleep]
    bad = run_cli("list", "--status", "done", env=env)
    assert bad.returncode == 2 and "queued, working, failed, completed" in bad.stderr
