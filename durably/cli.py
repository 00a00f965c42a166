"""The `durably` command line: one subcommand per function, errors as `error: ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from durably import DurablyError, create_durably

from . import demo
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
