"""Logging for every joblot process: plain text or one JSON object a line, and one line per
job event (submitted, started, finished, cancelled; worker lost) that carries the job id,
job type and tenant as fields a log pipeline can filter on."""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's colored copy of message
)
# uvicorn's loggers: handed to the root logger so that they share its format
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, as the API writes times."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line: time, level, logger, pid, message, the
    fields given with `extra=`, and the traceback (if any) as a string field, so that even
    an error with a traceback stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def configure(level: str, log_format: str = "text") -> None:
    """Send every log line of this process (joblot's, uvicorn's, warnings, uncaught
    exceptions in any thread) to stderr in one format: `text` or `json`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _UVICORN:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("joblot").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("joblot").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def job_event(
    logger: logging.Logger,
    event: str,
    text: str,
    *,
    job_id: str,
    job_type: str,
    tenant: str,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log one job event as one line: `job <id> (<type>, tenant <t>) <event>: <text>`, with
    `event`, `job_id`, `job_type`, `tenant` and `fields` as structured fields too."""
    message = f"job {job_id} ({job_type}, tenant {tenant}) {event.replace('_', ' ')}"
    if text:
        message += f": {text}"
    extra = {"event": event, "job_id": job_id, "job_type": job_type, "tenant": tenant, **fields}
    logger.log(level, "%s", message, extra=extra)
