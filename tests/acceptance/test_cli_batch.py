"""Failures where people look, as real `joblot` processes against a real server: `watch`,
`list` and `status` count failed items, `list` filters."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

from .conftest import JOBLOT, run_cli


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


def test_results_and_export_print_what_the_server_has(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=1)
    env = _env(joblot_env, server)
    job = server.submit("demo.echo", _every_seventh_fails(1500))
    server.wait(job["id"])
    failed = run_cli("results", job["id"], "--failed", env=env)
    assert failed.returncode == 0, failed.stderr
    entries = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [e["index"] for e in entries] == list(range(0, 1500, 7))
    everything = run_cli("results", job["id"], env=env).stdout.splitlines()
    assert [json.loads(line) for line in everything] == server.all_results(job["id"])
    out = tmp_path / "out.csv"
    with out.open("w") as stdout:
        exported = subprocess.run(
            [JOBLOT, "export", job["id"], "--format", "csv"],
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert exported.returncode == 0, exported.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1500 and rows[7]["success"] == "false" and rows[7]["details"] == "row 7"
    jsonl = run_cli("export", job["id"], "--failed", env=env)
    assert jsonl.stdout.splitlines() == failed.stdout.splitlines()
    unknown = run_cli("results", "0" * 32, env=env)
    assert unknown.returncode == 1 and "RecordNotFound" in unknown.stderr
    for command in (["results", job["id"]], ["export", job["id"]], ["list"]):
        _stops_quietly_when_its_reader_goes(command, env)


def _stops_quietly_when_its_reader_goes(command: list[str], env: dict[str, str]) -> None:
    """`joblot ... | head -1`: once the reader has gone, the command ends as a tool killed by
    SIGPIPE would (128 + 13), with no traceback."""
    with subprocess.Popen(
        [JOBLOT, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        errors = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, errors
    assert errors == ""


def test_retry_queues_the_failed_items_again(start_server: Any, joblot_env: dict[str, str]) -> None:
    server = start_server(workers=1)
    env = _env(joblot_env, server)
    slow = server.submit("demo.sleep", [{"id": 1, "seconds": 60}])
    running = run_cli("retry", slow["id"], env=env)
    assert running.returncode == 1 and "JobNotFinished" in running.stderr
    assert run_cli("cancel", slow["id"], env=env).returncode == 0
    job = server.submit("demo.echo", _every_seventh_fails(30))
    server.wait(job["id"])
    retried = run_cli("retry", job["id"], "--idempotency-key", "again-1", env=env)
    assert retried.returncode == 0, retried.stderr
    body = json.loads(retried.stdout)
    new = body["job_status"]
    assert new["id"] != job["id"] and new["total"] == 5 and new["job_type"] == "demo.echo"
    replay = json.loads(run_cli("retry", job["id"], "--idempotency-key", "again-1", env=env).stdout)
    assert replay["job_status"]["id"] == new["id"]
    server.wait(new["id"])
    assert [e["details"] for e in server.all_results(new["id"])] == [
        f"row {i}" for i in range(0, 30, 7)
    ]
