"""The exception hierarchy: every error durably raises is a `DurablyError`."""

from __future__ import annotations

from typing import Any


def describe(exc: BaseException) -> str:
    """`"ZeroDivisionError: division by zero"`: the stored form of an error."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class DurablyError(Exception):
    """Base class of every error raised by durably."""


class InputValidationError(DurablyError, ValueError):
    """A job's input did not validate; nothing was written.

    `errors` carries pydantic's structured details.
    """

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors: list[Any] = errors or []


class PayloadTooLargeError(InputValidationError):
    """A payload is bigger than the instance's `max_payload_bytes`; nothing was written.

    Over HTTP it answers 413.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes as JSON; at most {limit} are accepted (max_payload_bytes)",
            [{"type": "too_large", "msg": f"at most {limit} bytes", "size": size}],
        )
        self.size = size
        self.limit = limit


class RunNotFoundError(DurablyError, LookupError):
    """No run has the given id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class InvalidRunStateError(DurablyError):
    """The run is in a state that does not allow the operation."""

    def __init__(self, run_id: str, status: str, operation: str, allowed: str) -> None:
        super().__init__(
            f"cannot {operation} run {run_id!r}: it is {status}; "
            f"{operation} needs a run that is {allowed}"
        )
        self.run_id = run_id
        self.status = status
        self.operation = operation


class DuplicateStepError(DurablyError):
    """A step name was used twice in one run; step names identify persisted results."""

    def __init__(self, run_id: str, step_name: str) -> None:
        super().__init__(
            f"step name {step_name!r} is used twice in run {run_id!r}; "
            "step names must be unique within a run (add an index or id to the name)"
        )
        self.run_id = run_id
        self.step_name = step_name


class RunFailedError(DurablyError):
    """The awaited run failed."""

    def __init__(self, run_id: str, error: str | None) -> None:
        super().__init__(f"run {run_id!r} failed: {error}")
        self.run_id = run_id
        self.error = error


class RunCancelledError(DurablyError):
    """The awaited run was cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was cancelled")
        self.run_id = run_id


class WaitTimeoutError(DurablyError, TimeoutError):
    """Waiting for a run timed out; the run itself goes on."""

    def __init__(self, run_id: str, timeout: float) -> None:
        super().__init__(f"run {run_id!r} did not finish within {timeout} s (it goes on)")
        self.run_id = run_id
        self.timeout = timeout


class ConfigurationError(DurablyError, ValueError):
    """An option or database URL is invalid."""


class DialectNotFoundError(DurablyError, ValueError):
    """No installed dialect handles a database URL (or its driver is missing)."""


class StoreError(DurablyError):
    """The database failed an operation: durably's tables are missing (run `migrate()`
    first), the disk is full, a statement is over the server's size limit, or another
    database error. The driver's exception is attached as `__cause__`.
    """


class MigrationError(DurablyError):
    """Running durably's migrations failed."""


class StepSerializationError(DurablyError, TypeError):
    """A step's result cannot be stored as JSON."""
