"""The `joblot` command: run the service, and submit, follow, list and cancel jobs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

from joblot import __version__
from joblot.auth import check_tenant
from joblot.client import Client
from joblot.config import load_client_settings, load_settings
from joblot.display import COMPLETED_WITH_FAILURES, follow, outcome, show_list
from joblot.errors import ClientError, JoblotError
from joblot.logs import LOG_FORMATS
from joblot.models import JobReport, JobStatus, Status


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


# -- parser -----------------------------------------------------------------------------------


def _count(text: str) -> int:
    """A whole number of 0 or more, for argparse."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return number


def _server_flags(p: argparse.ArgumentParser, *, app: bool = True) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        help="database URL (default: env JOBLOT_DATABASE_URL, else sqlite:///joblot.db)",
    )
    if app:
        p.add_argument(
            "--app",
            metavar="MODULE:ATTR",
            help="the joblot.App with your job types (default: the demo app)",
        )


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text, or json: one JSON object a line (default: env JOBLOT_LOG_FORMAT, else text)",
    )


def _statuses(text: str) -> list[str]:
    """`--status queued,working`: known statuses only (argparse reports the error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = [s.value for s in Status]
    if not names or any(n not in known for n in names):
        raise argparse.ArgumentTypeError(f"give one or more of {', '.join(known)}")
    return names


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", help="joblot server (default: env JOBLOT_URL, else http://127.0.0.1:8000)"
    )
    p.add_argument("--token", help="API token (default: env JOBLOT_TOKEN)")


def _follow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="when stdout is not a terminal, print a line at most this often (0.5)",
    )


Command = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _result_commands(command: Command) -> None:
    """`results` and `export`: a job's result entries, all or only the failed ones; `retry`:
    run the failed ones again."""
    for name, fn, text in (
        ("results", cmd_results, "print a job's result entries as JSON lines"),
        ("export", cmd_export, "write a job's result entries to stdout as JSON lines or CSV"),
    ):
        p = command(name, fn, text)
        p.add_argument("id")
        only = p.add_mutually_exclusive_group()
        only.add_argument("--failed", action="store_true", help="only the failed entries")
        only.add_argument("--succeeded", action="store_true", help="only the succeeded entries")
        if name == "export":
            p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
        _client_flags(p)
    p = command("retry", cmd_retry, "queue a new job of a finished job's failed items")
    p.add_argument("id")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    _client_flags(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the joblot command."""
    parser = argparse.ArgumentParser(prog="joblot", description="Batch jobs with job statuses.")
    parser.add_argument("--version", action="version", version=f"joblot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(run=fn)
        return p

    p = command("serve", cmd_serve, "run the HTTP API with embedded worker processes")
    _server_flags(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8000)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
    p.add_argument("--public-url", help="base of JobStatus urls (default: the request's)")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve without tokens on a non-loopback address (not recommended)",
    )
    _log_flags(p)
    p = command("worker", cmd_worker, "run a worker process only")
    _server_flags(p)
    _log_flags(p)
    p.add_argument("--concurrency", type=int, metavar="N", help="items run at once (default 4)")
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # set by `joblot serve`
    _server_flags(
        command("migrate", cmd_migrate, "bring the database schema up to date"), app=False
    )
    p = command("tokens", cmd_tokens, "create, list or revoke API tokens")
    tokens = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    created = tokens.add_parser("create", help="mint a token; stdout is the token alone")
    created.add_argument("--tenant", required=True, help="the tenant the token acts for")
    _server_flags(created, app=False)
    _server_flags(
        tokens.add_parser("list", help="list tokens (never the tokens themselves)"), app=False
    )
    revoked = tokens.add_parser("revoke", help="revoke a token by its id")
    revoked.add_argument("id")
    _server_flags(revoked, app=False)
    p = command("webhooks", cmd_webhooks, "show or rotate a tenant's webhook signing secret")
    hooks = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    secret = hooks.add_parser(
        "secret", help="print the tenant's signing secret alone on stdout (created on first use)"
    )
    secret.add_argument("--tenant", required=True, help="the tenant whose deliveries it signs")
    secret.add_argument(
        "--rotate",
        action="store_true",
        help="replace it with a new one (the old one also signs for a day: docs/security.md)",
    )
    _server_flags(secret, app=False)
    p = command("submit", cmd_submit, "submit a job and print its JobStatus")
    p.add_argument("job_type")
    p.add_argument("--items", metavar="FILE", help="JSON array or JSON lines (default: stdin)")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    p.add_argument("--callback-url", help="POST a signed event here when the job finishes")
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the job as `watch` does: exit 0 if it completes, 1 if it fails, 3 if "
        "it completes with failed items",
    )
    _follow_flags(p)
    _client_flags(p)
    for name, fn, text in (
        ("status", cmd_status, "print a JobStatus"),
        ("watch", cmd_watch, "follow a job with a live progress bar"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        p = command(name, fn, text)
        p.add_argument("id")
        _client_flags(p)
        if name == "watch":
            _follow_flags(p)
    _result_commands(command)
    p = command("list", cmd_list, "list jobs, unfinished first")
    p.add_argument(
        "--limit", type=_count, default=100, metavar="N", help="show at most N jobs (100)"
    )
    p.add_argument(
        "--status",
        type=_statuses,
        metavar="S[,S]",
        help="only jobs in these statuses: queued, working, failed, completed",
    )
    p.add_argument("--type", metavar="JOB_TYPE", help="only jobs of this job type")
    _client_flags(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the joblot command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"joblot: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"joblot: the server answered {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"joblot: cannot reach the joblot server: {exc}", file=sys.stderr)
        return 1
    except JoblotError as exc:
        print(f"joblot: {exc.description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
