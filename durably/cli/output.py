"""What the `durably` command line prints: rich tables for people, JSON for scripts.

The JSON form of a record is its Python fields (`Run`, `StepRecord`, `LogEntry`) with their
snake_case names, times as ISO-8601 UTC strings with a `Z`. It is not the HTTP API's
camelCase wire format on purpose: that lives in `durably.server`, which needs the `server`
extra, and the command line must work without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._dialect import install_hint
from .._events import Progress
from .._records import LogEntry, Run, StepRecord, finite_json

STATUS_STYLES = {
    "pending": "yellow",
    "running": "bold cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
LEVEL_STYLES = {"info": "cyan", "warn": "yellow", "error": "bold red"}
ID_WIDTH = 26  # a ULID
BAR_WIDTH = 20
TABLE_BAR_WIDTH = 8  # with 26-character ids, a runs table still fits 80 columns
CELL_CHARS = 60
FIELD_CHARS = 2000
PIPE_WIDTH = 1000


# -- JSON -------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """An aware datetime as ISO-8601 UTC with a `Z` (the HTTP API's form too)."""
    if value is None:
        return None
    text = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def record_json(record: Run | StepRecord | LogEntry) -> dict[str, Any]:
    """A record's fields by their Python names; times ISO, progress as a dict or null."""
    data: dict[str, Any] = {}
    for field in fields(record):
        value = getattr(record, field.name)
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, Progress):
            value = {"current": value.current, "total": value.total, "message": value.message}
        data[field.name] = value
    return data


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON that every parser accepts (no NaN); anything not JSON is written as its repr."""
    separators = None if indent else (",", ":")
    return json.dumps(
        finite_json(value), indent=indent, separators=separators, ensure_ascii=False, default=repr
    )


# -- cells ------------------------------------------------------------------------------


def status_text(status: str) -> Text:
    """A run or step status in its colour."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def local_time(value: datetime | None) -> str:
    """A time in the local zone, to the second; `-` when unset."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def short_time(value: datetime, now: datetime) -> str:
    """`14:03:07` today, `11-24 09:12` this year, else the date: narrow enough for a table."""
    local = value.astimezone()
    if local.date() == now.date():
        return local.strftime("%H:%M:%S")
    if local.year == now.year:
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%Y-%m-%d")


def duration_text(start: datetime | None, end: datetime | None) -> str:
    """`0.42 s`, `3 min 05 s`; `-` when the interval is open."""
    if start is None or end is None:
        return "-"
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def short_json(value: Any, limit: int = CELL_CHARS) -> str:
    """Compact JSON cut to `limit` characters (`--json` shows it whole)."""
    text = to_json(value, indent=None)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float) -> str:
    return f"{value:g}"


def progress_cell(
    progress: Progress | None, *, width: int = BAR_WIDTH, with_message: bool = True
) -> RenderableType:
    """A bar with its percentage when the total is known, else the current count."""
    if progress is None:
        return Text("-", style="dim")
    message = f" {progress.message}" if progress.message and with_message else ""
    total = progress.total
    if total is None or total <= 0 or not math.isfinite(total):
        return Text(f"{_number(progress.current)}{message}")
    done = min(max(progress.current, 0.0), total)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis")
    grid.add_row(
        ProgressBar(total=total, completed=done, width=width),
        f"{100 * done / total:3.0f}%{message}",
    )
    return grid


# -- views ------------------------------------------------------------------------------


def runs_table(runs: Sequence[Run]) -> Table:
    """One row per run: id, job, status, progress, step, created, updated."""
    table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("job", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    now = datetime.now().astimezone()
    for run in runs:
        table.add_row(
            run.id,
            run.job_name,
            status_text(run.status),
            progress_cell(run.progress, width=TABLE_BAR_WIDTH, with_message=False),
            str(run.current_step_index),
            short_time(run.created_at, now),
            short_time(run.updated_at, now),
        )
    return table


def run_fields(run: Run) -> Table:
    """A run's fields, one per line."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType]] = [
        ("id", run.id),
        ("job", run.job_name),
        ("status", status_text(run.status)),
        ("progress", progress_cell(run.progress)),
        ("current step", str(run.current_step_index)),
        ("payload", short_json(run.payload, FIELD_CHARS)),
    ]
    if run.output is not None or run.status == "completed":
        rows.append(("output", short_json(run.output, FIELD_CHARS)))
    for label, value in (
        ("failed step", run.failed_step_name),
        ("idempotency key", run.idempotency_key),
        ("concurrency key", run.concurrency_key),
    ):
        if value is not None:
            rows.append((label, value))
    rows += [
        ("created", local_time(run.created_at)),
        ("started", local_time(run.started_at)),
        ("completed", local_time(run.completed_at)),
        ("updated", local_time(run.updated_at)),
        ("heartbeat", local_time(run.heartbeat_at)),
        ("duration", duration_text(run.started_at, run.completed_at)),
    ]
    for label, cell in rows:
        grid.add_row(label, cell)
    return grid


