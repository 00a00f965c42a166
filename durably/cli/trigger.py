"""`durably trigger URL JOB --app module:attr --input JSON`: a run from the command line.

Like Celery's `call` or Procrastinate's `defer`: the input is validated by the job's own
model (so `--app` names the jobs), the run is written as pending, and a worker runs it,
wherever it is. `--wait` then follows the run through the database until it ends; this
process never executes it, so without a worker on the same database it waits in vain.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._app import Durably, follow_source
from .._dialect import redact_url
from .._errors import DurablyError, InputValidationError, WaitTimeoutError
from .._follow import wait
from .._handle import JobHandle
from .._records import Run
from .appload import load_jobs
from .args import database_url, json_value, seconds
from .db import existing
from .output import record_json, to_json

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
# how often `--wait` reads the run: the worker that ends it is in another process
WAIT_POLL = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `durably trigger`."""
    parser.add_argument(
        "url", type=database_url, help="database URL (a plain file path is a SQLite file)"
    )
    parser.add_argument("job", metavar="JOB", help="the job's name (or its key in --app)")
    parser.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTR",
        help="where the jobs are, as for `durably worker`: the input is validated by the job",
    )
    parser.add_argument(
        "--input",
        type=json_value,
        default={},
        metavar="JSON",
        help="the run's input as JSON (default: {})",
    )
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key for the same job gives the run it gave before; nothing new",
    )
    parser.add_argument(
        "--concurrency-key", metavar="KEY", help="at most one run with this key runs at a time"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until a worker (`durably worker` elsewhere) ended the run, then print its "
        "output; exit 1 if it failed or was cancelled. This process runs nothing",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 1; the run stays)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the run as JSON (the final run with --wait)"
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    """A usage error in the options, or None."""
    if args.timeout is not None and not args.wait:
        return "--timeout needs --wait"
    return None


def _handle(durably: Durably, name: str, spec: str, keys: dict[str, str]) -> JobHandle[Any, Any]:
    """The job named `name` (or registered under the key `name` in `--app`)."""
    handle = durably.get_job(name)
    if handle is None and name in keys:
        handle = durably.get_job(keys[name])
    if handle is None:
        raise DurablyError(
            f"no job {name!r} in --app {spec!r}; its jobs: {', '.join(sorted(keys.values()))}"
        )
    return handle


def _one_line(exc: InputValidationError, job: str) -> str:
    """pydantic's details on one line: `a: Field required; b: Input should be ...`."""
    if not exc.errors:
        return str(exc).splitlines()[0]
    parts = []
    for error in exc.errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return f"invalid --input for job {job!r}: {'; '.join(parts)}"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trigger(args: argparse.Namespace) -> int:
    """Trigger one run; with `--wait`, follow it until a worker ended it."""
    definitions = load_jobs(args.app)
    keys = {key: definition.name for key, definition in definitions.items()}
    with existing(args.url, polling_interval=WAIT_POLL) as durably:
        durably.register(definitions)
        handle = _handle(durably, args.job, args.app, keys)
        try:
            run = handle.trigger(
                args.input,
                idempotency_key=args.idempotency_key,
                concurrency_key=args.concurrency_key,
            )
        except InputValidationError as exc:
            raise InputValidationError(_one_line(exc, handle.name), exc.errors) from None
        if not args.wait:
            print(to_json(record_json(run)) if args.json else run.id)
            return 0
        return _wait(durably, run, args)


def _wait(durably: Durably, run: Run, args: argparse.Namespace) -> int:
    url = redact_url(args.url)
    _say(
        f"triggered run {run.id}; waiting for a worker to run it "
        f"(`durably worker {url} --app {args.app}`, elsewhere)"
    )
    try:
        final = wait(follow_source(durably), run.id, args.timeout)
    except WaitTimeoutError:
        now = durably.get_run(run.id)
        state = now.status if now is not None else "gone"
        _say(
            f"error: run {run.id} did not end within {args.timeout:g} s; it stays {state} "
            f"(`durably run {url} {run.id}` shows it)"
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(f"interrupted: run {run.id} goes on (`durably run {url} {run.id}` shows it)")
        return EXIT_INTERRUPTED
    if args.json:
        print(to_json(record_json(final)))
    elif final.status == "completed":
        print(to_json(final.output))
    if final.status == "failed":
        where = f" at step {final.failed_step_name!r}" if final.failed_step_name else ""
        _say(f"error: run {run.id} failed{where}: {final.error}")
        return EXIT_FAILED
    if final.status == "cancelled":
        _say(f"error: run {run.id} was cancelled")
        return EXIT_FAILED
    return 0
