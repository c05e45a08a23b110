"""Durability is a property of the write path, pinned: every store write answered to a client
is synced before it returns (SQLite: `Database.write`; PostgreSQL: `Pool.acknowledged()`), and
only workers' and the chores' writes skip that (`Database.write_redoable`), each for a reason."""

from __future__ import annotations

import ast
from pathlib import Path

import joblot

STORE = Path(joblot.__file__).parent / "store"

# The only SQLiteStore methods that write without waiting for the disk, and why that is safe.
REDOABLE = {
    "claim_items": "a lost claim leaves its items pending: they are claimed again",
    "finish_items": "a lost result leaves its item leased under a lease that lapses: run again",
    "renew_leases": "a lost renewal lets a lease lapse: its items run again",
    "release_lease": "a lost release lets the lease lapse: the same items come back",
    "requeue_expired": "a lost requeue finds the same lapsed leases next round",
    "try_lead": "a lost lead is taken again next round",
    "claim_deliveries": "a lost claim: the delivery is claimed again when due",
    "keep_delivery_body": "a lost body is built again from the job",
    "finish_delivery": "a lost outcome: the event is sent again, with the same webhook-id",
    "submit_job": "only the steps of a big submit; its last step, answered, is synced",
}


def _methods_calling(path: Path, cls: str, call: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for method in node.body:
                if isinstance(method, ast.AsyncFunctionDef) and call in ast.unparse(method):
                    found.add(method.name)
    return found


def test_every_sqlite_write_is_synced_but_the_redoable_ones_named_here() -> None:
    sqlite = STORE / "sqlite" / "__init__.py"
    redoable = _methods_calling(sqlite, "SQLiteStore", "self._db.write_redoable(")
    assert redoable - {"_in_steps"} == set(REDOABLE)


def test_postgres_acknowledges_exactly_the_writes_sqlite_syncs() -> None:
    synced = _methods_calling(STORE / "sqlite" / "__init__.py", "SQLiteStore", "self._db.write(")
    acknowledged = _methods_calling(
        STORE / "postgres" / "__init__.py", "PostgresStore", "self._pool.acknowledged()"
    )
    assert synced - {"migrate"} == acknowledged  # PostgreSQL migrates in its own transactions
