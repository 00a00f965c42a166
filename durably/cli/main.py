"""The `durably` command line: one subcommand per function, errors as `error: ...`.

Every command that takes a URL opens `create_durably(URL)` and closes it. People get rich
tables; `--json` gives scripts the records' fields (see `cli_output`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .._app import create_durably
from .._dialect import redact_url
from .._errors import DurablyError, RunNotFoundError, StoreError
from .._records import RUN_STATUSES
from .args import database_url, non_negative, plural, positive
from .db import existing
from .demo import build_parser as build_demo_parser
from .demo import run as run_demo
from .dialects import dialects
from .output import console, record_json, run_view, runs_table, stdout_gone, to_json
from .trigger import add_arguments as add_trigger_arguments
from .trigger import check_arguments as check_trigger_arguments
from .trigger import trigger
from .worker import add_serve_arguments, add_worker_arguments, serve, worker

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_LIMIT = 20
TRACEBACK_HELP = "on an unexpected error, show the full traceback instead of one line"

EXIT_STATUS_HELP = """\
exit status:
  0    success
  1    error, printed as `error: <message>` on stderr: an unknown run, a run whose state
       does not allow retry/cancel/delete, a database, URL or --app problem, input that
       fails the job's validation, a run that failed under `trigger --wait`
  2    usage error (bad arguments)
  130  interrupted (Ctrl-C; a third one for worker/serve)"""


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, how it adds its options and how it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], object]
    run: Callable[[argparse.Namespace], int]
    # a usage error argparse cannot see (options that need each other), or None
    check: Callable[[argparse.Namespace], str | None] = lambda args: None


# -- helpers ----------------------------------------------------------------------------


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        type=database_url,
        help="database URL, e.g. sqlite:///app.db (a plain file path is a SQLite file)",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _add_id_arguments(parser: argparse.ArgumentParser) -> None:
    _add_url(parser)
    parser.add_argument("id", help="the run's id")
    _add_json(parser)


def _print_json(value: Any) -> None:
    print(to_json(value))


# -- migrate ----------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    with create_durably(args.url) as durably:
        durably.migrate()
    print(f"migrated {redact_url(args.url)}")
    return EXIT_OK


# -- runs / run -------------------------------------------------------------------------


def _add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    _add_url(parser)
    parser.add_argument(
        "--job", action="append", metavar="NAME", help="only this job's runs (repeatable)"
    )
    parser.add_argument(
        "--status",
        action="append",
        choices=RUN_STATUSES,
        help="only runs in this status (repeatable)",
    )
    parser.add_argument(
        "--limit",
        type=positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="at most N runs (default: %(default)s)",
    )
    parser.add_argument("--offset", type=non_negative, default=0, metavar="N", help="skip N runs")
    _add_json(parser)


def _runs(args: argparse.Namespace) -> int:
    with existing(args.url) as durably:
        runs = durably.get_runs(
            job_name=args.job, status=args.status, limit=args.limit, offset=args.offset
        )
    if args.json:
        _print_json([record_json(run) for run in runs])
        return EXIT_OK
    out = console()
    if not runs:
        out.print("no runs" + (" match" if args.job or args.status or args.offset else ""))
        return EXIT_OK
    out.print(runs_table(runs))
    if len(runs) == args.limit:
        out.print(
            f"{plural(len(runs), 'run')} shown, newest first; "
            f"--offset {args.offset + len(runs)} for the next ones",
            style="dim",
        )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    with existing(args.url) as durably:
        run = durably.get_run(args.id)
        if run is None:
            raise RunNotFoundError(args.id)
        steps = durably.get_steps(run.id)
        logs = durably.get_logs(run.id)
    if args.json:
        _print_json(
            {
                "run": record_json(run),
                "steps": [record_json(step) for step in steps],
                "logs": [record_json(log) for log in logs],
            }
        )
    else:
        console().print(run_view(run, steps, logs))
    return EXIT_OK


# -- retry / cancel / delete ------------------------------------------------------------


def _retry(args: argparse.Namespace) -> int:
    with existing(args.url) as durably:
        durably.retry(args.id)
        run = durably.get_run(args.id)
        kept = sum(1 for step in durably.get_steps(args.id) if step.status == "completed")
    if args.json:
        _print_json(record_json(run) if run else {"id": args.id})
    else:
        print(
            f"retried run {args.id}: pending again; "
            f"its {plural(kept, 'completed step')} will be skipped"
        )
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    with existing(args.url) as durably:
        before = durably.get_run(args.id)
        durably.cancel(args.id)
        run = durably.get_run(args.id)
    if args.json:
        _print_json(record_json(run) if run else {"id": args.id})
    elif before is not None and before.status == "running":
        print(f"cancelled run {args.id}: it stops at its next step boundary")
    else:
        print(f"cancelled run {args.id}")
    return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    with existing(args.url) as durably:
        durably.delete_run(args.id)
    if args.json:
        _print_json({"id": args.id, "deleted": True})
    else:
        print(f"deleted run {args.id} with its steps and logs")
    return EXIT_OK


# -- the table of commands --------------------------------------------------------------


COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "run a demo batch job; Ctrl-C it and run it again to see it resume",
        build_demo_parser,
        run_demo,
    ),
    Command("migrate", "create or upgrade durably's tables in a database", _add_url, _migrate),
    Command(
        "worker",
        "run a worker for the jobs of --app until SIGTERM/SIGINT, then stop gracefully",
        add_worker_arguments,
        worker,
    ),
    Command(
        "serve",
        "serve the HTTP API under /api with a worker for the jobs of --app "
        "(needs durably[server]); SIGTERM/SIGINT stop it gracefully",
        add_serve_arguments,
        serve,
    ),
    Command(
        "trigger",
        "trigger a run of a job of --app with --input JSON (a worker runs it; --wait "
        "waits for its output)",
        add_trigger_arguments,
        trigger,
        check_trigger_arguments,
    ),
    Command("runs", "list runs, newest first", _add_runs_arguments, _runs),
    Command("run", "show one run: its fields, steps, logs and error", _add_id_arguments, _run),
    Command(
        "retry",
        "retry a failed or cancelled run (its completed steps are skipped)",
        _add_id_arguments,
        _retry,
    ),
    Command("cancel", "cancel a pending or running run", _add_id_arguments, _cancel),
    Command(
        "delete",
        "delete a completed, failed or cancelled run with its steps and logs",
        _add_id_arguments,
        _delete,
    ),
    Command(
        "dialects",
        "list the installed database dialects and their URL schemes",
        _add_json,
        dialects,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The `durably` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="durably",
        description="Step-oriented, resumable batch execution.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"durably {__version__}")
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=EXIT_STATUS_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        # after the command too: `durably runs URL --traceback`
        sub.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=TRACEBACK_HELP
        )
        sub.set_defaults(run=command.run, check=command.check, subparser=sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed arguments; an unknown option is reported with its command's usage
    (`durably runs URL --concurrency 3` shows how `runs` is used, not the command list)."""
    args, unknown = build_parser().parse_known_args(argv)
    subparser: argparse.ArgumentParser = args.subparser
    if unknown:
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    problem = args.check(args)
    if problem:
        subparser.error(problem)
    return args


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _unexpected(exc: Exception, args: argparse.Namespace) -> str:
    """One line for an error that is not durably's own (e.g. the database's)."""
    message = f"{type(exc).__name__}: {exc}".strip()
    if "durably_" in message and getattr(args, "url", None):
        message += f"\n(are durably's tables there? `durably migrate {redact_url(args.url)}`)"
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `durably` console script; returns the exit status."""
    try:
        args = parse(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return _exit_status(exc)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        status = run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit after this returned
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `| head -1`: how a pipe says it has enough, not an error
        stdout_gone()
        return EXIT_OK
    except DurablyError as exc:
        if args.traceback and isinstance(exc, StoreError):
            raise  # the database's own error is its cause: show both
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if args.traceback:
            raise
        print(f"error: {_unexpected(exc, args)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
