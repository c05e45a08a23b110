"""`joblot watch` and `joblot submit --wait` follow the event stream, as real processes: exit
codes, plain lines when piped, a rich progress bar and table on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path
from typing import Any

from .conftest import JOBLOT, MISBEHAVING_APP, run_cli
from .cutting_proxy import CuttingProxy

ESC = "\x1b"


def _env(env: dict[str, str], url: str) -> dict[str, str]:
    return {**env, "JOBLOT_URL": url}


def _items(tmp_path: Path, items: list[dict[str, Any]]) -> str:
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items))
    return str(path)


def test_submit_wait_exits_0_when_the_job_completes_and_prints_plain_lines(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=1)
    items = _items(tmp_path, [{"id": i, "seconds": 0.05} for i in range(20)])
    done = run_cli(
        "submit", "demo.sleep", "--items", items, "--wait", env=_env(joblot_env, server.url)
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job_id = lines[0].split()[2]
    assert (
        lines[0]
        == f"submitted job {job_id} (20 items): {server.url}/api/v2/job_statuses/{job_id}.json"
    )
    assert "20/20 100%  completed" in lines[-2] and lines[-1].startswith("Completed at ")
    assert ESC not in done.stdout and "\r" not in done.stdout
    assert server.status(job_id)["status"] == "completed"


def test_submit_wait_exits_1_when_the_job_fails(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=1, args=("--app", MISBEHAVING_APP))
    items = _items(tmp_path, [{"seconds": 0.2}, {"abort": "the export is broken"}])
    failed = run_cli(
        "submit", "test.abort", "--items", items, "--wait", env=_env(joblot_env, server.url)
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "2/2 100%  failed" in failed.stdout
    assert "\nthe export is broken\n" in failed.stdout


def test_submit_wait_exits_0_when_the_job_completes_with_failed_items_and_says_so(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=1)
    items = _items(tmp_path, [{"id": 1}, {"id": 2, "fail": "no such ticket"}])
    partly = run_cli(
        "submit", "demo.echo", "--items", items, "--wait", env=_env(joblot_env, server.url)
    )
    assert partly.returncode == 0, partly.stderr  # the job completed; `watch` would exit 3
    assert "2/2 100%  completed  1 failed" in partly.stdout
    assert "1 of 2 items failed; see them with `joblot results" in partly.stdout


def test_submit_wait_without_a_server_fails_clearly(joblot_env: dict[str, str]) -> None:
    unreachable = run_cli(
        "submit", "demo.echo", "--wait", "--url", "http://127.0.0.1:9", env=joblot_env, stdin="[{}]"
    )
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_watch_follows_the_event_stream_through_a_cut(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=0)
    job = server.submit("demo.sleep", [{"id": i, "seconds": 0.05} for i in range(24)])
    proxy = CuttingProxy(server.port)
    try:
        watch = subprocess.Popen(
            [JOBLOT, "watch", job["id"]],
            env=_env(joblot_env, proxy.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proxy.cut.wait(30) and proxy.held.wait(30), "watch connects again after a cut"
        start_server(workers=1, db=server.db)
        server.wait(job["id"])
        proxy.release.set()
        out, err = watch.communicate(timeout=60)
    finally:
        proxy.close()
    assert watch.returncode == 0, err
    assert out.splitlines()[0].endswith("0/24   0%  queued")
    assert "24/24 100%  completed" in out and "Completed at" in out
    assert [r.split(b" ")[:2] for r in proxy.requests] == [
        [b"GET", f"/api/v2/job_statuses/{job['id']}/events".encode()]
    ] * 2, "one stream and one resumption: no polling"


def _on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `joblot ARGS` with its stdout on a pseudo-terminal; its exit status and output."""
    main, side = pty.openpty()
    proc = subprocess.Popen(
        [JOBLOT, *args],
        env={**env, "COLUMNS": "150", "LINES": "40", "TERM": "xterm-256color"},
        stdout=side,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    os.close(side)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    proc.wait(60)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode is not None
    return proc.returncode, b"".join(chunks).decode() + stderr


def test_on_a_terminal_watch_draws_a_progress_bar_and_list_a_table(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=1)
    job = server.submit(
        "demo.sleep",
        [{"id": i, "seconds": 0.02, **({"fail": "x"} if i == 3 else {})} for i in range(30)],
    )
    env = {k: v for k, v in _env(joblot_env, server.url).items() if k != "NO_COLOR"}
    code, shown = _on_a_terminal("watch", job["id"], env=env)
    assert code == 3, shown
    assert ESC in shown, "drawn with terminal codes"
    assert "30/30" in shown and "1 failed" in shown and "Completed at" in shown
    assert "━" in shown, "a bar, not the plain [####] line"
    code, table = _on_a_terminal("list", env=env)
    assert code == 0, table
    row = next(line for line in table.splitlines() if job["id"] in line)
    assert "30/30" in row and "completed" in row
