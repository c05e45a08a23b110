"""Log lines: JSON ones are one object a line, with the job's fields; job events read alike."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from joblot.config import Settings, load_settings
from joblot.errors import ConfigError
from joblot.logs import JsonFormatter, job_event


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("joblot.test", logging.WARNING, __file__, 1, msg, args or None, None)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_carries_time_level_logger_message_and_extra_fields() -> None:
    line = JsonFormatter().format(record("job %s done", "abc", job_id="abc", tenant="t"))
    doc = orjson.loads(line)
    assert doc["message"] == "job abc done"
    assert (doc["level"], doc["logger"], doc["job_id"], doc["tenant"]) == (
        "warning",
        "joblot.test",
        "abc",
        "t",
    )
    assert doc["time"].endswith("Z") and len(doc["time"]) == len("2026-01-01T00:00:00.000Z")


def test_a_traceback_stays_on_the_one_line_of_its_record() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad\nthing" in doc["exception"]


def test_values_json_cannot_hold_are_written_as_text() -> None:
    doc = orjson.loads(JsonFormatter().format(record("x", odd={1, 2})))
    assert doc["odd"] == "{1, 2}"


def test_a_job_event_names_the_job_in_its_text_and_in_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        job_event(
            logging.getLogger("joblot.test"),
            "worker_lost",
            "lease 7 lapsed",
            job_id="j1",
            job_type="demo.echo",
            tenant="acme",
            lease_id=7,
        )
    (rec,) = caplog.records
    assert rec.getMessage() == "job j1 (demo.echo, tenant acme) worker lost: lease 7 lapsed"
    fields = {k: rec.__dict__[k] for k in ("event", "job_id", "job_type", "tenant", "lease_id")}
    assert fields == {
        "event": "worker_lost",
        "job_id": "j1",
        "job_type": "demo.echo",
        "tenant": "acme",
        "lease_id": 7,
    }


def test_the_log_format_is_text_or_json_from_flag_or_env() -> None:
    assert Settings().log_format == "text"
    assert load_settings(environ={"JOBLOT_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="log_format must be text or json"):
        load_settings(environ={"JOBLOT_LOG_FORMAT": "xml"})