def steps_table(steps: Sequence[StepRecord]) -> Table:
    """The persisted steps of a run in index order."""
    table = Table(title="steps", title_justify="left", box=None, header_style="bold")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("output / error", overflow="fold")
    for step in steps:
        detail: RenderableType = (
            Text(step.error, style="red") if step.error else short_json(step.output)
        )
        table.add_row(
            str(step.index),
            step.name,
            status_text(step.status),
            duration_text(step.started_at, step.completed_at),
            detail,
        )
    return table


def logs_table(logs: Sequence[LogEntry]) -> Table:
    """The persisted logs of a run, oldest first."""
    table = Table(title="logs", title_justify="left", box=None, header_style="bold")
    table.add_column("time", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("step", overflow="fold")
    table.add_column("message", overflow="fold")
    table.add_column("data", overflow="fold")
    for log in logs:
        table.add_row(
            local_time(log.created_at),
            Text(log.level, style=LEVEL_STYLES.get(log.level, "")),
            log.step_name or "-",
            log.message,
            "" if log.data is None else short_json(log.data),
        )
    return table


def run_view(run: Run, steps: Sequence[StepRecord], logs: Sequence[LogEntry]) -> Group:
    """Everything `durably run URL ID` shows: fields, steps, logs, then the error."""
    parts: list[RenderableType] = [run_fields(run), Text()]
    parts.append(steps_table(steps) if steps else Text("no steps persisted yet", style="dim"))
    parts.append(Text())
    parts.append(
        logs_table(logs)
        if logs
        else Text(
            "no logs (stored only with with_log_persistence(), which `durably worker` "
            "and `durably serve` turn on)",
            style="dim",
        )
    )
    if run.error:
        parts += [Text(), Text.assemble(("error: ", "bold red"), run.error)]
    return Group(*parts)


def drivers_cell(plugin: dict[str, Any]) -> RenderableType:
    """The drivers of a plugin that import, or what to install when none does."""
    drivers: dict[str, bool] | None = plugin.get("drivers")
    if drivers is None:
        return Text("-", style="dim")
    present = [name for name, ok in drivers.items() if ok]
    if not present:
        hint = install_hint(plugin["schemes"][0]) if plugin["schemes"] else None
        return Text(f"driver missing: {hint or 'install a driver'}", style="bold red")
    absent = [name for name, ok in drivers.items() if not ok]
    return Text(", ".join(present) + (f" ({', '.join(absent)} not installed)" if absent else ""))


def dialects_view(
    plugins: Iterable[dict[str, Any]],
    missing: Iterable[dict[str, str]],
    failed: Iterable[dict[str, str]],
) -> Group:
    """Installed dialect plugins, known schemes that need an extra, plugins that broke."""
    installed = Table(
        title="installed dialects", title_justify="left", box=None, header_style="bold"
    )
    installed.add_column("plugin", no_wrap=True)
    installed.add_column("module", overflow="fold")
    installed.add_column("URL schemes", overflow="fold")
    installed.add_column("drivers", overflow="fold")
    for plugin in plugins:
        schemes = ", ".join(plugin["schemes"]) or Text("(none announced)", style="dim")
        installed.add_row(plugin["name"], plugin["module"], schemes, drivers_cell(plugin))
    parts: list[RenderableType] = [installed]
    missing = list(missing)
    if missing:
        table = Table(
            title="known schemes not installed", title_justify="left", box=None, header_style="bold"
        )
        table.add_column("scheme", no_wrap=True)
        table.add_column("install with", overflow="fold")
        for item in missing:
            table.add_row(item["scheme"], item["install"])
        parts += [Text(), table]
    for item in failed:
        line = Text.assemble(("failed to load: ", "bold red"), f"{item['name']}: {item['error']}")
        parts += [Text(), line]
    return Group(*parts)


def stdout_gone() -> None:
    """The reader of stdout went away (`durably runs URL | head -1`): send what is still
    to be written (the final flush included) nowhere, quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits with status 1 here; a reader that had enough is no error: main()
        # ends quietly with 0 on BrokenPipeError
        self.quiet = True
        raise BrokenPipeError


def console() -> Console:
    """A console on the current stdout: colours only on a terminal, no markup in strings.

    Job names, messages and errors are data: `[...]` in them is printed as it is.

    Output to a pipe or a file is not cut to 80 columns (rich's default there), so that
    `grep` and friends see whole ids and messages; `COLUMNS` still sets a width.
    """
    out = _Console(highlight=False, markup=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = _Console(highlight=False, markup=False, width=PIPE_WIDTH)
    return out
