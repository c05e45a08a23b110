"""What each `joblot` command does: run the service, and submit, follow, list and cancel jobs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import orjson

from joblot.auth import check_tenant
from joblot.client import Client
from joblot.config import load_client_settings, load_settings
from joblot.display import COMPLETED_WITH_FAILURES, follow, outcome, show_list
from joblot.models import JobReport, JobStatus


class UsageError(Exception):
    """A problem with what the user typed or the files they gave; exit status 2."""


# -- server commands --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP API and its embedded workers."""
    from joblot.server import configure_logging, serve

    settings = load_settings(
        {
            "database_url": args.db,
            "host": args.host,
            "port": args.port,
            "app": args.app,
            "workers": args.workers,
            "public_url": args.public_url,
            "insecure": args.insecure,
            "log_format": args.log_format,
        }
    )
    configure_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker process."""
    from joblot.server import configure_logging, run_worker

    settings = load_settings(
        {
            "database_url": args.db,
            "app": args.app,
            "concurrency": args.concurrency,
            "log_format": args.log_format,
        }
    )
    configure_logging(settings.log_level, settings.log_format)
    return run_worker(settings, parent=args.parent)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the missing schema migrations."""
    from joblot.server import migrate

    settings = load_settings({"database_url": args.db})
    applied = asyncio.run(migrate(settings))
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))} to {settings.database_url}")
    else:
        print(f"{settings.database_url} is up to date")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Create, list or revoke API tokens (stored hashed in the database)."""
    from joblot import server

    settings = load_settings({"database_url": args.db})
    if args.tokens_command == "create":
        try:
            tenant = check_tenant(args.tenant)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(asyncio.run(server.create_token(settings, tenant)))
    elif args.tokens_command == "revoke":
        left = asyncio.run(server.revoke_token(settings, args.id))
        if left is None:
            raise UsageError(f"there is no live token with id {args.id!r} (see `tokens list`)")
        print(f"revoked token {args.id}")
        if left.live == 0:
            print(
                "that was the last live token: servers now refuse every request until a "
                "token is created (a server started with --insecure serves without one)",
                file=sys.stderr,
            )
    else:
        print(f"{'ID':12}  {'TENANT':24}  {'CREATED (UTC)':19}  STATE")
        for row in asyncio.run(server.list_tokens(settings)):
            state = "live" if row.revoked_at is None else f"revoked {_utc(row.revoked_at)}"
            print(f"{row.id:12}  {row.tenant:24}  {_utc(row.created_at)}  {state}")
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """Print a tenant's webhook signing secret (created on first use), or rotate it."""
    from joblot import server

    settings = load_settings({"database_url": args.db})
    try:
        tenant = check_tenant(args.tenant)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(asyncio.run(server.webhook_secret(settings, tenant, rotate=args.rotate)))
    return 0


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


# -- client commands --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    settings = load_client_settings(args.url, args.token)
    return Client(settings.url, settings.token)


def _print_status(status: JobStatus | JobReport, out: TextIO = sys.stdout) -> None:
    report = status if isinstance(status, JobReport) else JobReport(job_status=status)
    body: dict[str, Any] = {"job_status": report.job_status.model_dump(mode="json")}
    if report.job_stats is not None:
        body["job_stats"] = report.job_stats.model_dump(mode="json")
    out.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")


def read_items(path: str | None, stdin: TextIO = sys.stdin) -> list[Any]:
    """Items from a JSON array or a JSON-lines file (or stdin when `path` is None)."""
    if path is None:
        text, name = stdin.read(), "stdin"
    else:
        try:
            text, name = Path(path).read_text("utf-8"), path
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read items from {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            items = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"{name} is not a valid JSON array: {exc}") from None
        return list(items)
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise UsageError(f"{name}, line {number}: not valid JSON: {exc}") from None
    if not items:
        raise UsageError(f"{name} holds no items (give a JSON array or one JSON object a line)")
    return items


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job and print its JobStatus; with `--wait`, follow it as `watch` does and exit
    0 if it completes (failed items or not), 1 if it fails."""
    items = read_items(args.items)
    with _client(args) as client:
        status = client.submit(
            args.job_type,
            items,
            idempotency_key=args.idempotency_key,
            callback_url=args.callback_url,
        )
        if not args.wait:
            _print_status(status)
            return 0
        print(f"submitted job {status.id} ({status.total:,} items): {status.url}", flush=True)
        code = _follow(client, status.id, args)
        # The job completed: 0, as its failed items were already reported above.
        return 0 if code == COMPLETED_WITH_FAILURES else code


def cmd_status(args: argparse.Namespace) -> int:
    """Print one JobStatus with its `job_stats` (failed items, times)."""
    with _client(args) as client:
        _print_status(client.report(args.id))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Queue a new job of a finished job's failed items and print its JobStatus."""
    with _client(args) as client:
        _print_status(client.retry(args.id, idempotency_key=args.idempotency_key))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job and print its JobStatus."""
    with _client(args) as client:
        _print_status(client.cancel(args.id))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print jobs, unfinished first, one line each, with how many items failed."""
    with _client(args) as client:
        reports = client.reports(
            page_size=max(1, min(args.limit, 100)), status=args.status, job_type=args.type
        )
        show_list(islice(reports, args.limit), sys.stdout)
    return 0


def _outcome_flag(args: argparse.Namespace) -> bool | None:
    """`--failed` → False (only failed entries), `--succeeded` → True, neither → None."""
    if args.failed:
        return False
    return True if args.succeeded else None


def cmd_results(args: argparse.Namespace) -> int:
    """Print a job's result entries, one JSON object a line, in index order."""
    out = sys.stdout.buffer
    with _client(args) as client:
        for entry in client.results(args.id, success=_outcome_flag(args)):
            out.write(orjson.dumps(entry) + b"\n")
    out.flush()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a job's result entries to stdout as JSON lines or CSV, as the server streams it."""
    out = sys.stdout.buffer
    with _client(args) as client:
        for chunk in client.export(args.id, format=args.format, success=_outcome_flag(args)):
            out.write(chunk)
    out.flush()
    return 0


def _follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Show a job's progress from its event stream until it finishes; its exit status."""
    final = follow(client.report_events(job_id), sys.stdout, interval=args.interval)
    text, code = outcome(final)
    print(text)
    return code


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow a job with a live progress bar; exit 0 if it completes, 1 if it fails, 3 if it
    completes with failed items."""
    with _client(args) as client:
        return _follow(client, args.id, args)
