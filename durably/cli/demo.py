"""`durably demo`: a batch job to interrupt with Ctrl-C and resume where it stopped.

Written against the public API only, so it doubles as an example. The job runs in the
background worker while the main thread waits in `trigger_and_wait`; Ctrl-C lands in the
main thread, which stops the worker with a short timeout, so the run goes back to
pending at its next step boundary and the next `durably demo` resumes it at once. A
completed run stays in the database to be looked at (`durably run`, or `durably serve`
with `--app durably.cli.demo:jobs`); the next `durably demo` starts a new one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from durably import (
    Durably,
    JobHandle,
    Run,
    RunProgressEvent,
    StepCompleteEvent,
    StepContext,
    create_durably,
    define_job,
    redact_url,
)
from durably.plugins import with_log_persistence

from .args import database_url, named, plural, seconds
from .output import stdout_gone

JOB_NAME = "import-orders"
IDEMPOTENCY_KEY = "demo"
DEFAULT_DB = "durably-demo.db"
DEFAULT_STEP_SECONDS = 0.6
# Short on purpose: a run left `running` by a killed demo becomes claimable after 2 s.
HEARTBEAT_INTERVAL = 0.5
STALE_THRESHOLD = 2.0
POLLING_INTERVAL = 0.2
# How long a Ctrl-C waits for the run in flight to finish before releasing it.
STOP_TIMEOUT = 0.0
EXIT_INTERRUPTED = 130
BAR_WIDTH = 16
MAX_BATCHES = 1000


class ImportOrdersInput(BaseModel):
    """How many batches of orders to import."""

    batches: int = Field(default=8, ge=1, le=MAX_BATCHES)


class ImportOrdersOutput(BaseModel):
    """What the import did."""

    batches: int
    orders: int


def orders_in_batch(batch: int) -> int:
    """A deterministic stand-in for the number of orders one batch imports."""
    return 100 + (batch * 37) % 50


def _import_batch(step: StepContext, batch: int, seconds: float) -> Callable[[], int]:
    """The work of one step: pretend to import a batch, return how many orders it had."""

    def work() -> int:
        time.sleep(seconds)
        orders = orders_in_batch(batch)
        step.log.info(f"imported batch {batch}", {"batch": batch, "orders": orders})
        return orders

    return work


def import_orders(
    step: StepContext, payload: ImportOrdersInput, step_seconds: float
) -> ImportOrdersOutput:
    """The demo job: one persisted step per batch, progress after each."""
    total = payload.batches
    orders = 0
    for batch in range(1, total + 1):
        orders += step.run(f"batch-{batch}", _import_batch(step, batch, step_seconds))
        step.progress(batch, total, f"imported batch {batch} of {total}")
    return ImportOrdersOutput(batches=total, orders=orders)


def _say(message: str) -> None:
    try:
        print(message, flush=True)
    except BrokenPipeError:  # `durably demo | head`: the reader had enough, the run goes on
        stdout_gone()


def _completed_steps(durably: Durably, run_id: str) -> int:
    return sum(1 for record in durably.get_steps(run_id) if record.status == "completed")


def _text_bar(current: int, total: int) -> str:
    filled = round(BAR_WIDTH * current / total) if total else BAR_WIDTH
    return "#" * filled + "." * (BAR_WIDTH - filled)


class Display:
    """Where the demo reports: a live rich progress bar on a terminal, else plain lines.

    Plain lines (one per step and per progress report) are what a pipe, a log file or a
    test reads; the bar is for people. Events arrive on the worker's thread: rich's
    console and progress are thread-safe, and `print` of whole lines is good enough.
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        """Show the bar (terminal only), `done` of `total` steps already completed."""
        if self._console is None:
            return
        self._bar = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=self._console,
        )
        self._task = self._bar.add_task(JOB_NAME, total=total, completed=done, message="")
        self._bar.start()

    def stop(self) -> None:
        """Remove the live bar (its last state stays on screen); safe to call twice."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()

    def say(self, message: str) -> None:
        """A line above the bar, or on stdout."""
        bar = self._bar
        if bar is not None:
            bar.console.print(message, soft_wrap=True, markup=False, highlight=False)
        else:
            _say(message)

    def progress(self, current: int, total: int, message: str, skipped: bool) -> None:
        """A progress report of the run; `skipped` when its step ran in an earlier run."""
        note = "  (done in an earlier run: skipped)" if skipped else ""
        bar = self._bar
        if bar is not None and self._task is not None:
            bar.update(self._task, completed=current, total=total, message=message)
            if skipped:
                self.say(f"    {message}{note}")
            return
        self.say(f"  [{_text_bar(current, total)}] {current}/{total} {message}{note}")


def _watch(durably: Durably, already_done: int, display: Display) -> None:
    """Report each step that runs and each progress report; mark replayed steps."""

    def on_step_complete(event: StepCompleteEvent) -> None:
        display.say(f"    {event.step_name}: {event.output} orders in {event.duration:.2f} s")

    def on_progress(event: RunProgressEvent) -> None:
        progress = event.progress
        current = int(progress.current)
        total = int(progress.total or current)
        display.progress(current, total, progress.message or "", current <= already_done)

    durably.on("step:complete", on_step_complete)
    durably.on("run:progress", on_progress)


def _wait_until_released(durably: Durably, run_id: str, limit: float) -> bool:
    """After Ctrl-C: wait until the run left `running`; True if it did within `limit`."""
    deadline = time.monotonic() + limit
    while True:
        run = durably.get_run(run_id)
        if run is None or run.status != "running":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def demo_run(handle: JobHandle[ImportOrdersInput, ImportOrdersOutput], payload: Any) -> Run:
    """The unfinished demo run of an earlier invocation (Ctrl-C'd, or killed), else a new
    one. Demo runs have the idempotency keys `demo`, `demo-2`, `demo-3`...: the first free
    one makes the new run, so that two demos started at once share it, and the completed
    runs stay in the database to be looked at."""
    unfinished = [
        run
        for run in handle.get_runs(status=["pending", "running"])
        if (run.idempotency_key or "").startswith(IDEMPOTENCY_KEY)
    ]
    if unfinished:
        return unfinished[-1]  # the oldest
    number = len(handle.get_runs()) + 1
    while True:
        key = IDEMPOTENCY_KEY if number == 1 else f"{IDEMPOTENCY_KEY}-{number}"
        run = handle.trigger(payload, idempotency_key=key)
        if run.status not in ("completed", "failed", "cancelled"):
            return run
        number += 1  # taken by a finished run: runs were deleted since


def run_demo(db: str, batches: int, step_seconds: float) -> int:
    """Start or resume the demo run and wait for it; the exit status of `durably demo`."""

    def job_function(step: StepContext, payload: ImportOrdersInput) -> ImportOrdersOutput:
        return import_orders(step, payload, step_seconds)

    job = define_job(
        name=JOB_NAME, input=ImportOrdersInput, output=ImportOrdersOutput, run=job_function
    )
    payload = ImportOrdersInput(batches=batches)
    url = database_url(db)

    with create_durably(
        url,
        polling_interval=POLLING_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        stale_threshold=STALE_THRESHOLD,
    ) as durably:
        durably.migrate()
        durably.use(with_log_persistence())  # `durably run URL ID` shows the step.log lines
        handle = durably.register({"import_orders": job})["import_orders"]

        run = demo_run(handle, payload)
        key = run.idempotency_key

        total = ImportOrdersInput.model_validate(run.payload).batches
        done = _completed_steps(durably, run.id)
        _say(f"database: {url}")
        if done or run.status == "running":
            _say(
                f"resuming run {run.id}: {done} of {plural(total, 'step')} already done, "
                "they will not run again"
            )
        else:
            _say(f"starting run {run.id} of {JOB_NAME!r}: {plural(total, 'step')}")
        if run.status == "running":
            _say("  it is still marked running by an interrupted process (or another demo);")
            _say(f"  waiting for its lease to expire ({STALE_THRESHOLD:.0f} s without heartbeat)")
        _say("  press Ctrl-C at any time, then run `durably demo` again to resume")

        display = Display(Console() if sys.stdout.isatty() else None)
        _watch(durably, done, display)
        started = time.monotonic()
        display.start(total, done)
        durably.start()
        try:
            result = handle.trigger_and_wait(payload, idempotency_key=key)
        except KeyboardInterrupt:
            display.stop()
            _say("\nstopping: the step in flight finishes, then the run goes back to pending")
            try:
                durably.stop(timeout=STOP_TIMEOUT)
                released = _wait_until_released(durably, run.id, step_seconds + 5.0)
            except KeyboardInterrupt:
                released = False
            done = _completed_steps(durably, run.id)
            if released:
                _say(
                    f"interrupted; run again to resume from step {done + 1} "
                    f"({done} of {total} done)"
                )
            else:
                _say(
                    f"interrupted; run again to resume from step {done + 1} once the "
                    f"lease expires ({STALE_THRESHOLD:.0f} s)"
                )
            return EXIT_INTERRUPTED
        finally:
            display.stop()

        output = result.output
        elapsed = time.monotonic() - started
        _say(
            f"run {result.id} completed in {elapsed:.1f} s: "
            f"imported {output.orders} orders in {plural(output.batches, 'batch', 'batches')}"
        )
        shown = redact_url(url)
        _say(f"the run stays in the database: `durably run {shown} {result.id}` shows it;")
        _say(f"  `durably serve {shown} --app durably.cli.demo:jobs` shows it in a dashboard;")
        _say("  `durably demo` again starts a new run")
    return 0


def _import_orders_job(step: StepContext, payload: ImportOrdersInput) -> ImportOrdersOutput:
    return import_orders(step, payload, DEFAULT_STEP_SECONDS)


# `durably serve URL --app durably.cli.demo:jobs` (or `worker`): the demo's job, so that
# a dashboard can show the demo's runs, resume an interrupted one and trigger new ones
jobs = {
    "import_orders": define_job(
        name=JOB_NAME,
        input=ImportOrdersInput,
        output=ImportOrdersOutput,
        run=_import_orders_job,
    )
}


@named("number of batches")
def batch_count(text: str) -> int:
    """An argparse type: the steps of a new demo run."""
    value = int(text)
    if not 1 <= value <= MAX_BATCHES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BATCHES}, got {value}")
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The demo's options; fills `parser` when given (the `durably demo` subcommand)."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="durably demo", description="Run a resumable demo batch job."
        )
    parser.add_argument(
        "--db",
        type=database_url,
        default=DEFAULT_DB,
        help=f"SQLite file or database URL (default: {DEFAULT_DB})",
    )
    parser.add_argument(
        "--batches",
        type=batch_count,
        default=ImportOrdersInput().batches,
        help="steps of a new run; a resumed run keeps its own (default: %(default)s)",
    )
    parser.add_argument(
        "--step-seconds",
        type=seconds,
        default=DEFAULT_STEP_SECONDS,
        help="simulated work per step (default: %(default)s)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo with options parsed by `build_parser`."""
    try:
        return run_demo(args.db, args.batches, args.step_seconds)
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Entry point of `durably demo`; returns the exit status."""
    return run(build_parser().parse_args(argv))
