"""How a worker turns what a handler returned or raised into a result entry."""

from __future__ import annotations

from typing import Any

import orjson

from joblot.app import ItemFailed, JobType
from joblot.batch import to_result


def _handler(item: dict[str, Any], ctx: object) -> None:
    return None


JOB_TYPE = JobType("t", _handler, action="update")


def _entry(returned: Any) -> tuple[bool, dict[str, Any]]:
    finished = to_result(JOB_TYPE, 5, {"id": 9}, returned)
    assert finished.index == 5
    return finished.success, orjson.loads(finished.entry)


def test_a_returned_dict_becomes_a_success_entry() -> None:
    assert _entry({"status": "Updated"}) == (
        True,
        {"index": 5, "id": 9, "action": "update", "status": "Updated", "success": True},
    )
    assert _entry(None)[1]["success"] is True


def test_an_exception_fails_the_item_with_its_class_name() -> None:
    success, entry = _entry(ValueError("no such ticket"))
    assert not success
    assert entry == {
        "index": 5,
        "id": 9,
        "action": "update",
        "success": False,
        "error": "ValueError",
        "details": "no such ticket",
    }


def test_item_failed_chooses_the_error_name() -> None:
    _, entry = _entry(ItemFailed("locked", error="RecordLocked"))
    assert (entry["error"], entry["details"]) == ("RecordLocked", "locked")


def test_results_that_are_not_json_fail_the_item_not_the_worker() -> None:
    success, entry = _entry({"when": object()})
    assert not success and entry["error"] == "InvalidResult"
    success, entry = _entry(["not", "a", "dict"])
    assert not success and "must return a dict" in entry["details"]
