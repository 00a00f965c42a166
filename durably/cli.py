"""The `durably` command line: one subcommand per function, errors as `error: ...`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from durably import DurablyError, create_durably

from . import demo
from .appload import load_jobs
from .dialect import redact_url

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, how it adds its options and how it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], object]
    run: Callable[[argparse.Namespace], int]


def _add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="database URL, e.g. sqlite:///app.db")


def _migrate(args: argparse.Namespace) -> int:
    with create_durably(args.url) as durably:
        durably.migrate()
    print(f"migrated {redact_url(args.url)}")
    return 0


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="database URL shared by every worker")
    parser.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTR",
        help="where the jobs are: a Durably instance, a JobDefinition, or a dict/list of them",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="runs executed at once (max_concurrent_runs)"
    )
    parser.add_argument("--polling-interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--stale-threshold", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, wait this long for runs in flight, then release them "
        "back to pending at their next step boundary",
    )
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not create/upgrade the tables at start"
    )


def _worker(args: argparse.Namespace) -> int:
    jobs = load_jobs(args.app)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        durably = create_durably(
            args.url,
            polling_interval=args.polling_interval,
            heartbeat_interval=args.heartbeat_interval,
            stale_threshold=args.stale_threshold,
            max_concurrent_runs=args.concurrency,
        )
    except ValueError as exc:
        raise DurablyError(str(exc)) from exc
    with durably:
        if not args.no_migrate:
            durably.migrate()
        durably.register(jobs)
        durably.start()
        print(
            f"durably worker on {redact_url(args.url)}: jobs {', '.join(sorted(jobs))}; "
            f"concurrency {args.concurrency}; SIGTERM or Ctrl-C stops it",
            flush=True,
        )
        stop.wait()
        print(f"stopping: waiting up to {args.grace} s for runs in flight", flush=True)
        durably.stop(timeout=args.grace)
    print("stopped", flush=True)
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "run a demo batch job; Ctrl-C it and run it again to see it resume",
        demo.build_parser,
        demo.run,
    ),
    Command(
        "migrate",
        "create or upgrade durably's tables in a database",
        _add_migrate_arguments,
        _migrate,
    ),
    Command(
        "worker",
        "run a worker for the jobs of --app until SIGTERM/SIGINT, then stop gracefully",
        _add_worker_arguments,
        _worker,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The `durably` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="durably", description="Step-oriented, resumable batch execution."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `durably` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except DurablyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
