"""The JobStatus model, result entries, ids and the lifecycle rules."""

from __future__ import annotations

import re
import time

import pytest
from pydantic import ValidationError

from joblot.models import (
    JobState,
    JobStatus,
    Status,
    after_claim,
    after_finish,
    after_requeue,
    after_stop,
    check_transition,
    completion_message,
    failure_entry,
    new_job_id,
    success_entry,
)

KEYS = ["id", "job_type", "url", "total", "progress", "status", "message", "results"]


def _state(**changes: object) -> JobState:
    base: dict[str, object] = dict(
        status=Status.WORKING,
        total=10,
        progress=0,
        failures=0,
        pending=10,
        message=None,
        message_set=False,
        max_failures=None,
    )
    base.update(changes)
    return JobState(**base)  # type: ignore[arg-type]


def test_job_status_serializes_eight_keys_in_zendesk_order_with_nulls() -> None:
    status = JobStatus(
        id="a" * 32,
        job_type="t",
        url="http://x/a.json",
        total=None,
        progress=None,
        status=Status.QUEUED,
        message=None,
        results=None,
    )
    dumped = status.model_dump(mode="json")
    assert list(dumped) == KEYS
    assert dumped["results"] is None and dumped["progress"] is None


def test_job_status_rejects_unknown_keys_and_statuses() -> None:
    fields = dict(
        id="x",
        job_type="t",
        url="u",
        total=1,
        progress=0,
        status="working",
        message=None,
        results=[],
    )
    with pytest.raises(ValidationError):
        JobStatus.model_validate({**fields, "extra": 1})
    with pytest.raises(ValidationError):
        JobStatus.model_validate({**fields, "status": "running"})


def test_saving_a_move_the_lifecycle_forbids_raises() -> None:
    check_transition(Status.QUEUED, Status.QUEUED)  # staying put is always allowed
    check_transition(Status.QUEUED, Status.WORKING)
    check_transition(Status.WORKING, Status.COMPLETED)
    for old, new in [
        (Status.COMPLETED, Status.WORKING),
        (Status.FAILED, Status.COMPLETED),
        (Status.QUEUED, Status.COMPLETED),
    ]:
        with pytest.raises(ValueError, match="cannot go from"):
            check_transition(old, new)


def test_job_ids_are_32_hex_and_ordered_by_creation_time() -> None:
    earlier, later = new_job_id(1_000.0), new_job_id(1_000.002)
    assert re.fullmatch(r"[0-9a-f]{32}", earlier)
    assert earlier < later
    assert earlier[12] == "7"  # UUID version 7
    assert len({new_job_id() for _ in range(1000)}) == 1000


def test_completion_message_has_zendesk_format() -> None:
    assert completion_message(0.0) == "Completed at 1970-01-01 00:00:00 +0000"
    assert re.fullmatch(
        r"Completed at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000", completion_message(time.time())
    )


def test_result_entries_carry_item_id_and_action() -> None:
    ok = success_entry(3, {"id": 7}, "update", {"status": "Updated", "index": 99})
    assert ok == {"index": 3, "id": 7, "action": "update", "status": "Updated", "success": True}
    bad = failure_entry(4, {"name": "x"}, None, "DemoFailure", "bad row")
    assert bad == {"index": 4, "success": False, "error": "DemoFailure", "details": "bad row"}


def test_claim_makes_a_queued_job_working() -> None:
    state = after_claim(_state(status=Status.QUEUED), 4)
    assert state.status is Status.WORKING and state.pending == 6


def test_finishing_the_last_item_completes_with_completion_message() -> None:
    state = after_finish(_state(progress=8), 2, 1, None, 0.0)
    assert state.status is Status.COMPLETED and state.progress == 10 and state.failures == 1
    assert state.message == "Completed at 1970-01-01 00:00:00 +0000"


def test_a_message_set_by_a_handler_survives_completion() -> None:
    state = after_finish(_state(progress=5), 2, 0, "half way", 0.0)
    assert state.status is Status.WORKING and state.message == "half way"
    state = after_finish(state, 3, 0, None, 0.0)
    assert state.status is Status.COMPLETED and state.message == "half way"


def test_passing_the_failure_threshold_fails_the_job() -> None:
    state = after_finish(_state(max_failures=1), 2, 2, None, 0.0)
    assert state.status is Status.FAILED and state.pending == 0
    assert state.message == "Failed: 2 items failed, more than the 1 allowed"


def test_a_stopped_job_counts_late_results_and_skips_returned_items() -> None:
    state = after_finish(_state(status=Status.FAILED, message="stop"), 1, 0, None, 0.0)
    assert state.status is Status.FAILED and state.message == "stop"
    assert state.progress == 1
    requeued = after_requeue(state, 3)
    assert requeued.skipped == 3 and requeued.pending == state.pending
    assert requeued.message == "stop"


def test_items_handed_back_after_a_cancel_are_counted_as_skipped() -> None:
    cancelled = after_stop(_state(progress=2, pending=5), None)
    assert cancelled.message == "Cancelled: 5 of 10 items were skipped"
    returned = after_requeue(after_finish(cancelled, 1, 0, None, 0.0), 2)
    assert returned.message == "Cancelled: 7 of 10 items were skipped"
    assert returned.progress + returned.skipped == returned.total


def test_cancel_says_how_many_items_were_skipped() -> None:
    state = after_stop(_state(progress=4, pending=6), None)
    assert state.status is Status.FAILED and state.pending == 0 and state.cancelled
    assert state.message == "Cancelled: 6 of 10 items were skipped"
    assert after_stop(_state(), "disk full").message == "disk full"
