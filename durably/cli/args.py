"""What the command line's arguments may be: argparse types, the database URL, counts.

argparse names a type function in its message (`invalid <__name__> value: 'abc'`), so every
type here carries a name that reads as English: "argument --limit: invalid positive
integer value: 'abc'".
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# RFC 3986: a scheme is a letter, then letters, digits, '+', '-' or '.', then ':'
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def named(name: str) -> Callable[[Callable[[str], T]], Callable[[str], T]]:
    """Give an argparse type the name argparse shows when it rejects a value."""

    def decorate(function: Callable[[str], T]) -> Callable[[str], T]:
        function.__name__ = name
        return function

    return decorate


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 run`, `2 runs`, `0 runs`; `many` when the plural is not `word + 's'`."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def database_url(text: str) -> str:
    """A database URL as given, or a plain file path (no `scheme:`) as a SQLite URL.

    `dash.db` is `sqlite:///dash.db` and `/tmp/dash.db` is `sqlite:////tmp/dash.db`, as
    `create_durably` reads them: relative to the working directory, or absolute.
    """
    if _SCHEME.match(text):
        return text
    if not text:
        raise argparse.ArgumentTypeError("a database URL or SQLite file path may not be empty")
    return f"sqlite:///{text}"


database_url.__name__ = "database URL"


@named("non-negative integer")
def non_negative(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


@named("positive integer")
def positive(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@named("number of seconds")
def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


@named("number of seconds")
def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


@named("port number")
def port_number(text: str) -> int:
    """A TCP port."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@named("JSON")
def json_value(text: str) -> Any:
    """A JSON text (NaN and Infinity, which JSON does not have, are refused)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
