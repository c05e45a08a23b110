"""What the joblot command shows: a live progress bar and a table on a terminal (drawn with
rich), plain lines that scripts can read everywhere else."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TextIO

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from joblot.models import JobReport, JobStatus, Status

COMPLETED_WITH_FAILURES = 3  # the exit status when a job completed but some items failed
STATUS_STYLES = {"queued": "dim", "working": "cyan", "completed": "green", "failed": "red"}


def progress_line(
    status: JobStatus, rate: float | None, *, failures: int | None = None, width: int = 30
) -> str:
    """`[####------]  1,234/20,000   6%  working  176 failed  1,234 items/s  ETA 0:00:14`."""
    total, done = status.total or 0, status.progress or 0
    share = done / total if total else 0.0
    filled = int(share * width)
    text = (
        f"[{'#' * filled}{'-' * (width - filled)}] {done:,}/{total:,} {share:4.0%}  "
        f"{status.status.value}"
    )
    if failures:
        text += f"  {failures:,} failed"
    if rate:
        text += f"  {rate:,.0f} items/s"
        if not status.finished and total > done:
            eta = int((total - done) / rate)
            text += f"  ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
    return text


def outcome(report: JobReport) -> tuple[str, int]:
    """The last line shown for a finished job, and the exit status: 0 completed, 1 failed,
    `COMPLETED_WITH_FAILURES` completed with failed items."""
    status = report.job_status
    text = status.message or status.status.value
    failures = _failures(report)
    if failures:
        text += (
            f"\n{failures:,} of {status.total or 0:,} items failed; "
            f"see them with `joblot results {status.id} --failed`"
        )
    if status.status is not Status.COMPLETED:
        return text, 1
    return text, COMPLETED_WITH_FAILURES if failures else 0


def _failures(report: JobReport) -> int:
    return 0 if report.job_stats is None else report.job_stats.failures


def follow(reports: Iterable[JobReport], out: TextIO, *, interval: float) -> JobReport:
    """Show each report until the last (a finished job's): a live bar on a terminal, else a
    plain line per change, at most one each `interval` seconds but for a new status and the
    last one. Returns the last report."""
    if out.isatty():
        return _follow_bar(reports, Console(file=out))
    return _follow_lines(reports, out, interval)


def _follow_lines(reports: Iterable[JobReport], out: TextIO, interval: float) -> JobReport:
    last: JobReport | None = None
    first_seen: tuple[float, int] | None = None
    shown: tuple[float, Status] | None = None
    for report in reports:
        last, status, now = report, report.job_status, time.monotonic()
        if first_seen is None and status.progress is not None:
            first_seen = (now, status.progress)
        due = shown is None or status.status is not shown[1] or now - shown[0] >= interval
        if due or status.finished:
            rate = _rate(first_seen, now, status.progress or 0)
            out.write(progress_line(status, rate, failures=_failures(report)) + "\n")
            out.flush()
            shown = (now, status.status)
    if last is None:
        raise RuntimeError("the job's event stream ended before sending its status")
    return last


def _rate(first_seen: tuple[float, int] | None, now: float, done: int) -> float | None:
    """Items per second since the first status with progress, if any were done since."""
    if first_seen is None or now <= first_seen[0]:
        return None
    return (done - first_seen[1]) / (now - first_seen[0]) or None


class ItemsPerSecond(ProgressColumn):
    """The rate rich measures between updates, as items per second."""

    def render(self, task: Task) -> Text:
        """`1,234 items/s`, or nothing before there is a rate."""
        speed = task.finished_speed or task.speed
        return Text("" if not speed else f"{speed:,.0f} items/s", style="progress.data.speed")


def _bar(console: Console) -> Progress:
    """Status, bar, done/total, percent, failed items, rate, time left, the job's message."""
    return Progress(
        TextColumn("{task.fields[status]}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[failed]}", markup=False, style="red"),
        ItemsPerSecond(),
        TimeRemainingColumn(),
        TextColumn(
            "{task.fields[message]}",
            markup=False,
            table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
        ),
        console=console,
        expand=True,
    )


def _follow_bar(reports: Iterable[JobReport], console: Console) -> JobReport:
    last: JobReport | None = None
    with _bar(console) as bar:
        task = bar.add_task("", total=None, status="", failed="", message="")
        for report in reports:
            last, status, failures = report, report.job_status, _failures(report)
            bar.update(
                task,
                total=status.total or None,
                completed=status.progress or 0,
                status=status.status.value,
                failed=f"{failures:,} failed" if failures else "",
                message=status.message or "",
            )
    if last is None:
        raise RuntimeError("the job's event stream ended before sending its status")
    return last


LIST_HEADER = ("ID", "JOB TYPE", "STATUS", "PROGRESS", "FAILED", "MESSAGE")


def list_rows(report: JobReport) -> tuple[str, str, str, str, str, str]:
    """One job's cells in `joblot list`."""
    status, stats = report.job_status, report.job_stats
    done = "-" if status.progress is None else str(status.progress)
    failed = "-" if stats is None else str(stats.failures)
    return (
        status.id,
        status.job_type,
        status.status.value,
        f"{done}/{status.total}",
        failed,
        status.message or "",
    )


def show_list(reports: Iterator[JobReport], out: TextIO) -> None:
    """A table of jobs: drawn by rich on a terminal, else fixed-width plain lines (the header
    first) that print as the pages arrive and split on whitespace."""
    if out.isatty():
        _list_table(reports, Console(file=out))
        return
    out.write(_plain_row(LIST_HEADER) + "\n")
    for report in reports:
        out.write(_plain_row(list_rows(report)) + "\n")
    out.flush()


def _plain_row(cells: tuple[str, ...]) -> str:
    job_id, job_type, status, progress, failed, message = cells
    return f"{job_id:32}  {job_type[:20]:20}  {status:9}  {progress:>15}  {failed:>7}  {message}"


def _list_table(reports: Iterator[JobReport], console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
    for name in LIST_HEADER:
        numeric = name in ("PROGRESS", "FAILED")
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=name != "MESSAGE",
            overflow="fold" if name == "ID" else "ellipsis",
        )
    for report in reports:
        cells = [Text(cell) for cell in list_rows(report)]
        cells[2].stylize(STATUS_STYLES.get(report.job_status.status.value, ""))
        if cells[4].plain not in ("0", "-"):
            cells[4].stylize("red")
        table.add_row(*cells)
    console.print(table)
