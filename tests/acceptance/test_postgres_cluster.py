"""Two API nodes and three workers on one PostgreSQL: a killed worker and a database restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from integration.conftest import fresh_schema

from .conftest import Server, run_cli
from .pgcluster import ScratchCluster, WorkerProcess

ITEMS = 3000  # per job; more than inline_results, so results are read from /results pages
SECONDS = 0.004  # per item: the two jobs take several seconds on three workers
RECOVERY_LIMIT = 10.0  # seconds from PostgreSQL's return until every API node answers 200


@pytest.fixture
def cluster() -> Iterator[ScratchCluster]:
    """A PostgreSQL server of this test's own, which it may stop; removed afterwards."""
    scratch = ScratchCluster.create()
    try:
        yield scratch
    finally:
        scratch.destroy()


@pytest.fixture
def database(cluster: ScratchCluster, joblot_env: dict[str, str]) -> Iterator[str]:
    """A fresh, migrated schema; its URL selects it with `options=-c search_path=...`."""
    with fresh_schema(cluster.url) as url:
        try:
            migrated = run_cli("migrate", "--db", url, env=joblot_env)
            assert migrated.returncode == 0, migrated.stderr
            yield url
        finally:
            cluster.ensure_running()  # the schema can only be dropped with the server up


class Processes:
    """The API nodes and workers of one test; all are stopped at its end."""

    def __init__(self, db: str, env: dict[str, str], logs: Path, cluster: ScratchCluster) -> None:
        self.db, self.env, self.logs, self.cluster = db, env, logs, cluster
        self.nodes: list[Server] = []
        self.workers: list[WorkerProcess] = []

    def api_node(self) -> Server:
        """A `joblot serve --workers 0` process, answering on /healthz."""
        node = Server(self.db, 0, self.env, self.logs / f"api{len(self.nodes)}.log")
        self.nodes.append(node)
        return node

    def worker(self) -> WorkerProcess:
        """A `joblot worker` process."""
        worker = WorkerProcess(self.db, self.env, self.logs / f"worker{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def log_text(self) -> str:
        """Every process's log, for failure messages."""
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.logs.glob("*.log")))

    def stop_all(self) -> None:
        """Stop every process (the database first back up, so workers can drain)."""
        self.cluster.ensure_running()
        for worker in self.workers:
            worker.stop()
        for node in self.nodes:
            node.stop()


@pytest.fixture
def processes(
    database: str, cluster: ScratchCluster, joblot_env: dict[str, str], tmp_path: Path
) -> Iterator[Processes]:
    """Starts processes on the test's schema; they are stopped before the schema is dropped."""
    started = Processes(database, joblot_env, tmp_path, cluster)
    try:
        yield started
    finally:
        started.stop_all()


def leased_items(db: str, worker: WorkerProcess) -> int:
    """How many items `worker` holds under a lease right now (read from the database)."""
    worker_id = f"{socket.gethostname()}:{worker.proc.pid}"
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM items JOIN leases ON items.lease_id = leases.id "
            "WHERE items.state = 'leased' AND leases.worker_id = %s",
            (worker_id,),
        ).fetchone()
    return 0 if row is None else int(row[0])


def progress(node: Server, job_ids: list[str]) -> int:
    """Items finished so far in all of `job_ids`."""
    return sum(node.status(job_id)["progress"] or 0 for job_id in job_ids)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.02)


def answers_503_while_down(node: Server, job_id: str) -> dict[str, Any]:
    """Ask `node` for a status until it answers; that answer must be a JSON 503."""
    response = node.http.get(f"/api/v2/job_statuses/{job_id}.json", timeout=30)
    assert node.proc.poll() is None, "the API process died with the database"
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def seconds_until_200(node: Server, job_id: str, since: float) -> float:
    """Ask `node` for a status until it answers 200; how long after `since` it first did."""
    deadline = since + 60
    while time.monotonic() < deadline:
        try:
            response = node.http.get(f"/api/v2/job_statuses/{job_id}.json", timeout=30)
        except httpx.TransportError as exc:  # the process must keep answering
            raise AssertionError(f"the API node stopped answering: {exc!r}") from exc
        if response.status_code == 200:
            return time.monotonic() - since
        assert response.status_code == 503, response.text
        time.sleep(0.05)
    raise AssertionError("the API node still answers 503 a minute after PostgreSQL returned")


@pytest.mark.slow
def test_a_cluster_survives_a_killed_worker_and_a_database_restart(
    processes: Processes, cluster: ScratchCluster
) -> None:
    node_a, node_b = processes.api_node(), processes.api_node()
    workers = [processes.worker() for _ in range(3)]
    for worker in workers:
        worker.wait_started()

    items = [{"id": i, "seconds": SECONDS} for i in range(ITEMS)]
    job_a = node_a.submit("demo.sleep", items)["id"]
    job_b = node_b.submit("demo.sleep", items)["id"]
    # each node sees the job submitted through the other
    assert node_b.status(job_a)["total"] == node_a.status(job_b)["total"] == ITEMS
    listed = node_a.http.get(f"/api/v2/job_statuses/show_many.json?ids={job_a},{job_b}")
    assert [j["id"] for j in listed.json()["job_statuses"]] == [job_a, job_b]
    jobs = [job_a, job_b]

    # SIGKILL a worker while it holds leased items of a running job
    victim, survivors = workers[0], workers[1:]
    wait_until(
        lambda: progress(node_b, jobs) >= ITEMS // 10 and leased_items(processes.db, victim) > 0,
        30,
        "a tenth done with the victim holding items",
    )
    victim.kill()

    # then PostgreSQL goes away under the running jobs
    before = [node_a.status(job_id) for job_id in jobs]
    assert all(s["status"] == "working" and s["progress"] < ITEMS for s in before), before
    cluster.stop()
    stopped = time.monotonic()
    try:
        with ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(answers_503_while_down, [node_a, node_b], [job_b, job_a]))
        down_for = time.monotonic() - stopped
        for body in bodies:
            assert body["error"] == "ServiceUnavailable" and body["description"], body
    finally:
        cluster.start()
    back = cluster.wait_accepting(60)

    with ThreadPoolExecutor(2) as pool:
        recovery = list(pool.map(seconds_until_200, [node_a, node_b], jobs, [back, back]))
    print(
        f"\nPostgreSQL was down {back - stopped:.1f} s (503s seen within {down_for:.1f} s); "
        f"API nodes answered 200 again {recovery[0]:.2f} s and {recovery[1]:.2f} s after "
        "it accepted connections"
    )
    assert max(recovery) < RECOVERY_LIMIT, f"API recovery took {recovery} s"

    # the surviving workers reconnect by themselves and finish both jobs
    for job_id, reader in ((job_a, node_b), (job_b, node_a)):
        final = reader.wait(job_id, timeout=60)
        assert final["status"] == "completed", f"{final}\n{processes.log_text()}"
        assert final["progress"] == final["total"] == ITEMS
        entries = reader.all_results(job_id)
        assert sorted(e["index"] for e in entries) == list(range(ITEMS))
        assert all(e["success"] and e["id"] == e["index"] for e in entries)
    assert all(w.proc.poll() is None for w in survivors), processes.log_text()
    assert all(n.proc.poll() is None for n in (node_a, node_b)), processes.log_text()
    # the maintenance leader, one of the live processes, returned the victim's items
    assert "of lapsed leases to the queue" in processes.log_text()
    assert "Traceback" not in processes.log_text(), processes.log_text()
