"""The `joblot` command: run the service, and submit, follow, list and cancel jobs.

Here its arguments and exit statuses; what each command does is in `joblot.commands`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

import httpx

from joblot import __version__
from joblot.commands import (
    UsageError,
    cmd_cancel,
    cmd_export,
    cmd_list,
    cmd_migrate,
    cmd_results,
    cmd_retry,
    cmd_serve,
    cmd_status,
    cmd_submit,
    cmd_tokens,
    cmd_watch,
    cmd_webhooks,
    cmd_worker,
)
from joblot.errors import ClientError, JoblotError
from joblot.logs import LOG_FORMATS
from joblot.models import Status

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
    except BrokenPipeError:  # `joblot results ID | head`: the reader has all it wanted
        # Python would report the unflushed rest of stdout failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
