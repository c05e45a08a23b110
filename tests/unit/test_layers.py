"""The architecture, pinned: the store imports nothing above it, every module imports on its
own, and the two backends name their SQL alike except where they must differ."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import joblot
from joblot.store.sql import load_queries

PACKAGE = Path(joblot.__file__).parent
ABOVE_THE_STORE = {
    "service",
    "auth",
    "app",
    "api",
    "worker",
    "server",
    "cli",
    "commands",
    "client",
    "async_client",
    "answers",
    "follow",
    "sse",
    "display",
    "events",
    "params",
    "maintenance",
    "transactional",
    "metrics",
    "logs",
    "dashboard",
    "export",
    "bodies",
    "status_cache",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute, at any depth (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


# every module but `joblot.__main__`, which runs the command when imported
MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", sorted((PACKAGE / "store").rglob("*.py")), ids=str)
def test_nothing_in_the_store_imports_a_layer_above_it(path: Path) -> None:
    upward = {
        name
        for name in _imports(path)
        if name.startswith("joblot.") and name.split(".")[1] in ABOVE_THE_STORE
    }
    assert not upward, f"{_module_name(path)} imports {sorted(upward)}"


def test_the_layer_check_sees_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from joblot.service import Service\nimport joblot.api\n")
    assert {"joblot.service.Service", "joblot.api"} <= _imports(probe)


def _import_alone(module: str) -> tuple[str, int, str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return module, result.returncode, result.stderr


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    with ThreadPoolExecutor(4) as pool:
        failed = [r for r in pool.map(_import_alone, MODULES) if r[1] != 0]
    assert not failed, "\n".join(f"{m}:\n{err}" for m, _, err in failed)


# Named SQL blocks that only one backend has, and why. Any other difference is drift.
ONLY_SQLITE = {
    "finish_items.take_item": "one statement per item via executemany; PostgreSQL sends arrays",
    "finish_items.insert_result": "one statement per item via executemany",
    "finish_items.insert_failure": "one statement per failed item via executemany",
    "get_job.inline_results": "a second local query; PostgreSQL folds it into get_job.select",
    "metric_counts.end": "ends the read snapshot; psycopg's transaction() ends PostgreSQL's",
    "submit_job.insert_item": "executemany; PostgreSQL streams items with COPY",
    "changes.next": "a change counter; PostgreSQL stamps changes with their transaction id",
    "submit_job.begin_load": "big jobs load in steps: SQLite's one writer blocks all others",
    "submit_job.load_held": "big jobs load in steps: SQLite's one writer blocks all others",
    "submit_job.end_load": "big jobs load in steps: SQLite's one writer blocks all others",
    "purge_expired.loads": "loads left by a dead submit; PostgreSQL rolls them back",
    "abandon_load.mark": "loads left by a dead submit; PostgreSQL rolls them back",
    "abandon_load.forget": "loads left by a dead submit; PostgreSQL rolls them back",
}
ONLY_POSTGRES = {
    "acknowledged.synchronous_commit": "SQLite syncs acknowledged writes in Database.write",
    "durability.settings": "the server's fsync and synchronous_commit; SQLite has no server",
    "claim_items.any_runnable": "a lock-free probe before the claim transaction",
    "claim_items.lock_type": "claims of a limited job type run in parallel on other nodes",
    "claim_items.by_index": "walks a new job's items in index order; SQLite says INDEXED BY",
    "finish_items.record": "the whole batch as arrays in one round trip",
    "finish_items.lease_held": "re-checked under the job row lock: writers run in parallel",
    "finish_items.lock_all": "items taken and retried locked in one order: writers run in parallel",
    "get_jobs.select": "show_many in one round trip",
    "migrations.lock": "several nodes may migrate at once; SQLite's writer is the lock",
    "release_lease.held": "re-checked under the job row lock: writers run in parallel",
    "requeue_expired.lapsed": "re-checked under the job row lock: writers run in parallel",
    "requeue_expired.try_lock": "several processes may requeue one lease at once",
    "submit_job.copy_items": "COPY streams a job's items",
    "submit_job.lock_tenant": "API nodes check a tenant's quota in parallel",
    "work.heartbeat": "LISTEN/NOTIFY; SQLite has no notifications",
    "work.listen": "LISTEN/NOTIFY; SQLite has no notifications",
    "work.notify": "LISTEN/NOTIFY; SQLite has no notifications",
    "changes.notify": "LISTEN/NOTIFY; SQLite has no notifications",
}


def test_the_backends_name_their_sql_alike_but_for_the_necessary_differences() -> None:
    sqlite, postgres = set(load_queries("sqlite")), set(load_queries("postgres"))
    assert sqlite - postgres == set(ONLY_SQLITE)
    assert postgres - sqlite == set(ONLY_POSTGRES)
