"""Validating the strings durably stores, where they enter.

Names and keys are identifiers: a value no backend can store (too long, NUL, a lone
surrogate) is refused with a typed error for the caller. Messages (errors, progress,
logs) come from code the caller does not control: they are cleaned and truncated to a
documented limit instead, so they can never keep a run from being written.
"""

from __future__ import annotations

from ._errors import InputValidationError, PayloadTooLargeError

# what a VARCHAR(255) holds on every backend (PostgreSQL and MySQL count characters)
MAX_NAME = 255
# errors and messages: MySQL's TEXT holds 64 KiB, 4 bytes per character at most
MAX_MESSAGE = 10_000


def name_problem(value: object, max_length: int = MAX_NAME) -> str | None:
    """Why `value` cannot be stored as a name or key, or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long; at most {max_length} are stored"
    if "\x00" in value:
        return "contains a NUL character, which PostgreSQL cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode text"
    return None


def check_name(kind: str, value: object, max_length: int = MAX_NAME) -> str:
    """`value` if it can be stored as a `kind` (job name, step name, key, run id)."""
    problem = name_problem(value, max_length)
    if problem is not None:
        raise InputValidationError(
            f"{kind} {value!r} {problem}", [{"type": "value_error", "msg": problem}]
        )
    return value  # type: ignore[return-value]


def clean_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` made storable everywhere: NUL and lone surrogates become U+FFFD, and text
    past `limit` characters is cut, saying how much was dropped."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if len(text) > limit:
        text = f"{text[:limit]}... [{len(text) - limit} more characters]"
    return text


def json_size(text: str, limit: int) -> int | None:
    """The UTF-8 size of JSON `text` when it is over `limit` bytes, else None.

    Counting characters first keeps the common small value from being encoded.
    """
    if len(text) * 4 <= limit:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def check_size(what: str, text: str, limit: int) -> str:
    """`text` if it is at most `limit` UTF-8 bytes, else `PayloadTooLargeError`."""
    size = json_size(text, limit)
    if size is not None:
        raise PayloadTooLargeError(what, size, limit)
    return text
