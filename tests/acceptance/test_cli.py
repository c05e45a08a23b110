"""The `joblot` client commands as real processes against a real server."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .conftest import free_port, run_cli


def _env(env: dict[str, str], server: Any) -> dict[str, str]:
    return {**env, "JOBLOT_URL": server.url}


def test_submit_from_a_jsonl_file_then_watch_until_completed(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=1)
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "seconds": 0.05}) + "\n" for i in range(20)))
    submitted = run_cli("submit", "demo.sleep", "--items", str(items), env=_env(joblot_env, server))
    assert submitted.returncode == 0, submitted.stderr
    status = json.loads(submitted.stdout)["job_status"]
    assert status["total"] == 20 and status["job_type"] == "demo.sleep"
    watched = run_cli("watch", status["id"], env=_env(joblot_env, server))
    assert watched.returncode == 0, watched.stderr
    assert "20/20" in watched.stdout and "Completed at" in watched.stdout
    shown = run_cli("status", status["id"], "--url", server.url, env=joblot_env)
    assert json.loads(shown.stdout)["job_status"]["progress"] == 20
    listed = run_cli("list", env=_env(joblot_env, server))
    assert status["id"] in listed.stdout and "completed" in listed.stdout


def test_submit_reads_a_json_array_from_stdin_and_cancel_stops_it(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=0)
    env = _env(joblot_env, server)
    submitted = run_cli("submit", "demo.echo", env=env, stdin='[{"id": 1}, {"id": 2}]')
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_status"]["id"]
    cancelled = run_cli("cancel", job_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    status = json.loads(cancelled.stdout)["job_status"]
    assert status["status"] == "failed"
    assert status["message"] == "Cancelled: 2 of 2 items were skipped"
    watched = run_cli("watch", job_id, env=env)
    assert watched.returncode == 1 and "Cancelled" in watched.stdout


def test_client_commands_fail_clearly(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    server = start_server(workers=0)
    env = _env(joblot_env, server)
    unknown = run_cli("submit", "no.such.type", env=env, stdin='[{"id": 1}]')
    assert unknown.returncode == 1 and "UnknownJobType" in unknown.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{"id": \n')
    malformed = run_cli("submit", "demo.echo", "--items", str(bad), env=env)
    assert malformed.returncode == 2 and "line 2" in malformed.stderr
    missing = run_cli("submit", "demo.echo", "--items", str(tmp_path / "none.json"), env=env)
    assert missing.returncode == 2 and "cannot read items" in missing.stderr
    not_found = run_cli("status", "0" * 32, env=env)
    assert not_found.returncode == 1 and "RecordNotFound" in not_found.stderr
    unreachable = run_cli("status", "0" * 32, "--url", "http://127.0.0.1:9", env=joblot_env)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_migrate_reports_what_it_applied(joblot_env: dict[str, str], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/m.db"
    first = run_cli("migrate", "--db", db, env=joblot_env)
    assert first.returncode == 0 and "applied migration(s) 1" in first.stdout
    second = run_cli("migrate", "--db", db, env=joblot_env)
    assert second.returncode == 0 and "up to date" in second.stdout
    bad = run_cli("migrate", "--db", "sqlite:////no/such/dir/x.db", env=joblot_env)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_worker_refuses_an_unmigrated_database(joblot_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("worker", "--db", f"sqlite:///{tmp_path}/empty.db", env=joblot_env)
    assert result.returncode == 1 and "joblot migrate" in result.stderr


def test_tokens_are_minted_once_listed_without_secret_and_revoked(
    joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/t.db"
    created = run_cli("tokens", "create", "--tenant", "acme", "--db", db, env=joblot_env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n" and token.startswith("jl_")
    listed = run_cli("tokens", "list", "--db", db, env=joblot_env)
    token_id = token.split("_")[1]
    assert token_id in listed.stdout and "acme" in listed.stdout and "live" in listed.stdout
    assert token not in listed.stdout
    assert run_cli("tokens", "revoke", token_id, "--db", db, env=joblot_env).returncode == 0
    assert "revoked" in run_cli("tokens", "list", "--db", db, env=joblot_env).stdout
    again = run_cli("tokens", "revoke", token_id, "--db", db, env=joblot_env)
    assert again.returncode == 2 and "no live token" in again.stderr
    bad = run_cli("tokens", "create", "--tenant", "no spaces", "--db", db, env=joblot_env)
    assert bad.returncode == 2 and "tenant name" in bad.stderr


def test_serve_refuses_a_public_address_without_tokens(
    joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/p.db"
    refused = run_cli(
        "serve", "--db", db, "--host", "0.0.0.0", "--workers", "0", env=joblot_env, timeout=30
    )
    assert refused.returncode == 1
    assert "refusing to serve on 0.0.0.0 without API tokens" in refused.stderr


def test_client_commands_send_the_token(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/joblot.db"
    token = run_cli(
        "tokens", "create", "--tenant", "acme", "--db", db, env=joblot_env
    ).stdout.strip()
    server = start_server(workers=1, db=db)
    env = _env(joblot_env, server)
    anonymous = run_cli("submit", "demo.echo", env=env, stdin='[{"id": 1}]')
    assert anonymous.returncode == 1 and "Couldn't authenticate you" in anonymous.stderr
    submitted = run_cli("submit", "demo.echo", "--token", token, env=env, stdin='[{"id": 1}]')
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_status"]["id"]
    watched = run_cli("watch", job_id, env={**env, "JOBLOT_TOKEN": token})
    assert watched.returncode == 0 and "Completed at" in watched.stdout


def test_list_limit_zero_prints_only_the_header_and_a_negative_limit_is_a_usage_error(
    start_server: Any, joblot_env: dict[str, str]
) -> None:
    server = start_server(workers=0)
    env = _env(joblot_env, server)
    assert run_cli("submit", "demo.echo", env=env, stdin='[{"id": 1}]').returncode == 0
    listed = run_cli("list", "--limit", "0", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [listed.stdout.splitlines()[0]]
    assert listed.stdout.startswith("ID") and "Traceback" not in listed.stderr
    one = run_cli("list", "--limit", "1", env=env)
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 2
    negative = run_cli("list", "--limit", "-1", env=env)
    assert negative.returncode == 2 and "0 or more" in negative.stderr


PROJECT_JOBS = """
from joblot import App

app = App()


@app.job_type("project.shout")
def shout(item, ctx):
    return {"said": str(item["word"]).upper()}
"""


def test_an_app_in_the_current_folder_loads_without_pythonpath(
    start_server: Any, joblot_env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "myproject").mkdir(parents=True)
    (project / "myproject" / "__init__.py").write_text("")
    (project / "myproject" / "jobs.py").write_text(PROJECT_JOBS)
    assert str(project) not in joblot_env.get("PYTHONPATH", "")  # only the current folder
    server = start_server(workers=1, args=("--app", "myproject.jobs:app"), cwd=project)
    job = server.submit("project.shout", [{"word": "hi"}])
    final = server.wait(job["id"])
    assert final["status"] == "completed", final
    assert final["results"][0]["said"] == "HI"


def test_serve_on_a_busy_port_fails_before_touching_the_database(
    joblot_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        db = tmp_path / "never.db"
        refused = run_cli(
            "serve", "--db", f"sqlite:///{db}", "--port", str(port), "--workers", "0",
            env=joblot_env, timeout=30,
        )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert "serving on" not in refused.stderr and "migration" not in refused.stderr
    assert not db.exists()
