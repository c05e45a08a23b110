"""Validation of submitted jobs: every problem is named in the error."""

from __future__ import annotations

from typing import Any

import pytest

from joblot.demo import app as demo_app
from joblot.errors import RecordInvalid, TooManyItems, UnknownJobType
from joblot.submission import parse_submission, request_hash


def _job(**job: Any) -> dict[str, Any]:
    return {"job": job}


def test_a_valid_job_parses_to_its_type_and_items() -> None:
    job_type, items = parse_submission(_job(job_type="demo.echo", items=[{"id": 1}]), demo_app, 10)
    assert job_type.name == "demo.echo" and job_type.action == "echo"
    assert items == [{"id": 1}]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ([], '"job"'),
        ({"job": 1}, '"job" must be an object'),
        ({"job": {}, "x": 1}, '"job"'),
        (_job(items=[{}]), '"job_type" is required'),
        (_job(job_type="", items=[{}]), '"job_type" is required'),
        (_job(job_type="x" * 201, items=[{}]), "longer than 200"),
        (_job(job_type="demo.echo"), '"items" is required'),
        (_job(job_type="demo.echo", items={}), '"items" is required'),
        (_job(job_type="demo.echo", items=[]), "empty"),
        (_job(job_type="demo.echo", items=[1]), "items[0] must be an object"),
        (_job(job_type="demo.echo", items=[{}, {"id": [1]}]), "items[1].id"),
        (_job(job_type="demo.echo", items=[{"id": True}]), "items[0].id"),
        (_job(job_type="demo.echo", items=[{"id": 2**70}]), "64 bits"),
        (_job(job_type="demo.echo", items=[{"id": "x" * 1001}]), "longer than 1000"),
        (_job(job_type="demo.echo", items=[{}], priority=1), "unknown field(s) in job"),
    ],
)
def test_invalid_jobs_are_refused_with_the_problem_named(doc: Any, fragment: str) -> None:
    with pytest.raises(RecordInvalid) as caught:
        parse_submission(doc, demo_app, 10)
    assert fragment in caught.value.description


def test_unknown_job_type_lists_the_known_ones() -> None:
    with pytest.raises(UnknownJobType) as caught:
        parse_submission(_job(job_type="nope", items=[{}]), demo_app, 10)
    assert "demo.echo" in caught.value.description


def test_too_many_items_is_refused() -> None:
    with pytest.raises(TooManyItems):
        parse_submission(_job(job_type="demo.echo", items=[{}] * 11), demo_app, 10)


def test_request_hash_ignores_key_order_but_not_content() -> None:
    assert request_hash("t", [{"a": 1, "b": 2}]) == request_hash("t", [{"b": 2, "a": 1}])
    assert request_hash("t", [{"a": 1}]) != request_hash("t", [{"a": 2}])
    assert request_hash("t", [{"a": 1}]) != request_hash("u", [{"a": 1}])
